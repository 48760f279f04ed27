use slapos_proto::{dumps, loads, Value};
#[test]
fn zz_bench() {
    let docs = crate::exchanges::marshal_documents();
    let (_, doc) = docs.into_iter().max_by_key(|(_, d)| d.len()).unwrap();
    let v = loads(&doc).unwrap();
    let mut parts = v
        .get("_computer_partition_list")
        .unwrap()
        .as_slice()
        .unwrap()
        .to_vec();
    let base = parts.clone();
    while parts.len() < 150 {
        parts.extend(base.iter().cloned());
    }
    let Value::Object(mut o) = v else { panic!() };
    for (k, val) in o.attrs.iter_mut() {
        if k.as_str() == Some("_computer_partition_list") {
            *val = Value::List(parts.clone());
        }
    }
    let big = Value::Object(o);
    let xml = dumps(&big).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..50 {
        let _ = dumps(&big).unwrap();
    }
    let enc = t.elapsed() / 50;
    let t = std::time::Instant::now();
    for _ in 0..50 {
        let _ = loads(&xml).unwrap();
    }
    let dec = t.elapsed() / 50;
    eprintln!("size {} enc {:?} dec {:?}", xml.len(), enc, dec);
    assert_eq!(dumps(&loads(&xml).unwrap()).unwrap(), xml);
}
