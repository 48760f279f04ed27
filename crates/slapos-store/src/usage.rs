//! The usage ledger: what each partition consumed over a period, as its node
//! reported it. Append-only; a report recorded twice is recorded once
//! (unique `(computer, report id, partition)`).

use serde::Serialize;

use crate::db::{Db, Param, Row};
use crate::queries::Scope;
use crate::StoreError;

type Result<T> = std::result::Result<T, StoreError>;

/// One partition's consumption over one period. Quantities are integers, so
/// sums are exact: CPU in microseconds, memory and disk in byte-seconds
/// (the integral of the amount held over the period), running time in
/// seconds (how long the instance had a live process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    pub id: i64,
    pub computer_id: i64,
    pub report_id: String,
    pub partition_reference: String,
    /// The instance the partition held (attributed at receipt).
    pub instance_id: Option<i64>,
    /// Its owner (`None`: the proxy's implicit user).
    pub user_id: Option<i64>,
    /// The root of its instance tree.
    pub tree_id: Option<i64>,
    pub software_release: Option<String>,
    pub software_type: Option<String>,
    /// Microseconds since the epoch, `period_start < period_end`.
    pub period_start: i64,
    pub period_end: i64,
    pub cpu_micros: i64,
    pub memory_byte_seconds: i64,
    pub disk_byte_seconds: i64,
    pub running_seconds: i64,
    pub received_at: i64,
}

/// A record to append (the id and receipt time are the store's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUsageRecord<'a> {
    pub computer_id: i64,
    pub report_id: &'a str,
    pub partition_reference: &'a str,
    pub instance_id: Option<i64>,
    pub user_id: Option<i64>,
    pub tree_id: Option<i64>,
    pub software_release: Option<&'a str>,
    pub software_type: Option<&'a str>,
    pub period_start: i64,
    pub period_end: i64,
    pub cpu_micros: i64,
    pub memory_byte_seconds: i64,
    pub disk_byte_seconds: i64,
    pub running_seconds: i64,
}

/// Appends a record; `false` if this report already recorded this partition
/// (a resent report), which changes nothing.
pub fn insert_usage_record(db: &mut dyn Db, r: &NewUsageRecord<'_>, now: i64) -> Result<bool> {
    let inserted = db.query_opt(
        "INSERT INTO usage_record (computer_id, report_id, partition_reference, instance_id, user_id, tree_id, \
         software_release, software_type, period_start, period_end, cpu_micros, memory_byte_seconds, \
         disk_byte_seconds, running_seconds, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (computer_id, report_id, partition_reference) DO NOTHING RETURNING id",
        &[
            r.computer_id.into(),
            r.report_id.into(),
            r.partition_reference.into(),
            r.instance_id.into(),
            r.user_id.into(),
            r.tree_id.into(),
            r.software_release.into(),
            r.software_type.into(),
            r.period_start.into(),
            r.period_end.into(),
            r.cpu_micros.into(),
            r.memory_byte_seconds.into(),
            r.disk_byte_seconds.into(),
            r.running_seconds.into(),
            now.into(),
        ],
    )?;
    Ok(inserted.is_some())
}

pub(crate) const COLUMNS: &str =
    "u.id, u.computer_id, u.report_id, u.partition_reference, u.instance_id, u.user_id, \
    u.tree_id, u.software_release, u.software_type, u.period_start, u.period_end, u.cpu_micros, \
    u.memory_byte_seconds, u.disk_byte_seconds, u.running_seconds, u.received_at";

pub(crate) fn record_from(r: &Row) -> Result<UsageRecord> {
    Ok(UsageRecord {
        id: r.int(0)?,
        computer_id: r.int(1)?,
        report_id: r.text(2)?,
        partition_reference: r.text(3)?,
        instance_id: r.opt_int(4)?,
        user_id: r.opt_int(5)?,
        tree_id: r.opt_int(6)?,
        software_release: r.opt_text(7)?,
        software_type: r.opt_text(8)?,
        period_start: r.int(9)?,
        period_end: r.int(10)?,
        cpu_micros: r.int(11)?,
        memory_byte_seconds: r.int(12)?,
        disk_byte_seconds: r.int(13)?,
        running_seconds: r.int(14)?,
        received_at: r.int(15)?,
    })
}

