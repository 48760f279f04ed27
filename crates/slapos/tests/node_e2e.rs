//! End to end: the real `slapos` binary (`up`, `proxy start`, `master`,
//! `node format|run`) running real daemons (Redis and memcached from Debian
//! packages, Python's http.server), driven with the CLI as a user does.
//!
//! Every test keeps its state in its own temporary directory, kills what it
//! started when it ends (even when it fails), and checks that no process of
//! that directory survives. `slapos up` always gives its partitions the ports
//! from 20000, so the tests that use it run one at a time; the others run a
//! proxy and a node with their own port ranges.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::cluster::Doomed;
use common::e2e::*;
use serde_json::Value;

const INSTALL: Duration = Duration::from_secs(120);
const CONVERGE: Duration = Duration::from_secs(30);

// ----- shared steps ------------------------------------------------------------------

/// Runs a `slapos request` and expects it accepted (0: answered, 2: being provisioned).
fn request(cfg: &Path, args: &[&str]) -> String {
    let mut all = vec!["request"];
    all.extend_from_slice(args);
    let cfg_text = cfg.to_string_lossy();
    all.extend(["--cfg", &cfg_text]);
    let out = slapos_cli(&all);
    assert!(
        matches!(out.status.code(), Some(0) | Some(2)),
        "slapos {all:?} failed:\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn service_info(cfg: &Path, title: &str) -> Result<Value, String> {
    slapos_json(cfg, &["service", "info", title, "--json"])
}

fn computer_info(cfg: &Path, computer: &str) -> Value {
    slapos_json(cfg, &["computer", "info", computer, "--json"])
        .unwrap_or_else(|e| panic!("computer info {computer}: {e}"))
}

fn conn(info: &Value, key: &str) -> String {
    info["connection_parameters"][key]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until `title` is reported started with `keys` among its connection
/// parameters; fails at once if the instance is reported in error.
fn wait_published(
    cfg: &Path,
    title: &str,
    keys: &[&str],
    timeout: Duration,
    logs: impl Fn() -> String,
) -> Value {
    wait_for(
        &format!("{title} to be started and publish {keys:?}"),
        timeout,
        || {
            let info = service_info(cfg, title).ok()?;
            if info["reported_state"] == "error" {
                panic!(
                    "{title} is reported in error: {}\n{info:#}\n{}",
                    info["status_message"],
                    logs()
                );
            }
            let published = keys.iter().all(|k| {
                info["connection_parameters"][*k]
                    .as_str()
                    .is_some_and(|v| !v.is_empty())
            });
            (published && info["reported_state"] == "started").then_some(info)
        },
        || {
            format!(
                "{:#}\n{}",
                service_info(cfg, title).unwrap_or_default(),
                logs()
            )
        },
    )
}

fn partition_entry<'a>(computer: &'a Value, reference: &str) -> &'a Value {
    computer["partitions"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["reference"] == reference))
        .unwrap_or_else(|| panic!("no partition {reference} in {computer:#}"))
}

fn pids(procs: &[ProcInfo]) -> Vec<u32> {
    procs.iter().map(|p| p.pid).collect()
}

