//! Process-wide device (online IP) tracker and device-limit admission.
//!
//! Per (node, user): the set of source IPs with open connections or UDP sessions, each with a
//! refcount. Touched only on open/close (sharded `Mutex`, never per byte), so it is exact across
//! cores. Admission: an IP already online for the user is always let in; a new IP is let in iff
//! `device_limit == 0 || local_distinct_ips + alive_elsewhere < device_limit`. The 0→1 and 1→0
//! refcount transitions are reported as [`DeviceEvent`]s for the calling core's event ring.
//!
//! Every transition gets a sequence number from one process-wide counter, taken while its shard
//! is locked: the control plane drains the cores' rings one after the other and uses it to put
//! each IP's transitions back in order (see `v2sp_shared::shm::IpEvent`). [`DeviceTracker::snapshot`]
//! serves the control plane's resync request after it lost events or restarted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use v2sp_shared::shm::IpEventKind;

use crate::net::normalise_ip;

/// An online/offline transition of one (node, user, ip), or a resync item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceEvent {
    pub kind: IpEventKind,
    pub online: bool,
    pub node: u16,
    pub user_id: u32,
    pub ip: IpAddr,
    pub seq: u64,
}

const SHARDS: usize = 16;
/// Per (node, user): ip → (open references, seq of its last transition).
type Shard = HashMap<(u16, u32), HashMap<IpAddr, (u32, u64)>>;

#[derive(Debug)]
pub struct DeviceTracker {
    shards: Vec<Mutex<Shard>>,
    seq: AtomicU64,
}

impl Default for DeviceTracker {
    fn default() -> Self {
        // Start at the wall clock in microseconds: a restarted data plane numbers its events
        // above the previous one's (which would need a million transitions a second, sustained,
        // to have run ahead of the clock).
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        DeviceTracker {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            seq: AtomicU64::new(start.max(1)),
        }
    }
}

