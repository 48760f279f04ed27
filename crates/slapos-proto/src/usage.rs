//! Usage reports: what each partition of a computer consumed over a period,
//! as a node sends them (`useComputer`'s TioXML journal, or JSON to our
//! master's `POST /api/v1/computers/{ref}/usage`).
//!
//! Our journal keeps the reference's shape (`<journal>` of `<transaction>`s
//! with `CPU Consumption`, `Memory Consumption` and `Disk Usage`
//! movements) and adds what makes it exact and idempotent: a `report_id`
//! attribute, a `<period>` in microseconds, the measured `<instance>` and the
//! integer quantities in `<usage>`. A journal without them (the reference
//! node's) is read from its movements.
//!
//! ```xml
//! <journal report_id="R">
//!   <transaction type="Sale Packing List" report_id="R">
//!     <title>Resource consumptions</title><start_date>..</start_date><stop_date>..</stop_date>
//!     <reference>slappart0</reference> ...
//!     <instance guid=".." title=".." root_title=".."/>
//!     <period start="1700000000000000" end="1700000060000000"/>
//!     <usage cpu_micros=".." memory_byte_seconds=".." disk_byte_seconds=".." running_seconds=".."/>
//!     <movement><resource>CPU Consumption</resource>...<quantity>1.5</quantity>...</movement>
//!   </transaction>
//! </journal>
//! ```

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde::{Deserialize, Serialize};

use crate::error::DecodeError;
use crate::xmlin::{attribute_value, check_declaration, resolve_reference, Input};

/// Largest journal accepted (bytes).
pub const MAX_JOURNAL_SIZE: usize = 8 << 20;
const MAX_DEPTH: usize = 16;

/// The instance a partition held while it was measured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRef {
    /// `_instance_guid` as `getFullComputerInformation` gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_title: Option<String>,
}

/// One partition's consumption over one period. Integer quantities (exact):
/// CPU in microseconds, memory and disk in byte-seconds, running seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEntry {
    pub partition: String,
    /// The report this entry belongs to when it differs from the report's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceRef>,
    /// Microseconds since the epoch.
    pub period_start: i64,
    pub period_end: i64,
    pub cpu_micros: i64,
    pub memory_byte_seconds: i64,
    pub disk_byte_seconds: i64,
    pub running_seconds: i64,
}

/// A report: a set of entries under one id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// `None` in a reference journal: the master derives one from the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_id: Option<String>,
    pub records: Vec<UsageEntry>,
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if !crate::xmlin::is_xml_char(c) => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `12.345678` from microseconds, exact.
fn micros_text(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    format!("{sign}{}.{:06}", a / 1_000_000, a % 1_000_000)
}

/// Average MiB held over the period (the reference's unit), for display.
fn average_mib(byte_seconds: i64, start: i64, end: i64) -> String {
    let seconds = ((end - start) as f64 / 1e6).max(1e-6);
    format!("{:.3}", byte_seconds as f64 / seconds / 1_048_576.0)
}

impl UsageReport {
    /// The report as a TioXML journal.
    pub fn to_tioxml(&self) -> String {
        let mut out = String::from("<?xml version='1.0' encoding='utf-8'?><journal");
        if let Some(id) = &self.report_id {
            out.push_str(&format!(" report_id=\"{}\"", escape(id)));
        }
        out.push('>');
        for e in &self.records {
            let p = escape(&e.partition);
            out.push_str("<transaction type=\"Sale Packing List\"");
            if let Some(id) = e.report_id.as_ref().or(self.report_id.as_ref()) {
                out.push_str(&format!(" report_id=\"{}\"", escape(id)));
            }
            out.push('>');
            out.push_str(&format!(
                "<title>Resource consumptions</title><start_date>{}</start_date><stop_date>{}</stop_date>\
                 <reference>{p}</reference><currency/><payment_mode/><category/>\
                 <arrow type=\"Administration\"><source/><destination/></arrow>",
                micros_text(e.period_start),
                micros_text(e.period_end),
            ));
            if let Some(i) = &e.instance {
                out.push_str("<instance");
                for (k, v) in [
                    ("guid", &i.guid),
                    ("title", &i.title),
                    ("root_title", &i.root_title),
                ] {
                    if let Some(v) = v {
                        out.push_str(&format!(" {k}=\"{}\"", escape(v)));
                    }
                }
                out.push_str("/>");
            }
            out.push_str(&format!(
                "<period start=\"{}\" end=\"{}\"/><usage cpu_micros=\"{}\" memory_byte_seconds=\"{}\" \
                 disk_byte_seconds=\"{}\" running_seconds=\"{}\"/>",
                e.period_start,
                e.period_end,
                e.cpu_micros,
                e.memory_byte_seconds,
                e.disk_byte_seconds,
                e.running_seconds
            ));
            for (resource, quantity) in [
                ("CPU Consumption", micros_text(e.cpu_micros)),
                (
                    "Memory Consumption",
                    average_mib(e.memory_byte_seconds, e.period_start, e.period_end),
                ),
                (
                    "Disk Usage",
                    average_mib(e.disk_byte_seconds, e.period_start, e.period_end),
                ),
            ] {
                out.push_str(&format!(
                    "<movement><resource>{resource}</resource><title>{resource} of {p}</title>\
                     <reference>{p}</reference><quantity>{quantity}</quantity><price>0.0</price>\
                     <VAT/><category/></movement>"
                ));
            }
            out.push_str("</transaction>");
        }
        out.push_str("</journal>");
        out
    }

