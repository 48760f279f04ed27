//! An independent computation of invoice amounts, in integers: what the
//! accounting tests compare the master's exact-decimal invoices with.

#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::Value;

/// Ledger units per priced unit of each resource (see docs/accounting.md).
pub fn raw_per_unit(resource: &str) -> i128 {
    match resource {
        "instance_hour" => 3_600,
        "cpu_hour" => 3_600_000_000,
        "memory_gb_hour" => 3_600_000_000_000,
        "disk_gb_month" => 1_000_000_000 * 730 * 3_600,
        other => panic!("unknown resource {other}"),
    }
}

/// The ledger column of a resource.
pub fn column(resource: &str) -> &'static str {
    match resource {
        "instance_hour" => "running_seconds",
        "cpu_hour" => "cpu_micros",
        "memory_gb_hour" => "memory_byte_seconds",
        "disk_gb_month" => "disk_byte_seconds",
        other => panic!("unknown resource {other}"),
    }
}

pub const RESOURCES: [&str; 4] = [
    "instance_hour",
    "cpu_hour",
    "memory_gb_hour",
    "disk_gb_month",
];

/// One line's amount in cents: `raw × price / raw-per-unit`, the price in
/// ten-thousandths, rounded half up once.
pub fn line_cents(raw: i128, resource: &str, price_e4: i128) -> i128 {
    let num = raw * price_e4;
    let den = raw_per_unit(resource) * 100;
    (2 * num + den) / (2 * den)
}

/// The total in cents of ledger records (as the JSON API lists them), one
/// line per tree, release, type and resource, with `price_e4(release,
/// resource)`.
pub fn total_cents(records: &[Value], price_e4: impl Fn(&str, &str) -> i128) -> i128 {
    let mut raw: BTreeMap<(i64, String, String, &str), i128> = BTreeMap::new();
    for r in records {
        for resource in RESOURCES {
            let q = r[column(resource)].as_i64().expect("an integer quantity");
            if q == 0 {
                continue;
            }
            *raw.entry((
                r["tree_id"].as_i64().unwrap_or(0),
                r["software_release"].as_str().unwrap_or("").to_string(),
                r["software_type"].as_str().unwrap_or("").to_string(),
                resource,
            ))
            .or_default() += i128::from(q);
        }
    }
    raw.into_iter()
        .map(|((_, release, _, resource), q)| line_cents(q, resource, price_e4(&release, resource)))
        .sum()
}

/// `"12.34"` (or `"-0.01"`) in cents.
pub fn cents(amount: &Value) -> i128 {
    let text = amount
        .as_str()
        .unwrap_or_else(|| panic!("an amount: {amount}"));
    let (units, frac) = text.split_once('.').expect("two decimals");
    assert_eq!(frac.len(), 2, "{text}");
    let sign = if units.starts_with('-') { -1 } else { 1 };
    units.parse::<i128>().unwrap() * 100 + sign * frac.parse::<i128>().unwrap()
}
