//! Input hardening shared by both decoders: size check, XML 1.0 character
//! check, reference resolution without any DTD, attribute normalisation and
//! mapping of quick-xml errors to [`DecodeError`].

use std::borrow::Cow;

use quick_xml::events::attributes::Attribute;
use quick_xml::events::BytesDecl;

use crate::error::{DecodeError, Location};

/// Namespace that xml_marshaller's `dumps_ns` binds its elements to.
pub(crate) const MARSHAL_NS: &str = "http://www.erp5.org/namespaces/marshaller";

/// A document split into the part to parse and the offset it starts at (after
/// a UTF-8 byte-order mark, which quick-xml would otherwise read as text).
pub(crate) struct Input<'a> {
    /// The whole input, for error locations.
    pub full: &'a str,
    /// The input without its byte-order mark.
    pub body: &'a str,
    /// Length of the skipped byte-order mark.
    pub skip: usize,
}

impl<'a> Input<'a> {
    /// Checks the size limit and the XML 1.0 character set of `xml`.
    pub(crate) fn new(xml: &'a str, max_size: usize) -> Result<Self, DecodeError> {
        if xml.len() > max_size {
            return Err(DecodeError::TooLarge {
                size: xml.len(),
                limit: max_size,
            });
        }
        let (body, skip) = match xml.strip_prefix('\u{feff}') {
            Some(rest) => (rest, xml.len() - rest.len()),
            None => (xml, 0),
        };
        let input = Input {
            full: xml,
            body,
            skip,
        };
        if let Some((offset, c)) = first_invalid_char(body) {
            return Err(DecodeError::Syntax {
                message: format!("character U+{:04X} is not allowed in XML 1.0", u32::from(c)),
                at: input.at(offset as u64),
            });
        }
        Ok(input)
    }

    /// Location of byte `offset` of the parsed body.
    pub(crate) fn at(&self, offset: u64) -> Location {
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        Location::in_text(self.full, offset.saturating_add(self.skip))
    }

    /// Maps a quick-xml error found around `offset` to a [`DecodeError`].
    pub(crate) fn xml_error(&self, err: &quick_xml::Error, offset: u64) -> DecodeError {
        use quick_xml::errors::SyntaxError;
        match err {
            // Every syntax error but an unknown `<!` markup means the input
            // ended inside a construct.
            quick_xml::Error::Syntax(e) if *e != SyntaxError::InvalidBangMarkup => {
                return DecodeError::Truncated {
                    at: self.at(self.body.len() as u64),
                };
            }
            _ => {}
        }
        let at = self.at(offset);
        DecodeError::Syntax {
            message: err.to_string(),
            at,
        }
    }
}

/// True for the characters of the XML 1.0 `Char` production.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

/// First character of `s` that XML 1.0 forbids, with its byte offset.
fn first_invalid_char(s: &str) -> Option<(usize, char)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if (0x20..0x80).contains(&b) {
            i += 1;
            continue;
        }
        if b < 0x20 {
            if b != b'\t' && b != b'\n' && b != b'\r' {
                return Some((i, char::from(b)));
            }
            i += 1;
            continue;
        }
        // Non-ASCII: only U+FFFE and U+FFFF (EF BF BE / EF BF BF) are invalid
        // among the characters a Rust string can hold.
        if b == 0xEF && bytes.get(i + 1) == Some(&0xBF) {
            if let Some(&b3) = bytes.get(i + 2) {
                if b3 == 0xBE || b3 == 0xBF {
                    return s[i..].chars().next().map(|c| (i, c));
                }
            }
        }
        i += 1;
    }
    None
}

/// What an `&name;` reference stands for, if it is one we accept.
pub(crate) fn resolve_reference(name: &str) -> Result<char, String> {
    match name {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "quot" => Ok('"'),
        "apos" => Ok('\''),
        _ => {
            let Some(num) = name.strip_prefix('#') else {
                return Err(String::new());
            };
            let code = match num.strip_prefix('x') {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => num.parse::<u32>(),
            };
            let bad = || format!("invalid character reference &{name};");
            let c = code.ok().and_then(char::from_u32).ok_or_else(bad)?;
            if (num.starts_with('+') || num.starts_with("x+")) || !is_xml_char(c) {
                return Err(bad());
            }
            Ok(c)
        }
    }
}

/// Maps a failed [`resolve_reference`] to the matching error.
pub(crate) fn reference_error(name: &str, message: String, at: Location) -> DecodeError {
    if message.is_empty() {
        DecodeError::Entity {
            name: name.to_owned(),
            at,
        }
    } else {
        DecodeError::Syntax { message, at }
    }
}

/// The value of an attribute: references resolved, whitespace normalised as
/// XML 1.0 requires (TAB, LF, CR and CR LF become one space each).
pub(crate) fn attribute_value<'a>(
    attr: &'a Attribute<'a>,
    input: &Input<'_>,
    offset: u64,
) -> Result<Cow<'a, str>, DecodeError> {
    let raw: &str = &attr.value;
    if !raw.contains(['&', '\t', '\n', '\r']) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['&', '\t', '\n', '\r']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("\r\n") {
            out.push(' ');
            rest = after;
        } else if let Some(after) = tail.strip_prefix('&') {
            let end = after.find(';').ok_or_else(|| DecodeError::Syntax {
                message: "unterminated reference in attribute value".to_owned(),
                at: input.at(offset),
            })?;
            let name = &after[..end];
            let c =
                resolve_reference(name).map_err(|m| reference_error(name, m, input.at(offset)))?;
            out.push(c);
            rest = &after[end + 1..];
        } else {
            out.push(' ');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// Checks an XML declaration: only UTF-8 (or its ASCII subset) can be
/// declared, since the input is already a Rust string.
pub(crate) fn check_declaration(
    decl: &BytesDecl<'_>,
    input: &Input<'_>,
    offset: u64,
) -> Result<(), DecodeError> {
    let Some(encoding) = decl.encoding() else {
        return Ok(());
    };
    let encoding = encoding.map_err(|e| DecodeError::Syntax {
        message: e.to_string(),
        at: input.at(offset),
    })?;
    let ok = ["utf-8", "utf8", "us-ascii", "ascii"]
        .iter()
        .any(|name| encoding.eq_ignore_ascii_case(name));
    if ok {
        Ok(())
    } else {
        Err(DecodeError::Invalid {
            message: format!(
                "the XML declaration names encoding {encoding:?}; only UTF-8 is accepted"
            ),
            at: input.at(offset),
        })
    }
}

/// Appends text to `out` after XML 1.0 end-of-line normalisation (CR LF and
/// lone CR become LF), as every XML parser does before handing text over.
pub(crate) fn push_normalized(out: &mut String, text: &str) {
    if !text.contains('\r') {
        out.push_str(text);
        return;
    }
    let mut rest = text;
    while let Some(i) = rest.find('\r') {
        out.push_str(&rest[..i]);
        out.push('\n');
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('\n') {
            rest = after;
        }
    }
    out.push_str(rest);
}
