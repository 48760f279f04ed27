//! JSON routes of accounting: the usage ledger, price lists, invoices,
//! credit notes and revenue. Users see only their own usage and invoices
//! (another user's answers 404, like a missing one); what changes the books
//! (price lists, issuing, credit notes) and the revenue belong to the
//! provider: a master without accounts, or `slapos master ...` run on its
//! database.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use slapos_core::billing::{parse_utc_date, Month};
use slapos_store::queries::{self as q, Scope};
use slapos_store::usage::{self, UsageFilter, UsageRecord};
use slapos_store::Db;

use crate::api::{read, ApiResult};
use crate::auth::Caller;
use crate::billing::{self, Draft, InvoiceView, PriceListInput, RevenueRow, UsageBucket};
use crate::error::MasterError;
use crate::server::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/usage", get(list_usage))
        .route("/api/v1/usage/summary", get(usage_summary))
        .route(
            "/api/v1/price-lists",
            get(list_price_lists).post(add_price_list),
        )
        .route("/api/v1/invoices", get(list_invoices))
        .route("/api/v1/invoices/draft", get(draft_invoices))
        .route("/api/v1/invoices/issue", post(issue_invoices))
        .route("/api/v1/invoices/{number}", get(show_invoice))
        .route(
            "/api/v1/invoices/{number}/credit-notes",
            post(credit_invoice),
        )
        .route("/api/v1/revenue", get(revenue))
}

