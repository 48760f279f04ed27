//! The master's operations, written once over [`Db`] and run inside one
//! store transaction each: registration, supply, requests and allocation,
//! reports, connection parameters, bangs. No HTTP and no wire format here
//! beyond the parameter encodings that are stored.

use std::collections::BTreeMap;

use slapos_core::{
    now_micros, validate_reference, validate_software_url, InstanceState, Sla, SoftwareState,
};
use slapos_proto::marshal::{self, python_str, Value};
use slapos_proto::params;
use slapos_store::queries::{self as q, Address, ComputerRow, InstanceRow, PartitionRow, Scope};
use slapos_store::Db;

use crate::error::{MasterError, Result};

/// Settings that change what the engine decides.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Computer used when a request names none (the proxy's `computer_id`).
    /// `None`: any computer that satisfies the SLA.
    pub default_computer: Option<String>,
}

fn not_found(msg: impl Into<String>) -> MasterError {
    MasterError::NotFound(msg.into())
}

/// A new timestamp, strictly greater than `previous`.
fn next_timestamp(previous: i64) -> i64 {
    now_micros().max(previous + 1)
}

pub(crate) fn computer(db: &mut dyn Db, reference: &str) -> Result<ComputerRow> {
    q::computer_by_reference(db, reference)?
        .ok_or_else(|| not_found(format!("Computer {reference:?} is not registered")))
}

pub(crate) fn partition(
    db: &mut dyn Db,
    computer: &ComputerRow,
    reference: &str,
) -> Result<PartitionRow> {
    q::partition_by_reference(db, computer.id, reference)?.ok_or_else(|| {
        not_found(format!(
            "Partition {reference:?} of computer {:?} does not exist",
            computer.reference
        ))
    })
}

/// The live instance on a partition, or NotFound.
fn instance_on(
    db: &mut dyn Db,
    computer_ref: &str,
    partition_ref: &str,
) -> Result<(ComputerRow, PartitionRow, InstanceRow)> {
    let c = computer(db, computer_ref)?;
    let p = partition(db, &c, partition_ref)?;
    let i = match p.instance_id {
        Some(_) => q::instance_on_partition(db, p.id)?,
        None => None,
    };
    let i = i.ok_or_else(|| {
        not_found(format!(
            "Partition {partition_ref:?} of computer {computer_ref:?} holds no instance"
        ))
    })?;
    Ok((c, p, i))
}

fn event(
    db: &mut dyn Db,
    kind: &str,
    computer: Option<&str>,
    partition: Option<&str>,
    instance: Option<i64>,
    message: &str,
) -> Result<()> {
    q::add_event(
        db,
        now_micros(),
        kind,
        computer,
        partition,
        instance,
        message,
    )?;
    Ok(())
}

// ------------------------------------------------------------------ registration

/// A computer as `slapos node format` describes it.
#[derive(Debug, Clone, Default)]
pub struct ComputerConfig {
    pub reference: String,
    pub address: Option<String>,
    pub netmask: Option<String>,
    pub partitions: Vec<PartitionConfig>,
}

#[derive(Debug, Clone, Default)]
pub struct PartitionConfig {
    pub reference: String,
    pub addresses: Vec<Address>,
}

/// Registers a computer and its partitions. Free partitions the node no
/// longer declares are removed; busy ones are kept so no instance is lost.
pub fn load_computer_configuration(db: &mut dyn Db, config: &ComputerConfig) -> Result<()> {
    validate_reference("computer reference", &config.reference)?;
    for p in &config.partitions {
        validate_reference("partition reference", &p.reference)?;
    }
    let now = now_micros();
    let computer_id = q::upsert_computer(
        db,
        &config.reference,
        config.address.as_deref(),
        config.netmask.as_deref(),
        now,
    )?;
    let declared: std::collections::HashSet<&str> = config
        .partitions
        .iter()
        .map(|p| p.reference.as_str())
        .collect();
    for existing in q::partitions_of(db, computer_id)? {
        if !declared.contains(existing.reference.as_str()) {
            if existing.instance_id.is_none() {
                q::delete_partition(db, existing.id)?;
            } else {
                tracing::warn!(computer = %config.reference, partition = %existing.reference, "busy partition missing from format; kept");
            }
        }
    }
    for p in &config.partitions {
        q::upsert_partition(db, computer_id, &p.reference, &p.addresses)?;
    }
    event(
        db,
        "computer.formatted",
        Some(&config.reference),
        None,
        None,
        &format!("{} partitions declared", config.partitions.len()),
    )
}

// ------------------------------------------------------------------ software

/// Asks a computer to install (`available`) or remove (`destroyed`) a release.
/// Supplying to a computer not yet formatted registers it, as the reference does.
/// A user (`Scope::User`) supplies as the owner of the supply and changes only
/// their own: a release supplied there by someone else is not found.
pub fn supply(
    db: &mut dyn Db,
    scope: Scope,
    computer_ref: &str,
    url: &str,
    state: SoftwareState,
) -> Result<()> {
    validate_reference("computer reference", computer_ref)?;
    validate_software_url(url)?;
    let now = now_micros();
    let computer_id = match q::computer_by_reference(db, computer_ref)? {
        Some(c) => c.id,
        None => q::upsert_computer(db, computer_ref, None, None, now)?,
    };
    if !q::upsert_supply(db, scope, computer_id, url, state.as_str(), now)? {
        return Err(not_found(format!(
            "No supply of {url} on {computer_ref} that you may change"
        )));
    }
    event(
        db,
        "software.supplied",
        Some(computer_ref),
        None,
        None,
        &format!("{url} requested {state}"),
    )
}

