//! The `xml_marshaller` codec (`slapos.util.dumps` / `slapos.util.loads`),
//! byte-compatible with xml_marshaller 1.0.3 as used by slapos.core 1.26.1.
//!
//! Every structured argument and answer of the legacy SLAP API travels in
//! this format (see `docs/slap-protocol.md` §2.1). [`dumps`] writes exactly
//! what Python writes (strings escaped twice, non-ASCII as `&#N;`, `id="iN"`
//! numbering, dictionary keys in Python order, floats as Python `repr`).
//! [`loads`] accepts that plus the variants Python reads (raw UTF-8,
//! `<unicode>`, the erp5 marshaller namespace, `<reference>`, whitespace and
//! comments) and is hardened for untrusted input: no DTD, no entity but the
//! predefined ones, bounded size, depth and reference expansion, and only the
//! four slap classes as objects.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

pub use crate::error::{DecodeError, EncodeError, Location};
pub use crate::pyobj::python_str;
use crate::pyobj::{
    hash_key, is_hashable, marshal_key_cmp, normalize_int_text, parse_py_float, parse_py_int,
    py_eq, write_float_repr,
};
use crate::xmlin::{
    attribute_value, check_declaration, push_normalized, reference_error, resolve_reference, Input,
    MARSHAL_NS,
};

/// The Python module of every object SLAP exchanges.
pub const SLAP_MODULE: &str = "slapos.slap.slap";

/// A value of the marshal format: the Python types xml_marshaller writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None` (`<none/>`).
    None,
    /// `bool` (`<bool>1</bool>`).
    Bool(bool),
    /// `int` that fits an `i64` (`<int>`).
    Int(i64),
    /// `int` outside `i64`: decimal text with an optional leading `-`.
    /// Written `<int>` below 10^24 in magnitude (as Python does) and `<long>` above.
    Long(String),
    /// `float` (`<float>`, Python `repr` text).
    Float(f64),
    /// `str` (`<string>`; `bytes` are written the same way by Python).
    String(String),
    /// `tuple` (`<tuple>`, never given an id).
    Tuple(Vec<Value>),
    /// `list` (`<list id>`).
    List(Vec<Value>),
    /// `set` (`<set id>`), written in vector order (Python writes its hash
    /// order); decoding keeps document order and drops duplicates.
    Set(Vec<Value>),
    /// `dict` (`<dictionary id>`), entries in insertion order; [`dumps`]
    /// sorts them as Python does.
    Dict(Vec<(Value, Value)>),
    /// An instance of one of the four slap classes (`<object>`).
    Object(Box<Object>),
}

/// An instance of a slap class: constructor arguments and instance attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// The class (always in module [`SLAP_MODULE`]).
    pub class: SlapClass,
    /// The `__getinitargs__()` tuple: positional constructor arguments.
    pub init_args: Vec<Value>,
    /// The instance `__dict__`; keys are strings in practice.
    pub attrs: Vec<(Value, Value)>,
}

/// The only classes `slapos.util.loads`/`dumps` let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlapClass {
    /// `slapos.slap.slap.Computer`: init args `(computer_id,)`.
    Computer,
    /// `slapos.slap.slap.ComputerPartition`: init args `(computer_id, partition_id, request_dict)`.
    ComputerPartition,
    /// `slapos.slap.slap.SoftwareRelease`: init args `(software_release, computer_guid)`.
    SoftwareRelease,
    /// `slapos.slap.slap.SoftwareInstance`: no init args.
    SoftwareInstance,
}

impl SlapClass {
    /// All four classes.
    pub const ALL: [SlapClass; 4] = [
        SlapClass::Computer,
        SlapClass::ComputerPartition,
        SlapClass::SoftwareRelease,
        SlapClass::SoftwareInstance,
    ];

    /// The Python class name (`class` attribute of `<object>`).
    pub fn name(self) -> &'static str {
        match self {
            SlapClass::Computer => "Computer",
            SlapClass::ComputerPartition => "ComputerPartition",
            SlapClass::SoftwareRelease => "SoftwareRelease",
            SlapClass::SoftwareInstance => "SoftwareInstance",
        }
    }

    /// The class with this Python name, if it is one of the four.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// How many positional arguments the Python constructor accepts, so that
    /// documents Python would fail to load are refused here too.
    fn init_arity(self) -> std::ops::RangeInclusive<usize> {
        match self {
            SlapClass::Computer => 1..=3,
            SlapClass::ComputerPartition => 0..=5,
            SlapClass::SoftwareRelease => 0..=3,
            SlapClass::SoftwareInstance => 0..=0,
        }
    }
}

impl Object {
    /// Builds an object from its constructor arguments and attributes.
    pub fn new(class: SlapClass, init_args: Vec<Value>, attrs: Vec<(Value, Value)>) -> Self {
        Object {
            class,
            init_args,
            attrs,
        }
    }

    /// The attribute named `name` (the last one if repeated, as `setattr` would leave it).
    pub fn get(&self, name: &str) -> Option<&Value> {
        lookup(&self.attrs, name)
    }
}

fn lookup<'v>(pairs: &'v [(Value, Value)], key: &str) -> Option<&'v Value> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

impl Value {
    /// A [`Value::String`].
    pub fn str(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// A [`Value::Dict`] mapping strings to strings, in the given order.
    pub fn dict_of_strs<K, V>(items: impl IntoIterator<Item = (K, V)>) -> Value
    where
        K: Into<String>,
        V: Into<String>,
    {
        Value::Dict(
            items
                .into_iter()
                .map(|(k, v)| (Value::String(k.into()), Value::String(v.into())))
                .collect(),
        )
    }

    /// The text of a [`Value::String`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The flag of a [`Value::Bool`] (see [`Value::is_truthy`] for Python truthiness).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The number of a [`Value::Int`].
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The items of a list, tuple or set.
    pub fn as_slice(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => Some(v),
            _ => None,
        }
    }

