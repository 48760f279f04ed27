//! End-to-end tests of the catalog's data releases (PostgreSQL, ZEO, the
//! persistent memcached-protocol store), each through a proxy, `slapos node
//! format` (partition users created: the node is root) and `slapos node
//! run`, talked to with the real client of each.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::e2e::*;
use serde_json::Value;

const INSTALL: Duration = Duration::from_secs(150);
const CONVERGE: Duration = Duration::from_secs(40);

/// A proxy, a formatted computer and a running node in a temp dir.
struct Cluster {
    node: Option<Daemon>,
    master: Option<Daemon>,
    cfg: PathBuf,
    computer: String,
    partitions: usize,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(computer: &str, user_base: &str, partitions: usize, releases: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("slapos-catalog-")
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
            partitions,
            port_base: free_port_range(10 * partitions as u16),
        }
        .write(&cfg);
        // Services run as the partitions' own users when the node is root.
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "alter_user = false",
            &format!("alter_user = true\nuser_base_name = {user_base}"),
        );
        std::fs::write(&cfg, text).unwrap();
        let mut c = Cluster {
            node: None,
            master: None,
            cfg,
            computer: computer.to_string(),
            partitions,
            dir,
        };
        let cfg_s = c.cfg.to_string_lossy().into_owned();
        let master = Daemon::spawn(
            "proxy",
            &common::binary(),
            &["proxy", "start", "--cfg", &cfg_s],
            c.dir.path(),
            c.dir.path(),
        );
        let text = std::fs::read_to_string(&c.cfg).unwrap();
        let addr = text
            .lines()
            .find_map(|l| l.strip_prefix("master_url = http://"))
            .unwrap()
            .to_string();
        wait_for(
            "the proxy to listen",
            Duration::from_secs(20),
            || port_open(&addr).then_some(()),
            || master.tail(30),
        );
        c.master = Some(master);
        let out = c.cli(&["node", "format"]);
        assert!(out.status.success(), "node format: {}", text_of(&out));
        for url in releases {
            let out = c.cli(&["supply", url, computer]);
            assert!(out.status.success(), "supply: {}", text_of(&out));
        }
        c.node = Some(Daemon::spawn(
            "node",
            &common::binary(),
            &["node", "run", "--cfg", &cfg_s],
            c.dir.path(),
            c.dir.path(),
        ));
        c
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        let cfg = self.cfg.to_string_lossy();
        all.extend(["--cfg", &cfg]);
        slapos_cli(&all)
    }

    /// `slapos request` expecting success (0, or 2: not ready yet).
    fn request(&self, args: &[&str]) {
        let mut all = vec!["request"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            matches!(out.status.code(), Some(0) | Some(2)),
            "slapos {all:?}:\n{}",
            text_of(&out)
        );
    }

    fn info(&self, title: &str) -> Result<Value, String> {
        slapos_json(&self.cfg, &["service", "info", title, "--json"])
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for d in [&self.master, &self.node].into_iter().flatten() {
            out.push_str(&d.tail(40));
        }
        out
    }

    fn partition_dir(&self, info: &Value) -> PathBuf {
        self.dir
            .path()
            .join("instance")
            .join(info["partition"].as_str().expect("partition"))
    }

    /// Waits until `title` is started and has published `keys`.
    fn published(&self, title: &str, keys: &[&str], timeout: Duration) -> Value {
        wait_for(
            &format!("{title} to be started and publish {keys:?}"),
            timeout,
            || {
                let info = self.info(title).ok()?;
                if info["reported_state"] == "error" {
                    panic!("{title} in error: {info:#}\n{}", self.logs());
                }
                let ok = keys.iter().all(|k| {
                    info["connection_parameters"][*k]
                        .as_str()
                        .is_some_and(|v| !v.is_empty())
                });
                (ok && info["reported_state"] == "started").then_some(info)
            },
            || {
                format!(
                    "{:#}\n{}",
                    self.info(title).unwrap_or_default(),
                    self.logs()
                )
            },
        )
    }

    /// Requests the state `stopped` and waits until no process is left and
    /// `addr` is closed.
    fn stop(&self, title: &str, url: &str, params: &[&str], pdir: &Path, addr: &str) {
        self.request(&[&[title, url, "--state", "stopped"], params].concat());
        wait_for(
            &format!("{title} to be stopped"),
            CONVERGE,
            || {
                let info = self.info(title).ok()?;
                (processes_in(pdir).is_empty()
                    && !port_open(addr)
                    && info["reported_state"] == "stopped")
                    .then_some(())
            },
            || format!("{:#?}\n{}", processes_in(pdir), self.logs()),
        );
    }

    fn start_again(&self, title: &str, url: &str, params: &[&str]) {
        self.request(&[&[title, url, "--state", "started"], params].concat());
    }

    /// Destroys `title`: its partition is freed and emptied, nothing runs.
    fn destroy(&self, title: &str, url: &str, params: &[&str], pdir: &Path, addr: &str) {
        self.request(&[&[title, url, "--state", "destroyed"], params].concat());
        let partition = pdir.file_name().unwrap().to_string_lossy().into_owned();
        let computer_info = || {
            slapos_json(&self.cfg, &["computer", "info", &self.computer, "--json"])
                .unwrap_or_default()
        };
        wait_for(
            "the partition to be freed and emptied",
            CONVERGE,
            || {
                let c = computer_info();
                let entry = c["partitions"]
                    .as_array()?
                    .iter()
                    .find(|p| p["reference"] == partition.as_str())?
                    .clone();
                let freed =
                    c["computer"]["partitions_free"] == self.partitions && entry["free"] == true;
                let empty = std::fs::read_dir(pdir)
                    .map(|d| d.count() == 0)
                    .unwrap_or(true);
                (freed && empty && processes_under(pdir).is_empty()).then_some(())
            },
            || {
                format!(
                    "{:#}\n{:#?}\n{}",
                    computer_info(),
                    processes_under(pdir),
                    self.logs()
                )
            },
        );
        assert!(!port_open(addr), "nothing listens on {addr} any more");
    }

    /// Stops node and proxy, then checks that nothing of the cluster runs.
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
        let left = poll_until(Duration::from_secs(5), || {
            processes_under(self.dir.path()).is_empty().then_some(())
        });
        assert!(
            left.is_some(),
            "processes survive: {:#?}",
            processes_under(self.dir.path())
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.node.take());
        drop(self.master.take());
        kill_processes_under(&[self.dir.path().to_path_buf()]);
    }
}

