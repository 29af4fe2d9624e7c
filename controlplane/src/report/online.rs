//! Online IPs per node and user, from the data plane's event rings, for the panel's `alive`
//! report and for each user's `alive_elsewhere` (panel count minus what this node reported).
//!
//! Unlike the Go agent, an IP that stays connected stays reported (it is online, not only
//! "opened a flow this period"), and the `DeviceOnlineMinTraffic` filter applies to every user
//! (the Go agent let users with zero traffic through — spec §G quirk).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use v2sp_shared::panel::AliveBody;
use v2sp_shared::shm::{IpEvent, IpEventKind};

use super::journal::Deltas;

/// One node's online IPs as one data-plane process reported them.
#[derive(Default)]
struct NodeOnline {
    /// uid → ip → seq of the transition that put it online (0: from a data plane without
    /// sequence numbers).
    current: HashMap<u32, HashMap<IpAddr, u64>>,
    /// (uid, ip) → seq of the transition that took it offline, this report period and the
    /// one before: an online event of that IP read late (it came through another core's ring)
    /// must not bring it back.
    gone: HashMap<(u32, IpAddr), u64>,
    gone_before: HashMap<(u32, IpAddr), u64>,
}

impl NodeOnline {
    /// The seq of the newest transition known for (uid, ip).
    fn known(&self, uid: u32, ip: IpAddr) -> u64 {
        let on = self.current.get(&uid).and_then(|m| m.get(&ip)).copied();
        let off = [&self.gone, &self.gone_before]
            .iter()
            .filter_map(|g| g.get(&(uid, ip)).copied())
            .max();
        on.max(off).unwrap_or(0)
    }

    fn set(&mut self, uid: u32, ip: IpAddr, online: bool, seq: u64) {
        if online {
            self.current.entry(uid).or_default().insert(ip, seq);
            self.gone.remove(&(uid, ip));
            self.gone_before.remove(&(uid, ip));
        } else {
            if let Some(ips) = self.current.get_mut(&uid) {
                ips.remove(&ip);
                if ips.is_empty() {
                    self.current.remove(&uid);
                }
            }
            self.gone.insert((uid, ip), seq);
        }
    }
}

/// A resync in progress: its begin marker and the (node, uid, ip) its snapshot listed.
struct Resync {
    begin: u64,
    listed: HashSet<(u16, u32, IpAddr)>,
}

/// What one data-plane process reported. Each process numbers its transitions on its own
/// (its cores share one counter), so ordering, resyncs and the floor are per process: while a
/// replaced data plane drains after an upgrade, its IPs stay online next to its successor's.
#[derive(Default)]
struct Source {
    nodes: HashMap<u16, NodeOnline>,
    resync: Option<Resync>,
    /// Events numbered below this are older than a completed resync and say nothing new.
    floor: u64,
}

/// Per node, across processes: what the report period saw and what was reported.
#[derive(Default)]
struct NodeReport {
    /// IPs seen online at any time since the last report.
    seen: HashMap<u32, HashSet<IpAddr>>,
    /// IP count per user in the last alive report this node sent.
    last_reported: HashMap<u32, u32>,
}

#[derive(Default)]
pub struct Online {
    /// By data-plane process (its pid).
    sources: HashMap<u32, Source>,
    reports: HashMap<u16, NodeReport>,
}

fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Source {
    fn finish_resync(&mut self, r: &Resync) -> usize {
        let mut dropped = 0usize;
        for (&slot, n) in &mut self.nodes {
            let stale: Vec<(u32, IpAddr)> = n
                .current
                .iter()
                .flat_map(|(&uid, ips)| ips.iter().map(move |(&ip, &seq)| (uid, ip, seq)))
                .filter(|&(uid, ip, seq)| seq < r.begin && !r.listed.contains(&(slot, uid, ip)))
                .map(|(uid, ip, _)| (uid, ip))
                .collect();
            dropped += stale.len();
            for (uid, ip) in stale {
                n.set(uid, ip, false, r.begin);
            }
        }
        self.floor = self.floor.max(r.begin);
        dropped
    }
}

