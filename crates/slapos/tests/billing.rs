//! Accounting on `slapos master` (the real binary, accounts on): a price
//! list from a TOML file, usage in the ledger, drafts, monthly invoices
//! issued with `slapos master invoice issue` and frozen from then on, late
//! usage billed on the next month, credit notes, CSV export, revenue, and
//! the tenant-isolation matrix of every accounting endpoint. Amounts are
//! checked to the cent against an independent integer computation.
//! On SQLite, and on PostgreSQL when SLAPOS_TEST_POSTGRES is set.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::money::{self, cents};
use common::{computer_xml, form, PgDatabase, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use slapos_store::usage::{insert_usage_record, NewUsageRecord};
use slapos_store::{Store, StoreOptions};

const SR: &str = "https://lab.example.invalid/software/web/software.cfg";
const DB_SR: &str = "https://lab.example.invalid/software/db/software.cfg";

fn slapos_master(server: &Server, args: &[&str]) -> Result<String, String> {
    server.master_command(args)
}

async fn call(
    server: &Server,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut r = server
        .client(None)
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(token);
    if let Some(body) = body {
        r = r.json(&body);
    }
    let r = r.send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

async fn get(server: &Server, path: &str, token: &str) -> (StatusCode, Value) {
    let (status, text) = call(server, Method::GET, path, token, None).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Prices of the test's list, in ten-thousandths of a currency unit.
fn price_e4(release: Option<&str>, resource: &str) -> i128 {
    match (release, resource) {
        (Some(DB_SR), "cpu_hour") => 800,
        (_, "instance_hour") => 100,
        (_, "cpu_hour") => 500,
        (_, "memory_gb_hour") => 20,
        (_, "disk_gb_month") => 1_000,
        _ => unreachable!(),
    }
}

const PRICE_LIST: &str = r#"
name = "standard 2026"
currency = "EUR"
valid_from = "2026-01-01"

[[price]]
resource = "instance_hour"
unit_price = "0.01"

[[price]]
resource = "cpu_hour"
unit_price = "0.05"

[[price]]
resource = "cpu_hour"
software_release = "https://lab.example.invalid/software/db/software.cfg"
unit_price = "0.08"

[[price]]
resource = "memory_gb_hour"
unit_price = "0.002"

[[price]]
resource = "disk_gb_month"
unit_price = "0.10"
"#;

/// One usage record to put in the ledger.
#[derive(Clone)]
struct Use {
    instance: i64,
    user: i64,
    release: &'static str,
    start: &'static str,
    cpu_seconds: i64,
    memory_gb: i64,
    disk_gb: i64,
    seconds: i64,
}

fn micros(date: &str) -> i64 {
    slapos_core::billing::parse_utc_date(date).unwrap()
}

async fn record(store: &Store, report: &str, u: &Use) -> bool {
    let u = u.clone();
    let report = report.to_string();
    store
        .write(move |db| {
            let computer = slapos_store::queries::computer_by_reference(db, "COMP-A")?
                .expect("COMP-A")
                .id;
            let start = micros(u.start);
            insert_usage_record(
                db,
                &NewUsageRecord {
                    computer_id: computer,
                    report_id: &report,
                    partition_reference: &format!("slappart{}", u.instance),
                    instance_id: Some(u.instance),
                    user_id: Some(u.user),
                    tree_id: Some(u.instance),
                    software_release: Some(u.release),
                    software_type: Some("default"),
                    period_start: start,
                    period_end: start + u.seconds * 1_000_000,
                    cpu_micros: u.cpu_seconds * 1_000_000,
                    memory_byte_seconds: u.memory_gb * 1_000_000_000 * u.seconds,
                    disk_byte_seconds: u.disk_gb * 1_000_000_000 * u.seconds,
                    running_seconds: u.seconds,
                },
                slapos_core::now_micros(),
            )
        })
        .await
        .unwrap()
}

/// The expected total in cents: each line (per tree, release, resource and
/// price) is `Σ raw × price / raw-per-unit`, rounded half up once, in
/// integers.
fn expected_cents(uses: &[&Use]) -> i128 {
    let mut raw: BTreeMap<(i64, &str, &str), i128> = BTreeMap::new();
    for u in uses {
        let s = i128::from(u.seconds);
        for (resource, q) in [
            ("instance_hour", s),
            ("cpu_hour", i128::from(u.cpu_seconds) * 1_000_000),
            (
                "memory_gb_hour",
                i128::from(u.memory_gb) * 1_000_000_000 * s,
            ),
            ("disk_gb_month", i128::from(u.disk_gb) * 1_000_000_000 * s),
        ] {
            *raw.entry((u.instance, u.release, resource)).or_default() += q;
        }
    }
    raw.into_iter()
        .map(|((_, release, resource), q)| {
            money::line_cents(q, resource, price_e4(Some(release), resource))
        })
        .sum()
}

async fn billing_story(server: &Server, database: &str) {
    let alice = slapos_master(server, &["user", "add", "alice"]).unwrap();
    let alice = alice.trim().to_string();
    let bob = slapos_master(server, &["user", "add", "bob"]).unwrap();
    let bob = bob.trim().to_string();
    // The computer, registered by its node with its certificate (HTTPS).
    let (node, _) = server.issue_certificate("computer", "COMP-A");
    let r = server
        .client(Some(&node))
        .post(format!("{}/loadComputerConfigurationFromXML", server.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&[("xml", &computer_xml("COMP-A", 6))]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request = |token: String, title: &'static str, release: &'static str| async move {
        let (status, body) = call(
            server,
            Method::POST,
            "/api/v1/instances",
            &token,
            Some(json!({"software_release": release, "title": title,
                        "sla": {"computer_guid": "COMP-A"}})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    // A title a spreadsheet would run as a formula.
    let a_web = request(alice.clone(), "=HYPERLINK(\"http://evil\")", SR).await;
    let a_db = request(alice.clone(), "a-db", DB_SR).await;
    let b_web = request(bob.clone(), "b-web", SR).await;
    // The synchronous PostgreSQL client runs its own runtime: open (and
    // drop) the store off the async threads.
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

    // Prices: bad lists are refused, the good one is taken once.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prices.toml");
    for (bad, why) in [
        (PRICE_LIST.replace("EUR", "euro"), "ISO 4217"),
        (PRICE_LIST.replace("\"0.05\"", "\"-0.05\""), "negative"),
        (
            PRICE_LIST.replace("cpu_hour\"\nunit", "gpu_hour\"\nunit"),
            "gpu_hour",
        ),
        (PRICE_LIST.replace("2026-01-01", "2026-02-30"), "not a date"),
    ] {
        std::fs::write(&file, bad).unwrap();
        let err =
            slapos_master(server, &["price-list", "add", file.to_str().unwrap()]).unwrap_err();
        assert!(err.contains(why), "{why}: {err}");
    }
    std::fs::write(&file, PRICE_LIST).unwrap();
    let out = slapos_master(server, &["price-list", "add", file.to_str().unwrap()]).unwrap();
    assert!(out.contains("5 prices in EUR"), "{out}");
    let err = slapos_master(server, &["price-list", "add", file.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("already exists"), "{err}");
    let (_, spec) = get(server, "/api/v1/openapi.json", &bob).await;
    for path in [
        "/api/v1/usage",
        "/api/v1/invoices/{number}",
        "/api/v1/revenue",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    let (status, lists) = get(server, "/api/v1/price-lists", &bob).await;
    assert_eq!(status, 200);
    assert_eq!(lists[0]["prices"].as_array().unwrap().len(), 5, "{lists}");

    // Usage: Alice in November and December, Bob in December.
    let a_nov = Use {
        instance: a_web,
        user: alice_id,
        release: SR,
        start: "2026-11-20T10:00:00Z",
        cpu_seconds: 5_400,
        memory_gb: 2,
        disk_gb: 30,
        seconds: 36_000,
    };
    let a_dec_web = Use {
        start: "2026-12-01T00:00:00Z",
        cpu_seconds: 7_777,
        seconds: 86_400,
        ..a_nov.clone()
    };
    let a_dec_db = Use {
        instance: a_db,
        release: DB_SR,
        start: "2026-12-02T00:00:00Z",
        cpu_seconds: 12_345,
        memory_gb: 4,
        disk_gb: 100,
        seconds: 3_601,
        ..a_nov.clone()
    };
    let b_dec = Use {
        instance: b_web,
        user: bob_id,
        release: SR,
        start: "2026-12-03T12:00:00Z",
        cpu_seconds: 333,
        memory_gb: 1,
        disk_gb: 5,
        seconds: 999,
    };
    assert!(record(&store, "r1", &a_nov).await);
    assert!(record(&store, "r2", &a_dec_web).await);
    assert!(record(&store, "r2", &a_dec_db).await);
    assert!(record(&store, "r3", &b_dec).await);
    assert!(
        !record(&store, "r3", &b_dec).await,
        "a resent report is recorded once"
    );

    // Usage as each user sees it.
    let (status, records) = get(server, "/api/v1/usage", &alice).await;
    assert_eq!(status, 200);
    assert_eq!(records.as_array().unwrap().len(), 3, "{records}");
    let (_, records) = get(server, "/api/v1/usage", &bob).await;
    assert_eq!(records.as_array().unwrap().len(), 1, "{records}");
    let (status, summary) = get(
        server,
        &format!("/api/v1/usage/summary?tree={a_web}&bucket=86400&from=2026-12-01"),
        &alice,
    )
    .await;
    assert_eq!(status, 200, "{summary}");
    let cpu: f64 = summary
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["cpu_hours"].as_f64().unwrap())
        .sum();
    assert!((cpu - 7_777.0 / 3_600.0).abs() < 1e-9, "{summary}");

    // Drafts price the ledger; nothing is stored.
    let (status, drafts) = get(server, "/api/v1/invoices/draft?period=2026-12", &alice).await;
    assert_eq!(status, 200, "{drafts}");
    assert_eq!(drafts.as_array().unwrap().len(), 1);
    assert_eq!(
        cents(&drafts[0]["total"]),
        expected_cents(&[&a_nov, &a_dec_web, &a_dec_db])
    );
    let (status, body) = get(server, "/api/v1/invoices/draft?period=2026-13", &alice).await;
    assert_eq!(status, 400, "{body}");

    // November: only Alice used anything.
    let out = slapos_master(server, &["invoice", "issue", "--period", "2026-11"]).unwrap();
    let a_nov_number = format!("INV-2026-11-U{alice_id}");
    assert!(out.contains(&a_nov_number), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let (status, invoice) = get(server, &format!("/api/v1/invoices/{a_nov_number}"), &alice).await;
    assert_eq!(status, 200, "{invoice}");
    assert_eq!(cents(&invoice["total"]), expected_cents(&[&a_nov]));
    assert_eq!(invoice["currency"], "EUR");
    assert_eq!(invoice["user"], "alice");
    let line_sum: i128 = invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| cents(&l["amount"]))
        .sum();
    assert_eq!(line_sum, cents(&invoice["total"]));

    // A report of November that arrives late goes on a later invoice.
    let b_late = Use {
        start: "2026-11-30T23:00:00Z",
        cpu_seconds: 100,
        seconds: 3_600,
        ..b_dec.clone()
    };
    assert!(record(&store, "r4", &b_late).await);

    // December: Alice's December usage (November's is billed), Bob's
    // December and late November usage.
    let out = slapos_master(server, &["invoice", "issue", "--period", "2026-12"]).unwrap();
    assert_eq!(out.lines().count(), 2, "{out}");
    let a_dec_number = format!("INV-2026-12-U{alice_id}");
    let b_dec_number = format!("INV-2026-12-U{bob_id}");
    let (_, a_dec) = get(server, &format!("/api/v1/invoices/{a_dec_number}"), &alice).await;
    assert_eq!(
        cents(&a_dec["total"]),
        expected_cents(&[&a_dec_web, &a_dec_db])
    );
    let db_cpu = a_dec["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["resource"] == "cpu_hour" && l["software_release"] == DB_SR)
        .expect("a CPU line for the database");
    assert_eq!(db_cpu["unit_price"], "0.08", "the release's own price wins");
    let (_, b_inv) = get(server, &format!("/api/v1/invoices/{b_dec_number}"), &bob).await;
    assert_eq!(cents(&b_inv["total"]), expected_cents(&[&b_dec, &b_late]));

    // Issued invoices are frozen: more usage changes nothing on them, and
    // issuing the month again bills nobody twice.
    let a_more = Use {
        start: "2026-12-03T00:00:00Z",
        ..a_dec_web.clone()
    };
    assert!(record(&store, "r5", &a_more).await);
    let (_, again) = get(server, &format!("/api/v1/invoices/{a_dec_number}"), &alice).await;
    assert_eq!(again["total"], a_dec["total"]);
    let out = slapos_master(server, &["invoice", "issue", "--period", "2026-12"]).unwrap();
    assert!(out.contains("No usage left"), "{out}");
    let (_, drafts) = get(server, "/api/v1/invoices/draft?period=2027-01", &alice).await;
    assert_eq!(cents(&drafts[0]["total"]), expected_cents(&[&a_more]));
    let err = slapos_master(server, &["invoice", "issue", "--period", "2099-01"]).unwrap_err();
    assert!(err.contains("has not started"), "{err}");

    // CSV: one row per line, formulas neutralised.
    let (status, csv) = call(
        server,
        Method::GET,
        &format!("/api/v1/invoices/{a_dec_number}?format=csv"),
        &alice,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        csv.lines().count(),
        1 + a_dec["lines"].as_array().unwrap().len(),
        "{csv}"
    );
    assert!(
        csv.contains("\"'=HYPERLINK(\"\"http://evil\"\")\""),
        "{csv}"
    );

    // Credit notes: never more than the invoice.
    let total = a_dec["total"].as_str().unwrap().to_string();
    let too_much = format!("{}.00", cents(&a_dec["total"]) / 100 + 1);
    let err = slapos_master(
        server,
        &[
            "invoice",
            "credit",
            &a_dec_number,
            "--amount",
            &too_much,
            "--reason",
            "x",
        ],
    )
    .unwrap_err();
    assert!(err.contains("would exceed"), "{err}");
    let out = slapos_master(
        server,
        &[
            "invoice",
            "credit",
            &a_dec_number,
            "--amount",
            "0.01",
            "--reason",
            "outage on Dec 2",
        ],
    )
    .unwrap();
    let note_number = format!("CN-{a_dec_number}-1");
    assert!(out.contains(&note_number) && out.contains("-0.01"), "{out}");
    let (_, a_dec) = get(server, &format!("/api/v1/invoices/{a_dec_number}"), &alice).await;
    assert_eq!(
        a_dec["total"],
        total.as_str(),
        "the invoice itself never changes"
    );
    assert_eq!(a_dec["credit_notes"][0], note_number.as_str());
    let (status, note) = get(server, &format!("/api/v1/invoices/{note_number}"), &alice).await;
    assert_eq!(status, 200);
    assert_eq!(note["corrects"], a_dec_number.as_str());

    // Tenant isolation: Bob's token against everything of Alice's is a 404;
    // the provider's actions are 403 for any user.
    for path in [
        format!("/api/v1/invoices/{a_dec_number}"),
        format!("/api/v1/invoices/{a_dec_number}?format=csv"),
        format!("/api/v1/invoices/{note_number}"),
        format!("/api/v1/invoices/{a_nov_number}"),
        format!("/api/v1/usage?instance={a_web}"),
        format!("/api/v1/usage?tree={a_db}"),
        format!("/api/v1/usage/summary?tree={a_web}"),
    ] {
        let (status, body) = call(server, Method::GET, &path, &bob, None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (_, list) = get(server, "/api/v1/invoices", &bob).await;
    let numbers: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["number"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, vec![b_dec_number.as_str()]);
    let (_, drafts) = get(server, "/api/v1/invoices/draft?period=2027-01", &bob).await;
    assert_eq!(drafts.as_array().unwrap().len(), 0, "{drafts}");
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/invoices/issue".to_string(),
            Some(json!({"period": "2026-12"})),
        ),
        (
            Method::POST,
            format!("/api/v1/invoices/{b_dec_number}/credit-notes"),
            Some(json!({"amount": "0.01", "reason": "self-service"})),
        ),
        (
            Method::POST,
            "/api/v1/price-lists".to_string(),
            Some(
                json!({"name": "free", "currency": "EUR", "valid_from": "2026-12-01",
                        "price": [{"resource": "cpu_hour", "unit_price": "0"}]}),
            ),
        ),
        (Method::GET, "/api/v1/revenue".to_string(), None),
    ] {
        let (status, text) = call(server, method, &path, &bob, body).await;
        assert_eq!(status, 403, "{path}: {text}");
    }

    // Alice's CLI: her usage, invoices and one invoice as text and CSV.
    let cfg = dir.path().join("alice.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\nmaster_url = {}\napi_token = {alice}\nmaster_ca_file = {}\n",
            server.url,
            server.ca_file().display()
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| -> String {
        let out = Command::new(common::binary())
            .args(args)
            .arg("--cfg")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "slapos {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = cli(&["invoice", "list"]);
    for number in [&a_nov_number, &a_dec_number, &note_number] {
        assert!(listed.contains(number.as_str()), "{listed}");
    }
    assert!(!listed.contains(&b_dec_number), "{listed}");
    let shown = cli(&["invoice", "show", &a_dec_number]);
    assert!(shown.contains(&total) && shown.contains("a-db"), "{shown}");
    assert_eq!(cli(&["invoice", "show", &a_dec_number, "--csv"]), csv);
    let usage = cli(&["usage", "--instance", "a-db", "--bucket", "hour"]);
    assert!(usage.contains("2026-12-02 00:00:00"), "{usage}");
    let records: Value = serde_json::from_str(&cli(&["usage", "--records"])).unwrap();
    assert_eq!(records.as_array().unwrap().len(), 4, "{records}");
    let drafts = cli(&["invoice", "draft", "--period", "2027-01"]);
    assert!(drafts.contains("(draft)"), "{drafts}");

    // The provider's revenue: the invoices less the credit note.
    let out = slapos_master(server, &["revenue", "--json"]).unwrap();
    let revenue: Value = serde_json::from_str(&out).unwrap();
    let revenue_cents: i128 = revenue
        .as_array()
        .unwrap()
        .iter()
        .map(|r| cents(&r["amount"]))
        .sum();
    assert_eq!(
        revenue_cents,
        expected_cents(&[&a_nov]) + cents(&a_dec["total"]) + cents(&b_inv["total"]) - 1
    );
    tokio::task::spawn_blocking(move || drop(store))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_on_sqlite() {
    let server = common::start_master_with_accounts(None);
    let database = server.dir.path().join("proxy.db");
    billing_story(&server, database.to_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_on_postgresql() {
    let Some(database) = PgDatabase::create("slapos_billing") else {
        return;
    };
    let server = common::start_master_with_accounts(Some(&database.url));
    billing_story(&server, &database.url).await;
}
