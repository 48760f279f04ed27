//! Starting one service process.
//!
//! Between `fork` and `exec` the child (see `pre_exec` below): starts a new
//! session, so it outlives the node and `killpg` reaches everything it forks;
//! drops to the partition user; enters the partition directory; and opens its
//! log file itself. Opening the log as the partition user, not as root, means
//! a partition cannot turn the log path into a symlink to a file it may not
//! write (`/etc/shadow`) and have root append to it.
//!
//! That code runs in a forked copy of a multi-threaded process, so it only
//! makes async-signal-safe system calls on data prepared beforehand. When a
//! step fails, the child writes which one to a pipe, so the error says
//! "cannot open log file" rather than a bare "permission denied".

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::{Gid, Uid, User};

use super::{ServiceSpec, StartError};

/// Used when the spec's environment does not set `PATH`.
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Steps of the child's setup, as reported through the pipe.
const STEP_SESSION: u8 = 1;
const STEP_USER: u8 = 2;
const STEP_CWD: u8 = 3;
const STEP_LOG: u8 = 4;

/// Who the service runs as.
struct Identity {
    uid: u32,
    gid: u32,
    /// Set when the node (root) must switch to `uid`: the full group list,
    /// as `initgroups` would set it.
    switch_groups: Option<Vec<libc::gid_t>>,
    name: String,
    home: PathBuf,
}

impl Identity {
    fn resolve(spec: &ServiceSpec) -> Result<Identity, StartError> {
        let node_uid = Uid::effective();
        let node_gid = Gid::effective();
        let (uid, gid, switch) = match spec.user {
            None => (node_uid.as_raw(), node_gid.as_raw(), false),
            // A partition service as root is always a mistake of the caller
            // (an unresolved user defaulting to 0, …): partitions exist to
            // isolate services from the node and from each other.
            Some((0, _)) => return Err(StartError::RootTarget),
            Some((uid, gid)) if node_uid.is_root() => (uid, gid, true),
            Some((uid, gid)) if uid == node_uid.as_raw() && gid == node_gid.as_raw() => {
                (uid, gid, false)
            }
            Some((uid, gid)) => {
                return Err(StartError::CannotSwitchUser {
                    uid,
                    gid,
                    node_uid: node_uid.as_raw(),
                });
            }
        };
        let account = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        let switch_groups = switch.then(|| {
            account
                .as_ref()
                .and_then(|account| CString::new(account.name.as_str()).ok())
                .and_then(|name| nix::unistd::getgrouplist(&name, Gid::from_raw(gid)).ok())
                .map(|groups| groups.into_iter().map(Gid::as_raw).collect())
                .unwrap_or_else(|| vec![gid])
        });
        let (name, home) = match account {
            Some(account) => (account.name, account.dir),
            None => (uid.to_string(), spec.cwd.clone()),
        };
        Ok(Identity {
            uid,
            gid,
            switch_groups,
            name,
            home,
        })
    }
}

/// The clean environment of a service: a minimal base, then the spec's
/// variables (which may override the base, `PATH` included).
fn environment(spec: &ServiceSpec, identity: &Identity) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        (
            "HOME".to_owned(),
            identity.home.to_string_lossy().into_owned(),
        ),
        ("USER".to_owned(), identity.name.clone()),
        ("LOGNAME".to_owned(), identity.name.clone()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ]);
    env.extend(spec.env.clone());
    env
}

