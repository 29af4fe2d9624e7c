//! Process-level engine: starts the pinned core threads, hands each its port and the config,
//! distributes config generations, and drains on shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use v2sp_shared::dpconfig::DataplaneConfig;

use super::{Core, Shared};
use crate::runtime::{self, IoBackend};
use crate::stats::CorePort;

/// Builds a core's port (called on the core thread; the port never leaves it).
pub type PortFactory = Arc<dyn Fn(u16) -> Result<Box<dyn CorePort>, String> + Send + Sync>;

#[derive(Clone, Debug)]
pub struct EngineOpts {
    /// 0 = one per allowed CPU (the config's `workers` is used when this is 0).
    pub workers: usize,
    /// Drain grace period on shutdown.
    pub grace: Duration,
    /// Tick period (port housekeeping, table checks).
    pub tick: Duration,
}

impl Default for EngineOpts {
    fn default() -> Self {
        EngineOpts {
            workers: 0,
            grace: Duration::from_secs(10),
            tick: Duration::from_millis(100),
        }
    }
}

pub struct Engine {
    cfg_tx: watch::Sender<Arc<DataplaneConfig>>,
    stop_tx: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    ready: Arc<AtomicUsize>,
    pub backend: IoBackend,
    pub backend_reason: String,
    pub cores: usize,
}

impl Engine {
    pub fn start(
        opts: EngineOpts,
        ports: PortFactory,
        shared: Arc<Shared>,
        cfg: Arc<DataplaneConfig>,
    ) -> std::io::Result<Engine> {
        let (backend, backend_reason) = runtime::select_backend(&cfg.io);
        let workers = if opts.workers == 0 {
            usize::try_from(cfg.workers).unwrap_or(0)
        } else {
            opts.workers
        };
        let plan = runtime::plan_cores(&crate::sys::allowed_cpus(), workers);
        let (cfg_tx, cfg_rx) = watch::channel(cfg);
        let (stop_tx, stop_rx) = watch::channel(false);
        let ready = Arc::new(AtomicUsize::new(0));
        let ready2 = ready.clone();
        let body = move |idx: u16| {
            let (ports, shared, ready) = (ports.clone(), shared.clone(), ready2.clone());
            let (mut cfg_rx, mut stop_rx) = (cfg_rx.clone(), stop_rx.clone());
            let opts = opts.clone();
            async move {
                let port = match ports(idx) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(core = idx, "cannot attach core port: {e}");
                        ready.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                let core = Core::new(idx, backend, port, shared);
                core.tick();
                let cfg = cfg_rx.borrow_and_update().clone();
                core.apply_config(&cfg);
                ready.fetch_add(1, Ordering::SeqCst);
                let ticker = {
                    let core = core.clone();
                    tokio::task::spawn_local(async move {
                        let mut iv = tokio::time::interval(opts.tick);
                        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            iv.tick().await;
                            core.tick();
                        }
                    })
                };
                loop {
                    tokio::select! {
                        r = cfg_rx.changed() => {
                            if r.is_err() { break; }
                            let cfg = cfg_rx.borrow_and_update().clone();
                            core.apply_config(&cfg);
                        }
                        r = stop_rx.changed() => {
                            if r.is_err() || *stop_rx.borrow() { break; }
                        }
                    }
                }
                // Drain: stop accepting, let open connections finish within the grace period.
                core.stop_listening();
                let deadline = Instant::now() + opts.grace;
                while core.busy() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                core.cancel_all();
                let deadline = Instant::now() + Duration::from_secs(1);
                while core.busy() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ticker.abort();
                core.tick(); // final stats tick
            }
        };
        let threads = runtime::start_cores(&plan, body)?;
        Ok(Engine {
            cfg_tx,
            stop_tx,
            threads,
            ready,
            backend,
            backend_reason,
            cores: plan.len(),
        })
    }

    /// Waits (bounded) until every core has applied the first config.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.ready.load(Ordering::SeqCst) < self.cores {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Publishes a new config generation to all cores.
    pub fn update_config(&self, cfg: Arc<DataplaneConfig>) {
        let _ = self.cfg_tx.send(cfg);
    }

    /// Stops accepting, drains (grace), final tick, joins the core threads.
    pub fn shutdown(self) {
        let _ = self.stop_tx.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
