//! Metering end to end: the real `slapos` binary (proxy, `node run`,
//! `node report`) measures a partition that burns CPU and holds memory, and
//! the master's usage ledger is compared with what /proc says the
//! processes consumed. Also: reports kept across a dead master and a killed
//! node are recorded once, resent reports add nothing, malformed journals
//! are refused.
//!
//! Tolerance: the ledger's CPU equals the processes' utime+stime (+ reaped
//! children) read from /proc just before and just after the last report,
//! within 5 % + 2 s; memory byte-seconds are RSS × running time within
//! 25 %; running time is the time the service ran within 3 s + 10 %.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::e2e::*;
use serde_json::Value;
use slapos_store::usage::{usage_records, UsageFilter, UsageRecord};

const INSTALL: Duration = Duration::from_secs(120);

/// A release whose service burns CPU in children it spawns and reaps, and
/// whose other service holds 64 MiB.
const BURN: &str = r#"name = "burn"
version = "1"
[type.default]
directories = ["srv"]
[[type.default.files]]
path = "srv/data.txt"
mode = "0644"
template = "some data on disk\n"
[[type.default.services]]
name = "burn"
command = ["/bin/sh", "-c", "while :; do /bin/sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'; done"]
[[type.default.services]]
name = "hold"
command = ["/usr/bin/python3", "-c", "import time\nb = b'x' * (64 << 20)\ntime.sleep(10 ** 6)"]
[type.default.connection]
ok = "yes"
"#;

struct Metered {
    node: Option<Daemon>,
    master: Option<Daemon>,
    cfg: PathBuf,
    computer: String,
    dir: tempfile::TempDir,
    _sweep: Sweep,
}

impl Metered {
    fn start(computer: &str, report_interval: u64) -> Metered {
        Metered::start_with(computer, report_interval, None, BURN)
    }

    /// `user_base`: partitions get Unix users of that base (as root).
    fn start_with(
        computer: &str,
        report_interval: u64,
        user_base: Option<&str>,
        release: &str,
    ) -> Metered {
        let dir = tempfile::Builder::new()
            .prefix("slapos-meter-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = dir.path().join("slapos.cfg");
        NodeCfg {
            host: "127.0.0.1",
            port: common::free_port(),
            database: &dir.path().join("proxy.db"),
            computer_id: computer,
            instance_root: &dir.path().join("instance"),
            software_root: &dir.path().join("software"),
            partitions: 2,
            port_base: free_port_range(20),
        }
        .write(&cfg);
        let mut cfg_text = std::fs::read_to_string(&cfg).unwrap().replacen(
            "[slapos]\n",
            &format!("[slapos]\nmetering_interval = 1\nreport_interval = {report_interval}\n"),
            1,
        );
        if let Some(base) = user_base {
            cfg_text = cfg_text.replacen(
                "alter_user = false\n",
                &format!("alter_user = true\nuser_base_name = {base}\n"),
                1,
            );
        }
        std::fs::write(&cfg, cfg_text).unwrap();
        let release_text = release;
        let release = dir.path().join("release");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join("software.toml"), release_text).unwrap();
        let sweep = Sweep(vec![dir.path().join("instance")]);
        let mut m = Metered {
            node: None,
            master: None,
            cfg,
            computer: computer.to_string(),
            dir,
            _sweep: sweep,
        };
        m.start_master();
        let out = m.cli(&["node", "format"]);
        assert!(out.status.success(), "node format: {}", text(&out));
        let url = m.release_url();
        let out = m.cli(&["supply", &url, computer]);
        assert!(out.status.success(), "supply: {}", text(&out));
        m.start_node();
        m
    }

    fn release_url(&self) -> String {
        format!("file://{}/release/software.toml", self.dir.path().display())
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        let cfg = self.cfg.to_string_lossy();
        all.extend(["--cfg", &cfg]);
        slapos_cli(&all)
    }

