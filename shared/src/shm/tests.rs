#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use super::*;
use crate::cred::{lookup_key, secret_for, CredKind, Secret};
use crate::dpconfig::DataplaneConfig;

fn users(kind: CredKind, n: u32) -> Vec<UserEntry> {
    (1..=n)
        .map(|i| UserEntry {
            user_id: i,
            secret: secret_for(
                kind,
                &format!("{:08x}-0000-4000-8000-{:012x}", i, i as u64 * 7919),
            )
            .unwrap(),
            speed_limit_mbps: i % 3,
            device_limit: i % 5,
            alive_elsewhere: 0,
        })
        .collect()
}

/// Harvest from another thread (as the control plane does) while this thread plays the core
/// and ticks until it has flipped.
fn harvest_ticking(c: &ControlShm, core: &mut CoreShm) -> Vec<HarvestedBank> {
    std::thread::scope(|s| {
        let j = s.spawn(|| c.harvest(Duration::from_secs(2)).unwrap());
        for _ in 0..500 {
            if core.tick().flipped {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        j.join().unwrap()
    })
}

fn setup() -> (tempfile::TempDir, ControlShm, DataplaneShm) {
    let dir = tempfile::tempdir().unwrap();
    let c = ControlShm::create_or_attach(dir.path()).unwrap();
    let d = DataplaneShm::attach(dir.path()).unwrap();
    d.register(1, 2).unwrap();
    (dir, c, d)
}

#[test]
fn publish_then_lookup_every_user() {
    let (_d, c, d) = setup();
    let us = users(CredKind::VlessUuid, 500);
    c.publish_users(3, CredKind::VlessUuid, &us, Duration::from_secs(1))
        .unwrap();
    let mut core = d.core(0).unwrap();
    assert!(!core.tick().tables_changed, "core() adopts the tables it finds");
    let view = core.users(3).unwrap();
    assert_eq!(view.len(), 500);
    for u in &us {
        let r = view.lookup(u.secret.as_slice()).unwrap();
        assert_eq!(r.user_id, u.user_id);
        assert_eq!(r.speed_limit_mbps, u.speed_limit_mbps);
        assert_eq!(r.node, 3);
    }
    assert!(view.lookup(&[0u8; 16]).is_none());
    assert!(core.users(4).is_none());
    c.publish_users(3, CredKind::VlessUuid, &us[..10], Duration::from_secs(1))
        .unwrap();
    assert!(core.tick().tables_changed);
    assert_eq!(core.users(3).unwrap().len(), 10);
}

#[test]
fn ss2022_lookup_by_identity_hash_and_trial_iteration() {
    let (_d, c, d) = setup();
    let us = users(CredKind::Ss2022Psk16, 50);
    c.publish_users(0, CredKind::Ss2022Psk16, &us, Duration::from_secs(1))
        .unwrap();
    let legacy = users(CredKind::SsLegacy16, 20);
    c.publish_users(1, CredKind::SsLegacy16, &legacy, Duration::from_secs(1))
        .unwrap();
    let mut core = d.core(0).unwrap();
    core.tick();
    let v = core.users(0).unwrap();
    for u in &us {
        let key = lookup_key(CredKind::Ss2022Psk16, u.secret.as_slice()).unwrap();
        assert_eq!(v.lookup(key.as_slice()).unwrap().user_id, u.user_id);
    }
    let v1 = core.users(1).unwrap();
    assert!(
        v1.lookup(legacy[0].secret.as_slice()).is_none(),
        "legacy SS has no index"
    );
    assert_eq!(v1.iter().count(), 20);
}

#[test]
fn republish_switches_sides_and_waits_for_acks() {
    let (_d, c, d) = setup();
    let kind = CredKind::VlessUuid;
    let a = c
        .publish_users(0, kind, &users(kind, 10), Duration::from_secs(1))
        .unwrap();
    let mut core = d.core(0).unwrap();
    core.tick();
    let b = c
        .publish_users(0, kind, &users(kind, 20), Duration::from_secs(1))
        .unwrap();
    assert_ne!(a.side, b.side);
    // The core has not ticked since: side a is still in use, so a third publish must wait.
    let err = c
        .publish_users(0, kind, &users(kind, 30), Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, ShmError::Busy { .. }), "{err}");
    assert_eq!(
        core.users(0).unwrap().len(),
        10,
        "core keeps reading its side until it ticks"
    );
    core.tick();
    assert_eq!(core.users(0).unwrap().len(), 20);
    c.publish_users(0, kind, &users(kind, 30), Duration::from_millis(50))
        .unwrap();
    core.tick();
    assert_eq!(core.users(0).unwrap().len(), 30);
}

#[test]
fn growing_past_capacity_recreates_the_file_and_cores_remap() {
    let (_d, c, d) = setup();
    let kind = CredKind::TrojanSha224;
    c.publish_users(0, kind, &users(kind, 10), Duration::from_secs(1))
        .unwrap();
    let mut core = d.core(0).unwrap();
    core.tick();
    c.publish_users(0, kind, &users(kind, 20), Duration::from_secs(1))
        .unwrap();
    core.tick();
    let st = c
        .publish_users(0, kind, &users(kind, 5000), Duration::from_secs(1))
        .unwrap();
    assert!(st.recreated_file);
    core.tick();
    let us = users(kind, 5000);
    let v = core.users(0).unwrap();
    assert_eq!(v.len(), 5000);
    assert_eq!(v.lookup(us[4321].secret.as_slice()).unwrap().user_id, 4322);
}

#[test]
fn harvest_loses_and_doubles_nothing() {
    let (_d, c, d) = setup();
    let mut core = d.core(0).unwrap();
    let mut expect = std::collections::BTreeMap::new();
    let mut got = std::collections::BTreeMap::new();
    for round in 0..5u64 {
        for u in 0..100u32 {
            core.add_traffic(1, u, round + 1, 2 * (round + 1));
            *expect.entry(u).or_insert(0u64) += 3 * (round + 1);
        }
        // The harvest needs a tick from the core: run it on another thread like the real
        // control plane does.
        let h = harvest_ticking(&c, &mut core);
        for bank in h {
            for e in &bank.entries {
                *got.entry(e.user_id).or_insert(0u64) += e.up + e.down;
            }
            c.clear_bank(bank.instance_id, bank.core, bank.epoch).unwrap();
        }
    }
    assert_eq!(expect, got);
    assert!(c.pending_banks().unwrap().is_empty());
}

#[test]
fn uncleared_bank_reappears_with_the_same_epoch() {
    // Control plane crashed after journalling, before clearing: the bank comes back with the
    // same (instance, core, epoch) key, which the journal recognises.
    let (dir, c, d) = setup();
    let mut core = d.core(0).unwrap();
    core.add_traffic(0, 7, 100, 200);
    let h = harvest_ticking(&c, &mut core);
    assert_eq!(h.len(), 1);
    drop(c);
    let c2 = ControlShm::create_or_attach(dir.path()).unwrap();
    let again = c2.pending_banks().unwrap();
    assert_eq!(again, h);
}

#[test]
fn dead_dataplane_bank_is_harvested_by_control() {
    let (_d, c, d) = setup();
    {
        let mut core = d.core(0).unwrap();
        core.add_traffic(0, 9, 5, 6);
        // CoreShm dropped without a harvest: bytes stay in the active bank.
    }
    d.unregister();
    let h = c.harvest(Duration::from_millis(100)).unwrap();
    let total: u64 = h.iter().flat_map(|b| &b.entries).map(|e| e.up + e.down).sum();
    assert_eq!(total, 11);
    // A restarted core continues in a fresh bank and does not re-count those bytes.
    for b in &h {
        c.clear_bank(b.instance_id, b.core, b.epoch).unwrap();
    }
    let mut core = d.core(0).unwrap();
    core.add_traffic(0, 9, 1, 0);
    let pending = c.pending_banks().unwrap();
    assert!(pending.is_empty(), "{pending:?}");
}

#[test]
fn restarted_core_continues_its_active_bank() {
    let (_d, c, d) = setup();
    {
        let mut core = d.core(0).unwrap();
        core.add_traffic(2, 1, 10, 0);
    }
    let mut core = d.core(0).unwrap();
    core.add_traffic(2, 1, 5, 0);
    let h = harvest_ticking(&c, &mut core);
    let e: Vec<_> = h.iter().flat_map(|b| b.entries.clone()).collect();
    assert_eq!(
        e,
        vec![TrafficDelta {
            node: 2,
            user_id: 1,
            up: 15,
            down: 0
        }]
    );
}

#[test]
fn full_bank_spills_into_the_next_one() {
    let (_d, c, d) = setup();
    let mut core = d.core(0).unwrap();
    let n = DEFAULT_BANK_CAPACITY as u32 + 10;
    for u in 0..n {
        core.add_traffic(0, u, 1, 0);
    }
    let mut total = 0;
    for _ in 0..2 {
        let h = harvest_ticking(&c, &mut core);
        for b in h {
            total += b.entries.iter().map(|e| e.up).sum::<u64>();
            c.clear_bank(b.instance_id, b.core, b.epoch).unwrap();
        }
    }
    assert_eq!(total, u64::from(n));
}

#[test]
fn events_and_commands_round_trip() {
    let (_d, c, d) = setup();
    let mut core = d.core(0).unwrap();
    let ev = IpEvent {
        kind: IpEventKind::Transition,
        online: true,
        node: 4,
        user_id: 77,
        ip: "2001:db8::1".parse::<IpAddr>().unwrap(),
        seq: 1_790_000_000_000_001,
    };
    let ev4 = IpEvent {
        online: false,
        ip: "10.1.2.3".parse().unwrap(),
        seq: u64::MAX,
        ..ev
    };
    let snap = IpEvent {
        kind: IpEventKind::Snapshot,
        ..ev
    };
    let begin = IpEvent::marker(IpEventKind::ResyncBegin, 7);
    let end = IpEvent::marker(IpEventKind::ResyncEnd, 7);
    assert_eq!(core.event_space(), control::EVENT_RING_CAP);
    for e in [ev, ev4, begin, snap, end] {
        assert!(core.push_event(e));
    }
    assert_eq!(core.event_space(), control::EVENT_RING_CAP - 5);
    let (got, dropped) = c.drain_events(10);
    let me = std::process::id();
    assert_eq!(
        got,
        [ev, ev4, begin, snap, end].map(|e| (me, e)),
        "each with its writer's pid"
    );
    assert_eq!(c.live_dataplanes(), vec![me]);
    assert_eq!(dropped, 0);
    assert_eq!(c.broadcast(Command::Kick { node: 4, user_id: 77 }), 1);
    assert_eq!(core.pop_command(), Some(Command::Kick { node: 4, user_id: 77 }));
    assert_eq!(core.pop_command(), None);
}

#[test]
fn full_event_ring_drops_and_counts() {
    let (_d, c, d) = setup();
    let mut core = d.core(0).unwrap();
    let ev = IpEvent {
        kind: IpEventKind::Transition,
        online: true,
        node: 0,
        user_id: 1,
        ip: "1.1.1.1".parse().unwrap(),
        seq: 1,
    };
    let mut accepted = 0;
    for _ in 0..(control::EVENT_RING_CAP + 5) {
        accepted += usize::from(core.push_event(ev));
    }
    assert_eq!(accepted, control::EVENT_RING_CAP);
    let (got, dropped) = c.drain_events(usize::MAX);
    assert_eq!(got.len(), accepted);
    assert_eq!(dropped, 5);
}

#[test]
fn config_round_trip() {
    let (_d, c, d) = setup();
    assert!(d.read_config().unwrap().is_none());
    let mut cfg = DataplaneConfig {
        workers: 3,
        io: "epoll".into(),
        ..Default::default()
    };
    let g1 = c.publish_config(&cfg).unwrap();
    cfg.workers = 4;
    let g2 = c.publish_config(&cfg).unwrap();
    assert!(g2 > g1);
    let (g, got) = d.read_config().unwrap().unwrap();
    assert_eq!(g, g2);
    assert_eq!(got, cfg);
}

#[test]
fn refuses_other_layout_version() {
    let dir = tempfile::tempdir().unwrap();
    drop(ControlShm::create_or_attach(dir.path()).unwrap());
    let path = dir.path().join("ctl");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = bytes[8].wrapping_add(1); // layout_version
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        DataplaneShm::attach(dir.path()),
        Err(ShmError::Version { .. })
    ));
    assert!(matches!(
        ControlShm::create_or_attach(dir.path()),
        Err(ShmError::Version { .. })
    ));
}

