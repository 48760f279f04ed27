//! Price lists, invoices, credit notes and which usage records each invoice
//! billed. Rows are written once and never updated: a correction is a
//! credit note, a new price a new price list. Prices and amounts are exact
//! decimals kept as text; the master does the arithmetic.

use serde::Serialize;

use crate::db::{Db, Param, Row};
use crate::queries::Scope;
use crate::usage::UsageRecord;
use crate::StoreError;

type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceListRow {
    pub id: i64,
    pub name: String,
    pub currency: String,
    /// Microseconds since the epoch; usage whose period starts in
    /// `[valid_from, valid_to)` is priced by this list.
    pub valid_from: i64,
    pub valid_to: Option<i64>,
    pub created_at: i64,
    pub prices: Vec<PriceRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceRow {
    pub id: i64,
    pub resource: String,
    /// `None`: any release (or type); a price naming one is preferred.
    pub software_release: Option<String>,
    pub software_type: Option<String>,
    pub unit_price: String,
}

/// Creates a price list; `None` if its name is taken.
pub fn insert_price_list(
    db: &mut dyn Db,
    name: &str,
    currency: &str,
    valid_from: i64,
    valid_to: Option<i64>,
    now: i64,
) -> Result<Option<i64>> {
    db.query_opt(
        "INSERT INTO price_list (name, currency, valid_from, valid_to, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name) DO NOTHING RETURNING id",
        &[name.into(), currency.into(), valid_from.into(), valid_to.into(), now.into()],
    )?
    .map(|r| r.int(0))
    .transpose()
}

pub fn insert_price(
    db: &mut dyn Db,
    price_list_id: i64,
    resource: &str,
    software_release: Option<&str>,
    software_type: Option<&str>,
    unit_price: &str,
) -> Result<()> {
    db.execute(
        "INSERT INTO price (price_list_id, resource, software_release, software_type, unit_price) VALUES ($1, $2, $3, $4, $5)",
        &[price_list_id.into(), resource.into(), software_release.into(), software_type.into(), unit_price.into()],
    )?;
    Ok(())
}

/// Every price list with its prices, oldest first.
pub fn price_lists(db: &mut dyn Db) -> Result<Vec<PriceListRow>> {
    let mut lists: Vec<PriceListRow> = db
        .query(
            "SELECT id, name, currency, valid_from, valid_to, created_at FROM price_list ORDER BY valid_from, id",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(PriceListRow {
                id: r.int(0)?,
                name: r.text(1)?,
                currency: r.text(2)?,
                valid_from: r.int(3)?,
                valid_to: r.opt_int(4)?,
                created_at: r.int(5)?,
                prices: Vec::new(),
            })
        })
        .collect::<Result<_>>()?;
    for row in db.query(
        "SELECT price_list_id, id, resource, software_release, software_type, unit_price FROM price ORDER BY id",
        &[],
    )? {
        let list_id = row.int(0)?;
        if let Some(list) = lists.iter_mut().find(|l| l.id == list_id) {
            list.prices.push(PriceRow {
                id: row.int(1)?,
                resource: row.text(2)?,
                software_release: row.opt_text(3)?,
                software_type: row.opt_text(4)?,
                unit_price: row.text(5)?,
            });
        }
    }
    Ok(lists)
}

/// Usage records no invoice has billed yet whose period starts before
/// `until`, of one owner when `owner` is `Some` (`Some(None)`: the proxy's
/// implicit user), oldest first.
pub fn uninvoiced_usage(
    db: &mut dyn Db,
    until: i64,
    owner: Option<Option<i64>>,
) -> Result<Vec<UsageRecord>> {
    let mut sql = format!(
        "SELECT {} FROM usage_record u WHERE u.period_start < $1 \
         AND NOT EXISTS (SELECT 1 FROM invoiced_usage b WHERE b.record_id = u.id)",
        crate::usage::COLUMNS
    );
    let mut params: Vec<Param<'_>> = vec![until.into()];
    match owner {
        None => {}
        Some(None) => sql.push_str(" AND u.user_id IS NULL"),
        Some(Some(id)) => {
            sql.push_str(" AND u.user_id = $2");
            params.push(id.into());
        }
    }
    sql.push_str(" ORDER BY u.id");
    db.query(&sql, &params)?
        .iter()
        .map(crate::usage::record_from)
        .collect()
}

