//! The node's process supervisor: runs the services of every partition,
//! restarts them with backoff, stops them, and lets a restarted node take
//! over the processes a previous node left running.
//!
//! * Each service runs in its own session and process group (see
//!   `spawn.rs`): it survives the node, and a stop (SIGTERM, then SIGKILL
//!   after a grace period) reaches everything it forked.
//! * Its stdout and stderr go straight to its log file (never through the
//!   node, which may die); the log is rotated to `.1` when it exceeds
//!   10 MiB at a (re)start.
//! * One background task watches every service: each tick is one `poll`
//!   over the pidfds of all main processes, then `waitid` on those that
//!   exited. No thread per process, and an idle tick costs one system call.
//! * A small record per service in the state directory
//!   (`<state_dir>/<partition>/<service>.json`: spec, pid, start time) lets
//!   [`Supervisor::open`] adopt what is still running after a node restart
//!   instead of starting duplicates. `<state_dir>/.lock` is held while a
//!   supervisor is open, so two nodes never supervise the same services.
//!
//! Known limits: a process that leaves its service's process group (double
//! fork with `setsid`) is not tracked, which needs a cgroup per partition;
//! services must stay in the foreground. A node killed in the microseconds
//! between spawning a process and writing its record starts it again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

mod process;
mod record;
mod spawn;

use process::Process;
use record::{Record, RunRecord};

/// When a service whose main process exited is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// After any exit.
    #[default]
    Always,
    /// After a non-zero exit status, a death by signal, or an exit the node
    /// could not observe (the process was adopted).
    OnFailure,
    /// Never: the service stays [`ServiceState::Exited`].
    Never,
}

impl RestartPolicy {
    fn restarts_after(self, exit: ExitReason) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit != ExitReason::Code(0),
            RestartPolicy::Never => false,
        }
    }
}

/// A restart policy name that is not `always`, `on-failure` or `never`.
#[derive(Debug, thiserror::Error)]
#[error("unknown restart policy `{0}`: expected `always`, `on-failure` or `never`")]
pub struct UnknownRestartPolicy(pub String);

impl FromStr for RestartPolicy {
    type Err = UnknownRestartPolicy;

    /// Parses the spelling of software release manifests.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "always" => Ok(RestartPolicy::Always),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "never" => Ok(RestartPolicy::Never),
            other => Err(UnknownRestartPolicy(other.to_owned())),
        }
    }
}

/// Everything needed to run one service of a partition. Any change to any
/// field restarts the service at the next [`Supervisor::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Partition the service belongs to (`slappart3`).
    pub partition: String,
    /// Service name, unique within the partition (`redis`). Partition and
    /// service names use letters, digits, `_`, `-` and `.` and do not start
    /// with a dot.
    pub name: String,
    /// Absolute path, path relative to `cwd` (if it has a `/`), or a name
    /// looked up in the service's `PATH`.
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Added to (and overriding) a clean minimal environment: `PATH`,
    /// `HOME`, `USER`, `LOGNAME`, `LANG=C.UTF-8`.
    pub env: BTreeMap<String, String>,
    /// Working directory, absolute: the partition directory.
    pub cwd: PathBuf,
    /// `(uid, gid)` to run as; `None` runs as the node's own user. Switching
    /// needs a root node; uid 0 is refused.
    pub user: Option<(u32, u32)>,
    /// stdout and stderr are appended here (relative paths are relative to
    /// `cwd`). The file is opened as the service's user, so its directory
    /// must be writable by that user.
    pub log_file: PathBuf,
    /// What happens when the process exits.
    pub restart: RestartPolicy,
    /// Runs to completion once per spec: an exit with status 0 makes it
    /// [`ServiceState::Done`], never restarted. Other exits follow `restart`.
    /// What the process leaves behind in its process group is killed when
    /// it exits, so a oneshot must not start daemons. Stopping the partition
    /// forgets that it is done: it runs again when the partition restarts.
    pub oneshot: bool,
}

impl ServiceSpec {
    /// A long-running service restarted on any exit, with no arguments, no
    /// extra environment and the node's own user.
    pub fn new(
        partition: impl Into<String>,
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        cwd: impl Into<PathBuf>,
        log_file: impl Into<PathBuf>,
    ) -> ServiceSpec {
        ServiceSpec {
            partition: partition.into(),
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: cwd.into(),
            user: None,
            log_file: log_file.into(),
            restart: RestartPolicy::Always,
            oneshot: false,
        }
    }

