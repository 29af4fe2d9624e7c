//! Speed-limit clocks shared by every data-plane process on one shm directory.
//!
//! ```text
//! rates   [ SegHeader 64 B ][ RateSlot 16 B × 65536 ]    1 MiB, sparse: pages appear when used
//!                             key: 1<<63 | node<<32 | user_id   (0 = never used)
//!                             tat: GCRA theoretical arrival time, ns on CLOCK_MONOTONIC
//! ```
//!
//! Why a file: during an upgrade two data planes serve at once (the successor takes new
//! connections while its predecessor drains), and a user with connections on both must still
//! get one speed limit, not one per process. A user's clock is one slot here, and every
//! process's bucket for that (node, user) reserves on it with the same CAS it would use on a
//! private atomic. `CLOCK_MONOTONIC` is the one clock all processes on the machine share.
//!
//! Slots are found by open addressing in a short probe window from the key's hash. When the
//! window is full, the slot whose clock is stalest is reused if that clock is at least
//! [`STALE_NS`] in the past: such a clock admits exactly what a new one would, so the new owner
//! loses nothing. A process that still holds the reused slot for the old key sees the key
//! change ([`SharedClock::tat`] answers `None`) and goes on with a private clock; between its
//! last check and that moment it can have charged one reservation to the new owner (a few
//! hundredths of a second of budget, never more than it would have used itself). Nothing
//! here grows: the table has a fixed size, and a full window without a stale slot means a
//! private clock for that bucket (the limit then holds per process, as before this file).
//!
//! The file is created by the first data plane that needs it and outlives data-plane restarts
//! (a restarted process continues the clocks: a restart is no way around a limit). Its header
//! carries a hash of the kernel's boot id instead of the control plane's instance id: after a
//! reboot `CLOCK_MONOTONIC` starts again from zero, and clocks from before would be far in
//! the future, so a file from another boot is replaced.

use std::path::Path;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::Arc;

use super::layout::{RateSlot, SegHeader, KIND_RATES, RATE_SLOTS, RATE_SLOTS_OFF};
use super::names;
use super::segment::Segment;
use super::sync::AtomicU64;
use super::ShmError;

/// A clock this far in the past is the same as a new one (GCRA's burst tolerance is 1 s).
pub(crate) const STALE_NS: u64 = 2_000_000_000;
/// Slots looked at from a key's home slot.
const PROBE: usize = 32;

/// The `rates` file of a shm directory.
#[derive(Clone)]
pub struct RateTable {
    seg: Arc<Segment>,
}

impl std::fmt::Debug for RateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateTable")
            .field("path", &self.seg.path())
            .finish()
    }
}

/// One (node, user)'s clock in the `rates` file.
#[derive(Clone)]
pub struct SharedClock {
    seg: Arc<Segment>,
    off: usize,
    key: u64,
}

impl std::fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedClock")
            .field("off", &self.off)
            .field("key", &format_args!("{:#x}", self.key))
            .finish()
    }
}

fn key(node: u16, user_id: u32) -> u64 {
    1 << 63 | u64::from(node) << 32 | u64::from(user_id)
}

fn home(key: u64) -> usize {
    // splitmix64's finaliser: user ids are dense small numbers, the slots should not be.
    let mut z = key;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z as usize) % RATE_SLOTS
}

