pub mod client;
pub mod serve;
