//! One handler per page or form of the dashboard.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use futures_util::stream::{self, Stream, StreamExt};
use minijinja::context;
use serde::Deserialize;

use slapos_core::{
    now_micros, validate_reference, validate_software_url, InstanceState, Sla, SoftwareState,
    DEFAULT_SOFTWARE_TYPE,
};
use slapos_proto::marshal::Value;
use slapos_proto::params::xml2dict;
use slapos_store::queries::{self as q, InstanceFilter, Scope};
use slapos_store::Db;

use super::view::{self, EventItem, InstanceItem, InstanceLink};
use super::{csrf, CsrfToken, Page, Viewer, WebError};
use crate::api::{instance_json, json_to_value, perform_request};
use crate::engine::{self, RequestInput, Requester};
use crate::error::MasterError;
use crate::server::AppState;

type PageResult = Result<Page, WebError>;

const PAGE_SIZE: i64 = 50;
const SIDEBAR_EVENTS: i64 = 8;

pub(super) async fn read<T, F>(state: &AppState, job: F) -> Result<T, WebError>
where
    F: FnOnce(&mut dyn Db) -> Result<T, MasterError> + Send + 'static,
    T: Send + 'static,
{
    Ok(state.store.read(job).await?)
}

/// The sidebar's last events: a user sees only their instances' events.
pub(super) fn recent_events(db: &mut dyn Db, scope: Scope) -> Result<Vec<EventItem>, MasterError> {
    Ok(
        q::list_events_in(db, scope, None, i64::MAX, SIDEBAR_EVENTS)?
            .into_iter()
            .map(EventItem::from)
            .collect(),
    )
}

// ------------------------------------------------------------------ instances

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    roots: Option<String>,
    #[serde(default)]
    before: Option<i64>,
}

/// The seed's instance table: filters, keyset pages of 50, actions.
pub async fn instances(
    State(state): State<AppState>,
    csrf: CsrfToken,
    viewer: Viewer,
    Query(query): Query<ListQuery>,
    uri: axum::http::Uri,
) -> PageResult {
    let filter = InstanceFilter {
        text: query.q.clone().map(|t| t.trim().to_string()),
        state: query.state.clone(),
        roots_only: query.roots.as_deref() == Some("1"),
    };
    let before = query.before.unwrap_or(i64::MAX);
    let scope = viewer.scope;
    let (rows, total, events) = read(&state, move |db| {
        let recent = recent_events(db, scope)?;
        let rows = q::search_instances_in(db, scope, &filter, before, PAGE_SIZE + 1)?;
        let total = q::count_instances_in(db, scope, &filter)?;
        Ok((rows, total, recent))
    })
    .await?;
    let has_next = rows.len() as i64 > PAGE_SIZE;
    let items: Vec<InstanceItem> = rows
        .into_iter()
        .take(PAGE_SIZE as usize)
        .map(|r| InstanceItem::new(&r.instance, r.computer, r.partition))
        .collect();
    let next_before = has_next.then(|| items.last().map(|i| i.id)).flatten();
    // Links keep the filters; only the page position changes.
    let mut base: Vec<(&str, String)> = Vec::new();
    if let Some(t) = query.q.as_deref().filter(|t| !t.is_empty()) {
        base.push(("q", t.to_string()));
    }
    if let Some(s) = query.state.as_deref().filter(|s| !s.is_empty()) {
        base.push(("state", s.to_string()));
    }
    if query.roots.as_deref() == Some("1") {
        base.push(("roots", "1".into()));
    }
    let encode = |extra: Option<(&str, String)>| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in base.iter().cloned().chain(extra) {
            s.append_pair(k, &v);
        }
        let qs = s.finish();
        if qs.is_empty() {
            "/instances".to_string()
        } else {
            format!("/instances?{qs}")
        }
    };
    let next_url = next_before.map(|id| encode(Some(("before", id.to_string()))));
    let first_url = query.before.map(|_| encode(None));
    Page::render(
        "instances.html",
        &csrf,
        &viewer,
        context! {
            title => "Instances",
            nav => "instances",
            items,
            total,
            q => query.q.unwrap_or_default(),
            state_filter => query.state.unwrap_or_default(),
            roots => query.roots.as_deref() == Some("1"),
            next_url,
            first_url,
            here => uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/instances".into()),
            events,
            live => true,
        },
    )
}

