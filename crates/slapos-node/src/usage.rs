//! `slapos node report`: what each partition consumed (CPU time, memory,
//! disk), measured from /proc and the partition's directory, sent to the
//! master as the reference's TioXML journal (`useComputer`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::NodeConfig;
use crate::supervisor::Supervisor;

/// Consumption of one partition at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionUsage {
    pub partition: String,
    /// CPU seconds used by its live processes (and the children they reaped).
    pub cpu_seconds: f64,
    /// Resident memory of its processes, in bytes.
    pub memory_bytes: u64,
    /// Size of its directory, in bytes.
    pub disk_bytes: u64,
    pub processes: usize,
}

struct ProcInfo {
    session: i32,
    ticks: u64,
    rss_pages: u64,
}

fn read_proc(pid: &str) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = state (field 3); session is field 6, utime..cstime fields 14..17, rss field 24.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
    Some(ProcInfo {
        session: num(3)? as i32,
        ticks: (num(11)? + num(12)? + num(13)? + num(14)?) as u64,
        rss_pages: num(21)? as u64,
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

/// Measures every partition that has services. A service runs in its own
/// session, so everything in that session is counted for its partition.
pub fn measure(config: &NodeConfig, supervisor: &Supervisor) -> Vec<PartitionUsage> {
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let mut sessions: BTreeMap<i32, String> = BTreeMap::new();
    let mut partitions: BTreeMap<String, PartitionUsage> = BTreeMap::new();
    for status in supervisor.status() {
        if let Some(pid) = status.pid {
            sessions.insert(pid as i32, status.partition.clone());
        }
        partitions
            .entry(status.partition.clone())
            .or_insert_with(|| PartitionUsage {
                partition: status.partition.clone(),
                ..Default::default()
            });
    }
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
            if let Some(partition) = sessions.get(&info.session) {
                if let Some(u) = partitions.get_mut(partition) {
                    u.cpu_seconds += info.ticks as f64 / ticks_per_second;
                    u.memory_bytes += info.rss_pages * page;
                    u.processes += 1;
                }
            }
        }
    }
    for u in partitions.values_mut() {
        u.disk_bytes = dir_size(&config.partition_path(&u.partition));
    }
    partitions.into_values().collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The reference's consumption journal for a period.
pub fn tioxml(computer: &str, start: &str, stop: &str, usage: &[PartitionUsage]) -> String {
    let mut out = String::from("<?xml version='1.0' encoding='utf-8'?><journal>");
    for u in usage {
        let p = escape(&u.partition);
        out.push_str(&format!(
            "<transaction type=\"Sale Packing List\"><title>Resource consumptions</title><start_date>{start}</start_date>\
             <stop_date>{stop}</stop_date><reference>{p}</reference><currency/><payment_mode/><category/>\
             <arrow type=\"Administration\"><source/><destination/></arrow>"
        ));
        for (resource, unit_value) in [
            ("CPU Consumption", format!("{:.3}", u.cpu_seconds)),
            (
                "Memory Consumption",
                format!("{:.3}", u.memory_bytes as f64 / 1048576.0),
            ),
            (
                "Disk Usage",
                format!("{:.3}", u.disk_bytes as f64 / 1048576.0),
            ),
        ] {
            out.push_str(&format!(
                "<movement><resource>{resource}</resource><title>{resource} of {p}</title><reference>{p}</reference>\
                 <quantity>{unit_value}</quantity><price>0.0</price><VAT/><category/></movement>"
            ));
        }
        out.push_str("</transaction>");
    }
    let _ = computer;
    out.push_str("</journal>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let me = read_proc(&std::process::id().to_string()).unwrap();
        assert!(me.rss_pages > 0);
    }

    #[test]
    fn journal_has_one_transaction_per_partition() {
        let usage = vec![PartitionUsage {
            partition: "slappart0".into(),
            cpu_seconds: 1.5,
            memory_bytes: 2 << 20,
            disk_bytes: 1 << 20,
            processes: 1,
        }];
        let xml = tioxml("C", "2026-11-01", "2026-11-02", &usage);
        assert_eq!(xml.matches("<transaction").count(), 1);
        assert!(
            xml.contains("<quantity>1.500</quantity>")
                && xml.contains("<quantity>2.000</quantity>")
        );
    }
}
