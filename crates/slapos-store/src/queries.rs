//! Typed reads and writes over [`Db`]: the only place that knows the schema.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::db::{Db, Dialect, Param, Row};
use crate::StoreError;

type Result<T> = std::result::Result<T, StoreError>;

/// A registered computer (node).
#[derive(Debug, Clone, PartialEq)]
pub struct ComputerRow {
    pub id: i64,
    pub reference: String,
    pub address: Option<String>,
    pub netmask: Option<String>,
    /// Placement attributes matched by request SLAs (`country`, `hardware`...).
    pub attributes: BTreeMap<String, String>,
    pub created_at: i64,
    pub last_contact: Option<i64>,
}

/// One address of a partition, as `slapos node format` registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub interface: String,
    pub addr: String,
    pub netmask: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PartitionRow {
    pub id: i64,
    pub computer_id: i64,
    pub reference: String,
    /// The instance deployed there; `None` when the partition is free.
    pub instance_id: Option<i64>,
    pub addresses: Vec<Address>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SoftwareRow {
    pub computer_id: i64,
    pub url: String,
    pub requested_state: String,
    pub reported_state: Option<String>,
    pub error_log: Option<String>,
    pub supply_seq: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub id: i64,
    pub title: String,
    /// Id of the root instance of the tree; 0 for a root (requested by a user).
    pub tree_id: i64,
    /// Instance that requested this one; `None` when a user did.
    pub requester_id: Option<i64>,
    pub software_release: String,
    pub software_type: String,
    pub shared: bool,
    /// The request's parameters, as the marshalled dictionary received.
    pub parameters: String,
    /// The request's SLA, as a JSON object of strings.
    pub sla: String,
    pub requested_state: String,
    pub partition_id: Option<i64>,
    /// For a shared instance, the instance that hosts it.
    pub host_id: Option<i64>,
    /// Published connection parameters, as parameter XML.
    pub connection_xml: Option<String>,
    /// Changes whenever the node must reprocess the instance (microseconds).
    pub timestamp: i64,
    pub reported_state: Option<String>,
    pub reported_at: Option<i64>,
    pub status_message: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The user who owns the instance (a child: its tree's owner); `None`
    /// for the proxy's single implicit user and rows older than accounts.
    pub user_id: Option<i64>,
}

impl InstanceRow {
    /// Id of the tree's root (itself for a root).
    pub fn root_id(&self) -> i64 {
        if self.tree_id == 0 {
            self.id
        } else {
            self.tree_id
        }
    }
}

// ---------------------------------------------------------------- computers

const COMPUTER_COLUMNS: &str =
    "id, reference, address, netmask, attributes, created_at, last_contact";

fn computer_from(r: &Row) -> Result<ComputerRow> {
    Ok(ComputerRow {
        id: r.int(0)?,
        reference: r.text(1)?,
        address: r.opt_text(2)?,
        netmask: r.opt_text(3)?,
        attributes: serde_json::from_str(&r.text(4)?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created_at: r.int(5)?,
        last_contact: r.opt_int(6)?,
    })
}

pub fn computer_by_reference(db: &mut dyn Db, reference: &str) -> Result<Option<ComputerRow>> {
    let sql = format!("SELECT {COMPUTER_COLUMNS} FROM computer WHERE reference = $1");
    db.query_opt(&sql, &[reference.into()])?
        .as_ref()
        .map(computer_from)
        .transpose()
}

pub fn computer_by_id(db: &mut dyn Db, id: i64) -> Result<Option<ComputerRow>> {
    let sql = format!("SELECT {COMPUTER_COLUMNS} FROM computer WHERE id = $1");
    db.query_opt(&sql, &[id.into()])?
        .as_ref()
        .map(computer_from)
        .transpose()
}

pub fn list_computers(db: &mut dyn Db) -> Result<Vec<ComputerRow>> {
    let sql = format!("SELECT {COMPUTER_COLUMNS} FROM computer ORDER BY reference");
    db.query(&sql, &[])?.iter().map(computer_from).collect()
}

/// Creates the computer if needed and records its address; returns its id.
pub fn upsert_computer(
    db: &mut dyn Db,
    reference: &str,
    address: Option<&str>,
    netmask: Option<&str>,
    now: i64,
) -> Result<i64> {
    let row = db.query_opt(
        "INSERT INTO computer (reference, address, netmask, created_at, last_contact) VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (reference) DO UPDATE SET address = excluded.address, netmask = excluded.netmask, last_contact = excluded.last_contact \
         RETURNING id",
        &[reference.into(), address.into(), netmask.into(), now.into()],
    )?;
    row.ok_or_else(|| StoreError::Corrupt("upsert returned no row".into()))?
        .int(0)
}

pub fn set_computer_attributes(
    db: &mut dyn Db,
    id: i64,
    attributes: &BTreeMap<String, String>,
) -> Result<()> {
    let json = serde_json::to_string(attributes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    db.execute(
        "UPDATE computer SET attributes = $1 WHERE id = $2",
        &[(&json).into(), id.into()],
    )?;
    Ok(())
}

pub fn touch_computer(db: &mut dyn Db, id: i64, now: i64) -> Result<()> {
    db.execute(
        "UPDATE computer SET last_contact = $1 WHERE id = $2",
        &[now.into(), id.into()],
    )?;
    Ok(())
}

// ---------------------------------------------------------------- partitions

const PARTITION_COLUMNS: &str = "id, computer_id, reference, instance_id, addresses";

fn partition_from(r: &Row, at: usize) -> Result<PartitionRow> {
    Ok(PartitionRow {
        id: r.int(at)?,
        computer_id: r.int(at + 1)?,
        reference: r.text(at + 2)?,
        instance_id: r.opt_int(at + 3)?,
        addresses: serde_json::from_str(&r.text(at + 4)?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}

pub fn partitions_of(db: &mut dyn Db, computer_id: i64) -> Result<Vec<PartitionRow>> {
    let sql =
        format!("SELECT {PARTITION_COLUMNS} FROM partition WHERE computer_id = $1 ORDER BY id");
    db.query(&sql, &[computer_id.into()])?
        .iter()
        .map(|r| partition_from(r, 0))
        .collect()
}

pub fn partition_by_reference(
    db: &mut dyn Db,
    computer_id: i64,
    reference: &str,
) -> Result<Option<PartitionRow>> {
    let sql = format!(
        "SELECT {PARTITION_COLUMNS} FROM partition WHERE computer_id = $1 AND reference = $2"
    );
    db.query_opt(&sql, &[computer_id.into(), reference.into()])?
        .map(|r| partition_from(&r, 0))
        .transpose()
}

pub fn partition_by_id(db: &mut dyn Db, id: i64) -> Result<Option<PartitionRow>> {
    let sql = format!("SELECT {PARTITION_COLUMNS} FROM partition WHERE id = $1");
    db.query_opt(&sql, &[id.into()])?
        .map(|r| partition_from(&r, 0))
        .transpose()
}

/// Creates the partition or replaces its addresses; keeps its instance.
pub fn upsert_partition(
    db: &mut dyn Db,
    computer_id: i64,
    reference: &str,
    addresses: &[Address],
) -> Result<()> {
    let json = serde_json::to_string(addresses).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    db.execute(
        "INSERT INTO partition (computer_id, reference, addresses) VALUES ($1, $2, $3) \
         ON CONFLICT (computer_id, reference) DO UPDATE SET addresses = excluded.addresses",
        &[computer_id.into(), reference.into(), (&json).into()],
    )?;
    Ok(())
}

pub fn delete_partition(db: &mut dyn Db, id: i64) -> Result<()> {
    db.execute(
        "DELETE FROM partition WHERE id = $1 AND instance_id IS NULL",
        &[id.into()],
    )?;
    Ok(())
}

/// Takes the first free partition of a computer (format order). On
/// PostgreSQL the row is locked and rows locked by a concurrent master are
/// skipped, so two masters never take the same partition.
pub fn claim_free_partition(
    db: &mut dyn Db,
    computer_id: i64,
    instance_id: i64,
) -> Result<Option<PartitionRow>> {
    let sql = match db.dialect() {
        Dialect::Sqlite => format!(
            "SELECT {PARTITION_COLUMNS} FROM partition WHERE computer_id = $1 AND instance_id IS NULL ORDER BY id LIMIT 1"
        ),
        Dialect::Postgres => format!(
            "SELECT {PARTITION_COLUMNS} FROM partition WHERE computer_id = $1 AND instance_id IS NULL ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
        ),
    };
    let Some(mut partition) = db
        .query_opt(&sql, &[computer_id.into()])?
        .map(|r| partition_from(&r, 0))
        .transpose()?
    else {
        return Ok(None);
    };
    let changed = db.execute(
        "UPDATE partition SET instance_id = $1 WHERE id = $2 AND instance_id IS NULL",
        &[instance_id.into(), partition.id.into()],
    )?;
    if changed != 1 {
        return Ok(None);
    }
    partition.instance_id = Some(instance_id);
    Ok(Some(partition))
}

pub fn release_partition(db: &mut dyn Db, partition_id: i64) -> Result<()> {
    db.execute(
        "UPDATE partition SET instance_id = NULL WHERE id = $1",
        &[partition_id.into()],
    )?;
    Ok(())
}

/// Number of free and of all partitions of a computer.
pub fn partition_counts(db: &mut dyn Db, computer_id: i64) -> Result<(i64, i64)> {
    let row = db.query_opt(
        "SELECT COUNT(*) - COUNT(instance_id), COUNT(*) FROM partition WHERE computer_id = $1",
        &[computer_id.into()],
    )?;
    let row = row.ok_or_else(|| StoreError::Corrupt("count returned no row".into()))?;
    Ok((row.int(0)?, row.int(1)?))
}

// ---------------------------------------------------------------- software

const SOFTWARE_COLUMNS: &str =
    "computer_id, url, requested_state, reported_state, error_log, supply_seq, updated_at";

fn software_from(r: &Row) -> Result<SoftwareRow> {
    Ok(SoftwareRow {
        computer_id: r.int(0)?,
        url: r.text(1)?,
        requested_state: r.text(2)?,
        reported_state: r.opt_text(3)?,
        error_log: r.opt_text(4)?,
        supply_seq: r.int(5)?,
        updated_at: r.int(6)?,
    })
}

/// Supplies (or asks to remove) a release; the list is kept in last-supply
/// order. A new supply belongs to the scope's user; a user changes only their
/// own supplies (false: the release is supplied there by someone else), while
/// `Scope::All` changes any and keeps its owner.
pub fn upsert_supply(
    db: &mut dyn Db,
    scope: Scope,
    computer_id: i64,
    url: &str,
    state: &str,
    now: i64,
) -> Result<bool> {
    let (owner, guard) = match scope {
        Scope::All => (None, ""),
        Scope::User(id) => (
            Some(id),
            " WHERE software_installation.user_id = excluded.user_id",
        ),
    };
    let n = db.execute(
        &format!(
            "INSERT INTO software_installation (computer_id, url, requested_state, supply_seq, updated_at, user_id) VALUES ($1, $2, $3, $4, $4, $5) \
             ON CONFLICT (computer_id, url) DO UPDATE SET requested_state = excluded.requested_state, \
             supply_seq = excluded.supply_seq, updated_at = excluded.updated_at{guard}"
        ),
        &[computer_id.into(), url.into(), state.into(), now.into(), owner.into()],
    )?;
    Ok(n > 0)
}

/// Every release supplied on a computer (what its node installs).
pub fn software_of(db: &mut dyn Db, computer_id: i64) -> Result<Vec<SoftwareRow>> {
    software_of_in(db, Scope::All, computer_id)
}

/// The releases supplied on a computer that the scope may see.
pub fn software_of_in(db: &mut dyn Db, scope: Scope, computer_id: i64) -> Result<Vec<SoftwareRow>> {
    let (filter, owner) = scope.filter("user_id", 2);
    let sql = format!("SELECT {SOFTWARE_COLUMNS} FROM software_installation WHERE computer_id = $1{filter} ORDER BY supply_seq, url");
    let mut params: Vec<Param<'_>> = vec![computer_id.into()];
    params.extend(owner.map(Param::from));
    db.query(&sql, &params)?.iter().map(software_from).collect()
}

pub fn software_everywhere(db: &mut dyn Db) -> Result<Vec<(String, SoftwareRow)>> {
    software_everywhere_in(db, Scope::All)
}

/// Every supply the scope may see, with its computer's reference.
pub fn software_everywhere_in(db: &mut dyn Db, scope: Scope) -> Result<Vec<(String, SoftwareRow)>> {
    let (filter, owner) = scope.filter("s.user_id", 1);
    let sql = format!(
        "SELECT c.reference, s.computer_id, s.url, s.requested_state, s.reported_state, s.error_log, s.supply_seq, s.updated_at \
         FROM software_installation s JOIN computer c ON c.id = s.computer_id WHERE 1 = 1{filter} ORDER BY c.reference, s.supply_seq"
    );
    let params: Vec<Param<'_>> = owner.map(Param::from).into_iter().collect();
    db.query(&sql, &params)?
        .iter()
        .map(|r| {
            let rest = Row(r.0[1..].to_vec());
            Ok((r.text(0)?, software_from(&rest)?))
        })
        .collect()
}

/// Records what the node reported; returns false if the release is not supplied there.
pub fn report_software(
    db: &mut dyn Db,
    computer_id: i64,
    url: &str,
    state: &str,
    error_log: Option<&str>,
    now: i64,
) -> Result<bool> {
    let n = db.execute(
        "UPDATE software_installation SET reported_state = $1, error_log = $2, updated_at = $3 WHERE computer_id = $4 AND url = $5",
        &[state.into(), error_log.into(), now.into(), computer_id.into(), url.into()],
    )?;
    Ok(n > 0)
}

pub fn delete_software(db: &mut dyn Db, computer_id: i64, url: &str) -> Result<bool> {
    let n = db.execute(
        "DELETE FROM software_installation WHERE computer_id = $1 AND url = $2",
        &[computer_id.into(), url.into()],
    )?;
    Ok(n > 0)
}

// ---------------------------------------------------------------- instances

const INSTANCE_COLUMNS: &str = "i.id, i.title, i.tree_id, i.requester_id, i.software_release, i.software_type, i.shared, \
     i.parameters, i.sla, i.requested_state, i.partition_id, i.host_id, i.connection_xml, i.timestamp, \
     i.reported_state, i.reported_at, i.status_message, i.created_at, i.updated_at, i.user_id";
const INSTANCE_WIDTH: usize = 20;

fn instance_from(r: &Row, at: usize) -> Result<InstanceRow> {
    Ok(InstanceRow {
        id: r.int(at)?,
        title: r.text(at + 1)?,
        tree_id: r.int(at + 2)?,
        requester_id: r.opt_int(at + 3)?,
        software_release: r.text(at + 4)?,
        software_type: r.text(at + 5)?,
        shared: r.int(at + 6)? != 0,
        parameters: r.text(at + 7)?,
        sla: r.text(at + 8)?,
        requested_state: r.text(at + 9)?,
        partition_id: r.opt_int(at + 10)?,
        host_id: r.opt_int(at + 11)?,
        connection_xml: r.opt_text(at + 12)?,
        timestamp: r.int(at + 13)?,
        reported_state: r.opt_text(at + 14)?,
        reported_at: r.opt_int(at + 15)?,
        status_message: r.opt_text(at + 16)?,
        created_at: r.int(at + 17)?,
        updated_at: r.int(at + 18)?,
        user_id: r.opt_int(at + 19)?,
    })
}

fn instances_where(
    db: &mut dyn Db,
    condition: &str,
    params: &[Param<'_>],
) -> Result<Vec<InstanceRow>> {
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instance i WHERE i.archived_at IS NULL AND {condition} ORDER BY i.id");
    db.query(&sql, params)?
        .iter()
        .map(|r| instance_from(r, 0))
        .collect()
}

pub fn instance_by_id(db: &mut dyn Db, id: i64) -> Result<Option<InstanceRow>> {
    Ok(instances_where(db, "i.id = $1", &[id.into()])?
        .into_iter()
        .next())
}

/// The live instance titled `title` in a tree (`tree_id` 0: among the roots
/// of `owner`; `None`: the rows without an owner). Titles are unique per
/// owner, so two users may both have a `my-cache`.
pub fn instance_by_title(
    db: &mut dyn Db,
    tree_id: i64,
    shared: bool,
    owner: Option<i64>,
    title: &str,
) -> Result<Option<InstanceRow>> {
    Ok(instances_where(
        db,
        "COALESCE(i.user_id, 0) = $4 AND i.tree_id = $1 AND i.shared = $2 AND i.title = $3",
        &[
            tree_id.into(),
            shared.into(),
            title.into(),
            owner.unwrap_or(0).into(),
        ],
    )?
    .into_iter()
    .next())
}

pub fn instance_on_partition(db: &mut dyn Db, partition_id: i64) -> Result<Option<InstanceRow>> {
    Ok(
        instances_where(db, "i.partition_id = $1", &[partition_id.into()])?
            .into_iter()
            .next(),
    )
}

/// Every live instance of a tree except its root.
pub fn tree_members(db: &mut dyn Db, root_id: i64) -> Result<Vec<InstanceRow>> {
    instances_where(db, "i.tree_id = $1", &[root_id.into()])
}

pub fn shared_hosted_by(db: &mut dyn Db, host_id: i64) -> Result<Vec<InstanceRow>> {
    instances_where(db, "i.host_id = $1", &[host_id.into()])
}

pub fn instances_requested_by(db: &mut dyn Db, requester_id: i64) -> Result<Vec<InstanceRow>> {
    instances_where(db, "i.requester_id = $1", &[requester_id.into()])
}

/// A partition of a computer with the instance it holds, in format order:
/// everything the node view of one computer needs, in one query.
pub fn partitions_with_instances(
    db: &mut dyn Db,
    computer_id: i64,
) -> Result<Vec<(PartitionRow, Option<InstanceRow>)>> {
    let sql = format!(
        "SELECT p.id, p.computer_id, p.reference, p.instance_id, p.addresses, {INSTANCE_COLUMNS} \
         FROM partition p LEFT JOIN instance i ON i.id = p.instance_id WHERE p.computer_id = $1 ORDER BY p.id"
    );
    db.query(&sql, &[computer_id.into()])?
        .iter()
        .map(|r| {
            let partition = partition_from(r, 0)?;
            let instance =
                if partition.instance_id.is_some() && r.0.get(5) != Some(&crate::Value::Null) {
                    Some(instance_from(r, 5)?)
                } else {
                    None
                };
            Ok((partition, instance))
        })
        .collect()
}

/// Shared instances hosted on a computer's partitions, by host id.
pub fn shared_on_computer(db: &mut dyn Db, computer_id: i64) -> Result<Vec<InstanceRow>> {
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM instance i JOIN instance h ON h.id = i.host_id \
         JOIN partition p ON p.id = h.partition_id \
         WHERE p.computer_id = $1 AND i.archived_at IS NULL AND i.shared = 1 ORDER BY i.id"
    );
    debug_assert_eq!(INSTANCE_WIDTH, 20);
    db.query(&sql, &[computer_id.into()])?
        .iter()
        .map(|r| instance_from(r, 0))
        .collect()
}

/// Live non-shared instances that could host a shared instance.
pub fn host_candidates(
    db: &mut dyn Db,
    computer_id: i64,
    software_release: &str,
    software_type: &str,
) -> Result<Vec<InstanceRow>> {
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM instance i JOIN partition p ON p.id = i.partition_id \
         WHERE p.computer_id = $1 AND i.archived_at IS NULL AND i.shared = 0 \
         AND i.software_release = $2 AND i.software_type = $3 ORDER BY p.id"
    );
    db.query(
        &sql,
        &[
            computer_id.into(),
            software_release.into(),
            software_type.into(),
        ],
    )?
    .iter()
    .map(|r| instance_from(r, 0))
    .collect()
}

/// Serialises concurrent requests of one title in one tree across masters
/// (PostgreSQL advisory lock held until commit; a no-op on SQLite, whose
/// single writer already serialises them).
pub fn lock_title(
    db: &mut dyn Db,
    tree_id: i64,
    shared: bool,
    owner: Option<i64>,
    title: &str,
) -> Result<()> {
    if db.dialect() == Dialect::Postgres {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (tree_id, shared, owner, title).hash(&mut h);
        db.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[(h.finish() as i64).into()],
        )?;
    }
    Ok(())
}

pub fn insert_instance(db: &mut dyn Db, i: &InstanceRow) -> Result<i64> {
    let row = db.query_opt(
        "INSERT INTO instance (title, tree_id, requester_id, software_release, software_type, shared, parameters, sla, \
         requested_state, partition_id, host_id, connection_xml, timestamp, reported_state, reported_at, status_message, \
         created_at, updated_at, user_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) RETURNING id",
        &[
            (&i.title).into(),
            i.tree_id.into(),
            i.requester_id.into(),
            (&i.software_release).into(),
            (&i.software_type).into(),
            i.shared.into(),
            (&i.parameters).into(),
            (&i.sla).into(),
            (&i.requested_state).into(),
            i.partition_id.into(),
            i.host_id.into(),
            (&i.connection_xml).into(),
            i.timestamp.into(),
            (&i.reported_state).into(),
            i.reported_at.into(),
            (&i.status_message).into(),
            i.created_at.into(),
            i.updated_at.into(),
            i.user_id.into(),
        ],
    )?;
    row.ok_or_else(|| StoreError::Corrupt("insert returned no row".into()))?
        .int(0)
}

/// Writes back every mutable column of an instance.
pub fn update_instance(db: &mut dyn Db, i: &InstanceRow) -> Result<()> {
    db.execute(
        "UPDATE instance SET title = $1, requester_id = $2, software_release = $3, software_type = $4, parameters = $5, \
         sla = $6, requested_state = $7, partition_id = $8, host_id = $9, connection_xml = $10, timestamp = $11, \
         reported_state = $12, reported_at = $13, status_message = $14, updated_at = $15 WHERE id = $16",
        &[
            (&i.title).into(),
            i.requester_id.into(),
            (&i.software_release).into(),
            (&i.software_type).into(),
            (&i.parameters).into(),
            (&i.sla).into(),
            (&i.requested_state).into(),
            i.partition_id.into(),
            i.host_id.into(),
            (&i.connection_xml).into(),
            i.timestamp.into(),
            (&i.reported_state).into(),
            i.reported_at.into(),
            (&i.status_message).into(),
            i.updated_at.into(),
            i.id.into(),
        ],
    )?;
    Ok(())
}

pub fn set_timestamp(db: &mut dyn Db, id: i64, timestamp: i64) -> Result<()> {
    db.execute(
        "UPDATE instance SET timestamp = $1, updated_at = $1 WHERE id = $2",
        &[timestamp.into(), id.into()],
    )?;
    Ok(())
}

/// Removes an instance from the live set (kept for history and accounting).
pub fn archive_instance(db: &mut dyn Db, id: i64, now: i64) -> Result<()> {
    db.execute(
        "UPDATE instance SET archived_at = $1, partition_id = NULL, updated_at = $1 WHERE id = $2",
        &[now.into(), id.into()],
    )?;
    Ok(())
}

// ---------------------------------------------------------------- events and usage

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub at: i64,
    pub kind: String,
    pub computer: Option<String>,
    pub partition: Option<String>,
    pub instance_id: Option<i64>,
    pub message: String,
}

pub fn add_event(
    db: &mut dyn Db,
    at: i64,
    kind: &str,
    computer: Option<&str>,
    partition: Option<&str>,
    instance_id: Option<i64>,
    message: &str,
) -> Result<()> {
    db.execute(
        "INSERT INTO event (at, kind, computer, partition, instance_id, message) VALUES ($1, $2, $3, $4, $5, $6)",
        &[at.into(), kind.into(), computer.into(), partition.into(), instance_id.into(), message.into()],
    )?;
    Ok(())
}

fn event_from(r: &Row) -> Result<EventRow> {
    Ok(EventRow {
        id: r.int(0)?,
        at: r.int(1)?,
        kind: r.text(2)?,
        computer: r.opt_text(3)?,
        partition: r.opt_text(4)?,
        instance_id: r.opt_int(5)?,
        message: r.text(6)?,
    })
}

/// Events newest first, optionally of one instance, with ids below `before_id`.
pub fn list_events(
    db: &mut dyn Db,
    instance_id: Option<i64>,
    before_id: i64,
    limit: i64,
) -> Result<Vec<EventRow>> {
    let rows = match instance_id {
        Some(id) => db.query(
            "SELECT id, at, kind, computer, partition, instance_id, message FROM event WHERE instance_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            &[id.into(), before_id.into(), limit.into()],
        )?,
        None => db.query(
            "SELECT id, at, kind, computer, partition, instance_id, message FROM event WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[before_id.into(), limit.into()],
        )?,
    };
    rows.iter().map(event_from).collect()
}

pub fn add_usage_report(db: &mut dyn Db, computer_id: i64, now: i64, body: &str) -> Result<()> {
    db.execute(
        "INSERT INTO usage_report (computer_id, received_at, body) VALUES ($1, $2, $3)",
        &[computer_id.into(), now.into(), body.into()],
    )?;
    Ok(())
}

pub fn count_usage_reports(db: &mut dyn Db, computer_id: i64) -> Result<i64> {
    db.query_opt(
        "SELECT COUNT(*) FROM usage_report WHERE computer_id = $1",
        &[computer_id.into()],
    )?
    .map(|r| r.int(0))
    .transpose()
    .map(|v| v.unwrap_or(0))
}

/// A value that changes whenever anything a computer's node acts on changes
/// (instance timestamps, allocations, supplies): what node watches compare.
pub fn computer_version(db: &mut dyn Db, computer_id: i64) -> Result<String> {
    let instances = db.query_opt(
        "SELECT COALESCE(MAX(i.timestamp), 0), COUNT(i.id), COUNT(p.id) FROM partition p \
         LEFT JOIN instance i ON i.id = p.instance_id WHERE p.computer_id = $1",
        &[computer_id.into()],
    )?;
    let software = db.query_opt(
        "SELECT COALESCE(MAX(supply_seq), 0), COUNT(*) FROM software_installation WHERE computer_id = $1",
        &[computer_id.into()],
    )?;
    let (i, s) = match (instances, software) {
        (Some(i), Some(s)) => (i, s),
        _ => return Err(StoreError::Corrupt("version query returned no row".into())),
    };
    Ok(format!(
        "{}-{}-{}-{}-{}",
        i.int(0)?,
        i.int(1)?,
        i.int(2)?,
        s.int(0)?,
        s.int(1)?
    ))
}

// ---------------------------------------------------------------- dashboard listings

/// What the dashboard's instance list can be narrowed to.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    /// Case-insensitive substring of the title or the software release URL.
    pub text: Option<String>,
    /// A requested state (`started`, `stopped`, `destroyed`), or `error`
    /// for instances whose node reported an error.
    pub state: Option<String>,
    pub roots_only: bool,
}

/// An instance with where it runs (for a shared instance: where its host runs).
#[derive(Debug, Clone)]
pub struct LocatedInstance {
    pub instance: InstanceRow,
    pub computer: Option<String>,
    pub partition: Option<String>,
}

/// `%`, `_` and `\` match themselves in the LIKE pattern.
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for ch in text.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

/// The WHERE clause of a filter and its parameters, numbered from `$1`.
fn filter_clause(filter: &InstanceFilter) -> (String, Vec<String>) {
    let mut clause = String::from("i.archived_at IS NULL");
    let mut params = Vec::new();
    if let Some(text) = filter.text.as_deref().filter(|t| !t.is_empty()) {
        params.push(like_pattern(text));
        let n = params.len();
        clause.push_str(&format!(
            " AND (LOWER(i.title) LIKE ${n} ESCAPE '\\' OR LOWER(i.software_release) LIKE ${n} ESCAPE '\\')"
        ));
    }
    match filter.state.as_deref().filter(|s| !s.is_empty()) {
        Some("error") => clause.push_str(" AND i.reported_state = 'error'"),
        Some(state) => {
            params.push(state.to_string());
            clause.push_str(&format!(" AND i.requested_state = ${}", params.len()));
        }
        None => {}
    }
    if filter.roots_only {
        clause.push_str(" AND i.tree_id = 0");
    }
    (clause, params)
}

/// One page of instances matching `filter`, newest first, with ids below
/// `before_id`: a keyset page, as fast on the last page as on the first.
pub fn search_instances(
    db: &mut dyn Db,
    filter: &InstanceFilter,
    before_id: i64,
    limit: i64,
) -> Result<Vec<LocatedInstance>> {
    search_instances_in(db, Scope::All, filter, before_id, limit)
}

/// [`search_instances`] among the instances the scope may see.
pub fn search_instances_in(
    db: &mut dyn Db,
    scope: Scope,
    filter: &InstanceFilter,
    before_id: i64,
    limit: i64,
) -> Result<Vec<LocatedInstance>> {
    let (clause, texts) = filter_clause(filter);
    let n = texts.len();
    let (owner_filter, owner) = scope.filter("i.user_id", n + 3);
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS}, c.reference, p.reference FROM instance i \
         LEFT JOIN instance h ON h.id = i.host_id \
         LEFT JOIN partition p ON p.id = COALESCE(i.partition_id, h.partition_id) \
         LEFT JOIN computer c ON c.id = p.computer_id \
         WHERE {clause}{owner_filter} AND i.id < ${} ORDER BY i.id DESC LIMIT ${}",
        n + 1,
        n + 2
    );
    let mut params: Vec<Param<'_>> = texts.iter().map(Param::from).collect();
    params.push(before_id.into());
    params.push(limit.into());
    params.extend(owner.map(Param::from));
    db.query(&sql, &params)?
        .iter()
        .map(|r| {
            Ok(LocatedInstance {
                instance: instance_from(r, 0)?,
                computer: r.opt_text(INSTANCE_WIDTH)?,
                partition: r.opt_text(INSTANCE_WIDTH + 1)?,
            })
        })
        .collect()
}

pub fn count_instances(db: &mut dyn Db, filter: &InstanceFilter) -> Result<i64> {
    count_instances_in(db, Scope::All, filter)
}

/// [`count_instances`] among the instances the scope may see.
pub fn count_instances_in(db: &mut dyn Db, scope: Scope, filter: &InstanceFilter) -> Result<i64> {
    let (clause, texts) = filter_clause(filter);
    let (owner_filter, owner) = scope.filter("i.user_id", texts.len() + 1);
    let mut params: Vec<Param<'_>> = texts.iter().map(Param::from).collect();
    params.extend(owner.map(Param::from));
    db.query_opt(
        &format!("SELECT COUNT(*) FROM instance i WHERE {clause}{owner_filter}"),
        &params,
    )?
    .map(|r| r.int(0))
    .transpose()
    .map(|v| v.unwrap_or(0))
}

/// Events with ids above `after_id`, oldest first (what a live feed sends).
pub fn events_after(db: &mut dyn Db, after_id: i64, limit: i64) -> Result<Vec<EventRow>> {
    db.query(
        "SELECT id, at, kind, computer, partition, instance_id, message FROM event WHERE id > $1 ORDER BY id LIMIT $2",
        &[after_id.into(), limit.into()],
    )?
    .iter()
    .map(event_from)
    .collect()
}

/// [`events_after`] of the instances the scope may see (a user's live feed).
pub fn events_after_in(
    db: &mut dyn Db,
    scope: Scope,
    after_id: i64,
    limit: i64,
) -> Result<Vec<EventRow>> {
    let Scope::User(user) = scope else {
        return events_after(db, after_id, limit);
    };
    db.query(
        "SELECT e.id, e.at, e.kind, e.computer, e.partition, e.instance_id, e.message FROM event e \
         JOIN instance i ON i.id = e.instance_id \
         WHERE i.user_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3",
        &[user.into(), after_id.into(), limit.into()],
    )?
    .iter()
    .map(event_from)
    .collect()
}

pub fn last_event_id(db: &mut dyn Db) -> Result<i64> {
    db.query_opt("SELECT COALESCE(MAX(id), 0) FROM event", &[])?
        .map(|r| r.int(0))
        .transpose()
        .map(|v| v.unwrap_or(0))
}

// ---------------------------------------------------------------- tenancy

/// Whose rows a query may see. Every read or change of user-owned rows made
/// on behalf of a user goes through a function taking a `Scope`, so that the
/// owner filter is in the SQL, never left to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything: the proxy's single user, nodes, the engine itself.
    All,
    /// Only the rows this user owns.
    User(i64),
}