/// What a node says about a release it installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftwareReport {
    Building,
    Available,
    Error,
    Destroyed,
}

pub fn report_software(
    db: &mut dyn Db,
    computer_ref: &str,
    url: &str,
    report: SoftwareReport,
    error_log: Option<&str>,
) -> Result<()> {
    let c = computer(db, computer_ref)?;
    let now = now_micros();
    let state = match report {
        SoftwareReport::Building => "building",
        SoftwareReport::Available => "available",
        SoftwareReport::Error => "error",
        SoftwareReport::Destroyed => {
            q::delete_software(db, c.id, url)?;
            return event(
                db,
                "software.destroyed",
                Some(computer_ref),
                None,
                None,
                url,
            );
        }
    };
    if !q::report_software(db, c.id, url, state, error_log, now)? {
        // A node may report a release that was removed meanwhile: keep the
        // news (the reference ignores these reports altogether).
        tracing::debug!(
            computer = computer_ref,
            url,
            state,
            "report for a release that is not supplied"
        );
    }
    let message = match error_log {
        Some(log) => format!("{url}: {state}: {}", tail(log, 2000)),
        None => format!("{url}: {state}"),
    };
    event(
        db,
        &format!("software.{state}"),
        Some(computer_ref),
        None,
        None,
        &message,
    )
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

// ------------------------------------------------------------------ requests

/// Who makes a request: a user, or an instance (its partition) for a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    User,
    Partition { computer: String, partition: String },
}

#[derive(Debug, Clone)]
pub struct RequestInput {
    pub software_release: String,
    pub title: String,
    pub software_type: String,
    /// The parameter dictionary as received (values keep their types).
    pub parameters: Vec<(String, Value)>,
    pub sla: Sla,
    /// `None`: keep the current state (`started` for a new instance).
    pub state: Option<InstanceState>,
    pub shared: bool,
    pub requester: Requester,
    /// The user who owns a root instance (`None`: the proxy's implicit
    /// user). Ignored for a child, which belongs to its tree's owner.
    pub owner: Option<i64>,
}

/// What a request resolved to, with everything an answer needs.
#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub instance: InstanceRow,
    pub computer: String,
    /// The partition of the instance, or of its host for a shared instance.
    pub partition: PartitionRow,
    /// The request's parameters, stringified as the node sees them.
    pub parameters: Vec<(String, Option<String>)>,
    pub connection: Vec<(String, Option<String>)>,
}

/// Parameter values as every consumer but the shared-instance list sees them:
/// Python `str()` of the value, and `None` for an empty string.
pub fn stringify(parameters: &[(String, Value)]) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = parameters
        .iter()
        .map(|(k, v)| {
            let s = python_str(v);
            (k.clone(), if s.is_empty() { None } else { Some(s) })
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Parameters are stored as JSON that keeps their marshal types (strings,
/// ints, floats, bools, None, lists, dicts; rarer types tagged): decoding it
/// is several times cheaper than the marshal XML, and the node view decodes
/// every partition's parameters on each poll. Rows written as marshal XML
/// (before this format) still read.
pub(crate) fn encode_parameters(parameters: &[(String, Value)]) -> Result<String> {
    let map: serde_json::Map<String, serde_json::Value> = parameters
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect();
    Ok(serde_json::Value::Object(map).to_string())
}

pub(crate) fn decode_parameters(stored: &str) -> Result<Vec<(String, Value)>> {
    if stored.starts_with("<marshal") {
        return match marshal::loads(stored)? {
            Value::Dict(items) => Ok(items
                .into_iter()
                .map(|(k, v)| match k {
                    Value::String(k) => (k, v),
                    other => (python_str(&other), v),
                })
                .collect()),
            _ => Err(corrupt("stored parameters are not a dictionary")),
        };
    }
    match serde_json::from_str::<serde_json::Value>(stored) {
        Ok(serde_json::Value::Object(map)) => Ok(map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect()),
        _ => Err(corrupt("stored parameters are not a JSON object")),
    }
}

fn corrupt(what: &str) -> MasterError {
    MasterError::Store(slapos_store::StoreError::Corrupt(what.into()))
}

fn tagged(tag: &str, v: serde_json::Value) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert(tag.to_string(), v);
    serde_json::Value::Object(m)
}

fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::None => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Long(s) => tagged("$long", J::String(s.clone())),
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) if f.fract() != 0.0 || f.abs() >= 1e16 => J::Number(n),
            _ => tagged("$float", J::String(python_str(v))),
        },
        Value::String(s) => J::String(s.clone()),
        Value::List(items) => J::Array(items.iter().map(value_to_json).collect()),
        Value::Tuple(items) => tagged(
            "$tuple",
            J::Array(items.iter().map(value_to_json).collect()),
        ),
        Value::Set(items) => tagged("$set", J::Array(items.iter().map(value_to_json).collect())),
        Value::Dict(items) => {
            let plain = items
                .iter()
                .all(|(k, _)| matches!(k, Value::String(s) if !s.starts_with('$')));
            if plain {
                J::Object(
                    items
                        .iter()
                        .map(|(k, v)| (python_str(k), value_to_json(v)))
                        .collect(),
                )
            } else {
                tagged(
                    "$dict",
                    J::Array(
                        items
                            .iter()
                            .map(|(k, v)| J::Array(vec![value_to_json(k), value_to_json(v)]))
                            .collect(),
                    ),
                )
            }
        }
        // Objects never appear in parameters; keep their text.
        Value::Object(_) => J::String(python_str(v)),
    }
}

