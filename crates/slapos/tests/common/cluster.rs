//! A proxy, a formatted computer and a `slapos node run` in a temporary
//! directory, driven through the CLI: what the catalog's end-to-end tests share.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::e2e::*;

const CONVERGE: Duration = Duration::from_secs(40);

/// A proxy, a formatted computer and a running node in a temp dir.
pub struct Cluster {
    pub node: Option<Daemon>,
    pub master: Option<Daemon>,
    pub cfg: PathBuf,
    pub computer: String,
    pub partitions: usize,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(computer: &str, user_base: &str, partitions: usize, releases: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("slapos-catalog-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = dir.path().join("slapos.cfg");
        NodeCfg {
            host: "127.0.0.1",
            port: super::free_port(),
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
            &super::binary(),
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
            &super::binary(),
            &["node", "run", "--cfg", &cfg_s],
            c.dir.path(),
            c.dir.path(),
        ));
        c
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        let cfg = self.cfg.to_string_lossy();
        all.extend(["--cfg", &cfg]);
        slapos_cli(&all)
    }

    /// `slapos request` expecting success (0, or 2: not ready yet).
    pub fn request(&self, args: &[&str]) {
        let mut all = vec!["request"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            matches!(out.status.code(), Some(0) | Some(2)),
            "slapos {all:?}:\n{}",
            text_of(&out)
        );
    }

    pub fn info(&self, title: &str) -> Result<Value, String> {
        slapos_json(&self.cfg, &["service", "info", title, "--json"])
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for d in [&self.master, &self.node].into_iter().flatten() {
            out.push_str(&d.tail(40));
        }
        out
    }

    pub fn partition_dir(&self, info: &Value) -> PathBuf {
        self.dir
            .path()
            .join("instance")
            .join(info["partition"].as_str().expect("partition"))
    }

    /// Waits until `title` is started and has published `keys`.
    pub fn published(&self, title: &str, keys: &[&str], timeout: Duration) -> Value {
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
    pub fn stop(&self, title: &str, url: &str, params: &[&str], pdir: &Path, addr: &str) {
        self.request(&[&[title, url, "--state", "stopped"], params].concat());
        wait_for(
            &format!("{title} to be stopped"),
            CONVERGE,
            || {
                let info = self.info(title).ok()?;
                (processes_under(pdir).is_empty()
                    && !port_open(addr)
                    && info["reported_state"] == "stopped")
                    .then_some(())
            },
            || format!("{:#?}\n{}", processes_under(pdir), self.logs()),
        );
    }

    pub fn start_again(&self, title: &str, url: &str, params: &[&str]) {
        self.request(&[&[title, url, "--state", "started"], params].concat());
    }

    /// Destroys `title`: its partition is freed and emptied, nothing runs.
    pub fn destroy(&self, title: &str, url: &str, params: &[&str], pdir: &Path, addr: &str) {
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
    pub fn shutdown_and_check(mut self) {
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

pub fn text_of(out: &std::process::Output) -> String {
    text(out)
}

pub fn conn(info: &Value, key: &str) -> String {
    info["connection_parameters"][key]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The Unix user a partition's process runs as (from /proc).
pub fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

pub fn assert_not_root(pdir: &Path) {
    let procs = processes_under(pdir);
    assert!(!procs.is_empty(), "no process in {}", pdir.display());
    for p in procs {
        assert_ne!(uid_of(p.pid), 0, "runs as root: {p:#?}");
    }
}

/// Runs a program to completion: Ok(stdout) on exit 0.
pub fn run_client(cmd: &mut Command) -> Result<String, String> {
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
