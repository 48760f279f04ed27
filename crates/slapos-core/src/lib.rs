//! slapos-core
