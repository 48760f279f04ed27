//! Domain model of slapos-rs: the vocabulary shared by the master, the node,
//! the clients and the store. Pure types and validation, no IO, no wire format.

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
