//! Helpers of the end-to-end node tests (`node_e2e.rs`): real `slapos`
//! processes (up, proxy, master, node), the processes they leave behind,
//! and raw clients of the daemons they run (RESP, memcached text, HTTP).
//! Everything here uses std only and polls with deadlines.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

// ----- signals ---------------------------------------------------------------

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

/// Sends `sig` to `pid`; false if there is no such process.
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { kill(pid as i32, sig) == 0 }
}

// ----- polling -----------------------------------------------------------------

/// Polls `probe` every 20 ms until it returns `Some`, or panics after
/// `timeout` with `what` and the text `context()` returns (logs...).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`wait_for`] but returns `None` at the deadline instead of panicking.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `check` (which asserts) over and over for the whole of `window`:
/// something that must stay true for a while, not a wait.
pub fn hold_for(window: Duration, mut check: impl FnMut()) {
    let start = Instant::now();
    while start.elapsed() < window {
        check();
        std::thread::sleep(Duration::from_millis(50));
    }
    check();
}

// ----- processes -----------------------------------------------------------------

/// A process seen in /proc.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: u32,
    pub cmdline: String,
    pub cwd: PathBuf,
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(true)
}

/// Live (non-zombie) processes whose working directory is `dir` or below
/// it, or whose command line names a path under `dir`.
pub fn processes_under(dir: &Path) -> Vec<ProcInfo> {
    let me = std::process::id();
    let dir_text = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || is_zombie(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .split('\0')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        let under = cwd.starts_with(dir)
            || cmdline.split(' ').any(|arg| {
                arg == dir_text
                    || arg.starts_with(&format!("{dir_text}/"))
                    || arg.contains(&format!("={dir_text}/"))
            });
        if under && !is_zombie(pid) {
            out.push(ProcInfo { pid, cmdline, cwd });
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Processes whose working directory is `dir` or below it (a partition's
/// services: some change directory, as Redis does to its `dir`).
pub fn processes_in(dir: &Path) -> Vec<ProcInfo> {
    processes_under(dir)
        .into_iter()
        .filter(|p| p.cwd.starts_with(dir))
        .collect()
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// SIGKILLs every process under `dirs` until none is left (10 s at most);
/// returns what was found alive at the first look.
pub fn kill_processes_under(dirs: &[PathBuf]) -> Vec<ProcInfo> {
    let mut first = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<ProcInfo> = dirs.iter().flat_map(|d| processes_under(d)).collect();
        if first.is_empty() {
            first = left.clone();
        }
        if left.is_empty() || Instant::now() >= deadline {
            return first;
        }
        for p in &left {
            signal(p.pid, SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills (SIGKILL) every process left under its directories when dropped.
/// Declare it before the daemons so that it runs after them.
pub struct Sweep(pub Vec<PathBuf>);

impl Drop for Sweep {
    fn drop(&mut self) {
        let left = kill_processes_under(&self.0);
        if !left.is_empty() {
            eprintln!("sweep: killed leftover processes: {left:#?}");
        }
    }
}

/// A long-running `slapos` process (up, proxy, master, node run) whose
/// stdout and stderr go to files; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub name: String,
    pub log: PathBuf,
    pub out: PathBuf,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

static DAEMON_SEQ: AtomicU32 = AtomicU32::new(0);

impl Daemon {
    /// Starts `program args` in `cwd`, logs in `log_dir/<name>-<n>.{err,out}`.
    pub fn spawn(name: &str, program: &Path, args: &[&str], cwd: &Path, log_dir: &Path) -> Daemon {
        Daemon::spawn_with(name, Command::new(program), args, cwd, log_dir)
    }

    /// Like [`Daemon::spawn`] with a prepared command (`ip netns exec ...`).
    pub fn spawn_with(
        name: &str,
        mut command: Command,
        args: &[&str],
        cwd: &Path,
        log_dir: &Path,
    ) -> Daemon {
        let n = DAEMON_SEQ.fetch_add(1, Ordering::Relaxed);
        let log = log_dir.join(format!("{name}-{n}.err"));
        let out = log_dir.join(format!("{name}-{n}.out"));
        let child = command
            .args(args)
            .current_dir(cwd)
            .env("SLAPOS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon {
            name: name.to_string(),
            log,
            out,
            child: Some(child),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Still running (not exited).
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                self.status = Some(status);
                false
            }
            _ => false,
        }
    }

    /// kill -9, and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.status = child.wait().ok();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns
    /// the exit status and whether it exited by itself in time.
    pub fn stop(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        let Some(mut child) = self.child.take() else {
            return (self.status, true);
        };
        signal(child.id(), SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    return (Some(status), true);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    self.status = child.wait().ok();
                    return (self.status, false);
                }
            }
        }
    }

    pub fn log_text(&self) -> String {
        let err = std::fs::read_to_string(&self.log).unwrap_or_default();
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        format!("{out}{err}")
    }

    /// The last `lines` lines of its output, for failure messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = strip_ansi(&self.log_text());
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        format!(
            "--- {} ({}) ---\n{}\n",
            self.name,
            self.log.display(),
            all[start..].join("\n")
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ----- the CLI ---------------------------------------------------------------------

/// Runs `slapos args...` to completion.
pub fn slapos_cli(args: &[&str]) -> Output {
    Command::new(super::binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run slapos {args:?}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `slapos args... --cfg cfg`, expecting exit 0 and JSON on stdout.
pub fn slapos_json(cfg: &Path, args: &[&str]) -> Result<Value, String> {
    let mut all: Vec<&str> = args.to_vec();
    let cfg = cfg.to_string_lossy();
    all.extend(["--cfg", &cfg]);
    let out = slapos_cli(&all);
    if !out.status.success() {
        return Err(text(&out));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", text(&out)))
}

/// Root of the repository (where `catalog/` is).
pub fn repo_root() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .expect("repository root")
}

/// `file://` URL of a catalog release of the repository.
pub fn catalog_url(name: &str) -> String {
    format!(
        "file://{}/catalog/{name}/software.toml",
        repo_root().display()
    )
}

/// What the reference names a release directory: md5 hex of the URL.
pub fn md5_hex(text: &str) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

pub fn sha256_hex_of_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

// ----- ports -----------------------------------------------------------------------

/// The first port of `len` consecutive free ports on 127.0.0.1, below the
/// ephemeral range (so that `free_port` never hands one of them out) and
/// away from `slapos up`'s fixed 20000: a node's `port_base`.
pub fn free_port_range(len: u16) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = 21000 + (std::process::id() % 40) * 250;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = 21000 + (start - 21000 + n * 50) % 11000;
        let free = (base..base + len as u32)
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p as u16)).is_ok());
        if free {
            return base as u16;
        }
        assert!(n < 1000, "no free port range");
    }
}

pub fn port_open(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(mut addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs
        .next()
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

// ----- configuration -----------------------------------------------------------------

/// A `slapos.cfg` for a master (proxy or multi-node) and one node, like the
/// one `slapos up` writes, plus the node's own keys.
pub struct NodeCfg<'a> {
    pub host: &'a str,
    pub port: u16,
    pub database: &'a Path,
    pub computer_id: &'a str,
    pub instance_root: &'a Path,
    pub software_root: &'a Path,
    pub partitions: usize,
    pub port_base: u16,
}

impl NodeCfg<'_> {
    pub fn write(&self, path: &Path) {
        let text = format!(
            "[slapos]\nmaster_url = http://{host}:{port}\ncomputer_id = {computer}\n\
             instance_root = {inst}\nsoftware_root = {soft}\n\n\
             [slapproxy]\nhost = {host}\nport = {port}\ndatabase_uri = {db}\n\n\
             [slapmaster]\nhost = {host}\nport = {port}\ndatabase_uri = {db}\n\n\
             [slapformat]\npartition_amount = {n}\nalter_network = false\nalter_user = false\n\n\
             [slapos-node]\nport_base = {base}\npoll_interval = 1\npromise_timeout = 20\n",
            host = self.host,
            port = self.port,
            computer = self.computer_id,
            inst = self.instance_root.display(),
            soft = self.software_root.display(),
            db = self.database.display(),
            n = self.partitions,
            base = self.port_base,
        );
        std::fs::write(path, text).expect("write slapos.cfg");
    }
}

// ----- clients of the daemons ----------------------------------------------------------

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

/// A Redis connection speaking raw RESP.
pub struct Resp {
    reader: BufReader<TcpStream>,
}

impl Resp {
    pub fn connect(addr: &str) -> std::io::Result<Resp> {
        use std::net::ToSocketAddrs;
        let a = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let stream = TcpStream::connect_timeout(&a, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(Resp {
            reader: BufReader::new(stream),
        })
    }

    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut buf = format!("*{}\r\n", args.len());
        for a in args {
            let _ = write!(buf, "${}\r\n{a}\r\n", a.len());
        }
        self.reader.get_mut().write_all(buf.as_bytes())?;
        self.read_reply()
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let line = self.read_line()?;
        let bad = || std::io::Error::other(format!("bad RESP line {line:?}"));
        let (kind, rest) = line.split_at(1.min(line.len()));
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(n as usize);
                    Reply::Bulk(Some(String::from_utf8_lossy(&data).into_owned()))
                }
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(self.read_reply()?);
                }
                Reply::Array(items)
            }
            _ => return Err(bad()),
        })
    }
}

