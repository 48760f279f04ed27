//! The REST+JSON API (`/api/v1/...`, and the seed's `POST
//! /software_instance_module/`), described by the OpenAPI document served at
//! `/api/v1/openapi.json`. Same engine as the legacy protocol.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use slapos_core::{InstanceState, Sla, SoftwareState, DEFAULT_SOFTWARE_TYPE};
use slapos_proto::marshal::Value;
use slapos_store::queries::{self as q, Address, InstanceRow, Scope};
use slapos_store::Db;

use crate::auth::{ApiIdentity, Caller};
use crate::engine::{self, RequestInput, Requester};
use crate::error::MasterError;
use crate::server::AppState;

const OPENAPI: &str = include_str!("../openapi.json");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1", get(index))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/computers", get(list_computers))
        .route("/api/v1/computers/{reference}", get(get_computer))
        .route(
            "/api/v1/computers/{reference}/attributes",
            put(set_attributes),
        )
        .route(
            "/api/v1/computers/{reference}/software",
            get(list_software).post(supply),
        )
        .route("/api/v1/computers/{reference}/bang", post(computer_bang))
        .route("/api/v1/computers/{reference}/watch", get(watch_computer))
        .route("/api/v1/computers/{reference}/usage", post(report_usage))
        .route(
            "/api/v1/instances",
            get(list_instances).post(request_instance),
        )
        .route("/api/v1/instances/{id}", get(get_instance))
        .route(
            "/api/v1/instances/by-title/{title}",
            get(get_instance_by_title),
        )
        .route("/api/v1/instances/{id}/state", put(set_state))
        .route("/api/v1/instances/{id}/events", get(instance_events))
        .route("/api/v1/events", get(list_events))
        .route("/software_instance_module/", post(seed_request))
}

/// A JSON error: `{"status": 404, "error": "..."}`.
pub struct ApiError(MasterError);

impl<E: Into<MasterError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self.0, "API request failed");
        }
        (
            status,
            Json(json!({"status": status.as_u16(), "error": self.0.to_string()})),
        )
            .into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

pub(crate) async fn read<T, F>(state: &AppState, job: F) -> Result<T, MasterError>
where
    F: FnOnce(&mut dyn Db) -> Result<T, MasterError> + Send + 'static,
    T: Send + 'static,
{
    state.store.read(job).await
}