    /// Hex sha256 of the spec's canonical JSON form.
    fn hash(&self) -> String {
        // Paths are checked to be UTF-8 by `validate`, so this cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }

    fn validate(&self, partition: &str) -> Result<(), SupervisorError> {
        let invalid = |reason: String| SupervisorError::InvalidSpec {
            partition: self.partition.clone(),
            name: self.name.clone(),
            reason,
        };
        if self.partition != partition {
            return Err(invalid(format!(
                "it belongs to partition `{}`, not `{partition}`",
                self.partition
            )));
        }
        if !valid_name(&self.name) {
            return Err(invalid(
                "names use letters, digits, `_`, `-`, `.` (not first), at most 100 of them"
                    .to_owned(),
            ));
        }
        if !self.cwd.is_absolute() {
            return Err(invalid(format!(
                "the working directory `{}` must be an absolute path",
                self.cwd.display()
            )));
        }
        if self.program.as_os_str().is_empty() {
            return Err(invalid("the program is empty".to_owned()));
        }
        for path in [&self.program, &self.cwd, &self.log_file] {
            if path.to_str().is_none() || !spawn::passable(path.as_os_str()) {
                return Err(invalid(format!(
                    "`{}` is not valid UTF-8 or contains a NUL byte",
                    path.display()
                )));
            }
        }
        let texts = self.args.iter().chain(self.env.values());
        if let Some(text) = texts
            .into_iter()
            .find(|text| !spawn::passable(OsStr::new(text)))
        {
            return Err(invalid(format!(
                "`{}` contains a NUL byte",
                text.escape_debug()
            )));
        }
        if let Some(key) = self
            .env
            .keys()
            .find(|key| key.is_empty() || key.contains('=') || !spawn::passable(OsStr::new(key)))
        {
            return Err(invalid(format!(
                "`{}` is not a valid environment variable name",
                key.escape_debug()
            )));
        }
        Ok(())
    }
}

/// Partition and service names become file names in the state directory.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'))
}

/// Why a service's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// It exited with this status.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It was not a child of this node (adopted after a node restart), so
    /// its exit status could not be collected.
    Unknown,
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Code(code) => write!(f, "exit status {code}"),
            ExitReason::Signal(signal) => match nix::sys::signal::Signal::try_from(*signal) {
                Ok(name) => write!(f, "killed by signal {signal} ({name})"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            ExitReason::Unknown => write!(f, "exited (status unknown: adopted process)"),
        }
    }
}

/// What a service is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ServiceState {
    /// Running for less than [`SupervisorOptions::startup`].
    Starting,
    /// Running.
    Running,
    /// Exited (or could not be restarted); started again at `until`.
    Backoff {
        /// When the next start is due.
        until: SystemTime,
    },
    /// Exited and not restarted, as its restart policy says.
    Exited {
        /// Why it ended.
        reason: ExitReason,
    },
    /// Could not be started by [`Supervisor::apply`] (see
    /// [`ServiceStatus::last_error`]); the next `apply` tries again.
    Failed,
    /// A oneshot that completed (exit status 0) for its current spec.
    Done,
    /// Being stopped.
    Stopping,
    /// Stopped by [`Supervisor::stop_partition`] or
    /// [`Supervisor::stop_all`]; the next `apply` starts it again.
    Stopped,
}

/// A snapshot of one service, as listed by [`Supervisor::status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// The partition the service belongs to.
    pub partition: String,
    /// The service name.
    pub name: String,
    /// Pid of its main process (also its process group id), when running.
    pub pid: Option<u32>,
    /// What it is doing.
    pub state: ServiceState,
    /// Automatic restarts since its spec last changed.
    pub restarts: u32,
    /// When it entered `state` (for a running service: when the process
    /// started).
    pub since: SystemTime,
    /// Whether the process was started by a previous node and adopted.
    pub adopted: bool,
    /// How its last process ended.
    pub last_exit: Option<ExitReason>,
    /// Why its last start failed, if it did.
    pub last_error: Option<String>,
}

/// Tunables; the defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// Time between SIGTERM and SIGKILL when stopping a service.
    pub grace: Duration,
    /// How often the background task looks for exits and due restarts.
    pub tick: Duration,
    /// Delay before the first restart after an exit; doubles at each
    /// further exit.
    pub backoff_initial: Duration,
    /// Longest delay between restarts.
    pub backoff_max: Duration,
    /// A process that ran at least this long resets the delay to
    /// `backoff_initial`.
    pub healthy_after: Duration,
    /// A process younger than this is reported as [`ServiceState::Starting`].
    pub startup: Duration,
    /// A log file larger than this at a (re)start is renamed to `<log>.1`.
    pub log_rotate_bytes: u64,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            grace: Duration::from_secs(10),
            tick: Duration::from_millis(100),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(10),
            startup: Duration::from_secs(1),
            log_rotate_bytes: 10 * 1024 * 1024,
        }
    }
}

