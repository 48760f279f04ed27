//! The legacy SLAP protocol: form posts and query strings in, xml_marshaller
//! documents out, as the Python `slapos.slap` library and slapgrid speak it.
//! This module only translates; decisions are the engine's.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use slapos_core::{InstanceState, Sla, SoftwareState, DEFAULT_SOFTWARE_TYPE};
use slapos_proto::marshal::{self, Object, SlapClass, Value};

use crate::auth::Identity;
use crate::engine::{
    self, ComputerConfig, DestroyOutcome, PartitionConfig, PartitionReport, RequestInput,
    Requester, SoftwareReport,
};
use crate::error::MasterError;
use crate::server::AppState;
use crate::views::{self, ComputerView, PartitionView};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/getFullComputerInformation",
            get(full_computer_information),
        )
        .route("/getComputerInformation", get(full_computer_information))
        .route(
            "/registerComputerPartition",
            get(register_computer_partition),
        )
        .route(
            "/getComputerPartitionCertificate",
            get(partition_certificate),
        )
        .route(
            "/getHostingSubscriptionIpList",
            get(hosting_subscription_ip_list),
        )
        .route("/getComputerPartitionStatus", get(partition_status))
        .route(
            "/getSoftwareReleaseListFromSoftwareProduct",
            get(software_product),
        )
        .route("/getRunId", get(run_id))
        .route(
            "/loadComputerConfigurationFromXML",
            post(load_computer_configuration),
        )
        .route("/supplySupply", post(supply))
        .route("/buildingSoftwareRelease", post(software_building))
        .route("/availableSoftwareRelease", post(software_available))
        .route("/destroyedSoftwareRelease", post(software_destroyed))
        .route("/softwareReleaseError", post(software_error))
        .route(
            "/requestComputerPartition",
            post(request_computer_partition),
        )
        .route("/startedComputerPartition", post(partition_started))
        .route("/stoppedComputerPartition", post(partition_stopped))
        .route("/destroyedComputerPartition", post(partition_destroyed))
        .route("/softwareInstanceError", post(instance_error))
        .route("/softwareInstanceBang", post(instance_bang))
        .route("/softwareInstanceRename", post(instance_rename))
        .route(
            "/setComputerPartitionConnectionXml",
            post(set_connection_xml),
        )
        .route(
            "/updateComputerPartitionRelatedInstanceList",
            post(related_instance_list),
        )
        .route("/useComputer", post(use_computer))
        .route("/computerBang", post(computer_bang))
}

// ------------------------------------------------------------------ plumbing

/// A legacy answer: the error's status with its message as plain text.
pub struct LegacyError(pub MasterError);

impl From<MasterError> for LegacyError {
    fn from(e: MasterError) -> Self {
        LegacyError(e)
    }
}

impl IntoResponse for LegacyError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
        }
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.0.to_string(),
        )
            .into_response()
    }
}

type LegacyResult = Result<Response, LegacyError>;

/// The caller of a legacy route (see [`crate::auth`]): with authentication
/// on, every route needs a credential, refused as plain text.
pub struct Who(pub Identity);

impl axum::extract::FromRequestParts<AppState> for Who {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Who, Response> {
        crate::auth::identify(parts, state)
            .await
            .map(Who)
            .map_err(crate::auth::AuthFailure::text)
    }
}

/// Checks, in a read, that the caller may act on this partition.
async fn check_partition(
    state: &AppState,
    who: &Identity,
    computer: &str,
    partition: &str,
) -> Result<(), MasterError> {
    if *who == Identity::Open {
        return Ok(());
    }
    let (who, c, p) = (who.clone(), computer.to_string(), partition.to_string());
    read(state, move |db| who.check_partition(db, &c, &p)).await
}