fn is_executable_file(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The absolute path of the program: as given when absolute, relative to
/// the working directory when it contains a `/`, else looked up in `PATH`.
fn resolve_program(program: &Path, cwd: &Path, path_var: &str) -> Result<PathBuf, StartError> {
    let bare_name = program.components().count() == 1 && !program.is_absolute();
    if !bare_name {
        let resolved: PathBuf = cwd
            .join(program)
            .components()
            .filter(|part| *part != Component::CurDir)
            .collect();
        if !resolved.exists() {
            return Err(StartError::ProgramNotFound { program: resolved });
        }
        if !is_executable_file(&resolved) {
            return Err(StartError::NotExecutable { program: resolved });
        }
        return Ok(resolved);
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(|| StartError::ProgramNotInPath {
            program: program.to_owned(),
            path: path_var.to_owned(),
        })
}

fn c_path(path: &Path) -> CString {
    // Specs are validated free of NUL bytes before they get here.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// Reports a failed setup step to the parent; returns the error for std,
/// which only carries the errno back.
fn report_step(pipe: RawFd, step: u8) -> io::Error {
    let error = io::Error::last_os_error();
    let mut message = [0u8; 5];
    message[0] = step;
    message[1..].copy_from_slice(&error.raw_os_error().unwrap_or(0).to_ne_bytes());
    // SAFETY: write(2) on a pipe we own, from a buffer on the stack.
    unsafe { libc::write(pipe, message.as_ptr().cast(), message.len()) };
    error
}

/// What the child reported through the pipe, if anything.
fn read_step(pipe: &OwnedFd) -> Option<(u8, io::Error)> {
    let mut message = [0u8; 5];
    // SAFETY: read(2) into a stack buffer of the given length.
    let read = unsafe { libc::read(pipe.as_raw_fd(), message.as_mut_ptr().cast(), message.len()) };
    if read != message.len() as isize {
        return None;
    }
    let errno = i32::from_ne_bytes([message[1], message[2], message[3], message[4]]);
    Some((message[0], io::Error::from_raw_os_error(errno)))
}

/// A pipe whose ends close on exec; the read end does not block.
fn step_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    Ok((read, write))
}

/// Starts the service's process and returns its pid. The process is not
/// waited for: the caller owns reaping it.
pub(super) fn spawn(spec: &ServiceSpec, log_rotate_bytes: u64) -> Result<u32, StartError> {
    let identity = Identity::resolve(spec)?;
    let env = environment(spec, &identity);
    let program = resolve_program(&spec.program, &spec.cwd, &env["PATH"])?;
    if !spec.cwd.is_dir() {
        return Err(StartError::NoWorkingDirectory {
            cwd: spec.cwd.clone(),
        });
    }
    let log_path = spec.cwd.join(&spec.log_file);
    let log = c_path(&log_path);
    let mut rotated_path = log_path.clone().into_os_string();
    rotated_path.push(".1");
    let rotated = c_path(Path::new(&rotated_path));
    let cwd = c_path(&spec.cwd);
    let switch = identity
        .switch_groups
        .clone()
        .map(|groups| (groups, identity.uid, identity.gid));
    let (step_read, step_write) = step_pipe().map_err(|source| StartError::Spawn { source })?;
    let pipe = step_write.as_raw_fd();
    let rotate_above = i64::try_from(log_rotate_bytes).unwrap_or(i64::MAX);

    let mut command = Command::new(&program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let setup = move || -> io::Result<()> {
        // SAFETY (whole block): only async-signal-safe system calls, on
        // data allocated before fork.
        unsafe {
            if libc::setsid() < 0 {
                return Err(report_step(pipe, STEP_SESSION));
            }
            if let Some((groups, uid, gid)) = &switch {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(*gid) < 0
                    || libc::setuid(*uid) < 0
                {
                    return Err(report_step(pipe, STEP_USER));
                }
            }
            if libc::chdir(cwd.as_ptr()) < 0 {
                return Err(report_step(pipe, STEP_CWD));
            }
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::stat(log.as_ptr(), &mut stat) == 0 && stat.st_size > rotate_above {
                // Best effort: a failed rotation only means a longer log.
                libc::rename(log.as_ptr(), rotated.as_ptr());
            }
            let flags =
                libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_NOCTTY | libc::O_CLOEXEC;
            let fd = libc::open(log.as_ptr(), flags, 0o640 as libc::c_uint);
            if fd < 0 || libc::dup2(fd, 1) < 0 || libc::dup2(fd, 2) < 0 {
                return Err(report_step(pipe, STEP_LOG));
            }
            libc::close(fd);
        }
        Ok(())
    };
    // SAFETY: `setup` is async-signal-safe (see above).
    unsafe { command.pre_exec(setup) };

    let result = command.spawn();
    drop(command);
    drop(step_write);
    match result {
        // Dropping `Child` neither kills nor waits: the supervisor reaps it.
        Ok(child) => Ok(child.id()),
        Err(source) => Err(match read_step(&step_read) {
            Some((STEP_SESSION, source)) => StartError::Session { source },
            Some((STEP_USER, source)) => StartError::SwitchUser {
                uid: identity.uid,
                gid: identity.gid,
                source,
            },
            Some((STEP_CWD, source)) => StartError::EnterWorkingDirectory {
                cwd: spec.cwd.clone(),
                uid: identity.uid,
                source,
            },
            Some((_, source)) => StartError::LogFile {
                path: log_path,
                uid: identity.uid,
                source,
            },
            None if source.raw_os_error() == Some(libc::ENOENT) => {
                StartError::MissingInterpreter { program }
            }
            None => StartError::Exec { program, source },
        }),
    }
}

/// Whether `text` can be passed to a process (no NUL byte).
pub(super) fn passable(text: &OsStr) -> bool {
    !text.as_bytes().contains(&0)
}
