//! The "parameter XML" (`slapos.util.dict2xml` / `xml2dict`): the flat
//! string map the master stores instance, connection and SLA parameters in
//! (see `docs/slap-protocol.md` §2.2).
//!
//! ```xml
//! <?xml version='1.0' encoding='utf-8'?>
//! <instance>
//!   <parameter id="baz">a&lt;b&amp;c</parameter>
//! </instance>
//! ```

use std::fmt::Write as _;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use crate::error::DecodeError;
use crate::marshal::{Limits, MAX_DEPTH_CAP};
use crate::xmlin::{
    attribute_value, check_declaration, is_xml_char, push_normalized, reference_error,
    resolve_reference, Input,
};

/// Writes parameters exactly as Python `dict2xml` does: keys sorted by code
/// point, lxml's pretty printing (two-space indent, single-quoted
/// declaration, trailing newline), normal (single) XML escaping with
/// non-ASCII left as UTF-8.
///
/// A `None` value is written as the text `None` (Python applies `str()` to
/// non-string values); `Some("")` gives an empty element. Characters XML 1.0
/// cannot carry (where Python raises) are replaced by U+FFFD; values decoded
/// by this crate never contain them.
pub fn dict2xml<'a>(items: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> String {
    let mut items: Vec<(&str, Option<&str>)> = items.into_iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(
        64 + items
            .iter()
            .map(|(k, v)| 30 + k.len() + v.map_or(4, str::len))
            .sum::<usize>(),
    );
    out.push_str("<?xml version='1.0' encoding='utf-8'?>\n");
    if items.is_empty() {
        out.push_str("<instance/>\n");
        return out;
    }
    out.push_str("<instance>\n");
    for (k, v) in items {
        out.push_str("  <parameter id=\"");
        escape_into(&mut out, k, true);
        out.push_str("\">");
        escape_into(&mut out, v.unwrap_or("None"), false);
        out.push_str("</parameter>\n");
    }
    out.push_str("</instance>\n");
    out
}

/// lxml's escaping: `&` `<` `>` always, CR as `&#13;`; in attributes also
/// `"`, TAB and LF (so they survive attribute-value normalisation).
fn escape_into(out: &mut String, s: &str, attribute: bool) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            '"' if attribute => out.push_str("&quot;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            c if !is_xml_char(c) => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

/// Reads parameters as Python `xml2dict` does, with the default [`Limits`].
///
/// Every `<parameter id>` child of the root counts, in document order; a
/// repeated id gets its texts joined with one space; an empty element gives
/// `None`; an empty input gives no parameters.
pub fn xml2dict(xml: &str) -> Result<Vec<(String, Option<String>)>, DecodeError> {
    xml2dict_with_limits(xml, &Limits::default())
}

/// [`xml2dict`] with explicit limits (`max_reference_expansion` is unused).
pub fn xml2dict_with_limits(
    xml: &str,
    limits: &Limits,
) -> Result<Vec<(String, Option<String>)>, DecodeError> {
    if xml.is_empty() {
        return Ok(Vec::new());
    }
    let input = Input::new(xml, limits.max_size)?;
    let max_depth = limits.max_depth.min(MAX_DEPTH_CAP);
    let mut reader = NsReader::from_str(input.body);
    let mut result: Vec<(String, Option<String>)> = Vec::new();
    let mut depth = 0usize;
    let mut root_done = false;
    let mut first = true;
    // The parameter being read: its id, its text so far, and whether a child
    // node already ended the text (lxml's `.text` stops at the first child).
    let mut current: Option<(String, String, bool)> = None;

    loop {
        let pos = reader.buffer_position();
        let (ns, event) = match reader.read_resolved_event() {
            Ok(x) => x,
            Err(e) => return Err(input.xml_error(&e, reader.error_position())),
        };
        let is_parameter = |e: &BytesStart<'_>| {
            matches!(ns, ResolveResult::Unbound) && e.local_name().as_ref() == "parameter"
        };
        match event {
            Event::Decl(decl) => {
                if !first || pos != 0 {
                    return Err(DecodeError::Syntax {
                        message: "an XML declaration is only allowed at the very start".to_owned(),
                        at: input.at(pos),
                    });
                }
                check_declaration(&decl, &input, pos)?;
            }
            Event::DocType(_) => return Err(DecodeError::Doctype { at: input.at(pos) }),
            Event::PI(pi) => {
                return Err(DecodeError::ProcessingInstruction {
                    target: pi.target().to_owned(),
                    at: input.at(pos),
                })
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                if let ResolveResult::Unknown(prefix) = &ns {
                    return Err(DecodeError::Syntax {
                        message: format!("undeclared namespace prefix {prefix:?}"),
                        at: input.at(pos),
                    });
                }
                if root_done {
                    return Err(DecodeError::Syntax {
                        message: "content after the root element".to_owned(),
                        at: input.at(pos),
                    });
                }
                if depth >= max_depth {
                    return Err(DecodeError::TooDeep {
                        limit: max_depth,
                        at: input.at(pos),
                    });
                }
                if let Some((_, _, ended)) = current.as_mut() {
                    *ended = true;
                }
                let empty = matches!(event, Event::Empty(_));
                // Attributes of every element are checked, used only on parameters.
                let id = id_attribute(e, &input, pos)?;
                if depth == 1 && is_parameter(e) {
                    let id = id.ok_or_else(|| DecodeError::Invalid {
                        message: "<parameter> without an id attribute".to_owned(),
                        at: input.at(pos),
                    })?;
                    if empty {
                        add(&mut result, id, None, &input, pos)?;
                    } else {
                        current = Some((id, String::new(), false));
                    }
                }
                if empty {
                    root_done |= depth == 0;
                } else {
                    depth += 1;
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    if let Some((id, text, _)) = current.take() {
                        let text = (!text.is_empty()).then_some(text);
                        add(&mut result, id, text, &input, pos)?;
                    }
                }
                root_done |= depth == 0;
            }
            Event::Text(ref t) => text(&mut current, depth, t.as_ref(), true, &input, pos)?,
            Event::CData(ref c) => text(&mut current, depth, c.as_ref(), true, &input, pos)?,
            Event::GeneralRef(ref r) => {
                let name: &str = r.as_ref();
                let c =
                    resolve_reference(name).map_err(|m| reference_error(name, m, input.at(pos)))?;
                let mut buf = [0u8; 4];
                // Character references are not end-of-line normalised.
                text(
                    &mut current,
                    depth,
                    c.encode_utf8(&mut buf),
                    false,
                    &input,
                    pos,
                )?;
            }
            Event::Comment(_) => {
                if let Some((_, _, ended)) = current.as_mut() {
                    *ended = true;
                }
            }
            Event::Eof => break,
        }
        first = false;
    }
    if !root_done {
        return Err(DecodeError::Truncated {
            at: input.at(input.body.len() as u64),
        });
    }
    Ok(result)
}

