//! The data plane's handle on shared memory: attach, read the config, and per core the
//! single-writer traffic bank, the event ring, the command ring, and the user tables.

use super::sync::AtomicU64;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;

use super::control::ensure_core_files;
use super::layout::*;
use super::rcu;
use super::ring::Ring;
use super::segment::Segment;
use super::traffic::{TrafficWriter, DEFAULT_BANK_CAPACITY};
use super::user_table::UserTableView;
use super::{names, now_ms, Command, IpEvent, ShmError};
use crate::dpconfig::DataplaneConfig;

pub struct DataplaneShm {
    dir: PathBuf,
    ctl: Arc<Segment>,
    config: Segment,
    instance_id: u64,
}

impl DataplaneShm {
    /// Attach to the files the control plane created. Fails (the caller retries with backoff)
    /// while they do not exist; refuses a different layout version.
    pub fn attach(dir: &Path) -> Result<DataplaneShm, ShmError> {
        super::segment::check_dir(dir)?;
        let ctl = Segment::open(&dir.join(names::CTL), KIND_CTL)?;
        let config = Segment::open(&dir.join(names::CONFIG), KIND_CONFIG)?;
        let instance_id = ctl.header().instance_id;
        if config.header().instance_id != instance_id {
            return Err(ShmError::Busy {
                what: "control plane is recreating the segments".into(),
            });
        }
        Ok(DataplaneShm {
            dir: dir.to_path_buf(),
            ctl: Arc::new(ctl),
            config,
            instance_id,
        })
    }

    pub fn instance_id(&self) -> u64 {
        self.instance_id
    }

    fn words(&self) -> Result<&CtlWords, ShmError> {
        self.ctl.at(CTL_WORDS_OFF)
    }

    fn core_slot(&self, core: u16) -> Result<&CoreSlot, ShmError> {
        self.ctl.at(CTL_CORES_OFF + usize::from(core) * 64)
    }

    /// Whether a live process writes core `core`'s traffic file (its owner pid is alive).
    fn core_owned_by_live_process(&self, core: u16) -> bool {
        let path = self.dir.join(names::traffic(self.instance_id, core));
        let Ok(seg) = Segment::open(&path, KIND_TRAFFIC) else {
            return false;
        };
        super::traffic::banks(&seg).is_ok_and(|b| {
            let owner = b.meta.owner_pid.load(Acquire);
            owner == OWNER_CONTROL || super::segment::pid_alive(owner)
        })
    }

    /// Core slots still marked running although no live process writes their traffic file
    /// (a data plane that crashed) are marked stopped, so that publishes and harvests stop
    /// waiting for their acknowledgements. Returns the cores cleared.
    pub fn clear_dead_cores(&self) -> Vec<u16> {
        let mut cleared = Vec::new();
        for core in 0..MAX_CORES as u16 {
            let Ok(slot) = self.core_slot(core) else { continue };
            if slot.running.load(Acquire) == 1 && !self.core_owned_by_live_process(core) {
                slot.running.store(0, Release);
                cleared.push(core);
            }
        }
        cleared
    }

    /// The first block of `n` core slots (at a multiple of `n`) where no core runs: where a
    /// successor process counts while the process it replaces drains its connections.
    pub fn free_core_base(&self, n: u16) -> Option<u16> {
        if n == 0 {
            return None;
        }
        let free = |c: u16| {
            self.core_slot(c)
                .is_ok_and(|s| s.running.load(Acquire) == 0 && !self.core_owned_by_live_process(c))
        };
        (0..(MAX_CORES as u16 / n))
            .map(|i| i * n)
            .find(|&b| (b..b + n).all(free))
    }

    /// Register this process as the data plane.
    pub fn register(&self, cores: u32, backend: u32) -> Result<(), ShmError> {
        let w = self.words()?;
        w.dataplane_cores.store(cores, Relaxed);
        w.dataplane_backend.store(backend, Relaxed);
        w.dataplane_pid.store(std::process::id(), Release);
        w.dataplane_heartbeat_ms.store(now_ms(), Relaxed);
        Ok(())
    }

    /// Mark this process gone (clean shutdown).
    pub fn unregister(&self) {
        if let Ok(w) = self.words() {
            let _ = w
                .dataplane_pid
                .compare_exchange(std::process::id(), 0, Release, Relaxed);
        }
    }

    pub fn heartbeat(&self) {
        if let Ok(w) = self.words() {
            w.dataplane_heartbeat_ms.store(now_ms(), Relaxed);
        }
    }

    /// Current config generation (cheap; compare before calling `read_config`).
    pub fn config_gen(&self) -> u64 {
        self.words().map_or(0, |w| w.config_gen.load(Acquire))
    }

