//! Installing the software releases supplied to this computer
//! (`slapos node software`).
//!
//! A release is the URL of a TOML manifest ([`crate::manifest`]). It is
//! installed once into `<software_root>/<md5 hex of the URL>`, the
//! reference's layout: Debian packages unpacked into `root/` (see
//! `software/debian.rs`), files fetched and checked against their sha256,
//! then the build commands. docs/software-release.md is the reference.
//!
//! Invariants:
//! * a release directory holding `.completed` is complete: that file is
//!   written last, after everything else reached the disk, and removed first;
//! * at most one installation (or removal) of a release runs at a time on a
//!   computer, across processes: an exclusive `flock` on
//!   `<software_root>/.locks/<md5>.lock`;
//! * a failed installation leaves no release directory, only its build log,
//!   `<software_root>/.logs/<md5>.log`;
//! * downloads go through the node's cache (`<software_root>/.cache` unless
//!   set otherwise): fetched files by sha256, `.deb` files by name, Python
//!   wheels by name, so installing a second release that needs the same
//!   files downloads nothing.

mod debian;
mod download;
mod log;
mod pypi;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use nix::fcntl::{Flock, FlockArg};
use tokio::process::Command;

use crate::manifest::{Manifest, ManifestError};
use log::BuildLog;

/// Marks a complete installation; written last.
pub const COMPLETED_FILE: &str = ".completed";
/// The copy of the manifest kept in the release directory.
pub const MANIFEST_FILE: &str = "software.toml";
/// Manifests larger than this are refused.
pub const MANIFEST_MAX_BYTES: u64 = 1 << 20;
/// Lines of the build log carried by an installation error.
pub const LOG_TAIL_LINES: usize = 50;
/// `PATH` used after the release's own directories when the node has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The md5 hex digest of the URL's UTF-8 bytes, which names the release's
/// directory and log.
pub fn release_id(url: &str) -> String {
    hex::encode(Md5::digest(url.as_bytes()))
}

/// `<software_root>/<md5 hex of the URL's UTF-8 bytes>` (the reference's
/// layout: "/srv/example/software.cfg" → 11a2cfbe8bdecb05e7707824272aa8b2).
pub fn release_dir(software_root: &Path, url: &str) -> PathBuf {
    software_root.join(release_id(url))
}

/// Why a release could not be read, installed or removed. The `Display`
/// text is what the node reports to the master.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Neither `file://`, `http(s)://` nor an absolute path.
    #[error("unsupported software release URL {url:?}: use file://, http://, https:// or an absolute path")]
    UnsupportedUrl { url: String },
    /// The manifest could not be read: missing file, connection refused, …
    #[error("cannot read the manifest {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered the manifest's URL with an error status.
    #[error("cannot read the manifest {url}: HTTP status {status}")]
    HttpStatus { url: String, status: u16 },
    /// The manifest is larger than [`MANIFEST_MAX_BYTES`].
    #[error("the manifest {url} is larger than 1 MiB")]
    TooLarge { url: String },
    /// The manifest is not valid TOML or not a valid release.
    #[error("{url}: {error}")]
    Manifest { url: String, error: ManifestError },
    /// An installation step failed; the release directory was removed.
    #[error("installing {url} failed: {step}: {reason}{}", tail_section(.log, .log_tail))]
    Failed {
        url: String,
        /// What was being done: `Debian packages`, `fetch <url>`, `build command 2 (…)`.
        step: String,
        reason: String,
        /// The build log, kept on the node.
        log: PathBuf,
        /// Its last [`LOG_TAIL_LINES`] lines.
        log_tail: String,
    },
    /// Local I/O on the software root, cache or locks.
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
}

