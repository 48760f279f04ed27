//! Error types shared by the marshal codec and the parameter-XML codec.

use std::fmt;

/// A position in a decoded document, reported with every [`DecodeError`]
/// that can point at one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Byte offset from the start of the input.
    pub offset: usize,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl Location {
    /// Computes line and column of byte `offset` in `input` (clamped to the input).
    pub(crate) fn in_text(input: &str, offset: usize) -> Self {
        let mut offset = offset.min(input.len());
        while !input.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &input[..offset];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location {
            offset,
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {} (byte {})",
            self.line, self.column, self.offset
        )
    }
}

/// Why a document was refused by [`crate::marshal::loads`] or [`crate::params::xml2dict`].
///
/// The decoders are the security boundary of the master: every variant names
/// what was wrong and, where possible, where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is larger than [`crate::marshal::Limits::max_size`].
    #[error("document too large: {size} bytes, the limit is {limit} bytes")]
    TooLarge {
        /// Size of the input in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Elements (or values built through references) are nested deeper than allowed.
    #[error("nesting too deep at {at}: more than {limit} levels")]
    TooDeep {
        /// The configured limit.
        limit: usize,
        /// Where the limit was crossed.
        at: Location,
    },
    /// A `<!DOCTYPE>` was found; DTDs are never processed, so no entity can be
    /// declared or expanded (billion laughs, external entities).
    #[error("DOCTYPE declaration at {at} refused: DTDs and entity declarations are not accepted")]
    Doctype {
        /// Where the declaration starts.
        at: Location,
    },
    /// An entity reference other than the five predefined ones.
    #[error("entity reference &{name}; at {at} refused: only &lt; &gt; &amp; &quot; &apos; and character references are accepted")]
    Entity {
        /// The entity name as written.
        name: String,
        /// Where it was found.
        at: Location,
    },
    /// A processing instruction other than a leading XML declaration.
    #[error("processing instruction <?{target}?> at {at} refused: only a leading XML declaration is accepted")]
    ProcessingInstruction {
        /// Target of the instruction.
        target: String,
        /// Where it was found.
        at: Location,
    },
    /// The input is not well-formed XML.
    #[error("malformed XML at {at}: {message}")]
    Syntax {
        /// What the parser complained about.
        message: String,
        /// Where.
        at: Location,
    },
    /// The input ends before the root element is closed.
    #[error("document truncated at {at}: the input ends before the root element is closed")]
    Truncated {
        /// End of the input.
        at: Location,
    },
    /// An element the format does not define.
    #[error("unknown element <{name}> at {at}")]
    UnknownElement {
        /// Local name of the element.
        name: String,
        /// Where it starts.
        at: Location,
    },
    /// An xml_marshaller element SLAP never uses and this codec does not model
    /// (`<complex>`, `<code>`).
    #[error("<{name}> at {at} is not supported: SLAP never sends this xml_marshaller type")]
    Unsupported {
        /// Local name of the element.
        name: String,
        /// Where it starts.
        at: Location,
    },
    /// An `<object>` of a class outside the slap whitelist.
    #[error("refusing to unmarshal {module}.{class} at {at}: only slapos.slap.slap.Computer, ComputerPartition, SoftwareRelease and SoftwareInstance are allowed")]
    ForbiddenClass {
        /// The `module` attribute.
        module: String,
        /// The `class` attribute.
        class: String,
        /// Where the object starts.
        at: Location,
    },
    /// A `<reference id>` that does not name an earlier, complete container.
    #[error("<reference id=\"{id}\"> at {at} does not name an earlier, complete list/set/dictionary/object")]
    DanglingReference {
        /// The id referenced.
        id: String,
        /// Where the reference is.
        at: Location,
    },
    /// `<reference>` copies would grow the value past
    /// [`crate::marshal::Limits::max_reference_expansion`].
    #[error("references at {at} expand the value beyond {limit} bytes")]
    ReferenceExpansion {
        /// The configured limit.
        limit: usize,
        /// Where the limit was crossed.
        at: Location,
    },
    /// Well-formed XML whose content does not follow the format (bad number,
    /// misplaced element or text, missing attribute, ...).
    #[error("invalid document at {at}: {message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// Where.
        at: Location,
    },
}

/// Why [`crate::marshal::dumps`] could not encode a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string holds a character XML 1.0 cannot carry (control characters
    /// other than TAB/LF/CR, U+FFFE, U+FFFF); Python's lxml refuses them too.
    #[error("string contains U+{code:04X} at character {index}, which XML 1.0 cannot carry (only TAB, LF and CR are allowed among control characters)")]
    InvalidChar {
        /// The code point.
        code: u32,
        /// Index of the character in the string.
        index: usize,
    },
    /// A [`crate::marshal::Value::Long`] whose text is not a decimal integer.
    #[error("invalid Long value {0:?}: expected decimal digits with an optional leading '-'")]
    InvalidLong(String),
    /// The value is nested deeper than the encoder accepts.
    #[error("value nested deeper than {0} levels")]
    TooDeep(usize),
}