    /// The entries of a [`Value::Dict`].
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The object of a [`Value::Object`].
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The entry with string key `key` of a dictionary, or the attribute
    /// `key` of an object (the last one if repeated, as Python keeps it).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => lookup(d, key),
            Value::Object(o) => o.get(key),
            _ => None,
        }
    }

    /// Python truthiness (`if value:`): false for `None`, `False`, zero,
    /// empty strings and empty containers; objects are true.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::None => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Long(s) => normalize_int_text(s).is_none_or(|(_, d)| d != "0"),
            Value::Float(f) => *f != 0.0,
            Value::String(s) => !s.is_empty(),
            Value::Tuple(v) | Value::List(v) | Value::Set(v) => !v.is_empty(),
            Value::Dict(d) => !d.is_empty(),
            Value::Object(_) => true,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<Object> for Value {
    fn from(o: Object) -> Self {
        Value::Object(Box::new(o))
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::None, Into::into)
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Deepest nesting [`dumps`] accepts (Python's own recursion limit is ~1000).
pub const MAX_ENCODE_DEPTH: usize = 1024;

/// Encodes a value exactly as Python `slapos.util.dumps` does (as text; Python returns the same bytes).
///
/// Fails on characters XML 1.0 cannot carry, malformed [`Value::Long`] text
/// and values nested deeper than [`MAX_ENCODE_DEPTH`].
pub fn dumps(v: &Value) -> Result<String, EncodeError> {
    let mut enc = Encoder {
        out: String::with_capacity(estimate_len(v, 0) + 20),
        next_id: 1,
    };
    enc.out.push_str("<marshal>");
    enc.value(v, 0)?;
    enc.out.push_str("</marshal>");
    Ok(enc.out)
}

/// Rough size of the encoding, to allocate the output once in the common case.
fn estimate_len(v: &Value, depth: usize) -> usize {
    if depth > MAX_ENCODE_DEPTH {
        return 0;
    }
    match v {
        Value::String(s) => 17 + s.len() + s.len() / 8,
        Value::Long(s) => 13 + s.len(),
        Value::Tuple(items) | Value::List(items) | Value::Set(items) => {
            28 + items
                .iter()
                .map(|i| estimate_len(i, depth + 1))
                .sum::<usize>()
        }
        Value::Dict(pairs) => {
            32 + pairs
                .iter()
                .map(|(k, v)| estimate_len(k, depth + 1) + estimate_len(v, depth + 1))
                .sum::<usize>()
        }
        Value::Object(o) => {
            110 + o
                .init_args
                .iter()
                .map(|i| estimate_len(i, depth + 1))
                .sum::<usize>()
                + o.attrs
                    .iter()
                    .map(|(k, v)| estimate_len(k, depth + 1) + estimate_len(v, depth + 1))
                    .sum::<usize>()
        }
        _ => 24,
    }
}

struct Encoder {
    out: String,
    /// Last id handed out; the root counts as 1.
    next_id: u64,
}

/// Largest magnitude Python writes as `<int>`: it tests `-1e24 < v < 1e24`
/// against the float 1e24, which is 999999999999999983222784.
const FLOAT_1E24: &str = "999999999999999983222784";

impl Encoder {
    fn value(&mut self, v: &Value, depth: usize) -> Result<(), EncodeError> {
        if depth > MAX_ENCODE_DEPTH {
            return Err(EncodeError::TooDeep(MAX_ENCODE_DEPTH));
        }
        match v {
            Value::None => self.out.push_str("<none/>"),
            Value::Bool(b) => self.out.push_str(if *b {
                "<bool>1</bool>"
            } else {
                "<bool>0</bool>"
            }),
            Value::Int(i) => {
                let _ = write!(self.out, "<int>{i}</int>");
            }
            Value::Long(s) => {
                let (neg, digits) =
                    normalize_int_text(s).ok_or_else(|| EncodeError::InvalidLong(s.clone()))?;
                let small = digits.len() < FLOAT_1E24.len()
                    || (digits.len() == FLOAT_1E24.len() && digits < FLOAT_1E24);
                let tag = if small { "int" } else { "long" };
                let sign = if neg { "-" } else { "" };
                let _ = write!(self.out, "<{tag}>{sign}{digits}</{tag}>");
            }
            Value::Float(f) => {
                self.out.push_str("<float>");
                write_float_repr(&mut self.out, *f);
                self.out.push_str("</float>");
            }
            Value::String(s) => {
                self.out.push_str("<string>");
                write_escaped_twice(&mut self.out, s)?;
                self.out.push_str("</string>");
            }
            Value::Tuple(items) => {
                if items.is_empty() {
                    self.out.push_str("<tuple/>");
                } else {
                    self.out.push_str("<tuple>");
                    for item in items {
                        self.value(item, depth + 1)?;
                    }
                    self.out.push_str("</tuple>");
                }
            }
            Value::List(items) => self.sequence("list", items, depth)?,
            Value::Set(items) => self.sequence("set", items, depth)?,
            Value::Dict(pairs) => self.dict(pairs, depth)?,
            Value::Object(o) => {
                self.next_id += 1;
                let _ = write!(
                    self.out,
                    "<object id=\"i{}\" module=\"{SLAP_MODULE}\" class=\"{}\">",
                    self.next_id,
                    o.class.name()
                );
                self.value_tuple(&o.init_args, depth + 1)?;
                if o.attrs.is_empty() {
                    // Python 3.11+: `__getstate__()` of an object with an
                    // empty `__dict__` is None.
                    self.out.push_str("<none/>");
                } else {
                    self.dict(&o.attrs, depth + 1)?;
                }
                self.out.push_str("</object>");
            }
        }
        Ok(())
    }

    fn value_tuple(&mut self, items: &[Value], depth: usize) -> Result<(), EncodeError> {
        if items.is_empty() {
            self.out.push_str("<tuple/>");
            return Ok(());
        }
        self.out.push_str("<tuple>");
        for item in items {
            self.value(item, depth + 1)?;
        }
        self.out.push_str("</tuple>");
        Ok(())
    }

    fn sequence(&mut self, tag: &str, items: &[Value], depth: usize) -> Result<(), EncodeError> {
        self.next_id += 1;
        let _ = write!(self.out, "<{tag} id=\"i{}\"", self.next_id);
        if items.is_empty() {
            self.out.push_str("/>");
            return Ok(());
        }
        self.out.push('>');
        for item in items {
            self.value(item, depth + 1)?;
        }
        let _ = write!(self.out, "</{tag}>");
        Ok(())
    }

    fn dict(&mut self, pairs: &[(Value, Value)], depth: usize) -> Result<(), EncodeError> {
        self.next_id += 1;
        let _ = write!(self.out, "<dictionary id=\"i{}\"", self.next_id);
        if pairs.is_empty() {
            self.out.push_str("/>");
            return Ok(());
        }
        self.out.push('>');
        match sorted_order(pairs) {
            None => {
                for (k, v) in pairs {
                    self.value(k, depth + 1)?;
                    self.value(v, depth + 1)?;
                }
            }
            Some(order) => {
                for i in order {
                    let (k, v) = &pairs[i];
                    self.value(k, depth + 1)?;
                    self.value(v, depth + 1)?;
                }
            }
        }
        self.out.push_str("</dictionary>");
        Ok(())
    }
}

/// The order xml_marshaller writes dictionary entries in, as indices into
/// `pairs`; `None` when they already are in that order.
fn sorted_order(pairs: &[(Value, Value)]) -> Option<Vec<usize>> {
    let all_str = pairs.iter().all(|(k, _)| matches!(k, Value::String(_)));
    if all_str {
        let key = |i: usize| pairs[i].0.as_str().unwrap_or_default();
        if (1..pairs.len()).all(|i| key(i - 1) <= key(i)) {
            return None;
        }
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by(|&a, &b| key(a).cmp(key(b)));
        return Some(order);
    }
    // Mixed keys: the Python comparison is not always a total order (the
    // repr fallback can make cycles such as None < True < 2 < None), which
    // `slice::sort_by` may panic on. Small dictionaries replay CPython's
    // own algorithm, so even such orders come out as Python writes them.
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    let less =
        |a: usize, b: usize| marshal_key_cmp(&pairs[a].0, &pairs[b].0) == std::cmp::Ordering::Less;
    if order.len() < CPYTHON_MIN_MERGE {
        cpython_small_sort(&mut order, &less);
    } else {
        merge_sort(&mut order, &less);
    }
    Some(order)
}

/// Below this many items CPython's `list.sort` (3.11/3.12) is one run
/// extended by binary insertion.
const CPYTHON_MIN_MERGE: usize = 64;

/// CPython's `list.sort` for fewer than 64 items: the leading run (strictly
/// descending runs are reversed), then binary insertion of the rest. Asks
/// `less(a, b)` exactly as CPython asks `a < b`.
fn cpython_small_sort(v: &mut [usize], less: &dyn Fn(usize, usize) -> bool) {
    let n = v.len();
    if n < 2 {
        return;
    }
    let mut run = 2;
    if less(v[1], v[0]) {
        while run < n && less(v[run], v[run - 1]) {
            run += 1;
        }
        v[..run].reverse();
    } else {
        while run < n && !less(v[run], v[run - 1]) {
            run += 1;
        }
    }
    for start in run..n {
        let pivot = v[start];
        let (mut l, mut r) = (0, start);
        while l < r {
            let p = l + (r - l) / 2;
            if less(pivot, v[p]) {
                r = p;
            } else {
                l = p + 1;
            }
        }
        v.copy_within(l..start, l + 1);
        v[l] = pivot;
    }
}

/// Stable merge sort that never panics whatever `less` answers (used for
/// large mixed-key dictionaries, where it matches CPython for consistent orders).
fn merge_sort(v: &mut [usize], less: &dyn Fn(usize, usize) -> bool) {
    if v.len() <= 1 {
        return;
    }
    let mid = v.len() / 2;
    merge_sort(&mut v[..mid], less);
    merge_sort(&mut v[mid..], less);
    let mut merged = Vec::with_capacity(v.len());
    let (mut i, mut j) = (0, mid);
    while i < mid && j < v.len() {
        if less(v[j], v[i]) {
            merged.push(v[j]);
            j += 1;
        } else {
            merged.push(v[i]);
            i += 1;
        }
    }
    merged.extend_from_slice(&v[i..mid]);
    merged.extend_from_slice(&v[j..]);
    v.copy_from_slice(&merged);
}

/// Writes string text the way xml_marshaller + lxml do: `saxutils.escape`
/// (`&` `<` `>` to entities), then XML escaping of that result in ASCII
/// (`&` again, CR as `&#13;`, non-ASCII as decimal references).
fn write_escaped_twice(out: &mut String, s: &str) -> Result<(), EncodeError> {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let plain = (0x20..0x80).contains(&b) && b != b'&' && b != b'<' && b != b'>'
            || b == b'\t'
            || b == b'\n';
        if plain {
            i += 1;
            continue;
        }
        out.push_str(&s[start..i]);
        if b < 0x80 {
            match b {
                b'&' => out.push_str("&amp;amp;"),
                b'<' => out.push_str("&amp;lt;"),
                b'>' => out.push_str("&amp;gt;"),
                b'\r' => out.push_str("&#13;"),
                _ => return Err(invalid_char(s, i)),
            }
            i += 1;
        } else {
            // `i` is always on a character boundary: it only moves over
            // single ASCII bytes or whole characters.
            let c = s[i..].chars().next().unwrap_or('\u{fffd}');
            if c == '\u{fffe}' || c == '\u{ffff}' {
                return Err(invalid_char(s, i));
            }
            let _ = write!(out, "&#{};", u32::from(c));
            i += c.len_utf8();
        }
        start = i;
    }
    out.push_str(&s[start..]);
    Ok(())
}

fn invalid_char(s: &str, byte_index: usize) -> EncodeError {
    EncodeError::InvalidChar {
        code: s[byte_index..].chars().next().map_or(0, u32::from),
        index: s[..byte_index].chars().count(),
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Bounds [`loads_with_limits`] enforces on untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted document, in bytes (default 16 MiB).
    pub max_size: usize,
    /// Deepest element nesting, root included, and deepest value built
    /// through references (default 128; values above [`MAX_DEPTH_CAP`] are capped).
    pub max_depth: usize,
    /// Most bytes (estimated) that `<reference>` copies may add to the value
    /// (default 16 MiB); stops "billion laughs" built from references.
    pub max_reference_expansion: usize,
}

/// Hard ceiling on [`Limits::max_depth`]: deeper values could overflow the
/// stack in recursive operations such as `Drop` or [`dumps`].
pub const MAX_DEPTH_CAP: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: 16 * 1024 * 1024,
            max_depth: 128,
            max_reference_expansion: 16 * 1024 * 1024,
        }
    }
}

