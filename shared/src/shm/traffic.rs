//! Per-core traffic banks: the data plane's counters, harvested without losing or doubling a
//! byte (protocol in docs/design.md, "Traffic banks").
//!
//! A core owns its file and writes only its active bank. The control plane asks for a flip by
//! bumping `harvest_epoch`; the core flips to the other (drained) bank at its next tick and
//! acknowledges. The control plane then reads the now idle bank, journals it under
//! `(instance, core, epoch)`, and clears it. Every bank carries the epoch it was activated in,
//! so a bank that was journalled but not cleared before a crash is recognised and not counted
//! twice.

use std::collections::HashMap;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::layout::{
    BankHeader, TrafficEntry, TrafficMeta, OWNER_CONTROL, TRAFFIC_BANKS_OFF, TRAFFIC_META_OFF,
};
use super::segment::{pid_alive, Segment};
use super::ShmError;

/// Entries per bank (64 Ki × 32 B = 2 MiB per bank).
pub const DEFAULT_BANK_CAPACITY: usize = 64 * 1024;

pub(crate) fn traffic_file_size(cap: usize) -> usize {
    TRAFFIC_BANKS_OFF + 2 * bank_stride(cap)
}

fn bank_stride(cap: usize) -> usize {
    size_of::<BankHeader>() + cap * size_of::<TrafficEntry>()
}

/// One user's bytes on one node, as harvested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficDelta {
    pub node: u16,
    pub user_id: u32,
    pub up: u64,
    pub down: u64,
}

/// The contents of one idle bank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HarvestedBank {
    pub instance_id: u64,
    pub core: u16,
    pub epoch: u64,
    pub entries: Vec<TrafficDelta>,
}

pub(crate) struct Banks<'a> {
    pub(crate) meta: &'a TrafficMeta,
    pub(crate) headers: [&'a BankHeader; 2],
    pub(crate) entries: [&'a [TrafficEntry]; 2],
}

pub(crate) fn banks(seg: &Segment) -> Result<Banks<'_>, ShmError> {
    let cap = seg.header().capacity as usize;
    let stride = bank_stride(cap);
    let hdr = |b: usize| seg.at::<BankHeader>(TRAFFIC_BANKS_OFF + b * stride);
    let ent = |b: usize| seg.slice::<TrafficEntry>(TRAFFIC_BANKS_OFF + b * stride + 64, cap);
    Ok(Banks {
        meta: seg.at(TRAFFIC_META_OFF)?,
        headers: [hdr(0)?, hdr(1)?],
        entries: [ent(0)?, ent(1)?],
    })
}

fn key(node: u16, user_id: u32) -> u64 {
    (u64::from(node) << 32) | u64::from(user_id)
}

/// Read `len` entries of a bank.
pub(crate) fn read_bank(b: &Banks<'_>, bank: usize) -> Vec<TrafficDelta> {
    let len = (b.headers[bank].len.load(Acquire) as usize).min(b.entries[bank].len());
    b.entries[bank][..len]
        .iter()
        .map(|e| {
            let k = e.key.load(Relaxed);
            TrafficDelta {
                node: (k >> 32) as u16,
                user_id: k as u32,
                up: e.up.load(Relaxed),
                down: e.down.load(Relaxed),
            }
        })
        .filter(|d| d.up != 0 || d.down != 0)
        .collect()
}

/// The writing side, owned by one core thread.
pub struct TrafficWriter {
    seg: Segment,
    w: BankWriter,
    pid: u32,
}

/// The core's private state of its traffic file: the steps of the single-writer protocol over
/// [`Banks`], shared by [`TrafficWriter`] and the loom models.
pub(crate) struct BankWriter {
    cap: usize,
    active: usize,
    index: HashMap<u64, u32>,
    /// Bytes that did not fit a full bank; moved into the next bank after a flip.
    spill: HashMap<u64, (u64, u64)>,
}

