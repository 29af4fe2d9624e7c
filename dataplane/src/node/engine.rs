//! Process-level engine: starts the pinned core threads, hands each its port and the config,
//! distributes config generations, and drains on shutdown.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use v2sp_shared::dpconfig::DataplaneConfig;

use super::{Core, Shared};
use crate::net::handover::SockKind;
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

/// How the cores stop.
#[derive(Clone, Copy, Debug)]
struct Stop {
    /// How long open connections may go on.
    grace: Duration,
    /// A successor process serves the listening sockets (upgrade): see
    /// [`Core::stop_listening_for_successor`].
    successor: bool,
}

/// Sockets the cores answered a hand-over request with, and how many answered.
type Collected = Arc<Mutex<(usize, Vec<(SockKind, SocketAddr, OwnedFd)>)>>;

pub struct Engine {
    cfg_tx: watch::Sender<Arc<DataplaneConfig>>,
    stop_tx: watch::Sender<Option<Stop>>,
    /// Bumped to ask every core for duplicates of its listening sockets.
    collect_tx: watch::Sender<u64>,
    collected: Collected,
    /// Set to end a drain at once (SIGTERM while draining after an upgrade).
    cut: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ready: Arc<AtomicUsize>,
    pub backend: IoBackend,
    pub backend_reason: String,
    pub cores: usize,
    grace: Duration,
}

/// How many core threads [`Engine::start`] will run for these options and config.
pub fn planned_cores(opts: &EngineOpts, cfg: &DataplaneConfig) -> usize {
    let workers = if opts.workers == 0 {
        usize::try_from(cfg.workers).unwrap_or(0)
    } else {
        opts.workers
    };
    runtime::plan_cores(&crate::sys::allowed_cpus(), workers).len()
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
        let (stop_tx, stop_rx) = watch::channel(None::<Stop>);
        let (collect_tx, collect_rx) = watch::channel(0u64);
        let collected: Collected = Arc::new(Mutex::new((0, Vec::new())));
        let ready = Arc::new(AtomicUsize::new(0));
        let ready2 = ready.clone();
        let collected2 = collected.clone();
        let cut = Arc::new(AtomicBool::new(false));
        let cut2 = cut.clone();
        let default_grace = opts.grace;
        let body = move |idx: u16| {
            let (ports, shared, ready) = (ports.clone(), shared.clone(), ready2.clone());
            let (mut cfg_rx, mut stop_rx) = (cfg_rx.clone(), stop_rx.clone());
            let (mut collect_rx, collected) = (collect_rx.clone(), collected2.clone());
            let cut = cut2.clone();
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
                let stop = loop {
                    tokio::select! {
                        r = cfg_rx.changed() => {
                            if r.is_err() { break None; }
                            let cfg = cfg_rx.borrow_and_update().clone();
                            core.apply_config(&cfg);
                        }
                        r = collect_rx.changed() => {
                            if r.is_err() { break None; }
                            collect_rx.borrow_and_update();
                            let socks = core.handover_sockets();
                            let mut c = collected.lock().unwrap_or_else(|e| e.into_inner());
                            c.0 += 1;
                            c.1.extend(socks);
                        }
                        r = stop_rx.changed() => {
                            if r.is_err() { break None; }
                            if let Some(s) = *stop_rx.borrow() { break Some(s); }
                        }
                    }
                };
                let stop = stop.unwrap_or(Stop {
                    grace: default_grace,
                    successor: false,
                });
                // Drain: stop accepting, let open connections finish within the grace period.
                if stop.successor {
                    core.stop_listening_for_successor();
                } else {
                    core.stop_listening();
                }
                let deadline = Instant::now() + stop.grace;
                while core.busy() > 0 && Instant::now() < deadline && !cut.load(Ordering::Relaxed) {
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
            collect_tx,
            collected,
            cut,
            threads,
            ready,
            backend,
            backend_reason,
            cores: plan.len(),
            grace: default_grace,
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

    /// Duplicates of every core's listening sockets (for a successor process), or `None` if
    /// not every core answered within `timeout`.
    pub fn handover_sockets(&self, timeout: Duration) -> Option<Vec<(SockKind, SocketAddr, OwnedFd)>> {
        *self.collected.lock().unwrap_or_else(|e| e.into_inner()) = (0, Vec::new());
        self.collect_tx.send_modify(|g| *g += 1);
        let end = Instant::now() + timeout;
        loop {
            {
                let mut c = self.collected.lock().unwrap_or_else(|e| e.into_inner());
                if c.0 >= self.cores {
                    return Some(std::mem::take(&mut c.1));
                }
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A flag that ends a drain in progress at once when set (open connections are closed).
    pub fn drain_cutter(&self) -> Arc<AtomicBool> {
        self.cut.clone()
    }

    /// Stops accepting, drains (grace), final tick, joins the core threads.
    pub fn shutdown(self) {
        let grace = self.grace;
        self.stop(Stop {
            grace,
            successor: false,
        });
    }

    /// A successor serves the listening sockets now: stop accepting without losing a queued
    /// connection, keep serving open connections for up to `drain`, then close the rest and
    /// join the core threads.
    pub fn hand_over(self, drain: Duration) {
        self.stop(Stop {
            grace: drain,
            successor: true,
        });
    }

    fn stop(self, how: Stop) {
        let _ = self.stop_tx.send(Some(how));
        for t in self.threads {
            let _ = t.join();
        }
    }
}
