//! Integration tests of slapos-proto against the recorded slapos.core
//! 1.26.1 fixtures (`shared/fixtures/slap-1.26.1`, or `$SLAPOS_FIXTURES`).

mod common;
mod exchanges;
mod hostile;
mod marshal_cases;
mod params;