/// Promise names of the instance's release, with what the node's last report
/// says of each (the node reports the first failing promise by name).
async fn promise_results(
    state: &AppState,
    row: &q::InstanceRow,
) -> Vec<BTreeMap<&'static str, String>> {
    let Some(manifest) = state.schemas.manifest(&row.software_release).await else {
        return Vec::new();
    };
    let Some(software_type) = manifest.software_type(&row.software_type) else {
        return Vec::new();
    };
    if row.shared {
        return Vec::new();
    }
    let message = row.status_message.clone().unwrap_or_default();
    software_type
        .promises
        .iter()
        .map(|p| {
            let kind = if p.tcp.is_some() {
                "tcp"
            } else if p.http.is_some() {
                "http"
            } else {
                "command"
            };
            let failing = format!("promise {} failed", p.name);
            let (result, class) = match row.reported_state.as_deref() {
                Some("error") if message.contains(&failing) => ("failing", "bad"),
                Some("error") => ("not reached", "warn"),
                Some("started") if row.requested_state == "started" => ("passing", "ok"),
                Some("stopped") => ("not checked while stopped", "off"),
                _ => ("pending", "warn"),
            };
            BTreeMap::from([
                ("name", p.name.clone()),
                ("kind", kind.to_string()),
                ("result", result.to_string()),
                ("class", class.to_string()),
            ])
        })
        .collect()
}

/// One instance: parameters, connection parameters, tree, promises, events.
pub async fn instance(
    State(state): State<AppState>,
    csrf: CsrfToken,
    viewer: Viewer,
    Path(id): Path<i64>,
) -> PageResult {
    let scope = viewer.scope;
    let (row, json, tree, events, recent) = read(&state, move |db| {
        let recent = recent_events(db, scope)?;
        // Another user's instance is as missing as one that never existed.
        let row = q::instance_by_id_in(db, scope, id)?.ok_or_else(|| {
            MasterError::NotFound(format!(
                "No instance {id}: it never existed or was destroyed"
            ))
        })?;
        let link = |db: &mut dyn Db, id: Option<i64>| -> Result<Option<InstanceLink>, MasterError> {
            Ok(id
                .map(|id| q::instance_by_id_in(db, scope, id))
                .transpose()?
                .flatten()
                .map(|r| InstanceLink::new(&r)))
        };
        let tree = context! {
            root => if row.tree_id != 0 { link(db, Some(row.tree_id))? } else { None },
            requester => link(db, row.requester_id)?,
            host => link(db, row.host_id)?,
            children => q::instances_requested_by(db, row.id)?.iter().filter(|c| scope.sees(c)).map(InstanceLink::new).collect::<Vec<_>>(),
            hosted => q::shared_hosted_by_in(db, scope, row.id)?.iter().map(InstanceLink::new).collect::<Vec<_>>(),
        };
        let events: Vec<EventItem> = q::list_events_in(db, scope, Some(row.id), i64::MAX, 50)?
            .into_iter()
            .map(EventItem::from)
            .collect();
        let json = instance_json(db, row.clone())?;
        Ok((row, json, tree, events, recent))
    })
    .await?;
    let promises = promise_results(&state, &row).await;
    let item = InstanceItem::new(&row, json.computer.clone(), json.partition.clone());
    Page::render(
        "instance.html",
        &csrf,
        &viewer,
        context! {
            title => format!("Instance {}", row.title),
            nav => "instances",
            i => item,
            status_message => row.status_message,
            parameters => view::parameter_items(&json.parameters),
            connection => view::parameter_items(&json.connection_parameters),
            sla => json.sla,
            addresses => json.ip_list,
            created => view::format_time(row.created_at),
            reported_at => row.reported_at.map(view::format_time),
            tree,
            promises,
            instance_events => events,
            events => recent,
            here => format!("/instances/{id}"),
            usage_tree => if row.tree_id != 0 { row.tree_id } else { row.id },
            live => true,
        },
    )
}

