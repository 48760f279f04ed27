//! HTTPS with client certificates on `slapos master` (the real binary, with
//! `authentication = token`): certificates issued by `slapos master
//! computer|user certificate issue`, a matrix of every legacy node route and
//! the node's watch, where a computer's certificate gets 403 on another
//! computer and 200 on its own; users' certificates see only their own
//! instances (404 otherwise); revoked certificates are refused at once;
//! our CLI and the reference Python client (`slapos request`, when the
//! reference venv is there) request instances with a user certificate.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{computer_xml, form, Server};
use reqwest::{Client, StatusCode};
use serde_json::Value;

const SR: &str = "https://lab.example.invalid/software/demo/software.cfg";
const EMPTY_LIST: &str = "<marshal><list id=\"i2\"/></marshal>";

async fn get(client: &Client, server: &Server, path: &str) -> (StatusCode, String) {
    let r = client
        .get(format!("{}{path}", server.url))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status();
    (status, r.text().await.unwrap())
}

async fn post(
    client: &Client,
    server: &Server,
    path: &str,
    fields: &[(&str, &str)],
    partition_header: Option<(&str, &str)>,
) -> (StatusCode, String) {
    let mut r = client
        .post(format!("{}{path}", server.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(fields));
    if let Some((computer, partition)) = partition_header {
        r = r.header(
            "Authorization",
            format!("X-SlapPartition computer_id={computer}, computer_partition_id={partition}"),
        );
    }
    let r = r
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = r.status();
    (status, r.text().await.unwrap())
}

/// One call of the matrix.
enum Call {
    Get(String),
    Post(&'static str, Vec<(&'static str, String)>, bool),
}