/// Decodes a marshal document with the default [`Limits`].
pub fn loads(xml: &str) -> Result<Value, DecodeError> {
    loads_with_limits(xml, &Limits::default())
}

/// Decodes a marshal document, refusing anything outside `limits`.
pub fn loads_with_limits(xml: &str, limits: &Limits) -> Result<Value, DecodeError> {
    let input = Input::new(xml, limits.max_size)?;
    let decoder = Decoder {
        input: &input,
        max_depth: limits.max_depth.min(MAX_DEPTH_CAP),
        max_expansion: limits.max_reference_expansion,
        expansion_used: 0,
        stack: Vec::new(),
        wanted: referenced_ids(input.body),
        stored: HashMap::new(),
        result: None,
    };
    decoder.run()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    String,
    Int,
    Long,
    Float,
    Bool,
    None,
}

impl Scalar {
    fn tag(self) -> &'static str {
        match self {
            Scalar::String => "string",
            Scalar::Int => "int",
            Scalar::Long => "long",
            Scalar::Float => "float",
            Scalar::Bool => "bool",
            Scalar::None => "none",
        }
    }
}

/// An element being read.
enum Frame {
    Root(Option<Value>),
    Scalar(Scalar, String),
    Tuple(Vec<Value>),
    List(Option<String>, Vec<Value>),
    Set(Option<String>, Vec<Value>),
    /// Keys and values alternating.
    Dict(Option<String>, Vec<Value>),
    Object {
        id: Option<String>,
        class: SlapClass,
        init_args: Option<Vec<Value>>,
        attrs: Option<Vec<(Value, Value)>>,
        children: usize,
    },
    /// A `<reference>`, already resolved; takes no content.
    Reference(Value),
}