fn xml(value: &Value) -> LegacyResult {
    let body = marshal::dumps(value)
        .map_err(|e| MasterError::BadRequest(format!("answer cannot be encoded: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response())
}

fn text(body: impl Into<String>) -> LegacyResult {
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response())
}

/// Form or query fields. The client sends Python's `None` as the text
/// `None`; optional fields treat it, like an empty value, as absent.
pub struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(raw: &[u8]) -> Fields {
        Fields(form_urlencoded::parse(raw).into_owned().collect())
    }

    fn required(&self, name: &str) -> Result<&str, MasterError> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| MasterError::BadRequest(format!("missing required field {name:?}")))
    }

    fn optional(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty() && *v != "None")
    }
}

fn query_fields(raw: Option<&str>) -> Fields {
    Fields::parse(raw.unwrap_or("").as_bytes())
}

/// Runs a write job; watchers (node long polls) are woken after it commits.
async fn write<T, F>(state: &AppState, job: F) -> Result<T, MasterError>
where
    F: FnMut(&mut dyn slapos_store::Db) -> Result<T, MasterError> + Send + 'static,
    T: Send + 'static,
{
    let result = state.store.write(job).await;
    if result.is_ok() {
        state.notify_change();
    }
    result
}

async fn read<T, F>(state: &AppState, job: F) -> Result<T, MasterError>
where
    F: FnOnce(&mut dyn slapos_store::Db) -> Result<T, MasterError> + Send + 'static,
    T: Send + 'static,
{
    state.store.read(job).await
}

fn decode(field: &str, raw: &str) -> Result<Value, MasterError> {
    marshal::loads(raw).map_err(|e| {
        MasterError::BadRequest(format!(
            "field {field:?} is not a valid marshalled document: {e}"
        ))
    })
}

fn decode_dict(field: &str, raw: &str) -> Result<Vec<(String, Value)>, MasterError> {
    match decode(field, raw)? {
        Value::Dict(items) => items
            .into_iter()
            .map(|(k, v)| match k {
                Value::String(k) => Ok((k, v)),
                other => Ok((marshal::python_str(&other), v)),
            })
            .collect(),
        Value::None => Ok(Vec::new()),
        _ => Err(MasterError::BadRequest(format!(
            "field {field:?} must be a dictionary"
        ))),
    }
}

// ------------------------------------------------------------------ marshal objects

fn s(v: impl Into<String>) -> Value {
    Value::str(v)
}

fn entry(k: &str, v: Value) -> (Value, Value) {
    (s(k), v)
}

fn string_dict(items: &[(String, Option<String>)]) -> Value {
    Value::Dict(
        items
            .iter()
            .map(|(k, v)| (s(k.clone()), v.clone().map_or(Value::None, Value::String)))
            .collect(),
    )
}

fn ip_list(view: &slapos_store::queries::PartitionRow) -> Value {
    Value::List(
        view.addresses
            .iter()
            .map(|a| Value::Tuple(vec![s(a.interface.clone()), s(a.addr.clone())]))
            .collect(),
    )
}

fn software_release_object(url: &str, computer: &str, requested_state: Option<&str>) -> Value {
    let mut attrs = vec![entry("_computer_guid", s(computer))];
    if let Some(state) = requested_state {
        attrs.push(entry("_requested_state", s(state)));
    }
    attrs.push(entry("_software_instance_list", Value::List(vec![])));
    attrs.push(entry("_software_release", s(url)));
    Value::Object(Box::new(Object::new(
        SlapClass::SoftwareRelease,
        vec![s(url), s(computer)],
        attrs,
    )))
}

/// Merges system keys over user keys, last writer wins, without duplicates.
fn merged(items: Vec<(String, Value)>) -> Value {
    let map: std::collections::BTreeMap<String, Value> = items.into_iter().collect();
    Value::Dict(map.into_iter().map(|(k, v)| (s(k), v)).collect())
}

