//! Online IPs per node and user, from the data plane's event rings, for the panel's `alive`
//! report and for each user's `alive_elsewhere` (panel count minus what this node reported).
//!
//! Unlike the Go agent, an IP that stays connected stays reported (it is online, not only
//! "opened a flow this period"), and the `DeviceOnlineMinTraffic` filter applies to every user
//! (the Go agent let users with zero traffic through — spec §G quirk).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use v2sp_shared::panel::AliveBody;
use v2sp_shared::shm::IpEvent;

use super::journal::Deltas;

#[derive(Default)]
struct NodeOnline {
    /// uid → ip → open transitions (normally 0 or 1).
    current: HashMap<u32, HashMap<IpAddr, u32>>,
    /// IPs seen online at any time since the last report.
    seen: HashMap<u32, HashSet<IpAddr>>,
    /// IP count per user in the last alive report this node sent.
    last_reported: HashMap<u32, u32>,
}

#[derive(Default)]
pub struct Online {
    nodes: HashMap<u16, NodeOnline>,
}

fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Online {
    pub fn apply(&mut self, ev: &IpEvent) {
        let n = self.nodes.entry(ev.node).or_default();
        let ip = plain(ev.ip);
        if ev.online {
            *n.current.entry(ev.user_id).or_default().entry(ip).or_insert(0) += 1;
            n.seen.entry(ev.user_id).or_default().insert(ip);
        } else if let Some(ips) = n.current.get_mut(&ev.user_id) {
            if let Some(c) = ips.get_mut(&ip) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    ips.remove(&ip);
                }
            }
            if ips.is_empty() {
                n.current.remove(&ev.user_id);
            }
        }
    }

    /// Forget a node's state (its slot was reassigned or the data plane restarted).
    pub fn reset_node(&mut self, slot: u16) {
        self.nodes.remove(&slot);
    }

    /// The alive report for a node: IPs online now or during the period, for users whose
    /// traffic this period exceeds `min_bytes` (0 = no filter). Starts a new period.
    pub fn take_alive(&mut self, slot: u16, traffic: &Deltas, min_bytes: u64) -> AliveBody {
        let n = self.nodes.entry(slot).or_default();
        let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut users: HashSet<u32> = n.current.keys().copied().collect();
        users.extend(n.seen.keys().copied());
        for uid in users {
            if min_bytes > 0 {
                let t = traffic.get(&uid).map_or(0, |v| v[0].saturating_add(v[1]));
                if t < min_bytes {
                    continue;
                }
            }
            let mut ips: Vec<IpAddr> = n
                .current
                .get(&uid)
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default();
            for ip in n.seen.get(&uid).into_iter().flatten() {
                if !ips.contains(ip) {
                    ips.push(*ip);
                }
            }
            ips.sort();
            out.insert(uid, ips.iter().map(|i| i.to_string()).collect());
        }
        n.seen.clear();
        n.last_reported = out.iter().map(|(&u, v)| (u, v.len() as u32)).collect();
        out
    }

    /// Distinct IPs this node sees for a user right now.
    pub fn local_count(&self, slot: u16, uid: u32) -> u32 {
        self.nodes
            .get(&slot)
            .and_then(|n| n.current.get(&uid))
            .map_or(0, |m| m.len() as u32)
    }

    /// Panel-wide count minus this node's own last report (never negative).
    pub fn alive_elsewhere(&self, slot: u16, uid: u32, panel_count: u32) -> u32 {
        let mine = self
            .nodes
            .get(&slot)
            .and_then(|n| n.last_reported.get(&uid))
            .copied()
            .unwrap_or(0);
        panel_count.saturating_sub(mine)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(online: bool, uid: u32, ip: &str) -> IpEvent {
        IpEvent {
            online,
            node: 0,
            user_id: uid,
            ip: ip.parse().unwrap(),
            ts_s: 0,
            core: 0,
        }
    }

    #[test]
    fn long_lived_connection_stays_reported_and_mapped_v6_is_plain() {
        let mut o = Online::default();
        o.apply(&ev(true, 1, "::ffff:1.2.3.4"));
        let a = o.take_alive(0, &Deltas::new(), 0);
        assert_eq!(a[&1], vec!["1.2.3.4".to_string()]);
        let a = o.take_alive(0, &Deltas::new(), 0);
        assert_eq!(
            a[&1],
            vec!["1.2.3.4".to_string()],
            "still connected, still online"
        );
        o.apply(&ev(false, 1, "1.2.3.4"));
        assert!(o.take_alive(0, &Deltas::new(), 0).is_empty());
    }

    #[test]
    fn short_visit_is_reported_once_and_min_traffic_filters_everyone() {
        let mut o = Online::default();
        o.apply(&ev(true, 1, "1.1.1.1"));
        o.apply(&ev(false, 1, "1.1.1.1"));
        o.apply(&ev(true, 2, "2.2.2.2"));
        let t = Deltas::from([(1, [5000, 0])]);
        let a = o.take_alive(0, &t, 1000);
        assert_eq!(
            a.keys().copied().collect::<Vec<_>>(),
            vec![1],
            "user 2 had no traffic"
        );
        assert!(!o.take_alive(0, &t, 0).contains_key(&1));
        assert_eq!(o.alive_elsewhere(0, 2, 3), 2);
    }
}
