//! `v2sp-bench`: see docs/benchmarks.md.
//!
//! ```text
//! v2sp-bench run [--quick] [--ciphers …] [--servers …] [--rounds N] [--workers 1,2,4] [--out DIR]
//! v2sp-bench scale [--ciphers …] [--servers …] [--max-workers N]   # 1, 2, 4 … N workers
//! v2sp-bench self-check [--ciphers …]     # our client codecs against ssserver, nothing measured
//! v2sp-bench soak [--minutes 30] [--conns 10000] [--suites …]   # RSS, fds, exactness over time
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use v2sp_bench::client::quic::Quic;
use v2sp_bench::client::tls::TlsMaterial;
use v2sp_bench::client::xhttp::{self, XhttpMode};
use v2sp_bench::client::Suite;
use v2sp_bench::conn::Via;
use v2sp_bench::procstat;
use v2sp_bench::report::{self, Env};
use v2sp_bench::run::{self, Plan, Scenario};
use v2sp_bench::servers::{Binaries, Server, ServerKind};

const ALL_CIPHERS: &str = "aes-128-gcm,aes-256-gcm,chacha20-ietf-poly1305,2022-blake3-aes-128-gcm,2022-blake3-aes-256-gcm,2022-blake3-chacha20-poly1305,trojan-tls,vless-tls,vmess,vmess-tls,anytls,hysteria2,tuic,vless-reality-vision,vless-tls-vision,aes-128-gcm@sing-box,2022-blake3-aes-128-gcm@sing-box,chacha20-ietf-poly1305@sing-box,trojan-tls@sing-box,vless-tls@sing-box,vmess@sing-box,anytls@sing-box";
/// The servers compared when `--servers` is not given; a peer missing from this default list
/// is left out with a warning (named explicitly, it is an error).
const DEFAULT_SERVERS: &str = "v2sp-epoll,v2sp-uring,ssserver,sing-box,v2ray,shoes,xray";
const QUICK_CIPHERS: [&str; 6] = [
    "aes-128-gcm",
    "2022-blake3-aes-128-gcm",
    "trojan-tls",
    "vless-tls",
    "vmess",
    // About 7 s on the 2-CPU box (4 servers: bulk, idle, rate).
    "anytls",
];

#[derive(Parser)]
#[command(
    name = "v2sp-bench",
    about = "v2sp side-by-side benchmarks (Shadowsocks, Trojan, VLESS, VMess, AnyTLS, Hysteria 2, TUIC, VLESS + Vision, VLESS + XHTTP)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure v2sp and the peers, alternating, and write results/<timestamp>/report.md.
    Run(RunArgs),
    /// Multi-core scaling: bulk download and upload at 1, 2, 4 … N server workers (N: the
    /// CPUs the bench leaves the server, or --max-workers), 16 connections per worker; for an
    /// operator to run on a many-core node. Default suite: aes-128-gcm.
    Scale(ScaleArgs),
    /// Check our client codecs against ssserver (and the other servers) for each method.
    SelfCheck(Common),
    /// v2sp under a long mixed load against the panel simulator: connections held and
    /// reopened, transfers, users changed every few seconds, panel faults on reports; reports
    /// RSS and fds over time and whether every byte was reported exactly once.
    Soak(SoakArgs),
}

#[derive(Args)]
struct SoakArgs {
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Connections held open at once (capped by the fd limit: two per connection here and two
    /// in the data plane).
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Workers transferring without pause.
    #[arg(long, default_value_t = 16)]
    active: usize,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "aes-128-gcm,2022-blake3-aes-128-gcm,trojan-tls,vless-tls,vmess,anytls"
    )]
    suites: Vec<String>,
    #[arg(long, default_value_t = 3)]
    churn_secs: u64,
    #[arg(long, default_value_t = 30)]
    fault_secs: u64,
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Data-plane workers (default: every CPU).
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long, default_value = "epoll")]
    io: String,
    /// `v2sp` binary (the data plane must sit next to it); default: next to this executable.
    #[arg(long, env = "V2SP_BENCH_V2SP")]
    v2sp: Option<PathBuf>,
    /// Results directory (default results/soak-<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ScaleArgs {
    #[command(flatten)]
    common: Common,
    /// Most server workers to try (default: every CPU but one, which the load generator keeps).
    #[arg(long)]
    max_workers: Option<usize>,
    #[arg(long)]
    rounds: Option<usize>,
    /// MiB per bulk transfer (each worker count, each direction).
    #[arg(long)]
    bulk_mib: Option<u64>,
    /// Results directory (default results/<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The worker counts `scale` tries: 1, 2, 4 … up to `max` (and `max` itself).
