//! loom models of the three concurrent shm protocols, run with
//!     RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!         cargo test -p v2sp-shared --release --lib loom
//!
//! The models call the real protocol steps (`ring::push/pop`, `traffic::BankWriter`,
//! `traffic::idle_banks/clear_epoch`, `rcu::*`) over the real layout structs, which under
//! `cfg(loom)` hold loom atomics (`shm::sync`) and live on the heap instead of in a file.
//! Only the glue around the steps is restated here, with the same orderings as the callers:
//! the core's harvest acknowledgement (`CoreShm::tick`) and the harvester's wait
//! (`ControlShm::harvest`/`wait_cores`), bounded so that a timed-out wait is explored too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};

use loom::sync::Arc;
use loom::thread;

use super::layout::{BankHeader, NodeSlot, RingMeta, TrafficEntry, TrafficMeta};
use super::rcu;
use super::ring;
use super::segment::loom_cell::{self, UnsafeCell};
use super::sync::{AtomicU32, AtomicU64};
use super::traffic::{clear_epoch, idle_banks, read_bank, BankWriter, Banks};

fn check(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    // LOOM_MAX_PREEMPTIONS overrides. 3 is the smallest bound that finds the partial-bank
    // harvest race (`idle_banks`); the models stay small enough to finish in seconds.
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

fn a64(v: u64) -> AtomicU64 {
    AtomicU64::new(v)
}

// ---------------------------------------------------------------------------------------
// (a) SPSC ring

struct RingFix {
    meta: RingMeta,
    slots: Vec<[AtomicU64; 4]>,
}

fn ring_fix(cap: usize) -> RingFix {
    RingFix {
        meta: RingMeta {
            head: a64(0),
            _pad0: [0; 7],
            tail: a64(0),
            _pad1: [0; 7],
            dropped: a64(0),
            _pad2: [0; 7],
        },
        slots: (0..cap).map(|_| [a64(0), a64(0), a64(0), a64(0)]).collect(),
    }
}

/// Item `i`: every word derived from `i`, so a torn read (words of two items) is visible.
fn item(i: u64) -> [u64; 4] {
    [i, i << 8, i << 16, !i]
}

fn run_ring(cap: usize, n: u64, pops: usize) {
    let r = Arc::new(ring_fix(cap));
    let p = r.clone();
    let producer = thread::spawn(move || {
        (1..=n)
            .filter(|&i| ring::push(&p.meta, &p.slots, item(i)))
            .collect::<Vec<u64>>()
    });
    let mut got = Vec::new();
    for _ in 0..pops {
        match ring::pop(&r.meta, &r.slots) {
            Some(it) => got.push(it),
            None => thread::yield_now(),
        }
    }
    let accepted = producer.join().unwrap();
    while let Some(it) = ring::pop(&r.meta, &r.slots) {
        got.push(it);
    }
    let want: Vec<[u64; 4]> = accepted.iter().map(|&i| item(i)).collect();
    assert_eq!(got, want, "lost, duplicated, reordered or torn item");
    assert_eq!(
        r.meta.dropped.load(Acquire),
        n - accepted.len() as u64,
        "every rejected push is counted"
    );
    assert!(accepted.len() >= cap.min(n as usize), "a ring with room accepts");
}

#[test]
fn loom_ring_spsc_no_loss_no_dup_no_tear() {
    check(|| run_ring(2, 2, 2));
}

#[test]
fn loom_ring_full_drops_and_counts() {
    // 3 pushes into 2 slots while the consumer pops twice: 0 or 1 drop depending on timing.
    check(|| run_ring(2, 3, 2));
}

// ---------------------------------------------------------------------------------------
// (b) traffic banks: core add + flip on a harvest epoch vs the harvester's read + clear

struct TrafficFix {
    meta: TrafficMeta,
    headers: [BankHeader; 2],
    entries: [Vec<TrafficEntry>; 2],
    harvest_epoch: AtomicU64,
    acked_harvest_epoch: AtomicU64,
}

fn bank_header() -> BankHeader {
    BankHeader {
        epoch: a64(0),
        len: AtomicU32::new(0),
        overflow: AtomicU32::new(0),
        _pad: [0; 6],
    }
}

fn traffic_fix(cap: usize) -> TrafficFix {
    let ents = || {
        (0..cap)
            .map(|_| TrafficEntry {
                key: a64(0),
                up: a64(0),
                down: a64(0),
                _pad: a64(0),
            })
            .collect()
    };
    TrafficFix {
        meta: TrafficMeta {
            owner_pid: AtomicU32::new(0),
            active_bank: AtomicU32::new(0),
            _pad: [0; 7],
        },
        headers: [bank_header(), bank_header()],
        entries: [ents(), ents()],
        harvest_epoch: a64(0),
        acked_harvest_epoch: a64(0),
    }
}

impl TrafficFix {
    fn banks(&self) -> Banks<'_> {
        Banks {
            meta: &self.meta,
            headers: [&self.headers[0], &self.headers[1]],
            entries: [&self.entries[0], &self.entries[1]],
        }
    }
}

/// `CoreShm::tick`'s harvest part, same orderings.
fn core_tick(f: &TrafficFix, w: &mut BankWriter, acked: &mut u64) {
    let epoch = f.harvest_epoch.load(Acquire);
    if epoch != *acked && w.flip(&f.banks(), epoch) {
        *acked = epoch;
        f.acked_harvest_epoch.store(epoch, Release);
    }
}