impl Frame {
    fn id(&self) -> Option<&str> {
        match self {
            Frame::List(id, _) | Frame::Set(id, _) | Frame::Dict(id, _) => id.as_deref(),
            Frame::Object { id, .. } => id.as_deref(),
            _ => None,
        }
    }
}

/// A copy of a container kept for `<reference>`s to it.
struct Stored {
    value: Value,
    cost: usize,
    depth: usize,
}

struct Decoder<'a, 'i> {
    input: &'a Input<'i>,
    max_depth: usize,
    max_expansion: usize,
    expansion_used: usize,
    stack: Vec<Frame>,
    /// Ids some `<reference>` points to: only those containers are kept.
    wanted: HashSet<String>,
    stored: HashMap<String, Stored>,
    result: Option<Value>,
}

/// The `id`, `module` and `class` attributes of an element.
#[derive(Default)]
struct Attrs {
    id: Option<String>,
    module: Option<String>,
    class: Option<String>,
}

impl Decoder<'_, '_> {
    fn run(mut self) -> Result<Value, DecodeError> {
        let mut reader = NsReader::from_str(self.input.body);
        let mut first = true;
        loop {
            let pos = reader.buffer_position();
            let (ns, event) = match reader.read_resolved_event() {
                Ok(x) => x,
                Err(e) => return Err(self.input.xml_error(&e, reader.error_position())),
            };
            match event {
                Event::Decl(decl) => {
                    if !first || pos != 0 {
                        return Err(self
                            .syntax("an XML declaration is only allowed at the very start", pos));
                    }
                    check_declaration(&decl, self.input, pos)?;
                }
                Event::DocType(_) => return Err(DecodeError::Doctype { at: self.at(pos) }),
                Event::PI(pi) => {
                    return Err(DecodeError::ProcessingInstruction {
                        target: pi.target().to_owned(),
                        at: self.at(pos),
                    })
                }
                Event::Comment(_) => {}
                Event::Start(e) => {
                    let name = element_name(&ns, &e, self.input, pos)?;
                    self.start(name, &e, pos)?;
                }
                Event::Empty(e) => {
                    let name = element_name(&ns, &e, self.input, pos)?;
                    self.start(name, &e, pos)?;
                    self.end(pos)?;
                }
                Event::End(_) => self.end(pos)?,
                Event::Text(t) => self.text(t.as_ref(), true, pos)?,
                Event::CData(c) => self.text(c.as_ref(), true, pos)?,
                Event::GeneralRef(r) => {
                    let name: &str = r.as_ref();
                    let c = resolve_reference(name)
                        .map_err(|m| reference_error(name, m, self.at(pos)))?;
                    let mut buf = [0u8; 4];
                    // A character reference is never end-of-line normalised (`&#13;` stays CR).
                    self.text(c.encode_utf8(&mut buf), false, pos)?;
                }
                Event::Eof => break,
            }
            first = false;
        }
        match self.result {
            Some(v) if self.stack.is_empty() => Ok(v),
            _ => Err(DecodeError::Truncated {
                at: self.at(self.input.body.len() as u64),
            }),
        }
    }

    fn at(&self, pos: u64) -> Location {
        self.input.at(pos)
    }

