//! `v2sp-dataplane --shm-dir DIR [--workers N]`: attach to the control plane's shared memory,
//! serve the configured nodes on pinned per-core runtimes, follow config generations, drain on
//! SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use v2sp_dataplane::node::{default_protocols, Engine, EngineOpts, Shared};
use v2sp_dataplane::stats::shm::ShmPort;
use v2sp_dataplane::stats::CorePort;
use v2sp_shared::shm::DataplaneShm;

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
    let args = Args::parse();
    let mut notes = Vec::new();
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

    let stop = Arc::new(AtomicBool::new(false));
    install_signal_handler(stop.clone())?;

    // Attach: the control plane creates the segments; wait with backoff until it has.
    let mut backoff = Duration::from_millis(100);
    let shm = loop {
        match DataplaneShm::attach(&args.shm_dir) {
            Ok(s) => break Arc::new(s),
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
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

    let shm2 = shm.clone();
    let ports = Arc::new(move |core: u16| {
        shm2.core(core)
            .map(|c| Box::new(ShmPort::new(c)) as Box<dyn CorePort>)
            .map_err(|e| e.to_string())
    });
    let opts = EngineOpts {
        workers: args.workers,
        grace: Duration::from_secs(args.grace_secs),
        ..Default::default()
    };
    let engine = Engine::start(opts, ports, Shared::new(default_protocols()), Arc::new(cfg))?;
    tracing::info!(cores = engine.cores, backend = %engine.backend, "{}", engine.backend_reason);
    let backend_code = match engine.backend {
        v2sp_dataplane::runtime::IoBackend::Uring => 1,
        v2sp_dataplane::runtime::IoBackend::Epoll => 2,
    };
    if !engine.wait_ready(Duration::from_secs(30)) {
        tracing::warn!("not every core became ready in 30 s");
    }
    if let Err(e) = shm.register(u32::try_from(engine.cores).unwrap_or(u32::MAX), backend_code) {
        tracing::warn!("register in ctl: {e}");
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    // Follow config generations until SIGTERM.
    let mut last_beat = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if last_beat.elapsed() >= Duration::from_secs(1) {
            shm.heartbeat();
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            last_beat = Instant::now();
        }
        if shm.config_gen() != gen {
            match shm.read_config() {
                Ok(Some((g, c))) => {
                    gen = g;
                    engine.update_config(Arc::new(c));
                    shm.ack_config(g);
                    tracing::info!(gen = g, "config applied");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("config generation unreadable: {e}"),
            }
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping: draining open connections");
    engine.shutdown();
    shm.unregister();
    Ok(())
}

/// SIGTERM/SIGINT set `stop` (handled on a small runtime thread; the main loop polls it).
fn install_signal_handler(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("v2sp-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int)) =
                    (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
                else {
                    tracing::error!("cannot install signal handlers");
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                stop.store(true, Ordering::SeqCst);
            });
        })?;
    Ok(())
}