impl Scope {
    /// ` AND {column} = ${n}` and its parameter, or nothing for `All`.
    fn filter(self, column: &str, n: usize) -> (String, Option<i64>) {
        match self {
            Scope::All => (String::new(), None),
            Scope::User(id) => (format!(" AND {column} = ${n}"), Some(id)),
        }
    }

    /// The owner new rows get in this scope.
    pub fn owner(self) -> Option<i64> {
        match self {
            Scope::All => None,
            Scope::User(id) => Some(id),
        }
    }

    /// Whether a row already read may be shown in this scope (for rows
    /// reached through a join on something the scope may see, such as the
    /// instances on a computer's partitions).
    pub fn sees(self, instance: &InstanceRow) -> bool {
        match self {
            Scope::All => true,
            Scope::User(id) => instance.user_id == Some(id),
        }
    }
}

/// A live instance by id, if the scope may see it.
pub fn instance_by_id_in(db: &mut dyn Db, scope: Scope, id: i64) -> Result<Option<InstanceRow>> {
    let (filter, owner) = scope.filter("i.user_id", 2);
    let mut params: Vec<Param<'_>> = vec![id.into()];
    params.extend(owner.map(Param::from));
    Ok(instances_where(db, &format!("i.id = $1{filter}"), &params)?
        .into_iter()
        .next())
}