    fn syntax(&self, message: &str, pos: u64) -> DecodeError {
        DecodeError::Syntax {
            message: message.to_owned(),
            at: self.at(pos),
        }
    }

    fn invalid(&self, message: String, pos: u64) -> DecodeError {
        DecodeError::Invalid {
            message,
            at: self.at(pos),
        }
    }

    /// Character data; `normalize` applies XML end-of-line handling (raw
    /// text and CDATA, not character references).
    fn text(&mut self, text: &str, normalize: bool, pos: u64) -> Result<(), DecodeError> {
        match self.stack.last_mut() {
            Some(Frame::Scalar(_, buf)) => {
                if normalize {
                    push_normalized(buf, text);
                } else {
                    buf.push_str(text);
                }
                Ok(())
            }
            _ if is_xml_space(text) => Ok(()),
            None => Err(self.syntax("text outside the root element", pos)),
            Some(frame) => {
                let inside = match frame {
                    Frame::Root(_) => "marshal",
                    Frame::Tuple(_) => "tuple",
                    Frame::List(..) => "list",
                    Frame::Set(..) => "set",
                    Frame::Dict(..) => "dictionary",
                    Frame::Object { .. } => "object",
                    Frame::Reference(_) => "reference",
                    Frame::Scalar(s, _) => s.tag(),
                };
                Err(self.invalid(
                    format!("unexpected text {:?} inside <{inside}>", shorten(text)),
                    pos,
                ))
            }
        }
    }

    fn start(&mut self, name: &str, e: &BytesStart<'_>, pos: u64) -> Result<(), DecodeError> {
        if self.result.is_some() {
            return Err(self.syntax("content after the root element", pos));
        }
        if self.stack.len() >= self.max_depth {
            return Err(DecodeError::TooDeep {
                limit: self.max_depth,
                at: self.at(pos),
            });
        }
        // Attributes are checked on every element, so that a malformed or
        // entity-bearing attribute is refused wherever it appears.
        let attrs = self.attrs(e, pos)?;
        let Some(parent) = self.stack.last() else {
            if name != "marshal" {
                return Err(self.invalid(
                    format!("the root element must be <marshal>, found <{name}>"),
                    pos,
                ));
            }
            self.stack.push(Frame::Root(None));
            return Ok(());
        };
        match parent {
            Frame::Scalar(s, _) => {
                return Err(self.invalid(
                    format!("element <{name}> is not allowed inside <{}>", s.tag()),
                    pos,
                ))
            }
            Frame::Reference(_) => {
                return Err(self.invalid(
                    format!("element <{name}> is not allowed inside <reference>"),
                    pos,
                ))
            }
            Frame::Root(Some(_)) => {
                return Err(self.invalid(
                    format!("<marshal> holds exactly one value, found a second one (<{name}>)"),
                    pos,
                ))
            }
            Frame::Object { children, .. } if *children >= 2 => {
                return Err(self.invalid(
                    format!(
                    "<object> holds a <tuple> and a <dictionary> only, found <{name}> after them"
                ),
                    pos,
                ))
            }
            _ => {}
        }
        let target = |id: Option<String>| id.filter(|id| self.wanted.contains(id));
        let frame = match name {
            "string" | "unicode" => Frame::Scalar(Scalar::String, String::new()),
            "int" => Frame::Scalar(Scalar::Int, String::new()),
            "long" => Frame::Scalar(Scalar::Long, String::new()),
            "float" => Frame::Scalar(Scalar::Float, String::new()),
            "bool" => Frame::Scalar(Scalar::Bool, String::new()),
            "none" => Frame::Scalar(Scalar::None, String::new()),
            "tuple" => Frame::Tuple(Vec::new()),
            "list" => Frame::List(target(attrs.id), Vec::new()),
            "set" => Frame::Set(target(attrs.id), Vec::new()),
            "dictionary" => Frame::Dict(target(attrs.id), Vec::new()),
            "object" => self.object_frame(attrs, pos)?,
            "reference" => Frame::Reference(self.resolve(attrs, pos)?),
            "marshal" => {
                return Err(self.invalid(
                    "<marshal> is only allowed as the root element".to_owned(),
                    pos,
                ))
            }
            "complex" | "code" => {
                return Err(DecodeError::Unsupported {
                    name: name.to_owned(),
                    at: self.at(pos),
                })
            }
            _ => {
                return Err(DecodeError::UnknownElement {
                    name: name.to_owned(),
                    at: self.at(pos),
                })
            }
        };
        if let Some(Frame::Object { children, .. }) = self.stack.last_mut() {
            *children += 1;
        }
        self.stack.push(frame);
        Ok(())
    }

    /// The attributes this format uses; fails on malformed attributes.
    fn attrs(&self, e: &BytesStart<'_>, pos: u64) -> Result<Attrs, DecodeError> {
        let mut attrs = Attrs::default();
        if e.attributes_raw().is_empty() {
            return Ok(attrs);
        }
        for attr in e.attributes() {
            let attr = attr.map_err(|err| self.syntax(&err.to_string(), pos))?;
            if attr.key.as_namespace_binding().is_some() {
                continue;
            }
            let slot = match attr.key.local_name().as_ref() {
                "id" => &mut attrs.id,
                "module" => &mut attrs.module,
                "class" => &mut attrs.class,
                _ => continue,
            };
            *slot = Some(attribute_value(&attr, self.input, pos)?.into_owned());
        }
        Ok(attrs)
    }

    fn object_frame(&self, attrs: Attrs, pos: u64) -> Result<Frame, DecodeError> {
        let (Some(module), Some(class)) = (attrs.module, attrs.class) else {
            return Err(self.invalid(
                "<object> needs both a module and a class attribute".to_owned(),
                pos,
            ));
        };
        let class = match SlapClass::from_name(&class) {
            Some(c) if module == SLAP_MODULE => c,
            _ => {
                return Err(DecodeError::ForbiddenClass {
                    module,
                    class,
                    at: self.at(pos),
                })
            }
        };
        Ok(Frame::Object {
            id: attrs.id.filter(|id| self.wanted.contains(id)),
            class,
            init_args: None,
            attrs: None,
            children: 0,
        })
    }

