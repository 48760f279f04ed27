//! From processes to invoices, end to end: a `slapos master` with accounts
//! over HTTPS, a real node (`slapos node run` with its computer
//! certificate, metering every second, reporting every few seconds), and two
//! users whose instances burn different shares of a CPU and hold memory and
//! disk for a couple of minutes. The usage the master recorded for each
//! partition must match what /proc says the processes consumed, and each
//! user's invoice must equal the price list applied to their ledger, to the
//! cent.
//!
//! Tolerances, and why: CPU within 3 % + 1.5 s of the processes' utime+stime
//! (the ledger stops at the node's last sample, /proc is read around the
//! final report); memory within 15 % of the RSS /proc shows (the
//! interpreter's own memory moves a little); disk within 15 % of the
//! directory's size, less the 30 s for which the node keeps a measured size;
//! running time within 4 s + 3 % of the processes' age.
//! `SLAPOS_METERING_SECONDS` sets the load's length (default 120).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::e2e::{kill_processes_under, processes_in, wait_for, Daemon};
use common::money::{cents, total_cents};
use common::Server;
use serde_json::{json, Value};

const BURNER: &str = r#"name = "burner"
version = "1"
description = "Burns a share of a CPU and holds memory and disk (metering tests)"

[type.default]
description = "A CPU burner"
directories = ["bin", "srv"]
parameters = { type = "object", properties = { duty = { type = "string" }, memory_mb = { type = "string" }, disk_mb = { type = "string" } } }

[[type.default.files]]
path = "bin/burn.py"
mode = "0755"
template = """
import os, sys, time
duty, memory_mb, disk_mb = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
held = bytearray(memory_mb * 1048576)
for i in range(0, len(held), 4096):
    held[i] = 1
here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(here, "srv", "data.bin"), "wb") as f:
    f.write(b"x" * (disk_mb * 1048576))
while True:
    start = time.monotonic()
    while time.monotonic() - start < 0.1 * duty:
        pass
    time.sleep(0.1 * (1 - duty))
"""

[[type.default.services]]
name = "burn"
command = ["/usr/bin/python3", "{{ partition }}/bin/burn.py", "{{ parameters.duty }}", "{{ parameters.memory_mb }}", "{{ parameters.disk_mb }}"]
"#;

/// Prices in ten-thousandths: high, so that two minutes make real cents.
fn price_e4(_release: &str, resource: &str) -> i128 {
    match resource {
        "instance_hour" => 90_000,
        "cpu_hour" => 360_000,
        "memory_gb_hour" => 900_000,
        "disk_gb_month" => 90_000_000,
        other => panic!("{other}"),
    }
}

const PRICES: &str = r#"name = "metering e2e"
currency = "EUR"
valid_from = "2026-01-01"
[[price]]
resource = "instance_hour"
unit_price = "9"
[[price]]
resource = "cpu_hour"
unit_price = "36"
[[price]]
resource = "memory_gb_hour"
unit_price = "90"
[[price]]
resource = "disk_gb_month"
unit_price = "9000"
"#;

/// What /proc says of a partition's processes.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    cpu_seconds: f64,
    rss_bytes: f64,
    /// Seconds since the oldest process started.
    age_seconds: f64,
    processes: usize,
}

fn measure(dir: &Path) -> Measured {
    let ticks = 100.0; // CLK_TCK on Linux
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut m = Measured::default();
    for p in processes_in(dir) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)) else {
            continue;
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let num = |i: usize| fields[i].parse::<f64>().unwrap();
        // After the command: state is field 3, so field n is fields[n - 3].
        m.cpu_seconds += (num(11) + num(12) + num(13) + num(14)) / ticks;
        m.rss_bytes += num(21) * 4096.0;
        m.age_seconds = m.age_seconds.max(uptime - num(19) / ticks);
        m.processes += 1;
    }
    m
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

struct User {
    name: &'static str,
    token: String,
    duty: &'static str,
    memory_mb: u64,
    disk_mb: u64,
    instance: i64,
    partition: String,
}

