//! Bounded local measurement (not a timed assertion): CPU-seconds per GB spent by the core
//! threads relaying 1 GiB through 127.0.0.1 on the copy path vs the splice path.
//! Run: `cargo test -p v2sp-dataplane --release --test dp_measure -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod dp_common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use dp_common::*;

/// utime+stime of this process's threads whose name starts with `v2sp-core` (USER_HZ = 100).
fn core_threads_cpu() -> f64 {
    let mut ticks = 0u64;
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(open) = stat.find('(') else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        if !stat[open + 1..close].starts_with("v2sp-core") {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        // fields after comm: state(0) ... utime is field 14 overall → index 11 here, stime 12
        ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    }
    ticks as f64 / 100.0
}

fn run(splice: bool, total: usize) -> (f64, f64) {
    let port = free_port();
    let h = Harness::start(config(vec![node(1, port)]), splice);
    h.backend.set_users(1, vec![user(1, 1, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dport = l.local_addr().unwrap().port();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut b = vec![0u8; 1 << 20];
        let mut n = 0usize;
        for _ in 0..10_000_000 {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        n
    });
    let mut c = connect_from("127.0.0.1".parse().unwrap(), port);
    c.write_all(&header(1, dport, 0)).unwrap();
    let chunk = vec![0xA5u8; 1 << 20];
    let cpu0 = core_threads_cpu();
    let t0 = Instant::now();
    for _ in 0..total / chunk.len() {
        c.write_all(&chunk).unwrap();
    }
    c.shutdown(Shutdown::Write).unwrap();
    let got = sink.join().unwrap();
    let wall = t0.elapsed().as_secs_f64();
    let cpu = core_threads_cpu() - cpu0;
    assert_eq!(got, total);
    let gb = total as f64 / 1e9;
    (cpu / gb, gb / wall)
}

#[test]
#[ignore = "measurement; run explicitly"]
fn dp_measure_copy_vs_splice_cpu_per_gb() {
    let total = 1 << 30;
    for splice in [false, true, false, true] {
        let (cpu_per_gb, gbps) = run(splice, total);
        println!(
            "{} path: {:.3} core-CPU-s/GB, {:.2} GB/s wall (1 GiB, 127.0.0.1, {})",
            if splice { "splice" } else { "copy  " },
            cpu_per_gb,
            gbps,
            std::env::var("V2SP_IO").unwrap_or_else(|_| "auto".into())
        );
    }
}
