//! Python semantics the wire format depends on: `str()`/`repr()` of values,
//! float repr, the ordering xml_marshaller sorts dictionary keys with,
//! equality and hashing of dictionary keys, and `int()`/`float()` parsing.

use std::cmp::Ordering;
use std::fmt::Write as _;

use crate::marshal::Value;

/// Python's `str()` of a value: strings as they are, everything else as its `repr()`.
///
/// This is how the master stringifies parameter values (`8080` → `"8080"`,
/// `None` → `"None"`, `True` → `"True"`, `1.5` → `"1.5"`).
pub fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => python_repr(other),
    }
}

/// Python's `repr()` of a value. Objects have no stable repr in Python (it
/// holds a memory address); they are written `<slapos.slap.slap.Class object>`.
pub(crate) fn python_repr(v: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, v);
    out
}

fn write_repr(out: &mut String, v: &Value) {
    match v {
        Value::None => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Long(s) => match normalize_int_text(s) {
            Some((neg, digits)) => {
                if neg {
                    out.push('-');
                }
                out.push_str(digits);
            }
            None => out.push_str(s),
        },
        Value::Float(f) => write_float_repr(out, *f),
        Value::String(s) => write_str_repr(out, s),
        Value::Tuple(items) => {
            out.push('(');
            write_items(out, items);
            if items.len() == 1 {
                out.push(',');
            }
            out.push(')');
        }
        Value::List(items) => {
            out.push('[');
            write_items(out, items);
            out.push(']');
        }
        Value::Set(items) if items.is_empty() => out.push_str("set()"),
        Value::Set(items) => {
            out.push('{');
            write_items(out, items);
            out.push('}');
        }
        Value::Dict(pairs) => {
            out.push('{');
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, k);
                out.push_str(": ");
                write_repr(out, v);
            }
            out.push('}');
        }
        Value::Object(o) => {
            let _ = write!(
                out,
                "<{}.{} object>",
                crate::marshal::SLAP_MODULE,
                o.class.name()
            );
        }
    }
}

fn write_items(out: &mut String, items: &[Value]) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(out, item);
    }
}

/// Python's `repr()` of a `str`: single quotes unless the text holds a single
/// quote and no double quote, backslash escapes for quotes, backslashes and
/// non-printable characters.
fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let code = u32::from(c);
                let _ = if code < 0x100 {
                    write!(out, "\\x{code:02x}")
                } else if code < 0x10000 {
                    write!(out, "\\u{code:04x}")
                } else {
                    write!(out, "\\U{code:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Approximation of Python's `str.isprintable()`: control, format, separator
/// (other than the ASCII space), surrogate, private-use and non-character
/// code points are not printable.
fn is_printable(c: char) -> bool {
    !matches!(u32::from(c),
        0..=0x1f | 0x7f..=0xa0 | 0xad | 0x34f | 0x61c | 0x115f..=0x1160 | 0x1680
        | 0x180e | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f | 0x3000
        | 0x3164 | 0xd800..=0xf8ff | 0xfe00..=0xfe0f | 0xfeff | 0xfff0..=0xfffb
        | 0xfffe..=0xffff | 0xe0000..=0xe0fff | 0xf0000..)
}

/// Python's `repr()` (= `str()`) of a float: the shortest text that reads
/// back to the same float, in exponent form when the exponent is below -4 or
/// at least 16 (`1e-05`, `1e+16`), otherwise positional with at least one
/// decimal (`1.5`, `0.0001`, `1234567890123456.0`).
pub(crate) fn write_float_repr(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("nan");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "inf" } else { "-inf" });
        return;
    }
    if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // `{:e}` gives the shortest round-trip digits ("-1.2345e-7"). When two
    // decimals of that length are equally near, it may round the tie up
    // where Python's dtoa picks the nearest with an even last digit: the
    // correctly rounded (half-even) decimal of the same length is what
    // Python writes whenever it reads back to the same float.
    let shortest = format!("{f:e}");
    let len = shortest
        .split('e')
        .next()
        .map_or(1, |m| m.bytes().filter(u8::is_ascii_digit).count());
    let nearest = format!("{:.*e}", len.saturating_sub(1), f);
    let sci = if nearest != shortest && nearest.parse::<f64>() == Ok(f) {
        nearest
    } else {
        shortest
    };
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = usize::try_from(exp).unwrap_or(0) + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            let zeros = usize::try_from(-exp - 1).unwrap_or(0);
            out.extend(std::iter::repeat_n('0', zeros));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// Splits integer text into sign and digits without leading zeros; `None`
