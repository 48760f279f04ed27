//! The accounting pages: usage charts, invoices and credit notes, this
//! month's draft, and the provider's revenue. Users see only their own
//! (another user's instance or invoice is a 404 page, like a missing one).

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use minijinja::context;
use serde::Deserialize;
use slapos_core::billing::{parse_utc_date, Month};
use slapos_store::queries::{self as q, Scope};

use super::charts::{self, bucket_label};
use super::session::Viewer;
use super::{CsrfToken, Page, WebError};
use crate::api_billing::{provider_only, query_usage, UsageQuery};
use crate::billing;
use crate::error::MasterError;
use crate::server::AppState;

type PageResult = Result<Page, WebError>;

const DAY_MICROS: i64 = 86_400_000_000;
/// Without a range, the usage page shows the last 30 days.
const DEFAULT_RANGE_DAYS: i64 = 30;
/// Up to three days of usage is shown per hour, longer ranges per day.
const HOURLY_UP_TO_DAYS: i64 = 3;
/// Most ledger records one page sums (the page says when it stops there).
const MAX_RECORDS: i64 = 100_000;

/// An empty form field counts as absent.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

#[derive(Deserialize, Default)]
pub struct UsagePageQuery {
    /// An instance id: its own usage.
    instance: Option<String>,
    /// An instance id: the usage of its whole tree.
    tree: Option<String>,
    computer: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// `hour` or `day`; chosen from the range's length when absent.
    bucket: Option<String>,
}

/// Usage over time, as charts and a table: everything the viewer may see,
/// one instance (`?instance=ID`), its tree (`?tree=ID`) or one computer
/// (`?computer=REF`).
pub async fn usage(
    State(state): State<AppState>,
    csrf: CsrfToken,
    viewer: Viewer,
    Query(query): Query<UsagePageQuery>,
) -> PageResult {
    let instance_id = |name: &str, value: &Option<String>| {
        given(value)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    MasterError::BadRequest(format!("{name} {v:?}: expected an instance id"))
                })
            })
            .transpose()
    };
    let instance = instance_id("instance", &query.instance)?;
    let tree = instance_id("tree", &query.tree)?;
    let computer = given(&query.computer).map(str::to_string);
    let to = given(&query.to)
        .map(parse_utc_date)
        .transpose()
        .map_err(MasterError::from)?;
    let from = given(&query.from)
        .map(parse_utc_date)
        .transpose()
        .map_err(MasterError::from)?
        .unwrap_or_else(|| {
            to.unwrap_or_else(slapos_core::now_micros) - DEFAULT_RANGE_DAYS * DAY_MICROS
        });
    let span = to.unwrap_or_else(slapos_core::now_micros) - from;
    let daily = match given(&query.bucket) {
        Some("hour") => false,
        Some("day") => true,
        Some(other) => {
            return Err(
                MasterError::BadRequest(format!("bucket {other:?}: expected hour or day")).into(),
            )
        }
        None => span > HOURLY_UP_TO_DAYS * DAY_MICROS,
    };
    let usage_query = UsageQuery {
        instance,
        tree,
        computer: computer.clone(),
        from: Some(slapos_core::format_utc_micros(from)),
        to: to.map(slapos_core::format_utc_micros),
        ..UsageQuery::default()
    };
    let scope = viewer.scope;
    let (records, tree_title, events) = super::pages::read(&state, move |db| {
        let records = query_usage(db, scope, &usage_query, MAX_RECORDS)?;
        let tree_title = match instance.or(tree) {
            Some(id) => Some(
                q::instance_by_id_in(db, scope, id)?
                    .map(|i| i.title)
                    .unwrap_or_else(|| format!("instance {id}")),
            ),
            None => None,
        };
        Ok((records, tree_title, super::pages::recent_events(db, scope)?))
    })
    .await?;
    let bucket_seconds = if daily { 86_400 } else { 3_600 };
    let buckets = billing::buckets(&records, bucket_seconds);
    let rows: Vec<_> = buckets
        .iter()
        .map(|b| {
            context! {
                start => bucket_label(b.start, daily),
                cpu => charts::number(b.cpu_hours),
                memory => charts::number(b.memory_gb_hours),
                disk => charts::number(b.disk_gb_months),
                instances => charts::number(b.instance_hours),
                records => b.records,
            }
        })
        .collect();
    // The table lists what was recorded; the charts' axis is time.
    let charts = charts::usage_charts(&charts::fill_gaps(buckets, bucket_seconds), daily);
    let heading = match (&tree_title, &computer) {
        (Some(title), _) => format!("Usage of {title}"),
        (None, Some(c)) => format!("Usage on computer {c}"),
        (None, None) => "Usage".to_string(),
    };
    Page::render(
        "usage.html",
        &csrf,
        &viewer,
        context! {
            title => heading,
            nav => "usage",
            instance,
            tree,
            computer,
            from => slapos_core::format_utc_micros(from).chars().take(10).collect::<String>(),
            to => to.map(|t| slapos_core::format_utc_micros(t).chars().take(10).collect::<String>()).unwrap_or_default(),
            bucket => if daily { "day" } else { "hour" },
            charts,
            rows,
            records => records.len(),
            truncated => records.len() as i64 >= MAX_RECORDS,
            events,
        },
    )
}

