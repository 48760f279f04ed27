//! The real binary over HTTP: hostile and malformed input is refused with a
//! clear 4xx and changes nothing; the JSON API; several `slapos master`
//! processes sharing one PostgreSQL database.

mod common;

use common::{computer_xml, form, request_form, PgDatabase, EMPTY_DICT};
use serde_json::{json, Value};

async fn post(http: &reqwest::Client, url: &str, body: String) -> (u16, String) {
    let r = http
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    let r = http.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn register(http: &reqwest::Client, base: &str, computer: &str, partitions: usize) {
    let (status, body) = post(
        http,
        &format!("{base}/loadComputerConfigurationFromXML"),
        form(&[("xml", &computer_xml(computer, partitions))]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn free_partitions(http: &reqwest::Client, base: &str, computer: &str) -> i64 {
    let (_, body) = get(http, &format!("{base}/api/v1/computers/{computer}")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    v["computer"]["partitions_free"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_malformed_input_is_refused_and_changes_nothing() {
    let server = common::start_proxy("COMP-H", None);
    let base = &server.url;
    let http = reqwest::Client::new();
    register(&http, base, "COMP-H", 2).await;

    let bombs = [
        // Billion laughs.
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><marshal><dictionary id="i2"><string>a</string><string>&lol3;</string></dictionary></marshal>"#.to_string(),
        // External entity.
        r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><marshal><dictionary id="i2"><string>a</string><string>&e;</string></dictionary></marshal>"#.to_string(),
        // Deep nesting.
        format!("<marshal>{}{}</marshal>", "<list id=\"i2\">".repeat(5000), "</list>".repeat(5000)),
        // Truncated, and not a marshal document at all.
        "<marshal><dictionary id=\"i2\"><string>a</string>".to_string(),
        "{\"json\": true}".to_string(),
        // A class the protocol does not allow.
        r#"<marshal><object id="i2" module="os" class="system"><tuple><string>id</string></tuple><dictionary id="i3"/></object></marshal>"#.to_string(),
    ];
    for (i, bomb) in bombs.iter().enumerate() {
        let (status, body) = post(
            &http,
            &format!("{base}/requestComputerPartition"),
            request_form(&format!("bomb{i}"), "COMP-H", bomb),
        )
        .await;
        assert_eq!(status, 400, "payload {i}: {body}");
        assert!(!body.is_empty(), "payload {i}: an error says why");
    }
    assert_eq!(
        free_partitions(&http, base, "COMP-H").await,
        2,
        "nothing was allocated"
    );

    // Hostile names and URLs.
    let (status, body) = post(
        &http,
        &format!("{base}/supplySupply"),
        form(&[
            ("url", "file:///srv/../../etc/shadow"),
            ("computer_id", "COMP-H"),
            ("state", "available"),
        ]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(".."), "{body}");
    let (status, _) = post(
        &http,
        &format!("{base}/requestComputerPartition"),
        request_form("bad\u{7}title", "COMP-H", EMPTY_DICT),
    )
    .await;
    assert_eq!(status, 400);

    // Unknown ids, invalid states, missing fields, wrong methods.
    let (status, body) = get(
        &http,
        &format!("{base}/getFullComputerInformation?computer_id=COMP-NOPE"),
    )
    .await;
    assert_eq!((status, body.contains("COMP-NOPE")), (404, true), "{body}");
    let (status, _) = get(&http, &format!("{base}/registerComputerPartition?computer_reference=COMP-H&computer_partition_reference=slappart9")).await;
    assert_eq!(status, 404);
    let (status, body) = post(
        &http,
        &format!("{base}/supplySupply"),
        form(&[
            ("url", "https://x.invalid/a.cfg"),
            ("computer_id", "COMP-H"),
            ("state", "running"),
        ]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("available"),
        "the message lists valid states: {body}"
    );
    let (status, body) = post(
        &http,
        &format!("{base}/supplySupply"),
        form(&[("url", "https://x.invalid/a.cfg")]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("computer_id"), "{body}");
    let (status, _) = post(
        &http,
        &format!("{base}/getFullComputerInformation"),
        form(&[("computer_id", "COMP-H")]),
    )
    .await;
    assert_eq!(status, 405);
    let (status, _) = post(
        &http,
        &format!("{base}/startedComputerPartition"),
        form(&[
            ("computer_id", "COMP-H"),
            ("computer_partition_id", "slappart7"),
        ]),
    )
    .await;
    assert_eq!(status, 404);

    // An oversize body is refused before it is read in full.
    let huge = "x".repeat(33 * 1024 * 1024);
    let (status, _) = post(
        &http,
        &format!("{base}/useComputer"),
        form(&[("computer_id", "COMP-H"), ("use_string", &huge)]),
    )
    .await;
    assert_eq!(status, 413);

    // Freeing a partition whose instance is not being destroyed is refused.
    let (status, _) = post(
        &http,
        &format!("{base}/requestComputerPartition"),
        request_form("kept", "COMP-H", EMPTY_DICT),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = post(
        &http,
        &format!("{base}/destroyedComputerPartition"),
        form(&[
            ("computer_id", "COMP-H"),
            ("computer_partition_id", "slappart0"),
        ]),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(free_partitions(&http, base, "COMP-H").await, 1);

    // Malformed JSON gets a JSON error.
    let r = http
        .post(format!("{base}/api/v1/instances"))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_covers_what_the_protocol_does() {
    let server = common::start_proxy("COMP-J", None);
    let base = &server.url;
    let http = reqwest::Client::new();
    register(&http, base, "COMP-J", 3).await;

    let (status, body) = get(&http, &format!("{base}/api/v1/openapi.json")).await;
    assert_eq!(status, 200);
    let spec: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(spec["openapi"], "3.0.3");
    assert!(spec["paths"]["/software_instance_module/"].is_object());

    // Supply, then the seed's request form.
    let r = http
        .post(format!("{base}/api/v1/computers/COMP-J/software"))
        .json(&json!({"url": "https://lab.example.invalid/software/demo/software.cfg"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = http
        .post(format!("{base}/software_instance_module/"))
        .json(
            &json!({"software_release": "https://lab.example.invalid/software/demo/software.cfg",
                      "instance_id": "i1", "instance_type": "default", "parameters": {"size": 3}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["title"], "i1");
    assert_eq!(created["computer"], "COMP-J");
    assert_eq!(created["parameters"]["size"], "3");
    let id = created["id"].as_i64().unwrap();

    // The node publishes through the legacy protocol; JSON shows it.
    let (status, _) = post(
        &http,
        &format!("{base}/setComputerPartitionConnectionXml"),
        form(&[
            ("computer_id", "COMP-J"),
            ("computer_partition_id", created["partition"].as_str().unwrap()),
            ("connection_xml", "<marshal><dictionary id=\"i2\"><string>url</string><string>http://[::1]:80/</string></dictionary></marshal>"),
            ("slave_reference", "None"),
        ]),
    )
    .await;
    assert_eq!(status, 200);
    let (_, body) = get(&http, &format!("{base}/api/v1/instances/{id}")).await;
    let instance: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(instance["connection_parameters"]["url"], "http://[::1]:80/");
    let (_, body) = get(&http, &format!("{base}/api/v1/instances/by-title/i1")).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["id"], id);

    // State changes through the API, seen by the node.
    let r = http
        .put(format!("{base}/api/v1/instances/{id}/state"))
        .json(&json!({"state": "stopped"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, node_view) = get(
        &http,
        &format!("{base}/getFullComputerInformation?computer_id=COMP-J"),
    )
    .await;
    assert!(node_view.contains("<string>_requested_state</string><string>stopped</string>"));
    let r = http
        .put(format!("{base}/api/v1/instances/{id}/state"))
        .json(&json!({"state": "paused"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let problem: Value = r.json().await.unwrap();
    assert!(problem["error"].as_str().unwrap().contains("paused"));

    // Lists and events.
    let (_, body) = get(&http, &format!("{base}/api/v1/instances")).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (_, body) = get(&http, &format!("{base}/api/v1/computers")).await;
    let computers: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(computers[0]["partitions_free"], 2);
    let (_, body) = get(&http, &format!("{base}/api/v1/events")).await;
    let events: Value = serde_json::from_str(&body).unwrap();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "computer.formatted",
        "software.supplied",
        "instance.requested",
        "instance.published",
        "instance.changed",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let (status, _) = get(&http, &format!("{base}/api/v1/instances/999999")).await;
    assert_eq!(status, 404);
}

/// Two `slapos master` processes on one PostgreSQL database, 8 clients
/// spread over both: 200 requests, 200 distinct partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_on_one_postgresql_allocate_distinct_partitions() {
    let Some(database) = PgDatabase::create("slapos_multi") else {
        return;
    };
    let url = database.url.clone();
    let masters = [common::start_master(&url), common::start_master(&url)];
    let http = reqwest::Client::new();
    register(&http, &masters[0].url, "COMP-M", 200).await;

    let mut tasks = Vec::new();
    for client in 0..8 {
        let base = masters[client % 2].url.clone();
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut partitions = Vec::new();
            for n in 0..25 {
                let (status, body) = post(
                    &http,
                    &format!("{base}/requestComputerPartition"),
                    request_form(&format!("m{client}-{n}"), "COMP-M", EMPTY_DICT),
                )
                .await;
                assert_eq!(status, 200, "{body}");
                let at = body
                    .find("<string>slap_computer_partition_id</string><string>")
                    .unwrap();
                let rest = &body[at + 51..];
                partitions.push(rest[..rest.find('<').unwrap()].to_string());
            }
            partitions
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (200, 200));
    assert_eq!(free_partitions(&http, &masters[1].url, "COMP-M").await, 0);
}

/// A native release's parameter schema is enforced at request time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused_at_request_time() {
    let server = common::start_proxy("COMP-S", None);
    let base = &server.url;
    let http = reqwest::Client::new();
    register(&http, base, "COMP-S", 2).await;
    let manifest = server.dir.path().join("software.toml");
    std::fs::write(
        &manifest,
        r#"name = "cache"
[type.default]
parameters = { type = "object", additionalProperties = false, properties = { memory = { type = "integer", minimum = 8 }, policy = { type = "string", enum = ["lru", "none"] } } }
"#,
    )
    .unwrap();
    let url = format!("file://{}", manifest.display());
    let request = |title: &str, params: &str| {
        form(&[
            ("software_release", &url),
            ("partition_reference", title),
            ("partition_parameter_xml", params),
            ("filter_xml", EMPTY_DICT),
            ("software_type", "default"),
            ("state", "<marshal><none/></marshal>"),
            ("shared_xml", "<marshal><bool>0</bool></marshal>"),
        ])
    };
    let low = "<marshal><dictionary id=\"i2\"><string>memory</string><string>4</string></dictionary></marshal>";
    let (status, body) = post(
        &http,
        &format!("{base}/requestComputerPartition"),
        request("c1", low),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("memory"),
        "the message names the parameter: {body}"
    );
    let unknown = "<marshal><dictionary id=\"i2\"><string>colour</string><string>red</string></dictionary></marshal>";
    let (status, body) = post(
        &http,
        &format!("{base}/requestComputerPartition"),
        request("c1", unknown),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("colour"), "{body}");
    assert_eq!(
        free_partitions(&http, base, "COMP-S").await,
        2,
        "nothing allocated"
    );
    let good = "<marshal><dictionary id=\"i2\"><string>memory</string><int>64</int><string>policy</string><string>lru</string></dictionary></marshal>";
    let (status, body) = post(
        &http,
        &format!("{base}/requestComputerPartition"),
        request("c1", good),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Same rule on the JSON API, and unknown software types are named.
    let r = http
        .post(format!("{base}/api/v1/instances"))
        .json(&json!({"software_release": url, "title": "c2", "parameters": {"policy": "fifo"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("policy"));
    let r = http
        .post(format!("{base}/api/v1/instances"))
        .json(&json!({"software_release": url, "title": "c3", "software_type": "replica"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("replica"));
}

/// A node watching one master is woken at once by a change made through
/// another master of the same PostgreSQL database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_wakes_across_masters() {
    let Some(database) = PgDatabase::create("slapos_watch") else {
        return;
    };
    let url = database.url.clone();
    let masters = [common::start_master(&url), common::start_master(&url)];
    let http = reqwest::Client::new();
    register(&http, &masters[0].url, "COMP-W", 2).await;
    let watch_url = format!("{}/api/v1/computers/COMP-W/watch", masters[1].url);
    let (_, body) = get(&http, &format!("{watch_url}?timeout=1")).await;
    let version = serde_json::from_str::<Value>(&body).unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let watcher = {
        let http = http.clone();
        let url = format!("{watch_url}?timeout=20&since={version}");
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let (_, body) = get(&http, &url).await;
            (
                started.elapsed(),
                serde_json::from_str::<Value>(&body).unwrap()["version"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, _) = post(
        &http,
        &format!("{}/requestComputerPartition", masters[0].url),
        request_form("w1", "COMP-W", EMPTY_DICT),
    )
    .await;
    assert_eq!(status, 200);
    let (waited, new_version) = watcher.await.unwrap();
    assert_ne!(new_version, version);
    assert!(
        waited < std::time::Duration::from_secs(5),
        "woken after {waited:?}"
    );
}
