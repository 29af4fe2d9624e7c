//! The measured scenarios. Each is bounded in bytes (or count) and in time (`deadline`); a
//! scenario that hits its deadline is recorded with what it moved and flagged.
//!
//! | scenario | what | figures |
//! |---|---|---|
//! | `bulk`   | N connections download (or upload) B/N bytes each from the target | MB/s, server CPU-s/GB |
//! | `rate`   | C loops of connect → request + 1 B → 1 B echoed → close, for T s | conn/s, server CPU µs/conn |
//! | `latency`| one connection, 64 B ping-pong, K round trips (and the same direct) | p50/p90/p99/p99.9/max |
//! | `idle`   | N connections opened and held idle | server RSS (KiB) per connection |

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::conn::{Conn, Via};
use crate::procstat;
use crate::servers::Server;
use crate::target::{self, CMD_DOWNLOAD, CMD_IDLE, CMD_PING, CMD_UPLOAD};

/// Counters around one measured window.
pub struct Window {
    t0: Instant,
    server0: f64,
    self0: f64,
    machine0: f64,
}

/// CPU figures of one window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct WindowCpu {
    pub secs: f64,
    /// CPU seconds of the server under test (for v2sp: control plane + data plane).
    pub server_cpu_s: f64,
    /// CPU seconds of the bench process (load generator + target).
    pub client_cpu_s: f64,
    /// CPU seconds used by everything else on the machine during the window.
    pub other_cpu_s: f64,
}

impl WindowCpu {
    /// Average CPUs used by everything else during the window.
    pub fn other_load(&self) -> f64 {
        self.other_cpu_s / self.secs.max(1e-9)
    }
}

impl Window {
    pub fn start(server: Option<&mut Server>) -> Window {
        Window {
            t0: Instant::now(),
            server0: server.map(|s| s.cpu_s()).unwrap_or(0.0),
            self0: procstat::self_cpu_s(),
            machine0: procstat::machine_busy_s(),
        }
    }

    pub fn stop(&self, server: Option<&mut Server>) -> WindowCpu {
        let secs = self.t0.elapsed().as_secs_f64();
        let server_cpu_s = server.map(|s| s.cpu_s()).unwrap_or(0.0) - self.server0;
        let client_cpu_s = procstat::self_cpu_s() - self.self0;
        let machine = procstat::machine_busy_s() - self.machine0;
        WindowCpu {
            secs,
            server_cpu_s,
            client_cpu_s,
            other_cpu_s: (machine - server_cpu_s - client_cpu_s).max(0.0),
        }
    }
}

/// Probe a server: an echo whose content is checked, then a 1 MiB download and a 256 KiB
/// upload. This is the codec self-check (against ssserver it validates our client framing);
/// it is retried until `wait` passes to cover the server's start-up.
pub async fn probe(via: &Via, target: SocketAddr, wait: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        match probe_once(via, target).await {
            Ok(()) => return Ok(()),
            Err(e) if t.elapsed() >= wait => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn probe_once(via: &Via, target: SocketAddr) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let msg: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut first = target::request(CMD_PING, msg.len() as u64).to_vec();
        first.extend_from_slice(&msg);
        let mut c = Conn::open(via, target, &first).await?;
        if c.recv_exact(msg.len()).await? != msg {
            bail!("echo came back different");
        }
        c.send(&msg).await?;
        if c.recv_exact(msg.len()).await? != msg {
            bail!("second echo came back different");
        }
        drop(c);
        let n = 1 << 20;
        let mut c = Conn::open(via, target, &target::request(CMD_DOWNLOAD, n)).await?;
        c.drain(n).await?;
        drop(c);
        let n = 256 << 10;
        let mut c = Conn::open(via, target, &target::request(CMD_UPLOAD, n)).await?;
        // The bulk upload's piece size (64 KiB; more than rustls buffers once framed).
        c.send_filler(n, 64 << 10).await?;
        let got = c.recv_exact(8).await?;
        if got != n.to_be_bytes() {
            bail!("upload: target counted {got:?}, sent {n}");
        }
        Ok(())
    })
    .await
    .context("probe timed out")?
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BulkResult {
    pub conns: usize,
    pub upload: bool,
    pub bytes: u64,
    pub errors: u64,
    /// What the first failed connection said (None when none failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    pub timed_out: bool,
    pub cpu: WindowCpu,
}

