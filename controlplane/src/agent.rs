//! The control-plane process: loads the config, attaches shared memory, replays the journal,
//! runs one worker per node plus the harvester, supervises the data plane, and on SIGTERM does
//! a final harvest and push before exiting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use v2sp_shared::config::{self, Config, NodeEntry};
use v2sp_shared::dpconfig::{DataplaneConfig, NodeConfig};
use v2sp_shared::shm::{Command, ControlShm};

use crate::metrics::NodeMetrics;
use crate::node::NodeWorker;
use crate::panel::{self, Dialect, NodeApi};
use crate::report::online::Online;
use crate::report::Accounting;
use crate::slots::SlotMap;
use crate::supervise::DataplaneChild;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running = 0,
    /// Stop pulling; wait for the final harvest, then push once.
    Draining = 1,
    Stopped = 2,
}

/// State shared by the node workers and the harvester.
pub struct Shared {
    pub shm: ControlShm,
    pub acct: Accounting,
    online: Mutex<Online>,
    served: Mutex<BTreeMap<u16, NodeConfig>>,
    base: DataplaneConfig,
    phase: AtomicU8,
    final_push: Mutex<bool>,
    wake: Condvar,
    sleep_lock: Mutex<()>,
    /// Smallest push interval any node uses, in ms (drives the harvest interval).
    min_push_ms: AtomicU64,
    slots: Mutex<SlotMap>,
    /// What `/metrics` shows of the node workers and the harvester.
    pub metrics: NodeMetrics,
    /// The event ring's drop counter as last seen.
    events_dropped: AtomicU64,
    /// Data-plane processes whose online IPs this process has a complete picture of.
    synced: Mutex<Vec<u32>>,
    /// Where certificates the panel's `cert_config` asks for are kept (`<StateDir>/certs`).
    pub cert_dir: PathBuf,
    /// The port-hopping firewall rules of the served Hysteria 2 nodes.
    pub hop: crate::hop::HopRules,
    /// The local route and outbound files (`Cores[].RouteConfigPath`/`OutboundConfigPath`),
    /// read at each node config build.
    pub local_routing: crate::routing::LocalRouting,
}