    fn master_url(&self) -> String {
        std::fs::read_to_string(&self.cfg)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("master_url = "))
            .unwrap()
            .to_string()
    }

    fn start_master(&mut self) {
        let cfg = self.cfg.to_string_lossy().into_owned();
        let daemon = Daemon::spawn(
            "proxy",
            &common::binary(),
            &["proxy", "start", "--cfg", &cfg],
            self.dir.path(),
            self.dir.path(),
        );
        let addr = self.master_url().trim_start_matches("http://").to_string();
        wait_for(
            "the proxy to listen",
            Duration::from_secs(20),
            || port_open(&addr).then_some(()),
            || daemon.tail(30),
        );
        self.master = Some(daemon);
    }

    fn start_node(&mut self) {
        let cfg = self.cfg.to_string_lossy().into_owned();
        self.node = Some(Daemon::spawn(
            "node",
            &common::binary(),
            &["node", "run", "--cfg", &cfg],
            self.dir.path(),
            self.dir.path(),
        ));
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for d in [&self.master, &self.node].into_iter().flatten() {
            out.push_str(&d.tail(40));
        }
        out
    }

    /// Requests the burning instance and waits until it runs; returns its partition directory.
    fn burn(&self, title: &str) -> PathBuf {
        self.burn_with(title, 2)
    }

    /// The same, waiting for `processes` processes in the partition.
    fn burn_with(&self, title: &str, processes: usize) -> PathBuf {
        let url = self.release_url();
        let out = self.cli(&["request", title, &url]);
        assert!(
            matches!(out.status.code(), Some(0) | Some(2)),
            "request: {}",
            text(&out)
        );
        let info = wait_for(
            "the burning instance to start",
            INSTALL,
            || {
                let info = slapos_json(&self.cfg, &["service", "info", title, "--json"]).ok()?;
                (info["reported_state"] == "started"
                    && info["connection_parameters"]["ok"] == "yes")
                    .then_some(info)
            },
            || self.logs(),
        );
        let pdir = self
            .dir
            .path()
            .join("instance")
            .join(info["partition"].as_str().unwrap());
        wait_for(
            "the services to run",
            Duration::from_secs(20),
            || (processes_in(&pdir).len() >= processes).then_some(()),
            || self.logs(),
        );
        pdir
    }

    fn ledger(&self) -> Vec<UsageRecord> {
        let db = self.dir.path().join("proxy.db");
        let store = slapos_store::Store::open(
            &db.to_string_lossy(),
            &slapos_store::StoreOptions::default(),
        )
        .expect("open the ledger");
        store
            .read_blocking(|db| {
                usage_records(
                    db,
                    slapos_store::queries::Scope::All,
                    &UsageFilter::default(),
                )
            })
            .expect("read the ledger")
    }

    fn journal(&self) -> Value {
        let path = self
            .dir
            .path()
            .join("instance/.slapos-metering/journal.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|_| "{}".into()))
            .unwrap()
    }

    fn stop(&mut self) {
        for d in [self.node.take(), self.master.take()].into_iter().flatten() {
            let mut d = d;
            d.stop(Duration::from_secs(10));
        }
    }
}

/// (utime+stime+cutime+cstime in seconds, RSS bytes) of the processes in `pdir`.
fn proc_usage(pdir: &Path) -> (f64, u64) {
    let tps = 100.0; // CLK_TCK on Linux
    let mut cpu = 0u64;
    let mut rss = 0u64;
    for p in processes_in(pdir) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        cpu += f[11] + f[12] + f[13] + f[14];
        rss += f[21] * 4096;
    }
    (cpu as f64 / tps, rss)
}

fn cpu_seconds(records: &[UsageRecord]) -> f64 {
    records.iter().map(|r| r.cpu_micros).sum::<i64>() as f64 / 1e6
}

/// Runs `slapos node report` with the daemon stopped, between two reads of
/// /proc; returns (cpu before, cpu after, rss) of each partition directory.
fn final_report(m: &mut Metered, pdirs: &[&Path]) -> Vec<(f64, f64, u64)> {
    let mut node = m.node.take().unwrap();
    node.stop(Duration::from_secs(10));
    let before: Vec<(f64, u64)> = pdirs.iter().map(|p| proc_usage(p)).collect();
    let out = m.cli(&["node", "report"]);
    let after: Vec<(f64, u64)> = pdirs.iter().map(|p| proc_usage(p)).collect();
    assert!(out.status.success(), "node report: {}", text(&out));
    eprintln!("{}", text(&out));
    before
        .iter()
        .zip(&after)
        .map(|(b, a)| (b.0, a.0, b.1))
        .collect()
}