/// AUTH then PING: Ok(()) when Redis answers +PONG.
pub fn redis_ping(addr: &str, password: &str) -> Result<(), String> {
    let mut r = Resp::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    match r.cmd(&["AUTH", password]).map_err(|e| e.to_string())? {
        Reply::Simple(s) if s == "OK" => {}
        other => return Err(format!("AUTH answered {other:?}")),
    }
    match r.cmd(&["PING"]).map_err(|e| e.to_string())? {
        Reply::Simple(s) if s == "PONG" => Ok(()),
        other => Err(format!("PING answered {other:?}")),
    }
}

/// An authenticated Redis connection.
pub fn redis_auth(addr: &str, password: &str) -> Result<Resp, String> {
    let mut r = Resp::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    match r.cmd(&["AUTH", password]).map_err(|e| e.to_string())? {
        Reply::Simple(s) if s == "OK" => Ok(r),
        other => Err(format!("AUTH answered {other:?}")),
    }
}

/// Sends one memcached text-protocol exchange and reads until a line that
/// ends it (`STORED`, `END`, `ERROR`...).
pub fn memcached_exchange(addr: &str, request: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut out = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        out.push_str(&line);
        let l = line.trim_end();
        if matches!(
            l,
            "STORED" | "NOT_STORED" | "END" | "ERROR" | "DELETED" | "NOT_FOUND"
        ) || l.starts_with("CLIENT_ERROR")
            || l.starts_with("SERVER_ERROR")
            || l.starts_with("VERSION")
        {
            break;
        }
    }
    Ok(out)
}

