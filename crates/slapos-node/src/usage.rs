//! Metering: what each partition consumes (CPU time, memory and disk
//! integrated over time, running time), sampled every `metering_interval`
//! seconds into a journal on disk, closed into reports that are sent to the
//! master (`slapos node report`, and `slapos node run` every
//! `report_interval`).
//!
//! The partitions have no cgroup of their own (the supervisor starts each
//! service in its own session), so a partition's processes are those of its
//! services' sessions, read from /proc, plus, when the partition has its own
//! Unix user, every process of that user. CPU is counted as deltas of
//! utime+stime+cutime+cstime per process, keyed by pid and start time (a
//! recycled pid is another process); when a process is reaped by a parent
//! that is also measured, the parent's cutime grows by what was already
//! counted for the child, so that part is taken off the parent's delta.
//!
//! The journal (`<instance_root>/.slapos-metering/journal.json`) holds the
//! open periods, the processes last seen and the pending reports, and is
//! replaced atomically (temporary file, fsync, rename, fsync of the
//! directory) after every sample, under an exclusive lock shared with
//! `slapos node report`. Closing a period and making it a pending report is
//! one such replacement, so a crash never loses a closed period nor counts
//! it twice; a report is removed only once the master acknowledged it, and
//! the master records a report id once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slapos_proto::usage::{InstanceRef, UsageEntry, UsageReport};

use crate::config::NodeConfig;
use crate::supervisor::Supervisor;

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("metering journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metering journal {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// One process at one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcSample {
    /// `pid:starttime`: the same key is the same process.
    pub key: String,
    pub pid: i32,
    pub ppid: i32,
    pub partition: String,
    /// utime + stime + cutime + cstime, in clock ticks.
    pub ticks: u64,
    /// cutime + cstime alone: what the process's reaped children used.
    pub child_ticks: u64,
    pub rss_bytes: u64,
}

/// What one sample saw.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Microseconds since the epoch.
    pub at: i64,
    pub processes: Vec<ProcSample>,
    /// Measured partitions (those with services) and the instance each holds, when known.
    pub partitions: BTreeMap<String, Option<InstanceRef>>,
    /// Size of each partition's directory, bytes.
    pub disk_bytes: BTreeMap<String, u64>,
    /// Processes seen before, missing from this sample but still running
    /// (not attributed this time, e.g. while a restarted node adopts its
    /// services): their baseline is kept so their past CPU is not counted again.
    pub still_alive: BTreeSet<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ProcSeen {
    pid: i32,
    ppid: i32,
    partition: String,
    ticks: u64,
    #[serde(default)]
    child_ticks: u64,
}

/// A partition's consumption since its period started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OpenPeriod {
    pub start: i64,
    #[serde(default)]
    pub instance: Option<InstanceRef>,
    pub cpu_micros: i64,
    pub memory_byte_seconds: i64,
    pub disk_byte_seconds: i64,
    pub running_micros: i64,
}

impl OpenPeriod {
    fn is_empty(&self) -> bool {
        self.cpu_micros == 0
            && self.memory_byte_seconds == 0
            && self.disk_byte_seconds == 0
            && self.running_micros == 0
    }

    fn entry(&self, partition: &str, end: i64) -> UsageEntry {
        UsageEntry {
            partition: partition.to_string(),
            report_id: None,
            instance: self.instance.clone(),
            period_start: self.start,
            period_end: end,
            cpu_micros: self.cpu_micros,
            memory_byte_seconds: self.memory_byte_seconds,
            disk_byte_seconds: self.disk_byte_seconds,
            running_seconds: (self.running_micros + 500_000) / 1_000_000,
        }
    }
}

/// The metering state kept on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Journal {
    /// When the last sample was taken (µs since the epoch).
    pub sampled_at: Option<i64>,
    processes: BTreeMap<String, ProcSeen>,
    pub open: BTreeMap<String, OpenPeriod>,
    /// Periods ended early (the partition changed instance), for the next report.
    pub closed: Vec<UsageEntry>,
    /// Reports not yet acknowledged by the master, oldest first.
    pub pending: Vec<UsageReport>,
    /// How many reports this journal created (for tests and status).
    #[serde(default)]
    pub reports_created: u64,
}