/// Refuses a book-keeping action to a user: only the provider may.
pub(crate) fn provider_only(scope: Scope, what: &str) -> Result<(), MasterError> {
    match scope {
        Scope::All => Ok(()),
        Scope::User(_) => Err(MasterError::Forbidden(format!(
            "only the provider may {what} (with 'slapos master' commands on the master's database)"
        ))),
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct UsageQuery {
    /// An instance id: its own records.
    pub instance: Option<i64>,
    /// An instance id: the records of its whole tree.
    pub tree: Option<i64>,
    /// A computer reference.
    pub computer: Option<String>,
    /// `YYYY-MM-DD[THH:MM:SSZ]`: records whose period starts at or after.
    pub from: Option<String>,
    /// Records whose period starts before.
    pub to: Option<String>,
    #[serde(default)]
    pub after: i64,
    #[serde(default)]
    pub limit: Option<i64>,
    /// Bucket width of the summary, in seconds (default an hour).
    #[serde(default)]
    pub bucket: Option<i64>,
}

/// The records of a usage query, checked in the caller's scope: naming an
/// instance or tree the caller cannot see is a 404.
pub(crate) fn query_usage(
    db: &mut dyn Db,
    scope: Scope,
    query: &UsageQuery,
    default_limit: i64,
) -> Result<Vec<UsageRecord>, MasterError> {
    for id in [query.instance, query.tree].into_iter().flatten() {
        if !q::instance_visible(db, scope, id)? {
            return Err(MasterError::NotFound(format!("No instance {id}")));
        }
    }
    let computer_id = match &query.computer {
        Some(reference) => Some(
            q::computer_by_reference(db, reference)?
                .ok_or_else(|| MasterError::NotFound(format!("No computer {reference:?}")))?
                .id,
        ),
        None => None,
    };
    let filter = UsageFilter {
        instance_id: query.instance,
        tree_id: query.tree,
        computer_id,
        from: query.from.as_deref().map(parse_utc_date).transpose()?,
        to: query.to.as_deref().map(parse_utc_date).transpose()?,
        after_id: query.after,
        limit: query.limit.unwrap_or(default_limit).clamp(1, 100_000),
    };
    Ok(usage::usage_records(db, scope, &filter)?)
}

async fn list_usage(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Query(query): Query<UsageQuery>,
) -> ApiResult<Json<Vec<UsageRecord>>> {
    Ok(Json(
        read(&state, move |db| query_usage(db, scope, &query, 1000)).await?,
    ))
}

async fn usage_summary(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Query(query): Query<UsageQuery>,
) -> ApiResult<Json<Vec<UsageBucket>>> {
    let bucket = query.bucket.unwrap_or(3600);
    if !(1..=366 * 86_400).contains(&bucket) {
        return Err(MasterError::BadRequest("bucket must be 1 s to a year".into()).into());
    }
    let records = read(&state, move |db| query_usage(db, scope, &query, 100_000)).await?;
    Ok(Json(billing::buckets(&records, bucket)))
}

async fn list_price_lists(
    State(state): State<AppState>,
    Caller(_): Caller,
) -> ApiResult<Json<Vec<slapos_store::billing::PriceListRow>>> {
    Ok(Json(
        read(&state, |db| Ok(slapos_store::billing::price_lists(db)?)).await?,
    ))
}

async fn add_price_list(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Json(input): Json<PriceListInput>,
) -> ApiResult<(
    axum::http::StatusCode,
    Json<slapos_store::billing::PriceListRow>,
)> {
    provider_only(scope, "add price lists")?;
    let list = state
        .store
        .write(move |db| billing::add_price_list(db, &input))
        .await?;
    Ok((axum::http::StatusCode::CREATED, Json(list)))
}

async fn list_invoices(
    State(state): State<AppState>,
    Caller(scope): Caller,
) -> ApiResult<Json<Vec<InvoiceView>>> {
    Ok(Json(
        read(&state, move |db| billing::list(db, scope)).await?,
    ))
}

#[derive(Deserialize)]
struct PeriodQuery {
    /// `YYYY-MM`; the current month when absent.
    period: Option<String>,
}

fn month_or_current(period: Option<&str>) -> Result<Month, MasterError> {
    match period {
        Some(p) => Ok(p.parse()?),
        None => Ok(Month::of_micros(slapos_core::now_micros())),
    }
}

async fn draft_invoices(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Query(query): Query<PeriodQuery>,
) -> ApiResult<Json<Vec<Draft>>> {
    let month = month_or_current(query.period.as_deref())?;
    Ok(Json(
        read(&state, move |db| billing::draft(db, scope, month)).await?,
    ))
}

#[derive(Deserialize)]
struct IssueBody {
    period: String,
}

async fn issue_invoices(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Json(body): Json<IssueBody>,
) -> ApiResult<Json<Vec<InvoiceView>>> {
    provider_only(scope, "issue invoices")?;
    let month: Month = body.period.parse().map_err(MasterError::from)?;
    let issued = state
        .store
        .write(move |db| {
            billing::issue(db, month)?
                .into_iter()
                .map(|row| billing::invoice_view(db, row, true))
                .collect::<Result<Vec<_>, MasterError>>()
        })
        .await?;
    Ok(Json(issued))
}

#[derive(Deserialize)]
struct ShowQuery {
    /// `csv` for the lines as CSV; JSON otherwise.
    format: Option<String>,
}

async fn show_invoice(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(number): Path<String>,
    Query(query): Query<ShowQuery>,
) -> ApiResult<Response> {
    let view = read(&state, move |db| billing::show(db, scope, &number)).await?;
    Ok(match query.format.as_deref() {
        Some("csv") => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}.csv\"", view.number),
                ),
            ],
            billing::csv(&view),
        )
            .into_response(),
        None | Some("json") => Json(view).into_response(),
        Some(other) => {
            return Err(
                MasterError::BadRequest(format!("format {other:?}: expected json or csv")).into(),
            )
        }
    })
}

#[derive(Deserialize)]
struct CreditBody {
    amount: String,
    reason: String,
}

async fn credit_invoice(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(number): Path<String>,
    Json(body): Json<CreditBody>,
) -> ApiResult<(axum::http::StatusCode, Json<InvoiceView>)> {
    provider_only(scope, "issue credit notes")?;
    let note = state
        .store
        .write(move |db| {
            let row = billing::credit(db, &number, &body.amount, &body.reason)?;
            billing::invoice_view(db, row, true)
        })
        .await?;
    Ok((axum::http::StatusCode::CREATED, Json(note)))
}

#[derive(Deserialize)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

async fn revenue(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Query(query): Query<RangeQuery>,
) -> ApiResult<Json<Vec<RevenueRow>>> {
    provider_only(scope, "see the revenue")?;
    let from = query
        .from
        .as_deref()
        .map(parse_utc_date)
        .transpose()?
        .unwrap_or(0);
    let to = query
        .to
        .as_deref()
        .map(parse_utc_date)
        .transpose()?
        .unwrap_or(i64::MAX);
    Ok(Json(
        read(&state, move |db| billing::revenue(db, from, to)).await?,
    ))
}