/// `GET path` over HTTP/1.0: (status, body).
pub fn http_get(url: &str) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    use std::net::ToSocketAddrs;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("{url}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

// ----- network namespaces ---------------------------------------------------------------

/// Runs a command, returning its output or a message.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), text(&out)))
    }
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Network namespaces and host-side veth links created by a test, deleted when dropped.
#[derive(Default)]
pub struct Netns {
    pub namespaces: Vec<String>,
    pub links: Vec<String>,
}

impl Netns {
    /// Creates namespace `ns` joined to the host by a veth pair: `host_ip/24`
    /// on the host side (`host_link`), `ns_ip/24` inside with a default route
    /// through the host side, and `lo` up.
    pub fn add(
        &mut self,
        ns: &str,
        host_link: &str,
        ns_link: &str,
        host_ip: &str,
        ns_ip: &str,
    ) -> Result<(), String> {
        run("ip", &["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        run(
            "ip",
            &[
                "link", "add", host_link, "type", "veth", "peer", "name", ns_link,
            ],
        )?;
        self.links.push(host_link.to_string());
        run("ip", &["link", "set", ns_link, "netns", ns])?;
        run(
            "ip",
            &["addr", "add", &format!("{host_ip}/24"), "dev", host_link],
        )?;
        run("ip", &["link", "set", host_link, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        in_ns(&["ip", "addr", "add", &format!("{ns_ip}/24"), "dev", ns_link])?;
        in_ns(&["ip", "link", "set", ns_link, "up"])?;
        in_ns(&["ip", "route", "add", "default", "via", host_ip])?;
        Ok(())
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command(ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(ns).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns]);
        }
        for link in &self.links {
            // Usually gone with its peer's namespace.
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
    }
}