fn tail_section(log: &Path, tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(
            "\n--- last lines of the build log ({}) ---\n{tail}",
            log.display()
        )
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> InstallError {
    let context = context.into();
    move |error| InstallError::Io { context, error }
}

/// A release installed on this computer.
#[derive(Debug, Clone)]
pub struct Installed {
    /// Its URL.
    pub url: String,
    /// `<software_root>/<md5 of the URL>`.
    pub dir: PathBuf,
    /// Its manifest, as it was when installed.
    pub manifest: Manifest,
    /// Debian multiarch triplet of the computer (`x86_64-linux-gnu`).
    multiarch: String,
}

impl Installed {
    /// `<dir>/root`, where Debian packages are unpacked.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The release's directories of programs that exist, in search order:
    /// `bin` (for wrappers the build writes), then `root/usr/bin`,
    /// `root/usr/sbin`, `root/bin`, `root/sbin`.
    pub fn bin_dirs(&self) -> Vec<PathBuf> {
        let root = self.root();
        let candidates = [
            self.dir.join("bin"),
            root.join("usr/bin"),
            root.join("usr/sbin"),
            root.join("bin"),
            root.join("sbin"),
        ];
        candidates.into_iter().filter(|d| d.is_dir()).collect()
    }

    /// The release's library directories that exist:
    /// `root/usr/lib/<multiarch>`, `root/lib/<multiarch>`, `root/usr/lib`,
    /// `root/lib`.
    pub fn library_dirs(&self) -> Vec<PathBuf> {
        let root = self.root();
        let candidates = [
            root.join("usr/lib").join(&self.multiarch),
            root.join("lib").join(&self.multiarch),
            root.join("usr/lib"),
            root.join("lib"),
        ];
        candidates.into_iter().filter(|d| d.is_dir()).collect()
    }

    /// `PATH` for a process of this release: [`Installed::bin_dirs`], then
    /// `base` (the host's search path).
    pub fn search_path(&self, base: &str) -> String {
        let mut parts: Vec<String> = self
            .bin_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        if !base.is_empty() {
            parts.push(base.to_string());
        }
        parts.join(":")
    }

    /// `LD_LIBRARY_PATH` for a process of this release, `None` if it has no
    /// libraries of its own.
    pub fn library_path(&self) -> Option<String> {
        let dirs = self.library_dirs();
        if dirs.is_empty() {
            return None;
        }
        Some(
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        )
    }

    /// The environment a service or build command of this release needs, to
    /// set on top of its own: `SOFTWARE` (the release directory), `PATH`
    /// (the release's directories, then the node's `PATH`) and, if the
    /// release has libraries, `LD_LIBRARY_PATH`.
    pub fn environment(&self) -> BTreeMap<String, String> {
        let host_path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string());
        let mut env = BTreeMap::new();
        env.insert("SOFTWARE".to_string(), self.dir.display().to_string());
        env.insert("PATH".to_string(), self.search_path(&host_path));
        if let Some(libs) = self.library_path() {
            env.insert("LD_LIBRARY_PATH".to_string(), libs);
        }
        env
    }
}

/// Installs and removes releases under one software root. Cheap to clone;
/// clones share the HTTP client. Installations of different releases may
/// run concurrently (from tasks or processes).
#[derive(Debug, Clone)]
pub struct Installer {
    software_root: PathBuf,
    cache_dir: PathBuf,
    http: reqwest::Client,
    multiarch: String,
}

impl Installer {
    /// An installer for `software_root` (created if missing), with its cache
    /// in `<software_root>/.cache`.
    pub fn new(software_root: &Path) -> Result<Installer, InstallError> {
        for dir in [".cache", ".logs", ".locks"] {
            let dir = software_root.join(dir);
            std::fs::create_dir_all(&dir)
                .map_err(io_error(format!("cannot create {}", dir.display())))?;
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("slapos-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| InstallError::Io {
                context: "cannot set up the HTTP client".into(),
                error: io::Error::other(download::error_chain(&e)),
            })?;
        Ok(Installer {
            software_root: software_root.to_path_buf(),
            cache_dir: software_root.join(".cache"),
            http,
            multiarch: multiarch(),
        })
    }

    /// Uses `dir` (created if missing) as the download cache, to share one
    /// cache between software roots.
    pub fn with_cache_dir(mut self, dir: &Path) -> Result<Installer, InstallError> {
        std::fs::create_dir_all(dir)
            .map_err(io_error(format!("cannot create {}", dir.display())))?;
        self.cache_dir = dir.to_path_buf();
        Ok(self)
    }

