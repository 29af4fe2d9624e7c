//! v2sp control plane: syncs nodes, users and online counts from the panel, publishes them to
//! the data plane through shared memory, harvests traffic and online IPs from it, and reports
//! them back without losing or doubling a counted byte (see `docs/design.md`).

pub mod acme;
pub mod agent;
pub mod build;
mod certfiles;
pub mod cli;
pub mod config_init;
pub mod hop;
pub mod hoststat;
pub mod keys;
pub mod machine;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod panel;
pub mod report;
pub mod routing;
pub mod slots;
pub mod status;
pub mod supervise;
pub mod sys;
pub mod upgrade;
