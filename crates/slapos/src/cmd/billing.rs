//! Accounting commands. A user's: `slapos usage`, `slapos invoice
//! list|show|draft` (over the JSON API, with the user's token). The
//! provider's: `slapos master price-list add|list`, `slapos master invoice
//! issue|credit`, `slapos master revenue` (directly on the master's database).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::Value;
use slapos_core::billing::{parse_utc_date, Month};
use slapos_master::billing::{self, PriceListInput};
use slapos_master::MasterError;

use crate::cmd::accounts::open;
use crate::cmd::client::Session;
use crate::MasterDb;

#[derive(Subcommand)]
pub enum InvoiceAction {
    /// Your invoices and credit notes, newest first.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
    /// One invoice with its lines.
    Show {
        number: String,
        /// The lines as CSV.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
    /// What this month's invoice would be if it were issued now.
    Draft {
        /// `YYYY-MM` (default: the current month).
        #[arg(long)]
        period: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
}

/// `slapos usage`.
#[derive(clap::Args)]
pub struct UsageArgs {
    /// An instance tree, by the title of its root.
    #[arg(long)]
    instance: Option<String>,
    /// Only usage on this computer.
    #[arg(long)]
    computer: Option<String>,
    /// `YYYY-MM-DD[THH:MM:SSZ]` (UTC).
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
    /// `hour`, `day`, `month`, or a number of seconds.
    #[arg(long, default_value = "day")]
    bucket: String,
    /// The ledger's records, as JSON.
    #[arg(long)]
    records: bool,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    cfg: Option<PathBuf>,
}

fn bucket_seconds(text: &str) -> Result<i64> {
    Ok(match text {
        "hour" => 3600,
        "day" => 86_400,
        "month" => 30 * 86_400,
        n => n
            .parse()
            .with_context(|| format!("--bucket {n:?}: expected hour, day, month or seconds"))?,
    })
}

fn query_value(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

pub async fn usage(args: UsageArgs) -> Result<()> {
    let session = Session::open(args.cfg.as_deref())?;
    let mut query = Vec::new();
    if let Some(title) = &args.instance {
        let instance = session.client.instance_by_title(title).await?;
        let id = instance["id"]
            .as_i64()
            .with_context(|| format!("the master's answer for {title:?} has no id"))?;
        query.push(format!("tree={id}"));
    }
    if let Some(c) = &args.computer {
        query.push(format!("computer={}", query_value(c)));
    }
    for (name, value) in [("from", &args.from), ("to", &args.to)] {
        if let Some(v) = value {
            parse_utc_date(v)?;
            query.push(format!("{name}={}", query_value(v)));
        }
    }
    if args.records {
        let records = session.client.usage_records(&query.join("&")).await?;
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    query.push(format!("bucket={}", bucket_seconds(&args.bucket)?));
    let buckets = session.client.usage_summary(&query.join("&")).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&buckets)?);
        return Ok(());
    }
    println!(
        "{:<20} {:>12} {:>14} {:>16} {:>16}",
        "period start (UTC)", "CPU-hours", "instance-hours", "memory GB-hours", "disk GB-months"
    );
    let mut totals = [0f64; 4];
    for b in buckets.as_array().into_iter().flatten() {
        let v = |k: &str| b[k].as_f64().unwrap_or(0.0);
        let row = [
            v("cpu_hours"),
            v("instance_hours"),
            v("memory_gb_hours"),
            v("disk_gb_months"),
        ];
        for (t, x) in totals.iter_mut().zip(row) {
            *t += x;
        }
        println!(
            "{:<20} {:>12.6} {:>14.6} {:>16.6} {:>16.9}",
            slapos_core::format_utc_micros(b["start"].as_i64().unwrap_or(0)),
            row[0],
            row[1],
            row[2],
            row[3]
        );
    }
    println!(
        "{:<20} {:>12.6} {:>14.6} {:>16.6} {:>16.9}",
        "total", totals[0], totals[1], totals[2], totals[3]
    );
    Ok(())
}

fn print_invoice(invoice: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    println!(
        "{} {} ({}) for {}, issued {} UTC",
        if invoice["kind"] == "credit_note" {
            "Credit note"
        } else {
            "Invoice"
        },
        s(&invoice["number"]),
        s(&invoice["period"]),
        invoice["user"].as_str().unwrap_or("(proxy user)"),
        s(&invoice["issued_at"]),
    );
    if let Some(corrects) = invoice["corrects"].as_str() {
        println!("Corrects {corrects}: {}", s(&invoice["reason"]));
    }
    println!(
        "{:<24} {:<16} {:>14} {:>12} {:>10}",
        "instance tree", "resource", "quantity", "unit price", "amount"
    );
    for line in invoice["lines"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<16} {:>14} {:>12} {:>10}",
            s(&line["tree_title"]),
            s(&line["resource"]),
            s(&line["quantity"]),
            s(&line["unit_price"]),
            s(&line["amount"])
        );
    }
    println!(
        "{:<24} {:<16} {:>14} {:>12} {:>10} {}",
        "total",
        "",
        "",
        "",
        s(&invoice["total"]),
        s(&invoice["currency"])
    );
    if let Some(notes) = invoice["credit_notes"].as_array().filter(|n| !n.is_empty()) {
        let numbers: Vec<String> = notes.iter().map(s).collect();
        println!("Credit notes: {}", numbers.join(", "));
    }
}

