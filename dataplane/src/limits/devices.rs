//! Process-wide device (online IP) tracker and device-limit admission.
//!
//! Per (node, user): the set of source IPs with open connections or UDP sessions, each with a
//! refcount. Touched only on open/close (sharded `Mutex`, never per byte), so it is exact across
//! cores. Admission: an IP already online for the user is always let in; a new IP is let in iff
//! `device_limit == 0 || local_distinct_ips + alive_elsewhere < device_limit`. The 0→1 and 1→0
//! refcount transitions are reported as [`DeviceEvent`]s for the calling core's event ring.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::net::normalise_ip;

/// An online/offline transition of one (node, user, ip).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceEvent {
    pub online: bool,
    pub node: u16,
    pub user_id: u32,
    pub ip: IpAddr,
}

const SHARDS: usize = 16;
type Shard = HashMap<(u16, u32), HashMap<IpAddr, u32>>;

#[derive(Debug)]
pub struct DeviceTracker {
    shards: Vec<Mutex<Shard>>,
}

impl Default for DeviceTracker {
    fn default() -> Self {
        DeviceTracker {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// Admission result.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Let in; `Some(event)` when this made the IP online (0→1).
    Yes(Option<DeviceEvent>),
    /// Device limit reached.
    No,
}

impl DeviceTracker {
    fn shard(&self, node: u16, user_id: u32) -> std::sync::MutexGuard<'_, Shard> {
        let idx = (user_id as usize)
            .wrapping_mul(31)
            .wrapping_add(usize::from(node))
            % SHARDS;
        #[allow(clippy::indexing_slicing)]
        let m = &self.shards[idx]; // idx < SHARDS == len
        match m.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Opens one reference for (node, user, ip) if the device limit allows it.
    pub fn admit(
        &self,
        node: u16,
        user_id: u32,
        ip: IpAddr,
        device_limit: u32,
        alive_elsewhere: u32,
    ) -> Admit {
        let ip = normalise_ip(ip);
        let mut shard = self.shard(node, user_id);
        let set = shard.entry((node, user_id)).or_default();
        if let Some(rc) = set.get_mut(&ip) {
            *rc += 1;
            return Admit::Yes(None);
        }
        let local = u32::try_from(set.len()).unwrap_or(u32::MAX);
        if device_limit != 0 && local.saturating_add(alive_elsewhere) >= device_limit {
            if set.is_empty() {
                shard.remove(&(node, user_id));
            }
            return Admit::No;
        }
        set.insert(ip, 1);
        Admit::Yes(Some(DeviceEvent {
            online: true,
            node,
            user_id,
            ip,
        }))
    }

    /// Closes one reference; `Some(Offline)` on the 1→0 transition.
    pub fn release(&self, node: u16, user_id: u32, ip: IpAddr) -> Option<DeviceEvent> {
        let ip = normalise_ip(ip);
        let mut shard = self.shard(node, user_id);
        let set = shard.get_mut(&(node, user_id))?;
        let rc = set.get_mut(&ip)?;
        *rc = rc.saturating_sub(1);
        if *rc > 0 {
            return None;
        }
        set.remove(&ip);
        if set.is_empty() {
            shard.remove(&(node, user_id));
        }
        Some(DeviceEvent {
            online: false,
            node,
            user_id,
            ip,
        })
    }

    /// Distinct online IPs of a user (tests, diagnostics).
    pub fn online_ips(&self, node: u16, user_id: u32) -> usize {
        self.shard(node, user_id)
            .get(&(node, user_id))
            .map_or(0, HashMap::len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limit_counts_distinct_ips_plus_elsewhere() {
        let t = DeviceTracker::default();
        assert!(matches!(
            t.admit(1, 9, ip("127.0.0.2"), 2, 0),
            Admit::Yes(Some(_))
        ));
        assert_eq!(t.admit(1, 9, ip("127.0.0.2"), 2, 0), Admit::Yes(None));
        assert!(matches!(
            t.admit(1, 9, ip("127.0.0.3"), 2, 0),
            Admit::Yes(Some(_))
        ));
        assert_eq!(t.admit(1, 9, ip("127.0.0.4"), 2, 0), Admit::No);
        // already-online IP is always fine, even when over the limit now
        assert_eq!(t.admit(1, 9, ip("127.0.0.3"), 1, 5), Admit::Yes(None));
        // other node is independent; alive elsewhere counts
        assert_eq!(t.admit(2, 9, ip("127.0.0.4"), 2, 2), Admit::No);
        assert!(matches!(
            t.admit(2, 9, ip("127.0.0.4"), 2, 1),
            Admit::Yes(Some(_))
        ));
        assert!(matches!(
            t.admit(1, 10, ip("127.0.0.4"), 0, 99),
            Admit::Yes(Some(_))
        ));
    }

    #[test]
    fn refcounts_emit_online_and_offline_once() {
        let t = DeviceTracker::default();
        let mapped = ip("::ffff:127.0.0.5");
        let Admit::Yes(Some(ev)) = t.admit(3, 1, mapped, 0, 0) else {
            panic!()
        };
        assert_eq!(
            ev,
            DeviceEvent {
                online: true,
                node: 3,
                user_id: 1,
                ip: ip("127.0.0.5")
            }
        );
        assert_eq!(t.admit(3, 1, ip("127.0.0.5"), 0, 0), Admit::Yes(None));
        assert_eq!(t.release(3, 1, ip("127.0.0.5")), None);
        let off = t.release(3, 1, mapped).unwrap();
        assert!(!off.online);
        assert_eq!(t.release(3, 1, mapped), None);
        assert_eq!(t.online_ips(3, 1), 0);
    }

    #[test]
    fn exact_under_threads() {
        let t = std::sync::Arc::new(DeviceTracker::default());
        let hs: Vec<_> = (0..4)
            .map(|k| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut ok = 0;
                    for i in 0..50u8 {
                        let a = IpAddr::from([127, 0, k, i]);
                        if matches!(t.admit(0, 1, a, 10, 0), Admit::Yes(_)) {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let total: u32 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 10);
        assert_eq!(t.online_ips(0, 1), 10);
    }
}