/// Whether an instance (live or archived) exists and the scope may see it.
pub fn instance_visible(db: &mut dyn Db, scope: Scope, id: i64) -> Result<bool> {
    let (filter, owner) = scope.filter("user_id", 2);
    let mut params: Vec<Param<'_>> = vec![id.into()];
    params.extend(owner.map(Param::from));
    Ok(db
        .query_opt(
            &format!("SELECT id FROM instance WHERE id = $1{filter}"),
            &params,
        )?
        .is_some())
}

/// The live root instance titled `title` of the scope's user.
pub fn root_by_title_in(
    db: &mut dyn Db,
    scope: Scope,
    shared: bool,
    title: &str,
) -> Result<Option<InstanceRow>> {
    instance_by_title(db, 0, shared, scope.owner(), title)
}

/// Live instances the scope may see, optionally only roots, in id order
/// after `after_id`.
pub fn list_instances_in(
    db: &mut dyn Db,
    scope: Scope,
    roots_only: bool,
    after_id: i64,
    limit: i64,
) -> Result<Vec<InstanceRow>> {
    let (filter, owner) = scope.filter("i.user_id", 3);
    let roots = if roots_only { " AND i.tree_id = 0" } else { "" };
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM instance i WHERE i.archived_at IS NULL{roots}{filter} \
         AND i.id > $1 ORDER BY i.id LIMIT $2"
    );
    let mut params: Vec<Param<'_>> = vec![after_id.into(), limit.into()];
    params.extend(owner.map(Param::from));
    db.query(&sql, &params)?
        .iter()
        .map(|r| instance_from(r, 0))
        .collect()
}