impl BulkResult {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.cpu.secs.max(1e-9) / 1e6
    }
    pub fn cpu_s_per_gb(&self) -> f64 {
        self.cpu.server_cpu_s / (self.bytes as f64 / 1e9).max(1e-12)
    }
}

/// `conns` connections moving `total / conns` bytes each.
pub async fn bulk(
    via: &Via,
    target: SocketAddr,
    server: Option<&mut Server>,
    conns: usize,
    total: u64,
    upload: bool,
    deadline: Duration,
) -> BulkResult {
    let conns = conns.max(1);
    let per = (total / conns as u64).max(1);
    let mut server = server;
    let w = Window::start(server.as_deref_mut());
    let mut set = JoinSet::new();
    for _ in 0..conns {
        let via = via.clone();
        set.spawn(async move {
            let cmd = if upload { CMD_UPLOAD } else { CMD_DOWNLOAD };
            let mut c = Conn::open(&via, target, &target::request(cmd, per)).await?;
            if upload {
                c.send_filler(per, 64 << 10).await?;
                let got = c.recv_exact(8).await?;
                let mut a = [0u8; 8];
                a.copy_from_slice(&got);
                anyhow::Ok(u64::from_be_bytes(a))
            } else {
                c.drain(per).await
            }
        });
    }
    let mut r = BulkResult {
        conns,
        upload,
        ..Default::default()
    };
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(end, set.join_next()).await {
            Ok(Some(Ok(Ok(n)))) => r.bytes += n,
            Ok(Some(e)) => {
                r.errors += 1;
                if r.first_error.is_none() {
                    r.first_error = Some(match e {
                        Ok(Err(e)) => format!("{e:#}"),
                        Err(e) => format!("task: {e}"),
                        Ok(Ok(_)) => String::new(),
                    });
                }
            }
            Ok(None) => break,
            Err(_) => {
                r.timed_out = true;
                set.abort_all();
                break;
            }
        }
    }
    r.cpu = w.stop(server);
    r
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RateResult {
    pub concurrency: usize,
    pub ok: u64,
    pub errors: u64,
    pub cpu: WindowCpu,
}

impl RateResult {
    pub fn per_s(&self) -> f64 {
        self.ok as f64 / self.cpu.secs.max(1e-9)
    }
    pub fn server_us_per_conn(&self) -> f64 {
        self.cpu.server_cpu_s * 1e6 / (self.ok.max(1) as f64)
    }
}

/// `concurrency` loops of connect + 1 byte echoed + close for `secs`.
pub async fn rate(
    via: &Via,
    target: SocketAddr,
    server: Option<&mut Server>,
    concurrency: usize,
    secs: f64,
) -> RateResult {
    let mut server = server;
    let w = Window::start(server.as_deref_mut());
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let via = via.clone();
        set.spawn(async move {
            let (mut ok, mut err) = (0u64, 0u64);
            let mut first = target::request(CMD_PING, 1).to_vec();
            first.push(b'x');
            while Instant::now() < stop {
                let one = tokio::time::timeout(Duration::from_secs(2), async {
                    let mut c = Conn::open(&via, target, &first).await?;
                    c.recv_exact(1).await?;
                    anyhow::Ok(())
                })
                .await;
                match one {
                    Ok(Ok(())) => ok += 1,
                    _ => {
                        err += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (ok, err)
        });
    }
    let mut r = RateResult {
        concurrency,
        ..Default::default()
    };
    while let Some(j) = set.join_next().await {
        if let Ok((ok, err)) = j {
            r.ok += ok;
            r.errors += err;
        }
    }
    r.cpu = w.stop(server);
    r
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// CPUs busy outside the server and the bench during the window (0 when not measured).
    pub other_load_cpus: f64,
}

pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    let us = |ns: u64| ns as f64 / 1000.0;
    LatencySummary {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        other_load_cpus: 0.0,
    }
}

/// 1 ns … 60 s, 3 significant digits.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| anyhow::anyhow!("histogram: {e}"))
}