fn text_of(out: &std::process::Output) -> String {
    text(out)
}

fn conn(info: &Value, key: &str) -> String {
    info["connection_parameters"][key]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The Unix user a partition's process runs as (from /proc).
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

fn assert_not_root(pdir: &Path) {
    let procs = processes_in(pdir);
    assert!(!procs.is_empty(), "no process in {}", pdir.display());
    for p in procs {
        assert_ne!(uid_of(p.pid), 0, "runs as root: {p:#?}");
    }
}

/// Runs a program to completion: Ok(stdout) on exit 0.
fn run_client(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?}: {}", text(&out)))
    }
}

// ----- PostgreSQL ---------------------------------------------------------------------

fn psql(url: &str, sql: &str) -> Result<String, String> {
    run_client(
        Command::new("psql")
            .args([url, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env_remove("PGPASSWORD")
            .env_remove("PGHOST")
            .env_remove("PGPORT"),
    )
}

#[test]
fn postgresql_psql_data_survives_stop_start_then_destroy() {
    let t0 = Instant::now();
    let url = catalog_url("postgresql");
    let cluster = Cluster::start("COMP-PG", "cdpg", 1, &[&url]);

    // A parameter the schema refuses is refused at request time, named.
    let bad = cluster.cli(&["request", "pg1", &url, "--parameters", "database=Bad-Name"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("database"),
        "names the parameter: {}",
        text(&bad)
    );

    let params = ["--parameters", "database=shop", "user=owner"];
    cluster.request(&[&["pg1", url.as_str()][..], &params].concat());
    let info = cluster.published("pg1", &["url", "password"], INSTALL);
    let pg_url = conn(&info, "url");
    let (host, port, password) = (
        conn(&info, "host"),
        conn(&info, "port"),
        conn(&info, "password"),
    );
    assert_eq!(
        pg_url,
        format!("postgresql://owner:{password}@{host}:{port}/shop")
    );
    assert!(password.len() >= 20, "generated password: {password}");
    let addr = format!("{host}:{port}");
    let pdir = cluster.partition_dir(&info);
    assert_not_root(&pdir);
    eprintln!("postgresql published after {:?}", t0.elapsed());

    // A wrong password is refused: the credentials are real.
    let wrong = pg_url.replace(&password, "wrong");
    assert!(
        psql(&wrong, "SELECT 1").is_err(),
        "a wrong password is refused"
    );

    psql(
        &pg_url,
        "CREATE TABLE t (k text PRIMARY KEY, v int); INSERT INTO t VALUES ('a', 42)",
    )
    .unwrap();
    assert_eq!(
        psql(&pg_url, "SELECT v FROM t WHERE k = 'a'")
            .unwrap()
            .trim(),
        "42"
    );
    assert!(pdir.join("srv/postgresql/PG_VERSION").exists());

    cluster.stop("pg1", &url, &params, &pdir, &addr);
    cluster.start_again("pg1", &url, &params);
    let got = wait_for(
        "postgresql back with the row",
        CONVERGE,
        || psql(&pg_url, "SELECT v FROM t WHERE k = 'a'").ok(),
        || cluster.logs(),
    );
    assert_eq!(got.trim(), "42", "the row survives stop/start");
    let log = std::fs::read_to_string(pdir.join("var/log/postgresql.log")).unwrap_or_default();
    assert_eq!(
        log.matches("syncing data to disk").count(),
        1,
        "initdb ran once: {log}"
    );

    cluster.destroy("pg1", &url, &params, &pdir, &addr);
    cluster.shutdown_and_check();
    eprintln!("postgresql: {:?}", t0.elapsed());
}

// ----- ZEO -------------------------------------------------------------------------------

fn zodb_client(
    lib: &Path,
    host: &str,
    port: &str,
    storage: &str,
    script: &str,
) -> Result<String, String> {
    let prelude = format!(
        "import ZEO.ClientStorage, ZODB, transaction\n\
         st = ZEO.ClientStorage.ClientStorage(('{host}', {port}), storage='{storage}', wait_timeout=10)\n\
         db = ZODB.DB(st); c = db.open(); root = c.root()\n"
    );
    let code = format!("{prelude}{script}\nc.close(); db.close()\n");
    run_client(
        Command::new("/usr/bin/python3")
            .args(["-c", &code])
            .env("PYTHONPATH", lib)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    )
}

#[test]
fn zeo_zodb_object_survives_stop_start_then_destroy() {
    let t0 = Instant::now();
    let url = catalog_url("zeo");
    let cluster = Cluster::start("COMP-ZEO", "cdzeo", 1, &[&url]);

    let bad = cluster.cli(&[
        "request",
        "z1",
        &url,
        "--parameters",
        "invalidation-queue-size=1",
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("invalidation-queue-size"),
        "{}",
        text(&bad)
    );

    let params = ["--parameters", "storage=main"];
    cluster.request(&[&["z1", url.as_str()][..], &params].concat());
    let info = cluster.published("z1", &["url", "host", "port"], INSTALL);
    let (host, port) = (conn(&info, "host"), conn(&info, "port"));
    assert_eq!(
        conn(&info, "url"),
        format!("zeo://{host}:{port}?storage=main")
    );
    let addr = format!("{host}:{port}");
    let pdir = cluster.partition_dir(&info);
    assert_not_root(&pdir);
    eprintln!("zeo published after {:?}", t0.elapsed());
    // The client is the release's own ZODB/ZEO.
    let lib = cluster
        .dir
        .path()
        .join("software")
        .join(md5_hex(&url))
        .join("lib");

    zodb_client(
        &lib,
        &host,
        &port,
        "main",
        "from persistent.mapping import PersistentMapping\n\
         root['doc'] = PersistentMapping(title='kept', n=7)\ntransaction.commit()",
    )
    .unwrap();
    assert!(pdir.join("srv/zeo/Data.fs").exists());

    cluster.stop("z1", &url, &params, &pdir, &addr);
    cluster.start_again("z1", &url, &params);
    wait_for(
        "zeo back",
        CONVERGE,
        || port_open(&addr).then_some(()),
        || cluster.logs(),
    );
    let out = zodb_client(
        &lib,
        &host,
        &port,
        "main",
        "print(root['doc']['title'], root['doc']['n'])",
    )
    .unwrap();
    assert_eq!(out.trim(), "kept 7", "the object survives stop/start");

    cluster.destroy("z1", &url, &params, &pdir, &addr);
    cluster.shutdown_and_check();
    eprintln!("zeo: {:?}", t0.elapsed());
}

// ----- persistent memcached-protocol store -------------------------------------------------

#[test]
fn kvstore_value_survives_stop_start_then_destroy() {
    let t0 = Instant::now();
    let url = catalog_url("kvstore");
    let cluster = Cluster::start("COMP-KV", "cdkv", 1, &[&url]);

    let bad = cluster.cli(&["request", "kv1", &url, "--parameters", "memory=8"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("memory"), "{}", text(&bad));

    cluster.request(&["kv1", &url]);
    let info = cluster.published("kv1", &["host", "port", "url"], INSTALL);
    let addr = format!("{}:{}", conn(&info, "host"), conn(&info, "port"));
    assert_eq!(conn(&info, "url"), format!("memcached://{addr}"));
    let pdir = cluster.partition_dir(&info);
    assert_not_root(&pdir);
    eprintln!("kvstore published after {:?}", t0.elapsed());

    assert_eq!(
        memcached_exchange(&addr, "set durable 5 0 4\r\nkept\r\n").unwrap(),
        "STORED\r\n"
    );
    assert_eq!(
        memcached_exchange(&addr, "get durable\r\n").unwrap(),
        "VALUE durable 5 4\r\nkept\r\nEND\r\n"
    );

    cluster.stop("kv1", &url, &[], &pdir, &addr);
    assert!(
        pdir.join("srv/kvstore/memory_file.meta").exists(),
        "saved on stop"
    );
    cluster.start_again("kv1", &url, &[]);
    let got = wait_for(
        "kvstore back",
        CONVERGE,
        || memcached_exchange(&addr, "get durable\r\n").ok(),
        || cluster.logs(),
    );
    assert_eq!(
        got,
        "VALUE durable 5 4\r\nkept\r\nEND\r\n",
        "the value survives stop/start; log:\n{}",
        std::fs::read_to_string(pdir.join("var/log/kvstore.log")).unwrap_or_default()
    );

    cluster.destroy("kv1", &url, &[], &pdir, &addr);
    cluster.shutdown_and_check();
    eprintln!("kvstore: {:?}", t0.elapsed());
}