/// Live shared instances hosted by an instance that the scope may see.
pub fn shared_hosted_by_in(
    db: &mut dyn Db,
    scope: Scope,
    host_id: i64,
) -> Result<Vec<InstanceRow>> {
    let (filter, owner) = scope.filter("i.user_id", 2);
    let mut params: Vec<Param<'_>> = vec![host_id.into()];
    params.extend(owner.map(Param::from));
    instances_where(db, &format!("i.host_id = $1{filter}"), &params)
}

/// Events newest first, optionally of one instance, with ids below
/// `before_id`; a user sees only the events of their own instances.
pub fn list_events_in(
    db: &mut dyn Db,
    scope: Scope,
    instance_id: Option<i64>,
    before_id: i64,
    limit: i64,
) -> Result<Vec<EventRow>> {
    let Scope::User(user) = scope else {
        return list_events(db, instance_id, before_id, limit);
    };
    let (condition, params): (&str, Vec<Param<'_>>) = match instance_id {
        Some(id) => (
            "e.instance_id = $4 AND",
            vec![user.into(), before_id.into(), limit.into(), id.into()],
        ),
        None => ("", vec![user.into(), before_id.into(), limit.into()]),
    };
    db.query(
        &format!(
            "SELECT e.id, e.at, e.kind, e.computer, e.partition, e.instance_id, e.message FROM event e \
             JOIN instance i ON i.id = e.instance_id \
             WHERE {condition} i.user_id = $1 AND e.id < $2 ORDER BY e.id DESC LIMIT $3"
        ),
        &params,
    )?
    .iter()
    .map(event_from)
    .collect()
}

