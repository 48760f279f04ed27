//! End-to-end tests of the catalog's IaaS releases: `nbd` (a disk image
//! exported by qemu-nbd, read with the host's `qemu-img info nbd://…`) and
//! `kvm` (a qemu virtual machine booting the release's own kernel and busybox
//! initramfs, checked through QMP and its serial console), each through a
//! proxy, `slapos node format` (partition users created: the node is root)
//! and `slapos node run`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::e2e::*;
use serde_json::Value;

const INSTALL: Duration = Duration::from_secs(240);
const CONVERGE: Duration = Duration::from_secs(40);

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
fn kvm_guest_boots_answers_qmp_and_serial_survives_stop_start_then_destroy() {
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
            // A whole line: qemu may be writing it as we read.
            text.split_inclusive('\n')
                .find(|l| l.contains("slapos-guest booted") && l.ends_with('\n'))
                .map(|l| l.trim_end().to_string())
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

    // Started again: the same disk, the guest boots again and its shell answers.
    cluster.start_again("vm1", &url, &params);
    let restart = Instant::now();
    let status = wait_for(
        "QMP to answer after the start",
        CONVERGE,
        || qmp_status(&qmp).ok(),
        || cluster.logs(),
    );
    assert_eq!(status, "running");
    let out = wait_for(
        "the guest's shell to answer again on the serial port",
        Duration::from_secs(90),
        || {
            serial_exchange(
                &serial,
                "\necho AGAIN-$((6*7))\n",
                "AGAIN-42",
                Duration::from_secs(10),
            )
            .ok()
        },
        || std::fs::read_to_string(&log).unwrap_or_default(),
    );
    assert!(out.contains("AGAIN-42"), "{out}");
    let out = run_client(Command::new("qemu-img").args(["info", "-U"]).arg(&disk)).unwrap();
    assert!(
        out.contains("virtual size: 256 MiB"),
        "the disk is kept: {out}"
    );
    eprintln!("guest back {:?} after the start", restart.elapsed());

    cluster.destroy("vm1", &url, &params, &pdir, &qmp);
    for addr in [&serial, &ssh] {
        assert!(!port_open(addr), "{addr} closed");
    }
    cluster.shutdown_and_check();
    eprintln!("kvm: {:?}", t0.elapsed());
}