/// Why a service could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The program path does not exist.
    #[error("program {program} does not exist")]
    ProgramNotFound {
        /// Resolved program path.
        program: PathBuf,
    },
    /// A bare program name was not found in `PATH`.
    #[error("program `{program}` not found in PATH={path}")]
    ProgramNotInPath {
        /// The name looked up.
        program: PathBuf,
        /// The `PATH` searched.
        path: String,
    },
    /// The program is a directory or has no execute permission.
    #[error("{program} is not an executable file (check its type and mode)")]
    NotExecutable {
        /// Resolved program path.
        program: PathBuf,
    },
    /// The working directory is missing.
    #[error("working directory {cwd} does not exist or is not a directory")]
    NoWorkingDirectory {
        /// The spec's `cwd`.
        cwd: PathBuf,
    },
    /// The spec asks for uid 0.
    #[error(
        "refusing to run a partition service as root (uid 0); leave `user` unset to run it as the node's own user"
    )]
    RootTarget,
    /// The node is not root and the spec asks for another user.
    #[error(
        "the node runs as uid {node_uid} and cannot start a service as uid {uid}, gid {gid}; run the node as root or leave `user` unset"
    )]
    CannotSwitchUser {
        /// Requested uid.
        uid: u32,
        /// Requested gid.
        gid: u32,
        /// The node's effective uid.
        node_uid: u32,
    },
    /// setgroups, setgid or setuid failed in the child.
    #[error("cannot switch to uid {uid}, gid {gid}: {source}")]
    SwitchUser {
        /// Requested uid.
        uid: u32,
        /// Requested gid.
        gid: u32,
        /// The system error.
        source: io::Error,
    },
    /// The service's user cannot enter its working directory.
    #[error("cannot enter working directory {cwd} as uid {uid}: {source}")]
    EnterWorkingDirectory {
        /// The spec's `cwd`.
        cwd: PathBuf,
        /// The service's uid.
        uid: u32,
        /// The system error.
        source: io::Error,
    },
    /// The log file cannot be opened for appending.
    #[error(
        "cannot open log file {path} for appending as uid {uid}: {source} (its directory must exist and be writable by that user)"
    )]
    LogFile {
        /// Resolved log path.
        path: PathBuf,
        /// The service's uid.
        uid: u32,
        /// The system error.
        source: io::Error,
    },
    /// setsid failed in the child.
    #[error("cannot start a new session: {source}")]
    Session {
        /// The system error.
        source: io::Error,
    },
    /// The program exists but exec reports it missing: the interpreter on
    /// its `#!` line does not exist.
    #[error("cannot execute {program}: the interpreter named on its #! line does not exist")]
    MissingInterpreter {
        /// Resolved program path.
        program: PathBuf,
    },
    /// exec (or fork) failed.
    #[error("cannot execute {program}: {source}")]
    Exec {
        /// Resolved program path.
        program: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The node could not prepare the start (pipe creation).
    #[error("cannot prepare to start the service: {source}")]
    Spawn {
        /// The system error.
        source: io::Error,
    },
}

/// A service [`Supervisor::apply`] could not start.
#[derive(Debug, thiserror::Error)]
#[error("{partition}/{name}: {error}")]
pub struct StartFailure {
    /// The partition of the service.
    pub partition: String,
    /// The service name.
    pub name: String,
    /// What went wrong.
    pub error: StartError,
}

