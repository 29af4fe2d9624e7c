//! Test support for v2sp: the panel simulator ([`panel_sim`]) used by the control plane's
//! integration tests and benchmarks, and by the `v2sp-panel-sim` binary for manual runs.
//! Loopback only.

pub mod harness;
pub mod panel_sim;
pub mod peers;
pub mod ports;

pub use panel_sim::{AcceptedPush, Fault, PanelSim, RecordedRequest, SimDialect, SimOptions};
