//! Single-producer single-consumer ring of 32-byte items in shared memory.
//!
//! `head` is stored only by the producer, `tail` only by the consumer, on separate cache
//! lines. A full ring drops the item and counts it: the data plane never blocks on the
//! control plane.

use super::sync::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::layout::{RingMeta, RING_META_OFF, RING_SLOTS_OFF};
use super::segment::Segment;
use super::ShmError;

pub(crate) type Item = [u64; 4];

pub(crate) fn ring_file_size(cap: usize) -> usize {
    RING_SLOTS_OFF + cap * 32
}

pub(crate) struct Ring {
    seg: Segment,
}

impl Ring {
    pub(crate) fn new(seg: Segment) -> Result<Ring, ShmError> {
        let cap = seg.header().capacity as usize;
        if !cap.is_power_of_two() {
            return Err(ShmError::Layout {
                path: seg.path().to_path_buf(),
                what: format!("ring capacity {cap}"),
            });
        }
        seg.slice::<[AtomicU64; 4]>(RING_SLOTS_OFF, cap)?;
        Ok(Ring { seg })
    }

    fn parts(&self) -> Option<(&RingMeta, &[[AtomicU64; 4]])> {
        let cap = self.seg.header().capacity as usize;
        Some((
            self.seg.at(RING_META_OFF).ok()?,
            self.seg.slice(RING_SLOTS_OFF, cap).ok()?,
        ))
    }

    /// Producer side. False (and `dropped` + 1) when full.
    pub(crate) fn push(&self, item: Item) -> bool {
        self.parts().is_some_and(|(m, slots)| push(m, slots, item))
    }

    /// Consumer side.
    pub(crate) fn pop(&self) -> Option<Item> {
        let (m, slots) = self.parts()?;
        pop(m, slots)
    }

    /// Free slots, as the producer sees them (the consumer may free more meanwhile).
    pub(crate) fn free(&self) -> usize {
        self.parts().map_or(0, |(m, slots)| {
            let used = m.head.load(Relaxed).wrapping_sub(m.tail.load(Acquire));
            slots
                .len()
                .saturating_sub(usize::try_from(used).unwrap_or(usize::MAX))
        })
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.parts().map_or(0, |(m, _)| m.dropped.load(Relaxed))
    }
}

/// Producer step over the ring's words (the mapped ring and the loom model both call this).
/// `slots.len()` is a power of two.
pub(crate) fn push(m: &RingMeta, slots: &[[AtomicU64; 4]], item: Item) -> bool {
    let head = m.head.load(Relaxed);
    // Acquire: the consumer's reads of the slot we are about to reuse happen before our writes.
    let tail = m.tail.load(Acquire);
    let Some(slot) = slots.get((head as usize) & slots.len().wrapping_sub(1)) else {
        return false;
    };
    if head.wrapping_sub(tail) >= slots.len() as u64 {
        m.dropped.fetch_add(1, Relaxed);
        return false;
    }
    for (w, v) in slot.iter().zip(item) {
        w.store(v, Relaxed);
    }
    // Release: the slot's words are visible before the consumer can see the new head.
    m.head.store(head.wrapping_add(1), Release);
    true
}

/// Consumer step over the ring's words.
pub(crate) fn pop(m: &RingMeta, slots: &[[AtomicU64; 4]]) -> Option<Item> {
    let tail = m.tail.load(Relaxed);
    let head = m.head.load(Acquire);
    if head == tail {
        return None;
    }
    let slot = slots.get((tail as usize) & slots.len().wrapping_sub(1))?;
    let mut item = [0u64; 4];
    for (v, w) in item.iter_mut().zip(slot) {
        *v = w.load(Relaxed);
    }
    // Release: our reads of the slot are done before the producer may overwrite it.
    m.tail.store(tail.wrapping_add(1), Release);
    Some(item)
}
