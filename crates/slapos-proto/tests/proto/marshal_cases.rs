//! Every case of marshal-cases.json (output of Python `slapos.util.dumps`).

use serde_json::Value as Json;
use slapos_proto::{dumps, loads, DecodeError, Object, SlapClass, Value};

use crate::common::{marshal_cases, parse_python, same};

fn field<'a>(case: &'a Json, name: &str) -> Option<&'a str> {
    case.get(name).and_then(Json::as_str)
}

#[test]
fn every_case_decodes_to_its_python_value_and_reencodes_byte_for_byte() {
    let cases = marshal_cases();
    assert_eq!(cases.len(), 88, "marshal-cases.json changed");
    let (mut value_checked, mut encoded_from_python, mut reencoded) = (0, 0, 0);
    for case in &cases {
        let python = field(case, "python").expect("python field");
        let xml = field(case, "xml").expect("xml field");
        let decode_only = case.get("decode_only").and_then(Json::as_bool) == Some(true);
        let roundtrip = case.get("roundtrip").and_then(Json::as_bool) != Some(false);

        if python.starts_with("(1+2j)") {
            assert!(
                matches!(loads(xml), Err(DecodeError::Unsupported { .. })),
                "complex is refused: {xml}"
            );
            continue;
        }
        if python.starts_with("(lambda l: (l.append(l)") {
            continue; // self-containing list: refused, see reference_cases_decode_to_copies
        }
        let decoded = loads(xml).unwrap_or_else(|e| panic!("loads({xml}) failed: {e}"));

        // The value `loads` must give: `loads` field when Python does not
        // round-trip, else the `python` field.
        let expected_text = if roundtrip {
            python
        } else {
            field(case, "loads").unwrap_or(python)
        };
        if let Some(expected) = parse_python(expected_text) {
            assert!(
                same(&decoded, &expected),
                "loads({xml})\n  = {decoded:?}\n  want {expected:?}"
            );
            value_checked += 1;
            if roundtrip && !decode_only {
                // The Python value built in insertion order encodes to the
                // exact bytes (dictionary sorting included).
                assert_eq!(dumps(&expected).unwrap(), xml, "dumps({python})");
                encoded_from_python += 1;
            }
        }
        if roundtrip && !decode_only && !xml.contains("<reference") {
            assert_eq!(
                dumps(&decoded).unwrap(),
                xml,
                "dumps(loads(xml)) for {python}"
            );
            reencoded += 1;
        }
    }
    eprintln!("{value_checked} values checked, {encoded_from_python} encoded from the Python literal, {reencoded} re-encoded");
    // Everything but the lambda-built (shared-container) cases and complex.
    assert!(
        value_checked >= 80,
        "only {value_checked} python values understood"
    );
    assert!(reencoded >= 70, "only {reencoded} cases re-encoded");
}

/// The shared-container cases are written with `<reference>`; decoding gives
/// copies (a tree cannot share), and a self-containing list is refused.
#[test]
fn reference_cases_decode_to_copies() {
    let cases = marshal_cases();
    let by_python = |prefix: &str| {
        cases
            .iter()
            .find(|c| field(c, "python").is_some_and(|p| p.starts_with(prefix)))
            .and_then(|c| field(c, "xml"))
            .unwrap_or_else(|| panic!("no case {prefix}"))
    };
    let kv = Value::dict_of_strs([("k", "v")]);
    assert_eq!(
        loads(by_python("(lambda d: [d, d, (d,)])")).unwrap(),
        Value::List(vec![kv.clone(), kv.clone(), Value::Tuple(vec![kv])])
    );
    let l = Value::List(vec![Value::Int(1)]);
    assert_eq!(
        loads(by_python("(lambda l: {'x': l, 'y': l})")).unwrap(),
        Value::Dict(vec![(Value::str("x"), l.clone()), (Value::str("y"), l)])
    );
    assert!(matches!(
        loads(by_python("(lambda l: (l.append(l), l)[1])")),
        Err(DecodeError::DanglingReference { .. })
    ));
    // Python gives an empty placeholder for the second occurrence (a bug
    // SLAP never triggers); this decoder gives a second copy.
    let Value::List(items) = loads(by_python("(lambda sr: [sr, sr])")).unwrap() else {
        panic!("not a list")
    };
    assert_eq!(items.len(), 2);
    assert_eq!(items[0], items[1]);
    assert_eq!(
        items[0].as_object().map(|o| o.class),
        Some(SlapClass::SoftwareRelease)
    );
    // Lambda cases without references re-encode exactly.
    for prefix in ["(lambda t: [t, t])", "(lambda s: [s, s])"] {
        let xml = by_python(prefix);
        assert_eq!(dumps(&loads(xml).unwrap()).unwrap(), xml);
    }
}

#[test]
fn helpers_read_objects() {
    let cases = marshal_cases();
    let xml = cases
        .iter()
        .filter_map(|c| field(c, "xml"))
        .find(|x| x.contains("class=\"Computer\"") && x.contains("_computer_partition_list"))
        .expect("a Computer case");
    let computer = loads(xml).unwrap();
    assert_eq!(
        computer.get("_computer_id").and_then(Value::as_str),
        Some("COMP-4242")
    );
    let partitions = computer
        .get("_computer_partition_list")
        .and_then(Value::as_slice)
        .unwrap();
    assert_eq!(partitions.len(), 2);
    let busy = partitions[0].as_object().unwrap();
    assert_eq!(busy.class, SlapClass::ComputerPartition);
    assert_eq!(busy.init_args[1], Value::str("slappart0"));
    let params = busy.get("_parameter_dict").unwrap();
    assert_eq!(params.get("port"), Some(&Value::str("8080")));
    assert_eq!(
        params.get("title").and_then(Value::as_str),
        Some("Grüße <&>")
    );
    assert_eq!(params.get("empty"), Some(&Value::None));
    assert_eq!(
        busy.get("_need_modification").and_then(Value::as_i64),
        Some(1)
    );

    let built = Value::from(Object::new(
        SlapClass::Computer,
        vec![Value::str("slaprunner")],
        vec![(Value::str("_computer_id"), Value::str("slaprunner"))],
    ));
    let want = cases
        .iter()
        .filter_map(|c| field(c, "xml"))
        .find(|x| x.contains("<string>slaprunner</string></tuple>"))
        .unwrap();
    assert_eq!(dumps(&built).unwrap(), want);
}

#[test]
fn python_str_stringifies_like_python() {
    use slapos_proto::python_str;
    assert_eq!(python_str(&Value::Int(8080)), "8080");
    assert_eq!(python_str(&Value::None), "None");
    assert_eq!(python_str(&Value::Bool(true)), "True");
    assert_eq!(python_str(&Value::Bool(false)), "False");
    assert_eq!(python_str(&Value::Float(1.5)), "1.5");
    assert_eq!(python_str(&Value::Float(1e16)), "1e+16");
    assert_eq!(python_str(&Value::str("é<")), "é<");
    assert_eq!(
        python_str(&Value::Long("-100000000000000000000000".into())),
        "-100000000000000000000000"
    );
    assert_eq!(
        python_str(&Value::List(vec![
            Value::str("a"),
            Value::Int(1),
            Value::None
        ])),
        "['a', 1, None]"
    );
    assert_eq!(
        python_str(&Value::Tuple(vec![
            Value::str("slaptap0"),
            Value::str("10.0.42.10")
        ])),
        "('slaptap0', '10.0.42.10')"
    );
    assert_eq!(
        python_str(&Value::dict_of_strs([("a", "it's")])),
        "{'a': \"it's\"}"
    );
}
