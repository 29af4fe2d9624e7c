//! Per-core cache of every user's auth-id cipher, rebuilt when the user table's generation
//! changes, and a hint map "source IP → user last authenticated from there" so the common case
//! (a client opening one more connection) costs one AES block instead of one per user.

use std::collections::HashMap;
use std::net::IpAddr;

use aes::Aes128;
use v2sp_shared::shm::UserRef;

use super::crypto::{auth_id_cipher, cmd_key, open_auth_id};
use crate::AuthContext;

/// Hints kept per core before the map is cleared (bounds memory under a scan of many IPs).
const MAX_HINTS: usize = 1 << 16;

pub struct KeyedUser {
    pub user: UserRef,
    pub cmd_key: [u8; 16],
    auth: Aes128,
}

/// See the module documentation.
#[derive(Default)]
pub struct UserKeys {
    /// `(users_gen, user count)` the entries were built for; `None` = never built.
    built_for: Option<(Option<u64>, usize)>,
    users: Vec<KeyedUser>,
    hints: HashMap<IpAddr, u32>,
}

/// A matched auth id.
pub struct Found {
    pub index: usize,
    pub timestamp: u64,
}

impl UserKeys {
    /// Rebuilds the per-user ciphers when the table changed (or its generation is unknown).
    pub fn refresh(&mut self, ctx: &dyn AuthContext) {
        let gen = ctx.users_gen();
        if let (Some(g), Some((Some(built), _))) = (gen, self.built_for) {
            if g == built {
                return;
            }
        }
        // Users still present keep their derived keys (a table change is usually small); the
        // index map is small, the schedules (~0.7 KiB each) are copied once.
        let old_users = std::mem::take(&mut self.users);
        let mut old: HashMap<[u8; 16], usize> = HashMap::with_capacity(old_users.len());
        for (i, k) in old_users.iter().enumerate() {
            if let Some(uuid) = k
                .user
                .secret()
                .get(..16)
                .and_then(|u| <[u8; 16]>::try_from(u).ok())
            {
                old.insert(uuid, i);
            }
        }
        let mut users = Vec::with_capacity(old_users.len());
        ctx.for_each_user(&mut |u| {
            if let Some(uuid) = u.secret().get(..16) {
                let reused = <[u8; 16]>::try_from(uuid)
                    .ok()
                    .and_then(|k| old.remove(&k))
                    .and_then(|i| old_users.get(i));
                let (cmd_key, auth) = match reused {
                    Some(k) => (k.cmd_key, k.auth.clone()),
                    None => {
                        let ck = cmd_key(uuid);
                        (ck, auth_id_cipher(&ck))
                    }
                };
                users.push(KeyedUser {
                    user: *u,
                    cmd_key,
                    auth,
                });
            }
            true
        });
        self.built_for = Some((gen, users.len()));
        self.users = users;
        self.hints.clear();
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&KeyedUser> {
        self.users.get(index)
    }

    /// Finds the user whose auth-id key opens `id`: the hinted user for `peer` first, then all.
    pub fn find(&self, id: &[u8; 16], peer: Option<IpAddr>) -> Option<Found> {
        if let Some(i) = peer.and_then(|p| self.hints.get(&p)) {
            let index = *i as usize;
            if let Some(u) = self.users.get(index) {
                if let Some(timestamp) = open_auth_id(&u.auth, id) {
                    return Some(Found { index, timestamp });
                }
            }
        }
        self.users
            .iter()
            .enumerate()
            .find_map(|(index, u)| open_auth_id(&u.auth, id).map(|timestamp| Found { index, timestamp }))
    }

    /// Remembers that `peer` authenticated as user `index`.
    pub fn hint(&mut self, peer: Option<IpAddr>, index: usize) {
        let (Some(p), Ok(i)) = (peer, u32::try_from(index)) else {
            return;
        };
        if self.hints.len() >= MAX_HINTS && !self.hints.contains_key(&p) {
            self.hints.clear();
        }
        self.hints.insert(p, i);
    }
}