#[test]
fn control_restart_reattaches_and_keeps_tables() {
    let dir = tempfile::tempdir().unwrap();
    let kind = CredKind::VlessUuid;
    let c = ControlShm::create_or_attach(dir.path()).unwrap();
    c.publish_users(0, kind, &users(kind, 3), Duration::from_secs(1))
        .unwrap();
    let inst = c.instance_id();
    drop(c);
    let c = ControlShm::create_or_attach(dir.path()).unwrap();
    assert_eq!(c.instance_id(), inst);
    let d = DataplaneShm::attach(dir.path()).unwrap();
    let mut core = d.core(0).unwrap();
    core.tick();
    assert_eq!(core.users(0).unwrap().len(), 3);
    // The restarted control plane publishes to the other side.
    c.publish_users(0, kind, &users(kind, 4), Duration::from_secs(1))
        .unwrap();
    core.tick();
    assert_eq!(core.users(0).unwrap().len(), 4);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn index_finds_exactly_the_published_keys(keys in proptest::collection::hash_set(proptest::collection::vec(proptest::prelude::any::<u8>(), 16), 0..300),
                                              probes in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 16), 0..50)) {
        let dir = tempfile::tempdir().unwrap();
        let c = ControlShm::create_or_attach(dir.path()).unwrap();
        let us: Vec<UserEntry> = keys.iter().enumerate().map(|(i, k)| UserEntry {
            user_id: i as u32 + 1, secret: Secret::from_slice(k), speed_limit_mbps: 0, device_limit: 0, alive_elsewhere: 0,
        }).collect();
        c.publish_users(0, CredKind::VlessUuid, &us, Duration::from_secs(1)).unwrap();
        let d = DataplaneShm::attach(dir.path()).unwrap();
        let mut core = d.core(0).unwrap();
        core.tick();
        let v = core.users(0).unwrap();
        for u in &us {
            proptest::prop_assert_eq!(v.lookup(u.secret.as_slice()).map(|r| r.user_id), Some(u.user_id));
        }
        let set: HashSet<&Vec<u8>> = keys.iter().collect();
        for p in &probes {
            if !set.contains(p) {
                proptest::prop_assert!(v.lookup(p).is_none());
            }
        }
    }
}

