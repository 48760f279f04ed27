//! Handles on supervised processes: their identity (pid + start time, so a
//! recycled pid is never mistaken for a service), exit detection that works
//! for our own children and for processes adopted from a previous node
//! alike, and signals to whole process groups.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tracing::warn;

use super::ExitReason;

/// How long `terminate` waits after SIGKILL before giving up on processes
/// that do not die (uninterruptible sleep on a dead NFS server, …).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The fields of `/proc/<pid>/stat` the supervisor relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcStat {
    /// One-letter state: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: u8,
    pub pgrp: i32,
    /// Start time in clock ticks since boot (field 22).
    pub start_ticks: u64,
}

impl ProcStat {
    /// A zombie or dead process: it has exited, only its pid remains.
    pub fn has_exited(&self) -> bool {
        matches!(self.state, b'Z' | b'X')
    }
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted from the last `)`.
pub(super) fn parse_stat(text: &str) -> Option<ProcStat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    // Fields 6 to 21 (session … itrealvalue), then starttime.
    let start_ticks = fields.nth(16)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        start_ticks,
    })
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub(super) fn read_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The kernel's boot id: start times are only comparable within one boot.
pub(super) fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// Wall-clock time at which a process started, from its start ticks.
fn wall_clock_of(start_ticks: u64) -> SystemTime {
    static BOOT: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    let boot = BOOT.get_or_init(|| {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let btime = stat
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|ticks| u64::try_from(ticks).ok())
            .filter(|&ticks| ticks > 0)?;
        Some((btime, ticks_per_second))
    });
    match boot {
        Some((btime, ticks_per_second)) => {
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(*btime)
                + Duration::from_millis(start_ticks * 1000 / ticks_per_second)
        }
        None => SystemTime::now(),
    }
}

/// A pidfd pins the identity of a process and becomes readable when it
/// exits, even when it is not our child (Linux ≥ 5.3).
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is owned by nobody else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is not shared.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The main process of a running service. Dropping it leaves the process
/// alone (that is how the node detaches).
#[derive(Debug)]
pub(super) struct Process {
    pid: Pid,
    start_ticks: u64,
    /// `None` when pidfds are unavailable (old kernel, seccomp, fd limit):
    /// exits are then found by polling.
    pidfd: Option<OwnedFd>,
    started: Instant,
    started_at: SystemTime,
    adopted: bool,
}