/// One partition's records against what /proc said (see the tolerances above).
fn check_partition(
    m: &Metered,
    mine: &[UsageRecord],
    before: f64,
    after: f64,
    rss: u64,
    elapsed: f64,
) {
    assert!(mine.len() >= 4, "several reports: {mine:#?}");
    check_cpu(cpu_seconds(mine), before, after);
    assert!(after > 3.0, "the service burned CPU: {after}");
    // Attributed to the instance.
    assert!(
        mine.iter().all(|r| r.instance_id.is_some()
            && r.software_release.as_deref() == Some(m.release_url().as_str())),
        "{mine:#?}"
    );
    // Periods follow each other without gap or overlap.
    let mut sorted = mine.to_vec();
    sorted.sort_by_key(|r| r.period_start);
    for w in sorted.windows(2) {
        assert_eq!(w[0].period_end, w[1].period_start, "{sorted:#?}");
    }
    let running: i64 = mine.iter().map(|r| r.running_seconds).sum();
    let memory: i64 = mine.iter().map(|r| r.memory_byte_seconds).sum();
    let expected = rss as f64 * running as f64;
    eprintln!(
        "running: ledger {running} s, observed ≥ {elapsed:.1} s; memory: ledger {memory} byte-s, \
         RSS now {rss} B × running = {expected:.0} byte-s ({:+.1} %)",
        (memory as f64 / expected - 1.0) * 100.0
    );
    assert!(
        (running as f64) >= elapsed - 3.0 && (running as f64) <= elapsed * 1.1 + 10.0,
        "running {running} s for about {elapsed:.1} s"
    );
    assert!(
        (memory as f64 - expected).abs() <= 0.25 * expected,
        "memory {memory} byte-s, expected about {expected:.0}"
    );
    let disk: i64 = mine.iter().map(|r| r.disk_byte_seconds).sum();
    assert!(disk > 0, "the partition's files were counted: {mine:#?}");
}

fn check_cpu(ledger: f64, before: f64, after: f64) {
    let tolerance = 0.05 * after + 2.0;
    eprintln!(
        "CPU: ledger {ledger:.2} s, /proc {before:.2}..{after:.2} s (tolerance {tolerance:.2} s)"
    );
    assert!(
        ledger >= before - tolerance && ledger <= after + tolerance,
        "ledger CPU {ledger:.2} s vs /proc {before:.2}..{after:.2} s"
    );
}

async fn post_form(url: &str, fields: &[(&str, &str)]) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .form(fields)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// (a) + (c): two instances burn for ~20 s, metered every second and
/// reported every 3 s; each partition's ledger matches its own processes.
#[test]
fn ledger_matches_what_the_processes_consumed() {
    let t0 = Instant::now();
    let mut m = Metered::start("COMP-METER", 3);
    let pdir = m.burn("burner");
    let pdir2 = m.burn("burner-2");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let measured = final_report(&mut m, &[&pdir, &pdir2]);
    let elapsed = started.elapsed().as_secs_f64();
    let ledger = m.ledger();
    let mut mine = Vec::new();
    for (dir, (before, after, rss)) in [&pdir, &pdir2].into_iter().zip(measured) {
        let partition = dir.file_name().unwrap().to_string_lossy().into_owned();
        let records: Vec<UsageRecord> = ledger
            .iter()
            .filter(|r| r.partition_reference == partition)
            .cloned()
            .collect();
        eprintln!("{partition}:");
        check_partition(&m, &records, before, after, rss, elapsed);
        mine.push((partition, records));
    }
    assert_ne!(mine[0].1[0].instance_id, mine[1].1[0].instance_id);
    let (partition, mine) = mine.swap_remove(0);

    // (c) A resent report adds nothing; a malformed journal changes nothing.
    let base = m.master_url();
    let rows = mine.len();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let report = serde_json::json!({
            "report_id": "e2e-resent",
            "records": [{"partition": partition, "period_start": 1_000_000,
                "period_end": 2_000_000, "cpu_micros": 5, "memory_byte_seconds": 6,
                "disk_byte_seconds": 7, "running_seconds": 1}]
        });
        let url = format!("{base}/api/v1/computers/{}/usage", m.computer);
        let (status, first) = post_json(&url, &report).await;
        assert_eq!((status, &first["recorded"]), (200, &Value::from(1)), "{first}");
        let (status, again) = post_json(&url, &report).await;
        assert_eq!(status, 200);
        assert_eq!(again["recorded"], 0, "{again}");
        assert_eq!(again["already_recorded"], 1, "{again}");

        let journal = format!(
            "<?xml version='1.0' encoding='utf-8'?><journal report_id=\"e2e-xml\">\
             <transaction type=\"Sale Packing List\"><title>Resource consumptions</title>\
             <reference>{partition}</reference><period start=\"3000000\" end=\"4000000\"/>\
             <usage cpu_micros=\"11\" memory_byte_seconds=\"12\" disk_byte_seconds=\"13\" running_seconds=\"1\"/>\
             </transaction></journal>"
        );
        let legacy = format!("{base}/useComputer");
        let fields = [("computer_id", m.computer.as_str()), ("use_string", &journal)];
        assert_eq!(post_form(&legacy, &fields).await.0, 200);
        assert_eq!(post_form(&legacy, &fields).await.0, 200);
        // The reference's journal (no report id): idempotent by its body.
        let reference = format!(
            "<?xml version='1.0' encoding='utf-8'?><journal><transaction type=\"Sale Packing List\">\
             <title>Resource consumptions</title><start_date>100</start_date><stop_date>160</stop_date>\
             <reference>{partition}</reference><movement><resource>CPU Consumption</resource>\
             <quantity>42.0</quantity></movement></transaction></journal>"
        );
        let fields = [("computer_id", m.computer.as_str()), ("use_string", &reference)];
        assert_eq!(post_form(&legacy, &fields).await.0, 200);
        assert_eq!(post_form(&legacy, &fields).await.0, 200);
        for bad in [
            "<journal><transaction>".to_string(),
            "<!DOCTYPE j [<!ENTITY x \"y\">]><journal/>".to_string(),
            format!("<journal><transaction><reference>{partition}</reference><usage cpu_micros=\"-1\"/></transaction></journal>"),
        ] {
            let fields = [("computer_id", m.computer.as_str()), ("use_string", bad.as_str())];
            let (status, body) = post_form(&legacy, &fields).await;
            assert_eq!(status, 400, "{bad}: {body}");
        }
        let (status, _) = post_json(&url, &serde_json::json!({"records": "nope"})).await;
        assert_eq!(status, 400);
    });
    let after_rows = m.ledger();
    let added: Vec<&UsageRecord> = after_rows
        .iter()
        .filter(|r| r.partition_reference == partition)
        .skip(rows)
        .collect();
    let ids: Vec<&str> = added.iter().map(|r| r.report_id.as_str()).collect();
    assert_eq!(added.len(), 3, "one row per distinct report: {ids:?}");
    assert_eq!(added[0].cpu_micros, 5);
    assert_eq!(added[1].cpu_micros, 11);
    assert_eq!(added[2].cpu_micros, 42_000_000);
    assert!(added[2].report_id.starts_with("tioxml-"));
    m.stop();
    eprintln!(
        "ledger_matches_what_the_processes_consumed: {:?}",
        t0.elapsed()
    );
}