    /// Reads a TioXML journal (ours or the reference's). No DTD, no
    /// entities but the predefined ones, bounded size and depth.
    pub fn from_tioxml(xml: &str) -> Result<UsageReport, DecodeError> {
        let input = Input::new(xml, MAX_JOURNAL_SIZE)?;
        let root = parse_tree(&input)?;
        let invalid = |message: String| DecodeError::Invalid {
            message,
            at: input.at(0),
        };
        if root.name != "journal" {
            return Err(invalid(format!(
                "the root element is <{}>, not <journal>",
                root.name
            )));
        }
        let mut report = UsageReport {
            report_id: root.attr("report_id").map(str::to_string),
            records: Vec::new(),
        };
        for t in root.children.iter().filter(|c| c.name == "transaction") {
            // A transaction naming no partition (the reference client's
            // example journal) has nothing to record.
            if let Some(e) = entry_from(t).map_err(invalid)? {
                report.records.push(e);
            }
        }
        Ok(report)
    }
}

fn int_attr(e: &Elem, name: &str) -> Result<Option<i64>, String> {
    e.attr(name)
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| format!("<{}> {name}={v:?} is not an integer", e.name))
        })
        .transpose()
}

/// A journal date as microseconds since the epoch: seconds (`12.5`, what
/// we write) or a UTC date as the reference writes it (`2026-12-04`,
/// `2026-12-04 23:59:59`, `2026-12-04T23:59:59Z`); `None` if unreadable.
fn date_micros(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(v) = text.parse::<f64>() {
        return (v.is_finite() && v.abs() < 1e12).then(|| (v * 1e6).round() as i64);
    }
    let text = text.trim_end_matches('Z');
    let (date, time) = match text.split_once([' ', 'T']) {
        Some((d, t)) => (d, t),
        None => (text, "00:00:00"),
    };
    let mut d = date.splitn(3, '-').map(|v| v.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let min: i64 = t.next().unwrap_or("0").parse().ok()?;
    let sec: f64 = t.next().unwrap_or("0").parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || !(0..24).contains(&h) {
        return None;
    }
    if !(0..60).contains(&min) || !(0.0..61.0).contains(&sec) || !(1970..10000).contains(&y) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) * 1_000_000 + (sec * 1e6).round() as i64)
}

/// A movement's quantity: a number, or nothing (empty, `None`) for 0.
fn quantity(text: &str) -> Option<f64> {
    match text.trim() {
        "" | "None" => Some(0.0),
        t => t.parse().ok(),
    }
}