/// when it is not `-?[0-9]+`. Zero is never negative.
pub(crate) fn normalize_int_text(s: &str) -> Option<(bool, &str)> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        Some((false, "0"))
    } else {
        Some((neg, trimmed))
    }
}

/// Python 3.11+ refuses to convert integer text longer than this
/// (`sys.int_info.str_digits_check_threshold` default).
const MAX_INT_DIGITS: usize = 4300;

/// Removes PEP 515 underscores (only allowed singly, between digits).
fn strip_underscores(s: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !s.contains('_') {
        return Some(std::borrow::Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let before = i.checked_sub(1).and_then(|j| bytes.get(j));
            let after = bytes.get(i + 1);
            if !before.is_some_and(u8::is_ascii_digit) || !after.is_some_and(u8::is_ascii_digit) {
                return None;
            }
        }
    }
    Some(std::borrow::Cow::Owned(s.replace('_', "")))
}

/// Python's `int(text)` for base 10: surrounding whitespace, a sign, leading
/// zeros and PEP 515 underscores are accepted. Values that fit an `i64` give
/// [`Value::Int`], others [`Value::Long`].
pub(crate) fn parse_py_int(text: &str) -> Option<Value> {
    let t = strip_underscores(text.trim())?;
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, &t[..]),
    };
    if digits.is_empty() || digits.len() > MAX_INT_DIGITS {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(Value::Int(0));
    }
    if digits.len() <= 19 {
        let mut signed = String::with_capacity(digits.len() + 1);
        if neg {
            signed.push('-');
        }
        signed.push_str(digits);
        if let Ok(i) = signed.parse::<i64>() {
            return Some(Value::Int(i));
        }
        return Some(Value::Long(signed));
    }
    Some(Value::Long(format!(
        "{}{digits}",
        if neg { "-" } else { "" }
    )))
}

/// Python's `float(text)`: surrounding whitespace, a sign, `inf`,
/// `infinity`, `nan` (any case) and PEP 515 underscores are accepted.
pub(crate) fn parse_py_float(text: &str) -> Option<f64> {
    let t = strip_underscores(text.trim())?;
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, &t[..]),
    };
    let magnitude = if body.eq_ignore_ascii_case("inf") || body.eq_ignore_ascii_case("infinity") {
        f64::INFINITY
    } else if body.eq_ignore_ascii_case("nan") {
        f64::NAN
    } else if !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && body
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.')
    {
        body.parse::<f64>().ok()?
    } else {
        return None;
    };
    Some(if neg { -magnitude } else { magnitude })
}

/// A number as Python compares it: exactly, across bool, int and float.
enum Num<'a> {
    Small(i128),
    /// An integer beyond `i128`: sign and digits without leading zeros.
    Big(bool, &'a str),
    Float(f64),
}

fn as_num(v: &Value) -> Option<Num<'_>> {
    match v {
        Value::Bool(b) => Some(Num::Small(i128::from(*b))),
        Value::Int(i) => Some(Num::Small(i128::from(*i))),
        Value::Long(s) => {
            let (neg, digits) = normalize_int_text(s)?;
            match digits.parse::<i128>() {
                Ok(m) => Some(Num::Small(if neg { -m } else { m })),
                Err(_) => Some(Num::Big(neg, digits)),
            }
        }
        Value::Float(f) => Some(Num::Float(*f)),
        _ => None,
    }
}

/// Compares magnitudes written as decimal digits without leading zeros.
fn cmp_digits(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn cmp_signed_digits(neg_a: bool, a: &str, neg_b: bool, b: &str) -> Ordering {
    match (neg_a, neg_b) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => cmp_digits(a, b),
        (true, true) => cmp_digits(b, a),
    }
}

/// 2^127 as a float: every float below it in magnitude truncates into an i128 exactly.
const TWO_POW_127: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;

fn cmp_int_float(i: i128, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Equal;
    }
    if f >= TWO_POW_127 {
        return Ordering::Less;
    }
    if f < -TWO_POW_127 {
        return Ordering::Greater;
    }
    let t = f.trunc();
    // In range, so the cast is exact.
    #[allow(clippy::cast_possible_truncation)]
    let ti = t as i128;
    i.cmp(&ti).then_with(|| {
        if f > t {
            Ordering::Less
        } else if f < t {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    })
}