fn scale_steps(max: usize) -> Vec<usize> {
    let max = max.max(1);
    let mut v: Vec<usize> = std::iter::successors(Some(1usize), |w| w.checked_mul(2))
        .take_while(|w| *w < max)
        .collect();
    v.push(max);
    v
}

fn scale_cmd(a: ScaleArgs) -> anyhow::Result<()> {
    let mut common = a.common;
    if common.ciphers.join(",") == ALL_CIPHERS {
        common.ciphers = vec!["aes-128-gcm".into()];
    }
    let cpus = allowed_cpus().len();
    let max = a.max_workers.unwrap_or(cpus.saturating_sub(1)).max(1);
    let workers = scale_steps(max);
    let conns = 16 * max;
    run_cmd(RunArgs {
        common,
        quick: false,
        rounds: a.rounds.or(Some(2)),
        workers,
        scenarios: vec!["bulk".into()],
        conns: Some(vec![conns]),
        bulk_mib: a.bulk_mib.or(Some(1024)),
        other_bulk_mib: a.bulk_mib.or(Some(1024)),
        idle_conns: None,
        rate_secs: None,
        latency_count: None,
        no_upload: false,
        out: a.out,
    })
}

#[derive(Args, Clone)]
struct Common {
    /// Shadowsocks methods and `trojan-tls`, `vless-tls`, `vmess` (TCP), `vmess-tls`, `anytls`,
    /// `hysteria2`, `tuic` (QUIC, through the sing-box client), `vless-reality-vision`,
    /// `vless-tls-vision` (through the shoes client), `X@sing-box` (suite X through the sing-box
    /// client), `vless-xhttp-packet-up`, `vless-xhttp-stream-up` (through the Xray client, in a
    /// loopback-only network namespace; added to the default list when Xray is installed and
    /// `unshare --net` works); those through a client get bulk download and upload only
    /// (`@sing-box`: and latency; XHTTP: and idle sessions); the first other one is the
    /// headline (all scenarios run on it).
    #[arg(long, value_delimiter = ',', default_value = ALL_CIPHERS)]
    ciphers: Vec<String>,
    /// Servers to compare.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = DEFAULT_SERVERS
    )]
    servers: Vec<String>,
    /// `v2sp` binary (the data plane must sit next to it); default: next to this executable.
    #[arg(long, env = "V2SP_BENCH_V2SP")]
    v2sp: Option<PathBuf>,
    #[arg(long, default_value = "/opt/v2sp-peers/bin/ssserver")]
    ssserver: PathBuf,
    #[arg(long, default_value = "/opt/v2sp-peers/bin/sing-box")]
    sing_box: PathBuf,
    /// v2ray 4.x (Debian's `v2ray` package; Trojan, VLESS and VMess).
    #[arg(long, default_value = "/opt/v2sp-peers/bin/v2ray")]
    v2ray: PathBuf,
    /// shoes 0.3.x: the Vision suites' client (always) and a peer server (`shoes` in --servers)
    /// for every suite but the multi-user Shadowsocks 2022 AES methods.
    #[arg(long, default_value = "/opt/v2sp-peers/bin/shoes")]
    shoes: PathBuf,
    /// Xray 24.11.x (`scripts/install-test-deps.sh --with-xray`): the XHTTP suites' client
    /// (always) and a peer server (`xray` in --servers); run only in a loopback-only network
    /// namespace, which the bench enters itself (`unshare --net`).
    #[arg(long, default_value = "/opt/v2sp-peers/bin/xray")]
    xray: PathBuf,
    /// Do not pin (by default the bench runs on the first CPUs and the server on the last).
    #[arg(long)]
    no_pin: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// CI smoke run: tiny byte counts, 1 round, a few methods (hysteria2 and tuic too when the sing-box
    /// client is installed, vless-reality-vision when the shoes client is); asserts nothing
    /// about speed.
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    rounds: Option<usize>,
    /// Server worker threads to test, e.g. 1,2,4 (multi-core scaling).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    workers: Vec<usize>,
    /// Scenarios for the headline method.
    #[arg(long, value_delimiter = ',', default_value = "bulk,rate,latency,idle")]
    scenarios: Vec<String>,
    /// Connection counts for the headline bulk run.
    #[arg(long, value_delimiter = ',')]
    conns: Option<Vec<usize>>,
    /// MiB per headline bulk run.
    #[arg(long)]
    bulk_mib: Option<u64>,
    /// MiB per bulk run of the other methods (and the upload run).
    #[arg(long)]
    other_bulk_mib: Option<u64>,
    #[arg(long)]
    idle_conns: Option<usize>,
    #[arg(long)]
    rate_secs: Option<f64>,
    #[arg(long)]
    latency_count: Option<usize>,
    /// Skip the upload run.
    #[arg(long)]
    no_upload: bool,
    /// Results directory (default results/<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn binaries(c: &Common) -> anyhow::Result<Binaries> {
    let v2sp = match &c.v2sp {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("v2sp"),
    };
    Ok(Binaries {
        v2sp,
        ssserver: c.ssserver.clone(),
        singbox: c.sing_box.clone(),
        v2ray: if !c.v2ray.exists() && std::path::Path::new("/usr/bin/v2ray").exists() {
            PathBuf::from("/usr/bin/v2ray")
        } else {
            c.v2ray.clone()
        },
        shoes: c.shoes.clone(),
        xray: c.xray.clone(),
    })
}