/// (b) The master is down while reports are due, then the node is killed
/// with SIGKILL: once both are back, every pending report is recorded once
/// and the ledger's CPU still matches /proc.
#[test]
fn reports_survive_a_dead_master_and_a_killed_node() {
    let t0 = Instant::now();
    let mut m = Metered::start("COMP-KILL", 2);
    let pdir = m.burn("burner");
    std::thread::sleep(Duration::from_secs(6));
    let mut master = m.master.take().unwrap();
    master.kill9();
    drop(master);
    // Reports pile up while the master is away.
    wait_for(
        "pending reports while the master is down",
        Duration::from_secs(30),
        || {
            let pending = m.journal()["pending"].as_array().map_or(0, Vec::len);
            (pending >= 3).then_some(())
        },
        || format!("{:#}\n{}", m.journal(), m.logs()),
    );
    m.node.as_mut().unwrap().kill9();
    let pending_at_kill = m.journal()["pending"].as_array().map_or(0, Vec::len);
    eprintln!("pending when the node was killed: {pending_at_kill}");
    // The node comes back first (reports still fail), then the master.
    m.start_node();
    std::thread::sleep(Duration::from_secs(3));
    m.start_master();
    wait_for(
        "the pending reports to be sent",
        Duration::from_secs(40),
        || {
            let pending = m.journal()["pending"].as_array().map_or(0, Vec::len);
            (pending == 0).then_some(())
        },
        || format!("{:#}\n{}", m.journal(), m.logs()),
    );
    std::thread::sleep(Duration::from_secs(3));
    let (before, after, _) = final_report(&mut m, &[&pdir])[0];
    let journal = m.journal();
    assert_eq!(journal["pending"].as_array().map_or(0, Vec::len), 0);
    let created = journal["reports_created"].as_u64().unwrap();
    let ledger = m.ledger();
    let ids: BTreeSet<&str> = ledger.iter().map(|r| r.report_id.as_str()).collect();
    eprintln!(
        "reports created {created}, distinct report ids in the ledger {}, rows {}",
        ids.len(),
        ledger.len()
    );
    assert_eq!(
        ids.len() as u64,
        created,
        "every report recorded exactly once"
    );
    check_cpu(cpu_seconds(&ledger), before, after);
    m.stop();
    eprintln!(
        "reports_survive_a_dead_master_and_a_killed_node: {:?}",
        t0.elapsed()
    );
}