#[derive(Deserialize)]
pub struct StateForm {
    #[serde(default)]
    csrf: String,
    state: String,
    #[serde(default)]
    return_to: Option<String>,
}

/// Start, stop or destroy a root instance, then back where the user was.
pub async fn change_state(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<StateForm>,
) -> Result<Response, WebError> {
    csrf::verify(&headers, &form.csrf).map_err(WebError::forbidden)?;
    let new_state: InstanceState = form.state.parse().map_err(MasterError::from)?;
    let config = state.engine.clone();
    let scope = viewer.scope;
    state
        .store
        .write(move |db| engine::set_requested_state(db, &config, scope, id, new_state))
        .await?;
    state.notify_change();
    let back = match new_state {
        // The destroyed instance's page will soon be gone: back to the list.
        InstanceState::Destroyed => "/instances".to_string(),
        _ => form
            .return_to
            .as_deref()
            .and_then(view::safe_return_path)
            .map(str::to_string)
            .unwrap_or_else(|| format!("/instances/{id}")),
    };
    Ok(Redirect::to(&back).into_response())
}

/// Destroying is asked for twice: this page names what will be lost.
pub async fn confirm_destroy(
    State(state): State<AppState>,
    csrf: CsrfToken,
    viewer: Viewer,
    Path(id): Path<i64>,
) -> PageResult {
    let scope = viewer.scope;
    let (row, members, events) = read(&state, move |db| {
        let recent = recent_events(db, scope)?;
        let row = q::instance_by_id_in(db, scope, id)?
            .ok_or_else(|| MasterError::NotFound(format!("No instance {id}")))?;
        let members = q::tree_members(db, row.id)?.len();
        Ok((row, members, recent))
    })
    .await?;
    Page::render(
        "destroy.html",
        &csrf,
        &viewer,
        context! {
            title => format!("Destroy {}", row.title),
            nav => "instances",
            i => InstanceItem::new(&row, None, None),
            members,
            events,
        },
    )
}

// ------------------------------------------------------------------ request form

#[derive(Deserialize, Default, serde::Serialize, Clone)]
pub struct RequestFields {
    #[serde(default)]
    software_release: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    software_type: String,
    #[serde(default)]
    shared: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    instance_xml: String,
    #[serde(default)]
    instance_json: String,
    #[serde(default)]
    sla_xml: String,
}

#[derive(Deserialize)]
pub struct RequestPost {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    fields: RequestFields,
}

/// Software releases to suggest: everything supplied somewhere.
fn suggestions(db: &mut dyn Db, scope: Scope) -> Result<Vec<String>, MasterError> {
    let mut urls: Vec<String> = q::software_everywhere_in(db, scope)?
        .into_iter()
        .filter(|(_, s)| s.requested_state != "destroyed")
        .map(|(_, s)| s.url)
        .collect();
    urls.sort();
    urls.dedup();
    Ok(urls)
}

/// Parameters the release's schema declares, to show beside the form.
async fn schema_parameters(
    state: &AppState,
    url: &str,
    software_type: &str,
    shared: bool,
) -> Vec<BTreeMap<&'static str, String>> {
    let Some(manifest) = state.schemas.manifest(url).await else {
        return Vec::new();
    };
    let software_type = if software_type.is_empty() {
        DEFAULT_SOFTWARE_TYPE
    } else {
        software_type
    };
    let Some(t) = manifest.software_type(software_type) else {
        return Vec::new();
    };
    let schema = if shared {
        t.shared.as_ref().and_then(|s| s.parameters.as_ref())
    } else {
        t.parameters.as_ref()
    };
    let Some(properties) = schema
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.as_object())
    else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, p)| {
            let text = |key: &str| {
                p.get(key)
                    .map(|v| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default()
            };
            BTreeMap::from([
                ("name", name.clone()),
                ("type", text("type")),
                ("default", text("default")),
                ("description", text("description")),
            ])
        })
        .collect()
}

