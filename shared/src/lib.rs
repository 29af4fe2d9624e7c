//! Shared between the v2sp control plane and data plane: the local config file model, the
//! panel API types, per-protocol credentials, the data-plane node config, and the
//! shared-memory contract (see `docs/design.md`). No async runtime lives here.

pub mod audit;
pub mod config;
pub mod cred;
pub mod dpconfig;
pub mod logging;
pub mod panel;
pub mod route;
pub mod shm;
