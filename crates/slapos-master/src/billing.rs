//! Accounting: prices applied to the usage ledger, monthly invoices frozen
//! once issued, credit notes, revenue.
//!
//! Rules (see ARCHITECTURE.md):
//! * A usage record is priced by the price list valid when its period
//!   started (the latest `valid_from` among lists valid then), and within
//!   it by the most specific price for its resource: release and type, then
//!   release, then type, then neither. No price: the resource is free.
//! * The invoice of month M for a user bills every record of theirs that no
//!   invoice billed yet and whose period started before the end of M, so a
//!   report that arrives after its month was invoiced lands on the next
//!   invoice: nothing is lost, nothing billed twice (`invoiced_usage` has
//!   one row per record).
//! * Lines group records by instance tree, release, type, resource and unit
//!   price; a line's amount is `Σ quantity × unit price` computed exactly
//!   from the ledger's integers, rounded once to the cent (half away from
//!   zero); the total is the sum of the lines.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use slapos_core::billing::{parse_utc_date, Month, Resource};
use slapos_store::billing::{self as b, InvoiceLineRow, InvoiceRow, NewInvoice, PriceListRow};
use slapos_store::queries::Scope;
use slapos_store::usage::UsageRecord;
use slapos_store::Db;

use crate::error::{MasterError, Result};

/// Digits after the decimal point of amounts.
const CENTS: u32 = 2;
/// Digits after the decimal point of quantities shown on lines.
const QUANTITY_DIGITS: u32 = 6;

/// A price list as users write it (TOML for `slapos master price-list add`,
/// JSON for the API).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PriceListInput {
    pub name: String,
    pub currency: String,
    /// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ`, UTC.
    pub valid_from: String,
    #[serde(default)]
    pub valid_to: Option<String>,
    #[serde(default, rename = "price")]
    pub prices: Vec<PriceInput>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PriceInput {
    pub resource: String,
    #[serde(default)]
    pub software_release: Option<String>,
    #[serde(default)]
    pub software_type: Option<String>,
    /// A decimal number as text (`"0.05"`), per unit of the resource.
    pub unit_price: String,
}

fn parse_amount(what: &str, text: &str) -> Result<Decimal> {
    let value = Decimal::from_str(text.trim())
        .map_err(|_| MasterError::BadRequest(format!("{what} {text:?} is not a decimal number")))?;
    if value.is_sign_negative() {
        return Err(MasterError::BadRequest(format!(
            "{what} {text:?} is negative"
        )));
    }
    if value.scale() > 8 {
        return Err(MasterError::BadRequest(format!(
            "{what} {text:?} has more than 8 decimals"
        )));
    }
    Ok(value.normalize())
}