/// Which records to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageFilter {
    pub instance_id: Option<i64>,
    pub tree_id: Option<i64>,
    pub computer_id: Option<i64>,
    /// Records whose period starts at or after this (microseconds).
    pub from: Option<i64>,
    /// Records whose period starts before this.
    pub to: Option<i64>,
    /// Only records with an id above this (keyset pagination).
    pub after_id: i64,
    pub limit: i64,
}

/// Records in the scope and filter, oldest first.
pub fn usage_records(
    db: &mut dyn Db,
    scope: Scope,
    filter: &UsageFilter,
) -> Result<Vec<UsageRecord>> {
    let mut clauses = vec!["u.id > $1".to_string()];
    let mut params: Vec<Param<'_>> = vec![filter.after_id.into()];
    let mut add = |clause: &str, value: i64| {
        params.push(value.into());
        clauses.push(format!("{clause} ${}", params.len()));
    };
    if let Some(owner) = scope.owner() {
        add("u.user_id =", owner);
    }
    if let Some(v) = filter.instance_id {
        add("u.instance_id =", v);
    }
    if let Some(v) = filter.tree_id {
        add("u.tree_id =", v);
    }
    if let Some(v) = filter.computer_id {
        add("u.computer_id =", v);
    }
    if let Some(v) = filter.from {
        add("u.period_start >=", v);
    }
    if let Some(v) = filter.to {
        add("u.period_start <", v);
    }
    let limit = if filter.limit > 0 {
        filter.limit
    } else {
        i64::MAX
    };
    params.push(limit.into());
    let sql = format!(
        "SELECT {COLUMNS} FROM usage_record u WHERE {} ORDER BY u.id LIMIT ${}",
        clauses.join(" AND "),
        params.len()
    );
    db.query(&sql, &params)?.iter().map(record_from).collect()
}

/// Whom a partition's usage is charged to: its instance and the instance's
/// owner, tree and release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub instance_id: i64,
    pub user_id: Option<i64>,
    /// The root of its tree (itself for a root).
    pub tree_id: i64,
    pub software_release: String,
    pub software_type: String,
}

fn attribution_from(r: &Row) -> Result<Attribution> {
    let id = r.int(0)?;
    let tree = r.int(2)?;
    Ok(Attribution {
        instance_id: id,
        user_id: r.opt_int(1)?,
        tree_id: if tree == 0 { id } else { tree },
        software_release: r.text(3)?,
        software_type: r.text(4)?,
    })
}

/// The instance a node measured on a partition: the instance titled `title`
/// in the tree whose root is titled `root_title` (live or archived, the one on
/// this partition first, then the newest), or else the partition's current
/// instance. `None` when neither exists (a free partition).
pub fn attribute_usage(
    db: &mut dyn Db,
    partition_id: i64,
    title: Option<&str>,
    root_title: Option<&str>,
) -> Result<Option<Attribution>> {
    const COLS: &str = "i.id, i.user_id, i.tree_id, i.software_release, i.software_type";
    if let (Some(title), Some(root_title)) = (title, root_title) {
        let sql = format!(
            "SELECT {COLS} FROM instance i LEFT JOIN instance r ON r.id = i.tree_id \
             WHERE i.title = $1 AND i.host_id IS NULL \
             AND (CASE WHEN i.tree_id = 0 THEN i.title ELSE r.title END) = $2 \
             ORDER BY CASE WHEN i.partition_id = $3 THEN 0 ELSE 1 END, i.id DESC LIMIT 1"
        );
        if let Some(row) = db.query_opt(
            &sql,
            &[title.into(), root_title.into(), partition_id.into()],
        )? {
            return attribution_from(&row).map(Some);
        }
    }
    let sql = format!(
        "SELECT {COLS} FROM instance i JOIN partition p ON p.instance_id = i.id WHERE p.id = $1"
    );
    db.query_opt(&sql, &[partition_id.into()])?
        .as_ref()
        .map(attribution_from)
        .transpose()
}