    /// Read the current config: `None` before the first publish.
    pub fn read_config(&self) -> Result<Option<(u64, DataplaneConfig)>, ShmError> {
        for _ in 0..100 {
            let g1 = self.config_gen();
            if g1 == 0 {
                return Ok(None);
            }
            let meta: &ConfigMeta = self.config.at(CONFIG_META_OFF)?;
            let side = meta.active.load(Acquire) as usize & 1;
            let len = (meta.len[side].load(Relaxed) as usize).min(CONFIG_BLOB_BYTES);
            let words: &[AtomicU64] = self
                .config
                .slice(CONFIG_BLOB_OFF + side * CONFIG_BLOB_BYTES, len.div_ceil(8))?;
            let mut bytes = Vec::with_capacity(len + 8);
            for w in words {
                bytes.extend_from_slice(&w.load(Relaxed).to_le_bytes());
            }
            bytes.truncate(len);
            std::sync::atomic::fence(Acquire);
            if self.config_gen() == g1 {
                let cfg = serde_json::from_slice(&bytes).map_err(|e| ShmError::Config(e.to_string()))?;
                return Ok(Some((g1, cfg)));
            }
        }
        Err(ShmError::Busy {
            what: "config kept changing while being read".into(),
        })
    }

    /// Tell the control plane which config generation is applied.
    pub fn ack_config(&self, gen: u64) {
        if let Ok(w) = self.words() {
            w.dataplane_config_gen.store(gen, Release);
        }
    }

    /// The per-core handle for core `core` (creates its files on first use).
    pub fn core(&self, core: u16) -> Result<CoreShm, ShmError> {
        if usize::from(core) >= MAX_CORES {
            return Err(ShmError::Invalid(format!("core {core} ≥ {MAX_CORES}")));
        }
        ensure_core_files(&self.dir, self.instance_id, core, DEFAULT_BANK_CAPACITY)?;
        let seg = |n: String, kind| Segment::open(&self.dir.join(n), kind);
        let traffic = TrafficWriter::claim(
            seg(names::traffic(self.instance_id, core), KIND_TRAFFIC)?,
            std::process::id(),
        )?;
        let events = Ring::new(seg(names::events(self.instance_id, core), KIND_EVENTS)?)?;
        let cmds = Ring::new(seg(names::cmds(self.instance_id, core), KIND_CMDS)?)?;
        let mut c = CoreShm {
            core,
            dir: self.dir.clone(),
            ctl: self.ctl.clone(),
            traffic,
            events,
            cmds,
            tables: (0..MAX_NODES).map(|_| None).collect(),
            seen_tables_gen: u64::MAX,
            acked_epoch: 0,
            known: Default::default(),
            gauges: seg(names::gauges(self.instance_id, core), KIND_GAUGES).ok(),
        };
        // Do not flip for a harvest that was requested before we started: only later ones.
        c.acked_epoch = c.words()?.harvest_epoch.load(Acquire);
        c.slot()?.acked_harvest_epoch.store(c.acked_epoch, Release);
        rcu::reader_start(&c.slot()?.running);
        c.tick();
        Ok(c)
    }
}

struct MappedTable {
    side: usize,
    incarnation: u64,
    seg: Segment,
}

/// What changed since the last tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Some node's user table switched: re-check open connections' users.
    pub tables_changed: bool,
    /// Current config generation (the caller compares with what it applied).
    pub config_gen: u64,
    /// A harvest flip happened.
    pub flipped: bool,
}

/// One core's view. Single-threaded: owned by the core thread.
pub struct CoreShm {
    core: u16,
    dir: PathBuf,
    ctl: Arc<Segment>,
    traffic: TrafficWriter,
    events: Ring,
    cmds: Ring,
    tables: Vec<Option<MappedTable>>,
    seen_tables_gen: u64,
    acked_epoch: u64,
    known: std::cell::RefCell<super::known_ips::KnownReader>,
    /// This core's open connections per node (`None`: the file could not be made).
    gauges: Option<Segment>,
}

impl CoreShm {
    fn words(&self) -> Result<&CtlWords, ShmError> {
        self.ctl.at(CTL_WORDS_OFF)
    }
    fn slot(&self) -> Result<&CoreSlot, ShmError> {
        self.ctl.at(CTL_CORES_OFF + usize::from(self.core) * 64)
    }
    fn node_slot(&self, node: usize) -> Result<&NodeSlot, ShmError> {
        self.ctl.at(CTL_NODES_OFF + node * 64)
    }

    pub fn core(&self) -> u16 {
        self.core
    }