    /// The directory releases are installed in.
    pub fn software_root(&self) -> &Path {
        &self.software_root
    }

    /// The download cache: `sha256/<hex>` for fetched files, `debs/<file>`
    /// for Debian packages, `pypi/<wheel>` for Python wheels.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The build log of the release's last installation attempt.
    pub fn log_path(&self, url: &str) -> PathBuf {
        self.software_root
            .join(".logs")
            .join(format!("{}.log", release_id(url)))
    }

    /// Reads and parses the manifest at `url` (`file://`, absolute path,
    /// `http(s)://`), at most 1 MiB.
    pub async fn fetch_manifest(&self, url: &str) -> Result<Manifest, InstallError> {
        let text = download::read_manifest(&self.http, url, MANIFEST_MAX_BYTES).await?;
        Manifest::parse(&text).map_err(|error| InstallError::Manifest {
            url: url.to_string(),
            error,
        })
    }

    /// The installed release, `None` unless `.completed` exists and its
    /// manifest copy parses.
    pub fn installed(&self, url: &str) -> Option<Installed> {
        let dir = release_dir(&self.software_root, url);
        if !dir.join(COMPLETED_FILE).is_file() {
            return None;
        }
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
        let manifest = Manifest::parse(&text).ok()?;
        Some(Installed {
            url: url.to_string(),
            dir,
            manifest,
            multiarch: self.multiarch.clone(),
        })
    }