/// Invoices and credit notes, newest first, and what this month's invoice
/// would be today.
pub async fn invoices(
    State(state): State<AppState>,
    csrf: CsrfToken,
    viewer: Viewer,
) -> PageResult {
    let scope = viewer.scope;
    let month = Month::of_micros(slapos_core::now_micros());
    let (invoices, drafts, events) = super::pages::read(&state, move |db| {
        let invoices = billing::list(db, scope)?;
        // Without a price list there is no draft to show, which is no error
        // for the page.
        let drafts = billing::draft(db, scope, month).map_err(|e| e.to_string());
        Ok((invoices, drafts, super::pages::recent_events(db, scope)?))
    })
    .await?;
    let (drafts, draft_error) = match drafts {
        Ok(d) => (d, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    Page::render(
        "invoices.html",
        &csrf,
        &viewer,
        context! {
            title => "Invoices",
            nav => "invoices",
            invoices,
            drafts,
            draft_error,
            month => month.to_string(),
            events,
        },
    )
}

/// One invoice or credit note: its lines, total and corrections.
pub async fn invoice(
    State(state): State<AppState>,
    csrf: CsrfToken,
    viewer: Viewer,
    Path(number): Path<String>,
) -> PageResult {
    let scope = viewer.scope;
    let (invoice, events) = super::pages::read(&state, move |db| {
        let invoice = billing::show(db, scope, &number)?;
        Ok((invoice, super::pages::recent_events(db, scope)?))
    })
    .await?;
    Page::render(
        "invoice.html",
        &csrf,
        &viewer,
        context! {
            title => format!("{} {}", if invoice.kind == "invoice" { "Invoice" } else { "Credit note" }, invoice.number),
            nav => "invoices",
            invoice,
            events,
        },
    )
}

/// The invoice's lines as CSV, with the browser's session (the JSON API's
/// `?format=csv` wants a bearer token).
pub async fn invoice_csv(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(number): Path<String>,
) -> Result<Response, WebError> {
    let scope = viewer.scope;
    let invoice = super::pages::read(&state, move |db| billing::show(db, scope, &number)).await?;
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.csv\"", invoice.number),
            ),
        ],
        billing::csv(&invoice),
    )
        .into_response();
    super::secure_headers(&mut response);
    Ok(response)
}

#[derive(Deserialize, Default)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

/// The provider's revenue per software release over invoices issued in the
/// range; users get a 403 page.
pub async fn revenue(
    State(state): State<AppState>,
    csrf: CsrfToken,
    viewer: Viewer,
    Query(query): Query<RangeQuery>,
) -> PageResult {
    if let Err(e) = provider_only(viewer.scope, "see the revenue") {
        return Err(WebError::forbidden(&e.to_string()));
    }
    let from = given(&query.from)
        .map(parse_utc_date)
        .transpose()
        .map_err(MasterError::from)?;
    let to = given(&query.to)
        .map(parse_utc_date)
        .transpose()
        .map_err(MasterError::from)?;
    let (rows, events) = super::pages::read(&state, move |db| {
        let rows = billing::revenue(db, from.unwrap_or(0), to.unwrap_or(i64::MAX))?;
        Ok((rows, super::pages::recent_events(db, Scope::All)?))
    })
    .await?;
    let rows: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let name = r
                .software_release
                .as_deref()
                .map(super::view::software_name)
                .unwrap_or_else(|| "credit notes".into());
            context! { name, url => r.software_release, currency => r.currency, amount => r.amount, lines => r.lines }
        })
        .collect();
    Page::render(
        "revenue.html",
        &csrf,
        &viewer,
        context! {
            title => "Revenue",
            nav => "revenue",
            rows,
            from => query.from.unwrap_or_default(),
            to => query.to.unwrap_or_default(),
            events,
        },
    )
}
