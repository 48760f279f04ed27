//! Fixture loading, a small Python-literal reader for the `python` field of
//! marshal-cases.json, and a Python-semantics value comparison.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value as Json;
use slapos_proto::{Object, SlapClass, Value};

/// The golden fixtures folder: `$SLAPOS_FIXTURES`, else `shared/` beside the repository.
pub fn fixtures_dir() -> PathBuf {
    let dir = match std::env::var_os("SLAPOS_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/slap-1.26.1")
        }
    };
    assert!(
        dir.join("marshal-cases.json").is_file(),
        "fixtures not found in {} (set SLAPOS_FIXTURES)",
        dir.display()
    );
    dir
}

/// marshal-cases.json, parsed.
pub fn marshal_cases() -> Vec<Json> {
    let text = std::fs::read_to_string(fixtures_dir().join("marshal-cases.json"))
        .expect("read marshal-cases.json");
    match serde_json::from_str(&text).expect("parse marshal-cases.json") {
        Json::Array(cases) => cases,
        _ => panic!("marshal-cases.json is not a list"),
    }
}

/// The exchange fixtures `NNN-*.json`, by file name, in wire order.
pub fn exchanges() -> Vec<(String, Json)> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures_dir())
        .expect("list fixtures")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && n.as_bytes().first().is_some_and(u8::is_ascii_digit))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(fixtures_dir().join(&name)).expect("read fixture");
            let json = serde_json::from_str(&text).expect("parse fixture");
            (name, json)
        })
        .collect()
}

/// The value of form field `name` of an exchange.
pub fn form_field<'a>(exchange: &'a Json, name: &str) -> Option<&'a str> {
    exchange["request"]["form"]
        .as_array()?
        .iter()
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].as_str())
}

/// The exchange fixture whose file name starts with `prefix` (e.g. "021-").
pub fn exchange(prefix: &str) -> Json {
    exchanges()
        .into_iter()
        .find(|(n, _)| n.starts_with(prefix))
        .map(|(_, j)| j)
        .unwrap_or_else(|| panic!("no fixture {prefix}*"))
}

/// Runs `f` on another thread and fails if it takes longer than 20 s:
/// hostile inputs must never hang the decoder.
pub fn within_time<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what}: took too long (or panicked)"))
}

/// Python equality with exact floats: dictionaries and sets compare without
/// regard to order, NaN equals NaN, -0.0 differs from 0.0.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => {
            (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits()
        }
        (Value::Tuple(x), Value::Tuple(y)) | (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Set(x), Value::Set(y)) => {
            x.len() == y.len() && x.iter().all(|p| y.iter().any(|q| same(p, q)))
        }
        (Value::Dict(x), Value::Dict(y)) => same_pairs(x, y),
        (Value::Object(x), Value::Object(y)) => {
            x.class == y.class
                && x.init_args.len() == y.init_args.len()
                && x.init_args
                    .iter()
                    .zip(&y.init_args)
                    .all(|(p, q)| same(p, q))
                && same_pairs(&x.attrs, &y.attrs)
        }
        _ => a == b,
    }
}

fn same_pairs(x: &[(Value, Value)], y: &[(Value, Value)]) -> bool {
    x.len() == y.len()
        && x.iter()
            .all(|(k, v)| y.iter().any(|(k2, v2)| same(k, k2) && same(v, v2)))
}

/// Reads the Python literal subset marshal-cases.json uses in its `python`
/// field; `None` for what it does not cover (lambdas, complex, bytes).
pub fn parse_python(text: &str) -> Option<Value> {
    let mut p = PyParser {
        s: text.as_bytes(),
        text,
        pos: 0,
    };
    let v = p.value()?;
    p.ws();
    (p.pos == p.s.len()).then_some(v)
}