/// A hash of `/proc/sys/kernel/random/boot_id` (never 0, so a zeroed header never matches).
fn boot_id() -> u64 {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.trim().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

impl RateTable {
    /// Opens `<dir>/rates`, creating it if there is none, replacing it if it comes from
    /// another boot or has another size.
    pub fn open(dir: &Path) -> Result<RateTable, ShmError> {
        super::segment::check_dir(dir)?;
        let path = dir.join(names::RATES);
        let size = RATE_SLOTS_OFF + RATE_SLOTS * size_of::<RateSlot>();
        let boot = boot_id();
        let header = || SegHeader::new(KIND_RATES, size_of::<RateSlot>(), RATE_SLOTS, boot, size);
        // Bounded: each round either returns or lost a creation race to a process that made
        // a current file, which the next round opens.
        for _ in 0..3 {
            match Segment::open(&path, KIND_RATES) {
                Ok(seg) if seg.header().instance_id == boot && seg.len() == size => {
                    return Ok(RateTable { seg: Arc::new(seg) });
                }
                // Another boot's clocks, another size, another layout: only clocks, replaced.
                Ok(_) | Err(ShmError::Version { .. } | ShmError::Layout { .. }) => {
                    let seg = Segment::create(&path, size, header())?;
                    return Ok(RateTable { seg: Arc::new(seg) });
                }
                Err(ShmError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(seg) = Segment::create_exclusive(&path, size, header())? {
                        return Ok(RateTable { seg: Arc::new(seg) });
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(ShmError::Busy {
            what: format!("{} keeps changing", path.display()),
        })
    }

    fn slot(&self, i: usize) -> Option<&RateSlot> {
        self.seg
            .at(RATE_SLOTS_OFF + (i % RATE_SLOTS) * size_of::<RateSlot>())
            .ok()
    }

    /// The clock of (`node`, `user_id`): the slot that has it, else a free one, else the
    /// stalest one at least [`STALE_NS`] old at `now_ns`; `None` if the window has neither.
    pub fn clock(&self, node: u16, user_id: u32, now_ns: u64) -> Option<SharedClock> {
        let key = key(node, user_id);
        let start = home(key);
        let found = |i: usize| SharedClock {
            seg: self.seg.clone(),
            off: RATE_SLOTS_OFF + (i % RATE_SLOTS) * size_of::<RateSlot>(),
            key,
        };
        for i in start..start + PROBE {
            let s = self.slot(i)?;
            let k = s.key.load(Acquire);
            if k == key {
                return Some(found(i));
            }
            if k == 0 {
                match s.key.compare_exchange(0, key, AcqRel, Acquire) {
                    Ok(_) => return Some(found(i)),
                    Err(k) if k == key => return Some(found(i)),
                    Err(_) => {}
                }
            }
        }
        // The window is full: take over the stalest clock if it is stale.
        let (i, k, tat) = (start..start + PROBE)
            .filter_map(|i| {
                self.slot(i)
                    .map(|s| (i, s.key.load(Acquire), s.tat.load(Relaxed)))
            })
            .min_by_key(|&(_, _, tat)| tat)?;
        if tat.saturating_add(STALE_NS) > now_ns {
            return None;
        }
        let s = self.slot(i)?;
        match s.key.compare_exchange(k, key, AcqRel, Acquire) {
            Ok(_) => Some(found(i)),
            Err(k) if k == key => Some(found(i)),
            Err(_) => None,
        }
    }
}

impl SharedClock {
    /// The clock, while its slot is still this (node, user)'s.
    #[inline]
    pub fn tat(&self) -> Option<&AtomicU64> {
        let s: &RateSlot = self.seg.at(self.off).ok()?;
        (s.key.load(Relaxed) == self.key).then_some(&s.tat)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn two_handles_on_one_directory_share_a_users_clock() {
        let d = dir();
        let a = RateTable::open(d.path()).unwrap();
        // A second process opens the same file.
        let b = RateTable::open(d.path()).unwrap();
        let ca = a.clock(3, 42, 10).unwrap();
        let cb = b.clock(3, 42, 10).unwrap();
        ca.tat().unwrap().store(12_345, Relaxed);
        assert_eq!(cb.tat().unwrap().load(Relaxed), 12_345);
        // Another user, another node: other clocks.
        let other_user = b.clock(3, 43, 10).unwrap();
        let other_node = b.clock(4, 42, 10).unwrap();
        assert_eq!(other_user.tat().unwrap().load(Relaxed), 0);
        assert_eq!(other_node.tat().unwrap().load(Relaxed), 0);
    }

    #[test]
    fn a_file_from_another_boot_is_replaced_and_a_current_one_kept() {
        let d = dir();
        let path = d.path().join(names::RATES);
        let size = RATE_SLOTS_OFF + RATE_SLOTS * size_of::<RateSlot>();
        let old = SegHeader::new(KIND_RATES, size_of::<RateSlot>(), RATE_SLOTS, boot_id() ^ 2, size);
        let seg = Segment::create(&path, size, old).unwrap();
        let stale: &RateSlot = seg.at(RATE_SLOTS_OFF).unwrap();
        stale.key.store(key(0, 0), Relaxed);
        stale.tat.store(u64::MAX / 2, Relaxed);
        let t = RateTable::open(d.path()).unwrap();
        assert_eq!(t.seg.header().instance_id, boot_id());
        let c = t.clock(1, 1, 5).unwrap();
        c.tat().unwrap().store(77, Relaxed);
        // Reopened in the same boot: the clocks are kept.
        let again = RateTable::open(d.path()).unwrap();
        assert_eq!(again.clock(1, 1, 5).unwrap().tat().unwrap().load(Relaxed), 77);
    }

    #[test]
    fn a_full_window_reuses_only_a_stale_clock_and_the_old_owner_notices() {
        let d = dir();
        let t = RateTable::open(d.path()).unwrap();
        let now = 100 * STALE_NS;
        // Fill the new key's whole window with other keys whose clocks are current.
        let target = key(9, 9);
        let start = home(target);
        for i in start..start + PROBE {
            let s = t.slot(i).unwrap();
            s.key.store(key(200, i as u32), Relaxed);
            s.tat.store(now, Relaxed);
        }
        assert!(t.clock(9, 9, now).is_none(), "a current clock was taken over");
        // One of them goes stale; its holder still has a handle.
        let victim = start + 7;
        let held = SharedClock {
            seg: t.seg.clone(),
            off: RATE_SLOTS_OFF + (victim % RATE_SLOTS) * size_of::<RateSlot>(),
            key: key(200, victim as u32),
        };
        t.slot(victim).unwrap().tat.store(now - STALE_NS, Relaxed);
        let c = t.clock(9, 9, now).expect("the stale clock is reused");
        assert_eq!(c.off, held.off);
        assert!(held.tat().is_none(), "the old owner must see its slot go");
        assert!(c.tat().is_some());
        // Found again at the same place.
        assert_eq!(t.clock(9, 9, now).unwrap().off, c.off);
    }

    #[test]
    fn many_users_each_get_their_own_clock() {
        let d = dir();
        let t = RateTable::open(d.path()).unwrap();
        let mut offs = std::collections::HashSet::new();
        for u in 0..20_000u32 {
            let c = t.clock(1, u, 0).expect("a free slot in the window");
            assert!(offs.insert(c.off), "user {u} shares a slot");
        }
    }
}