impl Shared {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Stopped,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
        let _g = self.sleep_lock.lock();
        self.wake.notify_all();
    }

    /// Sleep up to `d`, waking early when the phase changes.
    pub(crate) fn wake_all(&self) {
        let _g = self.sleep_lock.lock();
        self.wake.notify_all();
    }

    pub fn sleep(&self, d: Duration) {
        let g = self.sleep_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.phase() == Phase::Running {
            let _ = self.wake.wait_timeout(g, d);
        }
    }

    pub fn wait_final_push(&self) {
        let mut g = self.final_push.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !*g && Instant::now() < deadline {
            g = self
                .wake
                .wait_timeout(g, Duration::from_millis(200))
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn allow_final_push(&self) {
        *self.final_push.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    pub fn online(&self) -> MutexGuard<'_, Online> {
        self.online.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn note_push_interval(&self, d: Duration) {
        self.min_push_ms
            .fetch_min(d.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Set (or clear) what a node slot serves and republish the data-plane config.
    pub fn set_served(&self, slot: u16, nc: Option<NodeConfig>) {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let hop = nc.as_ref().map(|n| (n.tag.clone(), crate::hop::HopSpec::of(n)));
        let changed = match nc {
            Some(nc) => served.insert(slot, nc.clone()).as_ref() != Some(&nc),
            None => served.remove(&slot).is_some(),
        };
        if !changed {
            return;
        }
        // The rules follow what is served (a node the data plane does not serve hops nowhere).
        match hop {
            Some((tag, spec)) => {
                if let Err(e) = self.hop.apply(slot, &tag, spec) {
                    tracing::error!(node = %tag, "port hopping not set up (the node is served on its own port): {e}");
                }
            }
            None => {
                let tag = self.tag_of(slot);
                if let Err(e) = self.hop.apply(slot, &tag, None) {
                    tracing::error!(node = %tag, "cannot remove the node's port hopping rules: {e}");
                }
            }
        }
        let mut nodes: Vec<NodeConfig> = served.values().cloned().collect();
        // Two nodes on one port would each get a random share of the connections (every
        // listener has SO_REUSEPORT): the node configured later is not served until the
        // operator gives it its own port.
        let refused = v2sp_shared::dpconfig::listen_conflicts(&nodes);
        for &(slot, kept) in &refused {
            let tag = |s: u16| served.get(&s).map_or_else(String::new, |n| n.tag.clone());
            tracing::error!(
                node = %tag(slot),
                port = served.get(&slot).map_or(0, |n| n.port),
                listened_by = %tag(kept),
                "node not served: its port is already used by another node; give it its own port"
            );
        }
        nodes.retain(|n| !refused.iter().any(|&(s, _)| s == n.slot));
        let cfg = DataplaneConfig {
            nodes,
            ..self.base.clone()
        };
        match self.shm.publish_config(&cfg) {
            Ok(gen) => tracing::info!(gen, nodes = cfg.nodes.len(), "data-plane config published"),
            Err(e) => tracing::error!(error = %e, "cannot publish the data-plane config"),
        }
    }

    pub(crate) fn tag_of(&self, slot: u16) -> String {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .tag_of(slot)
            .map_or_else(|| format!("slot-{slot}"), str::to_string)
    }

    /// Harvest every core's bank into the journal, then clear the banks; drain IP events.
    pub fn harvest_once(&self, wait: Duration) {
        let mut banks = match self.shm.harvest(wait) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "harvest failed");
                return;
            }
        };
        banks.sort_by_key(|b| (b.instance_id, b.core, b.epoch));
        for b in &banks {
            match self.acct.ingest(b, &|slot| self.tag_of(slot)) {
                Ok(fresh) => {
                    if fresh {
                        for e in &b.entries {
                            self.metrics.counted(e.node, e.up, e.down);
                            self.metrics.counted_user(e.node, e.user_id, e.up, e.down);
                        }
                    }
                    if let Err(e) = self.shm.clear_bank(b.instance_id, b.core, b.epoch) {
                        tracing::warn!(error = %e, core = b.core, "cannot clear a harvested bank");
                    }
                }
                // Not journalled: leave the bank; it is harvested again next time.
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the accounting journal; traffic stays in shared memory")
                }
            }
        }
        let (events, dropped) = self.shm.drain_events(1 << 16);
        let live = self.shm.live_dataplanes();
        let mut online = self.online();
        for (source, ev) in &events {
            // 0: written by a process that is gone; its connections, and their IPs, went
            // with it.
            if *source != 0 {
                online.apply(*source, ev);
            }
        }
        // A process that died took its connections, and their IPs, with it.
        for gone in online.sources().into_iter().filter(|s| !live.contains(s)) {
            online.source_gone(gone);
        }
        drop(online);
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if dropped > self.events_dropped.swap(dropped, Ordering::Relaxed) {
            tracing::warn!(
                dropped,
                "online-IP events were dropped; asking the data plane to resync"
            );
            synced.clear();
        }
        synced.retain(|p| live.contains(p));
        // A data-plane process this one has not heard every event of (adopted after a restart
        // of ours, just started, the successor of an upgrade, or events were dropped) reports
        // every online IP once. The resync goes to every core; each process answers for itself.
        if live.iter().any(|p| !synced.contains(p)) && self.shm.broadcast(Command::ResyncIps) > 0 {
            *synced = live;
        }
    }
}

/// Options of `v2sp run`.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Do not start the data plane (systemd runs it as its own unit).
    pub no_dataplane: bool,
    pub dataplane_bin: Option<PathBuf>,
}

pub(crate) fn node_api(e: &NodeEntry) -> NodeApi {
    let mut api = NodeApi::new(
        e.api_host.clone(),
        e.api_key.clone(),
        u32::try_from(e.node_id).unwrap_or(0),
    );
    // A relative file:// host is resolved against the file that declared the node.
    if let Some(p) = e.standalone_file() {
        let p = std::path::absolute(&p).unwrap_or(p);
        api.api_host = format!("file://{}", p.display());
    }
    api.node_type = Some(e.node_type.clone()).filter(|t| !t.is_empty());
    api.timeout = Duration::from_secs(e.timeout_secs.max(1));
    api.send_ip = e.api_send_ip.as_deref().and_then(|s| s.parse().ok());
    api.ca_file = e.api_ca_path();
    api.dialect = match e.api_dialect {
        config::ApiDialect::Single => Dialect::Single,
        config::ApiDialect::UniProxy => Dialect::UniProxy,
        _ => Dialect::Auto,
    };
    api.version = e.api_version;
    api.machine_id = e.machine_id;
    if e.machine_id.is_some() && api.version == config::ApiVersion::Auto {
        // Machine auth exists only in the v2 API.
        api.version = config::ApiVersion::V2;
    }
    api
}

fn base_dataplane_config(cfg: &Config) -> DataplaneConfig {
    DataplaneConfig {
        workers: cfg.dataplane.workers,
        io: cfg.dataplane.io.as_str().to_string(),
        allow_private_destinations: cfg.dataplane.allow_private_destinations,
        drain_seconds: Some(cfg.dataplane.drain_seconds),
        timeouts: cfg.dataplane.timeouts.clone(),
        handshake_limits: cfg.dataplane.handshake_limits.clone(),
        nodes: Vec::new(),
    }
}

