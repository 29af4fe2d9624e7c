//! `v2sp-dataplane --shm-dir DIR [--workers N]`: attach to the control plane's shared memory,
//! serve the configured nodes on pinned per-core runtimes, follow config generations, drain on
//! SIGTERM; on SIGUSR2 hand every listening socket to a successor started from the installed
//! binary and drain (see `v2sp_dataplane::upgrade`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use v2sp_dataplane::limits::gcra::RateLimiters;
use v2sp_dataplane::net::handover;
use v2sp_dataplane::node::{default_protocols, planned_cores, Engine, EngineOpts, Shared};
use v2sp_dataplane::stats::shm::ShmPort;
use v2sp_dataplane::stats::CorePort;
use v2sp_dataplane::upgrade;
use v2sp_shared::shm::{DataplaneShm, RateTable};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "v2sp-dataplane", about = "v2sp data plane")]
struct Args {
    /// Directory with the control plane's shared-memory files.
    #[arg(long, default_value = "/dev/shm/v2sp", env = "V2SP_SHM_DIR")]
    shm_dir: PathBuf,
    /// Worker (core) threads; 0 = config value, or one per allowed CPU.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Seconds open connections may finish after SIGTERM.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// The control plane's config file, read for its `Log` section only (level, format,
    /// output). The V2SP_LOG* variables, which `v2sp run` sets for the data plane it starts,
    /// take precedence.
    #[arg(long, env = "V2SP_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    // Before any thread starts (they inherit the mask): a parent may have blocked SIGTERM.
    let unblocked = v2sp_dataplane::sys::unblock_signals();
    // Descriptors inherited from the process this one replaces are taken before anything
    // else opens a file (their numbers must not be reused first).
    let (inherited, mut notes) = handover::inherit_from_env();
    let ready_pipe = upgrade::ready_pipe_from_env();
    #[cfg(feature = "quic")]
    let quic_handoff = v2sp_dataplane::node::quic_handoff::adopt_from_env();
    #[cfg(not(feature = "quic"))]
    let quic_handoff = false;
    let args = Args::parse();
    let config_log = args
        .config
        .as_ref()
        .and_then(|p| match v2sp_shared::config::load(p) {
            Ok(l) => Some(l.config.log),
            Err(e) => {
                notes.push(format!("log settings of {} not used: {e}", p.display()));
                None
            }
        });
    let (settings, warnings) = v2sp_shared::logging::Settings::resolve(config_log.as_ref());
    let (_, problem) = v2sp_shared::logging::init(&settings);
    for w in notes.iter().chain(&warnings).chain(problem.iter()) {
        tracing::warn!("{w}");
    }
    if std::env::var("V2SP_THP").as_deref() != Ok("1") {
        if let Err(e) = v2sp_dataplane::sys::disable_transparent_huge_pages() {
            tracing::warn!("cannot opt out of transparent huge pages: {e}");
        }
    }

