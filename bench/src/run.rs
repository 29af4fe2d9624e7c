//! The side-by-side runner: for every worker count, cipher and round, each server in turn
//! (the order rotates every round, so no server always runs first or last), started fresh,
//! probed, measured, stopped. Only one server runs at a time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::front_process::FrontProcess;
use crate::client::Suite;
use crate::conn::Via;
use crate::scenarios::{self, BulkResult, IdleResult, LatencySummary, RateResult};
use crate::servers::{Binaries, Server, ServerKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    Bulk,
    Rate,
    Latency,
    Idle,
}

impl Scenario {
    pub fn parse(s: &str) -> anyhow::Result<Scenario> {
        Ok(match s.trim() {
            "bulk" => Scenario::Bulk,
            "rate" => Scenario::Rate,
            "latency" => Scenario::Latency,
            "idle" => Scenario::Idle,
            o => anyhow::bail!("unknown scenario {o:?} (bulk, rate, latency, idle)"),
        })
    }
}

/// What to run. The first cipher is the headline: every scenario runs on it; the other
/// Shadowsocks methods get one bulk download at `other_conns` connections (for the CPU-s/GB per
/// cipher chart); `trojan-tls` and `vless-tls` get that bulk download plus the idle and rate
/// scenarios (when selected). Each suite runs on the servers that speak it.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub quick: bool,
    #[serde(skip)]
    pub ciphers: Vec<Suite>,
    pub cipher_names: Vec<String>,
    #[serde(skip)]
    pub servers: Vec<ServerKind>,
    #[serde(skip)]
    pub scenarios: Vec<Scenario>,
    pub rounds: usize,
    pub workers: Vec<usize>,
    pub bulk_conns: Vec<usize>,
    pub bulk_bytes: u64,
    pub other_conns: usize,
    pub other_bulk_bytes: u64,
    pub upload: bool,
    pub rate_secs: f64,
    pub rate_concurrency: usize,
    pub latency_count: usize,
    pub latency_size: usize,
    pub idle_conns: usize,
    pub deadline_s: u64,
    /// taskset list for the server per worker count (None = unpinned).
    pub server_cpus: BTreeMap<usize, Option<String>>,
    pub client_cpus: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "scenario", rename_all = "lowercase")]
pub enum Measure {
    Bulk(BulkResult),
    Rate(RateResult),
    Latency(LatencySummary),
    Idle(IdleResult),
}

#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub cipher: String,
    pub server: String,
    pub workers: usize,
    pub round: usize,
    #[serde(flatten)]
    pub m: Measure,
}

/// Everything a run produced.
#[derive(Default)]
pub struct Outcome {
    pub records: Vec<Record>,
    /// Round-trip histograms merged over rounds, by (cipher, server, workers).
    pub hists: BTreeMap<(String, String, usize), Histogram<u64>>,
    /// Things that went wrong (failed probes, errors, time-outs, data-plane restarts).
    pub problems: Vec<String>,
}

impl Outcome {
    fn push(&mut self, cipher: &str, server: &str, workers: usize, round: usize, m: Measure) {
        self.records.push(Record {
            cipher: cipher.into(),
            server: server.into(),
            workers,
            round,
            m,
        });
    }

    fn add_hist(&mut self, key: (String, String, usize), h: &Histogram<u64>) {
        match self.hists.get_mut(&key) {
            Some(a) => {
                let _ = a.add(h);
            }
            None => {
                self.hists.insert(key, h.clone());
            }
        }
    }
}

fn log(msg: &str) {
    eprintln!("[v2sp-bench {}] {msg}", crate::report::clock_hms());
}

