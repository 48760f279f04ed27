//! The web dashboard served by the real binary: every page renders, user
//! strings are escaped, unknown ids get a 404 page, and no form is accepted
//! without its CSRF token or from another origin. (The browser tests in
//! tests/browser drive the same pages through Chromium.)

mod common;

use common::{computer_xml, form};
use serde_json::{json, Value};

const HOSTILE: &str = "<script>alert('x')</script>&\"";

struct Dashboard {
    http: reqwest::Client,
    base: String,
}

impl Dashboard {
    async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        (status, headers, r.text().await.unwrap())
    }

    /// A page's CSRF cookie and the token its forms carry.
    async fn token(&self, path: &str) -> (String, String) {
        let (status, headers, body) = self.get(path).await;
        assert_eq!(status, 200, "{body}");
        let cookie = headers
            .get("set-cookie")
            .expect("a first visit sets the CSRF cookie")
            .to_str()
            .unwrap()
            .to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let cookie = cookie.split(';').next().unwrap().to_string();
        let token = body
            .split(r#"name="csrf" value=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("forms carry the token")
            .to_string();
        assert_eq!(cookie, format!("slapos_csrf={token}"));
        (cookie, token)
    }

    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        origin: Option<&str>,
        body: String,
    ) -> (u16, String, String) {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = cookie {
            r = r.header("Cookie", c);
        }
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, location, r.text().await.unwrap())
    }

    async fn instance(&self, id: i64) -> Value {
        let (status, _, body) = self.get(&format!("/api/v1/instances/{id}")).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v.get("instance").cloned().unwrap_or(v)
    }
}