impl Process {
    /// Wraps a child we just spawned (it is our child, so its pid cannot be
    /// recycled before we reap it).
    pub fn spawned(pid: u32) -> Process {
        let pid = pid as i32;
        Process {
            pid: Pid::from_raw(pid),
            start_ticks: read_stat(pid).map_or(0, |stat| stat.start_ticks),
            pidfd: pidfd_open(pid).ok(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            adopted: false,
        }
    }

    /// Adopts the process recorded as `pid` if it is still the same one:
    /// alive, started at `start_ticks`, and leader of its own process group
    /// (as every service we start is).
    pub fn adopt(pid: i32, start_ticks: u64) -> Option<Process> {
        if pid <= 0 {
            return None;
        }
        // Open the pidfd before checking, so the checked process is the one
        // the pidfd refers to.
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return None,
            Err(_) => None,
        };
        let stat = read_stat(pid)?;
        if stat.start_ticks != start_ticks || stat.pgrp != pid || stat.has_exited() {
            return None;
        }
        let started_at = wall_clock_of(start_ticks);
        let age = SystemTime::now()
            .duration_since(started_at)
            .unwrap_or_default();
        Some(Process {
            pid: Pid::from_raw(pid),
            start_ticks,
            pidfd,
            started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            started_at,
            adopted: true,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    pub fn start_ticks(&self) -> u64 {
        self.start_ticks
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pidfd(&self) -> Option<RawFd> {
        self.pidfd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether the process has exited; if so, kills what is left of its
    /// process group (so a restart never runs beside leftovers of the
    /// previous run), reaps it and says why it exited.
    pub fn try_exit(&self) -> Option<ExitReason> {
        let reason = match peek_exit(self.pid) {
            Ok(Some(reason)) => reason,
            Ok(None) => return None,
            // Not our child: adopted from a previous node.
            Err(Errno::ECHILD) if self.has_exited_elsewhere() => ExitReason::Unknown,
            Err(Errno::ECHILD) => return None,
            Err(err) => {
                warn!(pid = self.pid.as_raw(), %err, "waitid failed");
                return None;
            }
        };
        // For our own child the unreaped zombie still owns the group id, so
        // this cannot reach an unrelated group. For an adopted process init
        // may already have reaped it; the id could then only be reused
        // after every member died and the pid space wrapped around.
        let _ = killpg(self.pid, Signal::SIGKILL);
        self.reap();
        Some(reason)
    }

    /// Exit check for a process that is not our child.
    fn has_exited_elsewhere(&self) -> bool {
        if let Some(fd) = &self.pidfd {
            let mut poll_fd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, zero timeout.
            let ready = unsafe { libc::poll(&mut poll_fd, 1, 0) };
            return ready > 0 && poll_fd.revents != 0;
        }
        match read_stat(self.pid.as_raw()) {
            None => true,
            Some(stat) => stat.start_ticks != self.start_ticks || stat.has_exited(),
        }
    }

    /// Collects the exit status if the process is our child and has exited.
    fn reap(&self) {
        let _ = nix::sys::wait::waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
}

/// `waitid(WNOWAIT)`: reports the exit of our child without reaping it, so
/// its pid (and process group id) stays reserved while we clean up.
fn peek_exit(pid: Pid) -> Result<Option<ExitReason>, Errno> {
    // SAFETY: zeroed siginfo_t is a valid output buffer for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: valid pointer to a siginfo_t we own.
    let result = unsafe { libc::waitid(libc::P_PID, pid.as_raw() as libc::id_t, &mut info, flags) };
    if result < 0 {
        return Err(Errno::last());
    }
    // SAFETY: waitid filled `info` (or left it zeroed: si_pid == 0).
    let (child, status) = unsafe { (info.si_pid(), info.si_status()) };
    if child == 0 {
        return Ok(None);
    }
    Ok(match info.si_code {
        libc::CLD_EXITED => Some(ExitReason::Code(status)),
        libc::CLD_KILLED | libc::CLD_DUMPED => Some(ExitReason::Signal(status)),
        _ => None,
    })
}

/// Process groups that still have a live (non-zombie) member. Zombies are
/// ignored: where pid 1 does not reap orphans (some containers), they would
/// otherwise keep a group "alive" forever.
fn live_groups() -> HashSet<i32> {
    let mut groups = HashSet::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return groups;
    };
    let mut text = String::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        text.clear();
        let read = fs::File::open(format!("/proc/{pid}/stat"))
            .and_then(|mut file| file.read_to_string(&mut text));
        if read.is_err() {
            continue;
        }
        if let Some(stat) = parse_stat(&text).filter(|stat| !stat.has_exited()) {
            groups.insert(stat.pgrp);
        }
    }
    groups
}

/// Stops services: SIGTERM (and SIGCONT, for stopped ones) to each process
/// group, SIGKILL to the groups still alive after `grace`, and waits until
/// every group is empty.
pub(super) async fn terminate(mut processes: Vec<Process>, grace: Duration) {
    if processes.is_empty() {
        return;
    }
    for process in &processes {
        let _ = killpg(process.pid, Signal::SIGTERM);
        let _ = killpg(process.pid, Signal::SIGCONT);
    }
    let begin = Instant::now();
    let mut pause = Duration::from_millis(5);
    let mut killed = false;
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
        // Members are found by scanning /proc because the leader, kept as an
        // unreaped zombie until the end, reserves the group id.
        let live = live_groups();
        processes.retain(|process| {
            let alive = live.contains(&process.pid.as_raw());
            if !alive {
                process.reap();
            }
            alive
        });
        if processes.is_empty() {
            return;
        }
        let elapsed = begin.elapsed();
        if !killed && elapsed >= grace {
            for process in &processes {
                warn!(
                    pid = process.pid.as_raw(),
                    grace_ms = grace.as_millis() as u64,
                    "still running after SIGTERM, sending SIGKILL"
                );
                let _ = killpg(process.pid, Signal::SIGKILL);
            }
            killed = true;
        } else if killed && elapsed >= grace + KILL_WAIT {
            for process in &processes {
                warn!(
                    pid = process.pid.as_raw(),
                    "process group survives SIGKILL (uninterruptible sleep?), giving up"
                );
                process.reap();
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let text = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 120 0 0 0 \
                    1 2 0 0 20 0 1 0 987654 10000 100 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: b'S',
                pgrp: 4242,
                start_ticks: 987654
            })
        );
        assert_eq!(parse_stat("12 (truncated) S 1"), None);
    }

    #[test]
    fn reads_own_stat() {
        let own = read_stat(std::process::id() as i32).expect("own /proc entry");
        assert!(!own.has_exited());
        assert!(own.start_ticks > 0);
    }
}
