//! slapos-store
