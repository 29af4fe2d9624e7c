//! An in-memory [`AuthContext`] for code that drives protocol handshakes without a core: unit
//! tests, benchmarks and fuzz targets. Users are built from panel uuids exactly as the control
//! plane builds them (`v2sp_shared::cred`), so a handshake accepted here is accepted in
//! production for the same uuid.

use std::collections::HashMap;

use v2sp_shared::cred::{lookup_key, secret_for, CredKind};
use v2sp_shared::shm::UserRef;

use super::AuthContext;

/// Users of one node, a fixed clock, and a replay filter that either remembers or accepts all.
pub struct StaticAuth {
    users: Vec<UserRef>,
    index: HashMap<Vec<u8>, UserRef>,
    seen: std::cell::RefCell<std::collections::HashSet<Vec<u8>>>,
    remember_nonces: bool,
    now: u64,
}

impl StaticAuth {
    /// Users `uuids` (panel user ids 100, 101, …) for credentials of `kind`. Uuids that are
    /// not valid for `kind` are skipped, as the control plane skips them.
    pub fn new(kind: CredKind, uuids: &[&str], now_unix: u64) -> Self {
        let mut users = Vec::new();
        let mut index = HashMap::new();
        for (i, u) in uuids.iter().enumerate() {
            let Ok(s) = secret_for(kind, u) else { continue };
            let r = UserRef {
                node: 1,
                slot: i as u32,
                user_id: 100 + i as u32,
                gen: 1,
                secret: s.bytes,
                secret_len: s.len,
                speed_limit_mbps: 0,
                device_limit: 0,
            };
            if let Some(k) = lookup_key(kind, s.as_slice()) {
                index.insert(k.as_slice().to_vec(), r);
            }
            users.push(r);
        }
        StaticAuth {
            users,
            index,
            seen: Default::default(),
            remember_nonces: true,
            now: now_unix,
        }
    }

    /// Accept every nonce (fuzzing: a replay verdict must not depend on earlier inputs).
    pub fn without_replay_memory(mut self) -> Self {
        self.remember_nonces = false;
        self
    }
}

impl AuthContext for StaticAuth {
    fn lookup(&self, key: &[u8]) -> Option<UserRef> {
        self.index.get(key).copied()
    }
    fn for_each_user(&self, f: &mut dyn FnMut(&UserRef) -> bool) {
        for u in &self.users {
            if !f(u) {
                break;
            }
        }
    }
    fn check_replay(&self, nonce: &[u8]) -> bool {
        !self.remember_nonces || self.seen.borrow_mut().insert(nonce.to_vec())
    }
    fn now_unix(&self) -> u64 {
        self.now
    }
}

/// One user found by one raw lookup key (the secret is the key itself): protocol unit tests
/// that need a user without building credentials from a uuid.
pub struct OneKey(HashMap<Vec<u8>, UserRef>);

impl OneKey {
    pub fn with(key: &[u8], user_id: u32) -> Self {
        let mut secret = [0u8; 32];
        secret[..key.len()].copy_from_slice(key);
        let u = UserRef {
            node: 0,
            slot: 0,
            user_id,
            gen: 1,
            secret,
            secret_len: key.len() as u8,
            speed_limit_mbps: 0,
            device_limit: 0,
        };
        OneKey(HashMap::from([(key.to_vec(), u)]))
    }
}

impl AuthContext for OneKey {
    fn lookup(&self, key: &[u8]) -> Option<UserRef> {
        self.0.get(key).copied()
    }
    fn for_each_user(&self, f: &mut dyn FnMut(&UserRef) -> bool) {
        for u in self.0.values() {
            if !f(u) {
                break;
            }
        }
    }
    fn check_replay(&self, _: &[u8]) -> bool {
        true
    }
    fn now_unix(&self) -> u64 {
        0
    }
}