fn partition_object(view: &PartitionView) -> Value {
    let computer = view.computer.as_str();
    let partition = view.partition.reference.as_str();
    let guid = format!("{computer}-{partition}");
    let init = vec![s(computer), s(partition), Value::None];
    let Some(instance) = &view.instance else {
        let attrs = vec![
            entry("_computer_id", s(computer)),
            entry("_instance_guid", s(guid)),
            entry("_need_modification", Value::Int(0)),
            entry("_partition_id", s(partition)),
            entry("_request_dict", Value::None),
            entry("_requested_state", s("destroyed")),
            entry("_software_release_document", Value::None),
        ];
        return Value::Object(Box::new(Object::new(
            SlapClass::ComputerPartition,
            init,
            attrs,
        )));
    };
    let row = &instance.row;
    let mut parameters: Vec<(String, Value)> = engine::stringify(&instance.parameters)
        .into_iter()
        .map(|(k, v)| (k, v.map_or(Value::None, Value::String)))
        .collect();
    let slaves = instance
        .shared
        .iter()
        .map(|sh| {
            let mut items = vec![
                ("slave_title".to_string(), s(sh.slave_reference.clone())),
                ("slave_reference".to_string(), s(sh.slave_reference.clone())),
                (
                    "slap_software_type".to_string(),
                    s(sh.row.software_type.clone()),
                ),
            ];
            items.extend(sh.parameters.iter().cloned());
            merged(items)
        })
        .collect();
    parameters.extend([
        ("full_address_list".to_string(), Value::List(vec![])),
        ("instance_title".to_string(), s(row.title.clone())),
        ("ip_list".to_string(), ip_list(&view.partition)),
        (
            "root_instance_title".to_string(),
            s(instance.root_title.clone()),
        ),
        ("slap_computer_id".to_string(), s(computer)),
        ("slap_computer_partition_id".to_string(), s(partition)),
        (
            "slap_software_release_url".to_string(),
            s(row.software_release.clone()),
        ),
        (
            "slap_software_type".to_string(),
            s(row.software_type.clone()),
        ),
        ("slave_instance_list".to_string(), Value::List(slaves)),
        ("timestamp".to_string(), s(row.timestamp.to_string())),
    ]);
    let attrs = vec![
        entry("_computer_id", s(computer)),
        entry("_connection_dict", string_dict(&instance.connection)),
        entry("_instance_guid", s(guid)),
        entry("_need_modification", Value::Int(1)),
        entry("_parameter_dict", merged(parameters)),
        entry("_partition_id", s(partition)),
        entry("_request_dict", Value::None),
        entry("_requested_state", s(row.requested_state.clone())),
        entry(
            "_software_release_document",
            software_release_object(&row.software_release, computer, None),
        ),
    ];
    Value::Object(Box::new(Object::new(
        SlapClass::ComputerPartition,
        init,
        attrs,
    )))
}

fn computer_object(view: &ComputerView) -> Value {
    let software = view
        .software
        .iter()
        .map(|sw| software_release_object(&sw.url, &view.reference, Some(&sw.requested_state)))
        .collect();
    let partitions = view.partitions.iter().map(partition_object).collect();
    Value::Object(Box::new(Object::new(
        SlapClass::Computer,
        vec![s(view.reference.clone())],
        vec![
            entry("_computer_id", s(view.reference.clone())),
            entry("_computer_partition_list", Value::List(partitions)),
            entry("_software_release_list", Value::List(software)),
        ],
    )))
}

