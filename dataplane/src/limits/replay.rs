//! Process-wide handshake replay filter (salts, nonces), shared by all cores.
//!
//! A replayed connection arrives from a new source port, which SO_REUSEPORT may hash to any
//! core, so one filter serves the whole process. It is sharded (a lock per shard, touched once
//! per handshake, never per byte) and each shard keeps two generations (ping-pong): inserts go
//! to `current`; when `current` is older than the window (or holds its share of `max_entries`)
//! it becomes `previous` and the old `previous` is dropped. A salt is therefore remembered for
//! at least `window_s` seconds (and at most `2 × window_s`), unless the entry cap forced an
//! early rotation — the cap bounds memory under a flood of *authenticated* handshakes.
//!
//! Exact set membership (no Bloom filter): SIP022 §3.1.4 forbids false positives.
//!
//! Windows: SS-2022 timestamps are valid ±30 s, so salts must be kept 60 s (`window_s = 60`);
//! AEAD-2017 has no timestamp, so the window is whatever memory allows (60 s by default too).

use std::collections::HashSet;
use std::sync::Mutex;

use crossbeam_utils::CachePadded;

/// Salts are at most 32 bytes for every user of this filter; longer inputs are hashed.
type Key = ([u8; 32], u8);

fn key_of(salt: &[u8]) -> Key {
    let mut k = [0u8; 32];
    if salt.len() <= 32 {
        k[..salt.len()].copy_from_slice(salt);
        (k, salt.len() as u8)
    } else {
        k.copy_from_slice(blake3::hash(salt).as_bytes());
        (k, 33)
    }
}

struct Generations {
    current: HashSet<Key>,
    previous: HashSet<Key>,
    /// When `current` was started (unix seconds).
    started_s: u64,
}

/// See the module documentation.
pub struct ReplayFilter {
    shards: Box<[CachePadded<Mutex<Generations>>]>,
    window_s: u64,
    max_per_generation: usize,
    /// Per-process random key so a client cannot aim all its salts at one shard.
    shard_key: u64,
}

impl ReplayFilter {
    /// `window_s`: how long a salt is at least remembered; `max_entries`: memory cap over all
    /// shards and both generations.
    pub fn new(window_s: u64, max_entries: usize) -> Self {
        let n = std::thread::available_parallelism()
            .map_or(8, |n| n.get())
            .clamp(4, 64)
            .next_power_of_two();
        let max_per_generation = (max_entries / (2 * n)).max(16);
        let shards = (0..n)
            .map(|_| {
                CachePadded::new(Mutex::new(Generations {
                    current: HashSet::new(),
                    previous: HashSet::new(),
                    started_s: 0,
                }))
            })
            .collect();
        let mut seed = [0u8; 8];
        // A fixed shard key only weakens the spread, never correctness.
        let _ = aws_lc_rs::rand::fill(&mut seed);
        ReplayFilter {
            shards,
            window_s: window_s.max(1),
            max_per_generation,
            shard_key: u64::from_le_bytes(seed) | 1,
        }
    }

    fn shard_of(&self, salt: &[u8]) -> usize {
        let mut w = [0u8; 8];
        let n = salt.len().min(8);
        w[..n].copy_from_slice(&salt[..n]);
        let h = (u64::from_le_bytes(w) ^ salt.len() as u64).wrapping_mul(self.shard_key);
        (h >> 40) as usize & (self.shards.len() - 1)
    }

    /// Record `salt` seen at `now_s`; `false` if it was seen within the window (a replay).
    pub fn check_and_insert(&self, salt: &[u8], now_s: u64) -> bool {
        let key = key_of(salt);
        let Some(shard) = self.shards.get(self.shard_of(salt)) else {
            return false;
        };
        // A poisoned shard only means another thread panicked mid-insert; the sets are still
        // valid sets.
        let mut g = match shard.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let age = now_s.saturating_sub(g.started_s);
        if age >= 2 * self.window_s {
            g.current.clear();
            g.previous.clear();
            g.started_s = now_s;
        } else if age >= self.window_s || g.current.len() >= self.max_per_generation {
            let cur = std::mem::take(&mut g.current);
            g.previous = cur;
            g.started_s = now_s;
        }
        if g.previous.contains(&key) {
            return false;
        }
        g.current.insert(key)
    }

    /// Entries currently held (both generations, all shards); for metrics and tests.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| match s.lock() {
                Ok(g) => g.current.len() + g.previous.len(),
                Err(p) => {
                    let g = p.into_inner();
                    g.current.len() + g.previous.len()
                }
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    #[test]
    fn replay_within_window_is_caught() {
        let f = ReplayFilter::new(60, 1 << 20);
        assert!(f.check_and_insert(b"0123456789abcdef", 1000));
        assert!(!f.check_and_insert(b"0123456789abcdef", 1000));
        // Still remembered after one rotation (59 s, then 61 s after first insert).
        assert!(!f.check_and_insert(b"0123456789abcdef", 1059));
        assert!(f.check_and_insert(b"other-salt-00000", 1061));
        assert!(!f.check_and_insert(b"0123456789abcdef", 1061));
        // Forgotten after two windows.
        assert!(f.check_and_insert(b"0123456789abcdef", 1200));
    }

    #[test]
    fn salt_replayed_from_another_thread_is_caught() {
        let f = Arc::new(ReplayFilter::new(60, 1 << 20));
        let salts: Vec<[u8; 32]> = (0..2000u32)
            .map(|i| {
                let mut s = [0u8; 32];
                s[..4].copy_from_slice(&i.to_le_bytes());
                s[31] = 0xaa;
                s
            })
            .collect();
        let f1 = Arc::clone(&f);
        let s1 = salts.clone();
        std::thread::spawn(move || {
            for s in &s1 {
                assert!(f1.check_and_insert(s, 500));
            }
        })
        .join()
        .unwrap();
        let f2 = Arc::clone(&f);
        let caught =
            std::thread::spawn(move || salts.iter().filter(|s| !f2.check_and_insert(&s[..], 510)).count())
                .join()
                .unwrap();
        assert_eq!(caught, 2000);
    }

    #[test]
    fn concurrent_inserts_of_the_same_salt_admit_exactly_one() {
        let f = Arc::new(ReplayFilter::new(60, 1 << 20));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || {
                    (0..500u32)
                        .filter(|i| f.check_and_insert(&i.to_be_bytes(), 7))
                        .count()
                })
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(admitted, 500);
    }

    #[test]
    fn memory_is_bounded() {
        let f = ReplayFilter::new(60, 1000);
        for i in 0..100_000u32 {
            f.check_and_insert(&i.to_le_bytes(), 1);
        }
        assert!(f.len() <= 2 * 1000 + 2 * 64 * 16, "len {}", f.len());
    }
}
