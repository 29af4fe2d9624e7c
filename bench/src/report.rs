//! The markdown report and its SVG charts, written under `results/<timestamp>/`:
//! `report.md`, `results.json` (every record), `throughput-<cipher>.svg`, `latency-cdf.svg`,
//! `cpu-per-gb.svg`. Every figure is the median over rounds with [min–max].

use std::fmt::Write as _;
use std::path::Path;

use crate::client::anytls::ANYTLS;
use crate::client::hysteria2::HYSTERIA2;
use crate::client::quic::Quic;
use crate::client::vision::{REALITY_VISION, TLS_VISION};
use crate::client::vmess::{VMESS, VMESS_TLS};
use crate::client::xhttp::XhttpMode;
use crate::client::{TROJAN_TLS, VLESS_TLS};
use crate::run::{Measure, Outcome, Plan, Record, Scenario};
use crate::svg::{self, Series};

/// UTC wall clock as `HH:MM:SS` (log lines).
pub fn clock_hms() -> String {
    let s = unix_secs();
    format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60)
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// UTC date from days since 1970-01-01 (H. Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYYMMDD-HHMMSS` (UTC), the results directory name.
pub fn timestamp() -> String {
    let s = unix_secs();
    let (y, m, d) = civil((s / 86_400) as i64);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

pub fn utc_string() -> String {
    utc_of(unix_secs())
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a unix time.
pub fn utc_of(s: u64) -> String {
    let (y, m, d) = civil((s / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

/// Median, min, max.
pub fn mmm(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((med, v[0], v[n - 1]))
}

fn fmt_mmm(x: Option<(f64, f64, f64)>, prec: usize) -> String {
    match x {
        None => "–".into(),
        Some((m, a, b)) if (a - b).abs() < f64::EPSILON => format!("{m:.prec$}"),
        Some((m, a, b)) => format!("{m:.prec$} [{a:.prec$}–{b:.prec$}]"),
    }
}

fn ratio(a: Option<(f64, f64, f64)>, b: Option<(f64, f64, f64)>) -> String {
    match (a, b) {
        (Some((a, _, _)), Some((b, _, _))) if b != 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

pub struct Env {
    pub git: String,
    pub load_before: String,
    pub load_after: String,
    pub started: String,
    pub finished: String,
    pub wall_s: f64,
    pub command: String,
    /// One line per server binary: path, version or build time.
    pub binaries: Vec<String>,
}

pub fn git_describe() -> String {
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = std::process::Command::new("git")
        .args([
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "shared",
            "dataplane",
            "controlplane",
        ])
        .output()
        .ok()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{rev} + uncommitted changes in shared/dataplane/controlplane")
    } else {
        rev
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    format!(
        "{} CPUs ({}), kernel {}, {}",
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(1),
        model,
        kernel.trim(),
        mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    )
}

struct View<'a> {
    recs: &'a [Record],
    w: usize,
}

impl View<'_> {
    fn bulk(
        &self,
        cipher: &str,
        server: &str,
        conns: usize,
        upload: bool,
        f: impl Fn(&crate::scenarios::BulkResult) -> f64,
    ) -> Option<(f64, f64, f64)> {
        mmm(self
            .recs
            .iter()
            .filter(|r| r.workers == self.w && r.cipher == cipher && r.server == server)
            .filter_map(|r| match &r.m {
                Measure::Bulk(b) if b.conns == conns && b.upload == upload && b.bytes > 0 => Some(f(b)),
                _ => None,
            })
            .collect())
    }

    fn rate(
        &self,
        cipher: &str,
        server: &str,
        f: impl Fn(&crate::scenarios::RateResult) -> f64,
    ) -> Option<(f64, f64, f64)> {
        mmm(self
            .recs
            .iter()
            .filter(|r| r.workers == self.w && r.cipher == cipher && r.server == server)
            .filter_map(|r| match &r.m {
                Measure::Rate(x) => Some(f(x)),
                _ => None,
            })
            .collect())
    }

    fn lat(
        &self,
        cipher: &str,
        server: &str,
        f: impl Fn(&crate::scenarios::LatencySummary) -> f64,
    ) -> Option<(f64, f64, f64)> {
        mmm(self
            .recs
            .iter()
            .filter(|r| r.workers == self.w && r.cipher == cipher && r.server == server)
            .filter_map(|r| match &r.m {
                Measure::Latency(x) => Some(f(x)),
                _ => None,
            })
            .collect())
    }

    fn idle(
        &self,
        cipher: &str,
        server: &str,
        f: impl Fn(&crate::scenarios::IdleResult) -> f64,
    ) -> Option<(f64, f64, f64)> {
        mmm(self
            .recs
            .iter()
            .filter(|r| r.workers == self.w && r.cipher == cipher && r.server == server)
            .filter_map(|r| match &r.m {
                Measure::Idle(x) => Some(f(x)),
                _ => None,
            })
            .collect())
    }
}

/// Ratio columns: each v2sp backend against each peer that ran.
fn ratio_pairs(servers: &[String]) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for a in servers.iter().filter(|s| s.starts_with("v2sp")) {
        for b in servers.iter().filter(|s| !s.starts_with("v2sp")) {
            v.push((a.clone(), b.clone()));
        }
    }
    v
}

/// One table row: each server's figure (`prec` decimals), then each pair's ratio.
fn row_with_ratios(
    vals: &[Option<(f64, f64, f64)>],
    servers: &[String],
    pairs: &[(String, String)],
    prec: usize,
) -> Vec<String> {
    let at = |name: &String| servers.iter().position(|x| x == name).unwrap_or(0);
    let mut row: Vec<String> = vals.iter().map(|x| fmt_mmm(*x, prec)).collect();
    for (a, b) in pairs {
        row.push(ratio(vals[at(a)], vals[at(b)]));
    }
    row
}

fn header_row(s: &mut String, first: &str, cols: &[String]) {
    let _ = writeln!(s, "| {first} | {} |", cols.join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(cols.len()));
}

/// Issue 5's target for the Vision suites: v2sp's server CPU-s/GB at most this times shoes'.
pub const VISION_TARGET: f64 = 0.8;

/// VLESS + Vision (REALITY / TLS) through the shoes client with TLS 1.3 inside: each v2sp
/// backend against the shoes server, with the target.
fn vision_section(s: &mut String, v: &View, plan: &Plan, servers: &[String]) {
    let vision: Vec<&String> = plan
        .cipher_names
        .iter()
        .filter(|c| c.as_str() == REALITY_VISION || c.as_str() == TLS_VISION)
        .collect();
    if vision.is_empty() || !servers.iter().any(|x| x == "shoes") {
        return;
    }
    let _ = writeln!(
        s,
        "### VLESS + Vision vs shoes (TLS 1.3 inside the tunnel, {} connections, download)\n",
        plan.other_conns
    );
    let _ = writeln!(s, "The load generator speaks TLS 1.3 (rustls) to the bench's TLS target through the real shoes client (SOCKS5 in, VLESS + Vision over REALITY/TLS out, on the load generator's CPUs and counted with it), so Vision switches to direct copy after the inner handshake on every server. Only the server's CPU is counted. Target (issue 5): v2sp ≤ {VISION_TARGET}× shoes' server CPU-s/GB.\n");
    let v2sp: Vec<&String> = servers.iter().filter(|x| x.starts_with("v2sp")).collect();
    let mut cols: Vec<String> = Vec::new();
    for srv in v2sp.iter().copied().chain(std::iter::once(&"shoes".to_string())) {
        cols.push(format!("{srv} CPU-s/GB"));
    }
    for srv in v2sp.iter().copied().chain(std::iter::once(&"shoes".to_string())) {
        cols.push(format!("{srv} MB/s"));
    }
    for a in &v2sp {
        cols.push(format!("{a} / shoes (target ≤ {VISION_TARGET})"));
    }
    header_row(s, "method", &cols);
    for c in vision {
        let cpu = |srv: &str| v.bulk(c, srv, plan.other_conns, false, |b| b.cpu_s_per_gb());
        let mbs = |srv: &str| v.bulk(c, srv, plan.other_conns, false, |b| b.mb_per_s());
        let mut row: Vec<String> = Vec::new();
        for srv in v2sp.iter().map(|x| x.as_str()).chain(std::iter::once("shoes")) {
            row.push(fmt_mmm(cpu(srv), 3));
        }
        for srv in v2sp.iter().map(|x| x.as_str()).chain(std::iter::once("shoes")) {
            row.push(fmt_mmm(mbs(srv), 0));
        }
        let shoes = cpu("shoes");
        for a in &v2sp {
            let r = match (cpu(a), shoes) {
                (Some((x, _, _)), Some((y, _, _))) if y > 0.0 => {
                    let q = x / y;
                    format!(
                        "{q:.2}× {}",
                        if q <= VISION_TARGET { "met" } else { "**not met**" }
                    )
                }
                _ => "–".into(),
            };
            row.push(r);
        }
        let _ = writeln!(s, "| {c} | {} |", row.join(" | "));
    }
    let _ = writeln!(s);
}

/// Small-message latency through the real sing-box client: p50 round trip per suite and
/// server, with each pair's ratio (the "p50 echo, v2sp ÷ best peer").
fn front_latency_section(
    s: &mut String,
    v: &View,
    plan: &Plan,
    servers: &[String],
    pairs: &[(String, String)],
) {
    let rows: Vec<&String> = plan
        .cipher_names
        .iter()
        .filter(|c| c.ends_with(crate::client::front::SUFFIX))
        .filter(|c| servers.iter().any(|srv| v.lat(c, srv, |x| x.p50_us).is_some()))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "### Latency through the sing-box client: p50 round trip of {} B (µs)\n",
        plan.latency_size
    );
    let mut cols: Vec<String> = servers.to_vec();
    cols.extend(pairs.iter().map(|(a, b)| format!("{a} / {b}")));
    header_row(s, "method", &cols);
    for c in rows {
        let vals: Vec<_> = servers.iter().map(|srv| v.lat(c, srv, |x| x.p50_us)).collect();
        let row = row_with_ratios(&vals, servers, pairs, 0);
        let _ = writeln!(s, "| {c} | {} |", row.join(" | "));
    }
    let _ = writeln!(s);
}

/// The QUIC suites (Hysteria 2, TUIC) through the sing-box client: server CPU-s/GB and MB/s
/// per server, download and upload, then each v2sp backend ÷ each peer.
fn quic_section(s: &mut String, v: &View, plan: &Plan, servers: &[String], pairs: &[(String, String)]) {
    for q in Quic::ALL {
        let c = q.name();
        if !plan.cipher_names.iter().any(|x| x == c) {
            continue;
        }
        let served: Vec<&String> = servers
            .iter()
            .filter(|x| x.starts_with("v2sp") || *x == "sing-box" || *x == "shoes")
            .collect();
        let _ = writeln!(
            s,
            "### {} (QUIC) through the sing-box client ({} connections, both directions)\n",
            q.title(),
            plan.other_conns
        );
        let _ = writeln!(s, "The load generator speaks plain TCP to the target through the real sing-box client (SOCKS5 in, `{c}` out over QUIC, on the load generator's CPUs and counted with it); every connection is one stream of the client's single QUIC connection. Only the server's CPU is counted; MB/s is mostly the client's limit.\n");
        type BF = fn(&crate::scenarios::BulkResult) -> f64;
        let cols: [(&str, bool, usize, BF); 4] = [
            ("download CPU-s/GB", false, 3, |b| b.cpu_s_per_gb()),
            ("download MB/s", false, 0, |b| b.mb_per_s()),
            ("upload CPU-s/GB", true, 3, |b| b.cpu_s_per_gb()),
            ("upload MB/s", true, 0, |b| b.mb_per_s()),
        ];
        let fig =
            |srv: &str, (_, up, _, f): &(&str, bool, usize, BF)| v.bulk(c, srv, plan.other_conns, *up, f);
        let names: Vec<String> = cols.iter().map(|x| x.0.to_string()).collect();
        header_row(s, "server", &names);
        for srv in &served {
            let row: Vec<String> = cols.iter().map(|col| fmt_mmm(fig(srv, col), col.2)).collect();
            let _ = writeln!(s, "| {srv} | {} |", row.join(" | "));
        }
        for (a, b) in pairs.iter().filter(|(_, b)| served.contains(&b)) {
            let row: Vec<String> = cols.iter().map(|col| ratio(fig(a, col), fig(b, col))).collect();
            let _ = writeln!(s, "| {a} / {b} | {} |", row.join(" | "));
        }
        let _ = writeln!(s);
    }
}

/// Issue 13's target for the XHTTP suites: v2sp's server CPU-s/GB at most this times Xray's.
pub const XHTTP_TARGET: f64 = 0.6;

/// VLESS + XHTTP (packet-up, stream-up) through the Xray client: per server, CPU-s/GB and MB/s
/// both ways and idle RSS per session; then each v2sp backend ÷ Xray, with issue 13's target
/// on the CPU columns.
fn xhttp_section(s: &mut String, v: &View, plan: &Plan, servers: &[String]) {
    let modes: Vec<XhttpMode> = XhttpMode::ALL
        .into_iter()
        .filter(|m| plan.cipher_names.iter().any(|x| x == m.name()))
        .collect();
    if modes.is_empty() {
        return;
    }
    let served: Vec<&String> = servers
        .iter()
        .filter(|x| x.starts_with("v2sp") || *x == "xray")
        .collect();
    let _ = writeln!(
        s,
        "### VLESS + XHTTP over TLS through the Xray client ({} connections = sessions for bulk, both directions; {} idle sessions)\n",
        plan.other_conns, plan.idle_conns
    );
    let _ = writeln!(s, "The load generator speaks plain TCP to the target through the real Xray client (SOCKS5 in, VLESS over XHTTP over TLS (HTTP/2) out, on the load generator's CPUs and counted with it); each connection is one XHTTP session. Only the server's CPU is counted; MB/s is mostly the client's limit. Idle: server RSS growth ÷ sessions open (average over all; marginal over the second half). Target (issue 13): v2sp ≤ {XHTTP_TARGET}× Xray's server CPU-s/GB.\n");
    type XF = fn(&View, &str, &str, usize) -> Option<(f64, f64, f64)>;
    let cols: [(&str, usize, bool, XF); 6] = [
        ("download CPU-s/GB", 3, true, |v, c, srv, n| {
            v.bulk(c, srv, n, false, |b| b.cpu_s_per_gb())
        }),
        ("download MB/s", 0, false, |v, c, srv, n| {
            v.bulk(c, srv, n, false, |b| b.mb_per_s())
        }),
        ("upload CPU-s/GB", 3, true, |v, c, srv, n| {
            v.bulk(c, srv, n, true, |b| b.cpu_s_per_gb())
        }),
        ("upload MB/s", 0, false, |v, c, srv, n| {
            v.bulk(c, srv, n, true, |b| b.mb_per_s())
        }),
        ("idle KiB/session", 1, false, |v, c, srv, _| {
            v.idle(c, srv, |x| x.kib_per_conn())
        }),
        ("idle KiB/session (marginal)", 1, false, |v, c, srv, _| {
            v.idle(c, srv, |x| x.marginal_kib_per_conn())
        }),
    ];
    let names: Vec<String> = cols.iter().map(|x| x.0.to_string()).collect();
    for m in modes {
        let c = m.name();
        let _ = writeln!(s, "`{c}` (`mode: {}`):\n", m.mode());
        header_row(s, "server", &names);
        for srv in &served {
            let row: Vec<String> = cols
                .iter()
                .map(|col| fmt_mmm((col.3)(v, c, srv, plan.other_conns), col.1))
                .collect();
            let _ = writeln!(s, "| {srv} | {} |", row.join(" | "));
        }
        if served.iter().any(|x| *x == "xray") {
            for a in served.iter().filter(|x| x.starts_with("v2sp")) {
                let row: Vec<String> = cols
                    .iter()
                    .map(|col| {
                        let (x, y) = (
                            (col.3)(v, c, a, plan.other_conns),
                            (col.3)(v, c, "xray", plan.other_conns),
                        );
                        match (x, y, col.2) {
                            (Some((x, _, _)), Some((y, _, _)), true) if y > 0.0 => {
                                let q = x / y;
                                let verdict = if q <= XHTTP_TARGET { "met" } else { "**not met**" };
                                format!("{q:.2}× {verdict}")
                            }
                            _ => ratio(x, y),
                        }
                    })
                    .collect();
                let _ = writeln!(s, "| {a} / xray | {} |", row.join(" | "));
            }
        }
        let _ = writeln!(s);
    }
}

/// Measured through a client process (bulk transfers; never the headline).
fn through_client(c: &str) -> bool {
    c == REALITY_VISION
        || c == TLS_VISION
        || Quic::parse(c).is_some()
        || XhttpMode::parse(c).is_some()
        || c.ends_with(crate::client::front::SUFFIX)
}

/// Write report.md, results.json and the SVGs into `dir`.
pub fn write(dir: &Path, plan: &Plan, out: &Outcome, env: &Env) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let servers: Vec<String> = plan.servers.iter().map(|k| k.label().to_string()).collect();
    let pairs = ratio_pairs(&servers);
    // The headline: the first suite not measured through a client process (Vision, QUIC,
    // `@sing-box`: bulk transfers both ways, and latency for `@sing-box`).
    let headline = plan
        .cipher_names
        .iter()
        .find(|c| !through_client(c))
        .or(plan.cipher_names.first())
        .cloned()
        .unwrap_or_default();
    // Only suites through a client process: no headline scenarios ran.
    let headline_is_vision = through_client(&headline);
    // Rate and idle run on the headline and on every Trojan/VLESS/VMess/AnyTLS suite (the
    // XHTTP suites' idle sessions are in their own section).
    let mut per_proto: Vec<String> = Vec::new();
    if !headline_is_vision {
        per_proto.push(headline.clone());
    }
    for c in &plan.cipher_names {
        if (c == TROJAN_TLS || c == VLESS_TLS || c == VMESS || c == VMESS_TLS || c == ANYTLS)
            && !per_proto.contains(c)
        {
            per_proto.push(c.clone());
        }
    }
    let mut s = String::new();
    let protos: Vec<&str> = [
        (plan.ciphers.iter().any(|c| c.is_ss()), "Shadowsocks"),
        (plan.cipher_names.iter().any(|c| c == TROJAN_TLS), "Trojan (TLS)"),
        (plan.cipher_names.iter().any(|c| c == VLESS_TLS), "VLESS (TLS)"),
        (
            plan.cipher_names.iter().any(|c| c == VMESS || c == VMESS_TLS),
            "VMess (aes-128-gcm; TCP, TLS)",
        ),
        (
            plan.cipher_names.iter().any(|c| c == ANYTLS),
            "AnyTLS (one stream per session)",
        ),
        (
            plan.cipher_names
                .iter()
                .any(|c| c == REALITY_VISION || c == TLS_VISION),
            "VLESS + Vision (REALITY/TLS, TLS 1.3 inside)",
        ),
        (
            plan.cipher_names.iter().any(|c| c == HYSTERIA2),
            "Hysteria 2 (QUIC, through sing-box)",
        ),
        (
            plan.cipher_names.iter().any(|c| c == crate::client::tuic::TUIC),
            "TUIC v5 (QUIC, through sing-box)",
        ),
        (
            plan.cipher_names.iter().any(|c| XhttpMode::parse(c).is_some()),
            "VLESS + XHTTP (TLS, through Xray)",
        ),
    ]
    .into_iter()
    .filter_map(|(on, n)| on.then_some(n))
    .collect();
    let peers: Vec<&str> = plan
        .servers
        .iter()
        .filter(|k| !k.is_v2sp())
        .map(|k| match k {
            crate::servers::ServerKind::SsServer => "shadowsocks-rust `ssserver`",
            k => k.label(),
        })
        .collect();
    let _ = writeln!(
        s,
        "# v2sp benchmark: {}, v2sp vs {}\n",
        protos.join(", "),
        peers.join(", ")
    );
    let _ = writeln!(s, "- mode: **{}**; {} round(s), servers alternating (order rotated each round), one server running at a time", if plan.quick { "quick (smoke only: tiny byte counts, figures not meaningful)" } else { "full" }, plan.rounds);
    let _ = writeln!(
        s,
        "- started {}, finished {} ({:.0} s); command: `{}`",
        env.started, env.finished, env.wall_s, env.command
    );
    let _ = writeln!(
        s,
        "- code: HEAD {} when the run started (the v2sp binaries are whatever was built at the time below)",
        env.git
    );
    let _ = writeln!(s, "- machine: {}", machine());
    for b in &env.binaries {
        let _ = writeln!(s, "- {b}");
    }
    let _ = writeln!(
        s,
        "- load average (1/5/15 min) before: {}, after: {}",
        env.load_before, env.load_after
    );
    let _ = writeln!(
        s,
        "- pinning: load generator + target on CPU(s) `{}`; server on {}",
        plan.client_cpus,
        plan.server_cpus
            .iter()
            .map(|(w, c)| format!(
                "`{}` ({w} worker(s))",
                c.clone().unwrap_or_else(|| "unpinned".into())
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "- v2sp = `v2sp run -c config.json` (control plane + the data plane it spawns; both processes counted) with a generated `file://` nodes file, `V2SP_IO=epoll|uring`; ssserver = shadowsocks-rust `--worker-threads N`, `no_delay`; sing-box with `GOMAXPROCS=N`; v2ray (Trojan/VLESS only) with `GOMAXPROCS=N`, `streamSettings.security: tls`; one user, same method everywhere; Trojan/VLESS: TLS on every server with one self-signed certificate (rcgen) and our rustls client (aws-lc-rs), trusting only that certificate; TLS session resumption on (rustls default); AnyTLS (`anytls`): one session (TLS connection) with one stream per connection, as sing-box's client uses it (auth with padding length 0, settings `v=2` with the default scheme's MD5, syn, psh destination + data; no waste-frame padding), `anytls` inbound on sing-box and inside shoes' `tls` inbound, an `anytls` node (`tls: 1`) on v2sp; Vision suites (`vless-reality-vision`, `vless-tls-vision`): VLESS `flow: xtls-rprx-vision` on v2sp and shoes (`--threads N`), the shoes client as the load generator's front end, TLS 1.3 end to end to the target (REALITY's `dest` is that target); QUIC suites (`hysteria2`, `tuic`): a panel node in Xboard's shape on v2sp (`hysteria` `version: 2`; `tuic` `version: 5`, cubic), the protocol's inbound on sing-box (TUIC: cubic), `quic` + the protocol on shoes (quinn's default congestion control, cubic), ALPN `h3`, the run's certificate, the sing-box client (the protocol's outbound, trusting that certificate; TUIC: cubic, UDP relay `native`) as the load generator's front end, plain TCP inside, bulk download and upload; XHTTP suites (`vless-xhttp-packet-up`, `vless-xhttp-stream-up`): VLESS over XHTTP (`path`, `host`, `mode` alike everywhere) over TLS with the run's certificate, a panel node with `network: xhttp` on v2sp, a `vless` inbound with `xhttpSettings` on Xray 24.11.21 (`GOMAXPROCS=N`), the Xray client (HTTP/2, default `xmux`, certificate not verified) as the load generator's front end, the whole run inside a loopback-only network namespace, bulk download and upload and idle sessions");
    let _ = writeln!(s, "- bulk: {} MiB per run for {} (split over N connections, download = target → client), {} MiB at {} connections for the other methods{}; latency: {} round trips of {} B; rate: {} s × {} concurrent loops; idle: {} connections",
        plan.bulk_bytes >> 20, if headline_is_vision { "the headline (none ran: suites through a client process only)" } else { &headline }, plan.other_bulk_bytes >> 20, plan.other_conns,
        if plan.upload { " and for the upload run" } else { "" },
        plan.latency_count, plan.latency_size, plan.rate_secs, plan.rate_concurrency, plan.idle_conns);
    let _ = writeln!(s, "\nFigures: median over rounds [min–max]. CPU = utime+stime from /proc/<pid>/stat (all threads) before/after each measured window. Ratios are v2sp ÷ peer of the medians (below 1 = v2sp uses less / is lower).\n");

    for &w in &plan.workers {
        let v = View {
            recs: &out.records,
            w,
        };
        if plan.workers.len() > 1 {
            let _ = writeln!(s, "\n## {w} worker(s)\n");
        }
        // Server load during windows.
        let _ = writeln!(s, "### Machine load during the measured windows\n");
        let _ = writeln!(s, "Average CPUs busy outside the server and the bench (other engineers' builds etc.), and the bench's own use, per server. On a 2-CPU box anything above ~0.1 disturbs the figures.\n");
        header_row(
            &mut s,
            "server",
            &[
                "other load (CPUs)".into(),
                "max over windows".into(),
                "windows above 0.1 CPU".into(),
                "load generator (CPUs)".into(),
            ],
        );
        for srv in &servers {
            let (mut other, mut secs, mut client, mut mx) = (0.0, 0.0, 0.0, 0.0f64);
            let (mut dirty, mut windows) = (0usize, 0usize);
            for r in out.records.iter().filter(|r| r.workers == w && &r.server == srv) {
                let c = match &r.m {
                    Measure::Bulk(b) => b.cpu,
                    Measure::Rate(x) => x.cpu,
                    _ => continue,
                };
                other += c.other_cpu_s;
                secs += c.secs;
                client += c.client_cpu_s;
                mx = mx.max(c.other_cpu_s / c.secs.max(1e-9));
                windows += 1;
                if c.other_cpu_s / c.secs.max(1e-9) > 0.1 {
                    dirty += 1;
                }
            }
            let _ = writeln!(
                s,
                "| {srv} | {:.2} | {:.2} | {dirty} of {windows} | {:.2} |",
                other / secs.max(1e-9),
                mx,
                client / secs.max(1e-9)
            );
        }

        // Headline: CPU-s/GB per cipher.
        let _ = writeln!(
            s,
            "\n### Server CPU-seconds per GB (bulk download, {} connections) — the headline figure\n",
            plan.other_conns
        );
        let mut cols: Vec<String> = servers.clone();
        cols.extend(pairs.iter().map(|(a, b)| format!("{a} / {b}")));
        header_row(&mut s, "method", &cols);
        let mut bars = Vec::new();
        for c in &plan.cipher_names {
            let vals: Vec<_> = servers
                .iter()
                .map(|srv| v.bulk(c, srv, plan.other_conns, false, |b| b.cpu_s_per_gb()))
                .collect();
            let row = row_with_ratios(&vals, &servers, &pairs, 3);
            let _ = writeln!(s, "| {c} | {} |", row.join(" | "));
            bars.push(vals.iter().map(|x| x.map(|t| t.0)).collect::<Vec<_>>());
        }
        let name = |base: &str| {
            if plan.workers.len() > 1 {
                format!("{base}-w{w}.svg")
            } else {
                format!("{base}.svg")
            }
        };
        std::fs::write(
            dir.join(name("cpu-per-gb")),
            svg::bar_chart(
                &format!("Server CPU-s per GB, bulk download, {} conns", plan.other_conns),
                "CPU-seconds / GB (lower is better)",
                &plan.cipher_names,
                &servers,
                &bars,
            ),
        )?;
        let _ = writeln!(s, "\n![CPU-s per GB]({})\n", name("cpu-per-gb"));

        if plan.upload {
            // The other direction, same suites: uploads show the server's read path.
            let _ = writeln!(
                s,
                "### Server CPU-seconds per GB (bulk upload, client → target, {} connections)\n\n\
                 Rows `X@sing-box` went through the real sing-box client (SOCKS5 in, the suite's \
                 protocol out) instead of the bench's own client: what users' clients cost the server.\n",
                plan.other_conns
            );
            header_row(&mut s, "method", &cols);
            for c in &plan.cipher_names {
                let vals: Vec<_> = servers
                    .iter()
                    .map(|srv| v.bulk(c, srv, plan.other_conns, true, |b| b.cpu_s_per_gb()))
                    .collect();
                if vals.iter().all(Option::is_none) {
                    continue;
                }
                let row = row_with_ratios(&vals, &servers, &pairs, 3);
                let _ = writeln!(s, "| {c} | {} |", row.join(" | "));
            }
            let _ = writeln!(s);
        }

        front_latency_section(&mut s, &v, plan, &servers, &pairs);
        vision_section(&mut s, &v, plan, &servers);
        quic_section(&mut s, &v, plan, &servers, &pairs);
        xhttp_section(&mut s, &v, plan, &servers);

        if plan.scenarios.contains(&Scenario::Bulk) && !headline_is_vision {
            // Throughput vs connections, headline cipher.
            let _ = writeln!(
                s,
                "### Bulk download, {headline}: throughput (MB/s) vs connections\n"
            );
            header_row(&mut s, "connections", &cols);
            let mut series: Vec<Series> = servers
                .iter()
                .map(|x| Series {
                    name: x.clone(),
                    points: vec![],
                })
                .collect();
            for &c in &plan.bulk_conns {
                let vals: Vec<_> = servers
                    .iter()
                    .map(|srv| v.bulk(&headline, srv, c, false, |b| b.mb_per_s()))
                    .collect();
                let row = row_with_ratios(&vals, &servers, &pairs, 0);
                let _ = writeln!(s, "| {c} | {} |", row.join(" | "));
                for (i, x) in vals.iter().enumerate() {
                    if let Some((m, _, _)) = x {
                        series[i].points.push((c as f64, *m));
                    }
                }
            }
            std::fs::write(
                dir.join(name("throughput")),
                svg::line_chart(
                    &format!("Bulk download throughput, {headline}"),
                    "connections",
                    "MB/s",
                    &series,
                    true,
                ),
            )?;
            let _ = writeln!(s, "\n![throughput]({})\n", name("throughput"));
            let _ = writeln!(s, "Server CPU-s/GB for the same runs:\n");
            header_row(&mut s, "connections", &cols);
            for &c in &plan.bulk_conns {
                let vals: Vec<_> = servers
                    .iter()
                    .map(|srv| v.bulk(&headline, srv, c, false, |b| b.cpu_s_per_gb()))
                    .collect();
                let row = row_with_ratios(&vals, &servers, &pairs, 3);
                let _ = writeln!(s, "| {c} | {} |", row.join(" | "));
            }
            if plan.upload {
                let _ = writeln!(
                    s,
                    "\n### Bulk upload, {headline}, {} connections (client → target)\n",
                    plan.other_conns
                );
                header_row(&mut s, "figure", &cols);
                for (label, prec, f) in [
                    (
                        "MB/s",
                        0usize,
                        (|b: &crate::scenarios::BulkResult| b.mb_per_s())
                            as fn(&crate::scenarios::BulkResult) -> f64,
                    ),
                    ("server CPU-s/GB", 3, |b| b.cpu_s_per_gb()),
                ] {
                    let vals: Vec<_> = servers
                        .iter()
                        .map(|srv| v.bulk(&headline, srv, plan.other_conns, true, f))
                        .collect();
                    let row = row_with_ratios(&vals, &servers, &pairs, prec);
                    let _ = writeln!(s, "| {label} | {} |", row.join(" | "));
                }
            }
        }
        if plan.scenarios.contains(&Scenario::Rate) {
            // Rate.
            for rc in per_proto
                .iter()
                .filter(|c| servers.iter().any(|srv| v.rate(c, srv, |x| x.per_s()).is_some()))
            {
                let _ = writeln!(s, "\n### Connection rate, {rc} (connect + request + 1 B echoed + close, {} concurrent loops)\n", plan.rate_concurrency);
                header_row(&mut s, "figure", &cols);
                type RF = fn(&crate::scenarios::RateResult) -> f64;
                for (label, prec, f) in [
                    (
                        "connections/s",
                        0usize,
                        (|x: &crate::scenarios::RateResult| x.per_s()) as RF,
                    ),
                    ("server CPU µs/connection", 1, |x| x.server_us_per_conn()),
                    ("failed connections", 0, |x| x.errors as f64),
                ] {
                    let vals: Vec<_> = servers.iter().map(|srv| v.rate(rc, srv, f)).collect();
                    let mut row: Vec<String> = vals.iter().map(|x| fmt_mmm(*x, prec)).collect();
                    for (a, b) in &pairs {
                        let ia = servers.iter().position(|x| x == a).unwrap_or(0);
                        let ib = servers.iter().position(|x| x == b).unwrap_or(0);
                        row.push(if label == "failed connections" {
                            "".into()
                        } else {
                            ratio(vals[ia], vals[ib])
                        });
                    }
                    let _ = writeln!(s, "| {label} | {} |", row.join(" | "));
                }
            }
        }
        if plan.scenarios.contains(&Scenario::Latency) && !headline_is_vision {
            // Latency.
            let _ = writeln!(
                s,
                "\n### Latency, {headline}: round trip of {} B through the proxy (µs)\n",
                plan.latency_size
            );
            let lcols = vec![
                "p50".to_string(),
                "p90".into(),
                "p99".into(),
                "p99.9".into(),
                "max".into(),
                "added p50 vs direct".into(),
                "added p99 vs direct".into(),
                "other load (CPUs)".into(),
                "p50 / p99, quiet rounds only (other load < 0.1)".into(),
            ];
            header_row(&mut s, "server", &lcols);
            let direct50 = v.lat(&headline, "direct", |x| x.p50_us).map(|t| t.0);
            let direct99 = v.lat(&headline, "direct", |x| x.p99_us).map(|t| t.0);
            let mut lat_servers = vec!["direct".to_string()];
            // Servers that do not speak the headline (v2ray on a Shadowsocks headline) have no row.
            lat_servers.extend(
                servers
                    .iter()
                    .filter(|srv| v.lat(&headline, srv, |x| x.p50_us).is_some())
                    .cloned(),
            );
            for srv in &lat_servers {
                let p50 = v.lat(&headline, srv, |x| x.p50_us);
                let p99 = v.lat(&headline, srv, |x| x.p99_us);
                let quiet_runs: Vec<(f64, f64)> = out
                    .records
                    .iter()
                    .filter(|r| r.workers == w && r.cipher == headline && &r.server == srv)
                    .filter_map(|r| match &r.m {
                        Measure::Latency(x) if x.other_load_cpus < 0.1 => Some((x.p50_us, x.p99_us)),
                        _ => None,
                    })
                    .collect();
                let all_runs = v.lat(&headline, srv, |x| x.p50_us).map_or(0, |_| {
                    out.records
                        .iter()
                        .filter(|r| r.workers == w && r.cipher == headline && &r.server == srv)
                        .filter(|r| matches!(r.m, Measure::Latency(_)))
                        .count()
                });
                let quiet = match (
                    mmm(quiet_runs.iter().map(|x| x.0).collect()),
                    mmm(quiet_runs.iter().map(|x| x.1).collect()),
                ) {
                    (Some((a, _, _)), Some((b, _, _))) => {
                        format!("{a:.1} / {b:.1} ({} of {all_runs} rounds)", quiet_runs.len())
                    }
                    _ => format!("none of {all_runs} rounds"),
                };
                let add = |p: Option<(f64, f64, f64)>, d: Option<f64>| match (p, d) {
                    (Some((m, _, _)), Some(d)) if srv != "direct" => format!("{:+.1}", m - d),
                    _ => "".into(),
                };
                let _ = writeln!(
                    s,
                    "| {srv} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    fmt_mmm(p50, 1),
                    fmt_mmm(v.lat(&headline, srv, |x| x.p90_us), 1),
                    fmt_mmm(p99, 1),
                    fmt_mmm(v.lat(&headline, srv, |x| x.p999_us), 1),
                    fmt_mmm(v.lat(&headline, srv, |x| x.max_us), 0),
                    add(p50, direct50),
                    add(p99, direct99),
                    fmt_mmm(v.lat(&headline, srv, |x| x.other_load_cpus), 2),
                    quiet,
                );
            }
            for (a, b) in pairs.iter().filter(|(_, b)| lat_servers.contains(b)) {
                let _ = writeln!(
                    s,
                    "\n{a} / {b}: p50 {}, p99 {}",
                    ratio(
                        v.lat(&headline, a, |x| x.p50_us),
                        v.lat(&headline, b, |x| x.p50_us)
                    ),
                    ratio(
                        v.lat(&headline, a, |x| x.p99_us),
                        v.lat(&headline, b, |x| x.p99_us)
                    )
                );
            }
            let mut cdf = Vec::new();
            for srv in &lat_servers {
                if let Some(h) = out.hists.get(&(headline.clone(), srv.clone(), w)) {
                    let mut pts = Vec::new();
                    for i in 0..=100 {
                        let q = (i as f64 / 100.0).min(1.0);
                        pts.push((h.value_at_quantile(q) as f64 / 1000.0, q * 100.0));
                    }
                    for q in [0.995, 0.999, 0.9999] {
                        pts.push((h.value_at_quantile(q) as f64 / 1000.0, q * 100.0));
                    }
                    pts.sort_by(|a, b| a.1.total_cmp(&b.1));
                    cdf.push(Series {
                        name: srv.clone(),
                        points: pts,
                    });
                }
            }
            std::fs::write(
                dir.join(name("latency-cdf")),
                svg::line_chart(
                    &format!("Round-trip latency CDF, {headline}, {} B", plan.latency_size),
                    "round trip (µs, log scale)",
                    "percentile",
                    &cdf,
                    true,
                ),
            )?;
            let _ = writeln!(s, "\n![latency CDF]({})\n", name("latency-cdf"));
        }
        if plan.scenarios.contains(&Scenario::Idle) {
            // Idle.
            for ic in per_proto.iter().filter(|c| {
                servers
                    .iter()
                    .any(|srv| v.idle(c, srv, |x| x.kib_per_conn()).is_some())
            }) {
                let _ = writeln!(s, "\n### Idle connections, {ic}: server RSS per connection ({} connections, each through to the target)\n", plan.idle_conns);
                header_row(&mut s, "figure", &cols);
                type IF = fn(&crate::scenarios::IdleResult) -> f64;
                for (label, prec, f) in [
                    (
                        "RSS before (KiB)",
                        0usize,
                        (|x: &crate::scenarios::IdleResult| x.rss_before_kib as f64) as IF,
                    ),
                    ("RSS with the connections open (KiB)", 0, |x| {
                        x.rss_after_kib as f64
                    }),
                    ("KiB per idle connection (average)", 2, |x| x.kib_per_conn()),
                    ("KiB per idle connection (marginal, second half)", 2, |x| {
                        x.marginal_kib_per_conn()
                    }),
                ] {
                    let vals: Vec<_> = servers.iter().map(|srv| v.idle(ic, srv, f)).collect();
                    let row = row_with_ratios(&vals, &servers, &pairs, prec);
                    let _ = writeln!(s, "| {label} | {} |", row.join(" | "));
                }
            }
        }
        // Targets.
        let _ = writeln!(s, "\n### Targets from the data-plane issue\n");
        let ss = v.bulk("aes-128-gcm", "ssserver", plan.other_conns, false, |b| {
            b.cpu_s_per_gb()
        });
        for srv in servers.iter().filter(|x| x.starts_with("v2sp")) {
            let me = v.bulk("aes-128-gcm", srv, plan.other_conns, false, |b| b.cpu_s_per_gb());
            match (me, ss) {
                (Some((a, _, _)), Some((b, _, _))) if b > 0.0 => {
                    let _ = writeln!(
                        s,
                        "- {srv}: CPU-s/GB on aes-128-gcm = {:.2}× ssserver (target ≤ 0.70×): **{}**",
                        a / b,
                        if a / b <= 0.7 { "met" } else { "missed" }
                    );
                }
                _ => {
                    let _ = writeln!(
                        s,
                        "- {srv}: CPU-s/GB on aes-128-gcm vs ssserver: not measured in this run"
                    );
                }
            }
            match (
                v.idle(&headline, srv, |x| x.kib_per_conn()),
                v.idle(&headline, srv, |x| x.marginal_kib_per_conn()),
            ) {
                (Some((k, _, _)), Some((m, _, _))) => {
                    let _ = writeln!(s, "- {srv}: {k:.2} KiB RSS per idle connection on average over {} connections, {m:.2} KiB marginal (target ≤ 4 KiB): **{}**", plan.idle_conns, if k <= 4.0 { "met" } else { "missed" });
                }
                _ => {
                    let _ = writeln!(s, "- {srv}: idle RSS not measured");
                }
            }
            if let (Some(p50), Some(p99)) = (
                v.lat(&headline, srv, |x| x.p50_us),
                v.lat(&headline, srv, |x| x.p99_us),
            ) {
                let _ = writeln!(
                    s,
                    "- {srv}: latency p50 {:.1} µs, p99 {:.1} µs ({headline}, {} B round trip)",
                    p50.0, p99.0, plan.latency_size
                );
            }
        }
    }

    let _ = writeln!(s, "\n### Problems seen during the run\n");
    if out.problems.is_empty() {
        let _ = writeln!(
            s,
            "None: every probe passed, no connection failed, nothing timed out."
        );
    } else {
        for p in &out.problems {
            let _ = writeln!(s, "- {}", p.replace('\n', "\n  "));
        }
    }
    std::fs::write(dir.join("report.md"), s)?;
    let json = serde_json::json!({ "plan": plan, "records": out.records, "problems": out.problems });
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&json)?)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_medians() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_415), (2025, 11, 23));
        assert_eq!(mmm(vec![3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(mmm(vec![4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(fmt_mmm(Some((1.0, 0.5, 2.0)), 1), "1.0 [0.5–2.0]");
    }

    #[test]
    fn quic_section_has_both_directions_and_ratios() {
        use crate::scenarios::{BulkResult, WindowCpu};
        use crate::servers::ServerKind;
        let servers: Vec<String> = ["v2sp-epoll", "sing-box", "shoes"].map(String::from).to_vec();
        let pairs = ratio_pairs(&servers);
        let plan = Plan {
            quick: false,
            ciphers: vec![],
            cipher_names: vec!["tuic".into()],
            servers: vec![ServerKind::V2spEpoll, ServerKind::SingBox, ServerKind::Shoes],
            scenarios: vec![],
            rounds: 1,
            workers: vec![1],
            bulk_conns: vec![4],
            bulk_bytes: 1 << 30,
            other_conns: 4,
            other_bulk_bytes: 1 << 30,
            upload: true,
            rate_secs: 1.0,
            rate_concurrency: 1,
            latency_count: 1,
            latency_size: 64,
            idle_conns: 1,
            deadline_s: 1,
            server_cpus: Default::default(),
            client_cpus: String::new(),
        };
        // 1 GB in 2 s; server CPU 1 s (v2sp) or 2 s (peers) down, half of that up.
        let rec = |server: &str, upload: bool, cpu: f64| Record {
            cipher: "tuic".into(),
            server: server.into(),
            workers: 1,
            round: 0,
            m: Measure::Bulk(BulkResult {
                conns: 4,
                upload,
                bytes: 1_000_000_000,
                errors: 0,
                first_error: None,
                timed_out: false,
                cpu: WindowCpu {
                    secs: 2.0,
                    server_cpu_s: if upload { cpu / 2.0 } else { cpu },
                    ..Default::default()
                },
            }),
        };
        let recs = vec![
            rec("v2sp-epoll", false, 1.0),
            rec("v2sp-epoll", true, 1.0),
            rec("sing-box", false, 2.0),
            rec("sing-box", true, 2.0),
            rec("shoes", false, 2.0),
        ];
        let mut s = String::new();
        quic_section(&mut s, &View { recs: &recs, w: 1 }, &plan, &servers, &pairs);
        assert!(
            s.contains("### TUIC v5 (QUIC) through the sing-box client (4 connections, both directions)"),
            "{s}"
        );
        assert!(
            s.contains("| server | download CPU-s/GB | download MB/s | upload CPU-s/GB | upload MB/s |"),
            "{s}"
        );
        assert!(s.contains("| v2sp-epoll | 1.000 | 500 | 0.500 | 500 |"), "{s}");
        assert!(s.contains("| shoes | 2.000 | 500 | – | – |"), "{s}");
        assert!(
            s.contains("| v2sp-epoll / sing-box | 0.50× | 1.00× | 0.50× | 1.00× |"),
            "{s}"
        );
        assert!(!s.contains("Hysteria 2"), "{s}");
    }

    #[test]
    fn xhttp_section_has_both_directions_idle_and_the_target() {
        use crate::scenarios::{BulkResult, IdleResult, WindowCpu};
        use crate::servers::ServerKind;
        let servers: Vec<String> = ["v2sp-epoll", "xray"].map(String::from).to_vec();
        let c = "vless-xhttp-stream-up";
        let plan = Plan {
            quick: false,
            ciphers: vec![],
            cipher_names: vec![c.into()],
            servers: vec![ServerKind::V2spEpoll, ServerKind::Xray],
            scenarios: vec![],
            rounds: 1,
            workers: vec![1],
            bulk_conns: vec![4],
            bulk_bytes: 1 << 30,
            other_conns: 4,
            other_bulk_bytes: 1 << 30,
            upload: true,
            rate_secs: 1.0,
            rate_concurrency: 1,
            latency_count: 1,
            latency_size: 64,
            idle_conns: 100,
            deadline_s: 1,
            server_cpus: Default::default(),
            client_cpus: String::new(),
        };
        let rec = |server: &str, m: Measure| Record {
            cipher: c.into(),
            server: server.into(),
            workers: 1,
            round: 0,
            m,
        };
        // 1 GB in 2 s; server CPU `cpu` s.
        let bulk = |upload: bool, cpu: f64| {
            Measure::Bulk(BulkResult {
                conns: 4,
                upload,
                bytes: 1_000_000_000,
                errors: 0,
                first_error: None,
                timed_out: false,
                cpu: WindowCpu {
                    secs: 2.0,
                    server_cpu_s: cpu,
                    ..Default::default()
                },
            })
        };
        // 100 sessions: +1000 KiB (v2sp) or +4000 KiB (xray).
        let idle = |kib: u64| {
            Measure::Idle(IdleResult {
                conns: 100,
                opened: 100,
                rss_before_kib: 10_000,
                rss_half_kib: 10_000 + kib / 2,
                opened_half: 50,
                rss_after_kib: 10_000 + kib,
            })
        };
        let recs = vec![
            rec("v2sp-epoll", bulk(false, 1.0)),
            rec("v2sp-epoll", bulk(true, 1.5)),
            rec("v2sp-epoll", idle(1000)),
            rec("xray", bulk(false, 2.0)),
            rec("xray", bulk(true, 2.0)),
            rec("xray", idle(4000)),
        ];
        let mut s = String::new();
        xhttp_section(&mut s, &View { recs: &recs, w: 1 }, &plan, &servers);
        assert!(s.contains("`vless-xhttp-stream-up` (`mode: stream-up`):"), "{s}");
        assert!(
            s.contains("| v2sp-epoll | 1.000 | 500 | 1.500 | 500 | 10.0 | 10.0 |"),
            "{s}"
        );
        assert!(
            s.contains("| xray | 2.000 | 500 | 2.000 | 500 | 40.0 | 40.0 |"),
            "{s}"
        );
        assert!(
            s.contains(
                "| v2sp-epoll / xray | 0.50× met | 1.00× | 0.75× **not met** | 1.00× | 0.25× | 0.25× |"
            ),
            "{s}"
        );
        assert!(!s.contains("packet-up"), "{s}");
    }

    #[test]
    fn ratios_pair_v2sp_with_peers() {
        let p = ratio_pairs(&["v2sp-epoll".into(), "ssserver".into(), "sing-box".into()]);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], ("v2sp-epoll".into(), "ssserver".into()));
    }
}