/// Errors of the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// [`Supervisor::open`] was called outside a Tokio runtime.
    #[error(
        "Supervisor::open must be called within a Tokio runtime (it starts a background task)"
    )]
    NoRuntime,
    /// The state directory cannot be created, locked or read.
    #[error("cannot use the supervisor state directory {path}: {source}")]
    StateDir {
        /// The state directory.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// Another supervisor holds the state directory.
    #[error(
        "the supervisor state directory {path} is in use by another node process; stop it first (two supervisors would run every service twice)"
    )]
    StateDirLocked {
        /// The state directory.
        path: PathBuf,
    },
    /// A `/proc` file the supervisor relies on is unreadable.
    #[error("cannot read {path}: {source} (the supervisor needs /proc)")]
    Proc {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// A spec given to [`Supervisor::apply`] is unusable; nothing was changed.
    #[error("invalid service {partition}/{name}: {reason}")]
    InvalidSpec {
        /// The spec's partition.
        partition: String,
        /// The spec's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Some services could not be started; the others were applied.
    #[error("could not start {}", list_failures(.0))]
    StartFailed(Vec<StartFailure>),
    /// A record could not be written: the service runs, but a restarted
    /// node would not recognise it and would start it twice.
    #[error("cannot write the supervisor record {path}: {source} (a restarted node would start this service twice)")]
    Record {
        /// The record file.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The operation's task was cancelled because the runtime is shutting down.
    #[error("the supervisor operation was interrupted: the Tokio runtime is shutting down")]
    Interrupted,
}

fn list_failures(failures: &[StartFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The supervisor's view of one service.
struct Entry {
    spec: ServiceSpec,
    hash: String,
    state: EntryState,
    /// The main process, while one runs. Taken out by whoever stops it.
    process: Option<Process>,
    restarts: u32,
    since: SystemTime,
    last_exit: Option<ExitReason>,
    last_error: Option<String>,
    /// Delay before the next restart after an exit.
    next_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Running,
    Backoff {
        until: Instant,
        until_wall: SystemTime,
    },
    Exited(ExitReason),
    Failed,
    Done,
    Stopping,
    Stopped,
}

impl Entry {
    fn new(spec: ServiceSpec, hash: String, options: &SupervisorOptions) -> Entry {
        Entry {
            spec,
            hash,
            state: EntryState::Stopped,
            process: None,
            restarts: 0,
            since: SystemTime::now(),
            last_exit: None,
            last_error: None,
            next_delay: options.backoff_initial,
        }
    }

    fn set_state(&mut self, state: EntryState) {
        self.state = state;
        self.since = SystemTime::now();
    }

    /// Schedules the next start after the current delay, and doubles it.
    fn back_off(&mut self, options: &SupervisorOptions) -> Duration {
        let delay = self.next_delay;
        self.next_delay = (delay * 2).min(options.backoff_max);
        let now = SystemTime::now();
        self.state = EntryState::Backoff {
            until: Instant::now() + delay,
            until_wall: now + delay,
        };
        self.since = now;
        delay
    }

    /// What a restarted node needs to know; `None` while no process runs
    /// and no outcome is final (backoff, stopping, stopped), where the file
    /// written last (for backoff: the dead pid, so a restarted node starts
    /// the service as we would) stays the right one.
    fn record(&self, boot_id: &str) -> Option<Record> {
        let run = match (&self.process, self.state) {
            (Some(process), _) => RunRecord::Running {
                pid: process.pid() as i32,
                start_ticks: process.start_ticks(),
                boot_id: boot_id.to_owned(),
            },
            (None, EntryState::Done) => RunRecord::Done,
            (None, EntryState::Exited(reason)) => RunRecord::Exited { reason },
            (None, EntryState::Failed) => RunRecord::Failed,
            _ => return None,
        };
        Some(Record {
            version: record::VERSION,
            spec: self.spec.clone(),
            spec_hash: self.hash.clone(),
            restarts: self.restarts,
            run,
        })
    }

    fn status(&self, options: &SupervisorOptions) -> ServiceStatus {
        let state = match self.state {
            EntryState::Running => match &self.process {
                Some(process) if process.started().elapsed() < options.startup => {
                    ServiceState::Starting
                }
                _ => ServiceState::Running,
            },
            EntryState::Backoff { until_wall, .. } => ServiceState::Backoff { until: until_wall },
            EntryState::Exited(reason) => ServiceState::Exited { reason },
            EntryState::Failed => ServiceState::Failed,
            EntryState::Done => ServiceState::Done,
            EntryState::Stopping => ServiceState::Stopping,
            EntryState::Stopped => ServiceState::Stopped,
        };
        ServiceStatus {
            partition: self.spec.partition.clone(),
            name: self.spec.name.clone(),
            pid: self.process.as_ref().map(Process::pid),
            state,
            restarts: self.restarts,
            since: self
                .process
                .as_ref()
                .filter(|_| self.state == EntryState::Running)
                .map_or(self.since, Process::started_at),
            adopted: self.process.as_ref().is_some_and(Process::adopted),
            last_exit: self.last_exit,
            last_error: self.last_error.clone(),
        }
    }
}

/// Services by partition, then by name.
type Services = BTreeMap<String, BTreeMap<String, Entry>>;

struct Inner {
    state_dir: PathBuf,
    boot_id: String,
    options: SupervisorOptions,
    services: Mutex<Services>,
    /// Serialises `apply`/`stop_partition` per partition; held across
    /// awaits, hence an async mutex (the `services` lock never is).
    partition_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Released when the supervisor is dropped or detached.
    _state_lock: Flock<fs::File>,
}

/// Locks a std mutex, going on after a panic elsewhere: the supervised state
/// stays meaningful and the node must keep supervising.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The process supervisor of a node. See the module documentation.
pub struct Supervisor {
    inner: Arc<Inner>,
    /// The background task; taken when detaching.
    monitor: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("state_dir", &self.inner.state_dir)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Opens the supervisor with default options. `state_dir` keeps one small
    /// record per service (spec, pid, process start time from
    /// `/proc/<pid>/stat`) so that a restarted node adopts what still runs:
    /// a process is adopted when its pid is alive with the recorded start
    /// time in the same boot. A service whose process is gone is started
    /// again if its restart policy says so (the exit went unobserved), so
    /// services keep running across a node restart even when the master is
    /// unreachable. Must be called within a Tokio runtime.
    pub fn open(state_dir: &Path) -> Result<Supervisor, SupervisorError> {
        Supervisor::open_with(state_dir, SupervisorOptions::default())
    }

    /// [`Supervisor::open`] with explicit options.
    pub fn open_with(
        state_dir: &Path,
        options: SupervisorOptions,
    ) -> Result<Supervisor, SupervisorError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SupervisorError::NoRuntime)?;
        let state_dir_error = |source| SupervisorError::StateDir {
            path: state_dir.to_owned(),
            source,
        };
        fs::create_dir_all(state_dir).map_err(state_dir_error)?;
        // Records hold service environments, which may hold secrets.
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))
            .map_err(state_dir_error)?;
        let lock_file = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join(".lock"))
            .map_err(state_dir_error)?;
        let state_lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(SupervisorError::StateDirLocked {
                    path: state_dir.to_owned(),
                });
            }
            Err((_, errno)) => return Err(state_dir_error(errno.into())),
        };
        let boot_id = process::boot_id().map_err(|source| SupervisorError::Proc {
            path: "/proc/sys/kernel/random/boot_id".into(),
            source,
        })?;

        let mut services = Services::new();
        for record in record::load_all(state_dir).map_err(state_dir_error)? {
            let entry = Supervisor::restore(state_dir, &boot_id, &options, record);
            services
                .entry(entry.spec.partition.clone())
                .or_default()
                .insert(entry.spec.name.clone(), entry);
        }

        let inner = Arc::new(Inner {
            state_dir: state_dir.to_owned(),
            boot_id,
            options,
            services: Mutex::new(services),
            partition_locks: Mutex::new(HashMap::new()),
            _state_lock: state_lock,
        });
        let monitor = runtime.spawn(monitor(inner.clone()));
        Ok(Supervisor {
            inner,
            monitor: Mutex::new(Some(monitor)),
        })
    }

    /// Turns a record into an entry: adopted, finished, or due for a start.
    fn restore(
        state_dir: &Path,
        boot_id: &str,
        options: &SupervisorOptions,
        record: Record,
    ) -> Entry {
        let hash = record.spec.hash();
        let mut entry = Entry::new(record.spec, hash, options);
        entry.restarts = record.restarts;
        let (partition, name) = (entry.spec.partition.clone(), entry.spec.name.clone());
        match record.run {
            RunRecord::Running {
                pid,
                start_ticks,
                boot_id: recorded_boot,
            } => {
                let adopted = (recorded_boot == boot_id)
                    .then(|| Process::adopt(pid, start_ticks))
                    .flatten();
                if let Some(process) = adopted {
                    info!(partition, service = name, pid, "adopted running service");
                    entry.process = Some(process);
                    entry.state = EntryState::Running;
                    return entry;
                }
                // Died while no node was watching (or the machine rebooted).
                entry.last_exit = Some(ExitReason::Unknown);
                if entry.spec.restart.restarts_after(ExitReason::Unknown) {
                    info!(
                        partition,
                        service = name,
                        pid,
                        "service no longer running, starting it again"
                    );
                    entry.set_state(EntryState::Backoff {
                        until: Instant::now(),
                        until_wall: SystemTime::now(),
                    });
                } else {
                    info!(partition, service = name, pid, "service no longer running");
                    entry.set_state(EntryState::Exited(ExitReason::Unknown));
                    let saved = entry
                        .record(boot_id)
                        .map(|record| record::save(state_dir, &record));
                    if let Some(Err(err)) = saved {
                        warn!(partition, service = name, %err, "cannot update record");
                    }
                }
            }
            RunRecord::Done => entry.state = EntryState::Done,
            RunRecord::Exited { reason } => entry.state = EntryState::Exited(reason),
            RunRecord::Failed => entry.state = EntryState::Failed,
        }
        entry
    }

    /// Makes `services` the desired set of services of `partition`: starts
    /// the missing ones, restarts those whose spec changed, stops those no
    /// longer listed, and leaves unchanged ones alone (running, adopted, in
    /// backoff, exited or done). Services that failed to start or were
    /// stopped are started again. On [`SupervisorError::StartFailed`] every
    /// other service was applied. The work runs in its own task, so dropping
    /// the returned future does not leave it half done.
    pub async fn apply(
        &self,
        partition: &str,
        services: Vec<ServiceSpec>,
    ) -> Result<(), SupervisorError> {
        let inner = self.inner.clone();
        let partition = partition.to_owned();
        finish(tokio::spawn(async move {
            inner.apply(&partition, services).await
        }))
        .await
    }

    /// Stops every service of the partition: SIGTERM to each process group,
    /// SIGKILL after the grace period (10 s by default), and waits until the
    /// groups are empty. The services stay listed as
    /// [`ServiceState::Stopped`] and their records are removed.
    pub async fn stop_partition(&self, partition: &str) -> Result<(), SupervisorError> {
        let inner = self.inner.clone();
        let partition = partition.to_owned();
        finish(tokio::spawn(async move {
            inner.stop(&[partition]).await;
            Ok(())
        }))
        .await
    }

    /// Every service, ordered by partition and name.
    pub fn status(&self) -> Vec<ServiceStatus> {
        let services = lock(&self.inner.services);
        services
            .values()
            .flat_map(BTreeMap::values)
            .map(|entry| entry.status(&self.inner.options))
            .collect()
    }

    /// The services of one partition, ordered by name.
    pub fn status_of(&self, partition: &str) -> Vec<ServiceStatus> {
        let services = lock(&self.inner.services);
        services
            .get(partition)
            .into_iter()
            .flat_map(BTreeMap::values)
            .map(|entry| entry.status(&self.inner.options))
            .collect()
    }

    /// Shuts the supervisor down and leaves the services running, for a
    /// node that stops or upgrades itself: records are kept and the next
    /// [`Supervisor::open`] adopts the processes. Dropping a `Supervisor`
    /// does the same without waiting for the background task to end.
    pub async fn detach(self) {
        self.detach_ref().await;
    }

    /// [`Supervisor::detach`] for a supervisor shared behind an `Arc`: ends
    /// supervision (nothing is restarted any more) and keeps the records.
    /// The state directory stays locked until the last reference is dropped,
    /// so this is meant for a node about to exit.
    pub async fn detach_ref(&self) {
        let monitor = lock(&self.monitor).take();
        if let Some(monitor) = monitor {
            monitor.abort();
            let _ = monitor.await;
            info!(state_dir = %self.inner.state_dir.display(), "supervisor detached, services left running");
        }
    }

    /// Stops every service of every partition, as [`Supervisor::stop_partition`]
    /// does, all at once (used on Ctrl-C by `slapos up`, and by tests).
    pub async fn stop_all(&self) {
        let inner = self.inner.clone();
        let partitions: Vec<String> = lock(&inner.services).keys().cloned().collect();
        let _ = finish(tokio::spawn(async move {
            inner.stop(&partitions).await;
            Ok(())
        }))
        .await;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(monitor) = lock(&self.monitor).take() {
            monitor.abort();
        }
    }
}