fn json_to_value(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::None,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => Value::String(s),
        J::Array(items) => Value::List(items.into_iter().map(json_to_value).collect()),
        J::Object(mut map) => {
            if map.len() == 1 {
                let (tag, inner) = map
                    .iter()
                    .next()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .unwrap_or_default();
                let list = |inner: serde_json::Value| match inner {
                    J::Array(items) => items.into_iter().map(json_to_value).collect(),
                    _ => Vec::new(),
                };
                match (tag.as_str(), inner) {
                    ("$long", J::String(s)) => return Value::Long(s),
                    ("$float", J::String(s)) => return Value::Float(s.parse().unwrap_or(f64::NAN)),
                    ("$tuple", inner @ J::Array(_)) => return Value::Tuple(list(inner)),
                    ("$set", inner @ J::Array(_)) => return Value::Set(list(inner)),
                    ("$dict", J::Array(pairs)) => {
                        return Value::Dict(
                            pairs
                                .into_iter()
                                .filter_map(|p| match p {
                                    J::Array(mut kv) if kv.len() == 2 => {
                                        let v = kv.pop()?;
                                        let k = kv.pop()?;
                                        Some((json_to_value(k), json_to_value(v)))
                                    }
                                    _ => None,
                                })
                                .collect(),
                        )
                    }
                    _ => {}
                }
            }
            let items = std::mem::take(&mut map);
            Value::Dict(
                items
                    .into_iter()
                    .map(|(k, v)| (Value::String(k), json_to_value(v)))
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod parameter_storage_tests {
    use super::*;

    #[test]
    fn parameters_keep_their_types_through_storage() {
        let params = vec![
            ("s".to_string(), Value::str("Grüße <&>")),
            ("i".to_string(), Value::Int(8080)),
            ("f".to_string(), Value::Float(1.5)),
            ("whole".to_string(), Value::Float(2.0)),
            ("n".to_string(), Value::None),
            ("b".to_string(), Value::Bool(true)),
            (
                "l".to_string(),
                Value::List(vec![Value::Int(1), Value::str("x")]),
            ),
            ("t".to_string(), Value::Tuple(vec![Value::str("a")])),
            (
                "big".to_string(),
                Value::Long("99999999999999999999999".into()),
            ),
            (
                "d".to_string(),
                Value::Dict(vec![(Value::str("k"), Value::str("v"))]),
            ),
            (
                "odd".to_string(),
                Value::Dict(vec![(Value::Int(1), Value::str("v"))]),
            ),
        ];
        let stored = encode_parameters(&params).unwrap();
        let mut back = decode_parameters(&stored).unwrap();
        back.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want = params.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back, want);
        // Rows stored as marshal XML still read.
        let legacy =
            marshal::dumps(&Value::Dict(vec![(Value::str("port"), Value::Int(1))])).unwrap();
        assert_eq!(
            decode_parameters(&legacy).unwrap(),
            vec![("port".to_string(), Value::Int(1))]
        );
    }
}

pub(crate) fn connection_of(instance: &InstanceRow) -> Vec<(String, Option<String>)> {
    match instance.connection_xml.as_deref() {
        Some(xml) => params::xml2dict(xml).unwrap_or_default(),
        None => Vec::new(),
    }
}

fn sla_json(sla: &Sla) -> String {
    serde_json::to_string(&sla.entries).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn sla_of(instance: &InstanceRow) -> BTreeMap<String, String> {
    serde_json::from_str(&instance.sla).unwrap_or_default()
}

pub fn request(
    db: &mut dyn Db,
    config: &EngineConfig,
    input: &RequestInput,
) -> Result<RequestOutcome> {
    validate_reference("instance reference", &input.title)?;
    validate_software_url(&input.software_release)?;
    validate_reference("software type", &input.software_type)?;
    let requester = match &input.requester {
        Requester::User => None,
        Requester::Partition {
            computer,
            partition,
        } => Some(
            instance_on(db, computer, partition)
                .map_err(|_| {
                    MasterError::BadRequest(format!(
                        "No partition matching the authorization header: ({computer} / {partition})"
                    ))
                })?
                .2,
        ),
    };
    let tree_id = requester.as_ref().map_or(0, |r| r.root_id());
    let owner = match &requester {
        Some(r) => r.user_id,
        None => input.owner,
    };
    q::lock_title(db, tree_id, input.shared, owner, &input.title)?;
    if input.shared {
        request_shared(db, config, input, tree_id, owner, requester.as_ref())
    } else {
        request_instance(db, config, input, tree_id, owner, requester.as_ref())
    }
}

/// Computers a request may land on, in preference order.
fn candidate_computers(
    db: &mut dyn Db,
    config: &EngineConfig,
    sla: &Sla,
) -> Result<Vec<ComputerRow>> {
    // An explicit computer_guid is binding; the proxy's default computer is
    // used when it is registered; otherwise any computer will do.
    let computers = match sla.computer_guid() {
        Some(reference) => q::computer_by_reference(db, reference)?
            .into_iter()
            .collect(),
        None => match config
            .default_computer
            .as_deref()
            .map(|d| q::computer_by_reference(db, d))
            .transpose()?
            .flatten()
        {
            Some(default) => vec![default],
            None => q::list_computers(db)?,
        },
    };
    Ok(computers
        .into_iter()
        .filter(|c| sla.matches_attributes(&c.attributes))
        .collect())
}

fn request_instance(
    db: &mut dyn Db,
    config: &EngineConfig,
    input: &RequestInput,
    tree_id: i64,
    owner: Option<i64>,
    requester: Option<&InstanceRow>,
) -> Result<RequestOutcome> {
    let now = now_micros();
    let parameters = encode_parameters(&input.parameters)?;
    let existing = q::instance_by_title(db, tree_id, false, owner, &input.title)?;
    let instance = match existing {
        None => {
            let state = input.state.unwrap_or(InstanceState::Started);
            if state == InstanceState::Destroyed {
                return Err(not_found(format!(
                    "Instance {:?} does not exist: there is nothing to destroy",
                    input.title
                )));
            }
            let mut row = InstanceRow {
                id: 0,
                title: input.title.clone(),
                tree_id,
                requester_id: requester.map(|r| r.id),
                software_release: input.software_release.clone(),
                software_type: input.software_type.clone(),
                shared: false,
                parameters,
                sla: sla_json(&input.sla),
                requested_state: state.as_str().to_string(),
                partition_id: None,
                host_id: None,
                connection_xml: None,
                timestamp: now,
                reported_state: None,
                reported_at: None,
                status_message: None,
                created_at: now,
                updated_at: now,
                user_id: owner,
            };
            row.id = q::insert_instance(db, &row)?;
            let mut partition = None;
            for c in candidate_computers(db, config, &input.sla)? {
                if let Some(p) = q::claim_free_partition(db, c.id, row.id)? {
                    partition = Some(p);
                    break;
                }
            }
            let partition = partition.ok_or_else(|| {
                not_found(format!(
                    "No free computer partition found for: {}",
                    input.title
                ))
            })?;
            row.partition_id = Some(partition.id);
            q::update_instance(db, &row)?;
            let computer = q::computer_by_id(db, partition.computer_id)?
                .ok_or_else(|| not_found("allocated partition has no computer"))?;
            event(
                db,
                "instance.requested",
                Some(&computer.reference),
                Some(&partition.reference),
                Some(row.id),
                &format!(
                    "{} requested {} ({})",
                    input.title, state, input.software_release
                ),
            )?;
            return outcome(db, row, input);
        }
        Some(mut row) => {
            let mut state = input
                .state
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| row.requested_state.clone());
            // A child follows its tree's root when the root is not started.
            if row.tree_id != 0 {
                if let Some(root) = q::instance_by_id(db, row.tree_id)? {
                    if root.requested_state != "started" {
                        state = root.requested_state.clone();
                    }
                }
            }
            if row.requested_state == "destroyed" && state != "destroyed" {
                return Err(MasterError::Conflict(format!(
                    "Instance {:?} is being destroyed and cannot be {state}; request it again once it is gone",
                    input.title
                )));
            }
            let requester_changed = requester.is_some_and(|r| row.requester_id != Some(r.id));
            if let Some(r) = requester {
                row.requester_id = Some(r.id);
            }
            let changed = row.requested_state != state
                || row.software_release != input.software_release
                || row.software_type != input.software_type
                || row.parameters != parameters;
            if changed {
                let state_changed = row.requested_state != state;
                row.requested_state = state.clone();
                row.software_release = input.software_release.clone();
                row.software_type = input.software_type.clone();
                row.parameters = parameters;
                row.timestamp = next_timestamp(row.timestamp);
                row.updated_at = now;
                q::update_instance(db, &row)?;
                event(
                    db,
                    "instance.changed",
                    None,
                    None,
                    Some(row.id),
                    &format!("{} requested {state}", row.title),
                )?;
                if state_changed && row.tree_id == 0 {
                    cascade_state(db, &row)?;
                }
            } else if requester_changed {
                q::update_instance(db, &row)?;
            }
            row
        }
    };
    outcome(db, instance, input)
}

/// A root's new requested state reaches every member of its tree:
/// stopped and destroyed always, started for members that were stopped.
fn cascade_state(db: &mut dyn Db, root: &InstanceRow) -> Result<()> {
    let timestamp = next_timestamp(root.timestamp);
    for mut member in q::tree_members(db, root.id)? {
        let follow = match root.requested_state.as_str() {
            "started" => member.requested_state == "stopped",
            _ => {
                member.requested_state != "destroyed"
                    && member.requested_state != root.requested_state
            }
        };
        if !follow {
            continue;
        }
        member.requested_state = root.requested_state.clone();
        member.timestamp = next_timestamp(member.timestamp.max(timestamp));
        member.updated_at = now_micros();
        q::update_instance(db, &member)?;
        if member.shared {
            touch_host(db, member.host_id)?;
        }
    }
    Ok(())
}

fn touch_host(db: &mut dyn Db, host_id: Option<i64>) -> Result<()> {
    if let Some(host) = host_id
        .map(|id| q::instance_by_id(db, id))
        .transpose()?
        .flatten()
    {
        q::set_timestamp(db, host.id, next_timestamp(host.timestamp))?;
    }
    Ok(())
}

fn outcome(db: &mut dyn Db, instance: InstanceRow, input: &RequestInput) -> Result<RequestOutcome> {
    let partition_id = if instance.shared {
        let host = instance
            .host_id
            .map(|id| q::instance_by_id(db, id))
            .transpose()?
            .flatten();
        host.and_then(|h| h.partition_id)
    } else {
        instance.partition_id
    };
    let partition = partition_id
        .map(|id| q::partition_by_id(db, id))
        .transpose()?
        .flatten()
        .ok_or_else(|| not_found(format!("Instance {:?} has no partition", instance.title)))?;
    let computer = q::computer_by_id(db, partition.computer_id)?
        .ok_or_else(|| not_found("partition without computer"))?
        .reference;
    Ok(RequestOutcome {
        connection: connection_of(&instance),
        parameters: stringify(&input.parameters),
        instance,
        computer,
        partition,
    })
}

fn request_shared(
    db: &mut dyn Db,
    config: &EngineConfig,
    input: &RequestInput,
    tree_id: i64,
    owner: Option<i64>,
    requester: Option<&InstanceRow>,
) -> Result<RequestOutcome> {
    let now = now_micros();
    let parameters = encode_parameters(&input.parameters)?;
    let existing = q::instance_by_title(db, tree_id, true, owner, &input.title)?;
    let state = input
        .state
        .map(|s| s.as_str().to_string())
        .or_else(|| existing.as_ref().map(|e| e.requested_state.clone()))
        .unwrap_or_else(|| "started".to_string());

    // Keep the current host while it is alive; otherwise find one.
    let current_host = match existing.as_ref().and_then(|e| e.host_id) {
        Some(id) => q::instance_by_id(db, id)?
            .filter(|h| h.requested_state != "destroyed" && h.partition_id.is_some()),
        None => None,
    };
    let host = match current_host {
        Some(h) => h,
        None => find_host(db, config, input)?,
    };
    let mut row = match existing {
        Some(row) => row,
        None => {
            let mut row = InstanceRow {
                id: 0,
                title: input.title.clone(),
                tree_id,
                requester_id: requester.map(|r| r.id),
                software_release: input.software_release.clone(),
                software_type: input.software_type.clone(),
                shared: true,
                parameters: parameters.clone(),
                sla: sla_json(&input.sla),
                requested_state: state.clone(),
                partition_id: None,
                host_id: Some(host.id),
                connection_xml: None,
                timestamp: now,
                reported_state: None,
                reported_at: None,
                status_message: None,
                created_at: now,
                updated_at: now,
                user_id: owner,
            };
            row.id = q::insert_instance(db, &row)?;
            event(
                db,
                "instance.requested",
                None,
                None,
                Some(row.id),
                &format!("shared {} requested {state}", row.title),
            )?;
            q::set_timestamp(db, host.id, next_timestamp(host.timestamp))?;
            return outcome(db, row, input);
        }
    };
    let old_host = row.host_id;
    let changed = row.requested_state != state
        || row.software_type != input.software_type
        || row.software_release != input.software_release
        || row.parameters != parameters
        || old_host != Some(host.id);
    if changed {
        row.requested_state = state.clone();
        row.software_release = input.software_release.clone();
        row.software_type = input.software_type.clone();
        row.parameters = parameters;
        row.host_id = Some(host.id);
        row.timestamp = next_timestamp(row.timestamp);
        row.updated_at = now;
        if let Some(r) = requester {
            row.requester_id = Some(r.id);
        }
        q::update_instance(db, &row)?;
        q::set_timestamp(db, host.id, next_timestamp(host.timestamp))?;
        if old_host.is_some() && old_host != Some(host.id) {
            touch_host(db, old_host)?;
        }
        event(
            db,
            "instance.changed",
            None,
            None,
            Some(row.id),
            &format!("shared {} requested {state}", row.title),
        )?;
    }
    outcome(db, row, input)
}

fn find_host(db: &mut dyn Db, config: &EngineConfig, input: &RequestInput) -> Result<InstanceRow> {
    let wanted_partition = input.sla.instance_guid();
    for c in candidate_computers(db, config, &input.sla)? {
        for candidate in
            q::host_candidates(db, c.id, &input.software_release, &input.software_type)?
        {
            if candidate.requested_state == "destroyed" {
                continue;
            }
            if let Some(guid) = wanted_partition {
                let partition = candidate
                    .partition_id
                    .map(|id| q::partition_by_id(db, id))
                    .transpose()?
                    .flatten();
                let Some(partition) = partition else { continue };
                let this_guid = format!("{}-{}", c.reference, partition.reference);
                if guid != this_guid && guid != partition.reference {
                    continue;
                }
            }
            return Ok(candidate);
        }
    }
    let computer = input
        .sla
        .computer_guid()
        .map(str::to_string)
        .or_else(|| config.default_computer.clone())
        .unwrap_or_default();
    Err(not_found(format!(
        "No partition corresponding to slave request: [{}, {}, {}]",
        input.software_release, computer, input.software_type
    )))
}

/// The reference a host uses to publish a shared instance's parameters:
/// `<root title>_<title>`, with an empty root title for a user's request.
pub fn slave_reference(db: &mut dyn Db, shared: &InstanceRow) -> Result<String> {
    let root_title = if shared.tree_id == 0 {
        String::new()
    } else {
        q::instance_by_id(db, shared.tree_id)?
            .map(|r| r.title)
            .unwrap_or_default()
    };
    Ok(format!("{root_title}_{}", shared.title))
}

// ------------------------------------------------------------------ partition reports

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionReport {
    Started,
    Stopped,
}

pub fn report_partition(
    db: &mut dyn Db,
    computer_ref: &str,
    partition_ref: &str,
    report: PartitionReport,
) -> Result<()> {
    let c = computer(db, computer_ref)?;
    let p = partition(db, &c, partition_ref)?;
    let Some(mut instance) = p
        .instance_id
        .map(|_| q::instance_on_partition(db, p.id))
        .transpose()?
        .flatten()
    else {
        // A node may still report a partition freed meanwhile.
        return Ok(());
    };
    let state = match report {
        PartitionReport::Started => "started",
        PartitionReport::Stopped => "stopped",
    };
    let now = now_micros();
    if instance.reported_state.as_deref() != Some(state) {
        event(
            db,
            &format!("instance.{state}"),
            Some(computer_ref),
            Some(partition_ref),
            Some(instance.id),
            &instance.title,
        )?;
    }
    instance.reported_state = Some(state.to_string());
    instance.reported_at = Some(now);
    instance.status_message = None;
    q::update_instance(db, &instance)?;
    Ok(())
}

/// Answer of `destroyedComputerPartition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestroyOutcome {
    Freed,
    AlreadyFree,
    /// A root is freed only once its tree is gone; its members were asked to go.
    WaitingForChildren(Vec<String>),
}

/// The node wiped a partition: free it, unless it is a root whose tree still
/// has members (they are requested destroyed, and the root waits).
pub fn destroyed_partition(
    db: &mut dyn Db,
    computer_ref: &str,
    partition_ref: &str,
) -> Result<DestroyOutcome> {
    let c = computer(db, computer_ref)?;
    let p = partition(db, &c, partition_ref)?;
    let Some(instance) = p
        .instance_id
        .map(|_| q::instance_on_partition(db, p.id))
        .transpose()?
        .flatten()
    else {
        if p.instance_id.is_some() {
            q::release_partition(db, p.id)?;
        }
        return Ok(DestroyOutcome::AlreadyFree);
    };
    if instance.requested_state != "destroyed" {
        return Err(MasterError::Conflict(format!(
            "Instance {:?} on {partition_ref} is requested {}, not destroyed: refusing to free its partition",
            instance.title, instance.requested_state
        )));
    }
    let now = now_micros();
    if instance.tree_id == 0 {
        let members: Vec<InstanceRow> = q::tree_members(db, instance.id)?
            .into_iter()
            .filter(|m| !m.shared || m.requested_state != "destroyed")
            .collect();
        let blocking: Vec<&InstanceRow> = members.iter().filter(|m| !m.shared).collect();
        if !blocking.is_empty() {
            let titles = blocking.iter().map(|m| m.title.clone()).collect();
            for mut m in members {
                if m.requested_state != "destroyed" {
                    m.requested_state = "destroyed".into();
                    m.timestamp = next_timestamp(m.timestamp);
                    m.updated_at = now;
                    q::update_instance(db, &m)?;
                    if m.shared {
                        touch_host(db, m.host_id)?;
                    }
                }
            }
            return Ok(DestroyOutcome::WaitingForChildren(titles));
        }
        // Shared members of a tree go with their root.
        for m in members {
            q::archive_instance(db, m.id, now)?;
            touch_host(db, m.host_id)?;
        }
    }
    // Shared instances hosted here lose their host; a re-request finds another.
    for mut hosted in q::shared_hosted_by(db, instance.id)? {
        hosted.host_id = None;
        hosted.updated_at = now;
        q::update_instance(db, &hosted)?;
    }
    q::archive_instance(db, instance.id, now)?;
    q::release_partition(db, p.id)?;
    if let Some(requester) = instance.requester_id {
        if let Some(r) = q::instance_by_id(db, requester)? {
            q::set_timestamp(db, r.id, next_timestamp(r.timestamp))?;
        }
    }
    event(
        db,
        "instance.destroyed",
        Some(computer_ref),
        Some(partition_ref),
        Some(instance.id),
        &instance.title,
    )?;
    Ok(DestroyOutcome::Freed)
}

/// Finds the shared instance a host publishes for.
fn hosted_shared(
    db: &mut dyn Db,
    host: &InstanceRow,
    slave_reference: &str,
) -> Result<InstanceRow> {
    for s in q::shared_hosted_by(db, host.id)? {
        if self::slave_reference(db, &s)? == slave_reference {
            return Ok(s);
        }
    }
    Err(not_found(format!(
        "No shared instance {slave_reference:?} is hosted by {:?}",
        host.title
    )))
}

/// Stores connection parameters published by an instance (or, with a slave
/// reference, by a host for one of its shared instances). When they change,
/// the requester is reprocessed so it can read them.
pub fn set_connection(
    db: &mut dyn Db,
    computer_ref: &str,
    partition_ref: &str,
    slave_ref: Option<&str>,
    connection: &[(String, Value)],
) -> Result<()> {
    let (_, _, host) = instance_on(db, computer_ref, partition_ref)?;
    let mut target = match slave_ref {
        Some(r) => hosted_shared(db, &host, r)?,
        None => host,
    };
    // Stored as the reference stores it: str() of each value, so an empty
    // string reads back as None and None as "None".
    let mut stringified: Vec<(String, String)> = connection
        .iter()
        .map(|(k, v)| (k.clone(), python_str(v)))
        .collect();
    stringified.sort();
    stringified.dedup_by(|a, b| a.0 == b.0);
    let xml = params::dict2xml(
        stringified
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_str()))),
    );
    if target.connection_xml.as_deref() == Some(xml.as_str()) {
        return Ok(());
    }
    target.connection_xml = Some(xml);
    target.updated_at = now_micros();
    q::update_instance(db, &target)?;
    if let Some(requester) = target.requester_id {
        if let Some(r) = q::instance_by_id(db, requester)? {
            q::set_timestamp(db, r.id, next_timestamp(r.timestamp))?;
        }
    }
    event(
        db,
        "instance.published",
        Some(computer_ref),
        Some(partition_ref),
        Some(target.id),
        &target.title,
    )
}