/// A resync: the markers and every online (node, user, ip), for the core's event ring.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub events: std::collections::VecDeque<DeviceEvent>,
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

    /// Opens one reference for (node, user, ip) if the device limit allows it: an address
    /// already online for the user here, or in the panel's lists of every node
    /// (`known_elsewhere`, asked only at the limit), is always let in; a new one only while
    /// the addresses online here and elsewhere are fewer than the limit (Xboard's rule).
    pub fn admit(
        &self,
        node: u16,
        user_id: u32,
        ip: IpAddr,
        device_limit: u32,
        alive_elsewhere: u32,
        known_elsewhere: &dyn Fn() -> bool,
    ) -> Admit {
        let ip = normalise_ip(ip);
        let mut shard = self.shard(node, user_id);
        let set = shard.entry((node, user_id)).or_default();
        if let Some((rc, _)) = set.get_mut(&ip) {
            *rc += 1;
            return Admit::Yes(None);
        }
        let local = u32::try_from(set.len()).unwrap_or(u32::MAX);
        if device_limit != 0 && local.saturating_add(alive_elsewhere) >= device_limit && !known_elsewhere() {
            if set.is_empty() {
                shard.remove(&(node, user_id));
            }
            return Admit::No;
        }
        let seq = self.next_seq();
        set.insert(ip, (1, seq));
        Admit::Yes(Some(DeviceEvent {
            kind: IpEventKind::Transition,
            online: true,
            node,
            user_id,
            ip,
            seq,
        }))
    }

    fn next_seq(&self) -> u64 {
        // Relaxed is enough: the shard lock held by the caller orders the transitions of one
        // IP, and each gets a distinct, larger number.
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Closes one reference; `Some(Offline)` on the 1→0 transition.
    pub fn release(&self, node: u16, user_id: u32, ip: IpAddr) -> Option<DeviceEvent> {
        let ip = normalise_ip(ip);
        let mut shard = self.shard(node, user_id);
        let set = shard.get_mut(&(node, user_id))?;
        let (rc, _) = set.get_mut(&ip)?;
        *rc = rc.saturating_sub(1);
        if *rc > 0 {
            return None;
        }
        set.remove(&ip);
        if set.is_empty() {
            shard.remove(&(node, user_id));
        }
        Some(DeviceEvent {
            kind: IpEventKind::Transition,
            online: false,
            node,
            user_id,
            ip,
            seq: self.next_seq(),
        })
    }

    /// Every online (node, user, ip) with the seq of its last transition, between a
    /// `ResyncBegin` and a `ResyncEnd` marker that carry the counter's value before the walk.
    /// Shards are locked one at a time, so transitions go on meanwhile: one that lands before
    /// its shard is walked is in the snapshot, one after it has a seq above the markers' and
    /// reaches the control plane as a live event. Either way the control plane ends up right:
    /// it takes the larger seq, and drops only what it holds from before the begin marker and
    /// the snapshot did not list.
    pub fn snapshot(&self) -> Snapshot {
        let begin = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut events = std::collections::VecDeque::new();
        events.push_back(DeviceEvent {
            kind: IpEventKind::ResyncBegin,
            online: false,
            node: 0,
            user_id: 0,
            ip: IpAddr::from([0, 0, 0, 0]),
            seq: begin,
        });
        for m in &self.shards {
            let shard = m.lock().unwrap_or_else(|p| p.into_inner());
            for (&(node, user_id), ips) in shard.iter() {
                for (&ip, &(_, seq)) in ips {
                    events.push_back(DeviceEvent {
                        kind: IpEventKind::Snapshot,
                        online: true,
                        node,
                        user_id,
                        ip,
                        seq,
                    });
                }
            }
        }
        events.push_back(DeviceEvent {
            kind: IpEventKind::ResyncEnd,
            online: false,
            node: 0,
            user_id: 0,
            ip: IpAddr::from([0, 0, 0, 0]),
            seq: begin,
        });
        Snapshot { events }
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

    /// Xboard's rule (spec §5): at the limit, an address the panel lists online for the user
    /// on any node is let in (one phone on two nodes); any other new address is not. The
    /// lists are only consulted at the limit.
    #[test]
    fn at_the_limit_an_address_known_elsewhere_is_let_in() {
        let t = DeviceTracker::default();
        let asked = std::cell::Cell::new(0);
        let known = || {
            asked.set(asked.get() + 1);
            true
        };
        // Limit 1, the user's phone online on another node (count 1): refused before, let in now.
        assert!(matches!(
            t.admit(1, 9, ip("198.51.100.7"), 1, 1, &known),
            Admit::Yes(Some(_))
        ));
        assert_eq!(asked.get(), 1);
        assert_eq!(t.admit(1, 9, ip("198.51.100.8"), 1, 1, &|| false), Admit::No);
        // Below the limit nothing is asked.
        assert!(matches!(
            t.admit(2, 9, ip("198.51.100.9"), 5, 0, &known),
            Admit::Yes(Some(_))
        ));
        assert_eq!(asked.get(), 1);
    }

    #[test]
    fn limit_counts_distinct_ips_plus_elsewhere() {
        let t = DeviceTracker::default();
        assert!(matches!(
            t.admit(1, 9, ip("127.0.0.2"), 2, 0, &|| false),
            Admit::Yes(Some(_))
        ));
        assert_eq!(t.admit(1, 9, ip("127.0.0.2"), 2, 0, &|| false), Admit::Yes(None));
        assert!(matches!(
            t.admit(1, 9, ip("127.0.0.3"), 2, 0, &|| false),
            Admit::Yes(Some(_))
        ));
        assert_eq!(t.admit(1, 9, ip("127.0.0.4"), 2, 0, &|| false), Admit::No);
        // already-online IP is always fine, even when over the limit now
        assert_eq!(t.admit(1, 9, ip("127.0.0.3"), 1, 5, &|| false), Admit::Yes(None));
        // other node is independent; alive elsewhere counts
        assert_eq!(t.admit(2, 9, ip("127.0.0.4"), 2, 2, &|| false), Admit::No);
        assert!(matches!(
            t.admit(2, 9, ip("127.0.0.4"), 2, 1, &|| false),
            Admit::Yes(Some(_))
        ));
        assert!(matches!(
            t.admit(1, 10, ip("127.0.0.4"), 0, 99, &|| false),
            Admit::Yes(Some(_))
        ));
    }

    #[test]
    fn refcounts_emit_online_and_offline_once() {
        let t = DeviceTracker::default();
        let mapped = ip("::ffff:127.0.0.5");
        let Admit::Yes(Some(ev)) = t.admit(3, 1, mapped, 0, 0, &|| false) else {
            panic!()
        };
        assert_eq!(
            ev,
            DeviceEvent {
                kind: IpEventKind::Transition,
                online: true,
                node: 3,
                user_id: 1,
                ip: ip("127.0.0.5"),
                seq: ev.seq,
            }
        );
        assert_eq!(t.admit(3, 1, ip("127.0.0.5"), 0, 0, &|| false), Admit::Yes(None));
        assert_eq!(t.release(3, 1, ip("127.0.0.5")), None);
        let off = t.release(3, 1, mapped).unwrap();
        assert!(!off.online);
        assert!(
            off.seq > ev.seq,
            "a later transition of the same IP has a larger seq"
        );
        assert_eq!(t.release(3, 1, mapped), None);
        assert_eq!(t.online_ips(3, 1), 0);
    }

    #[test]
    fn snapshot_lists_online_ips_between_markers_with_their_seq() {
        let t = DeviceTracker::default();
        let Admit::Yes(Some(a)) = t.admit(1, 7, ip("10.0.0.1"), 0, 0, &|| false) else {
            panic!()
        };
        let _ = t.admit(1, 7, ip("10.0.0.1"), 0, 0, &|| false);
        let _ = t.admit(2, 8, ip("10.0.0.2"), 0, 0, &|| false);
        let _ = t.release(2, 8, ip("10.0.0.2")); // offline again: not listed
        let snap: Vec<DeviceEvent> = t.snapshot().events.into_iter().collect();
        assert_eq!(snap.len(), 3);
        assert_eq!(snap[0].kind, IpEventKind::ResyncBegin);
        assert_eq!(snap[2].kind, IpEventKind::ResyncEnd);
        assert_eq!(snap[0].seq, snap[2].seq);
        assert!(snap[0].seq > a.seq);
        assert_eq!(
            snap[1],
            DeviceEvent {
                kind: IpEventKind::Snapshot,
                ..a
            }
        );
        // A transition after the snapshot numbers above its markers.
        let Admit::Yes(Some(b)) = t.admit(3, 9, ip("10.0.0.3"), 0, 0, &|| false) else {
            panic!()
        };
        assert!(b.seq > snap[0].seq);
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
                        if matches!(t.admit(0, 1, a, 10, 0, &|| false), Admit::Yes(_)) {
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
