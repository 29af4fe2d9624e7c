//! `proto::AuthContext` over a core's current user table, the process-wide replay filter and
//! the clock.

use v2sp_shared::shm::UserRef;

use crate::proto::AuthContext;
use crate::stats::CorePort;

/// Process-wide handshake replay defence (salts/nonces), shared by all cores.
pub trait ReplayFilter: Send + Sync {
    /// Records `nonce`; false if it was seen before.
    fn check_and_insert(&self, nonce: &[u8]) -> bool;
}

impl ReplayFilter for crate::limits::replay::ReplayFilter {
    fn check_and_insert(&self, nonce: &[u8]) -> bool {
        crate::limits::replay::ReplayFilter::check_and_insert(self, nonce, unix_now())
    }
}

/// The context handed to `StreamHandshake::feed` / `PacketCodec::open_packet`.
pub struct CoreAuth<'a> {
    pub port: &'a dyn CorePort,
    pub node: u16,
    pub replay: &'a dyn ReplayFilter,
    pub now_unix: u64,
    pub peer: Option<std::net::IpAddr>,
}

impl AuthContext for CoreAuth<'_> {
    fn lookup(&self, key: &[u8]) -> Option<UserRef> {
        self.port.lookup(self.node, key)
    }
    fn for_each_user(&self, f: &mut dyn FnMut(&UserRef) -> bool) {
        self.port.for_each_user(self.node, f)
    }
    fn check_replay(&self, nonce: &[u8]) -> bool {
        self.replay.check_and_insert(nonce)
    }
    fn now_unix(&self) -> u64 {
        self.now_unix
    }
    fn users_gen(&self) -> Option<u64> {
        self.port.users_gen(self.node)
    }
    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.peer
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
