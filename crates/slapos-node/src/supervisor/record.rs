//! One small JSON file per service in the state directory, so a restarted
//! node knows what it was running: `<state_dir>/<partition>/<service>.json`.
//! Files are replaced atomically (write a temporary file, then rename) so a
//! node killed mid-write leaves the previous version.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{valid_name, ExitReason, ServiceSpec};

/// Bumped when the format changes incompatibly; other versions are ignored.
pub(super) const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub version: u32,
    pub spec: ServiceSpec,
    /// For people reading the file; the supervisor recomputes it from
    /// `spec`, so a node upgrade that adds a defaulted field to the spec
    /// does not restart every service.
    pub spec_hash: String,
    pub restarts: u32,
    pub run: RunRecord,
}

/// What the service was doing when the record was last written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(super) enum RunRecord {
    /// Started as `pid`; `start_ticks` (field 22 of `/proc/<pid>/stat`) and
    /// `boot_id` tell it apart from a later process given the same pid.
    Running {
        pid: i32,
        start_ticks: u64,
        boot_id: String,
    },
    /// A oneshot that completed for this spec.
    Done,
    /// Exited and not to be restarted (restart policy).
    Exited { reason: ExitReason },
    /// Could not be started; retried at the next `apply`.
    Failed,
}

pub(super) fn path(state_dir: &Path, partition: &str, name: &str) -> PathBuf {
    state_dir.join(partition).join(format!("{name}.json"))
}

pub(super) fn save(state_dir: &Path, record: &Record) -> io::Result<()> {
    let spec = &record.spec;
    let directory = state_dir.join(&spec.partition);
    fs::create_dir_all(&directory)?;
    // Service names cannot start with a dot, so this never clashes.
    let temporary = directory.join(format!(".{}.tmp", spec.name));
    let data = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    fs::write(&temporary, data)?;
    fs::rename(&temporary, path(state_dir, &spec.partition, &spec.name))
}

pub(super) fn remove(state_dir: &Path, partition: &str, name: &str) -> io::Result<()> {
    match fs::remove_file(path(state_dir, partition, name)) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    // Fails (harmlessly) while other services of the partition remain.
    let _ = fs::remove_dir(state_dir.join(partition));
    Ok(())
}

/// Every readable record; unreadable or foreign files are reported and
/// deleted so they are not reconsidered at each start.
pub(super) fn load_all(state_dir: &Path) -> io::Result<Vec<Record>> {
    let mut records = Vec::new();
    for partition in fs::read_dir(state_dir)? {
        let partition = partition?;
        let partition_name = partition.file_name();
        let Some(partition_name) = partition_name.to_str().filter(|name| valid_name(name)) else {
            continue;
        };
        if !partition.file_type()?.is_dir() {
            continue;
        }
        for file in fs::read_dir(partition.path())? {
            let file = file?;
            let file_path = file.path();
            let file_name = file.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.starts_with('.') && file_name.ends_with(".tmp") {
                let _ = fs::remove_file(&file_path);
                continue;
            }
            let Some(service_name) = file_name.strip_suffix(".json") else {
                continue;
            };
            match read(&file_path) {
                Ok(record)
                    if record.spec.partition == partition_name
                        && record.spec.name == service_name =>
                {
                    records.push(record)
                }
                Ok(_) => {
                    warn!(path = %file_path.display(), "record names another service, deleting it");
                    let _ = fs::remove_file(&file_path);
                }
                Err(err) => {
                    warn!(path = %file_path.display(), %err, "unreadable supervisor record, deleting it");
                    let _ = fs::remove_file(&file_path);
                }
            }
        }
    }
    Ok(records)
}

fn read(path: &Path) -> io::Result<Record> {
    let record: Record = serde_json::from_slice(&fs::read(path)?)?;
    if record.version != VERSION {
        return Err(io::Error::other(format!(
            "format version {} (this node reads version {VERSION})",
            record.version
        )));
    }
    Ok(record)
}