/// Issue 11: the shm directory is created 0700, and one that others may write into is refused
/// by both sides (whoever can swap a segment there controls both processes).
#[test]
fn shm_dir_is_private_and_a_shared_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("shm");
    let c = ControlShm::create_or_attach(&dir).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    drop(c);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(
        ControlShm::create_or_attach(&dir),
        Err(ShmError::Invalid(_))
    ));
    assert!(matches!(DataplaneShm::attach(&dir), Err(ShmError::Invalid(_))));
    assert!(matches!(
        ControlShm::open_existing(&dir),
        Err(ShmError::Invalid(_))
    ));
    // A symlink to a private directory is not taken either.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = base.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    assert!(matches!(DataplaneShm::attach(&link), Err(ShmError::Invalid(_))));
}

/// Issue 11: a segment's temporary name holding a symlink (planted to make the creator write
/// through it) is replaced, never followed.
#[test]
fn segment_temporary_is_never_opened_through_a_symlink() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("shm");
    std::fs::create_dir(&dir).unwrap();
    let victim = base.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let tmp = dir
        .join(names::CONFIG)
        .with_extension(format!("tmp{}", std::process::id()));
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    let _c = ControlShm::create_or_attach(&dir).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

/// Each core writes its open connections per node; the control plane sums the running cores
/// (a core that stopped is left out).
#[test]
fn node_connection_gauges_sum_over_running_cores() {
    let (_d, c, dp) = setup();
    let a = dp.core(0).unwrap();
    let b = dp.core(1).unwrap();
    let mut counts = vec![0u64; layout::MAX_NODES];
    counts[3] = 5;
    a.set_node_conns(&counts);
    counts[3] = 2;
    counts[4] = 9;
    b.set_node_conns(&counts);
    assert_eq!(c.node_open_conns(3), 7);
    assert_eq!(c.node_open_conns(4), 9);
    assert_eq!(c.node_open_conns(5), 0);
    assert_eq!(c.node_open_conns(u16::MAX), 0);
    drop(b);
    assert_eq!(c.node_open_conns(3), 5, "a stopped core's count is left out");
}