impl TrafficWriter {
    /// Take ownership of a core's traffic file. A bank left by a crashed predecessor is
    /// continued, not reset: its bytes are still unharvested.
    pub(crate) fn claim(seg: Segment, pid: u32) -> Result<TrafficWriter, ShmError> {
        {
            let b = banks(&seg)?;
            let mut waited = 0;
            loop {
                let owner = b.meta.owner_pid.load(Acquire);
                let free = owner == 0 || owner == pid || (owner != OWNER_CONTROL && !pid_alive(owner));
                if free
                    && b.meta
                        .owner_pid
                        .compare_exchange(owner, pid, Acquire, Relaxed)
                        .is_ok()
                {
                    break;
                }
                // Owned by a live process, or the control plane is harvesting it right now.
                waited += 1;
                if waited > 500 {
                    return Err(ShmError::Busy {
                        what: format!("{} is owned by pid {owner}", seg.path().display()),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let w = BankWriter::resume(&banks(&seg)?);
        Ok(TrafficWriter { seg, w, pid })
    }

    /// Add payload bytes for a user. Single writer: plain load+store, no read-modify-write.
    pub fn add(&mut self, node: u16, user_id: u32, up: u64, down: u64) {
        if let Ok(b) = banks(&self.seg) {
            self.w.add(&b, node, user_id, up, down);
        }
    }

    /// Flip to the other bank for harvest `epoch`, if the control plane has drained it.
    /// Returns false (and keeps counting in the current bank) otherwise.
    pub(crate) fn flip(&mut self, epoch: u64) -> bool {
        banks(&self.seg).is_ok_and(|b| self.w.flip(&b, epoch))
    }

    /// Live totals of the active bank (for status displays; racy by design).
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl BankWriter {
    /// Continue the active bank as a (possibly crashed) predecessor left it.
    pub(crate) fn resume(b: &Banks<'_>) -> BankWriter {
        let active = (b.meta.active_bank.load(Acquire) as usize) & 1;
        let cap = b.entries[0].len().min(b.entries[1].len());
        let len = (b.headers[active].len.load(Acquire) as usize).min(cap);
        let mut index = HashMap::new();
        for (i, e) in b.entries[active][..len].iter().enumerate() {
            index.insert(e.key.load(Relaxed), i as u32);
        }
        BankWriter {
            cap,
            active,
            index,
            spill: HashMap::new(),
        }
    }

    pub(crate) fn add(&mut self, b: &Banks<'_>, node: u16, user_id: u32, up: u64, down: u64) {
        if up == 0 && down == 0 {
            return;
        }
        let k = key(node, user_id);
        let entries = b.entries[self.active];
        let idx = match self.index.get(&k) {
            Some(&i) => i as usize,
            None => {
                let hdr = b.headers[self.active];
                let len = hdr.len.load(Relaxed) as usize;
                if len >= self.cap || len >= entries.len() {
                    hdr.overflow
                        .store(hdr.overflow.load(Relaxed).wrapping_add(1), Relaxed);
                    let s = self.spill.entry(k).or_insert((0, 0));
                    s.0 += up;
                    s.1 += down;
                    return;
                }
                let e = &entries[len];
                e.key.store(k, Relaxed);
                e.up.store(0, Relaxed);
                e.down.store(0, Relaxed);
                // Publish the slot only after it is initialised.
                hdr.len.store(len as u32 + 1, Release);
                self.index.insert(k, len as u32);
                len
            }
        };
        let e = &entries[idx];
        e.up.store(e.up.load(Relaxed).wrapping_add(up), Relaxed);
        e.down.store(e.down.load(Relaxed).wrapping_add(down), Relaxed);
    }

    pub(crate) fn flip(&mut self, b: &Banks<'_>, epoch: u64) -> bool {
        let other = 1 - self.active;
        // Acquire: the harvester's reads of this bank happen before we write it again.
        if b.headers[other].len.load(Acquire) != 0 {
            return false;
        }
        b.headers[other].epoch.store(epoch, Relaxed);
        b.headers[other].overflow.store(0, Relaxed);
        // Release: everything written to the old bank is visible to whoever sees the flip.
        b.meta.active_bank.store(other as u32, Release);
        self.active = other;
        self.index.clear();
        for (k, (up, down)) in std::mem::take(&mut self.spill) {
            self.add(b, (k >> 32) as u16, k as u32, up, down);
        }
        true
    }

    /// Bytes held back because a bank was full (part of the core's unharvested total).
    #[cfg(all(test, loom))]
    pub(crate) fn spilled(&self) -> u64 {
        self.spill.values().map(|(u, d)| u + d).sum()
    }
}

impl Drop for TrafficWriter {
    fn drop(&mut self) {
        if let Ok(b) = banks(&self.seg) {
            let _ = b.meta.owner_pid.compare_exchange(self.pid, 0, Release, Relaxed);
        }
    }
}

/// Harvester step: the banks of one core's file that hold bytes and that no writer adds to
/// any more, as `(bank, epoch, entries)`. `take_active`: the writer is gone for good (an
/// orphan of an earlier instance), so its active bank is idle too.
pub(crate) fn idle_banks(b: &Banks<'_>, take_active: bool) -> Vec<(usize, u64, Vec<TrafficDelta>)> {
    let active = b.meta.active_bank.load(Acquire) as usize & 1;
    let mut out = Vec::new();
    for bank in 0..2 {
        if (bank != active || take_active) && b.headers[bank].len.load(Acquire) > 0 {
            let epoch = b.headers[bank].epoch.load(Acquire);
            let entries = read_bank(b, bank);
            // The core may have flipped to this bank after we loaded `active` (a harvest whose
            // wait timed out, or `pending_banks` at any time) and be filling it now: then
            // what we read is a prefix of a live bank, and journalling it under this epoch
            // would lose the rest (or count it twice). The `len` we read Acquire'd the flip's
            // Release, so a re-load of `active` sees it. (Found by the loom model
            // `loom_traffic_harvest_timed_out_wait`.)
            if !take_active && b.meta.active_bank.load(Acquire) as usize & 1 == bank {
                continue;
            }
            out.push((bank, epoch, entries));
        }
    }
    out
}

/// Harvester step after journalling: empty the idle bank activated in `epoch` (a stale
/// call, for an epoch no idle bank carries, clears nothing). `orphan`: the file belongs to
/// an earlier instance whose writer is gone, so the active bank may be cleared too.
pub(crate) fn clear_epoch(b: &Banks<'_>, epoch: u64, orphan: bool) {
    let active = b.meta.active_bank.load(Acquire) as usize & 1;
    for bank in 0..2 {
        if (bank != active || orphan) && b.headers[bank].epoch.load(Acquire) == epoch {
            // Release: our reads of the bank happen before the writer's next flip reuses it.
            b.headers[bank].len.store(0, Release);
        }
    }
}

/// Control side: flip the bank of a core whose data plane is gone (nobody else writes it).
pub(crate) fn flip_for_dead_writer(seg: &Segment, epoch: u64) -> Result<bool, ShmError> {
    let b = banks(seg)?;
    let owner = b.meta.owner_pid.load(Acquire);
    if owner == OWNER_CONTROL || (owner != 0 && pid_alive(owner)) {
        return Ok(false);
    }
    if b.meta
        .owner_pid
        .compare_exchange(owner, OWNER_CONTROL, Acquire, Relaxed)
        .is_err()
    {
        return Ok(false);
    }
    let active = (b.meta.active_bank.load(Acquire) as usize) & 1;
    let other = 1 - active;
    let flipped = if b.headers[other].len.load(Acquire) == 0 {
        b.headers[other].epoch.store(epoch, Relaxed);
        b.meta.active_bank.store(other as u32, Release);
        true
    } else {
        false
    };
    b.meta.owner_pid.store(0, Release);
    Ok(flipped)
}