/// Bang: every instance of the tree gets one new common timestamp.
pub fn bang(db: &mut dyn Db, computer_ref: &str, partition_ref: &str, message: &str) -> Result<()> {
    let (_, _, instance) = instance_on(db, computer_ref, partition_ref)?;
    let root_id = instance.root_id();
    let mut members = q::tree_members(db, root_id)?;
    if let Some(root) = q::instance_by_id(db, root_id)? {
        members.push(root);
    }
    let timestamp = members
        .iter()
        .map(|m| m.timestamp + 1)
        .max()
        .unwrap_or(0)
        .max(now_micros());
    for m in members.iter().filter(|m| !m.shared) {
        q::set_timestamp(db, m.id, timestamp)?;
    }
    event(
        db,
        "instance.bang",
        Some(computer_ref),
        Some(partition_ref),
        Some(instance.id),
        message,
    )
}

pub fn rename(
    db: &mut dyn Db,
    computer_ref: &str,
    partition_ref: &str,
    slave_ref: Option<&str>,
    new_name: &str,
) -> Result<()> {
    validate_reference("new name", new_name)?;
    let (_, _, host) = instance_on(db, computer_ref, partition_ref)?;
    let mut target = match slave_ref {
        Some(r) => hosted_shared(db, &host, r)?,
        None => host,
    };
    if target.title == new_name {
        return Ok(());
    }
    if q::instance_by_title(db, target.tree_id, target.shared, target.user_id, new_name)?.is_some()
    {
        return Err(MasterError::Conflict(format!(
            "An instance named {new_name:?} already exists in this tree"
        )));
    }
    let old = std::mem::replace(&mut target.title, new_name.to_string());
    target.updated_at = now_micros();
    q::update_instance(db, &target)?;
    event(
        db,
        "instance.renamed",
        Some(computer_ref),
        Some(partition_ref),
        Some(target.id),
        &format!("{old} -> {new_name}"),
    )
}