    /// Installs the release once: returns at once if it is installed.
    /// Otherwise, holding the release's lock, wipes any half-installed
    /// directory, unpacks the Debian packages, fetches the files, runs the
    /// build commands, writes `software.toml` and finally `.completed`. On
    /// failure the directory is removed and the error carries the tail of
    /// the build log.
    pub async fn install(&self, url: &str) -> Result<Installed, InstallError> {
        if let Some(installed) = self.installed(url) {
            return Ok(installed);
        }
        let _lock = self.lock(url).await?;
        // Another task or process may have installed it while we waited.
        if let Some(installed) = self.installed(url) {
            return Ok(installed);
        }
        let dir = release_dir(&self.software_root, url);
        let log_path = self.log_path(url);
        let log = BuildLog::create(&log_path)
            .map_err(io_error(format!("cannot write {}", log_path.display())))?;
        let started = Instant::now();
        tracing::info!(url, dir = %dir.display(), "installing software release");
        log.note(format!("installing {url} into {}", dir.display()));
        match self.build(url, &dir, &log).await {
            Ok(installed) => {
                log.note(format!(
                    "installed in {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
                tracing::info!(url, "software release installed");
                Ok(installed)
            }
            Err(mut e) => {
                if let InstallError::Failed { log_tail, .. } = &mut e {
                    *log_tail = log.tail(LOG_TAIL_LINES);
                }
                let summary = match &e {
                    InstallError::Failed { step, reason, .. } => format!("{step}: {reason}"),
                    other => other.to_string(),
                };
                log.note(format!("error: {summary}"));
                if let Err(rm) = remove_tree(&dir).await {
                    log.note(format!("cannot remove {}: {rm}", dir.display()));
                }
                tracing::warn!(url, error = %e, "software release failed");
                Err(e)
            }
        }
    }

    /// Removes the release's directory (a release supplied as destroyed).
    /// Its cached downloads stay. Removing a release that is not installed
    /// succeeds.
    pub async fn remove(&self, url: &str) -> Result<(), InstallError> {
        let _lock = self.lock(url).await?;
        let dir = release_dir(&self.software_root, url);
        remove_tree(&dir)
            .await
            .map_err(io_error(format!("cannot remove {}", dir.display())))?;
        tracing::info!(url, "software release removed");
        Ok(())
    }

    /// The steps of [`Installer::install`], under the lock.
    async fn build(
        &self,
        url: &str,
        dir: &Path,
        log: &BuildLog,
    ) -> Result<Installed, InstallError> {
        let failed = |step: &str, reason: String| InstallError::Failed {
            url: url.to_string(),
            step: step.to_string(),
            reason,
            log: log.path().to_path_buf(),
            log_tail: String::new(),
        };
        let text = download::read_manifest(&self.http, url, MANIFEST_MAX_BYTES).await?;
        let manifest = Manifest::parse(&text).map_err(|error| InstallError::Manifest {
            url: url.to_string(),
            error,
        })?;
        log.note(format!(
            "manifest: {} {}",
            manifest.name,
            manifest.version.as_deref().unwrap_or("(no version)")
        ));
        remove_tree(dir).await.map_err(|e| {
            failed(
                "prepare",
                format!("cannot remove the previous attempt {}: {e}", dir.display()),
            )
        })?;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| failed("prepare", format!("cannot create {}: {e}", dir.display())))?;
        // Partitions run as their own users and must read the release.
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(|e| failed("prepare", format!("cannot chmod {}: {e}", dir.display())))?;
        let installed = Installed {
            url: url.to_string(),
            dir: dir.to_path_buf(),
            manifest,
            multiarch: self.multiarch.clone(),
        };
        let install = &installed.manifest.install;

        if !install.debian.is_empty() {
            log.note(format!("Debian packages: {}", install.debian.join(" ")));
            debian::install(
                &install.debian,
                &installed.root(),
                &self.cache_dir.join("debs"),
                log,
            )
            .await
            .map_err(|e| failed("Debian packages", e))?;
        }

        let remote = matches!(download::locate(url), Ok(download::Location::Http(_)));
        for fetch in &install.fetch {
            let step = format!("fetch {}", fetch.url);
            let source = download::resolve(url, &fetch.url).map_err(|e| failed(&step, e))?;
            if remote && matches!(download::locate(&source), Ok(download::Location::File(_))) {
                let reason = "a manifest served over HTTP cannot fetch files of this computer";
                return Err(failed(&step, reason.into()));
            }
            let cached = download::cached_file(
                &self.http,
                &self.cache_dir.join("sha256"),
                &source,
                &fetch.sha256,
                log,
            )
            .await
            .map_err(|e| failed(&step, e))?;
            let dest = dir.join(&fetch.path);
            if fetch.extract {
                tokio::fs::create_dir_all(&dest)
                    .await
                    .map_err(|e| failed(&step, format!("cannot create {}: {e}", dest.display())))?;
                let mut tar = Command::new("tar");
                tar.arg("-xf")
                    .arg(&cached)
                    .arg("-C")
                    .arg(&dest)
                    .arg("--no-same-owner");
                run_logged(&mut tar, log).await.map_err(|e| {
                    failed(&step, format!("cannot unpack into {}: {e}", fetch.path))
                })?;
            } else {
                if let Some(parent) = dest.parent() {
                    tokio::fs::create_dir_all(parent).await.map_err(|e| {
                        failed(&step, format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                let copied = async {
                    tokio::fs::copy(&cached, &dest).await?;
                    tokio::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).await
                };
                copied.await.map_err(|e| {
                    failed(&step, format!("cannot copy to {}: {e}", dest.display()))
                })?;
            }
        }

        if !install.pypi.is_empty() {
            log.note(format!("PyPI: {}", install.pypi.join(" ")));
            pypi::install(
                &install.pypi,
                &dir.join("lib"),
                &self.cache_dir.join("pypi"),
                log,
            )
            .await
            .map_err(|e| failed("PyPI", e))?;
        }

        for (i, command) in install.build.iter().enumerate() {
            let step = format!("build command {} ({})", i + 1, summary(command));
            log.note(format!("$ {command}"));
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(command)
                .current_dir(dir)
                .envs(installed.environment());
            run_logged(&mut sh, log)
                .await
                .map_err(|e| failed(&step, e))?;
        }

        let finish = |e: io::Error| failed("finish", e.to_string());
        tokio::fs::write(dir.join(MANIFEST_FILE), &text)
            .await
            .map_err(finish)?;
        let dir_owned = dir.to_path_buf();
        tokio::task::spawn_blocking(move || mark_completed(&dir_owned))
            .await
            .map_err(|e| failed("finish", e.to_string()))?
            .map_err(finish)?;
        Ok(installed)
    }

    /// The release's exclusive lock, shared by every process using this
    /// software root; released when dropped.
    async fn lock(&self, url: &str) -> Result<Flock<File>, InstallError> {
        let path = self
            .software_root
            .join(".locks")
            .join(format!("{}.lock", release_id(url)));
        let context = format!("cannot lock {}", path.display());
        tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io::Error::from(errno))
        })
        .await
        .map_err(|e| InstallError::Io {
            context: context.clone(),
            error: io::Error::other(e),
        })?
        .map_err(io_error(context))
    }
}

/// Everything reaches the disk before `.completed` does, so that a crash
/// never leaves a release marked complete with missing files.
fn mark_completed(dir: &Path) -> io::Result<()> {
    let handle = File::open(dir)?;
    // SAFETY: syncfs only reads the descriptor, which `handle` keeps open.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let tmp = dir.join(".completed.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(b"")?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(COMPLETED_FILE))?;
    handle.sync_all()
}

/// Removes a release directory: `.completed` first, then the rest, making
/// read-only directories writable if they prevent it (builds that chmod).
async fn remove_tree(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        match std::fs::remove_file(dir.join(COMPLETED_FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(_) => {
                make_writable(&dir);
                std::fs::remove_dir_all(&dir)
            }
        }
    })
    .await
    .map_err(io::Error::other)?
}