/// Checks and stores a price list. Every list uses the master's one
/// currency (the first list's), so invoices never mix currencies.
pub fn add_price_list(db: &mut dyn Db, input: &PriceListInput) -> Result<PriceListRow> {
    slapos_core::validate_reference("price list name", &input.name)?;
    let currency = input.currency.trim().to_ascii_uppercase();
    if currency.len() != 3 || !currency.bytes().all(|c| c.is_ascii_uppercase()) {
        return Err(MasterError::BadRequest(format!(
            "currency {:?} is not an ISO 4217 code such as EUR",
            input.currency
        )));
    }
    let valid_from = parse_utc_date(&input.valid_from)?;
    let valid_to = input.valid_to.as_deref().map(parse_utc_date).transpose()?;
    if valid_to.is_some_and(|to| to <= valid_from) {
        return Err(MasterError::BadRequest(
            "valid_to must be after valid_from".into(),
        ));
    }
    if input.prices.is_empty() {
        return Err(MasterError::BadRequest(
            "a price list needs at least one [[price]]".into(),
        ));
    }
    let existing = b::price_lists(db)?;
    if let Some(other) = existing.iter().find(|l| l.currency != currency) {
        return Err(MasterError::Conflict(format!(
            "this master bills in {} (price list {:?}): a list in {currency} would mix currencies",
            other.currency, other.name
        )));
    }
    let now = slapos_core::now_micros();
    let id = b::insert_price_list(db, &input.name, &currency, valid_from, valid_to, now)?
        .ok_or_else(|| {
            MasterError::Conflict(format!(
                "a price list named {:?} already exists (price lists never change: add a new one)",
                input.name
            ))
        })?;
    let mut seen = std::collections::BTreeSet::new();
    for p in &input.prices {
        let resource = Resource::from_str(&p.resource)?;
        let release = p.software_release.as_deref().filter(|s| !s.is_empty());
        let software_type = p.software_type.as_deref().filter(|s| !s.is_empty());
        if let Some(url) = release {
            slapos_core::validate_software_url(url)?;
        }
        if let Some(t) = software_type {
            slapos_core::validate_reference("software type", t)?;
        }
        if !seen.insert((resource, release, software_type)) {
            return Err(MasterError::BadRequest(format!(
                "two prices for {resource} with the same release and type"
            )));
        }
        let price = parse_amount("unit_price", &p.unit_price)?;
        b::insert_price(
            db,
            id,
            resource.as_str(),
            release,
            software_type,
            &price.to_string(),
        )?;
    }
    b::price_lists(db)?
        .into_iter()
        .find(|l| l.id == id)
        .ok_or_else(|| MasterError::NotFound(format!("price list {id} vanished")))
}

/// The price lists, parsed once for pricing many records.
struct Pricing {
    lists: Vec<(PriceListRow, Vec<(Resource, Decimal)>)>,
}

