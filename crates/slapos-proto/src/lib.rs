//! Wire formats of the legacy SLAP protocol, compatible with Python
//! slapos.core 1.26.1:
//!
//! * [`marshal`]: the `xml_marshaller` documents every structured argument
//!   and answer travels in (`slapos.util.dumps` / `loads`);
//! * [`params`]: the flat "parameter XML" instance, connection and SLA
//!   parameters are stored in (`slapos.util.dict2xml` / `xml2dict`).
//!
//! Both decoders treat their input as hostile: no DTD or custom entity is
//! ever processed, and size and nesting are bounded ([`marshal::Limits`]).

#![warn(missing_docs)]

mod error;
pub mod marshal;
pub mod params;
mod pyobj;
#[allow(missing_docs)]
pub mod usage;
mod xmlin;

pub use error::{DecodeError, EncodeError, Location};
pub use marshal::{dumps, loads, loads_with_limits, python_str, Limits, Object, SlapClass, Value};
pub use params::{dict2xml, xml2dict, xml2dict_with_limits};