/// The servers named in `--servers` that speak at least one of `suites`, each checked to exist.
fn servers(c: &Common, bins: &Binaries, suites: &[Suite]) -> anyhow::Result<Vec<ServerKind>> {
    let mut ks = c
        .servers
        .iter()
        .map(|s| ServerKind::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    ks.retain(|k| suites.iter().any(|s| k.serves(s)));
    if c.servers.join(",") == DEFAULT_SERVERS {
        ks.retain(|k| {
            let there = k.is_v2sp() || bins.path(*k).exists();
            if !there {
                eprintln!(
                    "note: {} not found at {}, left out (scripts/install-test-deps.sh --all installs every peer)",
                    k.label(),
                    bins.path(*k).display()
                );
            }
            there
        });
    }
    if suites
        .iter()
        .any(|s| s.quic().is_some() || matches!(s, Suite::SingBox(_)))
        && !bins.singbox.exists()
    {
        bail!(
            "the QUIC and @sing-box suites need the sing-box client, not found at {} (scripts/install-test-deps.sh, \
             or --sing-box PATH, or leave them out of --ciphers)",
            bins.singbox.display()
        );
    }
    if suites.iter().any(|s| s.vision().is_some()) && !bins.shoes.exists() {
        bail!(
            "the Vision suites need the shoes client, not found at {} (scripts/install-test-deps.sh --with-shoes, \
             or --shoes PATH, or leave vless-*-vision out of --ciphers)",
            bins.shoes.display()
        );
    }
    if suites.iter().any(|s| s.xhttp().is_some()) && !bins.xray.exists() {
        bail!(
            "the XHTTP suites need the Xray client, not found at {} (scripts/install-test-deps.sh --with-xray, \
             or --xray PATH, or leave vless-xhttp-* out of --ciphers)",
            bins.xray.display()
        );
    }
    for k in &ks {
        let p = bins.path(*k);
        if !p.exists() {
            bail!(
                "{} not found at {} — v2sp: `cargo build --release -p v2sp-control -p v2sp-dataplane` (or --v2sp PATH); \
                 peers: scripts/install-test-deps.sh (or --ssserver/--sing-box/--v2ray/--shoes PATH, or leave it out of --servers)",
                k.label(),
                p.display()
            );
        }
    }
    Ok(ks)
}

/// Server CPUs for `w` workers: the last `min(w, n-1)` allowed CPUs; the bench keeps the rest.
fn cpu_split(allowed: &[usize], wmax: usize) -> (Vec<usize>, usize) {
    let n = allowed.len();
    if n < 2 {
        return (allowed.to_vec(), 0);
    }
    let server = wmax.clamp(1, n - 1);
    (allowed[..n - server].to_vec(), server)
}

/// CPUs the bench may use: the mask before it pinned itself (kept across the re-exec).
fn allowed_cpus() -> Vec<usize> {
    match std::env::var("V2SP_BENCH_ALLOWED") {
        Ok(l) if !procstat::parse_cpu_list(&l).is_empty() => procstat::parse_cpu_list(&l),
        _ => procstat::allowed_cpus(),
    }
}

/// Re-run this process under `taskset -c <client CPUs>` once (safe-code pinning).
fn pin_self(client: &[usize]) -> anyhow::Result<()> {
    if std::env::var_os("V2SP_BENCH_PINNED").is_some() || client.is_empty() {
        return Ok(());
    }
    let list = procstat::cpu_list(client);
    let st = std::process::Command::new("taskset")
        .arg("-c")
        .arg(&list)
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("V2SP_BENCH_PINNED", &list)
        .env("V2SP_BENCH_ALLOWED", procstat::cpu_list(&allowed_cpus()))
        .status()
        .context("taskset (util-linux) is needed for pinning; --no-pin runs unpinned")?;
    std::process::exit(st.code().unwrap_or(1));
}

/// "v2sp: /path (built 2026-…)" or "ssserver: shadowsocks 1.25.0".
fn describe_binary(k: ServerKind, bins: &Binaries) -> String {
    let p = bins.path(k);
    let name = if k.is_v2sp() { "v2sp" } else { k.label() };
    let version = match k {
        ServerKind::SsServer => Some("--version"),
        ServerKind::SingBox => Some("version"),
        ServerKind::V2ray => Some("-version"),
        ServerKind::Shoes => Some("--version"),
        // Xray runs only in a loopback-only network namespace (where the run is when it is here).
        ServerKind::Xray if xhttp::in_loopback_only_netns() => Some("version"),
        _ => None,
    }
    .and_then(|arg| std::process::Command::new(p).arg(arg).output().ok())
    .and_then(|o| String::from_utf8(o.stdout).ok())
    .and_then(|s| s.lines().next().map(str::to_string));
    let built = std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    match (version, built) {
        (Some(v), _) => format!("{name}: `{}` ({v})", p.display()),
        (None, Some(b)) => format!("{name}: `{}` (built {})", p.display(), report::utc_of(b)),
        (None, None) => format!("{name}: `{}`", p.display()),
    }
}

fn runtime(client_cpus: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(if client_cpus <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(client_cpus)
            .enable_all()
            .build()?
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::SelfCheck(c) => self_check(c),
        Cmd::Run(a) => run_cmd(a),
        Cmd::Scale(a) => scale_cmd(a),
        Cmd::Soak(a) => soak_cmd(a),
    }
}

fn soak_cmd(a: SoakArgs) -> anyhow::Result<()> {
    use v2sp_bench::soak;
    let tls = Arc::new(TlsMaterial::generate()?);
    let suites = a
        .suites
        .iter()
        .map(|n| Suite::parse(n, &tls))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(s) = suites.iter().find(|s| s.through_client()) {
        bail!(
            "{} goes through a client process; the soak drives our own clients only",
            s.name()
        );
    }
    let conns = soak::conns_that_fit(a.conns);
    if conns < a.conns {
        eprintln!(
            "note: {conns} connections held instead of {} (the fd limit allows no more; raise `ulimit -n`)",
            a.conns
        );
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan = soak::SoakPlan {
        duration: Duration::from_secs_f64(a.minutes.max(0.1) * 60.0),
        conns,
        active: a.active,
        churn: Duration::from_secs(a.churn_secs.max(1)),
        fault: Duration::from_secs(a.fault_secs.max(1)),
        sample: Duration::from_secs(a.sample_secs.max(1)),
        suites,
        workers: a.workers.unwrap_or(cpus).max(1),
        io: a.io,
        v2sp: match a.v2sp {
            Some(p) => p,
            None => std::env::current_exe()?.with_file_name("v2sp"),
        },
        out: a.out.unwrap_or_else(soak::default_out),
    };
    let rt = runtime(cpus)?;
    let outcome = rt.block_on(soak::soak(&plan))?;
    let report = soak::report(&plan, &outcome);
    std::fs::write(plan.out.join("report.md"), &report)?;
    println!("{report}\nreport: {}", plan.out.join("report.md").display());
    if !outcome.exact() {
        bail!("the panel's totals are not exactly what the clients moved (see the report)");
    }
    Ok(())
}

fn self_check(c: Common) -> anyhow::Result<()> {
    let bins = binaries(&c)?;
    let tls = Arc::new(TlsMaterial::generate()?);
    let suites = c
        .ciphers
        .iter()
        .map(|n| Suite::parse(n, &tls))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The Vision, QUIC and @sing-box suites go through a client process (and Vision through the TLS
    // target): `run` probes them.
    let skipped: Vec<&'static str> = suites
        .iter()
        .filter(|s| s.through_client())
        .map(|s| s.name())
        .collect();
    let suites: Vec<Suite> = suites.into_iter().filter(|s| !s.through_client()).collect();
    let kinds = servers(&c, &bins, &suites)?;
    let allowed = allowed_cpus();
    let (client, nserver) = cpu_split(&allowed, 1);
    if !c.no_pin && nserver > 0 {
        pin_self(&client)?;
    }
    let server_cpus =
        (!c.no_pin && nserver > 0).then(|| procstat::cpu_list(&allowed[allowed.len() - nserver..]));
    // After the pinning (which re-runs this process), so it is printed once.
    for n in skipped {
        println!("skip  {n:<32} (through a client process: probed at the start of `run`)");
    }
    let rt = runtime(1)?;
    rt.block_on(async {
        let target = v2sp_bench::target::start().await?;
        let mut failed = 0;
        for suite in &suites {
            for &k in kinds.iter().filter(|k| k.serves(suite)) {
                let srv = Server::start(k, suite, &bins, 1, server_cpus.as_deref())?;
                let via = Via::Proxy {
                    addr: srv.addr(),
                    suite: suite.clone(),
                };
                let r = v2sp_bench::scenarios::probe(&via, target, Duration::from_secs(20)).await;
                match &r {
                    Ok(()) => println!("ok    {:<32} {}", suite.name(), k.label()),
                    Err(e) => {
                        failed += 1;
                        println!(
                            "FAIL  {:<32} {}: {e:#}\n{}",
                            suite.name(),
                            k.label(),
                            srv.log_tail()
                        );
                    }
                }
                srv.stop();
            }
        }
        if failed > 0 {
            bail!("{failed} self-check(s) failed");
        }
        anyhow::Ok(())
    })
}

/// The XHTTP suites, for the default and `--quick` suite lists: only when the Xray client is
/// installed and a network namespace can be made for it (quick mode: about 7 s each on the
/// 2-CPU box, v2sp epoll/uring and Xray). The run then happens inside that namespace.
fn push_xhttp(v: &mut Vec<String>, bins: &Binaries) {
    if !bins.xray.exists() {
        eprintln!(
            "note: Xray not found at {}, the XHTTP suites are left out (scripts/install-test-deps.sh --with-xray)",
            bins.xray.display()
        );
    } else if !xhttp::netns_available() {
        eprintln!("note: `unshare --net` is not permitted here (root or CAP_SYS_ADMIN), the XHTTP suites are left out");
    } else {
        v.extend(XhttpMode::ALL.iter().map(|m| m.name().to_string()));
    }
}

fn run_cmd(a: RunArgs) -> anyhow::Result<()> {
    let c = a.common.clone();
    let bins = binaries(&c)?;
    let tls = Arc::new(TlsMaterial::generate()?);
    let names: Vec<String> = if a.quick && c.ciphers.join(",") == ALL_CIPHERS {
        let mut v: Vec<String> = QUICK_CIPHERS.iter().map(|s| s.to_string()).collect();
        // Each QUIC suite costs about 1.5 s here (4 servers); they need the sing-box client.
        if bins.singbox.exists() {
            v.extend(Quic::ALL.iter().map(|q| q.name().to_string()));
            // One suite through the real client both ways, so the front-end path is smoked.
            v.push(format!("aes-128-gcm{}", v2sp_bench::client::front::SUFFIX));
        }
        // VLESS + REALITY + Vision costs about 1 s here; it needs the shoes client.
        if bins.shoes.exists() {
            v.push(v2sp_bench::client::vision::REALITY_VISION.to_string());
        }
        push_xhttp(&mut v, &bins);
        v
    } else if c.ciphers.join(",") == ALL_CIPHERS {
        let mut v = c.ciphers.clone();
        push_xhttp(&mut v, &bins);
        v
    } else {
        c.ciphers.clone()
    };
    let ciphers = names
        .iter()
        .map(|n| Suite::parse(n, &tls))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let kinds = servers(&c, &bins, &ciphers)?;
    let scenarios = a
        .scenarios
        .iter()
        .map(|s| Scenario::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Xray (XHTTP suites' client, `xray` server) runs only in a loopback-only network namespace:
    // re-run the whole bench there (everything it measures is on loopback anyway).
    if ciphers.iter().any(|s| s.xhttp().is_some()) || kinds.contains(&ServerKind::Xray) {
        xhttp::reexec_in_loopback_netns()?;
    }
    let allowed = allowed_cpus();
    let wmax = a.workers.iter().copied().max().unwrap_or(1).max(1);
    let (client, nserver) = cpu_split(&allowed, wmax);
    let pin = !c.no_pin && nserver > 0;
    if pin {
        pin_self(&client)?;
    }
    let mut server_cpus = BTreeMap::new();
    for &w in &a.workers {
        let cpus = pin.then(|| {
            let k = w.clamp(1, nserver);
            procstat::cpu_list(&allowed[allowed.len() - k..])
        });
        server_cpus.insert(w.max(1), cpus);
    }
    let q = a.quick;
    let other_conns = 4;
    let mut bulk_conns = a
        .conns
        .clone()
        .unwrap_or_else(|| if q { vec![1, 4] } else { vec![1, 4, 16, 64] });
    if !bulk_conns.contains(&other_conns) {
        bulk_conns.push(other_conns);
        bulk_conns.sort_unstable();
    }
    let plan = Plan {
        quick: q,
        cipher_names: ciphers.iter().map(|m| m.name().to_string()).collect(),
        ciphers,
        servers: kinds,
        scenarios,
        rounds: a.rounds.unwrap_or(if q { 1 } else { 3 }).max(1),
        workers: a.workers.iter().map(|w| (*w).max(1)).collect(),
        bulk_conns,
        bulk_bytes: a.bulk_mib.unwrap_or(if q { 8 } else { 2048 }) << 20,
        other_conns,
        other_bulk_bytes: a.other_bulk_mib.unwrap_or(if q { 8 } else { 1024 }) << 20,
        upload: !a.no_upload,
        rate_secs: a.rate_secs.unwrap_or(if q { 0.5 } else { 3.0 }),
        rate_concurrency: 16,
        latency_count: a.latency_count.unwrap_or(if q { 300 } else { 20_000 }),
        latency_size: 64,
        idle_conns: a.idle_conns.unwrap_or(if q { 50 } else { 1000 }),
        deadline_s: if q { 20 } else { 120 },
        server_cpus,
        client_cpus: if pin {
            procstat::cpu_list(&client)
        } else {
            "unpinned".into()
        },
    };
    let started = report::utc_string();
    // At the start: the tree the binaries were (hopefully just) built from.
    let git = report::git_describe();
    let load_before = procstat::loadavg();
    let t = Instant::now();
    let rt = runtime(if pin { client.len() } else { 1 })?;
    let out = rt.block_on(run::run(&plan, &bins))?;
    let mut binaries = Vec::new();
    for k in &plan.servers {
        binaries.push(describe_binary(*k, &bins));
    }
    binaries.dedup();
    let env = Env {
        binaries,
        git,
        load_before,
        load_after: procstat::loadavg(),
        started,
        finished: report::utc_string(),
        wall_s: t.elapsed().as_secs_f64(),
        command: std::iter::once("v2sp-bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let dir = a
        .out
        .unwrap_or_else(|| PathBuf::from("results").join(report::timestamp()));
    report::write(&dir, &plan, &out, &env)?;
    println!("report: {}", dir.join("report.md").display());
    for p in &out.problems {
        eprintln!("problem: {p}");
    }
    // --quick is a smoke test: it fails only when something did not run at all.
    let measured = out.records.iter().filter(|r| r.server != "direct").count();
    if measured == 0 {
        bail!("nothing was measured");
    }
    // A peer that drops a few of the rate/idle connections (v2ray's VMess does, now and then)
    // is reported, but does not fail the smoke run; anything else does.
    let fatal = out
        .problems
        .iter()
        .filter(|p| p.contains(" v2sp-") || !(p.contains(": idle: opened ") || p.contains(": rate: ")))
        .count();
    if q && fatal > 0 {
        bail!("{fatal} problem(s) during the quick run (see the report)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn scale_steps_double_up_to_the_maximum() {
        assert_eq!(super::scale_steps(1), vec![1]);
        assert_eq!(super::scale_steps(2), vec![1, 2]);
        assert_eq!(super::scale_steps(6), vec![1, 2, 4, 6]);
        assert_eq!(super::scale_steps(8), vec![1, 2, 4, 8]);
    }
}