    /// A copy of the container a `<reference id>` names.
    fn resolve(&mut self, attrs: Attrs, pos: u64) -> Result<Value, DecodeError> {
        let Some(id) = attrs.id else {
            return Err(self.invalid("<reference> without an id attribute".to_owned(), pos));
        };
        let Some(stored) = self.stored.get(&id) else {
            return Err(DecodeError::DanglingReference {
                id,
                at: self.at(pos),
            });
        };
        if self.stack.len() + stored.depth > self.max_depth {
            return Err(DecodeError::TooDeep {
                limit: self.max_depth,
                at: self.at(pos),
            });
        }
        self.expansion_used = self.expansion_used.saturating_add(stored.cost);
        if self.expansion_used > self.max_expansion {
            return Err(DecodeError::ReferenceExpansion {
                limit: self.max_expansion,
                at: self.at(pos),
            });
        }
        Ok(stored.value.clone())
    }

    fn end(&mut self, pos: u64) -> Result<(), DecodeError> {
        let Some(frame) = self.stack.pop() else {
            return Err(self.syntax("closing tag without an open element", pos));
        };
        let id = frame.id().map(str::to_owned);
        let value = match frame {
            Frame::Root(value) => {
                let value = value
                    .ok_or_else(|| self.invalid("<marshal> holds no value".to_owned(), pos))?;
                self.result = Some(value);
                return Ok(());
            }
            Frame::Scalar(kind, text) => self.scalar(kind, text, pos)?,
            Frame::Tuple(items) => Value::Tuple(items),
            Frame::List(_, items) => Value::List(items),
            Frame::Set(_, mut items) => {
                if let Some(bad) = items.iter().find(|v| !is_hashable(v)) {
                    return Err(
                        self.invalid(format!("unhashable set element: {}", kind_name(bad)), pos)
                    );
                }
                dedup(&mut items, |v| v, |_, _| {});
                Value::Set(items)
            }
            Frame::Dict(_, items) => Value::Dict(self.dict_pairs(items, pos)?),
            Frame::Object {
                class,
                init_args,
                attrs,
                ..
            } => self.object(class, init_args, attrs, pos)?,
            Frame::Reference(v) => v,
        };
        // Frames only carry ids that some `<reference>` points to.
        if let Some(id) = id {
            self.store(id, &value, pos)?;
        }
        self.deliver(value, pos)
    }

    fn scalar(&self, kind: Scalar, text: String, pos: u64) -> Result<Value, DecodeError> {
        let bad = |what: &str| {
            self.invalid(
                format!(
                    "<{}> holds {:?}, which is not {what}",
                    kind.tag(),
                    shorten(&text)
                ),
                pos,
            )
        };
        Ok(match kind {
            Scalar::String => Value::String(unescape_once(text)),
            Scalar::Int | Scalar::Long => parse_py_int(&text).ok_or_else(|| bad("an integer"))?,
            Scalar::Bool => Value::Bool(
                parse_py_int(&text)
                    .ok_or_else(|| bad("an integer"))?
                    .is_truthy(),
            ),
            Scalar::Float => Value::Float(parse_py_float(&text).ok_or_else(|| bad("a float"))?),
            Scalar::None => {
                if !is_xml_space(&text) {
                    return Err(bad("empty"));
                }
                Value::None
            }
        })
    }

    fn dict_pairs(&self, items: Vec<Value>, pos: u64) -> Result<Vec<(Value, Value)>, DecodeError> {
        if items.len() % 2 != 0 {
            return Err(self.invalid(
                "<dictionary> holds an odd number of values: a key lacks its value".to_owned(),
                pos,
            ));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if !is_hashable(&k) {
                return Err(
                    self.invalid(format!("unhashable dictionary key: {}", kind_name(&k)), pos)
                );
            }
            pairs.push((k, v));
        }
        // Python keeps the first key's position and the last value.
        dedup(&mut pairs, |(k, _)| k, |kept, (_, v)| kept.1 = v);
        Ok(pairs)
    }

    fn object(
        &self,
        class: SlapClass,
        init_args: Option<Vec<Value>>,
        attrs: Option<Vec<(Value, Value)>>,
        pos: u64,
    ) -> Result<Value, DecodeError> {
        let (Some(init_args), Some(attrs)) = (init_args, attrs) else {
            return Err(self.invalid(
                "<object> must hold a <tuple> of constructor arguments then a <dictionary> of attributes".to_owned(),
                pos,
            ));
        };
        let arity = class.init_arity();
        if !arity.contains(&init_args.len()) {
            return Err(self.invalid(
                format!(
                    "{} takes {} to {} constructor arguments, got {}",
                    class.name(),
                    arity.start(),
                    arity.end(),
                    init_args.len()
                ),
                pos,
            ));
        }
        if let Some((k, _)) = attrs.iter().find(|(k, _)| k.as_str().is_none()) {
            return Err(self.invalid(
                format!(
                    "object attribute names must be strings, found {}",
                    kind_name(k)
                ),
                pos,
            ));
        }
        Ok(Value::Object(Box::new(Object {
            class,
            init_args,
            attrs,
        })))
    }

    /// Keeps a copy of a finished container some `<reference>` points to.
    fn store(&mut self, id: String, value: &Value, pos: u64) -> Result<(), DecodeError> {
        let (cost, depth) = measure(value);
        self.expansion_used = self.expansion_used.saturating_add(cost);
        if self.expansion_used > self.max_expansion {
            return Err(DecodeError::ReferenceExpansion {
                limit: self.max_expansion,
                at: self.at(pos),
            });
        }
        self.stored.insert(
            id,
            Stored {
                value: value.clone(),
                cost,
                depth,
            },
        );
        Ok(())
    }