pub fn instance_error(
    db: &mut dyn Db,
    computer_ref: &str,
    partition_ref: &str,
    slave_ref: Option<&str>,
    error_log: &str,
) -> Result<()> {
    let (_, _, host) = instance_on(db, computer_ref, partition_ref)?;
    let mut target = match slave_ref {
        Some(r) => hosted_shared(db, &host, r)?,
        None => host,
    };
    target.reported_state = Some("error".into());
    target.reported_at = Some(now_micros());
    target.status_message = Some(tail(error_log, 64 * 1024).to_string());
    q::update_instance(db, &target)?;
    event(
        db,
        "instance.error",
        Some(computer_ref),
        Some(partition_ref),
        Some(target.id),
        tail(error_log, 2000),
    )
}

/// Changes the requested state of a root instance, keeping everything else
/// (the dashboard's and the JSON API's start, stop and destroy).
pub fn set_requested_state(
    db: &mut dyn Db,
    config: &EngineConfig,
    scope: Scope,
    id: i64,
    new_state: InstanceState,
) -> Result<InstanceRow> {
    let row = q::instance_by_id_in(db, scope, id)?
        .ok_or_else(|| MasterError::NotFound(format!("No instance {id}")))?;
    if row.tree_id != 0 {
        return Err(MasterError::Conflict(
            "only a root instance's state can be changed; its requester manages the others".into(),
        ));
    }
    let input = RequestInput {
        software_release: row.software_release.clone(),
        title: row.title.clone(),
        software_type: row.software_type.clone(),
        parameters: decode_parameters(&row.parameters)?,
        sla: Sla::from_pairs(sla_of(&row)),
        state: Some(new_state),
        shared: row.shared,
        requester: Requester::User,
        owner: row.user_id,
    };
    Ok(request(db, config, &input)?.instance)
}

