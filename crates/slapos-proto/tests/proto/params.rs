//! dict2xml / xml2dict against the parameter XML the proxy stored and sent
//! back in the exchange fixtures.

use slapos_proto::{dict2xml, loads, python_str, xml2dict, DecodeError, Value};

use crate::common::{exchange, exchanges, form_field, within_time};

/// The answer of an exchange, decoded.
fn answer(prefix: &str) -> Value {
    let x = exchange(prefix);
    loads(x["response"]["body"].as_str().expect("body")).expect("answer decodes")
}

/// A marshalled form dictionary, values stringified as the proxy does.
fn form_dict_as_strings(prefix: &str, field: &str) -> Vec<(String, String)> {
    let x = exchange(prefix);
    let doc = form_field(&x, field).unwrap_or_else(|| panic!("{prefix} has no {field}"));
    let value = loads(doc).expect("form value decodes");
    value
        .as_dict()
        .expect("a dictionary")
        .iter()
        .map(|(k, v)| (python_str(k), python_str(v)))
        .collect()
}

/// xml2dict output as a marshal dictionary (`None` for empty values), the
/// way the proxy puts it in `_connection_dict` / `_parameter_dict`.
fn as_value_dict(params: &[(String, Option<String>)]) -> Vec<(Value, Value)> {
    params
        .iter()
        .map(|(k, v)| {
            (
                Value::str(k.clone()),
                v.clone().map_or(Value::None, Value::String),
            )
        })
        .collect()
}

fn dict2xml_owned(items: &[(String, String)]) -> String {
    dict2xml(items.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))))
}

#[test]
fn published_connection_parameters_encode_like_the_proxy() {
    // (publishing exchange, exchange that reads them back with connection_xml)
    for (publish, read) in [("018-", "021-"), ("025-", "026-")] {
        let conn = form_dict_as_strings(publish, "connection_xml");
        let instance = answer(read);
        let stored = instance
            .get("connection_xml")
            .and_then(Value::as_str)
            .expect("connection_xml");
        assert_eq!(dict2xml_owned(&conn), stored, "{publish} -> {read}");
        let parsed = xml2dict(stored).unwrap();
        let want = instance
            .get("_connection_dict")
            .and_then(Value::as_dict)
            .unwrap();
        assert!(crate::common::same(
            &Value::Dict(as_value_dict(&parsed)),
            &Value::Dict(want.to_vec())
        ));
    }
    // The shared instance's answer has no connection_xml, only the dictionary.
    let conn = form_dict_as_strings("032-", "connection_xml");
    let parsed = xml2dict(&dict2xml_owned(&conn)).unwrap();
    let want = answer("033-")
        .get("_connection_dict")
        .and_then(Value::as_dict)
        .unwrap()
        .to_vec();
    assert!(crate::common::same(
        &Value::Dict(as_value_dict(&parsed)),
        &Value::Dict(want)
    ));
}

#[test]
fn every_stored_connection_xml_round_trips() {
    let mut checked = 0;
    for (name, x) in exchanges() {
        if x["request"]["route"] != "/requestComputerPartition" || x["response"]["status"] != 200 {
            continue;
        }
        let instance = loads(x["response"]["body"].as_str().unwrap()).unwrap();
        let Some(stored) = instance.get("connection_xml").and_then(Value::as_str) else {
            continue;
        };
        let parsed = xml2dict(stored).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = instance
            .get("_connection_dict")
            .and_then(Value::as_dict)
            .unwrap();
        assert!(
            crate::common::same(
                &Value::Dict(as_value_dict(&parsed)),
                &Value::Dict(want.to_vec())
            ),
            "{name}: xml2dict(connection_xml) != _connection_dict"
        );
        // Empty values were stored from "" (None would have been written "None").
        let again = dict2xml(
            parsed
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_deref().unwrap_or("")))),
        );
        assert_eq!(again, stored, "{name}");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} connection_xml values found");
}

#[test]
fn requested_parameters_come_back_as_xml2dict_of_dict2xml() {
    // (request exchange: its parameters and the answer that stringified them)
    for prefix in ["013-", "022-", "030-"] {
        let params = form_dict_as_strings(prefix, "partition_parameter_xml");
        let stored = xml2dict(&dict2xml_owned(&params)).unwrap();
        let answered = answer(prefix);
        let parameter_dict = answered.get("_parameter_dict").expect("_parameter_dict");
        for (k, v) in &stored {
            let got = parameter_dict
                .get(k)
                .unwrap_or_else(|| panic!("{prefix}: {k} missing"));
            let want = v.clone().map_or(Value::None, Value::String);
            assert_eq!(got, &want, "{prefix}: parameter {k}");
        }
    }
}

#[test]
fn hostile_parameter_xml_is_refused() {
    let cases: Vec<(&str, String)> = vec![
        (
            "billion laughs",
            "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\"><!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">]><instance><parameter id=\"a\">&lol3;</parameter></instance>".into(),
        ),
        (
            "external entity",
            "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><instance><parameter id=\"a\">&e;</parameter></instance>".into(),
        ),
        ("undefined entity", "<instance><parameter id=\"a\">&e;</parameter></instance>".into()),
        ("deep", format!("<instance>{}{}</instance>", "<a>".repeat(10_000), "</a>".repeat(10_000))),
        ("truncated", "<instance><parameter id=\"a\">x</param".into()),
        ("unclosed", "<instance><parameter id=\"a\">x</parameter>".into()),
        ("processing instruction", "<instance><?php system('id'); ?></instance>".into()),
        ("two roots", "<instance/><instance/>".into()),
        ("text outside", "<instance/>junk".into()),
        ("control character", "<instance><parameter id=\"a\">&#1;</parameter></instance>".into()),
        ("raw control character", "<instance><parameter id=\"a\">\u{1}</parameter></instance>".into()),
        ("entity in attribute", "<instance><x a=\"&e;\"/></instance>".into()),
        ("latin-1 declared", "<?xml version='1.0' encoding='iso-8859-1'?><instance/>".into()),
    ];
    for (what, xml) in cases {
        let result = within_time(what, move || xml2dict(&xml));
        assert!(result.is_err(), "{what}: accepted: {result:?}");
        eprintln!("{what}: {}", result.unwrap_err());
    }
    assert!(matches!(
        xml2dict("<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><instance/>"),
        Err(DecodeError::Doctype { .. })
    ));
}
