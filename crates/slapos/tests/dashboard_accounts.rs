//! The dashboard of a master with accounts (`authentication = token`): a
//! login with an API token (CSRF-protected), a session cookie, every page in
//! the user's scope (another user's instance or invoice is a 404 page, the
//! list, computer page, sidebar and live feed show none of their rows),
//! logout and token revocation ending the session; and the accounting pages
//! (usage charts, invoices, CSV, draft, revenue for the provider only)
//! rendering real ledger data. On SQLite, and on PostgreSQL when
//! SLAPOS_TEST_POSTGRES is set.

mod common;

use std::time::Duration;

use common::{computer_xml, form, PgDatabase, Server};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use slapos_store::usage::{insert_usage_record, NewUsageRecord};
use slapos_store::{Store, StoreOptions};

const SR: &str = "https://lab.example.invalid/software/web/software.cfg";
const BOB_TITLE: &str = "bob-private-db";

const PRICE_LIST: &str = r#"
name = "web 2026"
currency = "EUR"
valid_from = "2026-01-01"

[[price]]
resource = "instance_hour"
unit_price = "0.01"

[[price]]
resource = "cpu_hour"
unit_price = "0.05"

[[price]]
resource = "memory_gb_hour"
unit_price = "0.002"

[[price]]
resource = "disk_gb_month"
unit_price = "0.10"
"#;

fn slapos_master(server: &Server, args: &[&str]) -> String {
    server
        .master_command(args)
        .unwrap_or_else(|e| panic!("slapos master {args:?}: {e}"))
}

