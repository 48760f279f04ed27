//! End-to-end tests of the catalog's IaaS releases: `nbd` (a disk image
//! exported by qemu-nbd, read with the host's `qemu-img info nbd://…`) and
//! `kvm` (a qemu virtual machine booting the release's own kernel and busybox
//! initramfs, checked through QMP and its serial console), each through a
//! proxy, `slapos node format` (partition users created: the node is root)
//! and `slapos node run`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::e2e::*;
use serde_json::Value;

const INSTALL: Duration = Duration::from_secs(240);
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

/// qemu-nbd changes directory to `/`: its services are found by the paths
/// under the partition on their command line.
fn assert_not_root(pdir: &Path) {
    let procs = processes_under(pdir);
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

// ----- nbd ------------------------------------------------------------------------------

/// The host's qemu-img, a client of the export.
fn qemu_img_info(url: &str) -> Result<String, String> {
    run_client(Command::new("qemu-img").args(["info", url]))
}

/// The host's qemu-io on the export (`qemu-io -c <command>`).
fn qemu_io(url: &str, command: &str) -> Result<String, String> {
    let out = run_client(Command::new("qemu-io").args(["-f", "raw", "-c", command, url]))?;
    if out.contains("Pattern verification failed") || out.contains("failed") {
        return Err(out);
    }
    Ok(out)
}

#[test]
fn nbd_export_has_the_requested_size_survives_stop_start_then_destroy() {
    let t0 = Instant::now();
    let url = catalog_url("nbd");
    let cluster = Cluster::start("COMP-NBD", "ciaasnbd", 1, &[&url]);

    // A size the schema refuses is refused at request time, named.
    let bad = cluster.cli(&["request", "nbd1", &url, "--parameters", "size=12T"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("size"),
        "names the parameter: {}",
        text(&bad)
    );

    let params = ["--parameters", "size=64M"];
    cluster.request(&[&["nbd1", url.as_str()][..], &params].concat());
    let info = cluster.published("nbd1", &["url"], INSTALL);
    let (host, port) = (conn(&info, "host"), conn(&info, "port"));
    let nbd_url = conn(&info, "url");
    assert_eq!(nbd_url, format!("nbd://{host}:{port}"));
    let addr = format!("{host}:{port}");
    let pdir = cluster.partition_dir(&info);
    assert_not_root(&pdir);
    eprintln!("nbd published after {:?}", t0.elapsed());

    let out = qemu_img_info(&nbd_url).unwrap();
    assert!(
        out.contains("virtual size: 64 MiB (67108864 bytes)"),
        "qemu-img info {nbd_url}:\n{out}"
    );
    assert!(pdir.join("srv/disk.qcow2").exists());
    qemu_io(&nbd_url, "write -P 0x5a 1M 64k").unwrap();
    qemu_io(&nbd_url, "read -P 0x5a 1M 64k").unwrap();

    cluster.stop("nbd1", &url, &params, &pdir, &addr);
    assert!(
        processes_under(&pdir).is_empty(),
        "{:#?}",
        processes_under(&pdir)
    );
    cluster.start_again("nbd1", &url, &params);
    wait_for(
        "nbd back",
        CONVERGE,
        || qemu_img_info(&nbd_url).ok(),
        || cluster.logs(),
    );
    qemu_io(&nbd_url, "read -P 0x5a 1M 64k").expect("the written blocks survive stop/start");

    cluster.destroy("nbd1", &url, &params, &pdir, &addr);
    cluster.shutdown_and_check();
    eprintln!("nbd: {:?}", t0.elapsed());
}

// ----- kvm ------------------------------------------------------------------------------

/// One QMP session: capabilities negotiated, then `query-status`; returns
/// the guest's status (`running`, `paused`...).
fn qmp_status(addr: &str) -> Result<String, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut next = |want: &str| -> Result<Value, String> {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("QMP closed the connection".into());
            }
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("{line}: {e}"))?;
            if v.get(want).is_some() {
                return Ok(v);
            }
            if v.get("error").is_some() {
                return Err(format!("QMP error: {v}"));
            }
        }
    };
    let greeting = next("QMP")?;
    assert!(
        greeting["QMP"]["version"]["qemu"]["major"].is_number(),
        "{greeting}"
    );
    writer
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .map_err(|e| e.to_string())?;
    next("return")?;
    writer
        .write_all(b"{\"execute\":\"query-status\"}\n")
        .map_err(|e| e.to_string())?;
    let status = next("return")?;
    Ok(status["return"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Sends `input` to the serial console at `addr` and reads until `want`
/// appears (or `timeout`); returns what was read.
fn serial_exchange(
    addr: &str,
    input: &str,
    want: &str,
    timeout: Duration,
) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.to_string()),
        }
        let text = String::from_utf8_lossy(&seen);
        if text.contains(want) {
            return Ok(text.into_owned());
        }
    }
    Err(format!(
        "{want:?} not seen on {addr}; read: {}",
        String::from_utf8_lossy(&seen)
    ))
}

