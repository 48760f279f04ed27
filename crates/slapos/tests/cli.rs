//! Our CLI against our proxy, as a user runs it.

mod common;

use std::process::Command;

use serde_json::Value;

fn slapos(cfg: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::binary())
        .args(args)
        .arg("--cfg")
        .arg(cfg)
        .output()
        .expect("run slapos");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_supply_remove_and_listings() {
    let server = common::start_proxy("COMP-CLI", None);
    let cfg = server.dir.path().join("slapos.cfg");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "[slapconsole]\nalias =\n  demo https://lab.example.invalid/software/demo/software.cfg\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/loadComputerConfigurationFromXML", server.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(common::form(&[(
            "xml",
            &common::computer_xml("COMP-CLI", 2),
        )]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let (code, out, err) = slapos(&cfg, &["supply", "demo", "COMP-CLI"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = slapos(
        &cfg,
        &[
            "request",
            "my-inst",
            "demo",
            "--parameters",
            "size=3",
            "name=x",
            "--node",
            "computer_guid=COMP-CLI",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("State is : started."), "{out}");

    // The instance publishes; the next request prints it.
    let r = http
        .post(format!("{}/setComputerPartitionConnectionXml", server.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(common::form(&[
            ("computer_id", "COMP-CLI"),
            ("computer_partition_id", "slappart0"),
            ("connection_xml", "<marshal><dictionary id=\"i2\"><string>url</string><string>redis://[::1]:6379</string></dictionary></marshal>"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (code, out, _) = slapos(
        &cfg,
        &[
            "request",
            "my-inst",
            "demo",
            "--parameters",
            "size=3",
            "name=x",
            "--node",
            "computer_guid=COMP-CLI",
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("redis://[::1]:6379"), "{out}");

    let (code, out, _) = slapos(&cfg, &["service", "list", "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["title"], "my-inst");
    assert_eq!(list[0]["parameters"]["size"], "3");
    let (code, out, _) = slapos(&cfg, &["service", "info", "my-inst"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("slappart0") && out.contains("redis://"),
        "{out}"
    );
    let (code, out, _) = slapos(&cfg, &["computer", "info", "COMP-CLI", "--json"]);
    assert_eq!(code, 0);
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["computer"]["partitions_free"], 1);
    assert_eq!(info["software"][0]["requested_state"], "available");
    let (code, out, _) = slapos(&cfg, &["computer", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("COMP-CLI") && out.contains("1/2"), "{out}");

    // Stop, then remove the software.
    let (code, out, _) = slapos(
        &cfg,
        &[
            "request",
            "my-inst",
            "demo",
            "--state",
            "stopped",
            "--parameters",
            "size=3",
            "name=x",
            "--node",
            "computer_guid=COMP-CLI",
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("State is : stopped."), "{out}");
    let (code, _, _) = slapos(&cfg, &["remove", "demo", "COMP-CLI"]);
    assert_eq!(code, 0);
    let (_, out, _) = slapos(&cfg, &["computer", "info", "COMP-CLI", "--json"]);
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["software"][0]["requested_state"], "destroyed");

    // Errors are clear and exit non-zero.
    let (code, _, err) = slapos(
        &cfg,
        &[
            "request",
            "other",
            "demo",
            "--node",
            "computer_guid=NOWHERE",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("No free computer partition"), "{err}");
    let (code, _, err) = slapos(&cfg, &["request", "bad", "demo", "--parameters", "novalue"]);
    assert_eq!(code, 1);
    assert!(err.contains("key=value"), "{err}");
    let (code, _, err) = slapos(&cfg, &["service", "info", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("nope"), "{err}");
}