/// `ControlShm::harvest` with a wait of `wait` polls, then journal-and-clear of each idle
/// bank. Returns the journal: epoch → bytes.
fn harvest(f: &TrafficFix, wait: usize, journal: &mut BTreeMap<u64, u64>) {
    let epoch = f.harvest_epoch.fetch_add(1, AcqRel) + 1;
    for _ in 0..wait {
        if f.acked_harvest_epoch.load(Acquire) >= epoch {
            break;
        }
        thread::yield_now();
    }
    for (_, e, entries) in idle_banks(&f.banks(), false) {
        let bytes: u64 = entries.iter().map(|d| d.up + d.down).sum();
        // Journal dedup by epoch (one instance, one core): a bank seen again is only cleared.
        let prev = journal.insert(e, bytes);
        assert!(
            prev.is_none() || prev == Some(bytes),
            "epoch {e} journalled twice with different bytes"
        );
        clear_epoch(&f.banks(), e, false);
    }
}

/// Conservation: journalled + still in a bank (not yet journalled) + spilled == added, and a
/// bank still holding a journalled epoch holds exactly the journalled bytes.
fn settle(f: &TrafficFix, journal: &BTreeMap<u64, u64>, spilled: u64, added: u64) {
    let b = f.banks();
    let mut pending = 0;
    for bank in 0..2 {
        if b.headers[bank].len.load(Acquire) == 0 {
            continue;
        }
        let e = b.headers[bank].epoch.load(Acquire);
        let bytes: u64 = read_bank(&b, bank).iter().map(|d| d.up + d.down).sum();
        match journal.get(&e) {
            Some(&j) => assert_eq!(j, bytes, "bank of journalled epoch {e} changed after journalling"),
            None => pending += bytes,
        }
    }
    let journalled: u64 = journal.values().sum();
    assert_eq!(
        journalled + pending + spilled,
        added,
        "journal {journal:?}, pending {pending}, spilled {spilled}"
    );
}

fn run_traffic(wait: usize) {
    let f = Arc::new(traffic_fix(2));
    let c = f.clone();
    let core = thread::spawn(move || {
        let mut w = BankWriter::resume(&c.banks());
        let mut acked = 0;
        w.add(&c.banks(), 1, 1, 1, 0);
        core_tick(&c, &mut w, &mut acked);
        w.add(&c.banks(), 1, 1, 0, 2);
        w.add(&c.banks(), 1, 2, 4, 0);
        w.spilled()
    });
    let mut journal = BTreeMap::new();
    harvest(&f, wait, &mut journal);
    let spilled = core.join().unwrap();
    settle(&f, &journal, spilled, 7);
}

#[test]
fn loom_traffic_harvest_after_ack() {
    check(|| run_traffic(2));
}

#[test]
fn loom_traffic_harvest_timed_out_wait() {
    // The harvester gives up waiting at once and reads whatever bank is idle.
    check(|| run_traffic(0));
}

// ---------------------------------------------------------------------------------------
// (c) user-table RCU publish

struct RcuFix {
    slot: NodeSlot,
    tables_gen: AtomicU64,
    /// The core's `CoreSlot.seen_tables_gen`.
    seen: AtomicU64,
    /// The two table sides: a publish number written non-atomically (like `write_table`).
    sides: [UnsafeCell<u64>; 2],
}

fn rcu_fix() -> RcuFix {
    RcuFix {
        slot: NodeSlot {
            in_use: AtomicU32::new(0),
            active: AtomicU32::new(0),
            retired_gen: [a64(0), a64(0)],
            incarnation: [a64(0), a64(0)],
            cred_kind: AtomicU32::new(0),
            n_users: AtomicU32::new(0),
            _pad: [0],
        },
        tables_gen: a64(0),
        seen: a64(0),
        sides: [UnsafeCell::new(0), UnsafeCell::new(0)],
    }
}

/// `ControlShm::publish_users` for one running core: wait (bounded) for the ack, build the
/// side, switch. Returns whether it published (a timed-out wait is `Busy`).
fn publish(f: &RcuFix, n: u64, wait: usize) -> bool {
    let plan = rcu::plan(&f.slot);
    let mut left = rcu::has_left(&f.seen, &plan);
    for _ in 0..wait {
        if left {
            break;
        }
        thread::yield_now();
        left = rcu::has_left(&f.seen, &plan);
    }
    if !left {
        return false;
    }
    loom_cell::write(&f.sides[plan.side], n);
    rcu::switch(&f.slot, &f.tables_gen, &plan);
    true
}

fn run_rcu(publishes: u64, reader_ticks: usize) {
    let f = Arc::new(rcu_fix());
    let w = f.clone();
    let writer = thread::spawn(move || (1..=publishes).filter(|&n| publish(&w, n, 1)).count());
    // The core: `CoreShm::core` starts with seen = u64::MAX so its first tick maps the tables.
    let mut seen = u64::MAX;
    let mut side = None;
    let mut last = 0;
    for _ in 0..reader_ticks {
        rcu::reader_tick(&f.tables_gen, &mut seen, Some(&f.seen), || {
            side = rcu::reader_side(&f.slot).map(|(s, _)| s);
        });
        if let Some(s) = side {
            // Reads of the side between ticks: loom fails if a write to it can be concurrent.
            let v = loom_cell::read(&f.sides[s]);
            assert!(v > 0, "the active side is completely built before it is visible");
            assert!(v >= last, "a core never goes back to an older table");
            last = v;
        }
    }
    let published = writer.join().unwrap();
    assert!(published >= 2, "the first two publishes never wait");
}

#[test]
fn loom_rcu_publish_never_rewrites_a_side_in_use() {
    check(|| run_rcu(3, 2));
}