/// `v2sp run`.
pub fn run(opts: &RunOptions) -> anyhow::Result<()> {
    let loaded = config::load(&opts.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let cfg = loaded.config;
    let shm = ControlShm::create_or_attach(&cfg.dataplane.shm_dir)
        .with_context(|| format!("shared memory in {}", cfg.dataplane.shm_dir.display()))?;
    let acct =
        Accounting::open(&cfg.state_dir).with_context(|| format!("state dir {}", cfg.state_dir.display()))?;
    let shared = Arc::new(Shared {
        shm,
        acct,
        online: Mutex::new(Online::default()),
        served: Mutex::new(BTreeMap::new()),
        base: base_dataplane_config(&cfg),
        phase: AtomicU8::new(Phase::Running as u8),
        final_push: Mutex::new(false),
        wake: Condvar::new(),
        sleep_lock: Mutex::new(()),
        min_push_ms: AtomicU64::new(u64::MAX),
        slots: Mutex::new(SlotMap::load(&cfg.state_dir)),
        metrics: NodeMetrics::with_top_users(cfg.metrics.top_users),
        events_dropped: AtomicU64::new(0),
        synced: Mutex::new(Vec::new()),
        cert_dir: cfg.state_dir.join("certs"),
        // Removes the rules of a run that ended without removing its own (a crash).
        hop: crate::hop::HopRules::open(&cfg.state_dir),
        local_routing: crate::routing::LocalRouting::from_config(&cfg),
    });
    // Bytes a previous run journalled-but-did-not-clear, or left in banks, are taken first.
    shared.harvest_once(Duration::from_millis(200));

    let mut dp = if opts.no_dataplane {
        None
    } else {
        let running = Some(shared.shm.status().dataplane_pid).filter(|&p| p != 0);
        Some(DataplaneChild::start(
            opts.dataplane_bin.clone(),
            &cfg.dataplane.shm_dir,
            running,
        )?)
    };

    if let Some(addr) = cfg.metrics.listen {
        match crate::metrics::start(addr, shared.clone()) {
            Ok(bound) => tracing::info!(%bound, "metrics: GET /metrics"),
            Err(e) => tracing::error!(%addr, error = %e, "metrics endpoint not started"),
        }
    }
    let mut workers = start_workers(&shared, &cfg);
    let harvester = {
        let s = shared.clone();
        std::thread::Builder::new()
            .name("harvest".into())
            .spawn(move || {
                let mut last = Instant::now();
                while s.phase() == Phase::Running {
                    // Re-read at least every 500 ms: a node's first config (or a panel that
                    // recovered) shortens the period at once instead of after the 10 s
                    // default already being slept.
                    let push_ms = s.min_push_ms.load(Ordering::Relaxed);
                    let every = Duration::from_millis((push_ms / 2).clamp(500, 10_000));
                    let left = (last + every).saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        s.sleep(left.min(Duration::from_millis(500)));
                        continue;
                    }
                    last = Instant::now();
                    s.harvest_once(Duration::from_secs(2));
                    s.shm.heartbeat();
                }
            })?
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(nodes = cfg.nodes.len(), config = %opts.config.display(), "v2sp control plane running");

    // Signals and config reload on the main thread.
    let (sig_tx, sig_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let s = crate::sys::wait_signal();
            if sig_tx.send(s).is_err() {
                return;
            }
        })?;
    let mut watched = cfg_watch_state(&opts.config);
    let mut current = cfg;
    loop {
        match sig_rx.recv_timeout(Duration::from_secs(2)) {
            Ok(s) if s == libc::SIGHUP => {
                tracing::info!("SIGHUP: reloading the config file");
                reload(&shared, &opts.config, &mut current, &mut workers);
            }
            Ok(_) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some(d) = dp.as_mut() {
                    d.check(Some(shared.shm.dataplane_pid()).filter(|&p| p != 0));
                }
                let now = cfg_watch_state(&opts.config);
                if now != watched {
                    watched = now;
                    tracing::info!("config file changed: reloading");
                    reload(&shared, &opts.config, &mut current, &mut workers);
                }
            }
            Err(_) => break,
        }
    }

    tracing::info!("stopping: draining the data plane, final harvest and push");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    shared.set_phase(Phase::Draining);
    if let Some(d) = dp.take() {
        d.stop(Duration::from_secs(15));
    }
    let _ = harvester.join();
    shared.harvest_once(Duration::from_secs(2));
    shared.allow_final_push();
    for (_, w) in workers {
        let _ = w.thread.join();
    }
    // The agent stops: its redirects go with it (the next start installs them again).
    shared.hop.remove_all();
    shared.set_phase(Phase::Stopped);
    let (up, down) = shared.acct.unreported_total();
    if up + down > 0 {
        tracing::warn!(
            up,
            down,
            "bytes not yet accepted by the panel stay in the journal for the next start"
        );
    }
    Ok(())
}