/// An invoice or credit note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceRow {
    pub id: i64,
    pub number: String,
    /// `invoice` or `credit_note`.
    pub kind: String,
    pub user_id: Option<i64>,
    /// `YYYY-MM`
    pub period: String,
    pub currency: String,
    pub total: String,
    /// For a credit note: the invoice it corrects.
    pub corrects_id: Option<i64>,
    pub reason: Option<String>,
    pub issued_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceLineRow {
    pub tree_id: Option<i64>,
    pub tree_title: String,
    pub software_release: Option<String>,
    pub software_type: Option<String>,
    pub resource: String,
    pub quantity: String,
    pub unit_price: String,
    pub amount: String,
}

/// An invoice to write, with its lines.
#[derive(Debug, Clone)]
pub struct NewInvoice<'a> {
    pub number: &'a str,
    pub kind: &'a str,
    pub user_id: Option<i64>,
    pub period: &'a str,
    pub currency: &'a str,
    pub total: &'a str,
    pub corrects_id: Option<i64>,
    pub reason: Option<&'a str>,
    pub lines: &'a [InvoiceLineRow],
}

/// Writes an invoice, its lines, and marks `records` billed by it. `None`
/// when the number or the (owner, month) of an invoice is already taken, or
/// a record was billed meanwhile (another master issued first): the caller's
/// transaction must then be rolled back.
pub fn insert_invoice(
    db: &mut dyn Db,
    invoice: &NewInvoice<'_>,
    records: &[i64],
    now: i64,
) -> Result<Option<i64>> {
    let conflict = if invoice.kind == "invoice" {
        "ON CONFLICT (COALESCE(user_id, 0), period) WHERE kind = 'invoice' DO NOTHING"
    } else {
        "ON CONFLICT (number) DO NOTHING"
    };
    let Some(id) = db
        .query_opt(
            &format!(
                "INSERT INTO invoice (number, kind, user_id, period, currency, total, corrects_id, reason, issued_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) {conflict} RETURNING id"
            ),
            &[
                invoice.number.into(),
                invoice.kind.into(),
                invoice.user_id.into(),
                invoice.period.into(),
                invoice.currency.into(),
                invoice.total.into(),
                invoice.corrects_id.into(),
                invoice.reason.into(),
                now.into(),
            ],
        )?
        .map(|r| r.int(0))
        .transpose()?
    else {
        return Ok(None);
    };
    for line in invoice.lines {
        db.execute(
            "INSERT INTO invoice_line (invoice_id, tree_id, tree_title, software_release, software_type, resource, quantity, unit_price, amount) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                id.into(),
                line.tree_id.into(),
                (&line.tree_title).into(),
                (&line.software_release).into(),
                (&line.software_type).into(),
                (&line.resource).into(),
                (&line.quantity).into(),
                (&line.unit_price).into(),
                (&line.amount).into(),
            ],
        )?;
    }
    for record in records {
        let marked = db.query_opt(
            "INSERT INTO invoiced_usage (record_id, invoice_id) VALUES ($1, $2) ON CONFLICT (record_id) DO NOTHING RETURNING record_id",
            &[(*record).into(), id.into()],
        )?;
        if marked.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(id))
}

const INVOICE_COLUMNS: &str =
    "id, number, kind, user_id, period, currency, total, corrects_id, reason, issued_at";

fn invoice_from(r: &Row) -> Result<InvoiceRow> {
    Ok(InvoiceRow {
        id: r.int(0)?,
        number: r.text(1)?,
        kind: r.text(2)?,
        user_id: r.opt_int(3)?,
        period: r.text(4)?,
        currency: r.text(5)?,
        total: r.text(6)?,
        corrects_id: r.opt_int(7)?,
        reason: r.opt_text(8)?,
        issued_at: r.int(9)?,
    })
}