async fn setup(computer: &str) -> (common::Server, Dashboard, i64) {
    let server = common::start_proxy(computer, None);
    let d = Dashboard {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: server.url.clone(),
    };
    let r = d
        .http
        .post(format!("{}/loadComputerConfigurationFromXML", d.base))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&[("xml", &computer_xml(computer, 3))]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = d
        .http
        .post(format!("{}/api/v1/instances", d.base))
        .json(&json!({
            "software_release": "https://example.org/sr/software.cfg",
            "title": HOSTILE,
            "parameters": {"password": "s3cret-value", "note": HOSTILE},
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    let id = v.get("instance").unwrap_or(&v)["id"].as_i64().unwrap();
    (server, d, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_escape_user_strings_and_carry_safe_headers() {
    let (_server, d, id) = setup("COMP-WEB").await;
    for path in [
        "/".to_string(),
        "/instances".to_string(),
        "/instances?q=script&state=started&roots=1".to_string(),
        format!("/instances/{id}"),
        format!("/instances/{id}/destroy"),
        "/request".to_string(),
        "/request?software_release=https%3A%2F%2Fexample.org%2Fsr%2Fsoftware.cfg".to_string(),
        "/computers".to_string(),
        "/computers/COMP-WEB".to_string(),
        "/software".to_string(),
        // Accounting: without accounts the viewer is the provider.
        "/usage".to_string(),
        format!("/usage?tree={id}&from=2026-01-01&to=2026-02-01&bucket=day"),
        "/usage?computer=COMP-WEB".to_string(),
        "/invoices".to_string(),
        "/revenue?from=2026-01-01".to_string(),
    ] {
        let (status, headers, body) = d.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'"),
            "{path}"
        );
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert!(!body.contains("<script>alert"), "{path} is not escaped");
        if path.starts_with("/instances") {
            assert!(
                body.contains("&lt;script&gt;alert("),
                "{path} shows the title as text"
            );
        }
    }
    // A secret parameter is on the page but masked until revealed; its value
    // never goes into a URL.
    let (_, _, body) = d.get(&format!("/instances/{id}")).await;
    assert!(body.contains(r#"<code class="masked">"#));
    assert!(!body.contains("href=\"/?s3cret") && !body.contains("s3cret-value\""));

    // Unknown ids and paths are 404 pages, not crashes.
    for path in [
        "/instances/999999",
        "/computers/NOPE",
        "/instances/abc",
        "/static/..%2Fmod.rs",
        "/invoices/INV-2026-01-U9",
        "/usage?tree=999999",
        "/usage?from=yesterday",
    ] {
        let (status, _, body) = d.get(path).await;
        assert!(status == 404 || status == 400, "{path}: {status} {body}");
    }
    let (status, headers, _) = d.get("/static/app.css").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_need_their_csrf_token_and_the_same_origin() {
    let (_server, d, id) = setup("COMP-CSRF").await;
    let path = format!("/instances/{id}/state");
    let stop = |token: &str| form(&[("csrf", token), ("state", "stopped")]);

    // No cookie, no token, a wrong token, another site's origin: refused.
    let (cookie, token) = d.token("/instances").await;
    let refused = [
        d.post(&path, None, None, stop("")).await,
        d.post(&path, None, None, stop(&token)).await,
        d.post(&path, Some(&cookie), None, stop("")).await,
        d.post(&path, Some(&cookie), None, stop(&"x".repeat(32)))
            .await,
        d.post(
            &path,
            Some(&cookie),
            Some("http://evil.example"),
            stop(&token),
        )
        .await,
    ];
    for (i, (status, _, body)) in refused.iter().enumerate() {
        assert_eq!(*status, 403, "attempt {i}: {body}");
        assert!(
            body.contains("reload the page") || body.contains("another site"),
            "{body}"
        );
    }
    assert_eq!(d.instance(id).await["requested_state"], "started");

    // The page's own form: accepted, back to where the user was.
    let host = d.base.trim_start_matches("http://").to_string();
    let (status, location, body) = d
        .post(
            &path,
            Some(&cookie),
            Some(&format!("http://{host}")),
            form(&[
                ("csrf", &token),
                ("state", "stopped"),
                ("return_to", "/instances?q=x"),
            ]),
        )
        .await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(location, "/instances?q=x");
    assert_eq!(d.instance(id).await["requested_state"], "stopped");

    // return_to never leads to another site.
    let (status, location, _) = d
        .post(
            &path,
            Some(&cookie),
            None,
            form(&[
                ("csrf", &token),
                ("state", "started"),
                ("return_to", "//evil.example/"),
            ]),
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(location, format!("/instances/{id}"));

    // The request form: a bad parameter comes back next to its field (422) and requests nothing.
    let (cookie, token) = d.token("/request").await;
    let (status, _, body) = d
        .post(
            "/request",
            Some(&cookie),
            None,
            form(&[
                ("csrf", &token),
                ("software_release", "https://example.org/sr/software.cfg"),
                ("title", "from-the-form"),
                ("instance_json", "{not json"),
            ]),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(r#"id="error-instance_json""#), "{body}");
    let (status, location, body) = d
        .post(
            "/request",
            Some(&cookie),
            None,
            form(&[
                ("csrf", &token),
                ("software_release", "https://example.org/sr/software.cfg"),
                ("title", "from-the-form"),
                ("instance_json", r#"{"size": 3}"#),
            ]),
        )
        .await;
    assert_eq!(status, 303, "{body}");
    let new_id: i64 = location.trim_start_matches("/instances/").parse().unwrap();
    let created = d.instance(new_id).await;
    assert_eq!(created["title"], "from-the-form");
    assert_eq!(created["parameters"]["size"], "3");

    // Destroy through the confirmation page's form.
    let (status, _, _) = d
        .post(
            &path,
            Some(&cookie),
            None,
            form(&[("csrf", &token), ("state", "destroyed")]),
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(d.instance(id).await["requested_state"], "destroyed");
    // A destroyed instance cannot be started again.
    let (status, _, _) = d
        .post(
            &path,
            Some(&cookie),
            None,
            form(&[("csrf", &token), ("state", "started")]),
        )
        .await;
    assert!(status == 409 || status == 404, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_and_remove_from_the_computer_page() {
    let (_server, d, _) = setup("COMP-SUP").await;
    let url = "https://example.org/other/software.cfg";
    let software = |d: &Dashboard| {
        let http = d.http.clone();
        let base = d.base.clone();
        async move {
            let r = http
                .get(format!("{base}/api/v1/computers/COMP-SUP/software"))
                .send()
                .await
                .unwrap();
            let list: Vec<Value> = r.json().await.unwrap();
            list.into_iter()
                .find(|s| s["url"] == url)
                .map(|s| s["requested_state"].as_str().unwrap().to_string())
        }
    };
    let (cookie, token) = d.token("/computers/COMP-SUP").await;
    let path = "/computers/COMP-SUP/software";

    // Without the token nothing is supplied.
    let (status, _, _) = d
        .post(path, Some(&cookie), None, form(&[("url", url)]))
        .await;
    assert_eq!(status, 403);
    assert_eq!(software(&d).await, None);

    let (status, location, body) = d
        .post(
            path,
            Some(&cookie),
            None,
            form(&[("csrf", &token), ("url", url)]),
        )
        .await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(location, "/computers/COMP-SUP");
    assert_eq!(software(&d).await.as_deref(), Some("available"));
    let (_, _, page) = d.get("/computers/COMP-SUP").await;
    // (minijinja's HTML escaping also escapes `/`.)
    assert!(
        page.contains(&url.replace('/', "&#x2f;")),
        "the page lists the supplied release"
    );

    let (status, _, _) = d
        .post(
            path,
            Some(&cookie),
            None,
            form(&[("csrf", &token), ("url", url), ("state", "destroyed")]),
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(software(&d).await.as_deref(), Some("destroyed"));

    // A hostile URL is refused with an error page, and nothing is supplied.
    let hostile = "file:///srv/../../etc/passwd";
    let (status, _, body) = d
        .post(
            path,
            Some(&cookie),
            None,
            form(&[("csrf", &token), ("url", hostile)]),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("software release URL"), "{body}");
}

/// The accounting pages as the provider sees them (no accounts): usage
/// charts of the ledger, the issued invoice with its CSV, the revenue per
/// release. User strings (the instance's title) stay text there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounting_pages_for_the_provider() {
    let (server, d, id) = setup("COMP-ACC").await;
    let database = server.dir.path().join("proxy.db");
    let uri = database.to_str().unwrap().to_string();
    let store = slapos_store::Store::open(&uri, &slapos_store::StoreOptions::default()).unwrap();
    let release = "https://example.org/sr/software.cfg";
    store
        .write(move |db| {
            let computer = slapos_store::queries::computer_by_reference(db, "COMP-ACC")?
                .unwrap()
                .id;
            // Two days of usage, 2026-11-02 and 2026-11-04: the day between
            // is an empty bar.
            for (n, day) in ["2026-11-02T08:00:00Z", "2026-11-04T08:00:00Z"]
                .into_iter()
                .enumerate()
            {
                let start = slapos_core::billing::parse_utc_date(day).unwrap();
                slapos_store::usage::insert_usage_record(
                    db,
                    &slapos_store::usage::NewUsageRecord {
                        computer_id: computer,
                        report_id: &format!("r{n}"),
                        partition_reference: "slappart0",
                        instance_id: Some(id),
                        user_id: None,
                        tree_id: Some(id),
                        software_release: Some(release),
                        software_type: Some("default"),
                        period_start: start,
                        period_end: start + 3_600_000_000,
                        cpu_micros: 3_600_000_000,
                        memory_byte_seconds: 1_000_000_000 * 3600,
                        disk_byte_seconds: 0,
                        running_seconds: 3600,
                    },
                    slapos_core::now_micros(),
                )?;
            }
            Ok::<_, slapos_store::StoreError>(())
        })
        .await
        .unwrap();
    drop(store);
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        "name = \"p\"\ncurrency = \"EUR\"\nvalid_from = \"2026-01-01\"\n\
         [[price]]\nresource = \"cpu_hour\"\nunit_price = \"0.50\"\n",
    )
    .unwrap();
    for args in [
        vec!["price-list", "add", prices.to_str().unwrap()],
        vec!["invoice", "issue", "--period", "2026-11"],
    ] {
        let out = std::process::Command::new(common::binary())
            .arg("master")
            .args(&args)
            .arg("--cfg")
            .arg(server.cfg())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let (status, _, body) = d
        .get(&format!(
            "/usage?tree={id}&from=2026-11-01&to=2026-12-01&bucket=day"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("<script>alert"));
    assert!(body.contains("Usage of &lt;script&gt;"), "{body}");
    assert_eq!(body.matches(r#"<rect class="bar""#).count(), 4 * 3);
    assert!(body.contains("2 CPU-hours in all"), "{body}");
    assert!(!body.contains("style="), "no inline style (CSP)");

    let number = "INV-2026-11-U0";
    let (status, _, body) = d.get("/invoices").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(number), "{body}");
    let (status, _, body) = d.get(&format!("/invoices/{number}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("1.00 EUR") && body.contains("&lt;script&gt;"),
        "{body}"
    );
    let (status, headers, csv) = d.get(&format!("/invoices/{number}/csv")).await;
    assert_eq!(status, 200);
    assert!(headers["content-disposition"]
        .to_str()
        .unwrap()
        .contains("INV-2026-11-U0.csv"));
    assert!(csv.contains("\"1.00\""), "{csv}");

    let (status, _, body) = d.get("/revenue?from=2026-11-01").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("1.00 EUR") && body.contains(&release.replace('/', "&#x2f;")),
        "{body}"
    );
    let (status, _, body) = d.get("/revenue?from=2027-01-01").await;
    assert_eq!(status, 200);
    assert!(body.contains("No invoice issued in this range"));
}