    if let Err(e) = unblocked {
        tracing::warn!("cannot unblock SIGTERM/SIGINT/SIGHUP/SIGUSR2: {e}");
    }
    if ready_pipe.is_some() {
        tracing::info!(
            sockets = inherited,
            "starting as the successor of a data plane being upgraded"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let upgrade_requested = Arc::new(AtomicBool::new(false));
    install_signal_handler(stop.clone(), upgrade_requested.clone())?;

    // Attach: the control plane creates the segments; wait with backoff until it has.
    let mut backoff = Duration::from_millis(100);
    let shm = loop {
        match DataplaneShm::attach(&args.shm_dir) {
            Ok(s) => break Arc::new(s),
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                if ready_pipe.is_some() {
                    // The process being replaced runs on the same files: what fails now
                    // (another layout version, say) will not pass by waiting.
                    anyhow::bail!("cannot attach to {}: {e}", args.shm_dir.display());
                }
                tracing::info!(
                    "waiting for the control plane's shm in {}: {e}",
                    args.shm_dir.display()
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    let (mut gen, cfg) = loop {
        match shm.read_config() {
            Ok(Some(c)) => break c,
            Ok(None) => {}
            Err(e) => tracing::warn!("config not readable yet: {e}"),
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    shm.ack_config(gen);

    let opts = EngineOpts {
        workers: args.workers,
        grace: Duration::from_secs(args.grace_secs),
        ..Default::default()
    };
    let cleared = shm.clear_dead_cores();
    if !cleared.is_empty() {
        tracing::info!(?cleared, "core slots of a data plane that is gone marked stopped");
    }
    // A successor counts in core slots the process it replaces does not use; a process
    // started normally continues slot 0 on (and the banks a crashed predecessor left there).
    let core_base = match ready_pipe {
        Some(_) => {
            let n = u16::try_from(planned_cores(&opts, &cfg)).unwrap_or(u16::MAX);
            upgrade::core_base_from_env()
                .or_else(|| shm.free_core_base(n))
                .ok_or_else(|| anyhow::anyhow!("no free block of {n} core slots for the successor"))?
        }
        None => 0,
    };
    let shm2 = shm.clone();
    let ports = Arc::new(move |core: u16| {
        core.checked_add(core_base)
            .ok_or_else(|| "core slot out of range".to_string())
            .and_then(|c| shm2.core(c).map_err(|e| e.to_string()))
            .map(|c| Box::new(ShmPort::new(c)) as Box<dyn CorePort>)
    });
    let mut drain = cfg_drain(&cfg);
    // Speed-limit clocks in the shm directory: a successor and the process it replaces
    // share each user's budget. Without the file, limits hold per process.
    let rates = match RateTable::open(&args.shm_dir) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("speed limits are per process (no shared clocks): {e}");
            None
        }
    };
    // QUIC stateless resets signed with the shm directory's key: after an upgrade the
    // successor's resets end the predecessor's connections at once (their clients redial).
    #[cfg(feature = "quic")]
    match v2sp_shared::shm::quic_reset_key(&args.shm_dir) {
        Ok(k) => v2sp_dataplane::node::set_quic_reset_key(k),
        Err(e) => tracing::warn!("QUIC clients reconnect at their idle timeout after an upgrade: {e}"),
    }
    let shared = Shared::with_rates(default_protocols(), RateLimiters::new(rates));
    shared.core_base.store(core_base, Ordering::Relaxed);
    let engine = Engine::start(opts, ports, shared, Arc::new(cfg))?;
    tracing::info!(cores = engine.cores, backend = %engine.backend, "{}", engine.backend_reason);
    let backend_code = match engine.backend {
        v2sp_dataplane::runtime::IoBackend::Uring => 1,
        v2sp_dataplane::runtime::IoBackend::Epoll => 2,
    };
    if !engine.wait_ready(Duration::from_secs(30)) {
        tracing::warn!("not every core became ready in 30 s");
    }
    let unclaimed = handover::close_unclaimed();
    if unclaimed > 0 {
        tracing::warn!(unclaimed, "inherited sockets no core took were closed");
    }
    if let Err(e) = shm.register(u32::try_from(engine.cores).unwrap_or(u32::MAX), backend_code) {
        tracing::warn!("register in ctl: {e}");
    }
    match ready_pipe {
        // The process being replaced tells systemd that this one is the service now.
        Some(p) => {
            if let Err(e) = upgrade::report_ready(p, quic_handoff) {
                tracing::error!("cannot tell the data plane being replaced that this one serves: {e}");
            }
        }
        None => {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        }
    }
    tracing::info!(core_base, "serving");

    // Follow config generations until SIGTERM (or until a successor serves).
    let mut last_beat = Instant::now();
    let mut pending: Option<upgrade::Pending> = None;
    let mut successor = None;
    let me = std::process::id();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if upgrade_requested.swap(false, Ordering::SeqCst) && pending.is_none() {
            let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            match upgrade::start_successor(&engine, &argv) {
                Ok(p) => pending = Some(p),
                Err(e) => {
                    tracing::error!("upgrade failed: {e}");
                    upgrade::write_status(&args.shm_dir, &format!("failed {me} {e}"));
                }
            }
        }
        if let Some(p) = pending.take() {
            match p.poll() {
                Err(still) => pending = Some(still),
                Ok(Ok(s)) => {
                    #[cfg(feature = "quic")]
                    v2sp_dataplane::node::quic_handoff::successor_ready(s.quic_handoff);
                    successor = Some(s);
                    break;
                }
                Ok(Err(e)) => {
                    tracing::error!("upgrade failed: {e}");
                    upgrade::write_status(&args.shm_dir, &format!("failed {me} {e}"));
                }
            }
        }
        if last_beat.elapsed() >= Duration::from_secs(1) {
            shm.heartbeat();
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            last_beat = Instant::now();
        }
        if shm.config_gen() != gen {
            match shm.read_config() {
                Ok(Some((g, c))) => {
                    gen = g;
                    drain = cfg_drain(&c);
                    engine.update_config(Arc::new(c));
                    shm.ack_config(g);
                    tracing::info!(gen = g, "config applied");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("config generation unreadable: {e}"),
            }
        }
    }
    if let Some(s) = successor {
        // systemd follows the successor from now on (NotifyAccess=main: only the main
        // process may say so, and this one still is).
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::MainPid(s.pid)]);
        upgrade::write_status(&args.shm_dir, &format!("ok {me} {}", s.pid));
        tracing::info!(
            successor = s.pid,
            drain_secs = drain.as_secs(),
            "the successor serves; draining this process"
        );
        // SIGTERM (systemctl stop, the control plane stopping) ends the drain at once.
        let cut = engine.drain_cutter();
        let stop2 = stop.clone();
        let _ = std::thread::Builder::new()
            .name("v2sp-drain".into())
            .spawn(move || loop {
                if stop2.load(Ordering::SeqCst) {
                    cut.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            });
        engine.hand_over(drain);
        tracing::info!("drained; exiting");
        return Ok(());
    }
    if let Some(p) = pending {
        tracing::warn!("{}", p.abandon("stopping during an upgrade"));
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping: draining open connections");
    engine.shutdown();
    shm.unregister();
    Ok(())
}

/// `Dataplane.DrainSeconds` of a config generation.
fn cfg_drain(cfg: &v2sp_shared::dpconfig::DataplaneConfig) -> Duration {
    Duration::from_secs(u64::from(
        cfg.drain_seconds
            .unwrap_or(v2sp_shared::dpconfig::DEFAULT_DRAIN_SECONDS),
    ))
}

/// SIGTERM/SIGINT set `stop`, SIGUSR2 sets `upgrade` (handled on a small runtime thread; the
/// main loop polls both).
fn install_signal_handler(stop: Arc<AtomicBool>, upgrade: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("v2sp-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int), Ok(mut usr2)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::user_defined2()),
                ) else {
                    tracing::error!("cannot install signal handlers");
                    return;
                };
                loop {
                    tokio::select! {
                        _ = term.recv() => break,
                        _ = int.recv() => break,
                        _ = usr2.recv() => upgrade.store(true, Ordering::SeqCst),
                    }
                }
                stop.store(true, Ordering::SeqCst);
            });
        })?;
    Ok(())
}
