//! User-table publish and lookup (issue requirement: 1M users publish in ≤ 200 ms).
//!
//! Wall-clock run (median is the number to report):
//!     CARGO_TARGET_DIR=... cargo bench -p v2sp-shared --bench publish
//!     cargo bench -p v2sp-shared --bench publish -- 'publish_users/1000000'
//!
//! Instruction-count mode for regression checks (deterministic, independent of machine load):
//! build the bench binary, then run one fixed iteration per case under callgrind with
//! criterion's `--profile-time` (which skips the analysis and just iterates):
//!     cargo bench -p v2sp-shared --bench publish --no-run      # prints the binary path
//!     valgrind --tool=callgrind --callgrind-out-file=/tmp/publish.cg \
//!         target/release/deps/publish-<hash> --bench --profile-time 1 'publish_users/100000'
//!     callgrind_annotate /tmp/publish.cg | head -30
//! Compare the "PROGRAM TOTALS" Ir between commits, normalised per iteration (callgrind
//! counts every iteration criterion ran within the profile time, so prefer
//! `V2SP_BENCH_ITERS=N`, which runs exactly N publishes of each size without criterion:
//!     V2SP_BENCH_ITERS=3 valgrind --tool=callgrind target/release/deps/publish-<hash> --bench
//! and divide by N).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
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

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish_users");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
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
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &users, |b, users| {
            b.iter(|| {
                let st = ctl
                    .publish_users(0, CredKind::VlessUuid, users, Duration::from_secs(1))
                    .unwrap();
                debug_assert!(!st.recreated_file);
                black_box(st)
            })
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
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
        g.bench_with_input(BenchmarkId::new("hit", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(view.lookup(black_box(probes[i])))
            })
        });
        let mut j = 0usize;
        g.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| {
                j = (j + 1) & 1023;
                black_box(view.lookup(black_box(misses[j].secret.as_slice())))
            })
        });
    }
    g.finish();
}

/// `V2SP_BENCH_ITERS=N`: exactly N publishes per size, no criterion (for callgrind).
fn fixed_iterations(iters: usize) {
    for n in SIZES {
        let users = vless_users(n, 1);
        let dir = shm_dir();
        let ctl = ControlShm::create_or_attach(dir.path()).unwrap();
        for _ in 0..2 + iters {
            black_box(
                ctl.publish_users(0, CredKind::VlessUuid, &users, Duration::from_secs(1))
                    .unwrap(),
            );
        }
    }
}

criterion_group!(benches, publish, lookup);

fn main() {
    if let Some(n) = std::env::var("V2SP_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        fixed_iterations(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
