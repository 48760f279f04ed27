pub mod accounts;
pub mod billing;
pub mod client;
pub mod console;
pub mod node;
pub mod serve;
pub mod up;