/// `slapos node bang`: every instance of the computer is reprocessed.
pub fn computer_bang(db: &mut dyn Db, computer_ref: &str, message: &str) -> Result<()> {
    let c = computer(db, computer_ref)?;
    for (_, instance) in q::partitions_with_instances(db, c.id)? {
        if let Some(i) = instance {
            q::set_timestamp(db, i.id, next_timestamp(i.timestamp))?;
        }
    }
    event(db, "computer.bang", Some(computer_ref), None, None, message)
}

/// What recording a usage report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageOutcome {
    pub report_id: String,
    /// Records appended to the ledger.
    pub recorded: usize,
    /// Records this report had already appended (a resent report).
    pub already_recorded: usize,
}

/// Largest report accepted, in records.
const MAX_USAGE_RECORDS: usize = 10_000;

/// `useComputer`: keeps the TioXML journal as received and appends its
/// records to the usage ledger, in one transaction. A journal without a
/// report id (the reference node's) is named by a hash of its body, so a
/// resent journal is recorded once.
pub fn use_computer(db: &mut dyn Db, computer_ref: &str, use_string: &str) -> Result<UsageOutcome> {
    let report = slapos_proto::usage::UsageReport::from_tioxml(use_string)
        .map_err(|e| MasterError::BadRequest(format!("malformed use_string: {e}")))?;
    let c = computer(db, computer_ref)?;
    let derived = || {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(use_string.as_bytes());
        format!("tioxml-{}", hex::encode(&digest[..16]))
    };
    let report_id = report.report_id.clone().unwrap_or_else(derived);
    let outcome = record_usage(db, &c, &report, &report_id)?;
    q::add_usage_report(db, c.id, now_micros(), use_string)?;
    Ok(outcome)
}