/// A browser without JavaScript: keeps its cookies, follows no redirect.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn new(server: &Server) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .tls_certs_only([reqwest::Certificate::from_pem(
                    &std::fs::read(server.ca_file()).expect("the master's authority"),
                )
                .unwrap()])
                .build()
                .unwrap(),
            base: server.url.clone(),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn absorb(&mut self, headers: &HeaderMap) {
        for set in headers.get_all("set-cookie") {
            let set = set.to_str().unwrap();
            assert!(
                set.contains("HttpOnly") && set.contains("SameSite=Strict"),
                "{set}"
            );
            let (name, value) = set.split(';').next().unwrap().split_once('=').unwrap();
            self.cookies.retain(|(k, _)| k != name);
            if !set.contains("Max-Age=0") {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
    }

    async fn get(&mut self, path: &str) -> (u16, HeaderMap, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        self.absorb(&headers);
        (status, headers, r.text().await.unwrap())
    }

    async fn post(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        origin: Option<&str>,
    ) -> (u16, String, String) {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Cookie", self.cookie_header())
            .body(form(fields));
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        let r = r.send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        self.absorb(&headers);
        let location = headers
            .get("location")
            .map(|l| l.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, location, r.text().await.unwrap())
    }

    /// Logs in with a token through the login form; returns the answer.
    async fn login(&mut self, token: &str) -> (u16, String, String) {
        let (status, _, body) = self.get("/login").await;
        assert_eq!(status, 200, "{body}");
        let csrf = self
            .cookie("slapos_csrf")
            .expect("the login page sets the CSRF cookie");
        assert!(body.contains(&format!(r#"name="csrf" value="{csrf}""#)));
        self.post("/login", &[("csrf", &csrf), ("token", token)], None)
            .await
    }

    /// What the live feed sends within a second and a half.
    async fn stream(&self) -> String {
        let mut r = self
            .http
            .get(format!("{}/events/stream?after=0", self.base))
            .header("Cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, r.chunk()).await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    }
}

async fn request(server: &Server, token: &str, title: &str) -> i64 {
    let r = server
        .client(None)
        .post(format!("{}/api/v1/instances", server.url))
        .bearer_auth(token)
        .json(&json!({"software_release": SR, "title": title, "sla": {"computer_guid": "COMP-A"}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let v: Value = r.json().await.unwrap();
    v["id"].as_i64().unwrap()
}

/// Three hours of usage of one instance on 2026-11-03 (one record per hour).
async fn record_usage(store: &Store, instance: i64, user: i64) {
    store
        .write(move |db| {
            let computer = slapos_store::queries::computer_by_reference(db, "COMP-A")?
                .expect("COMP-A")
                .id;
            let start = slapos_core::billing::parse_utc_date("2026-11-03T10:00:00Z").unwrap();
            for hour in 0..3i64 {
                let period_start = start + hour * 3_600_000_000;
                insert_usage_record(
                    db,
                    &NewUsageRecord {
                        computer_id: computer,
                        report_id: &format!("report-{instance}-{hour}"),
                        partition_reference: &format!("slappart{instance}"),
                        instance_id: Some(instance),
                        user_id: Some(user),
                        tree_id: Some(instance),
                        software_release: Some(SR),
                        software_type: Some("default"),
                        period_start,
                        period_end: period_start + 3_600_000_000,
                        // Half a CPU, 2 GB of memory and 10 GB of disk.
                        cpu_micros: 1_800_000_000,
                        memory_byte_seconds: 2_000_000_000 * 3600,
                        disk_byte_seconds: 10_000_000_000 * 3600,
                        running_seconds: 3600,
                    },
                    slapos_core::now_micros(),
                )?;
            }
            Ok::<_, slapos_store::StoreError>(())
        })
        .await
        .unwrap();
}

async fn dashboard_story(server: &Server, database: &str) {
    let alice = slapos_master(server, &["user", "add", "alice"])
        .trim()
        .to_string();
    let bob = slapos_master(server, &["user", "add", "bob"])
        .trim()
        .to_string();
    // The computer, registered by its node with its certificate.
    let (node_cert, _) = server.issue_certificate("computer", "COMP-A");
    let r = server
        .client(Some(&node_cert))
        .post(format!("{}/loadComputerConfigurationFromXML", server.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&[("xml", &computer_xml("COMP-A", 4))]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a_web = request(server, &alice, "alice-web").await;
    let b_db = request(server, &bob, BOB_TITLE).await;

    // Without a session, every page sends the browser to the login page.
    let mut anonymous = Browser::new(server);
    for path in [
        "/".to_string(),
        "/instances".to_string(),
        format!("/instances/{a_web}"),
        format!("/instances/{a_web}/destroy"),
        "/request".to_string(),
        "/computers".to_string(),
        "/computers/COMP-A".to_string(),
        "/software".to_string(),
        "/usage".to_string(),
        "/invoices".to_string(),
        "/invoices/INV-2026-11-U1".to_string(),
        "/revenue".to_string(),
        "/events/stream".to_string(),
    ] {
        let (status, headers, _) = anonymous.get(&path).await;
        assert_eq!(status, 303, "{path}");
        assert_eq!(headers["location"], "/login", "{path}");
    }
    // So does a form posted without one.
    let (status, location, _) = anonymous
        .post(
            &format!("/instances/{a_web}/state"),
            &[("csrf", "x"), ("state", "stopped")],
            None,
        )
        .await;
    assert_eq!((status, location.as_str()), (303, "/login"));

    // The login form wants its CSRF token, from this site.
    let mut visitor = Browser::new(server);
    let (status, _, _) = visitor.get("/login").await;
    assert_eq!(status, 200);
    let csrf = visitor.cookie("slapos_csrf").unwrap();
    let (status, _, body) = visitor
        .post("/login", &[("csrf", "forged"), ("token", &alice)], None)
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = visitor
        .post(
            "/login",
            &[("csrf", &csrf), ("token", &alice)],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(status, 403);
    assert!(visitor.cookie("slapos_session").is_none());
    // A bad token is refused with a message.
    let (status, _, body) = visitor.login("slapos_not-a-token").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unknown or revoked"), "{body}");
    assert!(visitor.cookie("slapos_session").is_none());

    // Alice logs in: a session cookie, and the pages are hers.
    let mut a = Browser::new(server);
    let (status, location, _) = a.login(&alice).await;
    assert_eq!((status, location.as_str()), (303, "/instances"));
    let session = a.cookie("slapos_session").expect("a session cookie");
    assert!(!session.contains(&alice), "the cookie is not the token");
    let (status, _, body) = a.get("/instances").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("alice-web") && body.contains(r#"id="user">alice<"#));
    assert!(
        !body.contains(BOB_TITLE),
        "the list and sidebar are alice's only"
    );
    assert!(!body.contains(r#"href="/revenue""#), "no revenue for users");
    let (status, _, body) = a.get(&format!("/instances/{a_web}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!(r#"href="/usage?tree={a_web}""#)));
    // Bob's instance is as missing as one that never existed.
    for path in [
        format!("/instances/{b_db}"),
        format!("/instances/{b_db}/destroy"),
        "/instances/999999".to_string(),
        format!("/usage?tree={b_db}"),
        format!("/usage?instance={b_db}"),
    ] {
        let (status, _, body) = a.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains(BOB_TITLE));
    }
    let csrf = a.cookie("slapos_csrf").unwrap();
    let (status, _, _) = a
        .post(
            &format!("/instances/{b_db}/state"),
            &[("csrf", &csrf), ("state", "stopped")],
            None,
        )
        .await;
    assert_eq!(status, 404, "alice cannot stop bob's instance");
    // The computer shows bob's partition as used, without his instance.
    let (status, _, body) = a.get("/computers/COMP-A").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("alice-web") && body.contains(">used<"),
        "{body}"
    );
    assert!(!body.contains(BOB_TITLE) && !body.contains(&format!("/instances/{b_db}\"")));
    // The live feed sends alice's events only.
    let feed = a.stream().await;
    assert!(feed.contains(&format!("\"instance_id\":{a_web}")), "{feed}");
    assert!(
        !feed.contains(&format!("\"instance_id\":{b_db}")) && !feed.contains(BOB_TITLE),
        "{feed}"
    );
    // What she requests with the form is hers.
    let (status, location, body) = a
        .post(
            "/request",
            &[
                ("csrf", &csrf),
                ("software_release", SR),
                ("title", "alice-form"),
            ],
            None,
        )
        .await;
    assert_eq!(status, 303, "{body}");
    assert!(location.starts_with("/instances/"), "{location}");
    let mine: Value = server
        .client(None)
        .get(format!("{}/api/v1/instances", server.url))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(mine.to_string().contains("alice-form"), "{mine}");
    let theirs: Value = server
        .client(None)
        .get(format!("{}/api/v1/instances", server.url))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!theirs.to_string().contains("alice-form"), "{theirs}");

    // Accounting: usage in the ledger, a price list, November issued.
    let uri = database.to_string();
    let store = tokio::task::spawn_blocking(move || Store::open(&uri, &StoreOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let (alice_id, bob_id) = store
        .read(|db| {
            let mut id = |name: &str| -> Result<i64, slapos_store::StoreError> {
                Ok(slapos_store::queries::user_by_name(db, name)?.unwrap().id)
            };
            Ok::<_, slapos_store::StoreError>((id("alice")?, id("bob")?))
        })
        .await
        .unwrap();
    record_usage(&store, a_web, alice_id).await;
    record_usage(&store, b_db, bob_id).await;
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.toml");
    std::fs::write(&prices, PRICE_LIST).unwrap();
    slapos_master(server, &["price-list", "add", prices.to_str().unwrap()]);
    slapos_master(server, &["invoice", "issue", "--period", "2026-11"]);

    // Usage: three hourly bars per chart, alice's only (bob's doubles them).
    let (status, _, body) = a
        .get("/usage?from=2026-11-01&to=2026-12-01&bucket=hour")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"<svg class="chart""#), "{body}");
    assert_eq!(body.matches(r#"<rect class="bar""#).count(), 4 * 3);
    assert!(body.contains("3 usage records"), "{body}");
    assert!(body.contains("1.5 CPU-hours in all"), "{body}");
    assert!(body.contains("6 GB-hours in all"), "{body}");
    let (status, _, body) = a
        .get(&format!(
            "/usage?tree={a_web}&from=2026-11-01&to=2026-12-01"
        ))
        .await;
    assert_eq!(status, 200);
    assert!(body.contains("Usage of alice-web") && body.contains("3 usage records"));
    let (status, _, body) = a
        .get(&format!(
            "/usage?instance={a_web}&from=2026-11-01&to=2026-12-01"
        ))
        .await;
    assert_eq!(status, 200);
    assert!(body.contains("Usage of alice-web") && body.contains("3 usage records"));
    let (status, _, body) = a
        .get("/usage?computer=COMP-A&from=2026-11-01&to=2026-12-01&bucket=day")
        .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("3 usage records") && body.contains("2026-11-03"),
        "{body}"
    );

    // Invoices: hers, with lines and CSV; bob's is a 404 page.
    let mine = format!("INV-2026-11-U{alice_id}");
    let his = format!("INV-2026-11-U{bob_id}");
    let (status, _, body) = a.get("/invoices").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&mine) && !body.contains(&his), "{body}");
    let (status, _, body) = a.get(&format!("/invoices/{mine}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("cpu_hour") && body.contains("alice-web"),
        "{body}"
    );
    assert!(body.contains(&format!("/invoices/{mine}/csv")));
    let (status, headers, csv) = a.get(&format!("/invoices/{mine}/csv")).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(
        csv.starts_with("number,kind,period") && csv.contains("\"cpu_hour\""),
        "{csv}"
    );
    for path in [format!("/invoices/{his}"), format!("/invoices/{his}/csv")] {
        let (status, _, body) = a.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    // The revenue is the provider's.
    let (status, _, _) = a.get("/revenue").await;
    assert_eq!(status, 403);

    // Logging out ends the session, also for a copy of the cookie.
    let stolen = a.cookie_header();
    let (status, location, _) = a.post("/logout", &[("csrf", &csrf)], None).await;
    assert_eq!((status, location.as_str()), (303, "/login"));
    assert!(a.cookie("slapos_session").is_none());
    let r = a
        .http
        .get(format!("{}/instances", server.url))
        .header("Cookie", stolen)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);

    // Revoking the token ends the sessions opened with it.
    let web = slapos_master(server, &["token", "add", "bob", "--label", "web"])
        .trim()
        .to_string();
    let mut b = Browser::new(server);
    assert_eq!(b.login(&web).await.0, 303);
    let (status, _, body) = b.get("/instances").await;
    assert_eq!(status, 200);
    assert!(body.contains(BOB_TITLE) && !body.contains("alice-web"));
    let tokens: Value =
        serde_json::from_str(&slapos_master(server, &["token", "list", "--json"])).unwrap();
    let id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "web")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    slapos_master(server, &["token", "revoke", &id.to_string()]);
    let (status, _, _) = b.get("/instances").await;
    assert_eq!(status, 303, "a revoked token's session is over");
    tokio::task::spawn_blocking(move || drop(store))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_with_accounts_on_sqlite() {
    let server = common::start_master_with_accounts(None);
    let database = server.dir.path().join("proxy.db");
    dashboard_story(&server, database.to_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_with_accounts_on_postgresql() {
    let Some(database) = PgDatabase::create("slapos_web_accounts") else {
        return;
    };
    let server = common::start_master_with_accounts(Some(&database.url));
    dashboard_story(&server, &database.url).await;
}
