//! Process and machine counters from /proc: CPU seconds (utime+stime of all threads, exited
//! threads included, as the kernel sums them in /proc/<pid>/stat), RSS, children, machine
//! busy time. Resolution is one clock tick (10 ms with USER_HZ = 100), which is why every
//! measured window moves enough bytes to burn at least a few hundred ticks of server CPU.

use std::fs;
use std::sync::OnceLock;

/// Clock ticks per second for /proc times (`getconf CLK_TCK`, 100 on Linux).
pub fn clk_tck() -> f64 {
    static T: OnceLock<f64> = OnceLock::new();
    *T.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|v| *v > 0.0)
            .unwrap_or(100.0)
    })
}

/// Fields after the `(comm)` of /proc/<pid>/stat (comm may contain spaces and parentheses).
fn stat_fields(pid: &str) -> Option<(String, Vec<String>)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let rest = s.get(close + 2..)?;
    Some((comm, rest.split_whitespace().map(str::to_string).collect()))
}

/// utime + stime of a process (all its threads, live and exited), in seconds.
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    let (_, f) = stat_fields(&pid.to_string())?;
    // After comm: state(0) ppid(1) … utime(11) stime(12).
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / clk_tck())
}

/// This process's own CPU seconds (the load generator and target).
/// CPU seconds of the load generator: this process, plus the helper client process of the
/// Vision suites (the shoes client) while one runs.
pub fn self_cpu_s() -> f64 {
    let helper = match LOADGEN_HELPER_PID.load(std::sync::atomic::Ordering::Relaxed) {
        0 => 0.0,
        pid => proc_cpu_s(pid).unwrap_or(0.0),
    };
    proc_cpu_s(std::process::id()).unwrap_or(0.0) + helper
}

/// Pid of a client-side helper process counted with the load generator (0 = none).
pub static LOADGEN_HELPER_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The process exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    stat_fields(&pid.to_string())
        .and_then(|(_, f)| f.first().cloned())
        .is_some_and(|st| st != "Z" && st != "X")
}

/// VmRSS in KiB.
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Direct children of `pid` (scan of /proc; no CONFIG_PROC_CHILDREN needed).
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let want = pid.to_string();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        let Ok(p) = n.parse::<u32>() else { continue };
        if let Some((comm, f)) = stat_fields(n) {
            if f.get(1).map(String::as_str) == Some(want.as_str()) {
                out.push((p, comm));
            }
        }
    }
    out
}

/// Busy seconds of the whole machine (all CPUs; everything but idle and iowait).
pub fn machine_busy_s() -> f64 {
    let Ok(s) = fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = s.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let busy: f64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy / clk_tck()
}

/// `/proc/loadavg` first three fields.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Number of CPUs this process may run on (Linux affinity mask).
pub fn allowed_cpus() -> Vec<usize> {
    let s = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = s
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .to_string();
    parse_cpu_list(&list)
}

/// "0-3,6" → [0, 1, 2, 3, 6].
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    v.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    v.push(a);
                }
            }
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// [0, 1, 2, 5] → "0,1,2,5" (what taskset -c takes).
pub fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6"), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list("1"), vec![1]);
        assert_eq!(cpu_list(&[0, 2]), "0,2");
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(proc_rss_kib(me).unwrap() > 0);
        assert!(proc_cpu_s(me).is_some());
        assert!(machine_busy_s() > 0.0);
    }
}
