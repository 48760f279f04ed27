//! Starts the real `slapos` binary on a free port with its own database.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub url: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn binary() -> PathBuf {
    std::env::var_os("SLAPOS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_slapos")))
}

/// `database`: `None` for a SQLite file in the temp dir, or a PostgreSQL URL.
pub fn start_proxy(computer_id: &str, database: Option<&str>) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let db = database
        .map(str::to_string)
        .unwrap_or_else(|| dir.path().join("proxy.db").to_string_lossy().into_owned());
    let cfg = dir.path().join("slapos.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\nmaster_url = http://127.0.0.1:{port}\ncomputer_id = {computer_id}\n\
             [slapproxy]\nhost = 127.0.0.1\nport = {port}\ndatabase_uri = {db}\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
    let child = Command::new(binary())
        .args(["proxy", "start", "--cfg"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start slapos proxy");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "proxy did not start: {}",
            std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { url, dir, child }
}

pub fn fixtures_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SLAPOS_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/slap-1.26.1")
}