// ---------------------------------------------------------------- accounts

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenRow {
    pub id: i64,
    pub user: String,
    pub label: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Creates a user; `None` if the name is taken.
pub fn insert_user(db: &mut dyn Db, name: &str, now: i64) -> Result<Option<i64>> {
    db.query_opt(
        "INSERT INTO \"user\" (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING id",
        &[name.into(), now.into()],
    )?
    .map(|r| r.int(0))
    .transpose()
}

pub fn user_by_name(db: &mut dyn Db, name: &str) -> Result<Option<UserRow>> {
    db.query_opt(
        "SELECT id, name, created_at FROM \"user\" WHERE name = $1",
        &[name.into()],
    )?
    .map(|r| {
        Ok(UserRow {
            id: r.int(0)?,
            name: r.text(1)?,
            created_at: r.int(2)?,
        })
    })
    .transpose()
}

/// Records a token by the hex SHA-256 of its text (the text is never stored).
pub fn insert_token(
    db: &mut dyn Db,
    user_id: i64,
    token_hash: &str,
    label: &str,
    now: i64,
) -> Result<i64> {
    db.query_opt(
        "INSERT INTO api_token (token_hash, user_id, label, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        &[token_hash.into(), user_id.into(), label.into(), now.into()],
    )?
    .ok_or_else(|| StoreError::Corrupt("insert returned no row".into()))?
    .int(0)
}

/// The user of a live (not revoked) token, by the hash of its text, with
/// the stored hash (for the caller's constant-time comparison).
pub fn user_of_token(db: &mut dyn Db, token_hash: &str) -> Result<Option<(i64, String)>> {
    db.query_opt(
        "SELECT t.user_id, t.token_hash FROM api_token t WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
        &[token_hash.into()],
    )?
    .map(|r| Ok((r.int(0)?, r.text(1)?)))
    .transpose()
}

/// Revokes a token by id; false if there is no such live token.
pub fn revoke_token(db: &mut dyn Db, id: i64, now: i64) -> Result<bool> {
    Ok(db.execute(
        "UPDATE api_token SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        &[now.into(), id.into()],
    )? > 0)
}

/// Tokens (never their text), optionally of one user, oldest first.
pub fn list_tokens(db: &mut dyn Db, user: Option<&str>) -> Result<Vec<TokenRow>> {
    let base = "SELECT t.id, u.name, t.label, t.created_at, t.revoked_at FROM api_token t \
                JOIN \"user\" u ON u.id = t.user_id";
    match user {
        Some(name) => db.query(
            &format!("{base} WHERE u.name = $1 ORDER BY t.id"),
            &[name.into()],
        )?,
        None => db.query(&format!("{base} ORDER BY t.id"), &[])?,
    }
    .iter()
    .map(|r| {
        Ok(TokenRow {
            id: r.int(0)?,
            user: r.text(1)?,
            label: r.text(2)?,
            created_at: r.int(3)?,
            revoked_at: r.opt_int(4)?,
        })
    })
    .collect()
}

// ------------------------------------------------------------------ certificates

/// Whom a client certificate identifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CertificateOwner {
    /// A node: it acts only on this computer.
    Computer { computer: String },
    /// A user: it acts in this user's scope.
    User { user_id: i64, user: String },
}

