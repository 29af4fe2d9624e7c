//! Single-producer single-consumer ring of 32-byte items in shared memory.
//!
//! `head` is stored only by the producer, `tail` only by the consumer, on separate cache
//! lines. A full ring drops the item and counts it: the data plane never blocks on the
//! control plane.

use std::sync::atomic::AtomicU64;
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
        let Some((m, slots)) = self.parts() else {
            return false;
        };
        let head = m.head.load(Relaxed);
        let tail = m.tail.load(Acquire);
        if head.wrapping_sub(tail) >= slots.len() as u64 {
            m.dropped.fetch_add(1, Relaxed);
            return false;
        }
        let slot = &slots[(head as usize) & (slots.len() - 1)];
        for (w, v) in slot.iter().zip(item) {
            w.store(v, Relaxed);
        }
        m.head.store(head.wrapping_add(1), Release);
        true
    }

    /// Consumer side.
    pub(crate) fn pop(&self) -> Option<Item> {
        let (m, slots) = self.parts()?;
        let tail = m.tail.load(Relaxed);
        let head = m.head.load(Acquire);
        if head == tail {
            return None;
        }
        let slot = &slots[(tail as usize) & (slots.len() - 1)];
        let mut item = [0u64; 4];
        for (v, w) in item.iter_mut().zip(slot) {
            *v = w.load(Relaxed);
        }
        m.tail.store(tail.wrapping_add(1), Release);
        Some(item)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.parts().map_or(0, |(m, _)| m.dropped.load(Relaxed))
    }
}