fn slapos(cfg: &Path, args: &[&str]) -> String {
    let out = Command::new(common::binary())
        .args(args)
        .arg("--cfg")
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "slapos {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn api(server: &Server, token: &str, path: &str, body: Option<Value>) -> Value {
    let http = server.client(None);
    let request = match body {
        Some(b) => http.post(format!("{}{path}", server.url)).json(&b),
        None => http.get(format!("{}{path}", server.url)),
    };
    let r = request.bearer_auth(token).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn sum(records: &[Value], column: &str) -> i64 {
    records.iter().map(|r| r[column].as_i64().unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_load_is_metered_and_invoiced_to_the_cent() {
    let load = Duration::from_secs(
        std::env::var("SLAPOS_METERING_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120),
    );
    let server = &common::start_master_with_accounts(None);
    let root = server.dir.path().join("node");
    let release_dir = server.dir.path().join("burner");
    std::fs::create_dir_all(&release_dir).unwrap();
    std::fs::write(release_dir.join("software.toml"), BURNER).unwrap();
    let release = format!("file://{}/software.toml", release_dir.display());

    // The node, with its computer certificate.
    let (cert, _) = server.issue_certificate("computer", "COMP-E");
    let cfg = server.dir.path().join("node.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\ncomputer_id = COMP-E\nmaster_url = {url}\n\
             instance_root = {r}/instance\nsoftware_root = {r}/software\n\
             cert_file = {c}/cert.pem\nkey_file = {c}/key.pem\nmaster_ca_file = {c}/ca.pem\n\
             metering_interval = 1\nreport_interval = 5\n\
             [slapformat]\npartition_amount = 2\nalter_user = false\nalter_network = false\n\
             [slapos-node]\nport_base = {base}\npoll_interval = 1\npromise_timeout = 20\n",
            url = server.url,
            r = root.display(),
            c = cert.display(),
            base = common::e2e::free_port_range(20),
        ),
    )
    .unwrap();
    slapos(&cfg, &["node", "format"]);
    let mut node = Daemon::spawn(
        "node",
        &common::binary(),
        &["node", "run", "--cfg", cfg.to_str().unwrap()],
        server.dir.path(),
        server.dir.path(),
    );

    // Two users; Alice supplies the release, each requests a burner.
    let mut users = Vec::new();
    for (name, duty, memory_mb, disk_mb) in [("alice", "0.5", 64, 24), ("bob", "0.25", 32, 8)] {
        let token = server
            .master_command(&["user", "add", name])
            .unwrap()
            .trim()
            .to_string();
        users.push(User {
            name,
            token,
            duty,
            memory_mb,
            disk_mb,
            instance: 0,
            partition: String::new(),
        });
    }
    let http = server.client(None);
    let r = http
        .post(format!("{}/api/v1/computers/COMP-E/software", server.url))
        .bearer_auth(&users[0].token)
        .json(&json!({"url": release}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    for u in users.iter_mut() {
        let body = api(
            server,
            &u.token,
            "/api/v1/instances",
            Some(
                json!({"software_release": release, "title": format!("{}-load", u.name),
                        "parameters": {"duty": u.duty, "memory_mb": u.memory_mb.to_string(),
                                       "disk_mb": u.disk_mb.to_string()}}),
            ),
        )
        .await;
        u.instance = body["id"].as_i64().unwrap();
        u.partition = body["partition"]
            .as_str()
            .unwrap_or_else(|| panic!("allocated: {body}"))
            .to_string();
    }
    let partition_dir = |u: &User| -> PathBuf { root.join("instance").join(&u.partition) };
    for u in &users {
        wait_for(
            &format!("{}'s burner to run", u.name),
            Duration::from_secs(120),
            || (measure(&partition_dir(u)).processes > 0).then_some(()),
            || node.tail(40),
        );
    }

    // The load.
    let started = Instant::now();
    while started.elapsed() < load {
        std::thread::sleep(Duration::from_secs(1));
        assert!(node.alive(), "the node died:\n{}", node.tail(40));
    }

    // Stop the node; a final report sends what it measured since.
    let before: Vec<Measured> = users.iter().map(|u| measure(&partition_dir(u))).collect();
    let (_, in_time) = node.stop(Duration::from_secs(20));
    assert!(in_time, "the node stops on SIGTERM:\n{}", node.tail(40));
    slapos(&cfg, &["node", "report"]);
    let after: Vec<Measured> = users.iter().map(|u| measure(&partition_dir(u))).collect();
    let sizes: Vec<u64> = users.iter().map(|u| dir_size(&partition_dir(u))).collect();
    kill_processes_under(std::slice::from_ref(&root));

    // The ledger of each partition against /proc.
    let mut report = String::new();
    for (i, u) in users.iter().enumerate() {
        let records = api(
            server,
            &u.token,
            &format!("/api/v1/usage?instance={}&limit=100000", u.instance),
            None,
        )
        .await;
        let records = records.as_array().unwrap();
        assert!(records.len() > 3, "{} has records: {records:?}", u.name);
        for r in records {
            assert_eq!(r["partition_reference"], u.partition.as_str());
            assert_eq!(r["software_release"], release.as_str());
        }
        let cpu = sum(records, "cpu_micros") as f64 / 1e6;
        let running = sum(records, "running_seconds") as f64;
        let period: f64 = records
            .iter()
            .map(|r| {
                (r["period_end"].as_i64().unwrap() - r["period_start"].as_i64().unwrap()) as f64
                    / 1e6
            })
            .sum();
        let memory = sum(records, "memory_byte_seconds") as f64 / running.max(1.0);
        let disk = sum(records, "disk_byte_seconds") as f64 / period.max(1.0);
        let (b, a) = (before[i], after[i]);
        report.push_str(&format!(
            "{}: CPU ledger {cpu:.2} s, /proc {:.2}..{:.2} s; running ledger {running} s, age {:.1} s; \
             memory ledger {:.1} MB, RSS {:.1} MB; disk ledger {:.1} MB, size {:.1} MB\n",
            u.name,
            b.cpu_seconds,
            a.cpu_seconds,
            a.age_seconds,
            memory / 1e6,
            a.rss_bytes / 1e6,
            disk / 1e6,
            sizes[i] as f64 / 1e6,
        ));
        let cpu_tol = 0.03 * a.cpu_seconds + 1.5;
        assert!(
            cpu >= b.cpu_seconds - cpu_tol && cpu <= a.cpu_seconds + cpu_tol,
            "CPU of {}: {report}",
            u.name
        );
        assert!(
            (running - a.age_seconds).abs() <= 4.0 + 0.03 * a.age_seconds,
            "running time of {}: {report}",
            u.name
        );
        assert!(
            (memory - a.rss_bytes).abs() <= 0.15 * a.rss_bytes,
            "memory of {}: {report}",
            u.name
        );
        // The node walks a partition's directory at most every 30 s, so the
        // size before the burner wrote its file may count for up to 30 s.
        let size = sizes[i] as f64;
        let lower = 0.9 * size * (period - 35.0).max(0.0) / period.max(1.0);
        assert!(
            disk >= lower && disk <= 1.15 * size,
            "disk of {}: {report}",
            u.name
        );
    }
    eprintln!("{report}");
    let (alice_cpu, bob_cpu) = (after[0].cpu_seconds, after[1].cpu_seconds);
    assert!(
        alice_cpu > 1.4 * bob_cpu,
        "Alice burns twice Bob's share: {report}"
    );

    // The month's invoices: the price list applied to each user's ledger.
    let prices = server.dir.path().join("prices.toml");
    std::fs::write(&prices, PRICES).unwrap();
    server
        .master_command(&["price-list", "add", prices.to_str().unwrap()])
        .unwrap();
    let month = slapos_core::billing::Month::of_micros(slapos_core::now_micros()).to_string();
    let issued = server
        .master_command(&["invoice", "issue", "--period", &month])
        .unwrap();
    assert_eq!(issued.lines().count(), 2, "{issued}");
    for u in &users {
        let records = api(server, &u.token, "/api/v1/usage?limit=100000", None).await;
        let records = records.as_array().unwrap();
        let invoices = api(server, &u.token, "/api/v1/invoices", None).await;
        let invoices = invoices.as_array().unwrap();
        assert_eq!(invoices.len(), 1, "{invoices:?}");
        let number = invoices[0]["number"].as_str().unwrap();
        let invoice = api(
            server,
            &u.token,
            &format!("/api/v1/invoices/{number}"),
            None,
        )
        .await;
        let expected = total_cents(records, price_e4);
        assert!(expected > 0, "{} owes something", u.name);
        assert_eq!(
            cents(&invoice["total"]),
            expected,
            "{}'s invoice: {invoice}",
            u.name
        );
        for line in invoice["lines"].as_array().unwrap() {
            assert_eq!(line["tree_title"], format!("{}-load", u.name).as_str());
        }
        eprintln!("{}: invoice {number} {} EUR", u.name, invoice["total"]);
    }
}