impl Pricing {
    fn load(db: &mut dyn Db) -> Result<Pricing> {
        let mut lists = Vec::new();
        for list in b::price_lists(db)? {
            let prices = list
                .prices
                .iter()
                .map(|p| {
                    Ok((
                        Resource::from_str(&p.resource)?,
                        Decimal::from_str(&p.unit_price).map_err(|_| {
                            MasterError::BadRequest(format!(
                                "stored price {:?} is not a decimal",
                                p.unit_price
                            ))
                        })?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            lists.push((list, prices));
        }
        Ok(Pricing { lists })
    }

    fn currency(&self) -> Option<&str> {
        self.lists.first().map(|(l, _)| l.currency.as_str())
    }

    /// The unit price of `resource` for a record, if any.
    fn price(&self, record: &UsageRecord, resource: Resource) -> Option<Decimal> {
        let at = record.period_start;
        let (list, prices) = self
            .lists
            .iter()
            .filter(|(l, _)| l.valid_from <= at && l.valid_to.is_none_or(|to| at < to))
            .max_by_key(|(l, _)| (l.valid_from, l.id))?;
        list.prices
            .iter()
            .zip(prices)
            .filter(|(row, (r, _))| {
                *r == resource
                    && row
                        .software_release
                        .as_ref()
                        .is_none_or(|u| Some(u) == record.software_release.as_ref())
                    && row
                        .software_type
                        .as_ref()
                        .is_none_or(|t| Some(t) == record.software_type.as_ref())
            })
            .max_by_key(|(row, _)| (row.software_release.is_some(), row.software_type.is_some()))
            .map(|(_, (_, price))| *price)
    }
}

/// The ledger's integer quantity of a resource in a record.
pub fn raw_quantity(record: &UsageRecord, resource: Resource) -> i64 {
    match resource {
        Resource::InstanceHour => record.running_seconds,
        Resource::CpuHour => record.cpu_micros,
        Resource::MemoryGbHour => record.memory_byte_seconds,
        Resource::DiskGbMonth => record.disk_byte_seconds,
    }
}

/// `raw` ledger units of `resource` at `unit_price`, rounded to the cent.
pub fn amount(raw: i128, resource: Resource, unit_price: Decimal) -> Decimal {
    let raw = Decimal::from_i128_with_scale(raw, 0);
    (raw * unit_price / Decimal::from(resource.raw_per_unit()))
        .round_dp_with_strategy(CENTS, RoundingStrategy::MidpointAwayFromZero)
}

fn quantity(raw: i128, resource: Resource) -> Decimal {
    (Decimal::from_i128_with_scale(raw, 0) / Decimal::from(resource.raw_per_unit()))
        .round_dp_with_strategy(QUANTITY_DIGITS, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
}

/// An invoice computed from the ledger, not yet (or never) stored.
#[derive(Debug, Clone, Serialize)]
pub struct Draft {
    pub user_id: Option<i64>,
    pub user: Option<String>,
    pub period: String,
    pub currency: String,
    pub total: String,
    pub lines: Vec<InvoiceLineRow>,
    #[serde(skip)]
    pub records: Vec<i64>,
}

/// Groups records per owner and prices them into drafts for `month`.
fn drafts(
    db: &mut dyn Db,
    pricing: &Pricing,
    month: Month,
    records: Vec<UsageRecord>,
) -> Result<Vec<Draft>> {
    type LineKey = (
        Option<i64>,
        Option<String>,
        Option<String>,
        Resource,
        Decimal,
    );
    let currency = pricing.currency().unwrap_or("EUR").to_string();
    // Per owner: the records billed, and the raw quantity of each line.
    type Lines = BTreeMap<LineKey, i128>;
    let mut per_user: BTreeMap<Option<i64>, (Vec<i64>, Lines)> = BTreeMap::new();
    for record in records {
        let (ids, lines) = per_user.entry(record.user_id).or_default();
        ids.push(record.id);
        for resource in Resource::ALL {
            let raw = raw_quantity(&record, resource);
            if raw == 0 {
                continue;
            }
            if let Some(price) = pricing.price(&record, resource) {
                let key = (
                    record.tree_id,
                    record.software_release.clone(),
                    record.software_type.clone(),
                    resource,
                    price,
                );
                *lines.entry(key).or_default() += i128::from(raw);
            }
        }
    }
    let mut out = Vec::new();
    for (user_id, (records, lines)) in per_user {
        let mut total = Decimal::ZERO;
        let mut rows = Vec::new();
        for ((tree_id, release, software_type, resource, price), raw) in lines {
            let line_amount = amount(raw, resource, price);
            total += line_amount;
            let tree_title = match tree_id {
                Some(id) => b::instance_title(db, id)?.unwrap_or_else(|| format!("instance {id}")),
                None => "(no instance)".to_string(),
            };
            rows.push(InvoiceLineRow {
                tree_id,
                tree_title,
                software_release: release,
                software_type,
                resource: resource.as_str().to_string(),
                quantity: quantity(raw, resource).to_string(),
                unit_price: price.to_string(),
                amount: format_amount(line_amount),
            });
        }
        let user = user_id
            .map(|id| b::user_name(db, id))
            .transpose()?
            .flatten();
        out.push(Draft {
            user_id,
            user,
            period: month.to_string(),
            currency: currency.clone(),
            total: format_amount(total),
            lines: rows,
            records,
        });
    }
    Ok(out)
}

fn format_amount(value: Decimal) -> String {
    let mut v = value.round_dp_with_strategy(CENTS, RoundingStrategy::MidpointAwayFromZero);
    v.rescale(CENTS);
    v.to_string()
}

fn scope_owner(scope: Scope) -> Option<Option<i64>> {
    scope.owner().map(Some)
}

/// What the invoice of `month` would be today, for the scope's user (every
/// user in `Scope::All`): nothing is stored.
pub fn draft(db: &mut dyn Db, scope: Scope, month: Month) -> Result<Vec<Draft>> {
    let pricing = Pricing::load(db)?;
    let records = b::uninvoiced_usage(db, month.end_micros(), scope_owner(scope))?;
    drafts(db, &pricing, month, records)
}

/// The invoice number of a user's month: unique by construction, since a
/// user has at most one invoice per month.
fn invoice_number(month: Month, user_id: Option<i64>) -> String {
    format!("INV-{month}-U{}", user_id.unwrap_or(0))
}

/// Issues the invoices of `month`: one per user with usage not yet billed,
/// frozen from then on. A user who already has this month's invoice is
/// skipped (their late usage goes on the next month's).
pub fn issue(db: &mut dyn Db, month: Month) -> Result<Vec<InvoiceRow>> {
    let now = slapos_core::now_micros();
    if month.start_micros() > now {
        return Err(MasterError::BadRequest(format!(
            "{month} has not started: nothing to invoice"
        )));
    }
    let pricing = Pricing::load(db)?;
    if pricing.lists.is_empty() {
        return Err(MasterError::Conflict(
            "no price list: add one with 'slapos master price-list add' before issuing invoices"
                .into(),
        ));
    }
    let already: Vec<Option<i64>> = b::invoices(db, Scope::All)?
        .into_iter()
        .filter(|i| i.kind == "invoice" && i.period == month.to_string())
        .map(|i| i.user_id)
        .collect();
    let records = b::uninvoiced_usage(db, month.end_micros(), None)?
        .into_iter()
        .filter(|r| !already.contains(&r.user_id))
        .collect();
    let mut issued = Vec::new();
    for draft in drafts(db, &pricing, month, records)? {
        let number = invoice_number(month, draft.user_id);
        let invoice = NewInvoice {
            number: &number,
            kind: "invoice",
            user_id: draft.user_id,
            period: &draft.period,
            currency: &draft.currency,
            total: &draft.total,
            corrects_id: None,
            reason: None,
            lines: &draft.lines,
        };
        b::insert_invoice(db, &invoice, &draft.records, now)?.ok_or_else(|| {
            MasterError::Conflict(format!(
                "invoice {number} or its usage was issued meanwhile by another master: try again"
            ))
        })?;
        issued.push(
            b::invoice_by_number(db, Scope::All, &number)?
                .ok_or_else(|| MasterError::NotFound(format!("invoice {number} vanished")))?,
        );
    }
    Ok(issued)
}

/// A credit note of `amount` against an issued invoice; the credits of an
/// invoice never exceed its total.
pub fn credit(
    db: &mut dyn Db,
    number: &str,
    amount_text: &str,
    reason: &str,
) -> Result<InvoiceRow> {
    let invoice = b::invoice_by_number(db, Scope::All, number)?
        .filter(|i| i.kind == "invoice")
        .ok_or_else(|| MasterError::NotFound(format!("No invoice {number}")))?;
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(MasterError::BadRequest(
            "a credit note needs a reason".into(),
        ));
    }
    slapos_core::validate_reference("reason", reason)?;
    let amount = parse_amount("amount", amount_text)?;
    if amount.is_zero() || amount.scale() > CENTS {
        return Err(MasterError::BadRequest(format!(
            "amount {amount_text:?} must be positive, in cents at most"
        )));
    }
    let earlier = b::credit_notes_of(db, invoice.id)?;
    let credited: Decimal = earlier
        .iter()
        .filter_map(|c| Decimal::from_str(&c.total).ok())
        .map(|v| -v)
        .sum();
    let total = Decimal::from_str(&invoice.total).unwrap_or_default();
    if credited + amount > total {
        return Err(MasterError::Conflict(format!(
            "invoice {number} totals {} {} and {} is already credited: {amount} more would exceed it",
            invoice.total,
            invoice.currency,
            format_amount(credited)
        )));
    }
    let note_number = format!("CN-{}-{}", invoice.number, earlier.len() + 1);
    let negative = format_amount(-amount);
    let lines = [InvoiceLineRow {
        tree_id: None,
        tree_title: format!("Credit on {}: {reason}", invoice.number),
        software_release: None,
        software_type: None,
        resource: "credit".into(),
        quantity: "1".into(),
        unit_price: negative.clone(),
        amount: negative.clone(),
    }];
    let note = NewInvoice {
        number: &note_number,
        kind: "credit_note",
        user_id: invoice.user_id,
        period: &invoice.period,
        currency: &invoice.currency,
        total: &negative,
        corrects_id: Some(invoice.id),
        reason: Some(reason),
        lines: &lines,
    };
    b::insert_invoice(db, &note, &[], slapos_core::now_micros())?.ok_or_else(|| {
        MasterError::Conflict(format!(
            "credit note {note_number} was issued meanwhile: try again"
        ))
    })?;
    b::invoice_by_number(db, Scope::All, &note_number)?
        .ok_or_else(|| MasterError::NotFound(format!("credit note {note_number} vanished")))
}

/// An invoice as the API and pages show it.
#[derive(Debug, Clone, Serialize)]
pub struct InvoiceView {
    pub number: String,
    pub kind: String,
    pub user: Option<String>,
    pub period: String,
    pub currency: String,
    pub total: String,
    /// For a credit note, the invoice it corrects.
    pub corrects: Option<String>,
    pub reason: Option<String>,
    pub issued_at: String,
    pub lines: Vec<InvoiceLineRow>,
    /// For an invoice, the numbers of its credit notes.
    pub credit_notes: Vec<String>,
}

pub fn invoice_view(db: &mut dyn Db, row: InvoiceRow, with_lines: bool) -> Result<InvoiceView> {
    let lines = if with_lines {
        b::invoice_lines(db, row.id)?
    } else {
        Vec::new()
    };
    let corrects = match row.corrects_id {
        Some(id) => b::invoices(db, Scope::All)?
            .into_iter()
            .find(|i| i.id == id)
            .map(|i| i.number),
        None => None,
    };
    let credit_notes = b::credit_notes_of(db, row.id)?
        .into_iter()
        .map(|c| c.number)
        .collect();
    Ok(InvoiceView {
        user: row
            .user_id
            .map(|id| b::user_name(db, id))
            .transpose()?
            .flatten(),
        number: row.number,
        kind: row.kind,
        period: row.period,
        currency: row.currency,
        total: row.total,
        corrects,
        reason: row.reason,
        issued_at: slapos_core::format_utc_micros(row.issued_at),
        lines,
        credit_notes,
    })
}

/// The invoices the scope may see, newest first (without lines).
pub fn list(db: &mut dyn Db, scope: Scope) -> Result<Vec<InvoiceView>> {
    b::invoices(db, scope)?
        .into_iter()
        .map(|row| invoice_view(db, row, false))
        .collect()
}

/// One invoice with its lines; another user's answers 404 like a missing one.
pub fn show(db: &mut dyn Db, scope: Scope, number: &str) -> Result<InvoiceView> {
    let row = b::invoice_by_number(db, scope, number)?
        .ok_or_else(|| MasterError::NotFound(format!("No invoice {number}")))?;
    invoice_view(db, row, true)
}

fn csv_field(value: &str) -> String {
    // Quote always; a leading formula character is neutralised so that a
    // spreadsheet never evaluates a title.
    let value = if value.starts_with(['=', '+', '-', '@']) && value.parse::<f64>().is_err() {
        format!("'{value}")
    } else {
        value.to_string()
    };
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// The lines of an invoice as CSV, one row per line.
pub fn csv(invoice: &InvoiceView) -> String {
    let mut out = String::from(
        "number,kind,period,user,instance_tree,software_release,software_type,resource,quantity,unit_price,amount,currency\n",
    );
    for line in &invoice.lines {
        let fields = [
            invoice.number.as_str(),
            invoice.kind.as_str(),
            invoice.period.as_str(),
            invoice.user.as_deref().unwrap_or(""),
            line.tree_title.as_str(),
            line.software_release.as_deref().unwrap_or(""),
            line.software_type.as_deref().unwrap_or(""),
            line.resource.as_str(),
            line.quantity.as_str(),
            line.unit_price.as_str(),
            line.amount.as_str(),
            invoice.currency.as_str(),
        ];
        out.push_str(
            &fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

/// Revenue per software release over invoices issued in `[from, to)`.
#[derive(Debug, Clone, Serialize)]
pub struct RevenueRow {
    /// `None`: credit notes.
    pub software_release: Option<String>,
    pub currency: String,
    pub amount: String,
    pub lines: usize,
}

pub fn revenue(db: &mut dyn Db, from: i64, to: i64) -> Result<Vec<RevenueRow>> {
    let mut sums: BTreeMap<(Option<String>, String), (Decimal, usize)> = BTreeMap::new();
    for (currency, _, line) in b::lines_issued_between(db, from, to)? {
        let value = Decimal::from_str(&line.amount).unwrap_or_default();
        let entry = sums.entry((line.software_release, currency)).or_default();
        entry.0 += value;
        entry.1 += 1;
    }
    let mut rows: Vec<RevenueRow> = sums
        .into_iter()
        .map(
            |((software_release, currency), (amount, lines))| RevenueRow {
                software_release,
                currency,
                amount: format_amount(amount),
                lines,
            },
        )
        .collect();
    rows.sort_by(|a, b| {
        Decimal::from_str(&b.amount)
            .unwrap_or_default()
            .cmp(&Decimal::from_str(&a.amount).unwrap_or_default())
    });
    Ok(rows)
}

/// Usage summed per time bucket, for charts and `slapos usage`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UsageBucket {
    /// Microseconds since the epoch.
    pub start: i64,
    pub cpu_hours: f64,
    pub memory_gb_hours: f64,
    pub disk_gb_months: f64,
    pub instance_hours: f64,
    pub records: usize,
}

/// Totals per bucket of `bucket_seconds`, oldest first, by period start.
pub fn buckets(records: &[UsageRecord], bucket_seconds: i64) -> Vec<UsageBucket> {
    let width = bucket_seconds.max(1) * 1_000_000;
    let mut sums: BTreeMap<i64, [i128; 4]> = BTreeMap::new();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for r in records {
        let start = r.period_start.div_euclid(width) * width;
        let s = sums.entry(start).or_default();
        for (i, resource) in Resource::ALL.into_iter().enumerate() {
            s[i] += i128::from(raw_quantity(r, resource));
        }
        *counts.entry(start).or_default() += 1;
    }
    sums.into_iter()
        .map(|(start, s)| {
            let unit = |i: usize| s[i] as f64 / Resource::ALL[i].raw_per_unit() as f64;
            UsageBucket {
                start,
                instance_hours: unit(0),
                cpu_hours: unit(1),
                memory_gb_hours: unit(2),
                disk_gb_months: unit(3),
                records: counts.get(&start).copied().unwrap_or(0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_and_rounded_once() {
        // 1.5 CPU-hours at 0.10 = 0.15; 1 second of an instance at 0.01/h
        // is far below a cent and rounds to zero.
        let cpu = 5_400_000_000i128;
        assert_eq!(
            amount(cpu, Resource::CpuHour, Decimal::from_str("0.10").unwrap()).to_string(),
            "0.15"
        );
        assert!(amount(
            1,
            Resource::InstanceHour,
            Decimal::from_str("0.01").unwrap()
        )
        .is_zero());
        // 0.005 rounds away from zero.
        assert_eq!(
            format_amount(amount(
                1_800,
                Resource::InstanceHour,
                Decimal::from_str("0.01").unwrap()
            )),
            "0.01"
        );
    }

    #[test]
    fn csv_quotes_and_neutralises_formulas() {
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "\"'=HYPERLINK(1)\"");
        assert_eq!(csv_field("-1.50"), "\"-1.50\"");
    }
}