#[test]
fn kvm_guest_boots_answers_qmp_and_serial_then_stop_and_destroy() {
    let t0 = Instant::now();
    let url = catalog_url("kvm");
    let cluster = Cluster::start("COMP-KVM", "ciaaskvm", 1, &[&url]);

    // A parameter the schema refuses is refused at request time, named.
    let bad = cluster.cli(&["request", "vm1", &url, "--parameters", "ram=16"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("ram"),
        "names the parameter: {}",
        text(&bad)
    );
    let bad = cluster.cli(&["request", "vm1", &url, "--parameters", "disk_size=ten"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("disk_size"), "{}", text(&bad));

    let params = ["--parameters", "disk_size=256M", "ram=192", "cpus=2"];
    cluster.request(&[&["vm1", url.as_str()][..], &params].concat());
    let info = cluster.published("vm1", &["qmp", "serial", "ssh"], INSTALL);
    let (qmp, serial, ssh) = (
        conn(&info, "qmp"),
        conn(&info, "serial"),
        conn(&info, "ssh"),
    );
    let pdir = cluster.partition_dir(&info);
    assert_not_root(&pdir);
    eprintln!(
        "kvm published after {:?}: {:#}",
        t0.elapsed(),
        info["connection_parameters"]
    );

    // QMP: the machine runs.
    let status = wait_for(
        "QMP to answer",
        CONVERGE,
        || qmp_status(&qmp).ok(),
        || cluster.logs(),
    );
    assert_eq!(status, "running");

    // The guest boots: its /init prints the marker on the serial console
    // (also logged by qemu to var/log/serial.log, as it may be printed before
    // anyone connects).
    let log = pdir.join("var/log/serial.log");
    let booted = wait_for(
        "the guest to print its marker on the serial console",
        Duration::from_secs(90),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .find(|l| l.contains("slapos-guest booted"))
                .map(str::to_string)
        },
        || {
            format!(
                "serial log:\n{}\nqemu log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default(),
                std::fs::read_to_string(pdir.join("var/log/qemu.log")).unwrap_or_default()
            )
        },
    );
    let qemu_log = std::fs::read_to_string(pdir.join("var/log/qemu.log")).unwrap_or_default();
    let accel = qemu_log
        .lines()
        .find(|l| l.starts_with("accelerator: "))
        .unwrap_or_default()
        .to_string();
    // The partition's user may not open /dev/kvm (root's, 0600, here): TCG.
    assert!(
        accel == "accelerator: tcg" || accel == "accelerator: kvm",
        "{qemu_log}"
    );
    eprintln!("guest booted after {:?} ({accel}): {booted}", t0.elapsed());
    assert!(booted.contains("2 cpu"), "cpus: {booted}");
    // The console is a live shell of the guest: it computes what it is sent.
    let out = wait_for(
        "the guest's shell to answer on the serial port",
        CONVERGE,
        || {
            serial_exchange(
                &serial,
                "\necho MARK-$((6*7))\n",
                "MARK-42",
                Duration::from_secs(10),
            )
            .ok()
        },
        || std::fs::read_to_string(&log).unwrap_or_default(),
    );
    assert!(out.contains("MARK-42"), "{out}");

    // The disk was created with the requested size.
    let disk = pdir.join("srv/disk.qcow2");
    let out = run_client(Command::new("qemu-img").args(["info", "-U"]).arg(&disk)).unwrap();
    assert!(out.contains("virtual size: 256 MiB"), "{out}");
    // The forwarded SSH port and the VNC display listen on the partition's address.
    assert!(port_open(&ssh), "ssh forward {ssh}");
    let vnc = conn(&info, "vnc");
    if let Some(addr) = vnc.strip_prefix("vnc://") {
        assert!(port_open(addr), "vnc {addr}");
    }

    cluster.stop("vm1", &url, &params, &pdir, &qmp);
    assert!(
        processes_under(&pdir).is_empty(),
        "{:#?}",
        processes_under(&pdir)
    );
    assert!(!port_open(&serial) && !port_open(&ssh));

    cluster.destroy("vm1", &url, &params, &pdir, &qmp);
    cluster.shutdown_and_check();
    eprintln!("kvm: {:?}", t0.elapsed());
}
