//! `proto::AuthContext` over a core's current user table, the process-wide replay filter and
//! the clock.

use std::collections::HashSet;
use std::sync::Mutex;

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

/// Bounded two-generation set: remembers at least the last `cap` nonces. Used until
/// `limits::replay` (owned by the protocol engineer) is wired in. Touched once per handshake.
pub struct SimpleReplay {
    cap: usize,
    gens: Mutex<(HashSet<Vec<u8>>, HashSet<Vec<u8>>)>,
}

impl SimpleReplay {
    pub fn new(cap: usize) -> Self {
        SimpleReplay {
            cap: cap.max(1),
            gens: Mutex::new((HashSet::new(), HashSet::new())),
        }
    }
}

impl ReplayFilter for SimpleReplay {
    fn check_and_insert(&self, nonce: &[u8]) -> bool {
        let mut g = match self.gens.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.0.contains(nonce) || g.1.contains(nonce) {
            return false;
        }
        if g.0.len() >= self.cap {
            let cur = std::mem::take(&mut g.0);
            g.1 = cur;
        }
        g.0.insert(nonce.to_vec());
        true
    }
}

/// The context handed to `StreamHandshake::feed` / `PacketCodec::open_packet`.
pub struct CoreAuth<'a> {
    pub port: &'a dyn CorePort,
    pub node: u16,
    pub replay: &'a dyn ReplayFilter,
    pub now_unix: u64,
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
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn replay_detects_and_stays_bounded() {
        let r = SimpleReplay::new(2);
        assert!(r.check_and_insert(b"a"));
        assert!(!r.check_and_insert(b"a"));
        assert!(r.check_and_insert(b"b"));
        assert!(r.check_and_insert(b"c")); // rotates: a,b → old gen
        assert!(!r.check_and_insert(b"a"));
        assert!(r.check_and_insert(b"d"));
        assert!(r.check_and_insert(b"e")); // rotates again: a,b dropped
        assert!(r.check_and_insert(b"a"));
    }
}