async fn render_request_form(
    state: &AppState,
    csrf: &CsrfToken,
    viewer: &Viewer,
    fields: RequestFields,
    errors: BTreeMap<&'static str, String>,
) -> PageResult {
    let scope = viewer.scope;
    let (software, events) = read(state, move |db| {
        let recent = recent_events(db, scope)?;
        Ok((suggestions(db, scope)?, recent))
    })
    .await?;
    let schema = schema_parameters(
        state,
        &fields.software_release,
        &fields.software_type,
        fields.shared.is_some(),
    )
    .await;
    let failed = !errors.is_empty();
    let page = Page::render(
        "request.html",
        csrf,
        viewer,
        context! {
            title => "Request an instance",
            nav => "request",
            f => fields,
            errors,
            software,
            schema,
            events,
        },
    )?;
    Ok(if failed {
        page.with_status(StatusCode::UNPROCESSABLE_ENTITY)
    } else {
        page
    })
}

pub async fn request_form(
    State(state): State<AppState>,
    csrf: CsrfToken,
    viewer: Viewer,
    Query(fields): Query<RequestFields>,
) -> PageResult {
    render_request_form(&state, &csrf, &viewer, fields, BTreeMap::new()).await
}

fn parse_parameters(
    fields: &RequestFields,
    errors: &mut BTreeMap<&'static str, String>,
) -> Vec<(String, Value)> {
    let xml = fields.instance_xml.trim();
    let json = fields.instance_json.trim();
    if !xml.is_empty() && !json.is_empty() {
        errors.insert(
            "instance_json",
            "give the parameters either as XML or as JSON, not both".into(),
        );
        return Vec::new();
    }
    if !json.is_empty() {
        return match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json) {
            Ok(map) => map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
            Err(e) => {
                errors.insert(
                    "instance_json",
                    format!("not a JSON object of parameters: {e}"),
                );
                Vec::new()
            }
        };
    }
    if xml.is_empty() {
        return Vec::new();
    }
    match xml2dict(xml) {
        Ok(pairs) => pairs
            .into_iter()
            .map(|(k, v)| (k, v.map(Value::String).unwrap_or(Value::None)))
            .collect(),
        Err(e) => {
            errors.insert("instance_xml", format!("not instance parameter XML: {e}"));
            Vec::new()
        }
    }
}

/// The seed's request form: on error the form comes back filled in, with
/// each message next to its field.
pub async fn submit_request(
    State(state): State<AppState>,
    csrf_token: CsrfToken,
    viewer: Viewer,
    headers: HeaderMap,
    Form(post): Form<RequestPost>,
) -> Result<Response, WebError> {
    csrf::verify(&headers, &post.csrf).map_err(WebError::forbidden)?;
    let fields = post.fields;
    let mut errors: BTreeMap<&'static str, String> = BTreeMap::new();
    let url = fields.software_release.trim().to_string();
    if let Err(e) = validate_software_url(&url) {
        errors.insert("software_release", e.to_string());
    }
    let title = fields.title.trim().to_string();
    if let Err(e) = validate_reference("instance reference", &title) {
        errors.insert("title", e.to_string());
    }
    let software_type = match fields.software_type.trim() {
        "" => DEFAULT_SOFTWARE_TYPE.to_string(),
        t => t.to_string(),
    };
    if let Err(e) = validate_reference("software type", &software_type) {
        errors.insert("software_type", e.to_string());
    }
    let requested_state = match fields.state.as_deref().unwrap_or("started") {
        "" => InstanceState::Started,
        s => match s.parse::<InstanceState>() {
            Ok(InstanceState::Destroyed) | Err(_) => {
                errors.insert("state", "choose started or stopped".into());
                InstanceState::Started
            }
            Ok(s) => s,
        },
    };
    let parameters = parse_parameters(&fields, &mut errors);
    let sla = match fields.sla_xml.trim() {
        "" => Vec::new(),
        xml => match xml2dict(xml) {
            Ok(pairs) => pairs
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect(),
            Err(e) => {
                errors.insert("sla_xml", format!("not computer parameter XML: {e}"));
                Vec::new()
            }
        },
    };
    if !errors.is_empty() {
        return Ok(
            render_request_form(&state, &csrf_token, &viewer, fields, errors)
                .await
                .into_response(),
        );
    }
    let parameters_field = if fields.instance_json.trim().is_empty() {
        "instance_xml"
    } else {
        "instance_json"
    };
    let input = RequestInput {
        software_release: url,
        title,
        software_type,
        parameters,
        sla: Sla::from_pairs(sla),
        state: Some(requested_state),
        shared: fields.shared.is_some(),
        requester: Requester::User,
        // The logged-in user owns what they request (nobody without accounts).
        owner: viewer.scope.owner(),
    };
    match perform_request(&state, input).await {
        Ok(row) => Ok(Redirect::to(&format!("/instances/{}", row.id)).into_response()),
        Err(MasterError::BadRequest(message)) => {
            let field = if message.contains("has no software type") {
                "software_type"
            } else {
                parameters_field
            };
            errors.insert(field, message);
            Ok(
                render_request_form(&state, &csrf_token, &viewer, fields, errors)
                    .await
                    .into_response(),
            )
        }
        Err(e @ (MasterError::NotFound(_) | MasterError::Conflict(_))) => {
            errors.insert("form", e.to_string());
            Ok(
                render_request_form(&state, &csrf_token, &viewer, fields, errors)
                    .await
                    .into_response(),
            )
        }
        Err(e) => Err(e.into()),
    }
}