/// A large node view leaves tens of megabytes of small freed blocks in the
/// allocator's per-thread arenas, which glibc keeps; give them back to the
/// system so that serving big computers does not ratchet the master's memory.
fn release_freed_memory(answer_len: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if answer_len > 1024 * 1024 {
        // SAFETY: malloc_trim only returns free memory to the system.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = answer_len;
}

// ------------------------------------------------------------------ node side

async fn full_computer_information(
    State(state): State<AppState>,
    Who(who): Who,
    query: axum::extract::RawQuery,
) -> LegacyResult {
    let fields = query_fields(query.0.as_deref());
    let computer_id = fields.required("computer_id")?.to_string();
    who.require_computer(&computer_id)?;
    state.note_contact(&computer_id);
    let default = state.engine.default_computer.clone();
    let body = read(&state, move |db| {
        let view = match views::computer_view(db, &computer_id)? {
            Some(v) => v,
            None if default.as_deref() == Some(computer_id.as_str()) => ComputerView {
                reference: computer_id.clone(),
                software: vec![],
                partitions: vec![],
            },
            None => {
                return Err(MasterError::NotFound(format!(
                    "Computer {computer_id:?} is not registered"
                )))
            }
        };
        let body = {
            let object = computer_object(&view);
            drop(view);
            marshal::dumps(&object).map_err(|e| MasterError::BadRequest(e.to_string()))?
        };
        release_freed_memory(body.len());
        Ok(body)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response())
}

async fn register_computer_partition(
    State(state): State<AppState>,
    Who(who): Who,
    query: axum::extract::RawQuery,
) -> LegacyResult {
    let fields = query_fields(query.0.as_deref());
    let computer = fields.required("computer_reference")?.to_string();
    let partition = fields.required("computer_partition_reference")?.to_string();
    check_partition(&state, &who, &computer, &partition).await?;
    let view = read(&state, move |db| {
        views::partition_view(db, &computer, &partition)
    })
    .await?;
    xml(&partition_object(&view))
}

async fn partition_certificate(
    State(state): State<AppState>,
    Who(who): Who,
    query: axum::extract::RawQuery,
) -> LegacyResult {
    let fields = query_fields(query.0.as_deref());
    let computer = fields.required("computer_id")?.to_string();
    let partition = fields.required("computer_partition_id")?.to_string();
    who.require_computer(&computer)?;
    read(&state, move |db| {
        views::partition_view(db, &computer, &partition).map(|_| ())
    })
    .await?;
    // Certificates are issued once the master authenticates nodes (HTTPS);
    // until then, like the reference proxy, an empty pair.
    xml(&Value::Dict(vec![
        entry("certificate", s("")),
        entry("key", s("")),
    ]))
}

async fn hosting_subscription_ip_list(
    State(state): State<AppState>,
    Who(who): Who,
    query: axum::extract::RawQuery,
) -> LegacyResult {
    let fields = query_fields(query.0.as_deref());
    let computer = fields.required("computer_id")?.to_string();
    let partition = fields.required("computer_partition_id")?.to_string();
    check_partition(&state, &who, &computer, &partition).await?;
    let addresses = read(&state, move |db| {
        crate::api::tree_addresses(db, &computer, &partition)
    })
    .await?;
    xml(&Value::List(
        addresses
            .into_iter()
            .map(|a| Value::Tuple(vec![s(a.interface), s(a.addr)]))
            .collect(),
    ))
}

async fn partition_status(
    State(state): State<AppState>,
    Who(who): Who,
    query: axum::extract::RawQuery,
) -> LegacyResult {
    let fields = query_fields(query.0.as_deref());
    let computer = fields.required("computer_id")?.to_string();
    let partition = fields.required("computer_partition_id")?.to_string();
    check_partition(&state, &who, &computer, &partition).await?;
    let view = read(&state, move |db| {
        views::partition_view(db, &computer, &partition)
    })
    .await?;
    let status = view
        .instance
        .as_ref()
        .and_then(|i| i.row.reported_state.clone())
        .unwrap_or_else(|| "unknown".into());
    xml(&s(status))
}

async fn software_product(
    State(state): State<AppState>,
    _who: Who,
    query: axum::extract::RawQuery,
) -> LegacyResult {
    let fields = query_fields(query.0.as_deref());
    let urls: Vec<Value> = match (
        fields.optional("software_product_reference"),
        fields.optional("software_release_url"),
    ) {
        (Some(product), _) => state
            .software_products
            .iter()
            .filter(|(name, _)| name == product)
            .map(|(_, url)| s(url.clone()))
            .collect(),
        (None, Some(url)) => state
            .software_products
            .iter()
            .filter(|(_, u)| u == url)
            .map(|(_, u)| s(u.clone()))
            .collect(),
        (None, None) => {
            return Err(MasterError::BadRequest(
                "give software_product_reference or software_release_url".into(),
            )
            .into())
        }
    };
    xml(&Value::List(urls))
}

async fn run_id(State(state): State<AppState>, _who: Who) -> LegacyResult {
    text(state.run_id.as_str())
}

fn string_at(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Reads the dictionary `slapos node format` posts (section 6.3 of the protocol notes).
fn computer_config(v: &Value) -> Result<ComputerConfig, MasterError> {
    let bad = |m: &str| MasterError::BadRequest(format!("computer configuration: {m}"));
    let reference = string_at(v.get("reference")).ok_or_else(|| bad("missing 'reference'"))?;
    let mut config = ComputerConfig {
        reference,
        address: string_at(v.get("address")),
        netmask: string_at(v.get("netmask")),
        partitions: vec![],
    };
    let partitions = match v.get("partition_list") {
        Some(Value::List(items)) | Some(Value::Tuple(items)) => items.as_slice(),
        None | Some(Value::None) => &[],
        _ => return Err(bad("'partition_list' must be a list")),
    };
    for p in partitions {
        let reference =
            string_at(p.get("reference")).ok_or_else(|| bad("a partition has no 'reference'"))?;
        let interface = p
            .get("tap")
            .and_then(|t| string_at(t.get("name")))
            .unwrap_or_default();
        let mut addresses = vec![];
        if let Some(Value::List(list)) | Some(Value::Tuple(list)) = p.get("address_list") {
            for a in list {
                let addr =
                    string_at(a.get("addr")).ok_or_else(|| bad("an address has no 'addr'"))?;
                addresses.push(slapos_store::queries::Address {
                    interface: interface.clone(),
                    addr,
                    netmask: string_at(a.get("netmask")).unwrap_or_default(),
                });
            }
        }
        config.partitions.push(PartitionConfig {
            reference,
            addresses,
        });
    }
    Ok(config)
}

async fn load_computer_configuration(
    State(state): State<AppState>,
    Who(who): Who,
    body: Bytes,
) -> LegacyResult {
    let fields = Fields::parse(&body);
    let payload = decode("xml", fields.required("xml")?)?;
    let config = computer_config(&payload)?;
    who.require_computer(&config.reference)?;
    write(&state, move |db| {
        engine::load_computer_configuration(db, &config)
    })
    .await?;
    text("done")
}

async fn supply(State(state): State<AppState>, Who(who): Who, body: Bytes) -> LegacyResult {
    let scope = who.user_scope()?;
    let fields = Fields::parse(&body);
    let url = fields.required("url")?.to_string();
    let computer = fields.required("computer_id")?.to_string();
    let software_state: SoftwareState = fields
        .required("state")?
        .parse()
        .map_err(MasterError::from)?;
    let (u, c) = (url.clone(), computer.clone());
    write(&state, move |db| {
        engine::supply(db, scope, &c, &u, software_state)
    })
    .await?;
    text(format!(
        "Supplied {} to be {software_state}",
        python_repr(&url)
    ))
}

/// Python's `repr()` of a string, as the reference writes it in messages.
fn python_repr(s: &str) -> String {
    if s.contains('\'') && !s.contains('"') {
        format!("\"{s}\"")
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

async fn software_report(
    state: AppState,
    who: Identity,
    body: Bytes,
    report: SoftwareReport,
) -> LegacyResult {
    let fields = Fields::parse(&body);
    let url = fields.required("url")?.to_string();
    let computer = fields.required("computer_id")?.to_string();
    who.require_computer(&computer)?;
    let error_log = fields.optional("error_log").map(str::to_string);
    write(&state, move |db| {
        engine::report_software(db, &computer, &url, report, error_log.as_deref())
    })
    .await?;
    text("OK")
}

async fn software_building(
    State(state): State<AppState>,
    Who(who): Who,
    body: Bytes,
) -> LegacyResult {
    software_report(state, who, body, SoftwareReport::Building).await
}
async fn software_available(
    State(state): State<AppState>,
    Who(who): Who,
    body: Bytes,
) -> LegacyResult {
    software_report(state, who, body, SoftwareReport::Available).await
}
async fn software_destroyed(
    State(state): State<AppState>,
    Who(who): Who,
    body: Bytes,
) -> LegacyResult {
    software_report(state, who, body, SoftwareReport::Destroyed).await
}
async fn software_error(State(state): State<AppState>, Who(who): Who, body: Bytes) -> LegacyResult {
    software_report(state, who, body, SoftwareReport::Error).await
}

/// `Authorization: X-SlapPartition computer_id=C, computer_partition_id=P`.
fn partition_from_header(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let rest = value.trim().strip_prefix("X-SlapPartition")?;
    let mut computer = None;
    let mut partition = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "computer_id" => computer = Some(v.trim().to_string()),
            "computer_partition_id" => partition = Some(v.trim().to_string()),
            _ => {}
        }
    }
    Some((computer?, partition?))
}

async fn request_computer_partition(
    State(state): State<AppState>,
    Who(who): Who,
    headers: HeaderMap,
    body: Bytes,
) -> LegacyResult {
    let fields = Fields::parse(&body);
    let software_release = fields.required("software_release")?.to_string();
    let title = fields.required("partition_reference")?.to_string();
    let software_type = fields
        .optional("software_type")
        .unwrap_or(DEFAULT_SOFTWARE_TYPE)
        .to_string();
    let parameters = match fields.optional("partition_parameter_xml") {
        Some(raw) => decode_dict("partition_parameter_xml", raw)?,
        None => vec![],
    };
    let sla = match fields.optional("filter_xml") {
        Some(raw) => Sla::from_pairs(
            decode_dict("filter_xml", raw)?
                .into_iter()
                .map(|(k, v)| (k, marshal::python_str(&v))),
        ),
        None => Sla::default(),
    };
    let requested_state = match fields.optional("state") {
        Some(raw) => match decode("state", raw)? {
            Value::None => None,
            Value::String(s) => Some(s.parse::<InstanceState>().map_err(MasterError::from)?),
            _ => {
                return Err(MasterError::BadRequest(
                    "field \"state\" must be a string or None".into(),
                )
                .into())
            }
        },
        None => None,
    };
    let shared = match fields.optional("shared_xml") {
        Some(raw) => match decode("shared_xml", raw)? {
            Value::Bool(b) => b,
            Value::Int(i) => i != 0,
            Value::None => false,
            _ => {
                return Err(MasterError::BadRequest(
                    "field \"shared_xml\" must be a boolean".into(),
                )
                .into())
            }
        },
        None => false,
    };
    let requester = match partition_from_header(&headers) {
        Some((computer, partition)) => Requester::Partition {
            computer,
            partition,
        },
        None => match (
            fields.optional("computer_id"),
            fields.optional("computer_partition_id"),
        ) {
            (Some(c), Some(p)) => Requester::Partition {
                computer: c.to_string(),
                partition: p.to_string(),
            },
            _ => Requester::User,
        },
    };
    // A node requests for one of its partitions (the instance's tree owns
    // the result); a user for themselves, or for a partition of theirs.
    let owner = match (&who, &requester) {
        (Identity::Open, _) => None,
        (Identity::Computer(_), Requester::Partition { computer, .. }) => {
            who.require_computer(computer)?;
            None
        }
        (Identity::Computer(c), Requester::User) => {
            return Err(MasterError::Forbidden(format!(
                "a computer certificate (computer {c:?}) requests only for its partitions: \
                 name the requesting partition"
            ))
            .into())
        }
        (
            Identity::User(id),
            Requester::Partition {
                computer,
                partition,
            },
        ) => {
            check_partition(&state, &who, computer, partition).await?;
            Some(*id)
        }
        (Identity::User(id), Requester::User) => Some(*id),
    };
    let forward = state.forwards.iter().find(|f| {
        f.software_releases.contains(&software_release)
            || sla
                .entries
                .get("master_url")
                .is_some_and(|m| m.trim_end_matches('/') == f.master_url.trim_end_matches('/'))
    });
    if let Some(forward) = forward {
        return forward_request(&state, forward, body).await;
    }
    if requested_state != Some(InstanceState::Destroyed) {
        state
            .schemas
            .check(&software_release, &software_type, shared, &parameters)
            .await?;
    }
    let input = RequestInput {
        software_release,
        title,
        software_type,
        parameters,
        sla,
        state: requested_state,
        shared,
        requester,
        // A user's request is theirs; a partition's belongs to its tree's
        // owner (the engine ignores `owner` then).
        owner,
    };
    let config = state.engine.clone();
    let outcome = write(&state, move |db| engine::request(db, &config, &input)).await?;
    let i = &outcome.instance;
    let mut parameter_dict: Vec<(Value, Value)> = outcome
        .parameters
        .iter()
        .map(|(k, v)| (s(k.clone()), v.clone().map_or(Value::None, Value::String)))
        .collect();
    let mut attrs = vec![entry("_connection_dict", string_dict(&outcome.connection))];
    if !i.shared {
        parameter_dict.retain(|(k, _)| k.as_str() != Some("timestamp"));
        parameter_dict.push(entry("timestamp", s(i.timestamp.to_string())));
        attrs.push(entry(
            "_instance_guid",
            s(format!(
                "{}-{}",
                outcome.computer, outcome.partition.reference
            )),
        ));
    }
    attrs.push(entry("_parameter_dict", Value::Dict(parameter_dict)));
    // Also for shared instances (the reference omits it there): without it the
    // client re-reads the host partition and shows the host's parameters.
    attrs.push(entry("_requested_state", s(i.requested_state.clone())));
    if !i.shared {
        attrs.push(entry(
            "connection_xml",
            i.connection_xml.clone().map_or(Value::None, Value::String),
        ));
    }
    attrs.extend([
        entry("ip_list", ip_list(&outcome.partition)),
        entry("slap_computer_id", s(outcome.computer.clone())),
        entry(
            "slap_computer_partition_id",
            s(outcome.partition.reference.clone()),
        ),
        entry("slap_server_url", s("slap_server_url")),
        entry("slap_software_release_url", s(i.software_release.clone())),
        entry("slap_software_type", s(i.software_type.clone())),
    ]);
    xml(&Value::Object(Box::new(Object::new(
        SlapClass::SoftwareInstance,
        vec![],
        attrs,
    ))))
}

/// Sends a request to the master that serves its release and relays the
/// answer (including 408 while that master is still allocating).
async fn forward_request(
    state: &AppState,
    forward: &crate::server::Forward,
    body: Bytes,
) -> LegacyResult {
    let url = format!(
        "{}/requestComputerPartition",
        forward.master_url.trim_end_matches('/')
    );
    let response = state
        .http
        .post(&url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            MasterError::NotFound(format!(
                "cannot forward the request to {}: {e}",
                forward.master_url
            ))
        })?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let text = response.text().await.unwrap_or_default();
    Ok((
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        text,
    )
        .into_response())
}

fn partition_fields(fields: &Fields) -> Result<(String, String), MasterError> {
    Ok((
        fields.required("computer_id")?.to_string(),
        fields.required("computer_partition_id")?.to_string(),
    ))
}

async fn partition_report(
    state: AppState,
    who: Identity,
    body: Bytes,
    report: PartitionReport,
) -> LegacyResult {
    let (computer, partition) = partition_fields(&Fields::parse(&body))?;
    who.require_computer(&computer)?;
    write(&state, move |db| {
        engine::report_partition(db, &computer, &partition, report)
    })
    .await?;
    text("OK")
}

async fn partition_started(
    State(state): State<AppState>,
    Who(who): Who,
    body: Bytes,
) -> LegacyResult {
    partition_report(state, who, body, PartitionReport::Started).await
}
async fn partition_stopped(
    State(state): State<AppState>,
    Who(who): Who,
    body: Bytes,
) -> LegacyResult {
    partition_report(state, who, body, PartitionReport::Stopped).await
}

async fn partition_destroyed(
    State(state): State<AppState>,
    Who(who): Who,
    body: Bytes,
) -> LegacyResult {
    let (computer, partition) = partition_fields(&Fields::parse(&body))?;
    who.require_computer(&computer)?;
    let outcome = write(&state, move |db| {
        engine::destroyed_partition(db, &computer, &partition)
    })
    .await?;
    match outcome {
        DestroyOutcome::Freed | DestroyOutcome::AlreadyFree => text("OK"),
        DestroyOutcome::WaitingForChildren(titles) => text(format!(
            "Not destroying yet because this partition has child partitions: {}",
            titles.join(", ")
        )),
    }
}

async fn instance_error(State(state): State<AppState>, Who(who): Who, body: Bytes) -> LegacyResult {
    let fields = Fields::parse(&body);
    let (computer, partition) = partition_fields(&fields)?;
    who.require_computer(&computer)?;
    let error_log = fields.optional("error_log").unwrap_or("").to_string();
    let slave = fields.optional("slave_reference").map(str::to_string);
    write(&state, move |db| {
        engine::instance_error(db, &computer, &partition, slave.as_deref(), &error_log)
    })
    .await?;
    text("OK")
}

async fn instance_bang(State(state): State<AppState>, Who(who): Who, body: Bytes) -> LegacyResult {
    let fields = Fields::parse(&body);
    let (computer, partition) = partition_fields(&fields)?;
    check_partition(&state, &who, &computer, &partition).await?;
    let message = fields.optional("message").unwrap_or("").to_string();
    write(&state, move |db| {
        engine::bang(db, &computer, &partition, &message)
    })
    .await?;
    text("OK")
}

async fn instance_rename(
    State(state): State<AppState>,
    Who(who): Who,
    body: Bytes,
) -> LegacyResult {
    let fields = Fields::parse(&body);
    let (computer, partition) = partition_fields(&fields)?;
    check_partition(&state, &who, &computer, &partition).await?;
    let new_name = fields.required("new_name")?.to_string();
    let slave = fields.optional("slave_reference").map(str::to_string);
    write(&state, move |db| {
        engine::rename(db, &computer, &partition, slave.as_deref(), &new_name)
    })
    .await?;
    text("done")
}

async fn set_connection_xml(
    State(state): State<AppState>,
    Who(who): Who,
    body: Bytes,
) -> LegacyResult {
    let fields = Fields::parse(&body);
    let (computer, partition) = partition_fields(&fields)?;
    who.require_computer(&computer)?;
    let connection = decode_dict("connection_xml", fields.required("connection_xml")?)?;
    let slave = fields.optional("slave_reference").map(str::to_string);
    write(&state, move |db| {
        engine::set_connection(db, &computer, &partition, slave.as_deref(), &connection)
    })
    .await?;
    text("done")
}

async fn related_instance_list(
    State(state): State<AppState>,
    Who(who): Who,
    body: Bytes,
) -> LegacyResult {
    let fields = Fields::parse(&body);
    let (computer, partition) = partition_fields(&fields)?;
    who.require_computer(&computer)?;
    let titles: Vec<String> = match decode(
        "instance_reference_xml",
        fields.required("instance_reference_xml")?,
    )? {
        Value::List(items) | Value::Tuple(items) => items.iter().map(marshal::python_str).collect(),
        _ => {
            return Err(
                MasterError::BadRequest("instance_reference_xml must be a list".into()).into(),
            )
        }
    };
    write(&state, move |db| {
        engine::related_instances(db, &computer, &partition, &titles)
    })
    .await?;
    text("OK")
}

async fn use_computer(State(state): State<AppState>, Who(who): Who, body: Bytes) -> LegacyResult {
    let fields = Fields::parse(&body);
    let computer = fields.required("computer_id")?.to_string();
    who.require_computer(&computer)?;
    let use_string = fields.required("use_string")?.to_string();
    // Usage changes nothing a node acts on: no change notification.
    let outcome = state
        .store
        .write(move |db| engine::use_computer(db, &computer, &use_string))
        .await?;
    tracing::debug!(report = %outcome.report_id, recorded = outcome.recorded,
        already = outcome.already_recorded, "usage journal");
    text("OK")
}

async fn computer_bang(State(state): State<AppState>, Who(who): Who, body: Bytes) -> LegacyResult {
    let fields = Fields::parse(&body);
    let computer = fields.required("computer_id")?.to_string();
    who.require_computer(&computer)?;
    let message = fields.optional("message").unwrap_or("").to_string();
    write(&state, move |db| {
        engine::computer_bang(db, &computer, &message)
    })
    .await?;
    xml(&s(""))
}
