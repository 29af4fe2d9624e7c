//! Per-user limits: speed (GCRA, shared across cores) and devices (online IPs).

pub mod devices;
pub mod gcra;
pub mod replay;
