pub mod client;
pub mod node;
pub mod serve;
pub mod up;