fn scaled(amount: u64, micros: i64) -> i64 {
    let v = amount as u128 * micros.max(0) as u128 / 1_000_000;
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Journal {
    /// Adds what happened since the previous sample. `max_gap` bounds the
    /// time integrated at once (µs), so a node that was down long does not
    /// extrapolate one sample over the whole outage.
    pub fn apply(&mut self, s: &Sample, ticks_per_second: u64, max_gap: i64) {
        let dt = match self.sampled_at {
            Some(prev) => (s.at - prev).clamp(0, max_gap),
            None => 0,
        };
        let tps = ticks_per_second.max(1);
        for (partition, instance) in &s.partitions {
            let period = self
                .open
                .entry(partition.clone())
                .or_insert_with(|| OpenPeriod {
                    start: s.at,
                    instance: instance.clone(),
                    ..Default::default()
                });
            match (instance, &period.instance) {
                (Some(new), Some(old)) if new != old => {
                    // Another instance now: what was measured is the old one's.
                    if !period.is_empty() && s.at > period.start {
                        self.closed.push(period.entry(partition, s.at));
                    }
                    *period = OpenPeriod {
                        start: s.at,
                        instance: Some(new.clone()),
                        ..Default::default()
                    };
                }
                (Some(new), None) => period.instance = Some(new.clone()),
                _ => {}
            }
        }
        // Children gone since the last sample: if their measured parent
        // reaped them, the ticks already counted for them reappear in its
        // cutime (not if it lets them be reaped automatically).
        let current: BTreeMap<&str, &ProcSample> =
            s.processes.iter().map(|p| (p.key.as_str(), p)).collect();
        let mut already: BTreeMap<&str, u64> = BTreeMap::new();
        for (key, gone) in &self.processes {
            if current.contains_key(key.as_str()) || s.still_alive.contains(key) {
                continue;
            }
            let parent = s
                .processes
                .iter()
                .find(|p| p.pid == gone.ppid && self.processes.contains_key(&p.key));
            if let Some(parent) = parent {
                *already.entry(parent.key.as_str()).or_default() += gone.ticks;
            }
        }
        let mut live: BTreeSet<&str> = BTreeSet::new();
        for p in &s.processes {
            let (before, children_before) = self
                .processes
                .get(&p.key)
                .map_or((0, 0), |seen| (seen.ticks, seen.child_ticks));
            let own = p.ticks.saturating_sub(p.child_ticks);
            let own_before = before.saturating_sub(children_before);
            let children = p.child_ticks.saturating_sub(children_before);
            let counted = already.get(p.key.as_str()).copied().unwrap_or(0);
            let delta = own.saturating_sub(own_before) + children.saturating_sub(counted);
            if let Some(period) = self.open.get_mut(&p.partition) {
                let micros = delta as u128 * 1_000_000 / tps as u128;
                period.cpu_micros = period
                    .cpu_micros
                    .saturating_add(i64::try_from(micros).unwrap_or(i64::MAX));
                period.memory_byte_seconds = period
                    .memory_byte_seconds
                    .saturating_add(scaled(p.rss_bytes, dt));
                live.insert(p.partition.as_str());
            }
        }
        for (partition, period) in self.open.iter_mut() {
            if live.contains(partition.as_str()) {
                period.running_micros += dt;
            }
            if let Some(bytes) = s.disk_bytes.get(partition) {
                period.disk_byte_seconds =
                    period.disk_byte_seconds.saturating_add(scaled(*bytes, dt));
            }
        }
        self.processes.retain(|key, _| s.still_alive.contains(key));
        self.processes.extend(s.processes.iter().map(|p| {
            (
                p.key.clone(),
                ProcSeen {
                    pid: p.pid,
                    ppid: p.ppid,
                    partition: p.partition.clone(),
                    ticks: p.ticks,
                    child_ticks: p.child_ticks,
                },
            )
        }));
        self.sampled_at = Some(s.at.max(self.sampled_at.unwrap_or(0)));
    }

    /// Ends every open period at the last sample and makes a pending report
    /// of them (`None` when nothing was consumed). Partitions no longer
    /// measured are dropped once reported.
    pub fn close(&mut self, report_id: String) -> Option<&UsageReport> {
        let end = self.sampled_at?;
        let mut records: Vec<UsageEntry> = std::mem::take(&mut self.closed);
        let measured: BTreeSet<String> = self
            .processes
            .values()
            .map(|p| p.partition.clone())
            .collect();
        let mut drop = Vec::new();
        for (partition, period) in self.open.iter_mut() {
            if end > period.start && !period.is_empty() {
                records.push(period.entry(partition, end));
            }
            if !measured.contains(partition) {
                drop.push(partition.clone());
            }
            *period = OpenPeriod {
                start: end,
                instance: period.instance.clone(),
                ..Default::default()
            };
        }
        for partition in drop {
            self.open.remove(&partition);
        }
        if records.is_empty() {
            return None;
        }
        self.reports_created += 1;
        self.pending.push(UsageReport {
            report_id: Some(report_id),
            records,
        });
        self.pending.last()
    }

    /// Forgets an acknowledged report.
    pub fn acknowledge(&mut self, report_id: &str) {
        self.pending
            .retain(|r| r.report_id.as_deref() != Some(report_id));
    }
}

/// A random report id, UUID-shaped (version 4).
pub fn new_report_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The journal directory and its lock.
#[derive(Debug, Clone)]
pub struct JournalDir {
    pub dir: PathBuf,
}

/// An exclusive lock on the journal, released on drop.
struct Locked(std::fs::File);

impl Drop for Locked {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor this value owns.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl JournalDir {
    pub fn of(config: &NodeConfig) -> JournalDir {
        JournalDir {
            dir: config.instance_root.join(".slapos-metering"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("journal.json")
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> MeterError {
        let path = path.to_path_buf();
        move |source| MeterError::Io { path, source }
    }

    fn lock(&self) -> Result<Locked, MeterError> {
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let path = self.dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(self.io(&path))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(MeterError::Io {
                path,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Locked(file))
    }

    pub fn load(&self) -> Result<Journal, MeterError> {
        let path = self.path();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| MeterError::Corrupt {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(e) => Err(MeterError::Io { path, source: e }),
        }
    }

    fn save(&self, journal: &Journal) -> Result<(), MeterError> {
        let path = self.path();
        let tmp = self.dir.join("journal.json.tmp");
        let text = serde_json::to_vec(journal).map_err(|e| MeterError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(self.io(&tmp))?;
        f.write_all(&text).map_err(self.io(&tmp))?;
        f.sync_all().map_err(self.io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(self.io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io(&self.dir))
    }

    /// Loads the journal under the lock, without changing it.
    pub fn read(&self) -> Result<Journal, MeterError> {
        let _lock = self.lock()?;
        self.load()
    }

    /// Loads the journal under the lock, changes it and saves it. A journal
    /// that cannot be read is set aside (`journal.json.corrupt-<µs>`, for
    /// inspection) and metering starts afresh rather than stopping for good.
    pub fn update<T>(&self, f: impl FnOnce(&mut Journal) -> T) -> Result<T, MeterError> {
        let _lock = self.lock()?;
        let mut journal = match self.load() {
            Err(e @ MeterError::Corrupt { .. }) => {
                let aside = self
                    .dir
                    .join(format!("journal.json.corrupt-{}", now_micros()));
                tracing::error!(error = %e, aside = %aside.display(), "metering journal set aside");
                std::fs::rename(self.path(), &aside).map_err(self.io(&aside))?;
                Journal::default()
            }
            other => other?,
        };
        let out = f(&mut journal);
        self.save(&journal)?;
        Ok(out)
    }
}

// ------------------------------------------------------------------ /proc

struct ProcStat {
    ppid: i32,
    session: i32,
    ticks: u64,
    child_ticks: u64,
    start_time: u64,
    rss_pages: u64,
}

fn read_proc(pid: &str) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid 4, session 6, utime..cstime 14..17,
    // starttime 22, rss 24.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
    let ticks = [num(11)?, num(12)?, num(13)?, num(14)?]
        .iter()
        .map(|v| (*v).max(0) as u64)
        .sum();
    Some(ProcStat {
        ppid: num(1)? as i32,
        session: num(3)? as i32,
        ticks,
        child_ticks: (num(13)?.max(0) + num(14)?.max(0)) as u64,
        start_time: num(19)?.max(0) as u64,
        rss_pages: num(21)?.max(0) as u64,
    })
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += dir_size(&entry.path());
        } else {
            total += meta.len();
        }
    }
    total
}

/// Whether the process `pid:starttime` still runs (the same pid with
/// another start time is another process).
fn process_alive(key: &str) -> bool {
    let Some((pid, start)) = key.split_once(':') else {
        return false;
    };
    read_proc(pid).is_some_and(|p| p.start_time.to_string() == start)
}

/// Clock ticks per second (`CLK_TCK`).
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

/// Now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Reads every partition that has services: its services' sessions' processes
/// and its directory's size.
pub fn sample(
    config: &NodeConfig,
    supervisor: &Supervisor,
    instances: &BTreeMap<String, InstanceRef>,
    disk: &DiskSizes,
) -> Sample {
    let page = page_size();
    let mut sessions: BTreeMap<i32, String> = BTreeMap::new();
    let mut s = Sample {
        at: now_micros(),
        ..Default::default()
    };
    for status in supervisor.status() {
        if let Some(pid) = status.pid {
            sessions.insert(pid as i32, status.partition.clone());
        }
        s.partitions
            .entry(status.partition.clone())
            .or_insert_with(|| instances.get(&status.partition).cloned());
    }
    // A partition with its own Unix user also owns what its services started
    // outside their sessions (daemons that call setsid).
    let me = nix::unistd::geteuid().as_raw();
    let users: BTreeMap<u32, String> = s
        .partitions
        .keys()
        .filter_map(|p| {
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata(config.partition_path(p)).ok()?.uid();
            (uid != 0 && uid != me).then(|| (uid, p.clone()))
        })
        .collect();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Some(info) = read_proc(&name) else {
                continue;
            };
            let by_user = || {
                use std::os::unix::fs::MetadataExt;
                if users.is_empty() {
                    return None;
                }
                users.get(&entry.metadata().ok()?.uid())
            };
            if let Some(partition) = sessions.get(&info.session).or_else(by_user) {
                s.processes.push(ProcSample {
                    key: format!("{name}:{}", info.start_time),
                    pid: name.parse().unwrap_or(0),
                    ppid: info.ppid,
                    partition: partition.clone(),
                    ticks: info.ticks,
                    child_ticks: info.child_ticks,
                    rss_bytes: info.rss_pages * page,
                });
            }
        }
    }
    for partition in s.partitions.keys() {
        s.disk_bytes
            .insert(partition.clone(), disk.size(config, partition));
    }
    s
}

/// Partition directory sizes, walked again only every `refresh` (a large
/// partition is not walked every second; disk use changes slowly).
#[derive(Debug, Default)]
pub struct DiskSizes {
    refresh: std::time::Duration,
    known: std::sync::Mutex<BTreeMap<String, (std::time::Instant, u64)>>,
}

impl DiskSizes {
    pub fn new(refresh: std::time::Duration) -> DiskSizes {
        DiskSizes {
            refresh,
            known: Default::default(),
        }
    }

    fn size(&self, config: &NodeConfig, partition: &str) -> u64 {
        let now = std::time::Instant::now();
        if let Ok(known) = self.known.lock() {
            if let Some((at, size)) = known.get(partition) {
                if now.duration_since(*at) < self.refresh {
                    return *size;
                }
            }
        }
        let size = dir_size(&config.partition_path(partition));
        if let Ok(mut known) = self.known.lock() {
            known.insert(partition.to_string(), (now, size));
        }
        size
    }
}

/// Takes one sample and adds it to the journal.
pub fn meter_once(
    config: &NodeConfig,
    supervisor: &Supervisor,
    instances: &BTreeMap<String, InstanceRef>,
    disk: &DiskSizes,
) -> Result<(), MeterError> {
    let mut s = sample(config, supervisor, instances, disk);
    let max_gap = (config.metering_interval.max(1) as i64) * 10 * 1_000_000;
    let tps = ticks_per_second();
    JournalDir::of(config).update(|j| {
        let seen: BTreeSet<&str> = s.processes.iter().map(|p| p.key.as_str()).collect();
        s.still_alive = j
            .processes
            .keys()
            .filter(|k| !seen.contains(k.as_str()) && process_alive(k))
            .cloned()
            .collect();
        j.apply(&s, tps, max_gap)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(key: &str, pid: i32, ppid: i32, ticks: u64) -> ProcSample {
        proc_c(key, pid, ppid, ticks, 0)
    }

    /// With `children` of its `ticks` from reaped children.
    fn proc_c(key: &str, pid: i32, ppid: i32, ticks: u64, children: u64) -> ProcSample {
        ProcSample {
            key: key.into(),
            pid,
            ppid,
            partition: "slappart0".into(),
            ticks,
            child_ticks: children,
            rss_bytes: 1000,
        }
    }

    fn at(seconds: i64, processes: Vec<ProcSample>) -> Sample {
        let mut s = Sample {
            at: seconds * 1_000_000,
            processes,
            ..Default::default()
        };
        s.partitions.insert("slappart0".into(), None);
        s.disk_bytes.insert("slappart0".into(), 10);
        s
    }

    #[test]
    fn own_process_is_readable() {
        let me = read_proc(&std::process::id().to_string()).unwrap();
        assert!(me.rss_pages > 0 && me.start_time > 0);
    }

    #[test]
    fn accumulator_counts_deltas_reaped_children_once_and_integrates() {
        let mut j = Journal::default();
        // t=0: parent 10 ticks, child 5 ticks (first sight: all counted).
        j.apply(
            &at(0, vec![proc("1:1", 1, 0, 10), proc("2:5", 2, 1, 5)]),
            100,
            i64::MAX,
        );
        // t=1: parent 20, child 25.
        j.apply(
            &at(1, vec![proc("1:1", 1, 0, 20), proc("2:5", 2, 1, 25)]),
            100,
            i64::MAX,
        );
        // t=2: child reaped after 5 more ticks: parent's cutime grows by 30.
        j.apply(
            &at(2, vec![proc_c("1:1", 1, 0, 20 + 30, 30)]),
            100,
            i64::MAX,
        );
        // t=3: a new process reusing pid 2 (another start time).
        j.apply(
            &at(3, vec![proc_c("1:1", 1, 0, 50, 30), proc("2:9", 2, 1, 3)]),
            100,
            i64::MAX,
        );
        let p = &j.open["slappart0"];
        // 10 + 5 + 10 + 20 + 5 + 3 = 53 ticks
        assert_eq!(p.cpu_micros, 530_000);
        // rss 1000 B: 2 processes for 1 s, 1 for 1 s, 2 for 1 s
        assert_eq!(p.memory_byte_seconds, 5000);
        assert_eq!(p.disk_byte_seconds, 30);
        assert_eq!(p.running_micros, 3_000_000);

        let r = j.close("r1".into()).unwrap().clone();
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.records[0].period_start, 0);
        assert_eq!(r.records[0].period_end, 3_000_000);
        assert_eq!(r.records[0].running_seconds, 3);
        // Nothing consumed since: no new report; the next period starts at the close.
        assert!(j.close("r2".into()).is_none());
        // The second child is reaped too: the parent ran 10 ticks, plus its 3.
        j.apply(&at(4, vec![proc_c("1:1", 1, 0, 63, 33)]), 100, i64::MAX);
        let r2 = j.close("r3".into()).unwrap().clone();
        assert_eq!(r2.records[0].period_start, 3_000_000);
        assert_eq!(r2.records[0].cpu_micros, 100_000);
        assert_eq!(j.pending.len(), 2);
        j.acknowledge("r1");
        assert_eq!(j.pending.len(), 1);
    }

    #[test]
    fn children_reaped_automatically_are_not_taken_off_their_parent() {
        let mut j = Journal::default();
        j.apply(
            &at(0, vec![proc("1:1", 1, 0, 10), proc("2:5", 2, 1, 5)]),
            100,
            i64::MAX,
        );
        // The child is gone but the parent's cutime did not grow (SIGCHLD
        // ignored): the parent's own 10 ticks still count in full.
        j.apply(&at(1, vec![proc("1:1", 1, 0, 20)]), 100, i64::MAX);
        assert_eq!(j.open["slappart0"].cpu_micros, 250_000);
    }

    #[test]
    fn a_process_missing_from_one_sample_is_not_counted_twice() {
        let mut j = Journal::default();
        j.apply(&at(0, vec![proc("1:1", 1, 0, 10)]), 100, i64::MAX);
        // Not attributed this time (services not adopted yet), still running.
        let mut s = at(1, vec![]);
        s.still_alive.insert("1:1".into());
        j.apply(&s, 100, i64::MAX);
        j.apply(&at(2, vec![proc("1:1", 1, 0, 30)]), 100, i64::MAX);
        assert_eq!(j.open["slappart0"].cpu_micros, 300_000);
    }

    #[test]
    fn a_new_instance_on_the_partition_closes_the_old_ones_period() {
        let mut j = Journal::default();
        let mut s = at(0, vec![proc("1:1", 1, 0, 10)]);
        let first = InstanceRef {
            title: Some("a".into()),
            ..Default::default()
        };
        s.partitions.insert("slappart0".into(), Some(first.clone()));
        j.apply(&s, 100, i64::MAX);
        let mut s = at(1, vec![proc("1:1", 1, 0, 20)]);
        s.partitions.insert(
            "slappart0".into(),
            Some(InstanceRef {
                title: Some("b".into()),
                ..Default::default()
            }),
        );
        j.apply(&s, 100, i64::MAX);
        assert_eq!(j.closed.len(), 1);
        assert_eq!(j.closed[0].instance, Some(first));
        assert_eq!(j.closed[0].cpu_micros, 100_000);
    }

    #[test]
    fn journal_survives_a_reload_and_gaps_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let jd = JournalDir {
            dir: dir.path().join("m"),
        };
        jd.update(|j| j.apply(&at(0, vec![proc("1:1", 1, 0, 10)]), 100, 2_000_000))
            .unwrap();
        jd.update(|j| j.apply(&at(100, vec![proc("1:1", 1, 0, 10)]), 100, 2_000_000))
            .unwrap();
        let j = jd.load().unwrap();
        assert_eq!(j.open["slappart0"].running_micros, 2_000_000);
        // A damaged journal is set aside, not fatal.
        std::fs::write(jd.dir.join("journal.json"), "{not json").unwrap();
        assert!(jd.load().is_err());
        jd.update(|j| assert_eq!(*j, Journal::default())).unwrap();
        assert!(std::fs::read_dir(&jd.dir).unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("journal.json.corrupt-")));
        assert_eq!(j.open["slappart0"].cpu_micros, 100_000);
        assert!(new_report_id() != new_report_id());
        assert_eq!(new_report_id().len(), 36);
    }
}