// ------------------------------------------------------------------ computers and software

pub async fn computers(
    State(state): State<AppState>,
    csrf: CsrfToken,
    viewer: Viewer,
) -> PageResult {
    let now = now_micros();
    let scope = viewer.scope;
    let (computers, events) = read(&state, move |db| {
        let recent = recent_events(db, scope)?;
        let mut out = Vec::new();
        for c in q::list_computers(db)? {
            let (free, total) = q::partition_counts(db, c.id)?;
            out.push(context! {
                reference => c.reference,
                address => c.address,
                attributes => c.attributes,
                free,
                total,
                last_contact => c.last_contact.map(|t| view::ago(t, now)),
            });
        }
        Ok((out, recent))
    })
    .await?;
    Page::render(
        "computers.html",
        &csrf,
        &viewer,
        context! { title => "Computers", nav => "computers", computers, events, live => true },
    )
}

fn software_item(s: q::SoftwareRow) -> minijinja::Value {
    let name = view::software_name(&s.url);
    context! {
        initials => view::initials(&name),
        hue => view::hue(&name),
        name,
        url => s.url,
        requested_state => s.requested_state,
        reported_state => s.reported_state,
        error_log => s.error_log,
        updated => view::format_time(s.updated_at),
    }
}

pub async fn computer(
    State(state): State<AppState>,
    csrf: CsrfToken,
    viewer: Viewer,
    Path(reference): Path<String>,
) -> PageResult {
    let now = now_micros();
    let scope = viewer.scope;
    let (c, partitions, software, events) = read(&state, move |db| {
        let recent = recent_events(db, scope)?;
        let c = engine::computer(db, &reference)?;
        let partitions: Vec<_> = q::partitions_with_instances(db, c.id)?
            .into_iter()
            // Another user's instance: the partition shows as used, no more.
            .map(|(p, i)| (p, i.filter(|i| scope.sees(i))))
            .map(|(p, i)| {
                context! {
                    reference => p.reference,
                    free => p.instance_id.is_none(),
                    instance => i.as_ref().map(InstanceLink::new),
                    addresses => p.addresses.iter().map(|a| format!("{} {}", a.interface, a.addr)).collect::<Vec<_>>(),
                }
            })
            .collect();
        let software: Vec<_> = q::software_of_in(db, scope, c.id)?
            .into_iter()
            .map(software_item)
            .collect();
        Ok((c, partitions, software, recent))
    })
    .await?;
    Page::render(
        "computer.html",
        &csrf,
        &viewer,
        context! {
            title => format!("Computer {}", c.reference),
            nav => "computers",
            c => context! {
                reference => c.reference,
                address => c.address,
                netmask => c.netmask,
                attributes => c.attributes,
                last_contact => c.last_contact.map(|t| view::ago(t, now)),
                created => view::format_time(c.created_at),
            },
            partitions,
            software,
            events,
            live => true,
        },
    )
}