pub async fn run(plan: &Plan, bins: &Binaries) -> anyhow::Result<Outcome> {
    let target = crate::target::start().await?;
    // The Vision suites' destination: the same target behind TLS 1.3.
    let mut tls_target = None;
    for v in plan.ciphers.iter().filter_map(|c| c.vision()) {
        let a = match tls_target {
            Some(a) => a,
            None => crate::target::start_tls(v.tls.server.clone()).await?,
        };
        v.set_target(a);
        tls_target = Some(a);
    }
    let mut out = Outcome::default();
    let deadline = Duration::from_secs(plan.deadline_s);
    for &w in &plan.workers {
        let cpus = plan.server_cpus.get(&w).cloned().flatten();
        for (ci, suite) in plan.ciphers.iter().enumerate() {
            // The headline is the first non-Vision suite; a Vision suite gets its bulk download
            // only (through the shoes client).
            let headline = plan.ciphers.iter().position(|c| !c.through_client()) == Some(ci);
            let suite_target = match suite.vision() {
                Some(v) => v.target()?,
                None => target,
            };
            let name = suite.name();
            let kinds: Vec<ServerKind> = plan.servers.iter().copied().filter(|k| k.serves(suite)).collect();
            for round in 0..plan.rounds {
                if headline && plan.scenarios.contains(&Scenario::Latency) {
                    let win = scenarios::Window::start(None);
                    match scenarios::latency(
                        &Via::Direct,
                        target,
                        plan.latency_size,
                        plan.latency_count,
                        deadline,
                    )
                    .await
                    {
                        Ok(h) => {
                            let mut sum = scenarios::summarize(&h);
                            sum.other_load_cpus = win.stop(None).other_load();
                            out.push(name, "direct", w, round, Measure::Latency(sum));
                            out.add_hist((name.into(), "direct".into(), w), &h);
                        }
                        Err(e) => out.problems.push(format!("direct latency: {e:#}")),
                    }
                }
                let n = kinds.len();
                for k in 0..n {
                    let kind = kinds[(k + round) % n];
                    log(&format!("workers {w} {name} round {round} {}", kind.label()));
                    if let Err(e) = one_server(
                        plan,
                        bins,
                        &mut out,
                        suite,
                        kind,
                        w,
                        cpus.as_deref(),
                        round,
                        headline,
                        suite_target,
                    )
                    .await
                    {
                        out.problems.push(format!(
                            "{name} {} round {round} (workers {w}): {e:#}",
                            kind.label()
                        ));
                        log(&format!("FAILED: {e:#}"));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The client process in front of the load generator, if any (held only to be killed on drop).
#[allow(dead_code)]
enum Helper {
    None,
    Front(FrontProcess),
}

#[allow(clippy::too_many_arguments)]
async fn one_server(
    plan: &Plan,
    bins: &Binaries,
    out: &mut Outcome,
    suite: &Suite,
    kind: ServerKind,
    w: usize,
    cpus: Option<&str>,
    round: usize,
    headline: bool,
    target: SocketAddr,
) -> anyhow::Result<()> {
    let mut srv = Server::start(kind, suite, bins, w, cpus)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Vision: the real shoes client in front of the load generator (on its CPUs); the QUIC
    // suites: the real sing-box client, once the server's QUIC socket is bound; `X@sing-box`:
    // the sing-box client speaking X; XHTTP: the real Xray client.
    let sing_box = |out: anyhow::Result<serde_json::Value>| {
        out.and_then(|out| crate::client::sing_box::start(&bins.singbox, out, srv.dir(), threads))
            .map(|c| {
                (
                    Via::Socks {
                        socks: c.socks,
                        tls: None,
                    },
                    Helper::Front(c),
                )
            })
    };
    let started = match (suite.vision(), suite) {
        (Some(v), _) => {
            crate::client::vision::start_shoes_client(&bins.shoes, v, srv.port, srv.dir(), threads).map(|c| {
                (
                    Via::Socks {
                        socks: c.socks,
                        tls: Some(v.tls.clone()),
                    },
                    Helper::Front(c),
                )
            })
        }
        (None, Suite::Quic(q, t)) => sing_box(
            crate::client::quic::wait_udp(srv.port, Duration::from_secs(30))
                .map(|()| q.client_outbound(t, srv.port)),
        ),
        (None, Suite::SingBox(f)) => sing_box(crate::client::front::outbound(&f.inner, srv.port)),
        (None, Suite::Xhttp(m, _)) => crate::client::xhttp::start_xray_client(
            &bins.xray,
            m.client_outbound(srv.port),
            srv.dir(),
            threads,
        )
        .map(|c| {
            (
                Via::Socks {
                    socks: c.socks,
                    tls: None,
                },
                Helper::Front(c),
            )
        }),
        (None, _) => Ok((
            Via::Proxy {
                addr: srv.addr(),
                suite: suite.clone(),
            },
            Helper::None,
        )),
    };
    let (via, client) = match started {
        Ok(x) => x,
        Err(e) => {
            let tail = srv.log_tail();
            srv.stop();
            return Err(e.context(format!("server log tail:\n{tail}")));
        }
    };
    let res = measure(plan, out, suite, &mut srv, &via, w, round, headline, target).await;
    drop(client);
    if srv.kind.is_v2sp() && srv.dataplane_restarted() {
        out.problems.push(format!(
            "{} {}: the data plane restarted during the run (its CPU before the restart is lost)",
            suite.name(),
            kind.label()
        ));
    }
    let tail = srv.log_tail();
    let alive = srv.alive();
    srv.stop();
    if !alive {
        out.problems
            .push(format!("{} exited during the run; log:\n{tail}", kind.label()));
    }
    res.map_err(|e| anyhow::anyhow!("{e:#}\nserver log tail:\n{tail}"))
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    plan: &Plan,
    out: &mut Outcome,
    suite: &Suite,
    srv: &mut Server,
    via: &Via,
    w: usize,
    round: usize,
    headline: bool,
    target: SocketAddr,
) -> anyhow::Result<()> {
    let via = via.clone();
    scenarios::probe(&via, target, Duration::from_secs(20))
        .await
        .context("start-up probe")?;
    // v2sp: wait until the data plane child shows up in /proc (it serves before we look).
    for _ in 0..100 {
        if srv.has_all_processes() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cipher = suite.name();
    let label = srv.kind.label();
    let deadline = Duration::from_secs(plan.deadline_s);
    let problem = |out: &mut Outcome, what: String| {
        out.problems
            .push(format!("{cipher} {label} round {round}: {what}"))
    };
    if !headline && !suite.is_ss() && !suite.through_client() {
        // Trojan / VLESS: idle memory, connection rate (TLS handshake included) and the one
        // bulk download for the CPU-s/GB table.
        if plan.scenarios.contains(&Scenario::Idle) {
            let r = scenarios::idle(&via, target, srv, plan.idle_conns, deadline).await;
            if r.opened < r.conns {
                problem(out, format!("idle: opened {} of {}", r.opened, r.conns));
            }
            out.push(cipher, label, w, round, Measure::Idle(r));
        }
        if plan.scenarios.contains(&Scenario::Rate) {
            let r = scenarios::rate(&via, target, Some(srv), plan.rate_concurrency, plan.rate_secs).await;
            if r.errors > 0 {
                problem(
                    out,
                    format!("rate: {} failed connections of {}", r.errors, r.errors + r.ok),
                );
            }
            out.push(cipher, label, w, round, Measure::Rate(r));
        }
    }
    if suite.xhttp().is_some() && plan.scenarios.contains(&Scenario::Idle) {
        // XHTTP: idle sessions (each connection through the Xray client is one session).
        let r = scenarios::idle(&via, target, srv, plan.idle_conns, deadline).await;
        if r.opened < r.conns {
            problem(out, format!("idle: opened {} of {}", r.opened, r.conns));
        }
        out.push(cipher, label, w, round, Measure::Idle(r));
    }
    if !headline {
        // Both directions for every suite: uploads are where a server's read path shows.
        other_bulk(plan, out, &via, target, srv, false, (cipher, label, w, round)).await;
        if plan.upload {
            other_bulk(plan, out, &via, target, srv, true, (cipher, label, w, round)).await;
        }
        // Through the real client, small-message latency too (what a user's chat or game
        // sees): the p50 table compares servers per suite.
        if matches!(suite, Suite::SingBox(_)) && plan.scenarios.contains(&Scenario::Latency) {
            latency(plan, out, &via, target, srv, (cipher, label, w, round)).await?;
        }
        return Ok(());
    }
    if plan.scenarios.contains(&Scenario::Idle) {
        let r = scenarios::idle(&via, target, srv, plan.idle_conns, deadline).await;
        if r.opened < r.conns {
            problem(out, format!("idle: opened {} of {}", r.opened, r.conns));
        }
        out.push(cipher, label, w, round, Measure::Idle(r));
    }
    if plan.scenarios.contains(&Scenario::Latency) {
        latency(plan, out, &via, target, srv, (cipher, label, w, round)).await?;
    }
    if plan.scenarios.contains(&Scenario::Rate) {
        let r = scenarios::rate(&via, target, Some(srv), plan.rate_concurrency, plan.rate_secs).await;
        if r.errors > 0 {
            problem(
                out,
                format!("rate: {} failed connections of {}", r.errors, r.errors + r.ok),
            );
        }
        out.push(cipher, label, w, round, Measure::Rate(r));
    }
    if plan.scenarios.contains(&Scenario::Bulk) {
        for &c in &plan.bulk_conns {
            let r = scenarios::bulk(&via, target, Some(srv), c, plan.bulk_bytes, false, deadline).await;
            if r.errors > 0 || r.timed_out {
                problem(
                    out,
                    format!(
                        "bulk {c} conns: {} errors{}, timed out: {}",
                        r.errors,
                        first_error(&r),
                        r.timed_out
                    ),
                );
            }
            out.push(cipher, label, w, round, Measure::Bulk(r));
        }
        if plan.upload {
            other_bulk(plan, out, &via, target, srv, true, (cipher, label, w, round)).await;
        }
    }
    Ok(())
}

/// The latency scenario, recorded (summary and histogram) under `(suite, server, workers,
/// round)`.
async fn latency(
    plan: &Plan,
    out: &mut Outcome,
    via: &Via,
    target: SocketAddr,
    srv: &mut Server,
    (cipher, label, w, round): (&str, &str, usize, usize),
) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(plan.deadline_s);
    let win = scenarios::Window::start(Some(&mut *srv));
    let h = scenarios::latency(via, target, plan.latency_size, plan.latency_count, deadline)
        .await
        .context("latency")?;
    let mut sum = scenarios::summarize(&h);
    sum.other_load_cpus = win.stop(Some(&mut *srv)).other_load();
    out.push(cipher, label, w, round, Measure::Latency(sum));
    out.add_hist((cipher.into(), label.into(), w), &h);
    Ok(())
}

/// One bulk transfer at the size every suite gets (`other_conns`, `other_bulk_bytes`), in
/// `upload` direction, recorded under `(suite, server, workers, round)`.
async fn other_bulk(
    plan: &Plan,
    out: &mut Outcome,
    via: &Via,
    target: SocketAddr,
    srv: &mut Server,
    upload: bool,
    (cipher, label, w, round): (&str, &str, usize, usize),
) {
    let deadline = Duration::from_secs(plan.deadline_s);
    let r = scenarios::bulk(
        via,
        target,
        Some(srv),
        plan.other_conns,
        plan.other_bulk_bytes,
        upload,
        deadline,
    )
    .await;
    if r.errors > 0 || r.timed_out {
        let what = if upload { "bulk upload" } else { "bulk" };
        out.problems.push(format!(
            "{cipher} {label} round {round}: {what}: {} errors{}, timed out: {}",
            r.errors,
            first_error(&r),
            r.timed_out
        ));
    }
    out.push(cipher, label, w, round, Measure::Bulk(r));
}

/// ` (first: …)` with the first failed connection's error, if any.
fn first_error(r: &BulkResult) -> String {
    r.first_error
        .as_deref()
        .map(|e| format!(" (first: {e})"))
        .unwrap_or_default()
}