/// The `id` attribute of an element, after checking all its attributes.
fn id_attribute(
    e: &BytesStart<'_>,
    input: &Input<'_>,
    pos: u64,
) -> Result<Option<String>, DecodeError> {
    let mut id = None;
    for attr in e.attributes() {
        let attr = attr.map_err(|err| DecodeError::Syntax {
            message: err.to_string(),
            at: input.at(pos),
        })?;
        let value = attribute_value(&attr, input, pos)?;
        if attr.key.as_ref() == "id" {
            id = Some(value.into_owned());
        }
    }
    Ok(id)
}

/// Handles character data: kept when it is the leading text of a parameter,
/// refused outside the root unless it is whitespace; `normalize` applies XML
/// end-of-line handling.
fn text(
    current: &mut Option<(String, String, bool)>,
    depth: usize,
    data: &str,
    normalize: bool,
    input: &Input<'_>,
    pos: u64,
) -> Result<(), DecodeError> {
    if depth == 0
        && !data
            .bytes()
            .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Err(DecodeError::Syntax {
            message: "text outside the root element".to_owned(),
            at: input.at(pos),
        });
    }
    if depth == 2 {
        if let Some((_, buf, false)) = current.as_mut() {
            if normalize {
                push_normalized(buf, data);
            } else {
                buf.push_str(data);
            }
        }
    }
    Ok(())
}

/// Python's accumulation: a repeated id appends `" " + text`; Python fails
/// (TypeError) when the repeated element is empty, and so does this.
fn add(
    result: &mut Vec<(String, Option<String>)>,
    id: String,
    text: Option<String>,
    input: &Input<'_>,
    pos: u64,
) -> Result<(), DecodeError> {
    match result.iter_mut().find(|(k, _)| *k == id) {
        None => result.push((id, text)),
        Some((_, slot @ None)) => *slot = text,
        Some((_, Some(prev))) => match text {
            Some(t) => {
                let _ = write!(prev, " {t}");
            }
            None => {
                return Err(DecodeError::Invalid {
                    message: format!(
                        "parameter {id:?} is repeated with an empty value, which cannot be joined to the previous one"
                    ),
                    at: input.at(pos),
                })
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dict2xml_matches_lxml() {
        assert_eq!(
            dict2xml([]),
            "<?xml version='1.0' encoding='utf-8'?>\n<instance/>\n"
        );
        // From Python: dict2xml({'b': '', 'a': None, 'c': 3, 'd\t"<&>\n\r\'é': 'x\r\n"\'<&>é\t'})
        let got = dict2xml([
            ("b", Some("")),
            ("a", None),
            ("c", Some("3")),
            ("d\t\"<&>\n\r'é", Some("x\r\n\"'<&>é\t")),
        ]);
        let want = "<?xml version='1.0' encoding='utf-8'?>\n<instance>\n  <parameter id=\"a\">None</parameter>\n  <parameter id=\"b\"></parameter>\n  <parameter id=\"c\">3</parameter>\n  <parameter id=\"d&#9;&quot;&lt;&amp;&gt;&#10;&#13;'é\">x&#13;\n\"'&lt;&amp;&gt;é\t</parameter>\n</instance>\n";
        assert_eq!(got, want);
        let back = xml2dict(&got).unwrap();
        assert_eq!(back[3].0, "d\t\"<&>\n\r'é");
        assert_eq!(back[3].1.as_deref(), Some("x\r\n\"'<&>é\t"));
    }

    #[test]
    fn xml2dict_matches_python() {
        let d = xml2dict("<instance><parameter id=\"a\">x</parameter><parameter id=\"a\">y</parameter><parameter id=\"b\"/><parameter id=\"b\">z</parameter></instance>").unwrap();
        assert_eq!(
            d,
            vec![
                ("a".to_owned(), Some("x y".to_owned())),
                ("b".to_owned(), Some("z".to_owned()))
            ]
        );
        let d = xml2dict("<instance><parameter id=\"a\">x<!--c-->y<b>q</b>r</parameter><other><parameter id=\"deep\">no</parameter></other></instance>").unwrap();
        assert_eq!(d, vec![("a".to_owned(), Some("x".to_owned()))]);
        assert!(xml2dict(
            "<instance><parameter id=\"a\">x</parameter><parameter id=\"a\"/></instance>"
        )
        .is_err());
        assert!(xml2dict("<instance><parameter>n</parameter></instance>").is_err());
        assert_eq!(xml2dict("").unwrap(), vec![]);
        assert_eq!(xml2dict("<instance/>").unwrap(), vec![]);
    }
}
