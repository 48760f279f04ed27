//! Accounts on `slapos master` (the real binary): users and API tokens made
//! with `slapos master user|token`, 401 without a live token, and tenant
//! isolation as a matrix: user B's token against every JSON endpoint that
//! names user A's instance or supply gets 404, and B's listings never show
//! A's rows. On SQLite, and on PostgreSQL when SLAPOS_TEST_POSTGRES is set.

mod common;

use std::process::Command;

use common::{computer_xml, form, PgDatabase, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SR: &str = "https://lab.example.invalid/software/demo/software.cfg";
const OTHER_SR: &str = "https://lab.example.invalid/software/other/software.cfg";

/// Runs `slapos master ARGS --cfg CFG`; its standard output on success.
fn slapos_master(server: &Server, args: &[&str]) -> Result<String, String> {
    server.master_command(args)
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// Status and JSON body (Null when the body is not JSON).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            r = r.bearer_auth(token);
        }
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// Requests a root instance on COMP-A as the token's user; its id.
    async fn request(&self, token: &str, title: &str, size: i64) -> i64 {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/instances",
                Some(token),
                Some(json!({"software_release": SR, "title": title,
                            "parameters": {"size": size}, "sla": {"computer_guid": "COMP-A"}})),
            )
            .await;
        assert_eq!(status, 200, "request {title}: {body}");
        body["id"].as_i64().unwrap()
    }
}

fn ids(list: &Value) -> Vec<i64> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect()
}