    /// Call every ~100 ms: adopts new user tables (then acknowledges them), performs a
    /// requested harvest flip, refreshes the heartbeat.
    pub fn tick(&mut self) -> Tick {
        let mut t = Tick::default();
        // A clone of the ctl handle, so the words stay borrowed while `remap_tables` runs.
        let ctl = Arc::clone(&self.ctl);
        let Ok(w) = ctl.at::<CtlWords>(CTL_WORDS_OFF) else {
            return t;
        };
        let ack = ctl
            .at::<CoreSlot>(CTL_CORES_OFF + usize::from(self.core) * 64)
            .ok()
            .map(|s| &s.seen_tables_gen);
        let mut seen = self.seen_tables_gen;
        t.tables_changed = rcu::reader_tick(&w.tables_gen, &mut seen, ack, || self.remap_tables());
        self.seen_tables_gen = seen;
        let epoch = w.harvest_epoch.load(Acquire);
        t.config_gen = w.config_gen.load(Acquire);
        if epoch != self.acked_epoch && self.traffic.flip(epoch) {
            self.acked_epoch = epoch;
            if let Ok(s) = self.slot() {
                s.acked_harvest_epoch.store(epoch, Release);
            }
            t.flipped = true;
        }
        if let Ok(s) = self.slot() {
            s.heartbeat_ms.store(now_ms(), Relaxed);
        }
        t
    }

    fn remap_tables(&mut self) {
        for node in 0..MAX_NODES {
            let Ok(slot) = self.node_slot(node) else { continue };
            let Some((side, inc)) = rcu::reader_side(slot) else {
                self.tables[node] = None;
                continue;
            };
            let current = self.tables[node]
                .as_ref()
                .is_some_and(|t| t.side == side && t.incarnation == inc);
            if current {
                continue;
            }
            let path = self.dir.join(names::users(node as u16, side));
            self.tables[node] = match Segment::open(&path, KIND_USERS) {
                Ok(seg) => Some(MappedTable {
                    side,
                    incarnation: inc,
                    seg,
                }),
                Err(e) => {
                    tracing::warn!(core = self.core, node, error = %e, "cannot map user table");
                    None
                }
            };
        }
    }

    /// The node's current user table (as of the last tick).
    /// Whether the panel's current device lists (Xboard `sync.devices`, all nodes) have `ip`
    /// online for `user_id` of `node`: such an address is admitted at the device limit.
    pub fn known_elsewhere(&self, node: u16, user_id: u32, ip: std::net::IpAddr) -> bool {
        self.known.borrow_mut().contains(&self.dir, node, user_id, ip)
    }

    pub fn users(&self, node: u16) -> Option<UserTableView<'_>> {
        let t = self.tables.get(usize::from(node))?.as_ref()?;
        UserTableView::new(&t.seg, self.seen_tables_gen).ok()
    }

    /// Count payload bytes (upload = client→destination, download = destination→client).
    pub fn add_traffic(&mut self, node: u16, user_id: u32, up: u64, down: u64) {
        self.traffic.add(node, user_id, up, down);
    }

    /// Report an IP transition; false if the ring was full (counted as dropped).
    pub fn push_event(&mut self, ev: IpEvent) -> bool {
        self.events.push(ev.encode())
    }

    /// How many events fit in the ring now. A resync snapshot is pushed only into free space,
    /// over several ticks if need be: it must not crowd out (and so drop) live transitions.
    pub fn event_space(&self) -> usize {
        self.events.free()
    }

    pub fn pop_command(&mut self) -> Option<Command> {
        loop {
            let w = self.cmds.pop()?;
            if let Some(c) = Command::decode(w) {
                return Some(c);
            }
        }
    }

    /// This core's open connections per node: `counts[node]`, every node (0 for the others).
    pub fn set_node_conns(&self, counts: &[u64]) {
        let Some(g) = self
            .gauges
            .as_ref()
            .and_then(|s| s.slice::<AtomicU64>(GAUGES_OFF, MAX_NODES).ok())
        else {
            return;
        };
        for (i, v) in g.iter().enumerate() {
            v.store(counts.get(i).copied().unwrap_or(0), Relaxed);
        }
    }

    /// Replaces this core's open connections per (node, user) (see `user_conns.rs`).
    pub fn set_user_conns(
        &self,
        counts: &std::collections::BTreeMap<(u16, u32), u64>,
    ) -> Result<usize, ShmError> {
        let instance = self.ctl.header().instance_id;
        super::user_conns::write(&self.dir, instance, self.core, counts)
    }

    pub fn set_open_conns(&self, n: u64) {
        if let Ok(s) = self.slot() {
            s.open_conns.store(n, Relaxed);
        }
    }

    pub fn add_accepted(&self, n: u64) {
        if let Ok(s) = self.slot() {
            s.accepted_total.fetch_add(n, Relaxed);
        }
    }
}

impl Drop for CoreShm {
    fn drop(&mut self) {
        if let Ok(s) = self.slot() {
            s.running.store(0, Release);
        }
    }
}