/// `POST /api/v1/computers/{ref}/usage`: the same report as JSON (its
/// report id is required).
pub fn report_usage(
    db: &mut dyn Db,
    computer_ref: &str,
    report: &slapos_proto::usage::UsageReport,
) -> Result<UsageOutcome> {
    let report_id = report
        .report_id
        .clone()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| MasterError::BadRequest("a usage report needs a report_id".into()))?;
    let c = computer(db, computer_ref)?;
    let outcome = record_usage(db, &c, report, &report_id)?;
    let body = serde_json::to_string(report)
        .map_err(|e| MasterError::BadRequest(format!("usage report: {e}")))?;
    q::add_usage_report(db, c.id, now_micros(), &body)?;
    Ok(outcome)
}

fn record_usage(
    db: &mut dyn Db,
    c: &ComputerRow,
    report: &slapos_proto::usage::UsageReport,
    report_id: &str,
) -> Result<UsageOutcome> {
    use slapos_store::usage::{attribute_usage, insert_usage_record, NewUsageRecord};
    if report.records.len() > MAX_USAGE_RECORDS {
        return Err(MasterError::BadRequest(format!(
            "a usage report holds at most {MAX_USAGE_RECORDS} records"
        )));
    }
    let now = now_micros();
    let mut outcome = UsageOutcome {
        report_id: report_id.to_string(),
        recorded: 0,
        already_recorded: 0,
    };
    for e in &report.records {
        let id = e.report_id.as_deref().unwrap_or(report_id);
        if id.is_empty() || id.len() > 200 {
            return Err(MasterError::BadRequest(
                "a report id is 1 to 200 characters".into(),
            ));
        }
        let quantities = [
            e.cpu_micros,
            e.memory_byte_seconds,
            e.disk_byte_seconds,
            e.running_seconds,
        ];
        if quantities.iter().any(|q| *q < 0) || e.period_end < e.period_start {
            return Err(MasterError::BadRequest(format!(
                "{}: negative quantity or period ending before it starts",
                e.partition
            )));
        }
        let p = partition(db, c, &e.partition)?;
        let instance = e.instance.as_ref();
        let who = attribute_usage(
            db,
            p.id,
            instance.and_then(|i| i.title.as_deref()),
            instance.and_then(|i| i.root_title.as_deref()),
        )?;
        // A journal without dates: the period ends now.
        let (start, end) = if e.period_start == 0 && e.period_end == 0 {
            (now - 1, now)
        } else {
            (e.period_start, e.period_end.max(e.period_start + 1))
        };
        let inserted = insert_usage_record(
            db,
            &NewUsageRecord {
                computer_id: c.id,
                report_id: id,
                partition_reference: &e.partition,
                instance_id: who.as_ref().map(|w| w.instance_id),
                user_id: who.as_ref().and_then(|w| w.user_id),
                tree_id: who.as_ref().map(|w| w.tree_id),
                software_release: who.as_ref().map(|w| w.software_release.as_str()),
                software_type: who.as_ref().map(|w| w.software_type.as_str()),
                period_start: start,
                period_end: end,
                cpu_micros: e.cpu_micros,
                memory_byte_seconds: e.memory_byte_seconds,
                disk_byte_seconds: e.disk_byte_seconds,
                running_seconds: e.running_seconds,
            },
            now,
        )?;
        if inserted {
            outcome.recorded += 1;
        } else {
            outcome.already_recorded += 1;
        }
    }
    Ok(outcome)
}

/// Records the titles a partition requested during its last run.
pub fn related_instances(
    db: &mut dyn Db,
    computer_ref: &str,
    partition_ref: &str,
    titles: &[String],
) -> Result<()> {
    let (_, _, instance) = instance_on(db, computer_ref, partition_ref)?;
    event(
        db,
        "instance.related",
        Some(computer_ref),
        Some(partition_ref),
        Some(instance.id),
        &titles.join(", "),
    )
}

pub fn touch_computer(db: &mut dyn Db, computer_ref: &str) -> Result<()> {
    if let Some(c) = q::computer_by_reference(db, computer_ref)? {
        q::touch_computer(db, c.id, now_micros())?;
    }
    Ok(())
}
