//! Every marshal document recorded in the 80 exchange fixtures.

use slapos_proto::{dumps, loads};

use crate::common::exchanges;

/// Form fields that carry marshal documents.
const MARSHAL_FIELDS: [&str; 7] = [
    "partition_parameter_xml",
    "filter_xml",
    "state",
    "shared_xml",
    "connection_xml",
    "instance_reference_xml",
    "xml",
];

/// Routes whose 200 answers are marshal documents.
const MARSHAL_ROUTES: [&str; 6] = [
    "/getFullComputerInformation",
    "/registerComputerPartition",
    "/requestComputerPartition",
    "/getComputerPartitionCertificate",
    "/computerBang",
    "/getSoftwareReleaseListFromSoftwareProduct",
];

/// (where, document) for every marshal document of the exchanges.
pub fn marshal_documents() -> Vec<(String, String)> {
    let mut docs = Vec::new();
    for (name, x) in exchanges() {
        if let Some(form) = x["request"]["form"].as_array() {
            for pair in form {
                let (Some(k), Some(v)) = (pair[0].as_str(), pair[1].as_str()) else {
                    continue;
                };
                // supplySupply's `state` is plain text ("available").
                if MARSHAL_FIELDS.contains(&k) && v.starts_with('<') {
                    docs.push((format!("{name} form {k}"), v.to_owned()));
                }
            }
        }
        let route = x["request"]["route"].as_str().unwrap_or_default();
        if x["response"]["status"] == 200 && MARSHAL_ROUTES.contains(&route) {
            let body = x["response"]["body"].as_str().expect("body").to_owned();
            docs.push((format!("{name} response"), body));
        }
    }
    docs
}

#[test]
fn every_exchange_document_reencodes_byte_for_byte() {
    let docs = marshal_documents();
    assert_eq!(exchanges().len(), 80);
    assert_eq!(docs.len(), 102, "marshal documents in the exchanges");
    for (place, doc) in &docs {
        let value = loads(doc).unwrap_or_else(|e| panic!("{place}: loads failed: {e}"));
        let again = dumps(&value).unwrap_or_else(|e| panic!("{place}: dumps failed: {e}"));
        assert!(
            again == *doc,
            "{place}: dumps(loads(doc)) differs\n got: {again}\nwant: {doc}"
        );
    }
}

#[test]
fn large_answers_are_fast() {
    // The biggest recorded answer, decoded and encoded 200 times: a smoke
    // check that nothing is quadratic (well under a second in release).
    let (_, doc) = marshal_documents()
        .into_iter()
        .max_by_key(|(_, d)| d.len())
        .expect("documents");
    let value = loads(&doc).unwrap();
    let start = std::time::Instant::now();
    for _ in 0..200 {
        let v = loads(&doc).unwrap();
        assert_eq!(dumps(&v).unwrap().len(), doc.len());
    }
    let elapsed = start.elapsed();
    eprintln!("200 x loads+dumps of {} bytes: {elapsed:?}", doc.len());
    assert!(elapsed.as_secs() < 30);
    drop(value);
}
