//! The control plane's handle on shared memory: it creates the files, publishes the
//! data-plane config and the user tables, harvests the traffic banks, and exchanges IP events
//! and commands with the cores.

use super::sync::AtomicU64;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::layout::*;
use super::rcu;
use super::ring::{ring_file_size, Ring};
use super::segment::{pid_alive, Segment};
use super::traffic::{banks, clear_epoch, flip_for_dead_writer, idle_banks, read_bank, HarvestedBank};
use super::user_table::{capacities_for, table_file_size, write_table, UserEntry};
use super::{names, now_ms, Command, IpEvent, ShmError};
use crate::cred::CredKind;
use crate::dpconfig::DataplaneConfig;

/// How long to wait for cores to acknowledge a table generation or a harvest flip before
/// reporting them as stuck.
const POLL: Duration = Duration::from_millis(1);

pub struct ControlShm {
    dir: PathBuf,
    ctl: Segment,
    config: Segment,
    instance_id: u64,
    /// Open user-table sides, (node, side) → segment.
    tables: Mutex<BTreeMap<(u16, usize), Segment>>,
    /// Per-core files of this instance and orphans of earlier instances.
    cores: Mutex<BTreeMap<(u64, u16), CoreFiles>>,
    /// Serialises publishes (one node's publish at a time keeps the RCU reasoning simple);
    /// holds the key-hash scratch buffer the table builds reuse.
    publish_lock: Mutex<Vec<u64>>,
}

struct CoreFiles {
    traffic: Segment,
    events: Option<Ring>,
    cmds: Option<Ring>,
}

