//! provbox, the appliance: start-up and shutdown of every server, the device tracker,
//! the web API and dashboard, the phone simulator and the demo. The `provbox` binary
//! is a thin CLI over this library, which is also the test fixture
//! ([`Appliance::builder`]).

pub mod appliance;
pub mod check;
pub mod export;
pub mod healthcheck;
pub mod install;
pub mod logging;

pub use appliance::{Addrs, Appliance, ApplianceBuilder};
