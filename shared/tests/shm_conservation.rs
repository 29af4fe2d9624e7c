//! Property test of the traffic-bank protocol across restarts: random sequences of adds,
//! core ticks, harvests, clears, data-plane restarts/crashes and control-plane restarts,
//! driven single-threaded with explicit ticks. The control plane's journal is modelled
//! (dedup by `(instance, core, epoch)`, as `report/` does), and the law checked is: every
//! byte added is harvested exactly once, once everything has been drained.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use v2sp_shared::shm::{ControlShm, CoreShm, DataplaneShm, HarvestedBank, TrafficDelta};

#[derive(Clone, Debug)]
enum Op {
    Add {
        user: u32,
        up: u64,
        down: u64,
    },
    Tick,
    /// `ControlShm::harvest` without waiting for acks (single-threaded: the core ticks
    /// later), journal what it returns, clear it or not (a crash between journal and clear).
    Harvest {
        clear: bool,
    },
    /// `ControlShm::pending_banks` (what the control plane runs after each harvest).
    Pending {
        clear: bool,
    },
    /// Clean data-plane restart: drop the core handle, take a new one.
    DpRestart,
    /// Data plane killed: the handle vanishes without its destructor.
    DpCrash,
    /// Data plane down for a while (the control plane harvests the bank itself).
    DpDown,
    DpUp,
    /// Control plane restart: a new handle attaches and looks for uncleared banks.
    CpRestart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..5, 0u64..1000, 0u64..1000).prop_map(|(user, up, down)| Op::Add { user, up, down }),
        4 => Just(Op::Tick),
        3 => any::<bool>().prop_map(|clear| Op::Harvest { clear }),
        2 => any::<bool>().prop_map(|clear| Op::Pending { clear }),
        1 => Just(Op::DpRestart),
        1 => Just(Op::DpCrash),
        1 => Just(Op::DpDown),
        1 => Just(Op::DpUp),
        1 => Just(Op::CpRestart),
    ]
}

/// The control plane's accounting journal: `(instance, core, epoch)` → journalled deltas.
#[derive(Default)]
struct Journal {
    banks: BTreeMap<(u64, u16, u64), Vec<TrafficDelta>>,
    bytes: u64,
}

impl Journal {
    /// Journal a harvested bank (or recognise it), then clear it if asked.
    fn take(&mut self, c: &ControlShm, banks: Vec<HarvestedBank>, clear: bool) -> Result<(), TestCaseError> {
        for b in banks {
            let key = (b.instance_id, b.core, b.epoch);
            match self.banks.get(&key) {
                // Seen before (the clear was lost): identical contents, counted once.
                Some(prev) => {
                    prop_assert_eq!(prev, &b.entries, "bank {:?} changed after it was journalled", key)
                }
                None => {
                    self.bytes += b.entries.iter().map(|e| e.up + e.down).sum::<u64>();
                    self.banks.insert(key, b.entries.clone());
                }
            }
            if clear {
                c.clear_bank(b.instance_id, b.core, b.epoch).unwrap();
            }
        }
        Ok(())
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ControlShm::create_or_attach(dir.path()).unwrap();
    let d = DataplaneShm::attach(dir.path()).unwrap();
    d.register(1, 2).unwrap();
    let mut core: Option<CoreShm> = Some(d.core(0).unwrap());
    let mut journal = Journal::default();
    let mut added = 0u64;
    for op in ops {
        match *op {
            Op::Add { user, up, down } => {
                if let Some(k) = core.as_mut() {
                    k.add_traffic(1, user, up, down);
                    added += up + down;
                }
            }
            Op::Tick => {
                if let Some(k) = core.as_mut() {
                    k.tick();
                }
            }
            Op::Harvest { clear } => {
                let h = c.harvest(Duration::ZERO).unwrap();
                journal.take(&c, h, clear)?;
            }
            Op::Pending { clear } => {
                let h = c.pending_banks().unwrap();
                journal.take(&c, h, clear)?;
            }
            Op::DpRestart => {
                drop(core.take());
                core = Some(d.core(0).unwrap());
            }
            Op::DpCrash => {
                if let Some(k) = core.take() {
                    // The mapping stays alive (as after a kill) but nobody writes it any more.
                    std::mem::forget(k);
                }
                core = Some(d.core(0).unwrap());
            }
            Op::DpDown => core = None,
            Op::DpUp => {
                if core.is_none() {
                    core = Some(d.core(0).unwrap());
                }
            }
            Op::CpRestart => {
                drop(c);
                c = ControlShm::create_or_attach(dir.path()).unwrap();
                let h = c.pending_banks().unwrap();
                journal.take(&c, h, true)?;
            }
        }
    }
    // Drain: the data plane runs, harvests complete (harvest, tick, pending, clear).
    if core.is_none() {
        core = Some(d.core(0).unwrap());
    }
    let k = core.as_mut().unwrap();
    for _ in 0..4 {
        let h = c.harvest(Duration::ZERO).unwrap();
        journal.take(&c, h, true)?;
        k.tick();
        let h = c.pending_banks().unwrap();
        journal.take(&c, h, true)?;
    }
    prop_assert_eq!(journal.bytes, added, "harvested once vs added");
    prop_assert!(c.pending_banks().unwrap().is_empty(), "everything drained");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn shm_every_byte_is_harvested_exactly_once(ops in proptest::collection::vec(op(), 0..40)) {
        run(&ops)?;
    }
}

#[test]
fn shm_harvest_journal_crash_then_control_restart() {
    use Op::*;
    run(&[
        Add {
            user: 1,
            up: 10,
            down: 1,
        },
        Harvest { clear: false },
        Tick,
        Pending { clear: false },
        CpRestart,
        Add {
            user: 1,
            up: 5,
            down: 0,
        },
        Harvest { clear: true },
        Tick,
    ])
    .unwrap();
}