/// Gives the owner full rights on every directory below `dir` (symbolic
/// links are not followed).
fn make_writable(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mut perms = meta.permissions();
    perms.set_mode(perms.mode() | 0o700);
    let _ = std::fs::set_permissions(dir, perms);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

/// Runs a command with stdin closed and its output appended to the log.
async fn run_logged(cmd: &mut Command, log: &BuildLog) -> Result<(), String> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let (stdout, stderr) = match (log.stdio(), log.stdio()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => return Err(format!("cannot write the build log: {e}")),
    };
    let status = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    Err(match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("{status}"),
    })
}

/// A command's first line, shortened, to name a build step.
fn summary(command: &str) -> String {
    let line = command.lines().next().unwrap_or("").trim();
    if line.chars().count() > 60 || command.trim().lines().count() > 1 {
        format!("{}…", line.chars().take(60).collect::<String>())
    } else {
        line.to_string()
    }
}

/// The Debian multiarch triplet: `dpkg-architecture`, else `gcc
/// -print-multiarch`, else guessed from the architecture we were built for.
fn multiarch() -> String {
    let ask = |program: &str, args: &[&str]| -> Option<String> {
        let out = std::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    ask("dpkg-architecture", &["-qDEB_HOST_MULTIARCH"])
        .or_else(|| ask("gcc", &["-print-multiarch"]))
        .unwrap_or_else(|| format!("{}-linux-gnu", std::env::consts::ARCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_dir_is_the_md5_of_the_url() {
        assert_eq!(
            release_dir(Path::new("/srv/slapgrid"), "/srv/example/software.cfg"),
            Path::new("/srv/slapgrid/11a2cfbe8bdecb05e7707824272aa8b2")
        );
    }

    #[test]
    fn failed_error_shows_the_log_tail() {
        let e = InstallError::Failed {
            url: "file:///r.toml".into(),
            step: "build command 1 (make)".into(),
            reason: "exited with status 2".into(),
            log: "/srv/.logs/x.log".into(),
            log_tail: "cc: error".into(),
        };
        assert_eq!(
            e.to_string(),
            "installing file:///r.toml failed: build command 1 (make): exited with status 2\n\
             --- last lines of the build log (/srv/.logs/x.log) ---\ncc: error"
        );
        assert_eq!(summary("make -j4"), "make -j4");
        assert_eq!(summary("set -e\nmake"), "set -e…");
    }

    #[test]
    fn multiarch_is_a_triplet() {
        assert!(multiarch().contains("-linux-"));
    }
}