fn entry_from(t: &Elem) -> Result<Option<UsageEntry>, String> {
    let Some(partition) = t
        .child("reference")
        .map(|r| r.text.trim().to_string())
        .filter(|r| !r.is_empty())
    else {
        return Ok(None);
    };
    let mut e = UsageEntry {
        partition,
        report_id: t.attr("report_id").map(str::to_string),
        ..Default::default()
    };
    if let Some(i) = t.child("instance") {
        e.instance = Some(InstanceRef {
            guid: i.attr("guid").map(str::to_string),
            title: i.attr("title").map(str::to_string),
            root_title: i.attr("root_title").map(str::to_string),
        });
    }
    match t.child("period") {
        Some(p) => {
            e.period_start = int_attr(p, "start")?.ok_or("<period> has no start")?;
            e.period_end = int_attr(p, "end")?.ok_or("<period> has no end")?;
        }
        None => {
            let date = |n: &str| t.child(n).and_then(|d| date_micros(&d.text));
            e.period_start = date("start_date").unwrap_or(0);
            e.period_end = date("stop_date").unwrap_or(e.period_start);
        }
    }
    if e.period_end < e.period_start {
        return Err(format!("{}: the period ends before it starts", e.partition));
    }
    if let Some(u) = t.child("usage") {
        let need = |n: &str| -> Result<i64, String> {
            let v = int_attr(u, n)?.ok_or(format!("<usage> has no {n}"))?;
            if v < 0 {
                return Err(format!("<usage> {n} is negative"));
            }
            Ok(v)
        };
        e.cpu_micros = need("cpu_micros")?;
        e.memory_byte_seconds = need("memory_byte_seconds")?;
        e.disk_byte_seconds = need("disk_byte_seconds")?;
        e.running_seconds = need("running_seconds")?;
        return Ok(Some(e));
    }
    // A reference journal: CPU seconds, average MiB of memory and disk.
    let seconds = (e.period_end - e.period_start) / 1_000_000;
    for m in t.children.iter().filter(|c| c.name == "movement") {
        let resource = m.child("resource").map(|r| r.text.trim()).unwrap_or("");
        let quantity = quantity(m.child("quantity").map_or("", |q| q.text.as_str()))
            .ok_or_else(|| format!("{}: a movement's quantity is not a number", e.partition))?;
        if !quantity.is_finite() || !(0.0..1e15).contains(&quantity) {
            return Err(format!("{}: quantity {quantity} out of range", e.partition));
        }
        let mib_seconds = (quantity * 1_048_576.0 * seconds as f64).round() as i64;
        match resource {
            "CPU Consumption" => e.cpu_micros = (quantity * 1e6).round() as i64,
            "Memory Consumption" => e.memory_byte_seconds = mib_seconds,
            "Disk Usage" => e.disk_byte_seconds = mib_seconds,
            _ => {}
        }
    }
    e.running_seconds = seconds;
    Ok(Some(e))
}

/// A parsed element: name, attributes, text and children.
#[derive(Debug, Default)]
struct Elem {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Elem>,
}

impl Elem {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn child(&self, name: &str) -> Option<&Elem> {
        self.children.iter().find(|c| c.name == name)
    }
}

fn start_elem(e: &BytesStart<'_>, input: &Input<'_>, pos: u64) -> Result<Elem, DecodeError> {
    let name = <str as ToOwned>::to_owned(e.local_name().as_ref());
    let mut attrs = Vec::new();
    for attr in e.attributes() {
        let attr = attr.map_err(|err| DecodeError::Syntax {
            message: err.to_string(),
            at: input.at(pos),
        })?;
        let value = attribute_value(&attr, input, pos)?.into_owned();
        let key = <str as ToOwned>::to_owned(attr.key.local_name().as_ref());
        attrs.push((key, value));
    }
    Ok(Elem {
        name,
        attrs,
        ..Default::default()
    })
}

