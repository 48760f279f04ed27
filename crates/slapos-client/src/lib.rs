//! slapos-client