/// A temporary directory that partition users can traverse (`slapos up` as
/// root runs services as `slapuserN`, inside it).
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("slapos-e2e-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Polls until nothing runs under `dir` any more; returns what is left at the deadline.
fn survivors(dir: &Path, timeout: Duration) -> Vec<ProcInfo> {
    let mut left = Vec::new();
    poll_until(timeout, || {
        left = processes_under(dir);
        left.is_empty().then_some(())
    });
    left
}

// ----- `slapos up` -----------------------------------------------------------------------

static UP_LOCK: Mutex<()> = Mutex::new(());

/// `slapos up` gives partition N the ports 20000 + 10 N: one at a time.
fn up_lock() -> MutexGuard<'static, ()> {
    UP_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `slapos up` in the foreground, stopped when dropped; whatever it leaves
/// behind is killed.
struct Up {
    daemon: Option<Daemon>,
    cfg: PathBuf,
    port: u16,
    partitions: usize,
    dir: tempfile::TempDir,
}

impl Up {
    fn start(partitions: usize) -> Up {
        Up::start_in(data_dir(), partitions)
    }

    fn start_in(dir: tempfile::TempDir, partitions: usize) -> Up {
        let busy: Vec<u16> = (20000..20000 + 10 * partitions as u16)
            .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_err())
            .collect();
        assert!(
            busy.is_empty(),
            "ports {busy:?} are in use (another `slapos up`?): `slapos up` always gives its partitions ports from 20000"
        );
        let mut up = Up {
            cfg: dir.path().join("slapos.cfg"),
            daemon: None,
            port: common::free_port(),
            partitions,
            dir,
        };
        up.spawn();
        up
    }

    /// Starts `slapos up` on this data directory and waits until it serves.
    fn spawn(&mut self) {
        let data = self.dir.path().to_string_lossy().into_owned();
        self.daemon = Some(Daemon::spawn(
            "up",
            &common::binary(),
            &[
                "up",
                "--data-dir",
                &data,
                "--port",
                &self.port.to_string(),
                "--partitions",
                &self.partitions.to_string(),
                "--supply",
                "hello,memcached,redis",
            ],
            self.dir.path(),
            self.dir.path(),
        ));
        let master = format!("127.0.0.1:{}", self.port);
        wait_for(
            "slapos up to listen and register its partitions",
            Duration::from_secs(30),
            || {
                if !port_open(&master) || !self.cfg.exists() {
                    return None;
                }
                let info = slapos_json(&self.cfg, &["computer", "info", "local", "--json"]).ok()?;
                (info["computer"]["partitions_total"] == self.partitions).then_some(())
            },
            || self.logs(),
        );
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn partition_dir(&self, partition: &str) -> PathBuf {
        self.path().join("instance").join(partition)
    }

    fn logs(&self) -> String {
        self.daemon.as_ref().map(|d| d.tail(60)).unwrap_or_default()
    }

    /// Ctrl-C (SIGTERM): `slapos up` stops everything it started.
    fn shutdown_and_check(mut self) {
        let mut daemon = self.daemon.take().unwrap();
        let (status, in_time) = daemon.stop(Duration::from_secs(30));
        assert!(
            in_time,
            "slapos up did not stop within 30 s of SIGTERM\n{}",
            daemon.tail(40)
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "slapos up exited with {status:?}\n{}",
            daemon.tail(40)
        );
        let left = survivors(self.path(), Duration::from_secs(5));
        assert!(
            left.is_empty(),
            "processes survive `slapos up`: {left:#?}\n{}",
            daemon.tail(40)
        );
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let left = kill_processes_under(&[self.dir.path().to_path_buf()]);
        if !left.is_empty() {
            eprintln!("killed processes left by slapos up: {left:#?}");
        }
    }
}

// ----- a proxy and a node as separate processes ---------------------------------------------

/// `slapos proxy start` and `slapos node run` as two processes, with a
/// `slapos.cfg` like the one `slapos up` writes.
struct Cluster {
    node: Option<Daemon>,
    master: Option<Daemon>,
    cfg: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Proxy started, computer formatted and registered, `releases` supplied, node running.
    fn start(computer: &str, partitions: usize, releases: &[&str]) -> Cluster {
        let dir = data_dir();
        let cfg = dir.path().join("slapos.cfg");
        NodeCfg {
            host: "127.0.0.1",
            port: common::free_port(),
            database: &dir.path().join("proxy.db"),
            computer_id: computer,
            instance_root: &dir.path().join("instance"),
            software_root: &dir.path().join("software"),
            partitions,
            port_base: free_port_range(10 * partitions as u16),
        }
        .write(&cfg);
        let mut cluster = Cluster {
            node: None,
            master: None,
            cfg,
            dir,
        };
        cluster.start_master();
        let out = cluster.cli(&["node", "format"]);
        assert!(out.status.success(), "node format: {}", text(&out));
        for url in releases {
            let out = cluster.cli(&["supply", url, computer]);
            assert!(out.status.success(), "supply: {}", text(&out));
        }
        cluster.start_node();
        cluster
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        let cfg = self.cfg.to_string_lossy();
        all.extend(["--cfg", &cfg]);
        slapos_cli(&all)
    }

    fn master_addr(&self) -> String {
        let text = std::fs::read_to_string(&self.cfg).unwrap();
        let url = text
            .lines()
            .find_map(|l| l.strip_prefix("master_url = http://"))
            .unwrap()
            .to_string();
        url
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
        let addr = self.master_addr();
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

    fn partition_dir(&self, partition: &str) -> PathBuf {
        self.dir.path().join("instance").join(partition)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for d in [&self.master, &self.node].into_iter().flatten() {
            out.push_str(&d.tail(40));
        }
        out
    }

    /// Stops the node and the master; `slapos node run` leaves services
    /// running on purpose (a restarted node adopts them), so they are killed,
    /// and nothing of this directory may survive.
    fn shutdown_and_check(mut self) {
        for d in [self.node.take(), self.master.take()].into_iter().flatten() {
            let mut d = d;
            let (_, in_time) = d.stop(Duration::from_secs(15));
            assert!(
                in_time,
                "{} did not stop on SIGTERM\n{}",
                d.name,
                d.tail(30)
            );
        }
        kill_processes_under(&[self.dir.path().to_path_buf()]);
        let left = survivors(self.dir.path(), Duration::from_secs(5));
        assert!(left.is_empty(), "processes survive: {left:#?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.node.take());
        drop(self.master.take());
        kill_processes_under(&[self.dir.path().to_path_buf()]);
    }
}

// ----- 1. the redis life cycle under `slapos up` ---------------------------------------------------

/// `slapos up` → request redis → PING at the published address → parameters
/// changed → re-rendered → stopped → gone → started → back → destroyed →
/// partition free and empty.
#[test]
fn up_redis_request_change_stop_start_destroy() {
    let _serial = up_lock();
    let t0 = Instant::now();
    let up = Up::start(3);
    let cfg = up.cfg.clone();
    let logs = || up.logs();

    request(&cfg, &["r1", "redis"]);
    let info = wait_published(
        &cfg,
        "r1",
        &["host", "port", "password", "url"],
        INSTALL,
        logs,
    );
    let (host, port, password) = (
        conn(&info, "host"),
        conn(&info, "port"),
        conn(&info, "password"),
    );
    assert_eq!(
        conn(&info, "url"),
        format!("redis://:{password}@{host}:{port}/0"),
        "{info:#}"
    );
    assert!(password.len() >= 16, "a generated password: {password:?}");
    let addr = format!("{host}:{port}");
    let partition = info["partition"].as_str().expect("a partition").to_string();
    let pdir = up.partition_dir(&partition);

    // The published address answers, and only with the password.
    let mut anonymous = Resp::connect(&addr).expect("connect to the published address");
    match anonymous.cmd(&["PING"]).unwrap() {
        Reply::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
        other => panic!("PING without AUTH answered {other:?}"),
    }
    drop(anonymous);
    redis_ping(&addr, &password).unwrap();
    let mut r = redis_auth(&addr, &password).unwrap();
    assert_eq!(
        r.cmd(&["SET", "e2e:key", "kept"]).unwrap(),
        Reply::Simple("OK".into())
    );
    drop(r);
    let first = processes_in(&pdir);
    assert_eq!(
        first.len(),
        1,
        "one redis process in {}: {first:#?}",
        pdir.display()
    );
    let conf_path = pdir.join("etc/redis.conf");
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    assert!(conf.contains("\nmaxmemory 64mb\n"), "{conf}");

    // A parameter the release's schema refuses is refused by the master, naming it.
    let cfg_text = cfg.to_string_lossy().into_owned();
    let bad = slapos_cli(&[
        "request",
        "r1",
        "redis",
        "--parameters",
        "maxmemory=lots",
        "--cfg",
        &cfg_text,
    ]);
    assert!(
        !bad.status.success(),
        "maxmemory=lots accepted: {}",
        text(&bad)
    );
    assert!(
        text(&bad).contains("maxmemory"),
        "the error names the parameter: {}",
        text(&bad)
    );

    // Parameters changed → the instance is re-rendered.
    request(&cfg, &["r1", "redis", "--parameters", "maxmemory=32mb"]);
    wait_for(
        "etc/redis.conf to say maxmemory 32mb",
        CONVERGE,
        || {
            let conf = std::fs::read_to_string(&conf_path).ok()?;
            conf.contains("\nmaxmemory 32mb\n").then_some(())
        },
        || {
            format!(
                "{}\n{}",
                std::fs::read_to_string(&conf_path).unwrap_or_default(),
                logs()
            )
        },
    );
    let info = wait_published(&cfg, "r1", &["password"], CONVERGE, logs);
    assert_eq!(info["parameters"]["maxmemory"], "32mb", "{info:#}");
    assert_eq!(conn(&info, "password"), password, "the password is stable");
    // The changed file restarts the server: it answers again shortly.
    poll_until(Duration::from_secs(5), || redis_ping(&addr, &password).ok())
        .expect("redis answers after the restart for its new configuration");
    // What the running server does with the new file (see
    // `changed_redis_parameters_reach_the_running_server`).
    let running = redis_auth(&addr, &password)
        .ok()
        .and_then(|mut r| r.cmd(&["CONFIG", "GET", "maxmemory"]).ok());
    eprintln!(
        "after maxmemory=32mb: pids {:?} → {:?}, CONFIG GET maxmemory = {running:?}",
        pids(&first),
        pids(&processes_in(&pdir))
    );

    // Stopped: the process is gone and the port closed.
    request(
        &cfg,
        &[
            "r1",
            "redis",
            "--parameters",
            "maxmemory=32mb",
            "--state",
            "stopped",
        ],
    );
    wait_for(
        "redis to be stopped",
        CONVERGE,
        || {
            let info = service_info(&cfg, "r1").ok()?;
            (processes_in(&pdir).is_empty()
                && !port_open(&addr)
                && info["reported_state"] == "stopped")
                .then_some(())
        },
        || format!("{:#?}\n{}", processes_in(&pdir), logs()),
    );

    assert!(conf_path.exists(), "a stopped instance keeps its files");

    // Started again: back at the same address with the same password and data.
    request(
        &cfg,
        &[
            "r1",
            "redis",
            "--parameters",
            "maxmemory=32mb",
            "--state",
            "started",
        ],
    );
    wait_for(
        "redis to be back",
        CONVERGE,
        || redis_ping(&addr, &password).ok(),
        logs,
    );
    let mut r = redis_auth(&addr, &password).unwrap();
    assert_eq!(
        r.cmd(&["GET", "e2e:key"]).unwrap(),
        Reply::Bulk(Some("kept".into())),
        "data written before the stop survives it"
    );
    let mut running = None;
    poll_until(Duration::from_secs(5), || {
        r.cmd(&["CONFIG", "GET", "maxmemory"])
            .ok()
            .and_then(|reply| {
                running = Some(reply.clone());
                (reply
                    == Reply::Array(vec![
                        Reply::Bulk(Some("maxmemory".into())),
                        Reply::Bulk(Some("33554432".into())),
                    ]))
                .then_some(())
            })
    });
    assert_eq!(
        running,
        Some(Reply::Array(vec![
            Reply::Bulk(Some("maxmemory".into())),
            Reply::Bulk(Some("33554432".into()))
        ])),
        "a restarted server runs with the new parameters"
    );
    drop(r);
    let second = processes_in(&pdir);
    assert_eq!(second.len(), 1, "{second:#?}");
    assert_ne!(
        second[0].pid, first[0].pid,
        "a new process after stop/start"
    );

    // Destroyed: process gone, partition free on the master, directory
    // empty, nothing of its user left.
    let doomed = Doomed::new(std::slice::from_ref(&pdir), &[addr.as_str()]);
    request(
        &cfg,
        &[
            "r1",
            "redis",
            "--parameters",
            "maxmemory=32mb",
            "--state",
            "destroyed",
        ],
    );
    doomed.assert_gone(&cfg, "local", logs);
    let computer = computer_info(&cfg, "local");
    assert_eq!(computer["computer"]["partitions_free"], up.partitions);
    assert_eq!(partition_entry(&computer, &partition)["free"], true);
    up.shutdown_and_check();
    eprintln!(
        "up_redis_request_change_stop_start_destroy: {:?}",
        t0.elapsed()
    );
}

/// A changed parameter must reach the running server, not only its file.
#[test]
fn changed_redis_parameters_reach_the_running_server() {
    let _serial = up_lock();
    let t0 = Instant::now();
    let up = Up::start(1);
    let cfg = up.cfg.clone();
    let logs = || up.logs();
    request(&cfg, &["r1", "redis"]);
    let info = wait_published(&cfg, "r1", &["host", "port", "password"], INSTALL, logs);
    let addr = format!("{}:{}", conn(&info, "host"), conn(&info, "port"));
    let password = conn(&info, "password");
    let pdir = up.partition_dir(info["partition"].as_str().unwrap());
    let maxmemory = |addr: &str| -> Option<String> {
        match redis_auth(addr, &password)
            .ok()?
            .cmd(&["CONFIG", "GET", "maxmemory"])
            .ok()?
        {
            Reply::Array(items) => match items.get(1) {
                Some(Reply::Bulk(Some(v))) => Some(v.clone()),
                _ => None,
            },
            _ => None,
        }
    };
    assert_eq!(
        maxmemory(&addr).as_deref(),
        Some("67108864"),
        "64mb by default"
    );
    let before = pids(&processes_in(&pdir));

    request(&cfg, &["r1", "redis", "--parameters", "maxmemory=32mb"]);
    let conf_path = pdir.join("etc/redis.conf");
    wait_for(
        "etc/redis.conf to be re-rendered",
        CONVERGE,
        || {
            std::fs::read_to_string(&conf_path)
                .ok()?
                .contains("\nmaxmemory 32mb\n")
                .then_some(())
        },
        logs,
    );
    // The node has processed the change once the master shows the new
    // parameters reported started; give the server a few seconds more.
    wait_published(&cfg, "r1", &["password"], CONVERGE, logs);
    let mut seen = None;
    let applied = poll_until(Duration::from_secs(5), || {
        seen = maxmemory(&addr);
        (seen.as_deref() == Some("33554432")).then_some(())
    });
    let after = pids(&processes_in(&pdir));
    up.shutdown_and_check();
    assert!(
        applied.is_some(),
        "etc/redis.conf says maxmemory 32mb, but the running Redis still has maxmemory = {seen:?} \
         (pids before {before:?}, after {after:?}): a changed configuration file does not restart the service"
    );
    eprintln!(
        "changed_redis_parameters_reach_the_running_server: {:?}",
        t0.elapsed()
    );
}

/// Under `slapos up` as root, each partition's services run as that
/// partition's own user, with the partition as their home.
#[test]
fn up_services_run_as_their_partition_user() {
    if !is_root() {
        eprintln!("skipped: not root, services run as the node's user");
        return;
    }
    let _serial = up_lock();
    let t0 = Instant::now();
    let up = Up::start(2);
    let cfg = up.cfg.clone();
    let mut seen = Vec::new();
    for title in ["h1", "h2"] {
        request(&cfg, &[title, "hello"]);
        let info = wait_published(&cfg, title, &["url"], INSTALL, || up.logs());
        let pdir = up.partition_dir(info["partition"].as_str().unwrap());
        let procs = processes_in(&pdir);
        assert_eq!(procs.len(), 1, "{procs:#?}");
        let pid = procs[0].pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse().ok())
            .unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let home = String::from_utf8_lossy(&environ)
            .split('\0')
            .find_map(|v| v.strip_prefix("HOME=").map(str::to_string))
            .unwrap_or_default();
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(&pdir).unwrap().uid();
        seen.push((title, uid, owner, home, pdir));
    }
    up.shutdown_and_check();
    eprintln!("{seen:#?}");
    let mut problems = Vec::new();
    for (title, uid, owner, home, pdir) in &seen {
        if *uid == 0 || uid != owner {
            problems.push(format!(
                "{title} runs as uid {uid}, its partition belongs to {owner}"
            ));
        }
        if Path::new(home) != pdir.as_path() {
            problems.push(format!(
                "{title} runs with HOME={home}, not its partition {}",
                pdir.display()
            ));
        }
    }
    assert_ne!(seen[0].1, seen[1].1, "two partitions, two users");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!(
        "up_services_run_as_their_partition_user: {:?}",
        t0.elapsed()
    );
}

// ----- 2. kill -9 of a service ------------------------------------------------------------------

/// A service killed with SIGKILL is back within 2 s, answering (its promise,
/// the TCP port, green), and never twice.
#[test]
fn killed_service_is_back_within_two_seconds() {
    let t0 = Instant::now();
    let cluster = Cluster::start("COMP-KILL", 1, &[&catalog_url("redis")]);
    let cfg = cluster.cfg.clone();
    let logs = || cluster.logs();
    request(&cfg, &["r1", &catalog_url("redis")]);
    let info = wait_published(&cfg, "r1", &["host", "port", "password"], INSTALL, logs);
    let addr = format!("{}:{}", conn(&info, "host"), conn(&info, "port"));
    let password = conn(&info, "password");
    let pdir = cluster.partition_dir(info["partition"].as_str().unwrap());
    redis_ping(&addr, &password).unwrap();

    for round in 1..=3 {
        let before = processes_in(&pdir);
        assert_eq!(before.len(), 1, "round {round}: {before:#?}");
        let old = before[0].pid;
        assert!(signal(old, SIGKILL));
        let killed = Instant::now();
        let back = poll_until(Duration::from_secs(2), || {
            let now = processes_in(&pdir);
            (now.len() == 1
                && now[0].pid != old
                && port_open(&addr)
                && redis_ping(&addr, &password).is_ok())
            .then(|| now[0].pid)
        });
        let took = killed.elapsed();
        assert!(
            back.is_some(),
            "round {round}: redis not back within 2 s of kill -9 (processes {:#?})\n{}",
            processes_in(&pdir),
            logs()
        );
        eprintln!(
            "round {round}: pid {old} killed, {} answering after {took:?}",
            back.unwrap()
        );
    }
    let log = pdir.join("var/log/redis.log");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.matches("Ready to accept connections").count() >= 4,
        "each start of the service is logged in {}: {log_text}",
        log.display()
    );
    // No duplicate appears later either, and the master still sees it started.
    hold_for(Duration::from_millis(500), || {
        let now = processes_in(&pdir);
        assert_eq!(now.len(), 1, "{now:#?}");
    });
    let info = service_info(&cfg, "r1").unwrap();
    assert_eq!(info["reported_state"], "started", "{info:#}");
    cluster.shutdown_and_check();
    eprintln!(
        "killed_service_is_back_within_two_seconds: {:?}",
        t0.elapsed()
    );
}

// ----- 3. kill -9 of the node -----------------------------------------------------------------------

/// The node killed with SIGKILL leaves its services running; the restarted
/// node adopts them: same pids, no duplicates, and it deploys new requests.
#[test]
fn restarted_node_adopts_its_services() {
    let t0 = Instant::now();
    let hello = catalog_url("hello");
    let mut cluster = Cluster::start("COMP-NODE", 3, &[&hello]);
    let cfg = cluster.cfg.clone();
    request(&cfg, &["h1", &hello]);
    request(&cfg, &["h2", &hello, "--parameters", "greeting=Bonjour"]);
    let mut urls = BTreeMap::new();
    let mut partitions = BTreeMap::new();
    for (title, page) in [("h1", "Hello from h1\n"), ("h2", "Bonjour from h2\n")] {
        let info = wait_published(&cfg, title, &["url"], INSTALL, || cluster.logs());
        let url = conn(&info, "url");
        assert_eq!(
            http_get(&url),
            Ok((200, page.to_string())),
            "{title} at {url}"
        );
        urls.insert(title, url);
        partitions.insert(title, info["partition"].as_str().unwrap().to_string());
    }
    let services = |cluster: &Cluster| -> BTreeMap<&str, Vec<u32>> {
        partitions
            .iter()
            .map(|(t, p)| (*t, pids(&processes_in(&cluster.partition_dir(p)))))
            .collect()
    };
    let before = services(&cluster);
    assert!(
        before.values().all(|p| p.len() == 1),
        "one process each: {before:?}"
    );

    cluster.node.as_mut().unwrap().kill9();
    for (title, url) in &urls {
        assert!(
            http_get(url).is_ok_and(|(s, _)| s == 200),
            "{title} serves without its node"
        );
    }
    assert_eq!(services(&cluster), before, "services survive the node");

    cluster.start_node();
    let node_log = || {
        cluster
            .node
            .as_ref()
            .map(|d| strip_ansi(&d.log_text()))
            .unwrap_or_default()
    };
    wait_for(
        "the new node to adopt both services",
        CONVERGE,
        || (node_log().matches("adopted running service").count() >= 2).then_some(()),
        || cluster.logs(),
    );
    // A new request is deployed: the new node has made a full pass.
    request(&cfg, &["h3", &hello]);
    let info = wait_published(&cfg, "h3", &["url"], CONVERGE, || cluster.logs());
    assert_eq!(
        http_get(&conn(&info, "url")),
        Ok((200, "Hello from h3\n".into()))
    );
    let after = services(&cluster);
    assert_eq!(after, before, "the same processes after the node's restart");
    let all: Vec<ProcInfo> = processes_under(&cluster.dir.path().join("instance"))
        .into_iter()
        .filter(|p| p.cmdline.contains("http.server"))
        .collect();
    assert_eq!(
        all.len(),
        3,
        "one http.server per instance, no duplicates: {all:#?}"
    );
    for (title, url) in &urls {
        assert!(
            http_get(url).is_ok_and(|(s, _)| s == 200),
            "{title} still serves"
        );
    }
    for p in partitions.values() {
        assert!(
            !node_log().contains(&format!("started partition=\"{p}\"")),
            "the restarted node started nothing in {p}:\n{}",
            node_log()
        );
    }
    cluster.shutdown_and_check();
    eprintln!("restarted_node_adopts_its_services: {:?}", t0.elapsed());
}

/// The same with `slapos up`, where the node runs inside the up process:
/// killed with SIGKILL and started again on the same data directory, it
/// adopts the services it left running.
#[test]
fn up_killed_and_restarted_adopts_its_services() {
    let _serial = up_lock();
    let t0 = Instant::now();
    let mut up = Up::start(2);
    let cfg = up.cfg.clone();
    request(&cfg, &["r1", "redis"]);
    let info = wait_published(&cfg, "r1", &["host", "port", "password"], INSTALL, || {
        up.logs()
    });
    let addr = format!("{}:{}", conn(&info, "host"), conn(&info, "port"));
    let password = conn(&info, "password");
    let pdir = up.partition_dir(info["partition"].as_str().unwrap());
    let before = pids(&processes_in(&pdir));
    assert_eq!(before.len(), 1, "{before:?}");

    up.daemon.as_mut().unwrap().kill9();
    redis_ping(&addr, &password).expect("redis serves without slapos up");
    up.spawn();
    let log = || {
        up.daemon
            .as_ref()
            .map(|d| strip_ansi(&d.log_text()))
            .unwrap_or_default()
    };
    wait_for(
        "the restarted node to adopt redis",
        CONVERGE,
        || log().contains("adopted running service").then_some(()),
        || up.logs(),
    );
    request(&cfg, &["h1", "hello"]);
    let info = wait_published(&cfg, "h1", &["url"], CONVERGE, || up.logs());
    assert_eq!(
        http_get(&conn(&info, "url")),
        Ok((200, "Hello from h1\n".into()))
    );
    assert_eq!(
        pids(&processes_in(&pdir)),
        before,
        "the same redis process, no duplicate"
    );
    redis_ping(&addr, &password).unwrap();
    let info = service_info(&cfg, "r1").unwrap();
    assert_eq!(info["reported_state"], "started", "{info:#}");
    up.shutdown_and_check();
    eprintln!(
        "up_killed_and_restarted_adopts_its_services: {:?}",
        t0.elapsed()
    );
}

// ----- 4. the master stopped --------------------------------------------------------------------------

/// Without its master the node keeps its instances serving, restarts them
/// from its own records after its own restart, and reconnects when the
/// master is back.
#[test]
fn instances_keep_serving_while_the_master_is_down() {
    let t0 = Instant::now();
    let hello = catalog_url("hello");
    let mut cluster = Cluster::start("COMP-OFF", 2, &[&hello]);
    let cfg = cluster.cfg.clone();
    request(&cfg, &["h1", &hello]);
    let info = wait_published(&cfg, "h1", &["url"], INSTALL, || cluster.logs());
    let url = conn(&info, "url");
    let pdir = cluster.partition_dir(info["partition"].as_str().unwrap());
    assert_eq!(http_get(&url), Ok((200, "Hello from h1\n".into())));

    // SIGTERM, then SIGKILL after 3 s: while the node long-polls its watch
    // the proxy takes up to 25 s to exit (see
    // `master_stops_promptly_while_a_node_watches`); stopped either way.
    let mut master = cluster.master.take().unwrap();
    let (_, in_time) = master.stop(Duration::from_secs(3));
    if !in_time {
        eprintln!("the proxy did not exit within 3 s of SIGTERM: killed");
    }
    let master_addr = cluster.master_addr();
    assert!(!port_open(&master_addr));

    // The node notices, survives, and the instance keeps serving.
    let node_log = |c: &Cluster| {
        c.node
            .as_ref()
            .map(|d| strip_ansi(&d.log_text()))
            .unwrap_or_default()
    };
    wait_for(
        "the node to notice that its master is unreachable",
        Duration::from_secs(40),
        || node_log(&cluster).contains("unreachable").then_some(()),
        || cluster.logs(),
    );
    hold_for(Duration::from_secs(3), || {
        assert_eq!(
            http_get(&url),
            Ok((200, "Hello from h1\n".into())),
            "served while the master is down"
        );
        assert!(
            cluster.node.as_mut().unwrap().alive(),
            "the node keeps running\n{}",
            cluster.logs()
        );
    });

    // A reboot without master: node and service killed; the node restarts
    // the service from its own records.
    cluster.node.as_mut().unwrap().kill9();
    let old = pids(&processes_in(&pdir));
    assert_eq!(old.len(), 1);
    signal(old[0], SIGKILL);
    wait_for(
        "the killed service to be gone",
        Duration::from_secs(5),
        || processes_in(&pdir).is_empty().then_some(()),
        String::new,
    );
    cluster.start_node();
    let restored = wait_for(
        "the service to be back from the node's own records, master down",
        CONVERGE,
        || {
            let now = pids(&processes_in(&pdir));
            (now.len() == 1 && now != old && http_get(&url).is_ok_and(|(s, _)| s == 200))
                .then_some(now)
        },
        || cluster.logs(),
    );

    // Master back: the node reconnects and deploys a new request.
    cluster.start_master();
    request(&cfg, &["h2", &hello, "--parameters", "greeting=Back"]);
    let info = wait_published(&cfg, "h2", &["url"], CONVERGE, || cluster.logs());
    assert_eq!(
        http_get(&conn(&info, "url")),
        Ok((200, "Back from h2\n".into()))
    );
    assert_eq!(pids(&processes_in(&pdir)), restored, "h1 untouched");
    assert_eq!(http_get(&url), Ok((200, "Hello from h1\n".into())));
    let info = service_info(&cfg, "h1").unwrap();
    assert_eq!(info["reported_state"], "started", "{info:#}");
    cluster.shutdown_and_check();
    eprintln!(
        "instances_keep_serving_while_the_master_is_down: {:?}",
        t0.elapsed()
    );
}

/// `slapos proxy start` stops promptly on SIGTERM even while its node is
/// long-polling the watch (an idle node always is).
#[test]
fn master_stops_promptly_while_a_node_watches() {
    let t0 = Instant::now();
    let mut cluster = Cluster::start("COMP-STOP", 1, &[]);
    let addr = cluster.master_addr();
    let watch = format!("http://{addr}/api/v1/computers/COMP-STOP/watch");
    let version = wait_for(
        "the node's first contact and the computer's version",
        CONVERGE,
        || {
            let c = computer_info(&cluster.cfg, "COMP-STOP");
            if c["computer"]["last_contact"].is_null() {
                return None;
            }
            let (status, body) = http_get(&watch).ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (status == 200).then(|| v["version"].as_str().map(str::to_string))?
        },
        || cluster.logs(),
    );
    // A watch of our own too, so that one is surely in flight.
    let pending = format!("{watch}?since={version}&timeout=60");
    let watcher = std::thread::spawn(move || http_get(&pending));
    wait_for(
        "our watch to be in flight",
        Duration::from_secs(5),
        || {
            run(
                "ss",
                &[
                    "-tn",
                    "state",
                    "established",
                    &format!("( dport = :{} )", addr.rsplit(':').next().unwrap()),
                ],
            )
            // Without `ss`, go on: the node's own watch is most likely in flight.
            .map_or(Some(()), |out| (out.lines().count() >= 2).then_some(()))
        },
        String::new,
    );
    let mut master = cluster.master.take().unwrap();
    let asked = Instant::now();
    let (_, in_time) = master.stop(Duration::from_secs(5));
    let took = asked.elapsed();
    let _ = watcher.join();
    let log = master.tail(10);
    cluster.shutdown_and_check();
    assert!(
        in_time,
        "the proxy was still running {took:?} after SIGTERM (killed then): graceful shutdown waits for the \
         watch long polls in flight (up to their 25-60 s timeout)\n{log}"
    );
    eprintln!(
        "master_stops_promptly_while_a_node_watches: {:?}",
        t0.elapsed()
    );
}

// ----- 5. two nodes in two network namespaces ------------------------------------------------------

fn netns_unavailable() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    if let Err(e) = run("ip", &["netns", "list"]) {
        return Some(format!("`ip netns` unavailable: {e}"));
    }
    if run("curl", &["--version"]).is_err() {
        return Some("curl is not installed".into());
    }
    None
}

