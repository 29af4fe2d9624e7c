//! Helpers that start third-party peers as clients of v2sp (config builders + process start).
//! The older sing-box / v2ray / sslocal helpers live in [`crate::harness`].

pub mod shoes;
pub mod upstream;
