//! User-table publish and lookup (issue requirement: 1M users publish in ≤ 200 ms).
//!
//! Wall-clock run (median is the number to report):
//!     CARGO_TARGET_DIR=... cargo bench -p v2sp-shared --bench publish
//!     cargo bench -p v2sp-shared --bench publish -- 'publish_users/1000000'
//!
//! Instruction-count mode (deterministic, independent of machine load): `scripts/instr-count.sh`
//! runs each case with `V2SP_BENCH_ITERS=N` (exactly N iterations, no criterion; see
//! `bench/benches/support/instr.rs`) under callgrind and prints instructions per iteration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../bench/benches/support/instr.rs"]
mod instr;

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::Throughput;
use instr::Runner;
use v2sp_shared::cred::{secret_for, CredKind};
use v2sp_shared::shm::{ControlShm, DataplaneShm, UserEntry};

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

/// Deterministic VLESS users: uuid strings → 16 secret bytes, computed once per size.
fn vless_users(n: usize, salt: u64) -> Vec<UserEntry> {
    (0..n as u64)
        .map(|i| {
            // splitmix64 so the uuids look random (the index must not see sequential keys).
            let a = mix(i ^ salt);
            let b = mix(a);
            let uuid = format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xfff,
                b >> 52,
                b & 0xffff_ffff_ffff
            );
            UserEntry {
                user_id: i as u32 + 1,
                secret: secret_for(CredKind::VlessUuid, &uuid).expect("valid uuid"),
                speed_limit_mbps: (i % 100) as u32,
                device_limit: (i % 7) as u32,
                alive_elsewhere: 0,
            }
        })
        .collect()
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn shm_dir() -> tempfile::TempDir {
    let base = Path::new("/dev/shm");
    if base.is_dir() {
        tempfile::Builder::new()
            .prefix("v2sp-bench-")
            .tempdir_in(base)
            .unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn publish(r: &mut Runner) {
    r.tune(10, Duration::from_secs(1), Duration::from_secs(5));
    for n in SIZES {
        let users = vless_users(n, 1);
        let dir = shm_dir();
        // No data plane attached: nothing to wait for, each publish alternates sides. Two
        // publishes first so both side files exist and are faulted in (steady state).
        let ctl = ControlShm::create_or_attach(dir.path()).unwrap();
        for _ in 0..2 {
            ctl.publish_users(0, CredKind::VlessUuid, &users, Duration::from_secs(1))
                .unwrap();
        }
        r.case(
            "publish_users",
            &n.to_string(),
            Some(Throughput::Elements(n as u64)),
            || {
                let st = ctl
                    .publish_users(0, CredKind::VlessUuid, &users, Duration::from_secs(1))
                    .unwrap();
                debug_assert!(!st.recreated_file);
                black_box(st);
            },
        );
    }
}

fn lookup(r: &mut Runner) {
    r.tune(30, Duration::from_millis(500), Duration::from_secs(2));
    for n in SIZES {
        let users = vless_users(n, 2);
        let misses = vless_users(1024, 3);
        let dir = shm_dir();
        let ctl = ControlShm::create_or_attach(dir.path()).unwrap();
        ctl.publish_users(0, CredKind::VlessUuid, &users, Duration::from_secs(1))
            .unwrap();
        let dp = DataplaneShm::attach(dir.path()).unwrap();
        let core = dp.core(0).unwrap();
        let view = core.users(0).unwrap();
        // Probe in a scrambled order so consecutive lookups do not share cache lines.
        let probes: Vec<&[u8]> = (0..4096u64)
            .map(|i| users[(mix(i) % n as u64) as usize].secret.as_slice())
            .collect();
        let mut i = 0usize;
        r.case("lookup", &format!("hit/{n}"), None, || {
            i = (i + 1) & 4095;
            black_box(view.lookup(black_box(probes[i])));
        });
        let mut j = 0usize;
        r.case("lookup", &format!("miss/{n}"), None, || {
            j = (j + 1) & 1023;
            black_box(view.lookup(black_box(misses[j].secret.as_slice())));
        });
    }
}

fn main() {
    instr::main(&[publish, lookup]);
}