    fn deliver(&mut self, value: Value, pos: u64) -> Result<(), DecodeError> {
        let misplaced = |this: &Self, msg: &str| this.invalid(msg.to_owned(), pos);
        match self.stack.last_mut() {
            Some(Frame::Root(slot)) => *slot = Some(value),
            Some(Frame::Tuple(items) | Frame::List(_, items) | Frame::Set(_, items)) => {
                items.push(value);
            }
            Some(Frame::Dict(_, items)) => items.push(value),
            Some(Frame::Object {
                init_args, attrs, ..
            }) => {
                if init_args.is_none() {
                    match value {
                        Value::Tuple(items) => *init_args = Some(items),
                        _ => {
                            return Err(misplaced(
                                self,
                                "the first child of <object> must be a <tuple> of constructor arguments",
                            ))
                        }
                    }
                } else {
                    match value {
                        Value::Dict(pairs) => *attrs = Some(pairs),
                        // What Python 3.11+ writes for an object without attributes.
                        Value::None => *attrs = Some(Vec::new()),
                        _ => {
                            return Err(misplaced(
                                self,
                                "the second child of <object> must be a <dictionary> of attributes",
                            ))
                        }
                    }
                }
            }
            // `start` refuses children of scalars and references, and the
            // root frame is consumed by `end`.
            Some(Frame::Scalar(..) | Frame::Reference(_)) | None => {
                return Err(misplaced(self, "value in a place that cannot hold one"))
            }
        }
        Ok(())
    }
}

/// The local name of an element, if it is in no namespace or in the
/// marshaller namespace.
fn element_name<'e>(
    ns: &ResolveResult<'_>,
    e: &'e BytesStart<'_>,
    input: &Input<'_>,
    pos: u64,
) -> Result<&'e str, DecodeError> {
    let local: &'e str = e.local_name().into_inner();
    match ns {
        ResolveResult::Unbound => Ok(local),
        ResolveResult::Bound(n) if n.as_ref() == MARSHAL_NS => Ok(local),
        ResolveResult::Bound(n) => Err(DecodeError::Invalid {
            message: format!(
                "element <{local}> is in namespace {:?}; only no namespace or {MARSHAL_NS:?} is accepted",
                n.as_ref()
            ),
            at: input.at(pos),
        }),
        ResolveResult::Unknown(prefix) => Err(DecodeError::Syntax {
            message: format!("undeclared namespace prefix {prefix:?}"),
            at: input.at(pos),
        }),
    }
}

