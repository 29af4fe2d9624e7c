//! v2sp data plane library.
//!
//! The protocols and transports are the sans-IO crate `v2sp-proto`, re-exported here as
//! [`proto`] and [`transport`]; this crate drives them (sockets, runtimes, relay, limits).
pub use v2sp_proto as proto;
pub use v2sp_proto::transport;
pub mod limits;
pub mod net;
pub mod node;
pub mod outbound;
pub mod relay;
pub mod runtime;
pub mod stats;
pub mod sys;
pub mod tls;
pub mod upgrade;