/// `count` round trips of `size`-byte messages on one connection (after 10% warm-up), bounded
/// by `deadline`. Returns round-trip times in ns.
pub async fn latency(
    via: &Via,
    target: SocketAddr,
    size: usize,
    count: usize,
    deadline: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let mut h = new_histogram()?;
    let msg = vec![0x3c_u8; size.max(1)];
    let mut c = Conn::open(via, target, &target::request(CMD_PING, msg.len() as u64)).await?;
    let stop = Instant::now() + deadline;
    let warm = count / 10;
    for i in 0..count + warm {
        if Instant::now() > stop {
            break;
        }
        let t = Instant::now();
        c.send(&msg).await?;
        c.recv_exact(msg.len()).await?;
        let ns = t.elapsed().as_nanos() as u64;
        if i >= warm {
            h.saturating_record(ns.max(1));
        }
    }
    Ok(h)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct IdleResult {
    pub conns: usize,
    pub opened: usize,
    pub rss_before_kib: u64,
    /// RSS once the first half of the connections is open.
    pub rss_half_kib: u64,
    /// Connections open at that point.
    pub opened_half: usize,
    pub rss_after_kib: u64,
}

impl IdleResult {
    /// Average over all connections, one-time costs included (first-use pools, the registry's
    /// hash table growth, runtime slab pages, allocator segments).
    pub fn kib_per_conn(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / (self.opened.max(1) as f64)
    }
    /// What one more connection costs: the RSS slope over the second half. Steadier than
    /// the average, whose one-time costs move RSS in allocator-segment steps.
    pub fn marginal_kib_per_conn(&self) -> f64 {
        let n = self.opened.saturating_sub(self.opened_half).max(1) as f64;
        (self.rss_after_kib as f64 - self.rss_half_kib as f64) / n
    }
}

/// Open `n` proxied connections (each has reached the target and had its 1-byte answer),
/// hold them, and read the server's RSS before and after.
pub async fn idle(
    via: &Via,
    target: SocketAddr,
    server: &mut Server,
    n: usize,
    deadline: Duration,
) -> IdleResult {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before_kib = server.rss_kib();
    let mut conns = Vec::with_capacity(n);
    let stop = tokio::time::Instant::now() + deadline;
    let batch = 32;
    let mut left = n;
    let (mut rss_half_kib, mut opened_half) = (rss_before_kib, 0);
    while left > 0 && tokio::time::Instant::now() < stop {
        if opened_half == 0 && conns.len() >= n / 2 && !conns.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            rss_half_kib = server.rss_kib();
            opened_half = conns.len();
        }
        let k = left.min(batch);
        let mut set = JoinSet::new();
        for _ in 0..k {
            let via = via.clone();
            set.spawn(async move {
                let mut c = Conn::open(&via, target, &target::request(CMD_IDLE, 0)).await?;
                c.recv_exact(1).await?;
                anyhow::Ok(c)
            });
        }
        while let Ok(Some(j)) = tokio::time::timeout_at(stop, set.join_next()).await {
            if let Ok(Ok(c)) = j {
                conns.push(c);
            }
        }
        left -= k;
    }
    // Let the server settle (buffers returned to pools, lazy frees).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after_kib = server.rss_kib();
    let opened = conns.len();
    drop(conns);
    IdleResult {
        conns: n,
        opened,
        rss_before_kib,
        rss_half_kib,
        opened_half,
        rss_after_kib,
    }
}
