//! Domain model of slapos-rs: the vocabulary shared by the master, the node,
//! the clients and the store. Pure types and validation, no IO, no wire format.

pub mod billing;
mod sla;
mod state;
mod validate;

pub use sla::Sla;
pub use state::{InstanceState, ReportedState, SoftwareState, StateError};
pub use validate::{
    validate_reference, validate_software_url, InvalidInput, MAX_REFERENCE_LEN, MAX_URL_LEN,
};

/// Software type used when a request names none (the reference's `DEFAULT_SOFTWARE_TYPE`).
pub const DEFAULT_SOFTWARE_TYPE: &str = "default";

/// Microseconds since the Unix epoch: the unit of every timestamp the master stores.
pub fn now_micros() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A timestamp in microseconds since the epoch, as UTC
/// `YYYY-MM-DD HH:MM:SS` (what pages and listings show).
pub fn format_utc_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = billing::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