pub async fn invoice(action: InvoiceAction) -> Result<()> {
    match action {
        InvoiceAction::List { json, cfg } => {
            let list = Session::open(cfg.as_deref())?.client.invoices().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!(
                "{:<28} {:<12} {:<8} {:>12} {:<4} issued (UTC)",
                "number", "kind", "period", "total", ""
            );
            for i in list.as_array().into_iter().flatten() {
                let s = |k: &str| i[k].as_str().unwrap_or("").to_string();
                println!(
                    "{:<28} {:<12} {:<8} {:>12} {:<4} {}",
                    s("number"),
                    s("kind"),
                    s("period"),
                    s("total"),
                    s("currency"),
                    s("issued_at")
                );
            }
        }
        InvoiceAction::Show {
            number,
            csv,
            json,
            cfg,
        } => {
            let session = Session::open(cfg.as_deref())?;
            if csv {
                print!("{}", session.client.invoice_csv(&number).await?);
            } else {
                let invoice = session.client.invoice(&number).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&invoice)?);
                } else {
                    print_invoice(&invoice);
                }
            }
        }
        InvoiceAction::Draft { period, json, cfg } => {
            if let Some(p) = &period {
                p.parse::<Month>()?;
            }
            let drafts = Session::open(cfg.as_deref())?
                .client
                .invoice_drafts(period.as_deref())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&drafts)?);
            } else if drafts.as_array().is_none_or(|d| d.is_empty()) {
                println!("Nothing to invoice yet.");
            } else {
                for d in drafts.as_array().into_iter().flatten() {
                    let mut d = d.clone();
                    d["kind"] = "draft".into();
                    d["number"] = "(draft)".into();
                    d["issued_at"] = "not issued".into();
                    print_invoice(&d);
                }
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum PriceListAction {
    /// Add a price list from a TOML file (name, currency, valid_from,
    /// valid_to, and [[price]] tables: resource, unit_price, optional
    /// software_release and software_type).
    Add {
        file: PathBuf,
        #[command(flatten)]
        db: MasterDb,
    },
    /// The price lists and their prices.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: MasterDb,
    },
}

#[derive(Subcommand)]
pub enum MasterInvoiceAction {
    /// Issue the invoices of a month (one per user with usage not yet
    /// billed); issued invoices never change.
    Issue {
        /// `YYYY-MM`
        #[arg(long)]
        period: String,
        #[command(flatten)]
        db: MasterDb,
    },
    /// Issue a credit note against an invoice.
    Credit {
        number: String,
        #[arg(long)]
        amount: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        db: MasterDb,
    },
    /// Every invoice and credit note (the provider's view).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: MasterDb,
    },
}

pub async fn price_list(action: PriceListAction) -> Result<()> {
    match action {
        PriceListAction::Add { file, db } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let input: PriceListInput = toml::from_str(&text)
                .with_context(|| format!("{} is not a price list", file.display()))?;
            let store = open(&db).await?;
            let list = store
                .write(move |db| billing::add_price_list(db, &input))
                .await?;
            println!(
                "Price list {:?} added: {} prices in {}, valid from {} UTC",
                list.name,
                list.prices.len(),
                list.currency,
                slapos_core::format_utc_micros(list.valid_from)
            );
        }
        PriceListAction::List { json, db } => {
            let store = open(&db).await?;
            let lists = store
                .read(|db| Ok::<_, MasterError>(slapos_store::billing::price_lists(db)?))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&lists)?);
                return Ok(());
            }
            for l in lists {
                println!(
                    "{} ({}), from {} to {}",
                    l.name,
                    l.currency,
                    slapos_core::format_utc_micros(l.valid_from),
                    l.valid_to
                        .map(slapos_core::format_utc_micros)
                        .unwrap_or_else(|| "(open)".into())
                );
                for p in l.prices {
                    println!(
                        "  {:<16} {:>12}  release {}  type {}",
                        p.resource,
                        p.unit_price,
                        p.software_release.as_deref().unwrap_or("*"),
                        p.software_type.as_deref().unwrap_or("*")
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn master_invoice(action: MasterInvoiceAction) -> Result<()> {
    match action {
        MasterInvoiceAction::Issue { period, db } => {
            let month: Month = period.parse()?;
            let store = open(&db).await?;
            let issued = store.write(move |db| billing::issue(db, month)).await?;
            if issued.is_empty() {
                println!("No usage left to invoice for {month}.");
            }
            for i in issued {
                println!("{} {} {}", i.number, i.total, i.currency);
            }
        }
        MasterInvoiceAction::Credit {
            number,
            amount,
            reason,
            db,
        } => {
            let store = open(&db).await?;
            let note = store
                .write(move |db| billing::credit(db, &number, &amount, &reason))
                .await?;
            println!("{} {} {}", note.number, note.total, note.currency);
        }
        MasterInvoiceAction::List { json, db } => {
            let store = open(&db).await?;
            let list = store
                .read(|db| billing::list(db, slapos_store::queries::Scope::All))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for i in list {
                    println!(
                        "{:<28} {:<12} {:<8} {:<16} {:>12} {}",
                        i.number,
                        i.kind,
                        i.period,
                        i.user.as_deref().unwrap_or("(proxy user)"),
                        i.total,
                        i.currency
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn revenue(
    from: Option<String>,
    to: Option<String>,
    json: bool,
    db: MasterDb,
) -> Result<()> {
    let from = from
        .as_deref()
        .map(parse_utc_date)
        .transpose()?
        .unwrap_or(0);
    let to = to
        .as_deref()
        .map(parse_utc_date)
        .transpose()?
        .unwrap_or(i64::MAX);
    let store = open(&db).await?;
    let rows = store.read(move |db| billing::revenue(db, from, to)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:>14} {:<4} {:>6}  software release",
        "amount", "", "lines"
    );
    for r in rows {
        println!(
            "{:>14} {:<4} {:>6}  {}",
            r.amount,
            r.currency,
            r.lines,
            r.software_release.as_deref().unwrap_or("(credit notes)")
        );
    }
    Ok(())
}