/// `curl` inside a namespace: (HTTP status, body), or None if nothing answers.
fn curl_in(ns: &str, url: &str) -> Option<(u16, String)> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-m",
            "3",
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

/// Two nodes, each in its own network namespace, register with one master
/// (`slapos master` on the host side of their veth links) and get the
/// instances placed on them by `computer_guid`; each instance runs in its
/// node's namespace.
#[test]
fn two_nodes_in_network_namespaces_get_instances_by_computer_guid() {
    if let Some(reason) = netns_unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let t0 = Instant::now();
    let tag = std::process::id() % 100_000;
    // A /16 of 10.200-249.x.x that this host does not use yet.
    let used = run("ip", &["-4", "addr"]).unwrap_or_default();
    let octet = (0..50)
        .map(|i| 200 + (tag + i) % 50)
        .find(|o| !used.contains(&format!("inet 10.{o}.")))
        .expect("a free 10.x network");
    let net = |third: u32, host: u32| format!("10.{octet}.{third}.{host}");
    let mut netns = Netns::default();
    let (ns_a, ns_b) = (format!("e2e{tag}a"), format!("e2e{tag}b"));
    let setup = netns
        .add(
            &ns_a,
            &format!("e2e{tag}ha"),
            &format!("e2e{tag}na"),
            &net(0, 1),
            &net(0, 2),
        )
        .and_then(|_| {
            netns.add(
                &ns_b,
                &format!("e2e{tag}hb"),
                &format!("e2e{tag}nb"),
                &net(1, 1),
                &net(1, 2),
            )
        });
    if let Err(e) = setup {
        eprintln!("skipped: cannot set up network namespaces: {e}");
        return;
    }

    let dir = data_dir();
    let _sweep = Sweep(vec![dir.path().to_path_buf()]);
    let master_host = net(0, 1);
    let port = common::free_port();
    let db = dir.path().join("master.db");
    let hello = catalog_url("hello");
    let node_cfg = |computer: &str, sub: &str, port_base: u16| -> PathBuf {
        let root = dir.path().join(sub);
        std::fs::create_dir_all(&root).unwrap();
        let cfg = root.join("slapos.cfg");
        NodeCfg {
            host: &master_host,
            port,
            database: &db,
            computer_id: computer,
            instance_root: &root.join("instance"),
            software_root: &root.join("software"),
            partitions: 2,
            port_base,
        }
        .write(&cfg);
        cfg
    };
    // Different port ranges, so that an instance answering in the wrong
    // namespace could not be mistaken for the right one.
    let cfg_a = node_cfg("COMP-A", "a", free_port_range(20));
    let cfg_b = node_cfg("COMP-B", "b", free_port_range(20));
    let bin = common::binary();
    let cfg_a_text = cfg_a.to_string_lossy().into_owned();
    let cfg_b_text = cfg_b.to_string_lossy().into_owned();

    let master = Daemon::spawn(
        "master",
        &bin,
        &["master", "--cfg", &cfg_a_text],
        dir.path(),
        dir.path(),
    );
    let master_addr = format!("{master_host}:{port}");
    wait_for(
        "the master to listen on the host side",
        Duration::from_secs(20),
        || port_open(&master_addr).then_some(()),
        || master.tail(20),
    );
    let mut nodes = Vec::new();
    for (ns, cfg, computer) in [
        (&ns_a, &cfg_a_text, "COMP-A"),
        (&ns_b, &cfg_b_text, "COMP-B"),
    ] {
        let out = Netns::command(ns, &bin)
            .args(["node", "format", "--cfg", cfg])
            .output()
            .unwrap();
        assert!(out.status.success(), "node format in {ns}: {}", text(&out));
        let out = slapos_cli(&["supply", &hello, computer, "--cfg", &cfg_a_text]);
        assert!(out.status.success(), "{}", text(&out));
        nodes.push(Daemon::spawn_with(
            &format!("node-{computer}"),
            Netns::command(ns, &bin),
            &["node", "run", "--cfg", cfg],
            dir.path(),
            dir.path(),
        ));
    }
    let logs = || {
        let mut s = master.tail(20);
        for n in &nodes {
            s.push_str(&n.tail(30));
        }
        s
    };

    request(&cfg_a, &["a", &hello, "--node", "computer_guid=COMP-A"]);
    request(
        &cfg_a,
        &[
            "b",
            &hello,
            "--node",
            "computer_guid=COMP-B",
            "--parameters",
            "greeting=Hej",
        ],
    );
    let info_a = wait_published(&cfg_a, "a", &["url"], INSTALL, logs);
    let info_b = wait_published(&cfg_a, "b", &["url"], INSTALL, logs);
    assert_eq!(info_a["computer"], "COMP-A", "{info_a:#}");
    assert_eq!(info_b["computer"], "COMP-B", "{info_b:#}");
    let (url_a, url_b) = (conn(&info_a, "url"), conn(&info_b, "url"));

    // Each answers in its own namespace, and only there.
    assert_eq!(
        curl_in(&ns_a, &url_a),
        Some((200, "Hello from a\n".into())),
        "a in {ns_a}"
    );
    assert_eq!(
        curl_in(&ns_b, &url_b),
        Some((200, "Hej from b\n".into())),
        "b in {ns_b}"
    );
    assert_eq!(curl_in(&ns_b, &url_a), None, "a does not run in {ns_b}");
    assert_eq!(curl_in(&ns_a, &url_b), None, "b does not run in {ns_a}");
    assert!(
        http_get(&url_a).is_err() && http_get(&url_b).is_err(),
        "neither runs on the host"
    );
    // And its service's process is in the namespace of its node.
    let netns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    for (info, node) in [(&info_a, &nodes[0]), (&info_b, &nodes[1])] {
        let root = if info["computer"] == "COMP-A" {
            "a"
        } else {
            "b"
        };
        let pdir = dir
            .path()
            .join(root)
            .join("instance")
            .join(info["partition"].as_str().unwrap());
        let procs = processes_in(&pdir);
        assert_eq!(procs.len(), 1, "{procs:#?}");
        assert_eq!(
            netns_of(procs[0].pid),
            netns_of(node.pid()),
            "same namespace as its node"
        );
        assert_ne!(
            netns_of(procs[0].pid),
            netns_of(std::process::id()),
            "not the host's"
        );
    }

    // The master shows the right partition busy on each computer.
    for (computer, title, info) in [("COMP-A", "a", &info_a), ("COMP-B", "b", &info_b)] {
        let c = computer_info(&cfg_a, computer);
        let p = partition_entry(&c, info["partition"].as_str().unwrap());
        assert_eq!(p["free"], false, "{c:#}");
        assert_eq!(p["instance_title"], title, "{c:#}");
        assert_eq!(c["computer"]["partitions_free"], 1, "{c:#}");
    }

    for mut n in nodes {
        n.stop(Duration::from_secs(15));
    }
    drop(master);
    kill_processes_under(&[dir.path().to_path_buf()]);
    let left = survivors(dir.path(), Duration::from_secs(5));
    assert!(left.is_empty(), "{left:#?}");
    eprintln!(
        "two_nodes_in_network_namespaces_get_instances_by_computer_guid: {:?}",
        t0.elapsed()
    );
}