fn cmp_big_float(neg: bool, digits: &str, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Equal;
    }
    if f.is_infinite() {
        return if f > 0.0 {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    if f.abs() < TWO_POW_127 {
        // |big| >= 2^127 > |f|.
        return if neg {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    // Floats this large are integers; `{:.0}` writes them exactly.
    let text = format!("{:.0}", f.abs());
    cmp_signed_digits(neg, digits, f < 0.0, &text)
}

/// Python's `(a > b) - (a < b)` for two numbers (NaN compares "equal").
fn cmp_num(a: &Num<'_>, b: &Num<'_>) -> Ordering {
    match (a, b) {
        (Num::Small(x), Num::Small(y)) => x.cmp(y),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Num::Small(x), Num::Float(y)) => cmp_int_float(*x, *y),
        (Num::Float(x), Num::Small(y)) => cmp_int_float(*y, *x).reverse(),
        (Num::Big(n, d), Num::Float(y)) => cmp_big_float(*n, d, *y),
        (Num::Float(x), Num::Big(n, d)) => cmp_big_float(*n, d, *x).reverse(),
        (Num::Big(n, _), Num::Small(_)) => {
            if *n {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }
        (Num::Small(_), Num::Big(n, _)) => {
            if *n {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
        (Num::Big(na, a), Num::Big(nb, b)) => cmp_signed_digits(*na, a, *nb, b),
    }
}

/// Python `==` between two values (objects are only equal to themselves,
/// which cannot be told apart here, so never).
pub(crate) fn py_eq(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (as_num(a), as_num(b)) {
        let nan = |n: &Num<'_>| matches!(n, Num::Float(f) if f.is_nan());
        return !nan(&x) && !nan(&y) && cmp_num(&x, &y) == Ordering::Equal;
    }
    match (a, b) {
        (Value::None, Value::None) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Tuple(x), Value::Tuple(y)) | (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Set(x), Value::Set(y)) => {
            x.iter().all(|p| y.iter().any(|q| py_eq(p, q)))
                && y.iter().all(|q| x.iter().any(|p| py_eq(p, q)))
        }
        (Value::Dict(x), Value::Dict(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.iter()
                        .rev()
                        .find(|(k2, _)| py_eq(k, k2))
                        .is_some_and(|(_, v2)| py_eq(v, v2))
                })
        }
        _ => false,
    }
}

/// `cmp(a, b)` as Python would evaluate it, or `None` where Python raises
/// `TypeError` (values of unrelated types, dictionaries, None, objects).
fn natural_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (as_num(a), as_num(b)) {
        return Some(cmp_num(&x, &y));
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
        (Value::Tuple(x), Value::Tuple(y)) | (Value::List(x), Value::List(y)) => {
            match x.iter().zip(y).position(|(p, q)| !py_eq(p, q)) {
                Some(i) => natural_cmp(&x[i], &y[i]),
                None => Some(x.len().cmp(&y.len())),
            }
        }
        _ => None,
    }
}

/// The key order of xml_marshaller's `version_independent_cmp`: natural
/// Python order, falling back to comparing `repr()`s where Python raises
/// `TypeError` (so `'b'` < `1` < `None`, since `"'b'" < "1" < "None"`).
pub(crate) fn marshal_key_cmp(a: &Value, b: &Value) -> Ordering {
    natural_cmp(a, b).unwrap_or_else(|| python_repr(a).cmp(&python_repr(b)))
}

/// Can this value be a Python dictionary key or set element?
pub(crate) fn is_hashable(v: &Value) -> bool {
    match v {
        Value::List(_) | Value::Dict(_) | Value::Set(_) => false,
        Value::Tuple(items) => items.iter().all(is_hashable),
        _ => true,
    }
}

/// A string equal for exactly the hashable values Python considers equal
/// (`1`, `1.0` and `True` share one); `None` for values only equal to
/// themselves (NaN, objects).
pub(crate) fn hash_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(format!("s{s}")),
        Value::None => Some("N".to_owned()),
        Value::Bool(b) => Some(format!("n{}", u8::from(*b))),
        Value::Int(i) => Some(format!("n{i}")),
        Value::Long(s) => {
            let (neg, digits) = normalize_int_text(s)?;
            Some(format!("n{}{digits}", if neg { "-" } else { "" }))
        }
        Value::Float(f) if f.is_nan() => None,
        Value::Float(f) if f.is_finite() && f.fract() == 0.0 => {
            let text = format!("{:.0}", f.abs());
            let neg = *f < 0.0;
            Some(format!("n{}{text}", if neg { "-" } else { "" }))
        }
        Value::Float(f) => {
            let mut s = String::from("f");
            write_float_repr(&mut s, *f);
            Some(s)
        }
        Value::Tuple(items) => {
            let mut s = format!("t{}", items.len());
            for item in items {
                let k = hash_key(item)?;
                let _ = write!(s, ":{}:{k}", k.len());
            }
            Some(s)
        }
        Value::List(_) | Value::Dict(_) | Value::Set(_) | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr_f(f: f64) -> String {
        let mut s = String::new();
        write_float_repr(&mut s, f);
        s
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1e22, "1e+22"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1234567890123456.0, "1234567890123456.0"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-1.5e-10, "-1.5e-10"),
            (0.1, "0.1"),
            (123456789.12345679, "123456789.12345679"),
            (1e16, "1e+16"),
            (1e-7, "1e-07"),
            (100.0, "100.0"),
            (-0.0, "-0.0"),
            (1e100, "1e+100"),
            // Ties between two shortest candidates go to the even digit.
            (7_198_109_570_635_285.0 / 4.0, "1799527392658821.2"),
            (-7_905_697_348_489_745.0 / 4.0, "-1976424337122436.2"),
        ];
        for (f, want) in cases {
            assert_eq!(repr_f(f), want, "{f:e}");
        }
    }

    #[test]
    fn str_repr_matches_python() {
        assert_eq!(python_repr(&Value::str("a'b")), "\"a'b\"");
        assert_eq!(python_repr(&Value::str("a'\"b")), "'a\\'\"b'");
        assert_eq!(python_repr(&Value::str("é\n\x01")), "'é\\n\\x01'");
        assert_eq!(python_repr(&Value::Tuple(vec![Value::Int(1)])), "(1,)");
        assert_eq!(python_repr(&Value::Set(vec![])), "set()");
    }

    #[test]
    fn int_parsing_matches_python() {
        assert_eq!(parse_py_int(" +1_000 "), Some(Value::Int(1000)));
        assert_eq!(parse_py_int("-007"), Some(Value::Int(-7)));
        assert_eq!(parse_py_int("-0"), Some(Value::Int(0)));
        assert_eq!(
            parse_py_int("-9223372036854775809"),
            Some(Value::Long("-9223372036854775809".into()))
        );
        assert_eq!(parse_py_int("1__0"), None);
        assert_eq!(parse_py_int("_1"), None);
        assert_eq!(parse_py_int("0x10"), None);
        assert_eq!(parse_py_int(""), None);
        assert_eq!(parse_py_int(&"9".repeat(5000)), None);
    }

    #[test]
    fn float_parsing_matches_python() {
        assert_eq!(parse_py_float(" 1_0.5 "), Some(10.5));
        assert_eq!(parse_py_float("-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_py_float("Infinity"), Some(f64::INFINITY));
        assert!(parse_py_float("-nan").is_some_and(f64::is_nan));
        assert_eq!(parse_py_float("1e+16"), Some(1e16));
        assert_eq!(parse_py_float(".5"), Some(0.5));
        assert_eq!(parse_py_float("abc"), None);
        assert_eq!(parse_py_float("0x1p3"), None);
    }

    #[test]
    fn mixed_numbers_compare_exactly() {
        let big = Value::Long("999999999999999999999999999999999999999999".into());
        assert_eq!(marshal_key_cmp(&big, &Value::Float(1e300)), Ordering::Less);
        assert_eq!(
            marshal_key_cmp(&big, &Value::Float(1e10)),
            Ordering::Greater
        );
        assert_eq!(
            marshal_key_cmp(&Value::Int(1), &Value::Float(1.5)),
            Ordering::Less
        );
        assert_eq!(
            marshal_key_cmp(&Value::Int(-1), &Value::Float(-1.5)),
            Ordering::Greater
        );
        assert!(py_eq(&Value::Bool(true), &Value::Float(1.0)));
        assert_eq!(hash_key(&Value::Bool(true)), hash_key(&Value::Float(1.0)));
    }
}
