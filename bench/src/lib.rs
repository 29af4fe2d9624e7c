//! v2sp-bench: side-by-side benchmarks of v2sp against the peers it replaces or competes with
//! (shadowsocks-rust `ssserver`, sing-box, v2ray), with our own client side of each protocol v2sp
//! serves (Shadowsocks, Trojan over TLS, VLESS over TLS). See docs/benchmarks.md for how to run it and how to read the report.
pub mod client;
pub mod conn;
pub mod procstat;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod servers;
pub mod soak;
pub mod svg;
pub mod target;