/// A certificate issued by the master's authority (never its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateRow {
    pub id: i64,
    /// Hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
    #[serde(flatten)]
    pub owner: CertificateOwner,
    pub serial: String,
    pub not_after: i64,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

const CERTIFICATE_COLUMNS: &str = "c.id, c.fingerprint, c.kind, c.computer_reference, c.user_id, \
     u.name, c.serial, c.not_after, c.created_at, c.revoked_at FROM certificate c \
     LEFT JOIN \"user\" u ON u.id = c.user_id";

fn certificate_row(r: &Row) -> Result<CertificateRow> {
    let kind = r.text(2)?;
    let owner = match kind.as_str() {
        "computer" => CertificateOwner::Computer {
            computer: r.opt_text(3)?.ok_or_else(|| {
                StoreError::Corrupt("computer certificate without computer".into())
            })?,
        },
        "user" => CertificateOwner::User {
            user_id: r
                .opt_int(4)?
                .ok_or_else(|| StoreError::Corrupt("user certificate without user".into()))?,
            user: r.opt_text(5)?.unwrap_or_default(),
        },
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown certificate kind {other:?}"
            )))
        }
    };
    Ok(CertificateRow {
        id: r.int(0)?,
        fingerprint: r.text(1)?,
        owner,
        serial: r.text(6)?,
        not_after: r.int(7)?,
        created_at: r.int(8)?,
        revoked_at: r.opt_int(9)?,
    })
}