/// Ids named by `<reference>` elements: the decoder keeps copies of those
/// containers only. A cheap text search skips the scan for the usual
/// documents, which have none.
fn referenced_ids(body: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let bytes = body.as_bytes();
    let mentioned = body
        .match_indices("reference")
        .any(|(i, _)| i > 0 && matches!(bytes[i - 1], b'<' | b':'));
    if !mentioned {
        return ids;
    }
    let mut reader = quick_xml::Reader::from_str(body);
    let input = Input {
        full: body,
        body,
        skip: 0,
    };
    // Errors end the scan; the decoding pass reports them.
    while let Ok(event) = reader.read_event() {
        match event {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "reference" => {
                for attr in e.attributes().flatten() {
                    if attr.key.local_name().as_ref() == "id" {
                        if let Ok(v) = attribute_value(&attr, &input, 0) {
                            ids.insert(v.into_owned());
                        }
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    ids
}

/// Estimated memory cost (bytes) and depth of a value.
fn measure(v: &Value) -> (usize, usize) {
    const NODE: usize = 32;
    let children = |items: &mut dyn Iterator<Item = &Value>| {
        items.fold((NODE, 1), |(c, d), item| {
            let (ci, di) = measure(item);
            (c.saturating_add(ci), d.max(di + 1))
        })
    };
    match v {
        Value::String(s) | Value::Long(s) => (NODE + s.len(), 1),
        Value::Tuple(items) | Value::List(items) | Value::Set(items) => children(&mut items.iter()),
        Value::Dict(pairs) => children(&mut pairs.iter().flat_map(|(k, v)| [k, v])),
        Value::Object(o) => {
            let (c, d) = children(
                &mut o
                    .init_args
                    .iter()
                    .chain(o.attrs.iter().flat_map(|(k, v)| [k, v])),
            );
            (c, d + 1)
        }
        _ => (NODE, 1),
    }
}

/// Removes later duplicates (by Python equality) in place, calling `merge`
/// with the kept item and the dropped one.
fn dedup<T>(items: &mut Vec<T>, key: impl Fn(&T) -> &Value, merge: impl Fn(&mut T, T)) {
    const SMALL: usize = 16;
    if items.len() < 2 {
        return;
    }
    // Documents written by `dumps` have string keys in strictly increasing
    // order: no duplicate is possible.
    let strictly_sorted_strings = items.windows(2).all(|w| match (key(&w[0]), key(&w[1])) {
        (Value::String(a), Value::String(b)) => a < b,
        _ => false,
    });
    if strictly_sorted_strings {
        return;
    }
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    if items.len() <= SMALL {
        for item in items.drain(..) {
            match out.iter().position(|kept| py_eq(key(kept), key(&item))) {
                Some(i) => merge(&mut out[i], item),
                None => out.push(item),
            }
        }
    } else {
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(items.len());
        for item in items.drain(..) {
            match hash_key(key(&item)) {
                Some(k) => match seen.get(&k) {
                    Some(&i) => merge(&mut out[i], item),
                    None => {
                        seen.insert(k, out.len());
                        out.push(item);
                    }
                },
                None => out.push(item),
            }
        }
    }
    *items = out;
}

/// `saxutils.unescape`: `&lt;`, `&gt;` then `&amp;`, so `&amp;lt;` gives `&lt;`.
/// The three patterns cannot overlap, so one left-to-right pass is equivalent.
fn unescape_once(text: String) -> String {
    if !text.contains('&') {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (c, len) = if tail.starts_with("&lt;") {
            ('<', 4)
        } else if tail.starts_with("&gt;") {
            ('>', 4)
        } else if tail.starts_with("&amp;") {
            ('&', 5)
        } else {
            ('&', 1)
        };
        out.push(c);
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

fn is_xml_space(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// At most 40 characters of `s`, for error messages.
fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::Long(_) => "int",
        Value::Float(_) => "float",
        Value::String(_) => "string",
        Value::Tuple(_) => "tuple",
        Value::List(_) => "list",
        Value::Set(_) => "set",
        Value::Dict(_) => "dictionary",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_once_matches_saxutils() {
        assert_eq!(unescape_once("&amp;lt;".into()), "&lt;");
        assert_eq!(unescape_once("&lt;&gt;&amp;".into()), "<>&");
        assert_eq!(unescape_once("&&lt;&x".into()), "&<&x");
        assert_eq!(unescape_once("plain".into()), "plain");
    }

    #[test]
    fn mixed_keys_sort_like_python() {
        // {1: 'a', 1.5: 'b', 'x': 1, None: 2, (1,'a'): 3, (1,2): 4, -1: 5,
        //  2: 6, '"': 1, "'": 2, "a'b": 3}, as dumped by Python 3.12.
        let t = |a: Value, b: Value| Value::Tuple(vec![a, b]);
        let d = Value::Dict(vec![
            (Value::Int(1), Value::str("a")),
            (Value::Float(1.5), Value::str("b")),
            (Value::str("x"), Value::Int(1)),
            (Value::None, Value::Int(2)),
            (t(Value::Int(1), Value::str("a")), Value::Int(3)),
            (t(Value::Int(1), Value::Int(2)), Value::Int(4)),
            (Value::Int(-1), Value::Int(5)),
            (Value::Int(2), Value::Int(6)),
            (Value::str("\""), Value::Int(1)),
            (Value::str("'"), Value::Int(2)),
            (Value::str("a'b"), Value::Int(3)),
        ]);
        let want = "<marshal><dictionary id=\"i2\"><string>\"</string><int>1</int><string>'</string><int>2</int><string>a'b</string><int>3</int><string>x</string><int>1</int><tuple><int>1</int><string>a</string></tuple><int>3</int><tuple><int>1</int><int>2</int></tuple><int>4</int><int>-1</int><int>5</int><int>1</int><string>a</string><float>1.5</float><string>b</string><int>2</int><int>6</int><none/><int>2</int></dictionary></marshal>";
        assert_eq!(dumps(&d).unwrap(), want);
    }

    #[test]
    fn empty_object_dict_is_none() {
        let o = Value::from(Object::new(SlapClass::SoftwareInstance, vec![], vec![]));
        let xml = dumps(&o).unwrap();
        assert_eq!(
            xml,
            "<marshal><object id=\"i2\" module=\"slapos.slap.slap\" class=\"SoftwareInstance\"><tuple/><none/></object></marshal>"
        );
        assert_eq!(loads(&xml).unwrap(), o);
    }

    #[test]
    fn duplicate_keys_keep_first_position_and_last_value() {
        let v = loads("<marshal><dictionary id=\"i2\"><string>a</string><int>1</int><string>b</string><int>2</int><string>a</string><int>3</int></dictionary></marshal>").unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![
                (Value::str("a"), Value::Int(3)),
                (Value::str("b"), Value::Int(2))
            ])
        );
        let v = loads(
            "<marshal><set id=\"i2\"><int>1</int><float>1.0</float><bool>1</bool></set></marshal>",
        )
        .unwrap();
        assert_eq!(v, Value::Set(vec![Value::Int(1)]));
    }

    #[test]
    fn long_boundaries() {
        let enc = |s: &str| dumps(&Value::Long(s.into())).unwrap();
        assert_eq!(
            enc("999999999999999983222783"),
            "<marshal><int>999999999999999983222783</int></marshal>"
        );
        assert_eq!(
            enc("-999999999999999983222784"),
            "<marshal><long>-999999999999999983222784</long></marshal>"
        );
        assert_eq!(enc("0005"), "<marshal><int>5</int></marshal>");
        assert!(matches!(
            dumps(&Value::Long("12a".into())),
            Err(EncodeError::InvalidLong(_))
        ));
    }

    #[test]
    fn encoder_depth_is_bounded() {
        let mut v = Value::None;
        for _ in 0..(MAX_ENCODE_DEPTH + 10) {
            v = Value::Tuple(vec![v]);
        }
        assert_eq!(dumps(&v), Err(EncodeError::TooDeep(MAX_ENCODE_DEPTH)));
    }

    #[test]
    fn helpers() {
        assert!(!Value::from(None::<&str>).is_truthy());
        assert!(Value::from("x").is_truthy());
        assert!(!Value::Long("-0".into()).is_truthy());
        assert!(Value::Long("100000000000000000000".into()).is_truthy());
        assert_eq!(Value::Bool(true).as_bool(), Some(true));
        assert_eq!(Value::Int(1).as_bool(), None);
        let d = Value::Dict(vec![
            (Value::str("a"), Value::Int(1)),
            (Value::Int(2), Value::Int(2)),
            (Value::str("a"), Value::Int(3)),
        ]);
        assert_eq!(d.get("a"), Some(&Value::Int(3)));
        assert_eq!(d.get("2"), None);
        assert_eq!(
            SlapClass::from_name("SoftwareInstance"),
            Some(SlapClass::SoftwareInstance)
        );
        assert_eq!(SlapClass::from_name("Supply"), None);
    }

    #[test]
    fn control_characters_are_refused() {
        for s in ["\u{0}", "a\u{b}", "\u{1f}", "\u{fffe}", "x\u{ffff}"] {
            assert!(
                matches!(dumps(&Value::str(s)), Err(EncodeError::InvalidChar { .. })),
                "{s:?}"
            );
        }
        assert_eq!(
            dumps(&Value::str("\u{7f}\u{80}")).unwrap(),
            "<marshal><string>\u{7f}&#128;</string></marshal>"
        );
    }
}
