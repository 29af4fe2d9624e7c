//! `v2sp status`: what the data plane is doing, read from shared memory.

use std::path::Path;
use std::time::Duration;

use v2sp_shared::shm::{ControlShm, Status};

fn sample(dir: &Path) -> anyhow::Result<Status> {
    Ok(ControlShm::open_existing(dir)?.status())
}

pub fn print(dir: &Path, json: bool) -> anyhow::Result<()> {
    let a = sample(dir)?;
    std::thread::sleep(Duration::from_secs(1));
    let b = sample(dir)?;
    let sum = |s: &Status| {
        s.cores.iter().fold((0u64, 0u64), |t, c| {
            (t.0 + c.unharvested_up, t.1 + c.unharvested_down)
        })
    };
    let (ua, da) = sum(&a);
    let (ub, db) = sum(&b);
    // A harvest between the samples resets the counters; then the rate is unknown.
    let rate = (ub >= ua && db >= da).then(|| (ub - ua, db - da));
    let conns: u64 = b.cores.iter().map(|c| c.open_conns).sum();
    if json {
        let v = serde_json::json!({
            "control_pid": b.control_pid,
            "dataplane_pid": b.dataplane_pid,
            "dataplane_alive": b.dataplane_alive,
            "backend": match b.dataplane_backend { 1 => "io_uring", 2 => "epoll", _ => "unknown" },
            "config_gen": b.config_gen,
            "dataplane_config_gen": b.dataplane_config_gen,
            "nodes": b.nodes.iter().map(|(s, u)| serde_json::json!({"slot": s, "users": u})).collect::<Vec<_>>(),
            "connections": conns,
            "upload_bytes_per_s": rate.map(|r| r.0),
            "download_bytes_per_s": rate.map(|r| r.1),
            "cores": b.cores.iter().map(|c| serde_json::json!({"core": c.core, "running": c.running, "connections": c.open_conns, "accepted": c.accepted_total})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "data plane: {} (pid {}, {}), config gen {}/{}",
        if b.dataplane_alive {
            "running"
        } else {
            "NOT running"
        },
        b.dataplane_pid,
        match b.dataplane_backend {
            1 => "io_uring",
            2 => "epoll",
            _ => "backend unknown",
        },
        b.dataplane_config_gen,
        b.config_gen
    );
    println!(
        "nodes: {}",
        b.nodes
            .iter()
            .map(|(s, u)| format!("slot {s}: {u} users"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "connections: {conns} open on {} cores",
        b.cores.iter().filter(|c| c.running).count()
    );
    match rate {
        Some((u, d)) => println!("throughput: up {} B/s, down {} B/s", u, d),
        None => println!("throughput: (harvest during sampling; run again)"),
    }
    Ok(())
}