impl Online {
    /// Applies one event of data-plane process `source`'s stream. Events of one IP may arrive
    /// out of order (each core has its own ring); the one with the larger seq wins.
    pub fn apply(&mut self, source: u32, ev: &IpEvent) {
        let src = self.sources.entry(source).or_default();
        match ev.kind {
            IpEventKind::ResyncBegin => {
                src.resync = Some(Resync {
                    begin: ev.seq,
                    listed: HashSet::new(),
                });
            }
            IpEventKind::ResyncEnd => {
                if let Some(r) = src.resync.take_if(|r| r.begin == ev.seq) {
                    let dropped = src.finish_resync(&r);
                    tracing::info!(
                        source,
                        listed = r.listed.len(),
                        dropped,
                        "online IPs resynced with the data plane"
                    );
                }
            }
            IpEventKind::Snapshot | IpEventKind::Transition => {
                let ip = plain(ev.ip);
                if ev.kind == IpEventKind::Snapshot {
                    if let Some(r) = &mut src.resync {
                        r.listed.insert((ev.node, ev.user_id, ip));
                    }
                }
                // seq 0: a data plane without sequence numbers; its events are taken in the
                // order they are read, as before.
                if ev.seq != 0 && ev.seq < src.floor {
                    return;
                }
                let n = src.nodes.entry(ev.node).or_default();
                if ev.seq != 0 && ev.seq <= n.known(ev.user_id, ip) {
                    return;
                }
                n.set(ev.user_id, ip, ev.online, ev.seq);
                if ev.online {
                    let r = self.reports.entry(ev.node).or_default();
                    r.seen.entry(ev.user_id).or_default().insert(ip);
                }
            }
        }
    }

    /// The processes whose state is held.
    pub fn sources(&self) -> Vec<u32> {
        self.sources.keys().copied().collect()
    }

    /// Data-plane process `source` is gone: every IP it had online is offline (its
    /// connections went with it), and late events of it are not applied (the caller drops
    /// events of processes that are not alive).
    pub fn source_gone(&mut self, source: u32) {
        self.sources.remove(&source);
    }

    /// Forget a node's state (its slot was reassigned).
    pub fn reset_node(&mut self, slot: u16) {
        for s in self.sources.values_mut() {
            s.nodes.remove(&slot);
        }
        self.reports.remove(&slot);
    }

    /// A user's IPs online on a node now, over the processes `filter` accepts.
    fn current(&self, slot: u16, uid: u32, filter: impl Fn(u32) -> bool) -> HashSet<IpAddr> {
        self.sources
            .iter()
            .filter(|(&p, _)| filter(p))
            .filter_map(|(_, s)| s.nodes.get(&slot)?.current.get(&uid))
            .flat_map(|m| m.keys().copied())
            .collect()
    }

    /// Users with IPs online on a node now.
    fn users_online(&self, slot: u16) -> HashSet<u32> {
        self.sources
            .values()
            .filter_map(|s| s.nodes.get(&slot))
            .flat_map(|n| n.current.iter().filter(|(_, m)| !m.is_empty()).map(|(&u, _)| u))
            .collect()
    }

    /// The alive report for a node: IPs online now or during the period, for users whose
    /// traffic this period exceeds `min_bytes` (0 = no filter). Starts a new period.
    pub fn take_alive(&mut self, slot: u16, traffic: &Deltas, min_bytes: u64) -> AliveBody {
        let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut users = self.users_online(slot);
        let report = self.reports.entry(slot).or_default();
        users.extend(report.seen.keys().copied());
        let seen = std::mem::take(&mut report.seen);
        for uid in users {
            if min_bytes > 0 {
                let t = traffic.get(&uid).map_or(0, |v| v[0].saturating_add(v[1]));
                if t < min_bytes {
                    continue;
                }
            }
            let mut ips: Vec<IpAddr> = self.current(slot, uid, |_| true).into_iter().collect();
            for ip in seen.get(&uid).into_iter().flatten() {
                if !ips.contains(ip) {
                    ips.push(*ip);
                }
            }
            ips.sort();
            out.insert(uid, ips.iter().map(|i| i.to_string()).collect());
        }
        for s in self.sources.values_mut() {
            if let Some(n) = s.nodes.get_mut(&slot) {
                n.gone_before = std::mem::take(&mut n.gone);
            }
        }
        let report = self.reports.entry(slot).or_default();
        report.last_reported = out.iter().map(|(&u, v)| (u, v.len() as u32)).collect();
        out
    }

    /// Every user's IPs on this node right now (the WebSocket `report.devices` snapshot).
    pub fn current_ips(&self, slot: u16) -> AliveBody {
        self.users_online(slot)
            .into_iter()
            .map(|uid| {
                let mut ips: Vec<IpAddr> = self.current(slot, uid, |_| true).into_iter().collect();
                ips.sort();
                (uid, ips.iter().map(|i| i.to_string()).collect())
            })
            .collect()
    }