/// Records an issued certificate; its id.
pub fn insert_certificate(
    db: &mut dyn Db,
    fingerprint: &str,
    owner: &CertificateOwner,
    serial: &str,
    not_after: i64,
    now: i64,
) -> Result<i64> {
    let (kind, computer, user) = match owner {
        CertificateOwner::Computer { computer } => ("computer", Some(computer.as_str()), None),
        CertificateOwner::User { user_id, .. } => ("user", None, Some(*user_id)),
    };
    db.query_opt(
        "INSERT INTO certificate (fingerprint, kind, computer_reference, user_id, serial, not_after, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        &[
            fingerprint.into(),
            kind.into(),
            computer.into(),
            user.into(),
            serial.into(),
            not_after.into(),
            now.into(),
        ],
    )?
    .ok_or_else(|| StoreError::Corrupt("insert returned no row".into()))?
    .int(0)
}

/// A certificate by its fingerprint, revoked or not.
pub fn certificate_by_fingerprint(
    db: &mut dyn Db,
    fingerprint: &str,
) -> Result<Option<CertificateRow>> {
    db.query_opt(
        &format!("SELECT {CERTIFICATE_COLUMNS} WHERE c.fingerprint = $1"),
        &[fingerprint.into()],
    )?
    .map(|r| certificate_row(&r))
    .transpose()
}

