//! The host's load as panels want it (spec `xboard-node-api.md` §2.6, §3.2): CPU percent since
//! the previous sample (`/proc/stat`), memory and swap (`/proc/meminfo`, used = total −
//! available), the root file system (statvfs), uptime and load averages. Bytes throughout.

use serde_json::{json, Map, Value};
use v2sp_shared::panel::{NodeStatus, UsedTotal};

/// CPU times of the previous sample, for the percentage between two samples.
#[derive(Debug, Default)]
pub struct HostStat {
    prev: Option<(u64, u64)>,
}

impl HostStat {
    /// One sample. The first call reports the CPU share since boot.
    pub fn sample(&mut self) -> NodeStatus {
        let proc_stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let cpu = cpu_times(&proc_stat).map_or(0.0, |(busy, total)| {
            let (pb, pt) = self.prev.unwrap_or((0, 0));
            self.prev = Some((busy, total));
            let (db, dt) = (busy.saturating_sub(pb), total.saturating_sub(pt));
            if dt == 0 {
                0.0
            } else {
                ((db as f64 / dt as f64) * 1000.0).round() / 10.0
            }
        });
        let kb = |key: &str| meminfo_kb(&meminfo, key).map(|v| v.saturating_mul(1024));
        let mem_total = kb("MemTotal:").unwrap_or(0);
        let mem_avail = kb("MemAvailable:").or_else(|| kb("MemFree:")).unwrap_or(0);
        let swap_total = kb("SwapTotal:").unwrap_or(0);
        let swap_free = kb("SwapFree:").unwrap_or(0);
        let (disk_total, disk_used) = crate::sys::disk_usage(std::path::Path::new("/")).unwrap_or((0, 0));
        NodeStatus {
            cpu: cpu.clamp(0.0, 100.0),
            mem: UsedTotal {
                total: mem_total,
                used: mem_total.saturating_sub(mem_avail),
            },
            swap: UsedTotal {
                total: swap_total,
                used: swap_total.saturating_sub(swap_free),
            },
            disk: UsedTotal {
                total: disk_total,
                used: disk_used,
            },
        }
    }
}

/// `report.metrics` / WS `node.status`: uptime (s) and load averages of the host, plus what
/// the caller adds (connections, users, WebSocket state).
pub fn metrics() -> Map<String, Value> {
    let mut m = Map::new();
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |f| f as u64);
    m.insert("uptime".into(), uptime.into());
    if let Some(l) = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| {
        let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    }) {
        m.insert("load".into(), json!({"load1": l.0, "load5": l.1, "load15": l.2}));
    }
    m.insert("kernel_status".into(), true.into());
    m
}

/// (busy, total) jiffies from the aggregate `cpu` line.
fn cpu_times(proc_stat: &str) -> Option<(u64, u64)> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest counted in user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn meminfo_kb(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(cpu_times("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1"), Some((20, 100)));
        assert_eq!(cpu_times("garbage"), None);
        assert_eq!(
            meminfo_kb("MemTotal:  2048 kB\nMemAvailable: 1024 kB", "MemAvailable:"),
            Some(1024)
        );
        let mut h = HostStat::default();
        let s = h.sample();
        assert!(s.mem.total > 0 && s.mem.used <= s.mem.total);
        assert!(s.disk.total > 0 && s.disk.used <= s.disk.total);
        assert!((0.0..=100.0).contains(&h.sample().cpu));
        assert!(metrics()["uptime"].as_u64().unwrap() > 0);
    }
}
