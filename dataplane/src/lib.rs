//! v2sp data plane library.
pub mod limits;
pub mod net;
pub mod node;
pub mod outbound;
pub mod proto;
pub mod relay;
pub mod runtime;
pub mod stats;
pub mod sys;
pub mod tls;
pub mod transport;
pub mod upgrade;