#[derive(Deserialize)]
pub struct SupplyForm {
    #[serde(default)]
    csrf: String,
    url: String,
    #[serde(default)]
    state: Option<String>,
}

/// Supply a release to a computer, or remove it (`state=destroyed`).
pub async fn supply(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(reference): Path<String>,
    Form(form): Form<SupplyForm>,
) -> Result<Response, WebError> {
    csrf::verify(&headers, &form.csrf).map_err(WebError::forbidden)?;
    let software_state: SoftwareState = form
        .state
        .as_deref()
        .unwrap_or("available")
        .parse()
        .map_err(MasterError::from)?;
    let url = form.url.trim().to_string();
    let computer = reference.clone();
    let scope = viewer.scope;
    state
        .store
        .write(move |db| engine::supply(db, scope, &computer, &url, software_state))
        .await?;
    state.notify_change();
    let back = form_urlencoded::byte_serialize(reference.as_bytes()).collect::<String>();
    Ok(Redirect::to(&format!("/computers/{back}")).into_response())
}

/// Every supplied release with its state on each computer.
pub async fn software(
    State(state): State<AppState>,
    csrf: CsrfToken,
    viewer: Viewer,
) -> PageResult {
    let scope = viewer.scope;
    let (releases, events) = read(&state, move |db| {
        let recent = recent_events(db, scope)?;
        let mut by_url: BTreeMap<String, Vec<minijinja::Value>> = BTreeMap::new();
        for (computer, s) in q::software_everywhere_in(db, scope)? {
            by_url.entry(s.url.clone()).or_default().push(context! {
                computer,
                requested_state => s.requested_state,
                reported_state => s.reported_state,
                error_log => s.error_log,
            });
        }
        let releases: Vec<_> = by_url
            .into_iter()
            .map(|(url, computers)| {
                let name = view::software_name(&url);
                context! { initials => view::initials(&name), hue => view::hue(&name), name, url, computers }
            })
            .collect();
        Ok((releases, recent))
    })
    .await?;
    Page::render(
        "software.html",
        &csrf,
        &viewer,
        context! { title => "Software", nav => "software", releases, events, live => true },
    )
}

// ------------------------------------------------------------------ live feed

/// Server-sent events: every new event, as JSON, for the "Last Event" panel
/// (which also refreshes the page's live region). A reconnecting browser
/// resumes after the last id it saw.
#[derive(Deserialize)]
pub struct StreamQuery {
    after: Option<i64>,
}

pub async fn event_stream(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    // A reconnecting browser says where it stopped; a fresh page says which
    // events it was rendered with.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(query.after);
    let start = match resume {
        Some(id) => id,
        None => read(&state, |db| Ok(q::last_event_id(db)?)).await?,
    };
    let changes = state.changes.subscribe();
    let stopping = state.stopping.subscribe();
    let scope = viewer.scope;
    let batches = stream::unfold(
        (state, start, changes, stopping),
        move |(state, mut last, mut changes, mut stopping)| async move {
            loop {
                if *stopping.borrow() {
                    return None;
                }
                let after = last;
                let batch = state
                    .store
                    .read(move |db| q::events_after_in(db, scope, after, 100))
                    .await
                    .ok()?;
                if let Some(newest) = batch.last() {
                    last = newest.id;
                    let events: Vec<Result<Event, Infallible>> = batch
                        .into_iter()
                        .map(|e| {
                            let id = e.id.to_string();
                            let data = serde_json::to_string(&EventItem::from(e))
                                .unwrap_or_else(|_| "{}".into());
                            Ok(Event::default().id(id).event("slapos").data(data))
                        })
                        .collect();
                    return Some((stream::iter(events), (state, last, changes, stopping)));
                }
                // Node reports do not wake the change channel: poll as well.
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = stopping.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        },
    )
    .flatten();
    Ok(Sse::new(batches).keep_alive(KeepAlive::default()))
}
