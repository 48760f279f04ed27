use slapos_proto::{dict2xml, dumps, loads, xml2dict};
#[test]
fn zz_diff() {
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("/tmp/diff/cases.json").unwrap()).unwrap();
    let mut bad = 0;
    for c in j["marshal"].as_array().unwrap() {
        let x = c["xml"].as_str().unwrap();
        match loads(x) {
            Ok(v) => {
                let y = dumps(&v).unwrap();
                if y != x {
                    bad += 1;
                    if bad < 6 {
                        let i = x
                            .bytes()
                            .zip(y.bytes())
                            .position(|(a, b)| a != b)
                            .unwrap_or(0);
                        let lo = i.saturating_sub(300);
                        eprintln!(
                            "DIFF at {i}\n py: {:?}\n rs: {:?}",
                            &x[lo..(i + 200).min(x.len())],
                            &y[lo..(i + 200).min(y.len())]
                        );
                    }
                }
            }
            Err(e) => {
                bad += 1;
                if bad < 6 {
                    eprintln!("ERR {e}: {x}");
                }
            }
        }
    }
    let mut pbad = 0;
    for c in j["params"].as_array().unwrap() {
        let items: Vec<(String, Option<String>)> = c["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_owned(),
                    p[1].as_str().map(str::to_owned),
                )
            })
            .collect();
        let x = c["xml"].as_str().unwrap();
        let y = dict2xml(items.iter().map(|(k, v)| (k.as_str(), v.as_deref())));
        if y != x {
            pbad += 1;
            if pbad < 4 {
                eprintln!("PDIFF\n py: {x:?}\n rs: {y:?}");
            }
        }
        xml2dict(x).unwrap();
    }
    eprintln!("marshal bad {bad}, params bad {pbad}");
    assert_eq!(bad + pbad, 0);
}
