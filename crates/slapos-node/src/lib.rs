//! The SlapOS node: formats a computer into partitions, installs the
//! software releases supplied to it, deploys and supervises the instances
//! allocated to it, and reports back to the master.

pub mod config;
pub mod daemon;
pub mod format;
pub mod instance;
/// The release format, shared with the master.
pub use slapos_release as manifest;
pub mod software;
pub mod supervisor;
pub mod usage;
