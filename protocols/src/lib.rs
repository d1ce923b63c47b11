//! provbox wire protocols. One module per protocol, each a server that reads the
//! store and publishes [`events::WireEvent`]s; plus the shared progress accounting.
//!
//! Architecture invariant: no protocol module imports another, and none knows about
//! the tracker, the journal or the web API. They only publish events.

pub mod dhcp;
pub mod events;
pub mod ftp;
pub mod http;
pub mod linkstats;
pub mod listen;
pub mod progress;
pub mod ratelog;
pub mod tftp;
pub mod uploads;
pub mod zerocopy;

pub use events::{EventBus, EventKind, Proto, WireEvent};