/// Every certificate, oldest first.
pub fn list_certificates(db: &mut dyn Db) -> Result<Vec<CertificateRow>> {
    db.query(&format!("SELECT {CERTIFICATE_COLUMNS} ORDER BY c.id"), &[])?
        .iter()
        .map(certificate_row)
        .collect()
}

/// Which certificates a revocation names.
#[derive(Debug, Clone)]
pub enum CertificateSelector<'a> {
    Fingerprint(&'a str),
    Computer(&'a str),
    User(i64),
}

/// Revokes the live certificates selected; how many were revoked.
pub fn revoke_certificates(
    db: &mut dyn Db,
    selector: &CertificateSelector<'_>,
    now: i64,
) -> Result<usize> {
    let (column, value): (&str, Param<'_>) = match selector {
        CertificateSelector::Fingerprint(f) => ("fingerprint", (*f).into()),
        CertificateSelector::Computer(c) => ("computer_reference", (*c).into()),
        CertificateSelector::User(u) => ("user_id", (*u).into()),
    };
    Ok(db.execute(
        &format!(
            "UPDATE certificate SET revoked_at = $1 WHERE {column} = $2 AND revoked_at IS NULL"
        ),
        &[now.into(), value],
    )? as usize)
}

// ---------------------------------------------------------------- dashboard sessions

/// Opens a dashboard session, stored by the hash of its id, tied to the
/// token it was opened with.
pub fn insert_web_session(
    db: &mut dyn Db,
    session_hash: &str,
    user_id: i64,
    token_hash: &str,
    now: i64,
    expires_at: i64,
) -> Result<()> {
    // Expired sessions are dropped as new ones open: the table stays small.
    db.execute(
        "DELETE FROM web_session WHERE expires_at <= $1",
        &[now.into()],
    )?;
    db.execute(
        "INSERT INTO web_session (session_hash, user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        &[session_hash.into(), user_id.into(), token_hash.into(), now.into(), expires_at.into()],
    )?;
    Ok(())
}

/// The user (id and name) of a live session: not expired, and opened with a
/// token that is not revoked.
pub fn web_session_user(
    db: &mut dyn Db,
    session_hash: &str,
    now: i64,
) -> Result<Option<(i64, String)>> {
    db.query_opt(
        "SELECT u.id, u.name FROM web_session s JOIN api_token t ON t.token_hash = s.token_hash \
         JOIN \"user\" u ON u.id = s.user_id \
         WHERE s.session_hash = $1 AND s.expires_at > $2 AND t.revoked_at IS NULL",
        &[session_hash.into(), now.into()],
    )?
    .map(|r| Ok((r.int(0)?, r.text(1)?)))
    .transpose()
}

/// Ends a session (logout); false if there was none.
pub fn delete_web_session(db: &mut dyn Db, session_hash: &str) -> Result<bool> {
    Ok(db.execute(
        "DELETE FROM web_session WHERE session_hash = $1",
        &[session_hash.into()],
    )? > 0)
}