/// Awaits an operation's task, passing its panics on.
async fn finish(task: JoinHandle<Result<(), SupervisorError>>) -> Result<(), SupervisorError> {
    match task.await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(SupervisorError::Interrupted),
    }
}

impl Inner {
    fn partition_lock(&self, partition: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.partition_locks)
            .entry(partition.to_owned())
            .or_default()
            .clone()
    }

    /// Writes the record of `entry` when it has something new to say.
    /// Records are removed only by `apply` and `stop`.
    fn save(&self, entry: &Entry) -> Result<(), SupervisorError> {
        let (partition, name) = (&entry.spec.partition, &entry.spec.name);
        let Some(record) = entry.record(&self.boot_id) else {
            return Ok(());
        };
        let result = record::save(&self.state_dir, &record);
        result.map_err(|source| SupervisorError::Record {
            path: record::path(&self.state_dir, partition, name),
            source,
        })
    }

    /// Starts the process of `entry`; `automatic` counts it as a restart.
    fn start(&self, entry: &mut Entry, automatic: bool) -> Result<(), StartError> {
        let (partition, name) = (&entry.spec.partition, &entry.spec.name);
        let pid = spawn::spawn(&entry.spec, self.options.log_rotate_bytes)?;
        info!(
            partition,
            service = name,
            pid,
            restart = automatic,
            "started"
        );
        entry.process = Some(Process::spawned(pid));
        entry.last_error = None;
        if automatic {
            entry.restarts += 1;
        }
        entry.set_state(EntryState::Running);
        Ok(())
    }

    async fn apply(
        &self,
        partition: &str,
        services: Vec<ServiceSpec>,
    ) -> Result<(), SupervisorError> {
        if !valid_name(partition) {
            return Err(SupervisorError::InvalidSpec {
                partition: partition.to_owned(),
                name: String::new(),
                reason: "partition names use letters, digits, `_`, `-`, `.` (not first)".to_owned(),
            });
        }
        let mut desired = BTreeMap::new();
        for spec in services {
            spec.validate(partition)?;
            if desired.contains_key(&spec.name) {
                return Err(SupervisorError::InvalidSpec {
                    partition: partition.to_owned(),
                    name: spec.name,
                    reason: "listed twice".to_owned(),
                });
            }
            let hash = spec.hash();
            desired.insert(spec.name.clone(), (spec, hash));
        }
        let partition_lock = self.partition_lock(partition);
        let _serialised = partition_lock.lock().await;

        // Take the processes to stop out of their entries, so the monitor
        // does not restart them when they exit.
        let mut to_stop = Vec::new();
        {
            let mut services = lock(&self.services);
            for (name, entry) in services.entry(partition.to_owned()).or_default() {
                let obsolete = desired
                    .get(name)
                    .is_none_or(|(_, hash)| *hash != entry.hash);
                if obsolete {
                    if let Some(process) = entry.process.take() {
                        info!(
                            partition,
                            service = name,
                            pid = process.pid(),
                            "stopping (removed or changed)"
                        );
                        to_stop.push(process);
                    }
                    entry.set_state(EntryState::Stopping);
                }
            }
        }
        process::terminate(to_stop, self.options.grace).await;

        let mut failures = Vec::new();
        let mut record_error = None;
        {
            let mut services = lock(&self.services);
            let entries = services.entry(partition.to_owned()).or_default();
            let removed: Vec<String> = entries
                .keys()
                .filter(|name| !desired.contains_key(*name))
                .cloned()
                .collect();
            for name in removed {
                entries.remove(&name);
                if let Err(err) = record::remove(&self.state_dir, partition, &name) {
                    warn!(partition, service = name, %err, "cannot remove record");
                }
            }
            for (name, (spec, hash)) in desired {
                let unchanged = entries.get(&name).is_some_and(|entry| entry.hash == hash);
                if !unchanged {
                    entries.insert(name.clone(), Entry::new(spec, hash, &self.options));
                }
                let entry = entries.get_mut(&name).expect("present or just inserted");
                if unchanged && !matches!(entry.state, EntryState::Failed | EntryState::Stopped) {
                    continue;
                }
                entry.next_delay = self.options.backoff_initial;
                if let Err(error) = self.start(entry, false) {
                    error!(partition, service = name, %error, "cannot start service");
                    entry.last_error = Some(error.to_string());
                    entry.set_state(EntryState::Failed);
                    failures.push(StartFailure {
                        partition: partition.to_owned(),
                        name,
                        error,
                    });
                }
                if let Err(err) = self.save(entry) {
                    error!(%err, "cannot save record");
                    record_error.get_or_insert(err);
                }
            }
            if entries.is_empty() {
                services.remove(partition);
            }
        }
        if !failures.is_empty() {
            return Err(SupervisorError::StartFailed(failures));
        }
        record_error.map_or(Ok(()), Err)
    }

    /// Stops every service of `partitions` together (one grace period for
    /// all), leaving them `Stopped` without records.
    async fn stop(&self, partitions: &[String]) {
        let sorted: BTreeSet<&String> = partitions.iter().collect();
        let locks: Vec<_> = sorted
            .iter()
            .map(|partition| self.partition_lock(partition))
            .collect();
        let mut _serialised = Vec::with_capacity(locks.len());
        for partition_lock in &locks {
            _serialised.push(partition_lock.lock().await);
        }

        let mut to_stop = Vec::new();
        {
            let mut services = lock(&self.services);
            for partition in &sorted {
                for (name, entry) in services.get_mut(*partition).into_iter().flatten() {
                    if let Some(process) = entry.process.take() {
                        info!(partition = %partition, service = name, pid = process.pid(), "stopping");
                        to_stop.push(process);
                    }
                    entry.set_state(EntryState::Stopping);
                }
            }
        }
        process::terminate(to_stop, self.options.grace).await;
        {
            let mut services = lock(&self.services);
            for partition in &sorted {
                for (name, entry) in services.get_mut(*partition).into_iter().flatten() {
                    entry.set_state(EntryState::Stopped);
                    if let Err(err) = record::remove(&self.state_dir, partition, name) {
                        warn!(partition = %partition, service = name, %err, "cannot remove record");
                    }
                }
            }
        }
    }

    /// One pass of the monitor: notices exits, applies restart policies and
    /// starts what is due.
    fn tick(&self, poll_fds: &mut Vec<libc::pollfd>) {
        let mut services = lock(&self.services);

        // One poll over every pidfd tells which processes exited.
        poll_fds.clear();
        for entry in services.values().flat_map(BTreeMap::values) {
            if let Some(fd) = entry.process.as_ref().and_then(Process::pidfd) {
                poll_fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        let polled = poll_fds.is_empty()
            // SAFETY: a valid, initialised pollfd array; zero timeout.
            || unsafe { libc::poll(poll_fds.as_mut_ptr(), poll_fds.len() as libc::nfds_t, 0) } >= 0;
        let mut readiness = poll_fds.iter();

        let now = Instant::now();
        // Same iteration order as above: nothing was inserted or removed.
        for entry in services.values_mut().flat_map(BTreeMap::values_mut) {
            if let Some(process) = &entry.process {
                let may_have_exited = match process.pidfd() {
                    Some(_) => {
                        let ready = readiness.next().is_some_and(|fd| fd.revents != 0);
                        ready || !polled
                    }
                    // Without a pidfd, ask every tick.
                    None => true,
                };
                if let Some(reason) = may_have_exited.then(|| process.try_exit()).flatten() {
                    self.on_exit(entry, reason, now);
                }
            }
            if matches!(entry.state, EntryState::Backoff { until, .. } if until <= now) {
                self.restart(entry);
            }
        }
    }

    fn on_exit(&self, entry: &mut Entry, reason: ExitReason, now: Instant) {
        let Some(process) = entry.process.take() else {
            return;
        };
        let (partition, name) = (entry.spec.partition.clone(), entry.spec.name.clone());
        let ran_for = now.saturating_duration_since(process.started());
        entry.last_exit = Some(reason);
        if entry.spec.oneshot && reason == ExitReason::Code(0) {
            info!(partition, service = name, "oneshot done");
            entry.set_state(EntryState::Done);
        } else if entry.spec.restart.restarts_after(reason) {
            if ran_for >= self.options.healthy_after {
                entry.next_delay = self.options.backoff_initial;
            }
            let delay = entry.back_off(&self.options);
            warn!(
                partition,
                service = name,
                pid = process.pid(),
                %reason,
                delay_ms = delay.as_millis() as u64,
                "service exited, restarting after delay"
            );
            // The record keeps the dead pid: a node restarted meanwhile
            // will not adopt it and starts the service, as we would.
            return;
        } else {
            info!(partition, service = name, pid = process.pid(), %reason, "service exited, not restarted");
            entry.set_state(EntryState::Exited(reason));
        }
        if let Err(err) = self.save(entry) {
            error!(%err, "cannot save record");
        }
    }

    fn restart(&self, entry: &mut Entry) {
        if let Err(error) = self.start(entry, true) {
            let delay = entry.back_off(&self.options);
            error!(
                partition = entry.spec.partition,
                service = entry.spec.name,
                %error,
                delay_ms = delay.as_millis() as u64,
                "cannot restart service, retrying after delay"
            );
            entry.last_error = Some(error.to_string());
            return;
        }
        if let Err(err) = self.save(entry) {
            error!(%err, "cannot save record");
        }
    }
}

/// The background task: one tick every `options.tick` for all services.
async fn monitor(inner: Arc<Inner>) {
    let mut interval = tokio::time::interval(inner.options.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll_fds = Vec::new();
    loop {
        interval.tick().await;
        // A bug in one tick must not end supervision of every service.
        let ticked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.tick(&mut poll_fds)));
        if ticked.is_err() {
            error!("supervisor tick panicked; carrying on");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        use ExitReason::*;
        assert!(RestartPolicy::Always.restarts_after(Code(0)));
        assert!(!RestartPolicy::OnFailure.restarts_after(Code(0)));
        assert!(RestartPolicy::OnFailure.restarts_after(Code(3)));
        assert!(RestartPolicy::OnFailure.restarts_after(Signal(9)));
        assert!(RestartPolicy::OnFailure.restarts_after(Unknown));
        assert!(!RestartPolicy::Never.restarts_after(Signal(9)));
        assert_eq!(
            "on-failure".parse::<RestartPolicy>().unwrap(),
            RestartPolicy::OnFailure
        );
        assert!("sometimes".parse::<RestartPolicy>().is_err());
    }

    #[test]
    fn names_are_file_name_safe() {
        assert!(valid_name("slappart3"));
        assert!(valid_name("redis-6.2_main"));
        for bad in ["", ".hidden", "a/b", "..", "x y", &"n".repeat(101)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn hash_follows_every_field() {
        let spec = ServiceSpec::new("slappart0", "web", "/bin/true", "/srv", "web.log");
        let mut changed = spec.clone();
        changed.env.insert("PORT".into(), "8080".into());
        assert_eq!(spec.hash(), spec.clone().hash());
        assert_ne!(spec.hash(), changed.hash());
    }

    #[test]
    fn rejects_bad_specs() {
        let spec = ServiceSpec::new("slappart0", "web", "/bin/true", "/srv", "web.log");
        assert!(spec.validate("slappart0").is_ok());
        assert!(spec.validate("slappart1").is_err());
        let mut relative = spec.clone();
        relative.cwd = "srv".into();
        assert!(relative.validate("slappart0").is_err());
        let mut nul = spec.clone();
        nul.args.push("a\0b".into());
        assert!(nul.validate("slappart0").is_err());
        let mut bad_env = spec;
        bad_env.env.insert("A=B".into(), "x".into());
        assert!(bad_env.validate("slappart0").is_err());
    }

    #[test]
    fn exit_reasons_read_well() {
        assert_eq!(ExitReason::Code(2).to_string(), "exit status 2");
        assert_eq!(
            ExitReason::Signal(9).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