/// Every route a node uses, naming `computer` and its partition `p` (busy)
/// and `free` (a free one).
fn node_calls(computer: &str, p: &str, free: &str) -> Vec<Call> {
    let c = computer.to_string();
    let both = |extra: &[(&'static str, &str)]| {
        let mut v = vec![
            ("computer_id", c.clone()),
            ("computer_partition_id", p.to_string()),
        ];
        v.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        v
    };
    let software = |extra: &[(&'static str, &str)]| {
        let mut v = vec![("url", SR.to_string()), ("computer_id", c.clone())];
        v.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        v
    };
    vec![
        Call::Get(format!("/getFullComputerInformation?computer_id={c}")),
        Call::Get(format!("/getComputerInformation?computer_id={c}")),
        Call::Get(format!(
            "/registerComputerPartition?computer_reference={c}&computer_partition_reference={p}"
        )),
        Call::Get(format!(
            "/getComputerPartitionCertificate?computer_id={c}&computer_partition_id={p}"
        )),
        Call::Get(format!(
            "/getHostingSubscriptionIpList?computer_id={c}&computer_partition_id={p}"
        )),
        Call::Get(format!(
            "/getComputerPartitionStatus?computer_id={c}&computer_partition_id={p}"
        )),
        Call::Get(format!("/api/v1/computers/{c}/watch?timeout=0")),
        Call::Post(
            "/loadComputerConfigurationFromXML",
            vec![("xml", computer_xml(computer, 4))],
            false,
        ),
        Call::Post("/buildingSoftwareRelease", software(&[]), false),
        Call::Post("/availableSoftwareRelease", software(&[]), false),
        Call::Post(
            "/softwareReleaseError",
            software(&[("error_log", "boom")]),
            false,
        ),
        Call::Post("/startedComputerPartition", both(&[]), false),
        Call::Post("/stoppedComputerPartition", both(&[]), false),
        Call::Post(
            "/softwareInstanceError",
            both(&[("error_log", "oops")]),
            false,
        ),
        Call::Post(
            "/softwareInstanceBang",
            both(&[("message", "bang")]),
            false,
        ),
        Call::Post(
            "/setComputerPartitionConnectionXml",
            both(&[(
                "connection_xml",
                "<marshal><dictionary id=\"i2\"><string>url</string><string>http://x</string></dictionary></marshal>",
            )]),
            false,
        ),
        Call::Post(
            "/updateComputerPartitionRelatedInstanceList",
            both(&[("instance_reference_xml", EMPTY_LIST)]),
            false,
        ),
        Call::Post(
            "/useComputer",
            vec![
                ("computer_id", c.clone()),
                ("use_string", "<journal/>".to_string()),
            ],
            false,
        ),
        Call::Post(
            "/computerBang",
            vec![("computer_id", c.clone()), ("message", "bang".to_string())],
            false,
        ),
        Call::Post(
            "/destroyedComputerPartition",
            vec![
                ("computer_id", c.clone()),
                ("computer_partition_id", free.to_string()),
            ],
            false,
        ),
        // A request made by the instance on partition p (a child).
        Call::Post("/requestComputerPartition", child_request(computer), true),
    ]
}

fn child_request(computer: &str) -> Vec<(&'static str, String)> {
    vec![
        ("software_release", SR.to_string()),
        ("partition_reference", format!("child-on-{computer}")),
        ("partition_parameter_xml", common::EMPTY_DICT.to_string()),
        (
            "filter_xml",
            format!("<marshal><dictionary id=\"i2\"><string>computer_guid</string><string>{computer}</string></dictionary></marshal>"),
        ),
        ("software_type", "default".to_string()),
        ("state", "<marshal><none/></marshal>".to_string()),
        ("shared_xml", "<marshal><bool>0</bool></marshal>".to_string()),
    ]
}

fn user_request(title: &str, computer: &str) -> Vec<(&'static str, String)> {
    let mut fields = child_request(computer);
    fields[1].1 = title.to_string();
    fields
}

async fn run(
    client: &Client,
    server: &Server,
    call: &Call,
    p: (&str, &str),
) -> (StatusCode, String, String) {
    match call {
        Call::Get(path) => {
            let (s, b) = get(client, server, path).await;
            (s, b, format!("GET {path}"))
        }
        Call::Post(path, fields, header) => {
            let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (s, b) = post(client, server, path, &fields, header.then_some(p)).await;
            (s, b, format!("POST {path}"))
        }
    }
}

async fn json(client: &Client, server: &Server, path: &str) -> (StatusCode, Value) {
    let (status, body) = get(client, server, path).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A partition of the instance titled `title`, as its owner sees it.
async fn partition_of(client: &Client, server: &Server, title: &str) -> (i64, String) {
    let (status, i) = json(
        client,
        server,
        &format!("/api/v1/instances/by-title/{title}"),
    )
    .await;
    assert_eq!(status, 200, "{title}: {i}");
    (
        i["id"].as_i64().unwrap(),
        i["partition"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computer_and_user_certificates_on_sqlite() {
    let server = common::start_master_with_accounts(None);
    certificates_story(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computer_and_user_certificates_on_postgresql() {
    let Some(database) = common::PgDatabase::create("slapos_tls") else {
        return;
    };
    let server = common::start_master_with_accounts(Some(&database.url));
    certificates_story(&server).await;
}

async fn certificates_story(server: &Server) {
    // Connections that never finish their handshake do not hold up others
    // (handshakes run in their own tasks).
    let address = server.url.trim_start_matches("https://").to_string();
    let _stalled: Vec<std::net::TcpStream> = (0..5)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let (status, _) = get(&server.client(None), server, "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    server.master_command(&["user", "add", "alice"]).unwrap();
    server.master_command(&["user", "add", "bob"]).unwrap();
    let (comp_a_dir, _) = server.issue_certificate("computer", "COMP-A");
    let (comp_b_dir, _) = server.issue_certificate("computer", "COMP-B");
    let (alice_dir, _) = server.issue_certificate("user", "alice");
    let (bob_dir, _) = server.issue_certificate("user", "bob");
    for f in ["cert.pem", "key.pem", "ca.pem"] {
        assert!(comp_a_dir.join(f).exists(), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(comp_a_dir.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
    }
    let err = server
        .master_command(&[
            "user",
            "certificate",
            "issue",
            "nobody",
            "--out-dir",
            "/tmp/x",
        ])
        .unwrap_err();
    assert!(err.contains("No user named"), "{err}");
    let err = server
        .master_command(&[
            "computer",
            "certificate",
            "issue",
            "COMP-A",
            "--out-dir",
            comp_a_dir.to_str().unwrap(),
        ])
        .unwrap_err();
    assert!(err.contains("never overwritten"), "{err}");

    let anonymous = server.client(None);
    let comp_a = server.client(Some(&comp_a_dir));
    let comp_b = server.client(Some(&comp_b_dir));
    let alice = server.client(Some(&alice_dir));
    let bob = server.client(Some(&bob_dir));

    // Each node registers its own computer, and only its own.
    for (client, computer) in [(&comp_a, "COMP-A"), (&comp_b, "COMP-B")] {
        let (status, body) = post(
            client,
            server,
            "/loadComputerConfigurationFromXML",
            &[("xml", &computer_xml(computer, 4))],
            None,
        )
        .await;
        assert_eq!(status, 200, "{computer}: {body}");
    }
    let (status, body) = post(
        &comp_a,
        server,
        "/loadComputerConfigurationFromXML",
        &[("xml", &computer_xml("COMP-C", 4))],
        None,
    )
    .await;
    assert_eq!(
        status, 403,
        "COMP-A's certificate registering COMP-C: {body}"
    );

    // No credential: 401 on the legacy protocol and the JSON API.
    for path in [
        "/getFullComputerInformation?computer_id=COMP-A",
        "/getComputerPartitionStatus?computer_id=COMP-A&computer_partition_id=slappart0",
        "/api/v1/instances",
        "/api/v1/computers/COMP-A/watch?timeout=0",
    ] {
        let (status, body) = get(&anonymous, server, path).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let request = user_request("anon", "COMP-A");
    let fields: Vec<(&str, &str)> = request.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _) = post(
        &anonymous,
        server,
        "/requestComputerPartition",
        &fields,
        None,
    )
    .await;
    assert_eq!(status, 401);

    // Users request with their certificates (legacy protocol): each
    // instance is its requester's.
    for (client, title, computer) in [(&alice, "a-inst", "COMP-A"), (&bob, "b-inst", "COMP-B")] {
        let request = user_request(title, computer);
        let fields: Vec<(&str, &str)> = request.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = post(client, server, "/requestComputerPartition", &fields, None).await;
        assert_eq!(status, 200, "{title}: {body}");
    }
    let (status, _) = post(
        &alice,
        server,
        "/supplySupply",
        &[
            ("url", SR),
            ("computer_id", "COMP-A"),
            ("state", "available"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (a_id, a_part) = partition_of(&alice, server, "a-inst").await;
    let (b_id, b_part) = partition_of(&bob, server, "b-inst").await;
    let free_a = if a_part == "slappart3" {
        "slappart2"
    } else {
        "slappart3"
    };
    let free_b = if b_part == "slappart3" {
        "slappart2"
    } else {
        "slappart3"
    };

    // A computer certificate is not a user's: the JSON API and user routes refuse it.
    let (status, body) = json(&comp_a, server, "/api/v1/instances").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(&comp_a, server, "/requestComputerPartition", &fields, None).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(
        &comp_a,
        server,
        "/supplySupply",
        &[
            ("url", SR),
            ("computer_id", "COMP-A"),
            ("state", "available"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // The matrix: COMP-B's node (and each user) against COMP-A's routes
    // gets 403; COMP-A's node against its own gets 200.
    for call in node_calls("COMP-A", &a_part, free_a) {
        for (who, client) in [("COMP-B", &comp_b), ("alice", &alice), ("bob", &bob)] {
            let (status, body, what) = run(client, server, &call, ("COMP-A", &a_part)).await;
            let user_may = matches!(
                &call,
                Call::Get(p) if p.starts_with("/registerComputerPartition")
                    || p.starts_with("/getHostingSubscriptionIpList")
                    || p.starts_with("/getComputerPartitionStatus")
                    || p.contains("/watch")
            ) || matches!(&call, Call::Post(p, _, _) if *p == "/softwareInstanceBang");
            let expected = match (who, user_may) {
                ("COMP-B", _) => 403,
                // Users may read their own partitions: Alice's is hers,
                // and Bob gets the 404 of a missing one. Any user may
                // watch (a version number).
                ("alice", true) => 200,
                ("bob", true) if what.contains("/watch") => 200,
                ("bob", true) => 404,
                // A user's request naming a partition that is not theirs.
                ("alice", false) if what.contains("requestComputerPartition") => 200,
                ("bob", false) if what.contains("requestComputerPartition") => 404,
                _ => 403,
            };
            assert_eq!(status, expected, "{what} as {who}: {body}");
            if who == "bob" && expected == 404 {
                assert!(
                    !body.contains("a-inst"),
                    "no hint of Alice's instance: {body}"
                );
            }
        }
        let (status, body, what) = run(&comp_a, server, &call, ("COMP-A", &a_part)).await;
        assert_eq!(status, 200, "{what} as COMP-A's node: {body}");
    }
    // And the other way round, for the node routes of COMP-B.
    for call in node_calls("COMP-B", &b_part, free_b) {
        let (status, body, what) = run(&comp_a, server, &call, ("COMP-B", &b_part)).await;
        assert_eq!(status, 403, "{what} as COMP-A's node: {body}");
        let (status, body, what) = run(&comp_b, server, &call, ("COMP-B", &b_part)).await;
        assert_eq!(status, 200, "{what} as COMP-B's node: {body}");
    }

    // Usage reports (JSON): only the computer's own node may send them.
    let usage = serde_json::json!({"report_id": "tls-usage-1", "records": [{
        "partition": a_part, "period_start": 1_000_000, "period_end": 2_000_000,
        "cpu_micros": 1, "memory_byte_seconds": 1, "disk_byte_seconds": 1, "running_seconds": 1}]});
    for (who, client, expected) in [
        ("COMP-B", &comp_b, 403),
        ("alice", &alice, 403),
        ("anonymous", &anonymous, 401),
        ("COMP-A", &comp_a, 200),
    ] {
        let r = client
            .post(format!("{}/api/v1/computers/COMP-A/usage", server.url))
            .json(&usage)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(
            status,
            expected,
            "usage of COMP-A as {who}: {}",
            r.text().await.unwrap()
        );
    }

    // The child COMP-A's node requested for Alice's instance is Alice's.
    let (status, a) = json(&alice, server, &format!("/api/v1/instances/{a_id}")).await;
    assert_eq!(status, 200);
    let titles: Vec<&str> = a["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["title"].as_str().unwrap())
        .collect();
    assert!(titles.contains(&"child-on-COMP-A"), "{a}");

    // Users see only their own instances, by certificate as by token.
    let (status, _) = json(&bob, server, &format!("/api/v1/instances/{a_id}")).await;
    assert_eq!(status, 404);
    let (status, _) = json(&alice, server, &format!("/api/v1/instances/{b_id}")).await;
    assert_eq!(status, 404);
    let (_, list) = json(&bob, server, "/api/v1/instances").await;
    let titles: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert!(
        titles.contains(&"b-inst") && !titles.contains(&"a-inst"),
        "{list}"
    );

    // Revocation takes effect at the next request, on the same connection.
    let (spare_dir, spare_fp) = server.issue_certificate("computer", "COMP-A");
    let spare = server.client(Some(&spare_dir));
    let view = "/getFullComputerInformation?computer_id=COMP-A";
    assert_eq!(get(&spare, server, view).await.0, 200);
    let out = server
        .master_command(&["certificate", "revoke", "--fingerprint", &spare_fp])
        .unwrap();
    assert!(out.contains("Revoked 1"), "{out}");
    let (status, body) = get(&spare, server, view).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("revoked"), "{body}");
    assert_eq!(
        get(&comp_a, server, view).await.0,
        200,
        "the other stays valid"
    );
    let err = server
        .master_command(&["certificate", "revoke", "--fingerprint", &spare_fp])
        .unwrap_err();
    assert!(err.contains("No live"), "{err}");
    // By computer and by user.
    server
        .master_command(&["certificate", "revoke", "--computer", "COMP-B"])
        .unwrap();
    assert_eq!(
        get(
            &comp_b,
            server,
            "/getFullComputerInformation?computer_id=COMP-B"
        )
        .await
        .0,
        403
    );
    server
        .master_command(&["certificate", "revoke", "--user", "bob"])
        .unwrap();
    assert_eq!(json(&bob, server, "/api/v1/instances").await.0, 403);
    assert_eq!(json(&alice, server, "/api/v1/instances").await.0, 200);
    let listed: Value = serde_json::from_str(
        &server
            .master_command(&["certificate", "list", "--json"])
            .unwrap(),
    )
    .unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");
    let revoked = listed.iter().filter(|c| !c["revoked_at"].is_null()).count();
    assert_eq!(revoked, 3, "{listed:?}");
    let text = serde_json::to_string(listed).unwrap();
    assert!(!text.contains("PRIVATE KEY"));

    // A certificate of another authority fails the handshake.
    let other = tempfile::tempdir().unwrap();
    let other_cfg = other.path().join("slapos.cfg");
    let d = other.path().display();
    std::fs::write(
        &other_cfg,
        format!(
            "[slapmaster]\ndatabase_uri = {d}/m.db\nssl_cert_file = {d}/s.crt\nssl_key_file = {d}/s.key\n\
             ca_cert_file = {d}/ca.crt\nca_key_file = {d}/ca.key\n"
        ),
    )
    .unwrap();
    let out = Command::new(common::binary())
        .args(["master", "user", "add", "mallory", "--cfg"])
        .arg(&other_cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(common::binary())
        .args([
            "master",
            "user",
            "certificate",
            "issue",
            "mallory",
            "--out-dir",
        ])
        .arg(other.path().join("mallory"))
        .arg("--cfg")
        .arg(&other_cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mallory = server.client(Some(&other.path().join("mallory")));
    assert!(
        mallory
            .get(format!("{}/api/v1/instances", server.url))
            .send()
            .await
            .is_err(),
        "a certificate of another authority is refused at the handshake"
    );

    // Our CLI with Alice's certificate requests over HTTPS (legacy protocol),
    // verifying the master with its authority.
    let cfg = server.dir.path().join("alice.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\nmaster_url = {}\ncert_file = {a}/cert.pem\nkey_file = {a}/key.pem\nmaster_ca_file = {a}/ca.pem\n",
            server.url,
            a = alice_dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(common::binary())
        .args([
            "request",
            "a-cli",
            SR,
            "--node",
            "computer_guid=COMP-A",
            "--cfg",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("State is : started"), "{text}");
    let out = Command::new(common::binary())
        .args(["service", "list", "--json", "--cfg"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("a-cli") && listed.contains("a-inst") && !listed.contains("b-inst"),
        "{listed}"
    );
}

/// The reference venv (slapos.core 1.26.1), if installed.
fn reference_venv() -> Option<PathBuf> {
    let venv = std::env::var_os("SLAPOS_REF_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-ref"));
    venv.join("bin/slapos").exists().then_some(venv)
}

/// The real Python client (`slapos request`), configured with a user
/// certificate issued by our master, requests an instance over HTTPS; it
/// is that user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_client_requests_over_https_with_a_user_certificate() {
    let Some(venv) = reference_venv() else {
        eprintln!(
            "skipped: no reference venv (run scripts/setup-reference.sh, or set SLAPOS_REF_VENV)"
        );
        return;
    };
    let server = &common::start_master_with_accounts(None);
    server.master_command(&["user", "add", "carol"]).unwrap();
    server.master_command(&["user", "add", "dave"]).unwrap();
    let (node_dir, _) = server.issue_certificate("computer", "COMP-R");
    let (carol_dir, _) = server.issue_certificate("user", "carol");
    let (dave_dir, _) = server.issue_certificate("user", "dave");
    let node = server.client(Some(&node_dir));
    let (status, body) = post(
        &node,
        server,
        "/loadComputerConfigurationFromXML",
        &[("xml", &computer_xml("COMP-R", 2))],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let cfg = server.dir.path().join("carol-client.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\nmaster_url = {}\n[slapconsole]\ncert_file = {c}/cert.pem\nkey_file = {c}/key.pem\n",
            server.url,
            c = carol_dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(venv.join("bin/slapos"))
        .args(["request", "--cfg"])
        .arg(&cfg)
        .args(["carol-inst", SR, "--node", "computer_guid=COMP-R"])
        .env("SLAPOS_CLIENT_CONFIGURATION", &cfg)
        .env("PYTHONWARNINGS", "ignore")
        .current_dir(server.dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "reference slapos request: {text}");
    assert!(text.contains("State is : started"), "{text}");

    // On our master, the instance exists and is Carol's alone.
    let carol = server.client(Some(&carol_dir));
    let (status, i) = json(&carol, server, "/api/v1/instances/by-title/carol-inst").await;
    assert_eq!(status, 200, "{i}");
    let id = i["id"].as_i64().unwrap();
    let dave = server.client(Some(&dave_dir));
    let (status, _) = json(&dave, server, &format!("/api/v1/instances/{id}")).await;
    assert_eq!(status, 404);
    let view = get(
        &node,
        server,
        "/getFullComputerInformation?computer_id=COMP-R",
    )
    .await;
    assert!(view.1.contains("carol-inst"), "{}", view.1);

    // The reference node library (`slapos.slap`, as slapgrid uses it) with
    // the computer's certificate reads its computer, and is refused another.
    let script = format!(
        r#"
import slapos.slap
slap = slapos.slap.slap()
slap.initializeConnection({url:?}, key_file={key:?}, cert_file={cert:?})
print("OWN", sorted(p.getId() for p in slap.registerComputer("COMP-R").getComputerPartitionList()))
try:
    slap.registerComputer("COMP-X").getComputerPartitionList()
    print("OTHER accepted")
except Exception as e:
    print("OTHER refused", type(e).__name__, e)
"#,
        url = server.url,
        key = node_dir.join("key.pem").display().to_string(),
        cert = node_dir.join("cert.pem").display().to_string(),
    );
    let out = Command::new(venv.join("bin/python"))
        .args(["-W", "ignore", "-c", &script])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("OWN ['slappart0', 'slappart1']"),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("OTHER refused"), "{printed}");
    assert!(printed.contains("403"), "{printed}");

    // With a computer's certificate the reference client cannot request as
    // a user (403).
    let bare = server.dir.path().join("bare-client.cfg");
    std::fs::write(
        &bare,
        format!(
            "[slapos]\nmaster_url = {}\n[slapconsole]\ncert_file = {c}/cert.pem\nkey_file = {c}/key.pem\n",
            server.url,
            c = node_dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(venv.join("bin/slapos"))
        .args(["request", "--cfg"])
        .arg(&bare)
        .args(["node-inst", SR, "--node", "computer_guid=COMP-R"])
        .env("SLAPOS_CLIENT_CONFIGURATION", &bare)
        .env("PYTHONWARNINGS", "ignore")
        .current_dir(server.dir.path())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a computer certificate cannot request as a user: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Our node, with its computer certificate in `[slapos] cert_file` /
/// `key_file` and the master's authority in `master_ca_file`, registers,
/// polls and reports over HTTPS; configured for another computer, it is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_node_speaks_https_with_its_computer_certificate() {
    let server = &common::start_master_with_accounts(None);
    let (cert, _) = server.issue_certificate("computer", "COMP-N");
    let root = server.dir.path().join("node");
    let node_cfg = |computer: &str| {
        let path = server.dir.path().join(format!("node-{computer}.cfg"));
        std::fs::write(
            &path,
            format!(
                "[slapos]\ncomputer_id = {computer}\nmaster_url = {}\n\
                 instance_root = {r}/instance\nsoftware_root = {r}/software\n\
                 cert_file = {c}/cert.pem\nkey_file = {c}/key.pem\nmaster_ca_file = {c}/ca.pem\n\
                 [slapformat]\npartition_amount = 2\nalter_user = false\nalter_network = false\n",
                server.url,
                r = root.display(),
                c = cert.display()
            ),
        )
        .unwrap();
        path
    };
    let cfg = node_cfg("COMP-N");
    for command in [
        ["node", "format"],
        ["node", "software"],
        ["node", "instance"],
        ["node", "report"],
    ] {
        let out = Command::new(common::binary())
            .args(command)
            .arg("--cfg")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let node = server.client(Some(&cert));
    let (status, view) = get(
        &node,
        server,
        "/getFullComputerInformation?computer_id=COMP-N",
    )
    .await;
    assert_eq!(status, 200);
    assert!(view.contains("slappart1"), "{view}");

    let other = node_cfg("COMP-M");
    let out = Command::new(common::binary())
        .args(["node", "format", "--cfg"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") && err.contains("COMP-M"), "{err}");

    // Without the authority the master's certificate is not trusted.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let untrusting = server.dir.path().join("untrusting.cfg");
    std::fs::write(
        &untrusting,
        text.lines()
            .filter(|l| !l.starts_with("master_ca_file"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let out = Command::new(common::binary())
        .args(["node", "software", "--cfg"])
        .arg(&untrusting)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an unknown server certificate is refused"
    );
}