// ----- 6. bad releases ---------------------------------------------------------------------------

/// Bad manifests, unreachable URLs, checksum mismatches and failing builds
/// end in `error` on the master with a message naming the cause, and never
/// in a release marked installed; a good release next to them is unaffected.
#[test]
fn bad_releases_end_in_error_with_a_readable_message() {
    let t0 = Instant::now();
    let releases = data_dir();
    let dead_port = common::free_port();
    let manifest = |name: &str, body: &str| -> String {
        let dir = releases.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("software.toml"),
            format!("name = \"{name}\"\n{body}"),
        )
        .unwrap();
        format!("file://{}/software.toml", dir.display())
    };
    std::fs::create_dir_all(releases.path().join("checksum")).unwrap();
    let payload = releases.path().join("checksum/payload.txt");
    std::fs::write(&payload, "the payload\n").unwrap();
    let actual_sha = sha256_hex_of_file(&payload);
    let wrong_sha = "0123456789abcdef".repeat(4);
    // (url, what the error message must mention)
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "checksum mismatch",
            manifest(
                "checksum",
                &format!("[install]\n[[install.fetch]]\nurl = \"payload.txt\"\nsha256 = \"{wrong_sha}\"\npath = \"payload.txt\"\n[type.default]\n"),
            ),
            vec![wrong_sha.clone(), actual_sha.clone()],
        ),
        (
            "failing build",
            manifest(
                "build",
                "[install]\nbuild = [\"echo e2e-marker-$((6 * 7)) >&2; exit 3\"]\n[type.default]\n",
            ),
            vec!["build command 1".into(), "exited with status 3".into(), "e2e-marker-42".into()],
        ),
        (
            "unreachable manifest",
            format!("http://127.0.0.1:{dead_port}/nowhere/software.toml"),
            vec![format!("127.0.0.1:{dead_port}")],
        ),
        (
            "unreachable fetch",
            manifest(
                "fetch",
                &format!("[install]\n[[install.fetch]]\nurl = \"http://127.0.0.1:{dead_port}/blob.tar.gz\"\nsha256 = \"{wrong_sha}\"\npath = \"blob\"\n[type.default]\n"),
            ),
            vec![format!("127.0.0.1:{dead_port}/blob.tar.gz")],
        ),
        (
            "misspelled key",
            manifest("typo", "[instal]\nbuild = [\"true\"]\n[type.default]\n"),
            vec!["instal".into()],
        ),
        (
            "unknown Debian package",
            manifest("nodeb", "[install]\ndebian = [\"e2e-no-such-package\"]\n[type.default]\n"),
            vec!["e2e-no-such-package".into()],
        ),
    ];
    let hello = catalog_url("hello");
    let mut supplied: Vec<&str> = cases.iter().map(|(_, u, _)| u.as_str()).collect();
    supplied.push(&hello);
    let cluster = Cluster::start("COMP-BAD", 1, &supplied);
    let cfg = cluster.cfg.clone();
    let software = |c: &Value, url: &str| -> Value {
        c["software"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["url"] == url).cloned())
            .unwrap_or(Value::Null)
    };
    let computer = wait_for(
        "every bad release to be reported in error, and hello available",
        INSTALL,
        || {
            let c = computer_info(&cfg, "COMP-BAD");
            let done = cases
                .iter()
                .all(|(_, url, _)| software(&c, url)["reported_state"] == "error")
                && software(&c, &hello)["reported_state"] == "available";
            done.then_some(c)
        },
        || {
            format!(
                "{:#}\n{}",
                computer_info(&cfg, "COMP-BAD")["software"],
                cluster.logs()
            )
        },
    );
    let software_root = cluster.dir.path().join("software");
    let mut failures = Vec::new();
    for (what, url, needles) in &cases {
        let s = software(&computer, url);
        let log = s["error_log"].as_str().unwrap_or_default();
        for needle in needles {
            if !log.contains(needle.as_str()) {
                failures.push(format!(
                    "{what}: the error does not mention {needle:?}: {log:?}"
                ));
            }
        }
        eprintln!("{what}: {}", log.lines().next().unwrap_or_default());
        let release = software_root.join(md5_hex(url));
        if release.join(".completed").exists() {
            failures.push(format!("{what}: {} has .completed", release.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // hello installs and deploys next to them.
    assert!(software_root
        .join(md5_hex(&hello))
        .join(".completed")
        .exists());
    request(&cfg, &["h1", &hello]);
    let info = wait_published(&cfg, "h1", &["url"], CONVERGE, || cluster.logs());
    assert_eq!(
        http_get(&conn(&info, "url")),
        Ok((200, "Hello from h1\n".into()))
    );
    cluster.shutdown_and_check();
    eprintln!(
        "bad_releases_end_in_error_with_a_readable_message: {:?}",
        t0.elapsed()
    );
}

// ----- 7. the catalog -------------------------------------------------------------------------------

/// `slapos catalog list --json` names hello, redis and memcached with
/// `file://` URLs under the data directory and their software types; `slapos
/// up` supplies exactly those, and the names are aliases in `slapos request`.
#[test]
fn catalog_list_and_aliases_under_up() {
    let _serial = up_lock();
    let t0 = Instant::now();
    let dir = data_dir();
    let data = dir.path().to_string_lossy().into_owned();
    let out = slapos_cli(&["catalog", "list", "--json", "--data-dir", &data]);
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let entries = list.as_array().expect("a list");
    let mut urls = BTreeMap::new();
    for entry in entries {
        let name = entry["name"].as_str().expect("a name").to_string();
        let url = entry["url"].as_str().expect("a URL").to_string();
        assert_eq!(
            url,
            format!("file://{data}/catalog/{name}/software.toml"),
            "{entry:#}"
        );
        let types: Vec<&str> = entry["software_types"]
            .as_array()
            .expect("software types")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(types.contains(&"default"), "{entry:#}");
        urls.insert(name, url);
    }
    let names: BTreeSet<&str> = urls.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = slapos_catalog::RELEASES.iter().map(|r| r.name).collect();
    assert_eq!(names, expected, "{list:#}");
    // The text form lists them too.
    let out = slapos_cli(&["catalog", "list", "--data-dir", &data]);
    let plain = String::from_utf8_lossy(&out.stdout);
    for (name, url) in &urls {
        assert!(
            plain.contains(name.as_str()) && plain.contains(url.as_str()),
            "{plain}"
        );
    }

    let up = Up::start_in(dir, 3);
    let cfg = up.cfg.clone();
    // Each listed URL exists once `slapos up` has materialised the catalog,
    // and is what it supplies.
    for url in urls.values() {
        assert!(
            Path::new(url.strip_prefix("file://").unwrap()).exists(),
            "{url}"
        );
    }
    let supplied: BTreeSet<String> = computer_info(&cfg, "local")["software"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["url"].as_str().map(str::to_string))
        .collect();
    // The tests' `slapos up` supplies only these three (`--supply`).
    let wanted: BTreeSet<String> = ["hello", "memcached", "redis"]
        .iter()
        .map(|n| urls[*n].clone())
        .collect();
    assert_eq!(supplied, wanted);

    // Names as aliases.
    request(&cfg, &["h1", "hello", "--parameters", "greeting=Salut"]);
    let info = wait_published(&cfg, "h1", &["url"], INSTALL, || up.logs());
    assert_eq!(info["software_release"], urls["hello"].as_str(), "{info:#}");
    assert_eq!(
        http_get(&conn(&info, "url")),
        Ok((200, "Salut from h1\n".into()))
    );
    request(&cfg, &["c1", "memcached"]);
    let info = service_info(&cfg, "c1").unwrap();
    assert_eq!(
        info["software_release"],
        urls["memcached"].as_str(),
        "{info:#}"
    );
    request(&cfg, &["c1", "memcached", "--state", "destroyed"]);
    let out = slapos_cli(&[
        "request",
        "r1",
        "redis",
        "--state",
        "stopped",
        "--cfg",
        &cfg.to_string_lossy(),
    ]);
    assert!(
        out.status.code().is_some_and(|c| c == 0 || c == 2),
        "{}",
        text(&out)
    );
    let info = service_info(&cfg, "r1").unwrap();
    assert_eq!(info["software_release"], urls["redis"].as_str(), "{info:#}");
    up.shutdown_and_check();
    eprintln!("catalog_list_and_aliases_under_up: {:?}", t0.elapsed());
}

/// memcached from the catalog serves the text protocol at its published address.
#[test]
fn up_memcached_serves_the_text_protocol_stop_start_destroy() {
    let _serial = up_lock();
    let t0 = Instant::now();
    let up = Up::start(1);
    let cfg = up.cfg.clone();
    request(&cfg, &["m1", "memcached", "--parameters", "memory=16"]);
    let info = wait_published(&cfg, "m1", &["host", "port", "url"], INSTALL, || up.logs());
    let addr = format!("{}:{}", conn(&info, "host"), conn(&info, "port"));
    assert_eq!(conn(&info, "url"), format!("memcached://{addr}"));
    assert_eq!(
        memcached_exchange(&addr, "set e2e 0 0 5\r\nhello\r\n").unwrap(),
        "STORED\r\n"
    );
    assert_eq!(
        memcached_exchange(&addr, "get e2e\r\n").unwrap(),
        "VALUE e2e 0 5\r\nhello\r\nEND\r\n"
    );
    let stats = memcached_exchange(&addr, "stats\r\n").unwrap();
    assert!(
        stats.contains("STAT limit_maxbytes 16777216\r\n"),
        "memory=16 applied: {stats}"
    );

    // Stopped: no process, port closed. Started: serves again (memcached
    // keeps nothing: a cache starts empty).
    let pdir = up.partition_dir(info["partition"].as_str().unwrap());
    let params = ["--parameters", "memory=16"];
    request(
        &cfg,
        &[&["m1", "memcached", "--state", "stopped"][..], &params].concat(),
    );
    wait_for(
        "memcached to be stopped",
        CONVERGE,
        || {
            let info = service_info(&cfg, "m1").ok()?;
            (processes_under(&pdir).is_empty()
                && !port_open(&addr)
                && info["reported_state"] == "stopped")
                .then_some(())
        },
        || format!("{:#?}\n{}", processes_under(&pdir), up.logs()),
    );
    request(
        &cfg,
        &[&["m1", "memcached", "--state", "started"][..], &params].concat(),
    );
    let again = wait_for(
        "memcached to serve again",
        CONVERGE,
        || memcached_exchange(&addr, "set again 0 0 2\r\nok\r\n").ok(),
        || up.logs(),
    );
    assert_eq!(again, "STORED\r\n");

    // Destroyed: nothing of the partition left.
    let doomed = Doomed::new(std::slice::from_ref(&pdir), &[addr.as_str()]);
    request(
        &cfg,
        &[&["m1", "memcached", "--state", "destroyed"][..], &params].concat(),
    );
    doomed.assert_gone(&cfg, "local", || up.logs());
    up.shutdown_and_check();
    eprintln!(
        "up_memcached_serves_the_text_protocol_stop_start_destroy: {:?}",
        t0.elapsed()
    );
}

/// A release whose instance requests a child (and uses the child's
/// connection parameters in its own files) and hosts shared instances:
/// the tree deploys, a shared request gets its own page, and destroying the
/// root frees every partition.
#[test]
fn instance_tree_and_shared_instances() {
    let hello = catalog_url("hello");
    let releases = tempfile::tempdir().unwrap();
    let site_path = releases.path().join("site.toml");
    std::fs::write(
        &site_path,
        format!(
            r#"name = "site"
[type.default]
ports = ["http"]
directories = ["srv/www"]
[[type.default.children]]
title = "backend"
software = "{hello}"
parameters = {{ greeting = "Backend of {{{{ instance_title }}}}" }}
[[type.default.files]]
path = "srv/www/index.html"
template = "front of {{{{ children.backend.url if children.backend.url is defined else 'pending' }}}}\n"
[[type.default.services]]
name = "http"
command = ["/usr/bin/python3", "-m", "http.server", "{{{{ ports.http }}}}", "--bind", "{{{{ ipv4 }}}}", "--directory", "{{{{ partition }}}}/srv/www"]
[[type.default.promises]]
name = "http"
http = "http://{{{{ ipv4 }}}}:{{{{ ports.http }}}}/"
[type.default.connection]
url = "http://{{{{ ipv4 }}}}:{{{{ ports.http }}}}/"
backend = "{{{{ children.backend.url if children.backend.url is defined else '' }}}}"
[type.default.shared]
parameters = {{ type = "object", required = ["path"], properties = {{ path = {{ type = "string", pattern = "^[a-z]+\\.html$" }} }} }}
[type.default.shared.connection]
site = "http://{{{{ ipv4 }}}}:{{{{ ports.http }}}}/{{{{ shared.parameters.path }}}}"
[[type.default.shared.files]]
path = "srv/www/{{{{ shared.parameters.path }}}}"
template = "shared site {{{{ shared.reference }}}}\n"
"#
        ),
    )
    .unwrap();
    let site = format!("file://{}", site_path.display());
    let cluster = Cluster::start("COMP-TREE", 4, &[&hello, &site]);
    let cfg = cluster.cfg.clone();

    request(&cfg, &["s1", &site]);
    let info = wait_published(&cfg, "s1", &["url", "backend"], INSTALL, || cluster.logs());
    let backend = conn(&info, "backend");
    assert_eq!(
        http_get(&backend),
        Ok((200, "Backend of s1 from backend\n".into()))
    );
    // The parent's page was re-rendered with its child's URL.
    let front = conn(&info, "url");
    wait_for(
        "the parent's page to show its child's URL",
        CONVERGE,
        || (http_get(&front).ok()? == (200, format!("front of {backend}\n"))).then_some(()),
        || cluster.logs(),
    );
    let children = info["children"].as_array().cloned().unwrap_or_default();
    assert_eq!(children.len(), 1, "{info:#}");
    assert_eq!(children[0]["title"], "backend");

    // A shared instance hosted by s1, with a bad then a good parameter.
    let bad = cluster.cli(&[
        "request",
        "shop",
        &site,
        "--slave",
        "--parameters",
        "path=../x",
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("path"), "{}", text(&bad));
    request(
        &cfg,
        &["shop", &site, "--slave", "--parameters", "path=shop.html"],
    );
    let shared = wait_for(
        "the shared instance's connection parameters",
        CONVERGE,
        || {
            let info = service_info(&cfg, "shop").ok()?;
            let url = conn(&info, "site");
            (!url.is_empty()).then_some(url)
        },
        || cluster.logs(),
    );
    assert_eq!(http_get(&shared), Ok((200, "shared site _shop\n".into())));

    // Destroying the root takes its child with it; every partition ends free.
    request(&cfg, &["s1", &site, "--state", "destroyed"]);
    wait_for(
        "every partition to be free",
        CONVERGE,
        || (computer_info(&cfg, "COMP-TREE")["computer"]["partitions_free"] == 4).then_some(()),
        || cluster.logs(),
    );
    assert!(
        http_get(&front).is_err() && http_get(&backend).is_err(),
        "no service left"
    );
    cluster.shutdown_and_check();
}