/// A master without the JSON usage route (the reference proxy answers 404
/// with an HTML page): the node's client falls back to `useComputer`, and
/// the TioXML it sends reads back as the same report.
#[tokio::test]
async fn reports_fall_back_to_use_computer_for_the_reference() {
    use slapos_client::node::UsageSent;
    use slapos_proto::usage::{InstanceRef, UsageEntry, UsageReport};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers two requests; hands back (path, body) of each.
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let (head_end, length) = loop {
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed early");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    break (i + 4, length);
                }
            };
            while buf.len() < head_end + length {
                let n = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let path = head.split_whitespace().nth(1).unwrap().to_string();
            let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
            let answer = if path.starts_with("/api/") {
                "HTTP/1.1 404 NOT FOUND\r\nContent-Type: text/html\r\nContent-Length: 22\r\nConnection: close\r\n\r\n<h1>Not Found</h1>\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 7\r\nConnection: close\r\n\r\nIgnored"
            };
            sock.write_all(answer.as_bytes()).await.unwrap();
            seen.push((path, body));
        }
        seen
    });
    let report = UsageReport {
        report_id: Some("0b6c3c9e-1d2f-4a3b-8c4d-5e6f7a8b9c0d".into()),
        records: vec![UsageEntry {
            partition: "slappart1".into(),
            report_id: None,
            instance: Some(InstanceRef {
                guid: Some("COMP-REF-slappart1".into()),
                title: Some("my instance".into()),
                root_title: Some("my instance".into()),
            }),
            period_start: 1_764_800_000_000_000,
            period_end: 1_764_803_600_000_000,
            cpu_micros: 12_345_678,
            memory_byte_seconds: 3600 << 26,
            disk_byte_seconds: 3600 << 30,
            running_seconds: 3600,
        }],
    };
    let client = slapos_client::SlapClient::new(&format!("http://{addr}")).unwrap();
    let sent = client.send_usage("COMP-REF", &report).await.unwrap();
    assert_eq!(sent, UsageSent::Legacy);
    let seen = server.await.unwrap();
    assert_eq!(seen[0].0, "/api/v1/computers/COMP-REF/usage");
    assert_eq!(seen[1].0, "/useComputer");
    let fields: std::collections::BTreeMap<String, String> =
        form_urlencoded_pairs(&seen[1].1).into_iter().collect();
    assert_eq!(fields["computer_id"], "COMP-REF");
    let back = UsageReport::from_tioxml(&fields["use_string"]).unwrap();
    assert_eq!(back.report_id, report.report_id);
    assert_eq!(back.records[0].cpu_micros, 12_345_678);
    assert_eq!(back.records[0].instance, report.records[0].instance);
    assert!(fields["use_string"].contains("<resource>CPU Consumption</resource>"));
}

/// `application/x-www-form-urlencoded` pairs (no extra dependency).
fn form_urlencoded_pairs(body: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// A service that starts a CPU burner in a session of its own (as daemons
/// do with setsid), which the partition's session does not hold.
const ESCAPE: &str = r#"name = "escape"
version = "1"
[type.default]
[[type.default.services]]
name = "main"
command = ["/bin/sh", "-c", "/usr/bin/setsid -f /bin/sh -c 'while :; do :; done'; exec sleep 1000000"]
[type.default.connection]
ok = "yes"
"#;

/// With a Unix user per partition, what its services start outside their
/// sessions (setsid) still counts for the partition.
#[test]
fn processes_outside_the_session_count_for_the_partition_user() {
    if !is_root() {
        eprintln!("skipped: partition users need root");
        return;
    }
    let t0 = Instant::now();
    let mut m = Metered::start_with("COMP-ESC", 3, Some("mtrusr"), ESCAPE);
    let pdir = m.burn_with("escaper", 2);
    let uid = common::cluster::partition_uid(&pdir).expect("the partition has its own user");
    // The burner is in a session of its own, not the service's.
    let sessions: BTreeSet<String> = processes_in(&pdir)
        .iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).ok()?;
            Some(
                stat[stat.rfind(')')? + 2..]
                    .split_whitespace()
                    .nth(3)?
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(sessions.len(), 2, "two sessions: {sessions:?}");
    std::thread::sleep(Duration::from_secs(10));
    let (before, after, _) = final_report(&mut m, &[&pdir])[0];
    let partition = pdir.file_name().unwrap().to_string_lossy().into_owned();
    let ledger: Vec<UsageRecord> = m
        .ledger()
        .into_iter()
        .filter(|r| r.partition_reference == partition)
        .collect();
    eprintln!("partition user {uid}");
    check_cpu(cpu_seconds(&ledger), before, after);
    assert!(after > 3.0, "the escaped burner used CPU: {after}");
    m.stop();
    eprintln!(
        "processes_outside_the_session_count_for_the_partition_user: {:?}",
        t0.elapsed()
    );
}
