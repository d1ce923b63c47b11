//! provbox, the appliance: start-up and shutdown of every server, the device tracker,
//! the web API and dashboard, the phone simulator and the demo. The `provbox` binary
//! is a thin CLI over this library, which is also the test fixture
//! ([`Appliance::builder`]).

pub mod api;
pub mod appliance;
pub mod check;
pub mod client;
pub mod dashboard;
pub mod demo;
pub mod export;
pub mod healthcheck;
pub mod import;
pub mod install;
pub mod logging;
pub mod sim;
pub mod tracker;

pub use appliance::{Addrs, Appliance, ApplianceBuilder};
