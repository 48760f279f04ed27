//! The SlapOS master: the engine that keeps computers, software and
//! instances, and the HTTP interfaces that expose it (legacy SLAP protocol,
//! JSON API). `slapos proxy` and `slapos master` both run this crate.

pub mod api;
pub mod api_billing;
pub mod auth;
pub mod billing;
pub mod engine;
pub mod error;
pub mod legacy;
pub mod pki;
pub mod schemas;
pub mod server;
pub mod tls;
pub mod views;
pub mod web;

pub use auth::Authentication;
pub use engine::EngineConfig;
pub use error::MasterError;
pub use server::{serve, serve_with_tls, AppState, Forward, MasterConfig};
