//! A `slapos up` (master, formatted computer, node) in a temporary
//! directory, driven through the CLI: what the catalog's end-to-end tests share.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::e2e::*;

const CONVERGE: Duration = Duration::from_secs(40);

/// A running `slapos up` in a temp dir.
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
        let port = super::free_port();
        let port_base = free_port_range(10 * partitions as u16);
        let c = Cluster {
            node: None,
            master: None,
            cfg,
            computer: computer.to_string(),
            partitions,
            dir,
        };
        // Everything as a user runs it: `slapos up` (master, formatted
        // computer, node), with nothing of the catalog supplied up front.
        let data = c.dir.path().to_string_lossy().into_owned();
        let (port_s, base_s, parts_s) = (
            port.to_string(),
            port_base.to_string(),
            partitions.to_string(),
        );
        let up = Daemon::spawn(
            "up",
            &super::binary(),
            &[
                "up",
                "--data-dir",
                &data,
                "--port",
                &port_s,
                "--port-base",
                &base_s,
                "--partitions",
                &parts_s,
                "--computer-id",
                computer,
                "--user-base",
                user_base,
                "--supply",
                "none",
            ],
            c.dir.path(),
            c.dir.path(),
        );
        let addr = format!("127.0.0.1:{port}");
        // Requests need the partitions: `slapos up` listens (and writes its
        // configuration) before its node has formatted and registered them.
        wait_for(
            "slapos up to listen and register its partitions",
            Duration::from_secs(30),
            || {
                if !port_open(&addr) || !c.cfg.exists() {
                    return None;
                }
                let info = slapos_json(&c.cfg, &["computer", "info", computer, "--json"]).ok()?;
                (info["computer"]["partitions_total"] == partitions).then_some(())
            },
            || up.tail(30),
        );
        let mut c = c;
        c.master = Some(up);
        for url in releases {
            let out = c.cli(&["supply", url, computer]);
            assert!(out.status.success(), "supply: {}", text_of(&out));
        }
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
        self.wait_published(title, keys, timeout, true)
    }

    /// Waits until the shared instance `title` has published `keys` (a
    /// shared instance has no state of its own).
    pub fn published_shared(&self, title: &str, keys: &[&str], timeout: Duration) -> Value {
        self.wait_published(title, keys, timeout, false)
    }

    fn wait_published(
        &self,
        title: &str,
        keys: &[&str],
        timeout: Duration,
        started: bool,
    ) -> Value {
        wait_for(
            &format!("{title} to publish {keys:?}"),
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
                (ok && (!started || info["reported_state"] == "started")).then_some(info)
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

    /// Destroys `title` and checks that nothing of its partition is left
    /// ([`Doomed::assert_gone`]).
    pub fn destroy(&self, title: &str, url: &str, params: &[&str], pdir: &Path, addr: &str) {
        let doomed = Doomed::new(&[pdir.to_path_buf()], &[addr]);
        self.request(&[&[title, url, "--state", "destroyed"], params].concat());
        doomed.assert_gone(&self.cfg, &self.computer, || self.logs());
        let free = slapos_json(&self.cfg, &["computer", "info", &self.computer, "--json"])
            .unwrap_or_default()["computer"]["partitions_free"]
            .clone();
        assert_eq!(free, self.partitions, "every partition is free again");
    }

    /// An instance by id, from the master's REST API (a child instance has
    /// no `service info` of its own: that looks up the user's titles).
    pub fn instance(&self, id: &Value) -> Option<Value> {
        let text = std::fs::read_to_string(&self.cfg).ok()?;
        let master = text.lines().find_map(|l| l.strip_prefix("master_url = "))?;
        let (status, body) = http_get(&format!("{master}/api/v1/instances/{id}")).ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    pub fn instance_root(&self) -> PathBuf {
        self.dir.path().join("instance")
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

/// `http://host:port/...` → `host:port`.
pub fn authority(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or_default().to_string()
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

/// The partitions of a tree about to be destroyed, with their users (seen
/// now, while they own their directories) and the addresses they listen
/// on: [`Doomed::assert_gone`] checks afterwards that nothing of them is left.
pub struct Doomed {
    pub dirs: Vec<PathBuf>,
    pub addrs: Vec<String>,
    /// The partitions' own users (none when the node does not create them).
    pub uids: Vec<u32>,
}

impl Doomed {
    pub fn new(dirs: &[PathBuf], addrs: &[&str]) -> Doomed {
        let mut uids: Vec<u32> = dirs.iter().filter_map(|d| partition_uid(d)).collect();
        uids.sort_unstable();
        uids.dedup();
        Doomed {
            dirs: dirs.to_vec(),
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            uids,
        }
    }

    /// Waits until the master shows every partition free, each directory is
    /// empty and no process runs in it or as its user; then checks that no
    /// address still listens and that the users own no file in the
    /// temporary directories or next to the partitions (the node's root).
    pub fn assert_gone(&self, cfg: &Path, computer: &str, logs: impl Fn() -> String) {
        let computer_info =
            || slapos_json(cfg, &["computer", "info", computer, "--json"]).unwrap_or_default();
        let state = || {
            let c = computer_info();
            let not_free: Vec<String> = self
                .dirs
                .iter()
                .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
                .filter(|reference| {
                    !c["partitions"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .any(|p| p["reference"] == reference.as_str() && p["free"] == true)
                    })
                })
                .collect();
            let not_empty: Vec<(PathBuf, Vec<String>)> = self
                .dirs
                .iter()
                .map(|d| (d.clone(), dir_entries(d)))
                .filter(|(_, e)| !e.is_empty())
                .collect();
            let running: Vec<ProcInfo> = self
                .dirs
                .iter()
                .flat_map(|d| processes_under(d))
                .chain(self.processes_of_users())
                .collect();
            (not_free, not_empty, running)
        };
        wait_for(
            "the destroyed partitions to be freed and emptied, with nothing running",
            CONVERGE,
            || {
                let (not_free, not_empty, running) = state();
                (not_free.is_empty() && not_empty.is_empty() && running.is_empty()).then_some(())
            },
            || {
                let (not_free, not_empty, running) = state();
                format!(
                    "not free: {not_free:?}\nnot empty: {not_empty:#?}\nrunning: {running:#?}\n{}",
                    logs()
                )
            },
        );
        for addr in &self.addrs {
            assert!(!port_open(addr), "nothing listens on {addr} any more");
        }
        let mut roots: Vec<PathBuf> = ["/tmp", "/var/tmp", "/dev/shm"]
            .iter()
            .map(PathBuf::from)
            .collect();
        // The node's whole tree: instance root (other partitions, the
        // node's records) and the software root.
        roots.extend(
            self.dirs
                .iter()
                .filter_map(|d| Some(d.parent()?.parent()?.to_path_buf())),
        );
        roots.sort();
        roots.dedup();
        let mut left = Vec::new();
        for root in &roots {
            files_owned_by(root, &self.uids, &roots, 0, &mut left);
        }
        // The emptied partition directories stay, their users' for the next instance.
        left.retain(|p| !self.dirs.contains(p));
        assert!(
            left.is_empty(),
            "files of the destroyed partitions' users are left: {left:#?}"
        );
    }

    /// Live processes of the partitions' users, but those that belong to
    /// another cluster (another test run using the same user names).
    fn processes_of_users(&self) -> Vec<ProcInfo> {
        if self.uids.is_empty() {
            return Vec::new();
        }
        let ours = self.dirs.first().and_then(|d| d.parent()?.parent());
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if !pid_alive(pid) || !self.uids.contains(&uid_of(pid)) {
                continue;
            }
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            let paths: Vec<PathBuf> = std::iter::once(cwd.clone())
                .chain(
                    cmdline
                        .split(' ')
                        .filter_map(|a| a.find('/').map(|i| PathBuf::from(&a[i..]))),
                )
                .collect();
            let mine = |p: &PathBuf| ours.is_some_and(|o| p.starts_with(o));
            if !paths.iter().any(mine) && paths.iter().any(|p| in_other_node_tree(p, ours)) {
                continue;
            }
            out.push(ProcInfo { pid, cmdline, cwd });
        }
        out
    }
}

/// The owner of a partition's directory, if the node gave it its own user.
pub fn partition_uid(pdir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(pdir).ok()?.uid();
    let own = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    (uid != 0 && uid != own).then_some(uid)
}

/// A node's directory: `slapos.cfg` or `instance/` in it.
fn is_node_tree(dir: &Path) -> bool {
    dir.join("slapos.cfg").is_file() || dir.join("instance").is_dir()
}

/// Whether `path` lies in a node's directory other than `ours`.
fn in_other_node_tree(path: &Path, ours: Option<&Path>) -> bool {
    path.ancestors()
        .skip(1)
        .any(|a| Some(a) != ours && a != Path::new("/") && is_node_tree(a))
}

/// Names in a directory (none if it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Collects the paths below `dir` owned by one of `uids`, skipping other
/// nodes' directories and the other `roots`.
fn files_owned_by(
    dir: &Path,
    uids: &[u32],
    roots: &[PathBuf],
    depth: usize,
    out: &mut Vec<PathBuf>,
) {
    use std::os::unix::fs::MetadataExt;
    if uids.is_empty() || depth > 12 {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if uids.contains(&meta.uid()) {
            out.push(path.clone());
        }
        // Each root is walked once, from the top; other nodes' trees (other
        // test runs, whose partition users may have the same names) are theirs.
        let skip = roots.contains(&path) || (meta.is_dir() && is_node_tree(&path));
        if meta.is_dir() && !skip {
            files_owned_by(&path, uids, roots, depth + 1, out);
        }
    }
}