    /// Distinct IPs this node sees for a user right now.
    pub fn local_count(&self, slot: u16, uid: u32) -> u32 {
        self.current(slot, uid, |_| true).len() as u32
    }

    /// What a data plane's admission adds to its own count of a user's IPs: the panel-wide
    /// count minus this node's own last report (never negative), plus the IPs only replaced
    /// data planes still hold on this node (they drain after an upgrade; the serving
    /// process `serving` does not see them, and they are in this node's report).
    pub fn alive_elsewhere(&self, slot: u16, uid: u32, panel_count: u32, serving: u32) -> u32 {
        let mine = self
            .reports
            .get(&slot)
            .and_then(|r| r.last_reported.get(&uid))
            .copied()
            .unwrap_or(0);
        let own = self.current(slot, uid, |p| p == serving);
        let draining = self.current(slot, uid, |p| p != serving).difference(&own).count() as u32;
        panel_count.saturating_sub(mine).saturating_add(draining)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An old-style event (no seq): applied in reading order.
    fn ev(online: bool, uid: u32, ip: &str) -> IpEvent {
        sev(online, uid, ip, 0)
    }

    fn sev(online: bool, uid: u32, ip: &str, seq: u64) -> IpEvent {
        IpEvent {
            kind: IpEventKind::Transition,
            online,
            node: 0,
            user_id: uid,
            ip: ip.parse().unwrap(),
            seq,
        }
    }

    fn snap(uid: u32, ip: &str, seq: u64) -> IpEvent {
        IpEvent {
            kind: IpEventKind::Snapshot,
            ..sev(true, uid, ip, seq)
        }
    }

    fn ips(o: &mut Online) -> BTreeMap<u32, Vec<String>> {
        o.take_alive(0, &Deltas::new(), 0);
        o.take_alive(0, &Deltas::new(), 0)
    }

    #[test]
    fn long_lived_connection_stays_reported_and_mapped_v6_is_plain() {
        let mut o = Online::default();
        o.apply(1, &ev(true, 1, "::ffff:1.2.3.4"));
        let a = o.take_alive(0, &Deltas::new(), 0);
        assert_eq!(a[&1], vec!["1.2.3.4".to_string()]);
        let a = o.take_alive(0, &Deltas::new(), 0);
        assert_eq!(
            a[&1],
            vec!["1.2.3.4".to_string()],
            "still connected, still online"
        );
        o.apply(1, &ev(false, 1, "1.2.3.4"));
        assert!(o.take_alive(0, &Deltas::new(), 0).is_empty());
    }

    #[test]
    fn short_visit_is_reported_once_and_min_traffic_filters_everyone() {
        let mut o = Online::default();
        o.apply(1, &ev(true, 1, "1.1.1.1"));
        o.apply(1, &ev(false, 1, "1.1.1.1"));
        o.apply(1, &ev(true, 2, "2.2.2.2"));
        let t = Deltas::from([(1, [5000, 0])]);
        let a = o.take_alive(0, &t, 1000);
        assert_eq!(
            a.keys().copied().collect::<Vec<_>>(),
            vec![1],
            "user 2 had no traffic"
        );
        assert!(!o.take_alive(0, &t, 0).contains_key(&1));
        assert_eq!(o.alive_elsewhere(0, 2, 3, 1), 2);
    }

    /// Online on core 0, offline on core 1, online on core 0 again: read core 1's ring first
    /// and a counting scheme ends at "online twice", then never offline (the IP stayed in the
    /// alive report forever and ate the user's device limit on every other node).
    #[test]
    fn transitions_read_out_of_order_end_in_the_newest_state() {
        let mut o = Online::default();
        o.apply(1, &sev(false, 1, "1.1.1.1", 11)); // core 1's ring first
        o.apply(1, &sev(true, 1, "1.1.1.1", 10));
        o.apply(1, &sev(true, 1, "1.1.1.1", 12));
        assert_eq!(o.local_count(0, 1), 1);
        o.apply(1, &sev(false, 1, "1.1.1.1", 13));
        assert_eq!(o.local_count(0, 1), 0, "offline after the newest transition");
        assert!(ips(&mut o).is_empty());
        // An online event read after a newer offline one does not bring the IP back.
        o.apply(1, &sev(false, 2, "2.2.2.2", 21));
        o.apply(1, &sev(true, 2, "2.2.2.2", 20));
        assert_eq!(o.local_count(0, 2), 0);
    }

    #[test]
    fn resync_restores_lost_onlines_and_drops_lost_offlines() {
        let mut o = Online::default();
        o.apply(1, &sev(true, 1, "1.1.1.1", 10)); // its offline (seq 15) was dropped
        o.apply(1, &sev(true, 1, "3.3.3.3", 12)); // still online
                                                  // 2.2.2.2 went online at seq 14 but the event was dropped.
        o.apply(1, &IpEvent::marker(IpEventKind::ResyncBegin, 20));
        o.apply(1, &sev(true, 4, "4.4.4.4", 21)); // a live event in the middle of the resync
        o.apply(1, &snap(1, "3.3.3.3", 12));
        o.apply(1, &snap(1, "2.2.2.2", 14));
        o.apply(1, &IpEvent::marker(IpEventKind::ResyncEnd, 20));
        let a = ips(&mut o);
        assert_eq!(a[&1], vec!["2.2.2.2".to_string(), "3.3.3.3".to_string()]);
        assert_eq!(a[&4], vec!["4.4.4.4".to_string()]);
        // A late event from before the resync changes nothing.
        o.apply(1, &sev(true, 1, "1.1.1.1", 11));
        assert_eq!(o.local_count(0, 1), 2);
    }

    #[test]
    fn a_resync_without_its_end_changes_nothing() {
        let mut o = Online::default();
        o.apply(1, &sev(true, 1, "1.1.1.1", 10));
        o.apply(1, &IpEvent::marker(IpEventKind::ResyncBegin, 20));
        o.apply(1, &IpEvent::marker(IpEventKind::ResyncBegin, 30)); // a newer request restarted it
        o.apply(1, &IpEvent::marker(IpEventKind::ResyncEnd, 20));
        assert_eq!(o.local_count(0, 1), 1);
        o.apply(1, &snap(1, "1.1.1.1", 10));
        o.apply(1, &IpEvent::marker(IpEventKind::ResyncEnd, 30));
        assert_eq!(o.local_count(0, 1), 1);
    }

    #[test]
    fn a_gone_data_plane_takes_its_ips_offline_and_a_new_one_counts() {
        let mut o = Online::default();
        o.apply(1, &sev(true, 1, "1.1.1.1", 1_000));
        o.source_gone(1);
        assert_eq!(o.local_count(0, 1), 0);
        o.apply(2, &sev(true, 1, "1.1.1.1", 2_500)); // the new data plane
        assert_eq!(o.local_count(0, 1), 1);
    }

    /// Issue 15: after an upgrade the replaced process (1) drains a connection from 1.1.1.1
    /// while its successor (2) serves 2.2.2.2 and also 1.1.1.1. The successor numbers its
    /// transitions far above the predecessor: its offline for 1.1.1.1 must not take the IP
    /// offline while the predecessor still holds it, the predecessor's events keep counting,
    /// and the successor's admission sees the IP only the predecessor holds.
    #[test]
    fn a_draining_predecessor_keeps_its_ips_next_to_its_successor() {
        let mut o = Online::default();
        o.apply(1, &sev(true, 1, "1.1.1.1", 1_000));
        o.apply(2, &IpEvent::marker(IpEventKind::ResyncBegin, 9_000_000));
        o.apply(2, &IpEvent::marker(IpEventKind::ResyncEnd, 9_000_000));
        o.apply(2, &sev(true, 1, "2.2.2.2", 9_000_001));
        o.apply(2, &sev(true, 1, "1.1.1.1", 9_000_002));
        o.apply(2, &sev(false, 1, "1.1.1.1", 9_000_003));
        assert_eq!(
            o.local_count(0, 1),
            2,
            "1.1.1.1 is still online in the predecessor"
        );
        let a = o.take_alive(0, &Deltas::new(), 0);
        assert_eq!(a[&1], vec!["1.1.1.1".to_string(), "2.2.2.2".to_string()]);
        // Panel count 2 (this node's two IPs): the successor holds 2.2.2.2 and must count
        // 1.1.1.1, which only the predecessor holds.
        assert_eq!(o.alive_elsewhere(0, 1, 2, 2), 1);
        assert_eq!(
            o.alive_elsewhere(0, 1, 2, 1),
            1,
            "the predecessor admits no new IP anyway"
        );
        o.apply(1, &sev(false, 1, "1.1.1.1", 1_001));
        assert_eq!(o.local_count(0, 1), 1);
        assert_eq!(o.alive_elsewhere(0, 1, 2, 2), 0);
        o.source_gone(1);
        assert_eq!(o.local_count(0, 1), 1);
    }
}