struct PyParser<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl PyParser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        self.ws();
        if self.text[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.ws();
        let rest = &self.text[self.pos..];
        for (lit, v) in [
            ("None", Value::None),
            ("True", Value::Bool(true)),
            ("False", Value::Bool(false)),
            ("float('inf')", Value::Float(f64::INFINITY)),
            ("float('-inf')", Value::Float(f64::NEG_INFINITY)),
            ("float('nan')", Value::Float(f64::NAN)),
        ] {
            if rest.starts_with(lit) {
                self.pos += lit.len();
                return Some(v);
            }
        }
        if let Some(r) = rest.strip_prefix("slapos.slap.slap.") {
            let name_len = r.find('(')?;
            let class = SlapClass::from_name(&r[..name_len])?;
            self.pos += "slapos.slap.slap.".len() + name_len + 1;
            if !self.eat("__getinitargs__=") {
                return None;
            }
            let Value::Tuple(init_args) = self.value()? else {
                return None;
            };
            if !self.eat(",") || !self.eat("__dict__=") {
                return None;
            }
            let Value::Dict(attrs) = self.value()? else {
                return None;
            };
            if !self.eat(")") {
                return None;
            }
            return Some(Value::from(Object::new(class, init_args, attrs)));
        }
        match *self.s.get(self.pos)? {
            b'\'' | b'"' => self.string().map(Value::String),
            b'(' => {
                self.pos += 1;
                let (items, _) = self.items(b')')?;
                Some(Value::Tuple(items))
            }
            b'[' => {
                self.pos += 1;
                Some(Value::List(self.items(b']')?.0))
            }
            b'{' => {
                self.pos += 1;
                self.brace()
            }
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Comma-separated values up to `close`; also says whether a trailing comma was seen.
    fn items(&mut self, close: u8) -> Option<(Vec<Value>, bool)> {
        let mut items = Vec::new();
        let mut trailing = false;
        loop {
            self.ws();
            if self.s.get(self.pos) == Some(&close) {
                self.pos += 1;
                return Some((items, trailing));
            }
            items.push(self.value()?);
            trailing = self.eat(",");
            if !trailing {
                self.ws();
                if self.s.get(self.pos) != Some(&close) {
                    return None;
                }
            }
        }
    }

    fn brace(&mut self) -> Option<Value> {
        if self.eat("}") {
            return Some(Value::Dict(Vec::new()));
        }
        let first = self.value()?;
        if self.eat(":") {
            let mut pairs = vec![(first, self.value()?)];
            while self.eat(",") {
                if self.eat("}") {
                    return Some(Value::Dict(pairs));
                }
                let k = self.value()?;
                if !self.eat(":") {
                    return None;
                }
                pairs.push((k, self.value()?));
            }
            self.eat("}").then_some(Value::Dict(pairs))
        } else {
            let mut items = vec![first];
            while self.eat(",") {
                if self.eat("}") {
                    return Some(Value::Set(items));
                }
                items.push(self.value()?);
            }
            self.eat("}").then_some(Value::Set(items))
        }
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.pos;
        while self
            .s
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e'))
        {
            self.pos += 1;
        }
        let t = &self.text[start..self.pos];
        if self.s.get(self.pos) == Some(&b'j') {
            return None; // complex
        }
        if t.contains(['.', 'e']) {
            return t.parse().ok().map(Value::Float);
        }
        Some(match t.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Long(t.to_owned()),
        })
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.s[self.pos];
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self.text[self.pos..].chars().next()?;
            self.pos += c.len_utf8();
            match c {
                c if c as u32 == u32::from(quote) => return Some(out),
                '\\' => {
                    let e = self.text[self.pos..].chars().next()?;
                    self.pos += 1;
                    let hex = |p: &mut Self, n: usize| {
                        let h = p.text.get(p.pos..p.pos + n)?;
                        p.pos += n;
                        char::from_u32(u32::from_str_radix(h, 16).ok()?)
                    };
                    out.push(match e {
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        '\\' | '\'' | '"' => e,
                        'x' => hex(self, 2)?,
                        'u' => hex(self, 4)?,
                        'U' => hex(self, 8)?,
                        _ => return None,
                    });
                }
                c => out.push(c),
            }
        }
    }
}
