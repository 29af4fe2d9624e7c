//! Micro-benchmarks of the data plane's per-connection and per-read limits (the AEAD framing
//! per method is already in `dataplane/benches/ss_framing.rs`, not repeated here):
//!
//! * `gcra_reserve`: one `Bucket::reserve_at` per read, unlimited (fast path) and limited.
//! * `gcra_bucket_lookup`: `RateLimiters::bucket` on connection open (existing user).
//! * `replay_insert`: `ReplayFilter::check_and_insert` of a fresh 16/32-byte salt into a
//!   filter holding ~100k salts (one per new connection, across cores).
//!
//! `V2SP_BENCH_ITERS=N` runs each case exactly N times without criterion (`support/instr.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "support/instr.rs"]
mod instr;

use std::hint::black_box;

use criterion::Throughput;
use instr::Runner;
use v2sp_dataplane::limits::gcra::{Bucket, RateLimiters};
use v2sp_dataplane::limits::replay::ReplayFilter;

fn gcra(r: &mut Runner) {
    for (name, rate) in [("unlimited", 0u64), ("100Mbps", 12_500_000)] {
        let b = Bucket::new(rate);
        let mut now = 0u64;
        r.case("gcra_reserve", name, Some(Throughput::Elements(1)), || {
            now += 1_000_000; // 1 ms between reads: stays within budget
            black_box(b.reserve_at(black_box(16_384), now));
        });
    }
    let reg = RateLimiters::default();
    let keep: Vec<_> = (0..1000).map(|u| reg.bucket(1, u, 12_500_000)).collect();
    let mut u = 0u32;
    r.case("gcra_bucket_lookup", "1000users", None, || {
        u = (u + 1) % 1000;
        black_box(reg.bucket(1, black_box(u), 12_500_000));
    });
    drop(keep);
}

fn replay(r: &mut Runner) {
    for len in [16usize, 32] {
        let f = ReplayFilter::new(60, 1 << 20);
        let mut n = 0u64;
        let mut salt = vec![0u8; len];
        let mut next = move || {
            n += 1;
            salt[..8].copy_from_slice(&n.to_le_bytes());
            salt[8..16].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            salt.clone()
        };
        for _ in 0..100_000 {
            f.check_and_insert(&next(), 1_000);
        }
        r.case(
            "replay_insert",
            &format!("{len}B"),
            Some(Throughput::Elements(1)),
            || {
                black_box(f.check_and_insert(&next(), 1_000));
            },
        );
    }
}

fn main() {
    instr::main(&[gcra, replay]);
}
