//! slapos-proto