async fn accounts_story(server: &Server) {
    let api = Api {
        http: server.client(None),
        base: server.url.clone(),
    };
    let http = &api.http;

    // Users and tokens, straight into the master's database.
    let alice = slapos_master(server, &["user", "add", "alice"]).unwrap();
    let alice = alice.trim().to_string();
    let bob = slapos_master(server, &["user", "add", "bob", "--label", "laptop"]).unwrap();
    let bob = bob.trim().to_string();
    assert!(alice.starts_with("slapos_") && alice.len() > 40, "{alice}");
    assert_ne!(alice, bob);
    let err = slapos_master(server, &["user", "add", "alice"]).unwrap_err();
    assert!(err.contains("already exists"), "{err}");
    let err = slapos_master(server, &["token", "add", "nobody"]).unwrap_err();
    assert!(err.contains("No user"), "{err}");
    let spare = slapos_master(server, &["token", "add", "alice", "--label", "ci"]).unwrap();
    let spare = spare.trim().to_string();
    let listed: Value =
        serde_json::from_str(&slapos_master(server, &["token", "list", "--json"]).unwrap())
            .unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let text = serde_json::to_string(listed).unwrap();
    assert!(
        !text.contains(&alice) && !text.contains(&bob),
        "tokens are never listed"
    );
    let spare_id = listed
        .iter()
        .find(|t| t["user"] == "alice" && t["label"] == "ci")
        .unwrap()["id"]
        .as_i64()
        .unwrap();

    // No token, a bad token, a revoked token: 401 with a JSON reason.
    for path in ["/api/v1/instances", "/api/v1/computers", "/api/v1/events"] {
        let (status, body) = api.call(Method::GET, path, None, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
        let (status, body) = api.get(path, "slapos_not-a-token").await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"], "invalid or revoked token");
    }
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/instances",
            None,
            Some(json!({"software_release": SR, "title": "anonymous"})),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = api.get("/api/v1/instances", &spare).await;
    assert_eq!(status, 200, "the spare token works until revoked");
    slapos_master(server, &["token", "revoke", &spare_id.to_string()]).unwrap();
    let (status, _) = api.get("/api/v1/instances", &spare).await;
    assert_eq!(status, 401, "a revoked token is refused");
    let err = slapos_master(server, &["token", "revoke", &spare_id.to_string()]).unwrap_err();
    assert!(err.contains("No live token"), "{err}");
    // The openapi document stays public; the dashboard asks for a login.
    let (status, _) = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    let ca = std::fs::read(server.ca_file()).unwrap();
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    for page in ["/", "/instances", "/computers", "/software", "/request"] {
        let r = no_redirect
            .get(format!("{}{page}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{page}");
        assert_eq!(r.headers()["location"], "/login", "{page}");
    }

    // A computer, registered by its node with its computer certificate.
    let (comp_a, _) = server.issue_certificate("computer", "COMP-A");
    let node = server.client(Some(&comp_a));
    let r = node
        .post(format!("{}/loadComputerConfigurationFromXML", server.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&[("xml", &computer_xml("COMP-A", 6))]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Alice's instances and supply; Bob's.
    let a_db = api.request(&alice, "a-db", 1).await;
    let a_only = api.request(&alice, "a-only", 1).await;
    let b_db = api.request(&bob, "b-db", 1).await;
    // Titles are per user: Bob's "a-db" is his own, and Alice's is untouched.
    let b_same_title = api.request(&bob, "a-db", 7).await;
    assert_ne!(b_same_title, a_db);
    let (_, a) = api.get(&format!("/api/v1/instances/{a_db}"), &alice).await;
    assert_eq!(a["parameters"]["size"], "1", "{a}");
    // Computers are the provider's: a user may not change a computer's
    // placement attributes or bang every instance on it; its node may.
    for (method, path, body) in [
        (
            Method::PUT,
            "/api/v1/computers/COMP-A/attributes",
            json!({"country": "fr"}),
        ),
        (
            Method::POST,
            "/api/v1/computers/COMP-A/bang",
            json!({"message": "all of it"}),
        ),
    ] {
        for token in [&alice, &bob] {
            let (status, body) = api
                .call(method.clone(), path, Some(token), Some(body.clone()))
                .await;
            assert_eq!(status, 403, "{path}: {body}");
        }
        let r = node
            .request(method, format!("{}{path}", server.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{path} by COMP-A's node");
    }
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/computers/COMP-A/software",
            Some(&alice),
            Some(json!({"url": SR})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/computers/COMP-A/software",
            Some(&bob),
            Some(json!({"url": OTHER_SR})),
        )
        .await;
    assert_eq!(status, 204);

    // A child requested by Alice's instance (its node, legacy protocol)
    // belongs to Alice: her tree is hers alone.
    let partition = a["partition"].as_str().unwrap().to_string();
    let r = node
        .post(format!("{}/requestComputerPartition", server.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header(
            "Authorization",
            format!("X-SlapPartition computer_id=COMP-A, computer_partition_id={partition}"),
        )
        .body(common::request_form(
            "a-child",
            "COMP-A",
            common::EMPTY_DICT,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, a) = api.get(&format!("/api/v1/instances/{a_db}"), &alice).await;
    let a_child = a["children"][0]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{a}"));
    assert_eq!(a["children"][0]["title"], "a-child");
    let (status, child) = api
        .get(&format!("/api/v1/instances/{a_child}"), &alice)
        .await;
    assert_eq!(status, 200, "{child}");
    assert_eq!(child["root_instance_id"], a_db);

    // The matrix: every endpoint naming Alice's instances, as Bob: 404.
    let alice_ids = [a_db, a_only, a_child];
    for id in alice_ids {
        for (method, path, body) in [
            (Method::GET, format!("/api/v1/instances/{id}"), None),
            (Method::GET, format!("/api/v1/instances/{id}/events"), None),
            (
                Method::PUT,
                format!("/api/v1/instances/{id}/state"),
                Some(json!({"state": "stopped"})),
            ),
            (
                Method::PUT,
                format!("/api/v1/instances/{id}/state"),
                Some(json!({"state": "destroyed"})),
            ),
        ] {
            let (status, answer) = api.call(method.clone(), &path, Some(&bob), body).await;
            assert_eq!(status, 404, "{method} {path} as bob: {answer}");
            assert!(
                !answer.to_string().contains("a-"),
                "no hint of Alice's instance: {answer}"
            );
        }
    }
    let (status, answer) = api.get("/api/v1/instances/by-title/a-only", &bob).await;
    assert_eq!(status, 404, "{answer}");
    // A nonexistent id answers exactly the same.
    let (status, missing) = api.get("/api/v1/instances/999999", &bob).await;
    assert_eq!(status, 404);
    let (_, hidden) = api.get(&format!("/api/v1/instances/{a_only}"), &bob).await;
    assert_eq!(
        hidden["error"]
            .as_str()
            .unwrap()
            .replace(&a_only.to_string(), "N"),
        missing["error"].as_str().unwrap().replace("999999", "N")
    );
    // Bob's supply of Alice's release cannot change hers.
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/computers/COMP-A/software",
            Some(&bob),
            Some(json!({"url": SR, "state": "destroyed"})),
        )
        .await;
    assert_eq!(status, 404);

    // Nothing Bob tried changed Alice's instances.
    for id in alice_ids {
        let (status, a) = api.get(&format!("/api/v1/instances/{id}"), &alice).await;
        assert_eq!(status, 200, "{a}");
        assert_eq!(a["requested_state"], "started", "{a}");
    }

    // Listings: each user sees exactly their own rows.
    let (_, list) = api.get("/api/v1/instances", &bob).await;
    assert_eq!(ids(&list), vec![b_db, b_same_title]);
    let (_, list) = api.get("/api/v1/instances?roots_only=true", &bob).await;
    assert_eq!(ids(&list), vec![b_db, b_same_title]);
    let (_, list) = api.get("/api/v1/instances", &alice).await;
    assert_eq!(ids(&list), vec![a_db, a_only, a_child]);
    let (_, events) = api.get("/api/v1/events", &bob).await;
    let events = events.as_array().unwrap();
    assert!(!events.is_empty());
    for e in events {
        let id = e["instance_id"].as_i64();
        assert!(
            id == Some(b_db) || id == Some(b_same_title),
            "bob sees only his events: {e}"
        );
    }
    let (_, events) = api
        .get(&format!("/api/v1/instances/{a_db}/events"), &alice)
        .await;
    assert!(!events.as_array().unwrap().is_empty(), "{events}");
    let (_, computer) = api.get("/api/v1/computers/COMP-A", &bob).await;
    let partitions = computer["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 6);
    let shown: Vec<i64> = partitions
        .iter()
        .filter_map(|p| p["instance_id"].as_i64())
        .collect();
    assert_eq!(shown.len(), 2, "only Bob's own instances: {computer}");
    assert!(shown.contains(&b_db) && shown.contains(&b_same_title));
    assert_eq!(computer["computer"]["partitions_free"], 1);
    let software: Vec<&str> = computer["software"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["url"].as_str().unwrap())
        .collect();
    assert_eq!(software, vec![OTHER_SR]);
    let (_, software) = api.get("/api/v1/computers/COMP-A/software", &alice).await;
    assert_eq!(software.as_array().unwrap().len(), 1, "{software}");
    assert_eq!(software[0]["url"], SR);
    assert_eq!(software[0]["requested_state"], "available");

    // The owner can change their own instance.
    let (status, a) = api
        .call(
            Method::PUT,
            &format!("/api/v1/instances/{a_only}/state"),
            Some(&alice),
            Some(json!({"state": "stopped"})),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["requested_state"], "stopped");

    // The CLI with `[slapos] api_token`: requests, supplies and listings as
    // that user, through the JSON API.
    let bob_cfg = server.dir.path().join("bob.cfg");
    std::fs::write(
        &bob_cfg,
        format!(
            "[slapos]\nmaster_url = {}\napi_token = {bob}\nmaster_ca_file = {}\n",
            server.url,
            server.ca_file().display()
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(common::binary())
            .args(args)
            .arg("--cfg")
            .arg(&bob_cfg)
            .output()
            .expect("run slapos");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["request", "b-cli", SR, "--node", "computer_guid=COMP-A"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("State is : started"), "{out}");
    let (ok, out, err) = cli(&["service", "list", "--json"]);
    assert!(ok, "{err}");
    let titles: Vec<String> = serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(titles, vec!["b-db", "a-db", "b-cli"], "{out}");
    let (ok, _, err) = cli(&["service", "info", "a-only"]);
    assert!(!ok, "Alice's instance is not found by Bob's CLI");
    assert!(err.contains("a-only"), "{err}");
    let (ok, out, err) = cli(&["remove", OTHER_SR, "COMP-A"]);
    assert!(ok, "{out}{err}");
    let (_, software) = api.get("/api/v1/computers/COMP-A/software", &bob).await;
    assert_eq!(software[0]["requested_state"], "destroyed", "{software}");
    let (ok, _, err) = cli(&["remove", SR, "COMP-A"]);
    assert!(!ok, "Bob cannot remove Alice's supply");
    assert!(err.contains("No supply"), "{err}");
    let (_, list) = api.get("/api/v1/instances", &alice).await;
    assert_eq!(
        ids(&list),
        vec![a_db, a_only, a_child],
        "Bob's CLI request is his"
    );

    // The node's view (its computer certificate) has everything; a user's
    // token is not a node's credential, and no credential is refused.
    let view_url = format!(
        "{}/getFullComputerInformation?computer_id=COMP-A",
        server.url
    );
    let r = http.get(&view_url).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = http.get(&view_url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = node.get(&view_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let view = r.text().await.unwrap();
    for title in ["a-db", "a-only", "b-db"] {
        assert!(view.contains(title), "{title} in the node's view");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_tenant_isolation_on_sqlite() {
    let server = common::start_master_with_accounts(None);
    accounts_story(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_tenant_isolation_on_postgresql() {
    let Some(database) = PgDatabase::create("slapos_accounts") else {
        return;
    };
    let server = common::start_master_with_accounts(Some(&database.url));
    accounts_story(&server).await;
}

/// Without `authentication = token` a master stays open, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_without_accounts_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let server = common::start_master(db.to_str().unwrap());
    let r = reqwest::get(format!("{}/api/v1/instances", server.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("{}/", server.url)).await.unwrap();
    assert_eq!(r.status(), 200);
}