async fn index() -> Json<serde_json::Value> {
    Json(json!({
        "name": "slapos-rs master",
        "version": env!("CARGO_PKG_VERSION"),
        "links": {
            "openapi": "/api/v1/openapi.json",
            "computers": "/api/v1/computers",
            "instances": "/api/v1/instances",
            "events": "/api/v1/events",
            "usage": "/api/v1/usage",
            "price_lists": "/api/v1/price-lists",
            "invoices": "/api/v1/invoices",
        }
    }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// ------------------------------------------------------------------ computers

#[derive(Serialize)]
struct ComputerJson {
    reference: String,
    address: Option<String>,
    netmask: Option<String>,
    attributes: BTreeMap<String, String>,
    partitions_total: i64,
    partitions_free: i64,
    last_contact: Option<i64>,
}

#[derive(Serialize)]
struct PartitionJson {
    reference: String,
    free: bool,
    instance_id: Option<i64>,
    instance_title: Option<String>,
    addresses: Vec<Address>,
}

#[derive(Serialize)]
struct SoftwareJson {
    url: String,
    requested_state: String,
    reported_state: Option<String>,
    error_log: Option<String>,
    updated_at: i64,
}

fn computer_json(db: &mut dyn Db, c: q::ComputerRow) -> Result<ComputerJson, MasterError> {
    let (free, total) = q::partition_counts(db, c.id)?;
    Ok(ComputerJson {
        reference: c.reference,
        address: c.address,
        netmask: c.netmask,
        attributes: c.attributes,
        partitions_total: total,
        partitions_free: free,
        last_contact: c.last_contact,
    })
}

fn software_json(rows: Vec<q::SoftwareRow>) -> Vec<SoftwareJson> {
    rows.into_iter()
        .map(|s| SoftwareJson {
            url: s.url,
            requested_state: s.requested_state,
            reported_state: s.reported_state,
            error_log: s.error_log,
            updated_at: s.updated_at,
        })
        .collect()
}

async fn list_computers(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<ComputerJson>>> {
    let list = read(&state, |db| {
        q::list_computers(db)?
            .into_iter()
            .map(|c| computer_json(db, c))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(Json(list))
}

async fn get_computer(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(reference): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let value = read(&state, move |db| {
        let c = engine::computer(db, &reference)?;
        let id = c.id;
        let software = software_json(q::software_of_in(db, scope, id)?);
        let partitions: Vec<PartitionJson> = q::partitions_with_instances(db, id)?
            .into_iter()
            // Another user's instance: the partition is shown as taken only.
            .map(|(p, i)| (p, i.filter(|i| scope.sees(i))))
            .map(|(p, i)| PartitionJson {
                reference: p.reference,
                free: p.instance_id.is_none(),
                instance_id: i.as_ref().map(|i| i.id),
                instance_title: i.map(|i| i.title),
                addresses: p.addresses,
            })
            .collect();
        let computer = computer_json(db, c)?;
        Ok(json!({"computer": computer, "partitions": partitions, "software": software}))
    })
    .await?;
    Ok(Json(value))
}

async fn set_attributes(
    State(state): State<AppState>,
    ApiIdentity(who): ApiIdentity,
    Path(reference): Path<String>,
    Json(attributes): Json<BTreeMap<String, String>>,
) -> ApiResult<StatusCode> {
    // Computers are the provider's: with accounts on, only the computer's
    // own node (its certificate) changes them, never a user.
    who.require_computer(&reference)?;
    state
        .store
        .write(move |db| {
            let c = engine::computer(db, &reference)?;
            q::set_computer_attributes(db, c.id, &attributes)?;
            Ok::<_, MasterError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_software(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(reference): Path<String>,
) -> ApiResult<Json<Vec<SoftwareJson>>> {
    let rows = read(&state, move |db| {
        let c = engine::computer(db, &reference)?;
        Ok(q::software_of_in(db, scope, c.id)?)
    })
    .await?;
    Ok(Json(software_json(rows)))
}

#[derive(Deserialize)]
struct SupplyBody {
    url: String,
    #[serde(default)]
    state: Option<String>,
}

async fn supply(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(reference): Path<String>,
    Json(body): Json<SupplyBody>,
) -> ApiResult<StatusCode> {
    let software_state: SoftwareState = body.state.as_deref().unwrap_or("available").parse()?;
    state
        .store
        .write(move |db| engine::supply(db, scope, &reference, &body.url, software_state))
        .await?;
    state.notify_change();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct MessageBody {
    #[serde(default)]
    message: String,
}

async fn computer_bang(
    State(state): State<AppState>,
    ApiIdentity(who): ApiIdentity,
    Path(reference): Path<String>,
    body: Option<Json<MessageBody>>,
) -> ApiResult<StatusCode> {
    // A bang reprocesses every user's instances on the computer: its node's
    // call, not a user's.
    who.require_computer(&reference)?;
    let message = body.map(|b| b.0.message).unwrap_or_default();
    state
        .store
        .write(move |db| engine::computer_bang(db, &reference, &message))
        .await?;
    state.notify_change();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct WatchQuery {
    #[serde(default)]
    since: Option<String>,
    /// Seconds to wait at most (default 25, at most 60).
    #[serde(default)]
    timeout: Option<u64>,
}

/// Long poll for nodes: answers as soon as the computer's version differs
/// from `since`, or after the timeout with the same version. Changes made by
/// this process, or by other masters sharing a PostgreSQL database (LISTEN/
/// NOTIFY), wake watchers at once.
async fn watch_computer(
    State(state): State<AppState>,
    ApiIdentity(who): ApiIdentity,
    Path(reference): Path<String>,
    Query(query): Query<WatchQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    // The node of this computer, or any user (the answer is a version).
    if let crate::auth::Identity::Computer(_) = who {
        who.require_computer(&reference)?;
    }
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_secs(query.timeout.unwrap_or(25).min(60));
    let mut changes = state.changes.subscribe();
    let mut stopping = state.stopping.subscribe();
    // Other masters' commits arrive through the store's change notifications;
    // the recheck is only a safety net.
    let recheck = std::time::Duration::from_secs(30);
    loop {
        let r = reference.clone();
        let version = read(&state, move |db| {
            let c = engine::computer(db, &r)?;
            Ok(q::computer_version(db, c.id)?)
        })
        .await?;
        if query.since.as_deref() != Some(version.as_str())
            || tokio::time::Instant::now() >= deadline
        {
            return Ok(Json(json!({"version": version})));
        }
        if *stopping.borrow() {
            return Ok(Json(json!({"version": version})));
        }
        let wake = (deadline - tokio::time::Instant::now()).min(recheck);
        tokio::select! {
            _ = tokio::time::timeout(wake, changes.changed()) => {}
            _ = stopping.changed() => {}
        }
    }
}

/// A node's usage report (the JSON twin of `useComputer`): answers how many
/// of its records were new and how many were already recorded (a resend).
async fn report_usage(
    State(state): State<AppState>,
    ApiIdentity(who): ApiIdentity,
    Path(reference): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    // Only this computer's node (its certificate) reports its usage.
    who.require_computer(&reference)?;
    let report: slapos_proto::usage::UsageReport = serde_json::from_slice(&body)
        .map_err(|e| MasterError::BadRequest(format!("malformed usage report: {e}")))?;
    let outcome = state
        .store
        .write(move |db| engine::report_usage(db, &reference, &report))
        .await?;
    Ok(Json(json!({
        "report_id": outcome.report_id,
        "recorded": outcome.recorded,
        "already_recorded": outcome.already_recorded,
    })))
}

// ------------------------------------------------------------------ instances

#[derive(Serialize)]
pub struct InstanceJson {
    pub id: i64,
    pub title: String,
    pub software_release: String,
    pub software_type: String,
    pub shared: bool,
    pub requested_state: String,
    pub reported_state: Option<String>,
    pub status_message: Option<String>,
    pub parameters: BTreeMap<String, Option<String>>,
    pub connection_parameters: BTreeMap<String, Option<String>>,
    pub sla: BTreeMap<String, String>,
    pub computer: Option<String>,
    pub partition: Option<String>,
    pub ip_list: Vec<(String, String)>,
    pub root_instance_id: i64,
    pub requester_instance_id: Option<i64>,
    pub host_instance_id: Option<i64>,
    pub timestamp: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

pub(crate) fn instance_json(
    db: &mut dyn Db,
    row: InstanceRow,
) -> Result<InstanceJson, MasterError> {
    let partition_id = if row.shared {
        row.host_id
            .map(|h| q::instance_by_id(db, h))
            .transpose()?
            .flatten()
            .and_then(|h| h.partition_id)
    } else {
        row.partition_id
    };
    let partition = partition_id
        .map(|id| q::partition_by_id(db, id))
        .transpose()?
        .flatten();
    let computer = match &partition {
        Some(p) => q::computer_by_id(db, p.computer_id)?.map(|c| c.reference),
        None => None,
    };
    let parameters = engine::stringify(&engine::decode_parameters(&row.parameters)?)
        .into_iter()
        .collect();
    Ok(InstanceJson {
        id: row.id,
        root_instance_id: row.root_id(),
        title: row.title.clone(),
        software_release: row.software_release.clone(),
        software_type: row.software_type.clone(),
        shared: row.shared,
        requested_state: row.requested_state.clone(),
        reported_state: row.reported_state.clone(),
        status_message: row.status_message.clone(),
        parameters,
        connection_parameters: engine::connection_of(&row).into_iter().collect(),
        sla: engine::sla_of(&row),
        ip_list: partition
            .as_ref()
            .map(|p| {
                p.addresses
                    .iter()
                    .map(|a| (a.interface.clone(), a.addr.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        partition: partition.map(|p| p.reference),
        computer,
        requester_instance_id: row.requester_id,
        host_instance_id: row.host_id,
        timestamp: row.timestamp,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: i64,
    #[serde(default)]
    roots_only: bool,
}

fn default_limit() -> i64 {
    100
}

async fn list_instances(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Vec<InstanceJson>>> {
    let limit = query.limit.clamp(1, 1000);
    let list = read(&state, move |db| {
        q::list_instances_in(db, scope, query.roots_only, query.after, limit)?
            .into_iter()
            .map(|row| scoped_instance_json(db, scope, row))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(Json(list))
}

async fn get_instance(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<serde_json::Value>> {
    let value = read(&state, move |db| {
        let row = q::instance_by_id_in(db, scope, id)?
            .ok_or_else(|| MasterError::NotFound(format!("No instance {id}")))?;
        instance_with_tree(db, scope, row)
    })
    .await?;
    Ok(Json(value))
}

async fn get_instance_by_title(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(title): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let value = read(&state, move |db| {
        let row = match q::root_by_title_in(db, scope, false, &title)? {
            Some(r) => r,
            None => q::root_by_title_in(db, scope, true, &title)?
                .ok_or_else(|| MasterError::NotFound(format!("No instance titled {title:?}")))?,
        };
        instance_with_tree(db, scope, row)
    })
    .await?;
    Ok(Json(value))
}

/// An instance as a user sees it: the host of a shared instance is named
/// only when it is theirs too.
fn scoped_instance_json(
    db: &mut dyn Db,
    scope: Scope,
    row: InstanceRow,
) -> Result<InstanceJson, MasterError> {
    let host = row.host_id;
    let mut value = instance_json(db, row)?;
    if let Some(host) = host {
        if q::instance_by_id_in(db, scope, host)?.is_none() {
            value.host_instance_id = None;
        }
    }
    Ok(value)
}

fn instance_with_tree(
    db: &mut dyn Db,
    scope: Scope,
    row: InstanceRow,
) -> Result<serde_json::Value, MasterError> {
    let children: Vec<_> = q::instances_requested_by(db, row.id)?
        .into_iter()
        .filter(|c| scope.sees(c))
        .map(|c| json!({"id": c.id, "title": c.title, "shared": c.shared, "requested_state": c.requested_state}))
        .collect();
    let hosted: Vec<_> = q::shared_hosted_by_in(db, scope, row.id)?
        .into_iter()
        .map(|c| json!({"id": c.id, "title": c.title, "requested_state": c.requested_state}))
        .collect();
    let mut value = serde_json::to_value(scoped_instance_json(db, scope, row)?).unwrap_or_default();
    value["children"] = json!(children);
    value["hosted_shared_instances"] = json!(hosted);
    Ok(value)
}

#[derive(Deserialize)]
struct RequestBody {
    software_release: String,
    title: String,
    #[serde(default)]
    software_type: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    sla: BTreeMap<String, String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    shared: bool,
}

/// JSON values become marshal values; nested structures travel as JSON text.
pub(crate) fn json_to_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::None,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::String(s),
        other => Value::String(other.to_string()),
    }
}

async fn do_request(
    state: &AppState,
    scope: Scope,
    body: RequestBody,
) -> ApiResult<(StatusCode, Json<InstanceJson>)> {
    let requested_state = body
        .state
        .as_deref()
        .map(str::parse::<InstanceState>)
        .transpose()?;
    let input = RequestInput {
        software_release: body.software_release,
        title: body.title,
        software_type: body
            .software_type
            .unwrap_or_else(|| DEFAULT_SOFTWARE_TYPE.to_string()),
        parameters: body
            .parameters
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
        sla: Sla::from_pairs(body.sla),
        state: requested_state,
        shared: body.shared,
        requester: Requester::User,
        owner: scope.owner(),
    };
    let row = perform_request(state, input).await?;
    let instance = read(state, move |db| scoped_instance_json(db, scope, row)).await?;
    Ok((StatusCode::OK, Json(instance)))
}

/// A user's request: parameters checked against the release's schema (not
/// for a destruction), then the engine; nodes are woken.
pub(crate) async fn perform_request(
    state: &AppState,
    input: RequestInput,
) -> Result<InstanceRow, MasterError> {
    if input.state != Some(InstanceState::Destroyed) {
        state
            .schemas
            .check(
                &input.software_release,
                &input.software_type,
                input.shared,
                &input.parameters,
            )
            .await?;
    }
    let config = state.engine.clone();
    let row = state
        .store
        .write(move |db| Ok::<_, MasterError>(engine::request(db, &config, &input)?.instance))
        .await?;
    state.notify_change();
    Ok(row)
}

async fn request_instance(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Json(body): Json<RequestBody>,
) -> ApiResult<(StatusCode, Json<InstanceJson>)> {
    do_request(&state, scope, body).await
}

/// The seed document's `POST /software_instance_module/` with
/// `{"software_release", "instance_id", "instance_type"}`.
#[derive(Deserialize)]
struct SeedRequest {
    software_release: String,
    instance_id: String,
    #[serde(default)]
    instance_type: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    sla: BTreeMap<String, String>,
    #[serde(default)]
    state: Option<String>,
}

async fn seed_request(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Json(body): Json<SeedRequest>,
) -> ApiResult<(StatusCode, Json<InstanceJson>)> {
    do_request(
        &state,
        scope,
        RequestBody {
            software_release: body.software_release,
            title: body.instance_id,
            software_type: body.instance_type,
            parameters: body.parameters,
            sla: body.sla,
            state: body.state,
            shared: false,
        },
    )
    .await
}

#[derive(Deserialize)]
struct StateBody {
    state: String,
}

/// Changes the requested state of a root instance, keeping everything else.
async fn set_state(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(id): Path<i64>,
    Json(body): Json<StateBody>,
) -> ApiResult<Json<InstanceJson>> {
    let new_state: InstanceState = body.state.parse()?;
    let config = state.engine.clone();
    let instance = state
        .store
        .write(move |db| {
            let row = engine::set_requested_state(db, &config, scope, id, new_state)?;
            scoped_instance_json(db, scope, row)
        })
        .await?;
    state.notify_change();
    Ok(Json(instance))
}

#[derive(Deserialize)]
struct EventQuery {
    #[serde(default)]
    before: Option<i64>,
    #[serde(default = "default_limit")]
    limit: i64,
}

async fn list_events(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Query(query): Query<EventQuery>,
) -> ApiResult<Json<Vec<q::EventRow>>> {
    let limit = query.limit.clamp(1, 1000);
    let before = query.before.unwrap_or(i64::MAX);
    Ok(Json(
        read(&state, move |db| {
            Ok(q::list_events_in(db, scope, None, before, limit)?)
        })
        .await?,
    ))
}

async fn instance_events(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(id): Path<i64>,
    Query(query): Query<EventQuery>,
) -> ApiResult<Json<Vec<q::EventRow>>> {
    let limit = query.limit.clamp(1, 1000);
    let before = query.before.unwrap_or(i64::MAX);
    Ok(Json(
        read(&state, move |db| {
            // A user asking for another user's instance learns nothing.
            if scope != Scope::All && !q::instance_visible(db, scope, id)? {
                return Err(MasterError::NotFound(format!("No instance {id}")));
            }
            Ok(q::list_events_in(db, scope, Some(id), before, limit)?)
        })
        .await?,
    ))
}

/// Addresses of every partition of the tree a partition belongs to.
pub fn tree_addresses(
    db: &mut dyn Db,
    computer: &str,
    partition: &str,
) -> Result<Vec<Address>, MasterError> {
    let c = engine::computer(db, computer)?;
    let p = engine::partition(db, &c, partition)?;
    let instance = q::instance_on_partition(db, p.id)?.ok_or_else(|| {
        MasterError::NotFound(format!("Partition {partition:?} holds no instance"))
    })?;
    let root_id = instance.root_id();
    let mut members = q::tree_members(db, root_id)?;
    if let Some(root) = q::instance_by_id(db, root_id)? {
        members.insert(0, root);
    }
    let mut out = Vec::new();
    for m in members {
        if let Some(pid) = m.partition_id {
            if let Some(p) = q::partition_by_id(db, pid)? {
                out.extend(p.addresses);
            }
        }
    }
    Ok(out)
}