pub(crate) struct WorkerHandle {
    pub(crate) entry: NodeEntry,
    pub(crate) slot: u16,
    pub(crate) retire: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) thread: std::thread::JoinHandle<()>,
    /// A machine-mode entry's supervisor (no slot of its own; it stops its nodes itself).
    pub(crate) machine: bool,
}

impl WorkerHandle {
    /// Stop the worker (it reports what it still owes first); `removed`: the node is no longer
    /// served at all, so its listener, online state and users are unpublished.
    pub(crate) fn stop(self, shared: &Shared, tag: &str, removed: bool) {
        self.retire.store(true, Ordering::Release);
        {
            let _g = shared.sleep_lock.lock();
            shared.wake.notify_all();
        }
        let _ = self.thread.join();
        if removed && !self.machine {
            shared.set_served(self.slot, None);
            // Its connections are closed; a node that gets the slot later starts clean.
            shared.online().reset_node(self.slot);
            shared.metrics.forget(self.slot);
            if let Err(e) = shared.shm.remove_node(self.slot) {
                tracing::warn!(node = %tag, error = %e, "cannot unpublish the node's users");
            }
        }
    }
}

type Workers = BTreeMap<String, WorkerHandle>;

fn start_workers(shared: &Arc<Shared>, cfg: &Config) -> Workers {
    let live: Vec<String> = cfg.nodes.iter().map(NodeEntry::tag).collect();
    let mut out = Workers::new();
    for e in &cfg.nodes {
        if let Some(w) = start_worker(shared, e, &live) {
            out.insert(e.tag(), w);
        }
    }
    out
}

fn start_worker(shared: &Arc<Shared>, e: &NodeEntry, live: &[String]) -> Option<WorkerHandle> {
    if e.is_machine() {
        return crate::machine::start(shared, e);
    }
    start_node_worker(shared, e, live, None)
}

/// One node's worker; `ws`: a machine's WebSocket channel routed to this node.
pub(crate) fn start_node_worker(
    shared: &Arc<Shared>,
    e: &NodeEntry,
    live: &[String],
    ws: Option<crate::node::WsLink>,
) -> Option<WorkerHandle> {
    let tag = e.tag();
    let slot = shared
        .slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .slot_for(&tag, live);
    let Some(slot) = slot else {
        tracing::error!(node = %tag, "no free node slot (256 nodes max)");
        return None;
    };
    let panel = match panel::open(node_api(e)) {
        Ok(p) => p,
        Err(err) => {
            tracing::error!(node = %tag, error = %err, "node not started: bad panel settings");
            return None;
        }
    };
    let retire = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut worker = NodeWorker::new(
        slot,
        tag.clone(),
        e.clone(),
        panel,
        shared.clone(),
        retire.clone(),
    );
    if let Some(link) = ws {
        worker = worker.with_ws(link);
    }
    let thread = std::thread::Builder::new()
        .name(format!("node-{slot}"))
        .spawn(move || worker.run())
        .ok()?;
    Some(WorkerHandle {
        entry: e.clone(),
        slot,
        retire,
        thread,
        machine: false,
    })
}

/// Apply a changed config file: nodes whose entry is unchanged keep running untouched.
/// Removed or changed nodes' workers stop (and changed ones restart); other settings need a
/// restart of the process and are logged.
fn reload(shared: &Arc<Shared>, path: &Path, current: &mut Config, workers: &mut Workers) {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("config reload rejected, keeping the running config: {e}");
            return;
        }
    };
    let new = loaded.config;
    let live: Vec<String> = new.nodes.iter().map(NodeEntry::tag).collect();
    // Stop workers of removed or changed nodes. A changed node keeps its slot (same tag), so
    // its listener and connections are untouched until the new worker's first pull applies
    // the new settings; a removed node is unpublished.
    let stale: Vec<String> = workers
        .iter()
        .filter(|(tag, w)| new.nodes.iter().find(|n| &n.tag() == *tag) != Some(&w.entry))
        .map(|(t, _)| t.clone())
        .collect();
    for tag in stale {
        if let Some(w) = workers.remove(&tag) {
            let removed = !live.contains(&tag);
            if removed {
                tracing::info!(node = %tag, "node removed from the config: no longer served");
            }
            w.stop(shared, &tag, removed);
        }
    }
    if new.dataplane.shm_dir != current.dataplane.shm_dir
        || new.state_dir != current.state_dir
        || new.metrics != current.metrics
    {
        tracing::warn!("ShmDir/StateDir/Metrics changes take effect after a restart");
    }
    for e in &new.nodes {
        if let std::collections::btree_map::Entry::Vacant(slot) = workers.entry(e.tag()) {
            if let Some(w) = start_worker(shared, e, &live) {
                slot.insert(w);
            }
        }
    }
    *current = new;
}

fn cfg_watch_state(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}