/// Invoices and credit notes the scope may see, newest first.
pub fn invoices(db: &mut dyn Db, scope: Scope) -> Result<Vec<InvoiceRow>> {
    let rows = match scope.owner() {
        None => db.query(
            &format!("SELECT {INVOICE_COLUMNS} FROM invoice ORDER BY id DESC"),
            &[],
        )?,
        Some(owner) => db.query(
            &format!("SELECT {INVOICE_COLUMNS} FROM invoice WHERE user_id = $1 ORDER BY id DESC"),
            &[owner.into()],
        )?,
    };
    rows.iter().map(invoice_from).collect()
}

/// One invoice by number, if the scope may see it.
pub fn invoice_by_number(
    db: &mut dyn Db,
    scope: Scope,
    number: &str,
) -> Result<Option<InvoiceRow>> {
    let row = match scope.owner() {
        None => db.query_opt(
            &format!("SELECT {INVOICE_COLUMNS} FROM invoice WHERE number = $1"),
            &[number.into()],
        )?,
        Some(owner) => db.query_opt(
            &format!("SELECT {INVOICE_COLUMNS} FROM invoice WHERE number = $1 AND user_id = $2"),
            &[number.into(), owner.into()],
        )?,
    };
    row.as_ref().map(invoice_from).transpose()
}

/// Credit notes that correct an invoice.
pub fn credit_notes_of(db: &mut dyn Db, invoice_id: i64) -> Result<Vec<InvoiceRow>> {
    db.query(
        &format!("SELECT {INVOICE_COLUMNS} FROM invoice WHERE corrects_id = $1 ORDER BY id"),
        &[invoice_id.into()],
    )?
    .iter()
    .map(invoice_from)
    .collect()
}

pub fn invoice_lines(db: &mut dyn Db, invoice_id: i64) -> Result<Vec<InvoiceLineRow>> {
    db.query(
        "SELECT tree_id, tree_title, software_release, software_type, resource, quantity, unit_price, amount \
         FROM invoice_line WHERE invoice_id = $1 ORDER BY id",
        &[invoice_id.into()],
    )?
    .iter()
    .map(|r| {
        Ok(InvoiceLineRow {
            tree_id: r.opt_int(0)?,
            tree_title: r.text(1)?,
            software_release: r.opt_text(2)?,
            software_type: r.opt_text(3)?,
            resource: r.text(4)?,
            quantity: r.text(5)?,
            unit_price: r.text(6)?,
            amount: r.text(7)?,
        })
    })
    .collect()
}

/// Every line of every invoice issued in `[from, to)` (microseconds), for
/// the provider's revenue: (currency, line).
pub fn lines_issued_between(
    db: &mut dyn Db,
    from: i64,
    to: i64,
) -> Result<Vec<(String, String, InvoiceLineRow)>> {
    db.query(
        "SELECT i.currency, i.kind, l.tree_id, l.tree_title, l.software_release, l.software_type, l.resource, \
         l.quantity, l.unit_price, l.amount FROM invoice_line l JOIN invoice i ON i.id = l.invoice_id \
         WHERE i.issued_at >= $1 AND i.issued_at < $2 ORDER BY l.id",
        &[from.into(), to.into()],
    )?
    .iter()
    .map(|r| {
        Ok((
            r.text(0)?,
            r.text(1)?,
            InvoiceLineRow {
                tree_id: r.opt_int(2)?,
                tree_title: r.text(3)?,
                software_release: r.opt_text(4)?,
                software_type: r.opt_text(5)?,
                resource: r.text(6)?,
                quantity: r.text(7)?,
                unit_price: r.text(8)?,
                amount: r.text(9)?,
            },
        ))
    })
    .collect()
}

/// The title of an instance, live or archived (invoice lines name trees).
pub fn instance_title(db: &mut dyn Db, id: i64) -> Result<Option<String>> {
    db.query_opt("SELECT title FROM instance WHERE id = $1", &[id.into()])?
        .map(|r| r.text(0))
        .transpose()
}

/// A user's name by id.
pub fn user_name(db: &mut dyn Db, id: i64) -> Result<Option<String>> {
    db.query_opt("SELECT name FROM \"user\" WHERE id = $1", &[id.into()])?
        .map(|r| r.text(0))
        .transpose()
}