/// What a publish did (for logs and the benchmark).
#[derive(Clone, Debug)]
pub struct PublishStats {
    pub users: usize,
    pub side: usize,
    pub tables_gen: u64,
    pub recreated_file: bool,
    pub waited: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct CoreStatus {
    pub core: u16,
    pub running: bool,
    pub open_conns: u64,
    pub accepted_total: u64,
    /// Bytes counted in the active bank since the last harvest (racy snapshot).
    pub unharvested_up: u64,
    pub unharvested_down: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Status {
    pub instance_id: u64,
    pub control_pid: u32,
    pub dataplane_pid: u32,
    pub dataplane_alive: bool,
    pub dataplane_backend: u32,
    pub config_gen: u64,
    pub dataplane_config_gen: u64,
    pub tables_gen: u64,
    pub harvest_epoch: u64,
    pub nodes: Vec<(u16, u32)>,
    pub cores: Vec<CoreStatus>,
}

impl ControlShm {
    /// Attach to a valid existing `ctl` in `dir` (so a restarted control plane keeps the data
    /// plane serving), or create a fresh set of files.
    pub fn create_or_attach(dir: &Path) -> Result<ControlShm, ShmError> {
        super::segment::create_dir(dir)?;
        let ctl_path = dir.join(names::CTL);
        let cfg_path = dir.join(names::CONFIG);
        let attached = match (
            Segment::open(&ctl_path, KIND_CTL),
            Segment::open(&cfg_path, KIND_CONFIG),
        ) {
            (Ok(ctl), Ok(cfg)) if ctl.header().instance_id == cfg.header().instance_id => Some((ctl, cfg)),
            (Err(e @ ShmError::Version { .. }), _) => return Err(e),
            _ => None,
        };
        let (ctl, config) = match attached {
            Some(p) => p,
            None => {
                let instance = rand_u64();
                let cfg = Segment::create(
                    &cfg_path,
                    CONFIG_SIZE,
                    SegHeader::new(KIND_CONFIG, 1, CONFIG_BLOB_BYTES, instance, CONFIG_SIZE),
                )?;
                // ctl last: its presence means "the set is complete".
                let ctl = Segment::create(
                    &ctl_path,
                    CTL_SIZE,
                    SegHeader::new(KIND_CTL, 64, MAX_NODES, instance, CTL_SIZE),
                )?;
                (ctl, cfg)
            }
        };
        let me = Self::from_parts(dir, ctl, config)?;
        me.words().control_pid.store(std::process::id(), Release);
        me.heartbeat();
        sweep_temporaries(dir);
        Ok(me)
    }

    /// Attach read-mostly to existing files without registering as the control plane (for
    /// `v2sp status` and tools). Fails if the files do not exist.
    pub fn open_existing(dir: &Path) -> Result<ControlShm, ShmError> {
        super::segment::check_dir(dir)?;
        let ctl = Segment::open(&dir.join(names::CTL), KIND_CTL)?;
        let config = Segment::open(&dir.join(names::CONFIG), KIND_CONFIG)?;
        Self::from_parts(dir, ctl, config)
    }

    fn from_parts(dir: &Path, ctl: Segment, config: Segment) -> Result<ControlShm, ShmError> {
        let instance_id = ctl.header().instance_id;
        let me = ControlShm {
            dir: dir.to_path_buf(),
            ctl,
            config,
            instance_id,
            tables: Mutex::new(BTreeMap::new()),
            cores: Mutex::new(BTreeMap::new()),
            publish_lock: Mutex::new(Vec::new()),
        };
        me.scan_core_files()?;
        Ok(me)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn instance_id(&self) -> u64 {
        self.instance_id
    }

    fn words(&self) -> &CtlWords {
        // The ctl segment was size-checked at open; a failure here is a bug, and we fall back
        // to a leaked zeroed word set rather than panicking in production.
        self.ctl.at(CTL_WORDS_OFF).unwrap_or_else(|_| fallback_words())
    }
    fn node_slot(&self, node: u16) -> Result<&NodeSlot, ShmError> {
        if usize::from(node) >= MAX_NODES {
            return Err(ShmError::Invalid(format!("node slot {node} ≥ {MAX_NODES}")));
        }
        self.ctl.at(CTL_NODES_OFF + usize::from(node) * 64)
    }
    fn core_slot(&self, core: u16) -> Result<&CoreSlot, ShmError> {
        if usize::from(core) >= MAX_CORES {
            return Err(ShmError::Invalid(format!("core {core} ≥ {MAX_CORES}")));
        }
        self.ctl.at(CTL_CORES_OFF + usize::from(core) * 64)
    }

    pub fn heartbeat(&self) {
        self.words().control_heartbeat_ms.store(now_ms(), Relaxed);
    }

    /// Whether the data plane process that claimed the segments is alive.
    pub fn dataplane_alive(&self) -> bool {
        pid_alive(self.words().dataplane_pid.load(Acquire))
    }

    /// The pid of the data plane registered in `ctl`, or 0 when none is alive.
    pub fn dataplane_pid(&self) -> u32 {
        let pid = self.words().dataplane_pid.load(Acquire);
        if pid_alive(pid) {
            pid
        } else {
            0
        }
    }

    /// Cores whose acknowledgements publishes and harvests must wait for.
    fn running_cores(&self) -> Vec<u16> {
        if !self.dataplane_alive() {
            return Vec::new();
        }
        (0..MAX_CORES as u16)
            .filter(|&c| self.core_slot(c).is_ok_and(|s| s.running.load(Acquire) == 1))
            .collect()
    }

    /// Publish a new data-plane config (seqlock-style A/B; the reader validates the gen).
    pub fn publish_config(&self, cfg: &DataplaneConfig) -> Result<u64, ShmError> {
        let json = serde_json::to_vec(cfg).map_err(|e| ShmError::Config(e.to_string()))?;
        if json.len() > CONFIG_BLOB_BYTES {
            return Err(ShmError::Config(format!(
                "config is {} bytes, the limit is {CONFIG_BLOB_BYTES}",
                json.len()
            )));
        }
        let _g = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        let meta: &ConfigMeta = self.config.at(CONFIG_META_OFF)?;
        let side = 1 - (meta.active.load(Acquire) as usize & 1);
        let words: &[AtomicU64] = self
            .config
            .slice(CONFIG_BLOB_OFF + side * CONFIG_BLOB_BYTES, CONFIG_BLOB_BYTES / 8)?;
        for (w, chunk) in words.iter().zip(json.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            w.store(u64::from_le_bytes(b), Relaxed);
        }
        meta.len[side].store(json.len() as u64, Relaxed);
        meta.active.store(side as u32, Release);
        Ok(self.words().config_gen.fetch_add(1, AcqRel) + 1)
    }

    /// Publish the complete user list of a node. Builds the inactive side, switches to it,
    /// bumps the tables generation. Waits (up to `wait`) until every running core has left
    /// the side it is about to overwrite.
    pub fn publish_users(
        &self,
        node: u16,
        kind: CredKind,
        users: &[UserEntry],
        wait: Duration,
    ) -> Result<PublishStats, ShmError> {
        let mut scratch = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        let slot = self.node_slot(node)?;
        let plan = rcu::plan(slot);
        let side = plan.side;
        let started = Instant::now();
        // Never overwrite a side a core may still read: wait until every running core has
        // seen the generation that retired it.
        self.wait_cores(
            |s| rcu::has_left(&s.seen_tables_gen, &plan),
            wait,
            "user table generation",
            plan.retired,
        )?;
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join(names::users(node, side));
        let needed = capacities_for(users.len());
        let fits = |s: &Segment| {
            s.header().instance_id == self.instance_id && s.header().capacity as usize >= users.len()
        };
        if let std::collections::btree_map::Entry::Vacant(v) = tables.entry((node, side)) {
            if let Ok(existing) = Segment::open(&path, KIND_USERS) {
                v.insert(existing);
            }
        }
        let reuse = tables.get(&(node, side)).is_some_and(fits);
        let mut recreated = false;
        if !reuse {
            let size = table_file_size(needed.0, needed.1);
            let seg = Segment::create(
                &path,
                size,
                SegHeader::new(KIND_USERS, 64, needed.0, self.instance_id, size),
            )?;
            tables.insert((node, side), seg);
            slot.incarnation[side].fetch_add(1, AcqRel);
            recreated = true;
        }
        let seg = tables
            .get(&(node, side))
            .ok_or_else(|| ShmError::Invalid("table vanished".into()))?;
        write_table(seg, node, kind, users, &mut scratch)?;
        slot.cred_kind.store(kind as u32, Relaxed);
        slot.n_users.store(users.len() as u32, Relaxed);
        let gen = rcu::switch(slot, &self.words().tables_gen, &plan);
        Ok(PublishStats {
            users: users.len(),
            side,
            tables_gen: gen,
            recreated_file: recreated,
            waited: started.elapsed(),
        })
    }

    /// Stop serving a node's users (the data plane closes the node's listener via config).
    pub fn remove_node(&self, node: u16) -> Result<(), ShmError> {
        // The node's device lists go with it (a node that gets the slot later starts clean).
        super::known_ips::remove(&self.dir, node);
        let slot = self.node_slot(node)?;
        slot.in_use.store(0, Release);
        let gen = self.words().tables_gen.fetch_add(1, AcqRel) + 1;
        for r in &slot.retired_gen {
            r.store(gen, Release);
        }
        Ok(())
    }

    /// Update each user's panel-wide online count on other nodes, in place, in the active side.
    /// Publishes the panel's device lists for `node` (every user's addresses on every node,
    /// Xboard `sync.devices`), trusted by the data plane for `valid_for`. Returns the entries
    /// written.
    pub fn publish_known_ips(
        &self,
        node: u16,
        ips: &[(u32, std::net::IpAddr)],
        valid_for: Duration,
    ) -> Result<usize, ShmError> {
        super::known_ips::write(&self.dir, node, ips, valid_for)
    }

    /// Withdraws `node`'s device lists (the node is gone, or the lists came from a channel that
    /// closed).
    pub fn clear_known_ips(&self, node: u16) {
        super::known_ips::remove(&self.dir, node);
    }

    pub fn set_alive_elsewhere(&self, node: u16, counts: &dyn Fn(u32) -> u32) -> Result<(), ShmError> {
        let slot = self.node_slot(node)?;
        if slot.in_use.load(Acquire) != 1 {
            return Ok(());
        }
        let side = slot.active.load(Acquire) as usize & 1;
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(seg) = tables.get(&(node, side)) {
            let view = super::UserTableView::new(seg, 0)?;
            for r in view.records() {
                r.alive_elsewhere.store(counts(r.user_id), Relaxed);
            }
        }
        Ok(())
    }

    fn wait_cores(
        &self,
        done: impl Fn(&CoreSlot) -> bool,
        wait: Duration,
        what: &str,
        target: u64,
    ) -> Result<(), ShmError> {
        let deadline = Instant::now() + wait;
        loop {
            let pending: Vec<u16> = self
                .running_cores()
                .into_iter()
                .filter(|&c| self.core_slot(c).map(|s| !done(s)).unwrap_or(false))
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ShmError::Busy {
                    what: format!("cores {pending:?} have not acknowledged {what} {target}"),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn scan_core_files(&self) -> Result<(), ShmError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| ShmError::io(&self.dir, e))?;
        let mut cores = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        for ent in rd.flatten() {
            let name = ent.file_name();
            let Some((inst, core)) = name.to_str().and_then(names::parse_traffic) else {
                continue;
            };
            if cores.contains_key(&(inst, core)) {
                continue;
            }
            let Ok(traffic) = Segment::open(&ent.path(), KIND_TRAFFIC) else {
                continue;
            };
            let ring = |n: String, kind| {
                Segment::open(&self.dir.join(n), kind)
                    .ok()
                    .and_then(|s| Ring::new(s).ok())
            };
            let (events, cmds) = if inst == self.instance_id {
                (
                    ring(names::events(inst, core), KIND_EVENTS),
                    ring(names::cmds(inst, core), KIND_CMDS),
                )
            } else {
                (None, None)
            };
            cores.insert(
                (inst, core),
                CoreFiles {
                    traffic,
                    events,
                    cmds,
                },
            );
        }
        Ok(())
    }

    /// Idle banks that hold bytes not yet cleared: after a control-plane crash (journalled or
    /// not — the caller checks its journal by `(instance, core, epoch)`) and every bank of
    /// earlier instances' files. Call at start-up and after each harvest.
    pub fn pending_banks(&self) -> Result<Vec<HarvestedBank>, ShmError> {
        self.scan_core_files()?;
        let cores = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (&(inst, core), files) in cores.iter() {
            let b = banks(&files.traffic)?;
            let owner = b.meta.owner_pid.load(Acquire);
            let writer_gone = owner == 0 || (owner != OWNER_CONTROL && !pid_alive(owner));
            // An orphan (older instance) with no live writer can give up its active bank too.
            let take_active = inst != self.instance_id && writer_gone;
            for (_, epoch, entries) in idle_banks(&b, take_active) {
                out.push(HarvestedBank {
                    instance_id: inst,
                    core,
                    epoch,
                    entries,
                });
            }
        }
        Ok(out)
    }

    /// Ask every core to flip its bank and return the idle banks that now hold the bytes since
    /// the previous harvest. Banks are NOT cleared: journal them, then `clear_bank`.
    /// A core that does not acknowledge within `wait` keeps counting into its current bank and
    /// is harvested next time (nothing is lost, only delayed).
    pub fn harvest(&self, wait: Duration) -> Result<Vec<HarvestedBank>, ShmError> {
        self.scan_core_files()?;
        let epoch = self.words().harvest_epoch.fetch_add(1, AcqRel) + 1;
        let running = self.running_cores();
        {
            let cores = self.cores.lock().unwrap_or_else(|p| p.into_inner());
            for (&(inst, core), files) in cores.iter() {
                if inst == self.instance_id && !running.contains(&core) {
                    flip_for_dead_writer(&files.traffic, epoch)?;
                }
            }
        }
        let _ = self.wait_cores(
            |s| s.acked_harvest_epoch.load(Acquire) >= epoch,
            wait,
            "harvest epoch",
            epoch,
        );
        self.pending_banks()
    }

    /// Clear a bank after its contents are durably journalled. Only the bank with this epoch
    /// is cleared (a stale call cannot clear newer bytes). Orphan files whose banks are all
    /// empty are removed.
    pub fn clear_bank(&self, instance_id: u64, core: u16, epoch: u64) -> Result<(), ShmError> {
        let mut cores = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        let Some(files) = cores.get(&(instance_id, core)) else {
            return Ok(());
        };
        let b = banks(&files.traffic)?;
        let orphan = instance_id != self.instance_id;
        clear_epoch(&b, epoch, orphan);
        if orphan && b.headers.iter().all(|h| h.len.load(Acquire) == 0) {
            let path = files.traffic.path().to_path_buf();
            cores.remove(&(instance_id, core));
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(self.dir.join(names::events(instance_id, core)));
            let _ = std::fs::remove_file(self.dir.join(names::cmds(instance_id, core)));
            let _ = std::fs::remove_file(self.dir.join(names::gauges(instance_id, core)));
            super::user_conns::remove(&self.dir, instance_id, core);
        }
        Ok(())
    }

    /// Drain IP events from every core's ring. Returns the events and the total number of
    /// events the cores had to drop so far (if it grows, ask for a resync).
    ///
    /// Each event comes with the pid of the data-plane process that wrote it (the owner of
    /// its core's traffic file), or 0 when that process is gone: events are numbered per
    /// process, and while a replaced data plane drains after an upgrade two processes write.
    pub fn drain_events(&self, max: usize) -> (Vec<(u32, IpEvent)>, u64) {
        let _ = self.scan_core_files();
        let cores = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut dropped = 0;
        for files in cores.values() {
            if let Some(r) = &files.events {
                let source = writer_pid(&files.traffic);
                dropped += r.dropped();
                while out.len() < max {
                    match r.pop() {
                        Some(w) => out.extend(IpEvent::decode(w).map(|e| (source, e))),
                        None => break,
                    }
                }
            }
        }
        (out, dropped)
    }

    /// The live data-plane processes writing this instance's core files (more than one while
    /// a replaced data plane drains after an upgrade).
    pub fn live_dataplanes(&self) -> Vec<u32> {
        let _ = self.scan_core_files();
        let cores = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        let mut pids: Vec<u32> = cores
            .iter()
            .filter(|((inst, _), _)| *inst == self.instance_id)
            .map(|(_, f)| writer_pid(&f.traffic))
            .filter(|&p| p != 0)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Send a command to every running core; returns how many rings accepted it.
    pub fn broadcast(&self, cmd: Command) -> usize {
        let _ = self.scan_core_files();
        let cores = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        cores
            .iter()
            .filter(|((inst, _), _)| *inst == self.instance_id)
            .filter_map(|(_, f)| f.cmds.as_ref())
            .filter(|r| r.push(cmd.encode()))
            .count()
    }

    /// Open connections of `node` over the running cores of this instance (each core writes
    /// its count about once a second; a core of a process that is gone is left out).
    pub fn node_open_conns(&self, node: u16) -> u64 {
        if usize::from(node) >= MAX_NODES {
            return 0;
        }
        let mut total = 0u64;
        for core in 0..MAX_CORES as u16 {
            let Ok(slot) = self.core_slot(core) else { continue };
            if slot.running.load(Relaxed) != 1 {
                continue;
            }
            let path = self.dir.join(names::gauges(self.instance_id, core));
            let Ok(seg) = Segment::open(&path, KIND_GAUGES) else {
                continue;
            };
            if let Ok(g) = seg.slice::<AtomicU64>(GAUGES_OFF, MAX_NODES) {
                total = total.saturating_add(g.get(usize::from(node)).map_or(0, |v| v.load(Relaxed)));
            }
        }
        total
    }

    /// Open connections per user of `node` over the running cores of this instance (each
    /// core rewrites its file about every 5 s; old files are left out). Xboard's
    /// `report.online`.
    pub fn user_open_conns(&self, node: u16) -> BTreeMap<u32, u64> {
        let mut out = BTreeMap::new();
        for core in 0..MAX_CORES as u16 {
            let Ok(slot) = self.core_slot(core) else { continue };
            if slot.running.load(Relaxed) != 1 {
                continue;
            }
            super::user_conns::add_node(&self.dir, self.instance_id, core, node, &mut out);
        }
        out
    }

    pub fn status(&self) -> Status {
        let w = self.words();
        let _ = self.scan_core_files();
        let mut st = Status {
            instance_id: self.instance_id,
            control_pid: w.control_pid.load(Relaxed),
            dataplane_pid: w.dataplane_pid.load(Relaxed),
            dataplane_alive: self.dataplane_alive(),
            dataplane_backend: w.dataplane_backend.load(Relaxed),
            config_gen: w.config_gen.load(Relaxed),
            dataplane_config_gen: w.dataplane_config_gen.load(Relaxed),
            tables_gen: w.tables_gen.load(Relaxed),
            harvest_epoch: w.harvest_epoch.load(Relaxed),
            ..Status::default()
        };
        for n in 0..MAX_NODES as u16 {
            if let Ok(s) = self.node_slot(n) {
                if s.in_use.load(Relaxed) == 1 {
                    st.nodes.push((n, s.n_users.load(Relaxed)));
                }
            }
        }
        let cores = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        for (&(inst, core), files) in cores.iter() {
            if inst != self.instance_id {
                continue;
            }
            let Ok(slot) = self.core_slot(core) else { continue };
            let mut cs = CoreStatus {
                core,
                running: slot.running.load(Relaxed) == 1 && st.dataplane_alive,
                open_conns: slot.open_conns.load(Relaxed),
                accepted_total: slot.accepted_total.load(Relaxed),
                ..CoreStatus::default()
            };
            if let Ok(b) = banks(&files.traffic) {
                let active = b.meta.active_bank.load(Relaxed) as usize & 1;
                for d in read_bank(&b, active) {
                    cs.unharvested_up += d.up;
                    cs.unharvested_down += d.down;
                }
            }
            st.cores.push(cs);
        }
        st
    }
}

/// Create the per-core files of `instance` if they do not exist yet (called by the data
/// plane, which knows its core count; the control plane finds them by scanning).
pub(crate) fn ensure_core_files(
    dir: &Path,
    instance: u64,
    core: u16,
    bank_cap: usize,
) -> Result<(), ShmError> {
    let t = traffic_size(bank_cap);
    let mk = |name: String, kind: u32, rec: usize, cap: usize, size: usize| -> Result<(), ShmError> {
        let path = dir.join(name);
        if !path.exists() {
            Segment::create_exclusive(&path, size, SegHeader::new(kind, rec, cap, instance, size))?;
        }
        Ok(())
    };
    // Rings first: the control plane treats the traffic file as "core files complete".
    mk(
        names::events(instance, core),
        KIND_EVENTS,
        32,
        EVENT_RING_CAP,
        ring_file_size(EVENT_RING_CAP),
    )?;
    mk(
        names::cmds(instance, core),
        KIND_CMDS,
        32,
        CMD_RING_CAP,
        ring_file_size(CMD_RING_CAP),
    )?;
    mk(
        names::gauges(instance, core),
        KIND_GAUGES,
        8,
        MAX_NODES,
        GAUGES_SIZE,
    )?;
    mk(names::traffic(instance, core), KIND_TRAFFIC, 32, bank_cap, t)?;
    Ok(())
}

fn traffic_size(cap: usize) -> usize {
    super::traffic::traffic_file_size(cap)
}

pub(crate) const EVENT_RING_CAP: usize = 16 * 1024;
pub(crate) const CMD_RING_CAP: usize = 1024;

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        // Not security relevant: only distinguishes incarnations of the file set.
        b = (now_ms() ^ (u64::from(std::process::id()) << 40)).to_le_bytes();
    }
    u64::from_le_bytes(b) | 1
}

fn fallback_words() -> &'static CtlWords {
    static W: std::sync::OnceLock<CtlWords> = std::sync::OnceLock::new();
    W.get_or_init(|| CtlWords {
        tables_gen: AtomicU64::new(0),
        config_gen: AtomicU64::new(0),
        harvest_epoch: AtomicU64::new(0),
        control_pid: Default::default(),
        dataplane_pid: Default::default(),
        control_heartbeat_ms: AtomicU64::new(0),
        dataplane_heartbeat_ms: AtomicU64::new(0),
        dataplane_cores: Default::default(),
        dataplane_backend: Default::default(),
        dataplane_config_gen: AtomicU64::new(0),
    })
}

/// The live process that owns a core's traffic file, or 0.
fn writer_pid(traffic: &Segment) -> u32 {
    banks(traffic).map_or(0, |b| {
        let owner = b.meta.owner_pid.load(Acquire);
        if owner != OWNER_CONTROL && pid_alive(owner) {
            owner
        } else {
            0
        }
    })
}

/// Removes files a writer that died left under a temporary name: `<name>.tmp<pid>` (segments)
/// and `<name>.w<pid>` (the panel's device lists), when no process with that pid runs. A
/// crash between creating such a file and renaming it leaves one behind per crash; without
/// this they would pile up across restarts.
pub(crate) fn sweep_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((_, ext)) = name.rsplit_once('.') else {
            continue;
        };
        let pid = ext
            .strip_prefix("tmp")
            .or_else(|| ext.strip_prefix('w'))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !pid_alive(pid) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}
