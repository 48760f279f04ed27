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
    start(&["proxy", "start"], computer_id, database, "")
}

/// A multi-node master (`slapos master`) on the given database.
pub fn start_master(database: &str) -> Server {
    start(&["master"], "", Some(database), "")
}

/// A `slapos master` with accounts on (`[slapmaster] authentication =
/// token`) over HTTPS (its authority and certificate made at start in its
/// temp dir), on a SQLite file in its temp dir or the given database.
pub fn start_master_with_accounts(database: Option<&str>) -> Server {
    start(&["master"], "", database, "authentication = token\nTLS\n")
}

impl Server {
    /// The `slapos.cfg` the server was started with.
    pub fn cfg(&self) -> PathBuf {
        self.dir.path().join("slapos.cfg")
    }

    /// The master's certificate authority (HTTPS masters).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// An HTTP client of this master: trusting its authority (HTTPS), with
    /// the client certificate of `identity` (a directory holding the
    /// `cert.pem` and `key.pem` that `slapos master ... certificate issue`
    /// wrote), if any.
    pub fn client(&self, identity: Option<&std::path::Path>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if self.url.starts_with("https:") {
            let ca = std::fs::read(self.ca_file()).expect("the master's authority");
            builder = builder.tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()]);
        }
        if let Some(dir) = identity {
            let mut pem = std::fs::read(dir.join("cert.pem")).unwrap();
            pem.extend(std::fs::read(dir.join("key.pem")).unwrap());
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    }

    /// Runs `slapos master ARGS --cfg CFG`: its standard output, or its
    /// standard error on failure.
    pub fn master_command(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(binary())
            .arg("master")
            .args(args)
            .arg("--cfg")
            .arg(self.cfg())
            .output()
            .expect("run slapos");
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Issues a client certificate (`kind`: computer or user) into a new
    /// directory of the temp dir; the directory and the fingerprint.
    pub fn issue_certificate(&self, kind: &str, name: &str) -> (PathBuf, String) {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let dir = self.dir.path().join(format!("cert-{kind}-{name}-{n}"));
        let out = self
            .master_command(&[
                kind,
                "certificate",
                "issue",
                name,
                "--out-dir",
                dir.to_str().unwrap(),
            ])
            .unwrap_or_else(|e| panic!("issue a {kind} certificate for {name}: {e}"));
        (dir, out.trim().to_string())
    }
}

fn start(
    command: &[&str],
    computer_id: &str,
    database: Option<&str>,
    master_extra: &str,
) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let db = database
        .map(str::to_string)
        .unwrap_or_else(|| dir.path().join("proxy.db").to_string_lossy().into_owned());
    let cfg = dir.path().join("slapos.cfg");
    let https = master_extra.contains("TLS\n");
    let master_extra = master_extra.replace(
        "TLS\n",
        &format!(
            "ssl_cert_file = {d}/server.crt\nssl_key_file = {d}/server.key\n\
             ca_cert_file = {d}/ca.crt\nca_key_file = {d}/ca.key\n",
            d = dir.path().display()
        ),
    );
    let scheme = if https { "https" } else { "http" };
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\nmaster_url = {scheme}://127.0.0.1:{port}\ncomputer_id = {computer_id}\n\
             [slapproxy]\nhost = 127.0.0.1\nport = {port}\ndatabase_uri = {db}\n\
             [slapmaster]\nhost = 127.0.0.1\nport = {port}\ndatabase_uri = {db}\n{master_extra}"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
    let child = Command::new(binary())
        .args(command)
        .arg("--cfg")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start slapos proxy");
    let url = format!("{scheme}://127.0.0.1:{port}");
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

/// A database of its own on `SLAPOS_TEST_POSTGRES`, dropped with the guard
/// (declare the masters using it after it, so they stop first).
pub struct PgDatabase {
    admin: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    /// None (and a note) when no PostgreSQL server is configured.
    pub fn create(prefix: &str) -> Option<PgDatabase> {
        let Ok(admin) = std::env::var("SLAPOS_TEST_POSTGRES") else {
            eprintln!("SLAPOS_TEST_POSTGRES not set: skipped");
            return None;
        };
        let name = format!("{prefix}_{}", std::process::id());
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        let database = PgDatabase { admin, name, url };
        database.admin_sql(&[
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", database.name),
            format!("CREATE DATABASE {}", database.name),
        ]);
        Some(database)
    }

    /// The synchronous client runs its own runtime: use a plain thread.
    pub fn admin_sql(&self, statements: &[String]) {
        let (admin, statements) = (self.admin.clone(), statements.to_vec());
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
            for sql in statements {
                c.batch_execute(&sql).unwrap();
            }
        })
        .join()
        .unwrap();
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        })
        .join();
    }
}

pub fn fixtures_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SLAPOS_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/slap-1.26.1")
}

/// Form-encodes fields.
pub fn form(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&encode(k));
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The marshalled registration of a computer with `n` partitions.
pub fn computer_xml(reference: &str, n: usize) -> String {
    let mut partitions = String::new();
    for i in 0..n {
        partitions.push_str(&format!(
            "<dictionary id=\"i{}\"><string>address_list</string><list id=\"i{}\"><dictionary id=\"i{}\">\
             <string>addr</string><string>10.1.{}.{}</string><string>netmask</string><string>255.255.0.0</string></dictionary></list>\
             <string>reference</string><string>slappart{i}</string><string>tap</string><dictionary id=\"i{}\"><string>name</string><string>slaptap{i}</string></dictionary></dictionary>",
            100 + 4 * i,
            101 + 4 * i,
            102 + 4 * i,
            i / 250,
            i % 250 + 1,
            103 + 4 * i,
        ));
    }
    format!(
        "<marshal><dictionary id=\"i2\"><string>address</string><string>10.1.0.1</string><string>netmask</string><string>255.255.0.0</string>\
         <string>partition_list</string><list id=\"i3\">{partitions}</list><string>reference</string><string>{reference}</string></dictionary></marshal>"
    )
}

/// Form of a user request of `title` on `computer`.
pub fn request_form(title: &str, computer: &str, parameters_xml: &str) -> String {
    form(&[
        ("software_release", "https://lab.example.invalid/software/demo/software.cfg"),
        ("partition_reference", title),
        ("partition_parameter_xml", parameters_xml),
        (
            "filter_xml",
            &format!("<marshal><dictionary id=\"i2\"><string>computer_guid</string><string>{computer}</string></dictionary></marshal>"),
        ),
        ("software_type", "default"),
        ("state", "<marshal><none/></marshal>"),
        ("shared_xml", "<marshal><bool>0</bool></marshal>"),
    ])
}

pub const EMPTY_DICT: &str = "<marshal><dictionary id=\"i2\"/></marshal>";

/// Helpers of the end-to-end node tests (real daemons, processes, netns).
pub mod cluster;
pub mod e2e;
pub mod money;