fn parse_tree(input: &Input<'_>) -> Result<Elem, DecodeError> {
    let mut reader = Reader::from_str(input.body);
    let mut stack: Vec<Elem> = Vec::new();
    let mut root: Option<Elem> = None;
    loop {
        let pos = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| input.xml_error(&e, reader.error_position()))?;
        match event {
            Event::Decl(decl) => check_declaration(&decl, input, pos)?,
            Event::DocType(_) => return Err(DecodeError::Doctype { at: input.at(pos) }),
            Event::PI(pi) => {
                return Err(DecodeError::ProcessingInstruction {
                    target: pi.target().to_owned(),
                    at: input.at(pos),
                })
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                if root.is_some() {
                    return Err(DecodeError::Syntax {
                        message: "content after the root element".to_owned(),
                        at: input.at(pos),
                    });
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep {
                        limit: MAX_DEPTH,
                        at: input.at(pos),
                    });
                }
                let elem = start_elem(e, input, pos)?;
                if matches!(event, Event::Empty(_)) {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(elem),
                        None => root = Some(elem),
                    }
                } else {
                    stack.push(elem);
                }
            }
            Event::End(_) => {
                let Some(elem) = stack.pop() else {
                    return Err(DecodeError::Syntax {
                        message: "unexpected end tag".to_owned(),
                        at: input.at(pos),
                    });
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(elem),
                    None => root = Some(elem),
                }
            }
            Event::Text(ref t) => {
                let data: &str = t.as_ref();
                match stack.last_mut() {
                    Some(e) => e.text.push_str(data),
                    None if data.trim().is_empty() => {}
                    None => {
                        return Err(DecodeError::Syntax {
                            message: "text outside the root element".to_owned(),
                            at: input.at(pos),
                        })
                    }
                }
            }
            Event::CData(ref c) => {
                if let Some(e) = stack.last_mut() {
                    e.text.push_str(c.as_ref());
                }
            }
            Event::GeneralRef(ref r) => {
                let name: &str = r.as_ref();
                let c = resolve_reference(name)
                    .map_err(|m| crate::xmlin::reference_error(name, m, input.at(pos)))?;
                if let Some(e) = stack.last_mut() {
                    e.text.push(c);
                }
            }
            Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    match (root, stack.is_empty()) {
        (Some(root), true) => Ok(root),
        _ => Err(DecodeError::Truncated {
            at: input.at(input.body.len() as u64),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> UsageReport {
        UsageReport {
            report_id: Some("r-1".into()),
            records: vec![UsageEntry {
                partition: "slappart0".into(),
                report_id: None,
                instance: Some(InstanceRef {
                    guid: Some("COMP-0-slappart0".into()),
                    title: Some("a <b> & \"c\"".into()),
                    root_title: Some("root".into()),
                }),
                period_start: 1_700_000_000_000_000,
                period_end: 1_700_000_060_000_000,
                cpu_micros: 1_234_567,
                memory_byte_seconds: 60 << 20,
                disk_byte_seconds: 7 << 40,
                running_seconds: 60,
            }],
        }
    }

    #[test]
    fn tioxml_round_trip_is_exact() {
        let report = sample();
        let xml = report.to_tioxml();
        assert!(xml.contains("<quantity>1.234567</quantity>"), "{xml}");
        assert!(xml.contains("<quantity>1.000</quantity>"), "{xml}");
        let back = UsageReport::from_tioxml(&xml).unwrap();
        let mut want = report.clone();
        want.records[0].report_id = Some("r-1".into());
        assert_eq!(back, want);
    }

    #[test]
    fn reference_journal_is_read_from_movements() {
        let xml = "<?xml version='1.0' encoding='utf-8'?><journal><transaction type=\"Sale Packing List\">\
            <title>Resource consumptions</title><start_date>100</start_date><stop_date>160</stop_date>\
            <reference>slappart3</reference><movement><resource>CPU Consumption</resource>\
            <quantity>2.5</quantity></movement><movement><resource>Memory Consumption</resource>\
            <quantity>1.0</quantity></movement></transaction></journal>";
        let r = UsageReport::from_tioxml(xml).unwrap();
        assert_eq!(r.report_id, None);
        let e = &r.records[0];
        assert_eq!(e.partition, "slappart3");
        assert_eq!(e.cpu_micros, 2_500_000);
        assert_eq!(e.memory_byte_seconds, 60 << 20);
        assert_eq!(e.running_seconds, 60);
    }

    #[test]
    fn reference_dates_are_read() {
        assert_eq!(date_micros("1970-01-02"), Some(86_400_000_000));
        assert_eq!(
            date_micros("2026-12-04 23:59:59"),
            Some(1_796_428_799_000_000)
        );
        assert_eq!(
            date_micros("2000-03-01T00:00:00Z"),
            Some(951_868_800_000_000)
        );
        assert_eq!(date_micros("160"), Some(160_000_000));
        assert_eq!(date_micros("yesterday"), None);
        assert_eq!(date_micros(""), None);
        let xml = "<journal><transaction><start_date>2026-12-04 00:00:00</start_date>\
            <stop_date>2026-12-04 23:59:59</stop_date><reference>slappart0</reference>\
            <movement><resource>CPU Consumption</resource><quantity>None</quantity></movement>\
            </transaction></journal>";
        let e = &UsageReport::from_tioxml(xml).unwrap().records[0];
        assert_eq!((e.running_seconds, e.cpu_micros), (86_399, 0));
    }

    #[test]
    fn hostile_or_malformed_journals_are_refused() {
        for bad in [
            "<journal><transaction>",
            "<!DOCTYPE x [<!ENTITY a \"b\">]><journal/>",
            "<journal><transaction><reference>&a;</reference></transaction></journal>",
            "<other/>",
            "<journal><transaction><reference>p</reference><usage cpu_micros=\"x\"/></transaction></journal>",
            "not xml at all",
        ] {
            assert!(UsageReport::from_tioxml(bad).is_err(), "{bad}");
        }
        let empty = "<journal><transaction><title/></transaction></journal>";
        assert_eq!(UsageReport::from_tioxml(empty).unwrap().records, vec![]);
        let deep = format!(
            "<journal>{}</journal>",
            "<a>".repeat(40) + &"</a>".repeat(40)
        );
        assert!(UsageReport::from_tioxml(&deep).is_err());
    }

    #[test]
    fn json_shape_is_stable() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["records"][0]["cpu_micros"], 1_234_567);
        let back: UsageReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample());
    }
}
