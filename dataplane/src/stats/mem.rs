//! In-memory [`CorePort`] for tests and benches: one shared backend, one port per core.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use v2sp_shared::shm::UserRef;

use super::{CorePort, DeviceEvent, PortCommand, TickInfo};

/// A user as the test sees it: lookup key + record.
#[derive(Clone, Debug)]
pub struct MemUser {
    pub key: Vec<u8>,
    pub user: UserRef,
    pub alive_elsewhere: u32,
}

/// Shared state behind all cores' [`MemPort`]s. Tests mutate it from their own thread.
#[derive(Default)]
pub struct MemBackend {
    tables: Mutex<HashMap<u16, Vec<MemUser>>>,
    tables_gen: AtomicU64,
    traffic: Mutex<HashMap<(u16, u32), (u64, u64)>>,
    events: Mutex<Vec<(u16, DeviceEvent)>>,
    commands: Mutex<HashMap<u16, VecDeque<PortCommand>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl MemBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Publishes a new table for `node` (bumps the generation).
    pub fn set_users(&self, node: u16, users: Vec<MemUser>) {
        lock(&self.tables).insert(node, users);
        self.tables_gen.fetch_add(1, Ordering::Release);
    }
    pub fn traffic(&self, node: u16, user_id: u32) -> (u64, u64) {
        lock(&self.traffic)
            .get(&(node, user_id))
            .copied()
            .unwrap_or((0, 0))
    }
    pub fn events(&self) -> Vec<(u16, DeviceEvent)> {
        lock(&self.events).clone()
    }
    pub fn send_command(&self, core: u16, c: PortCommand) {
        lock(&self.commands).entry(core).or_default().push_back(c);
    }
    pub fn port(self: &Arc<Self>, core: u16) -> MemPort {
        MemPort {
            b: self.clone(),
            core,
            seen_gen: 0,
            snapshot: HashMap::new(),
        }
    }
}

/// One core's view. Keeps a snapshot of the tables taken at tick (like the shm RCU tables).
pub struct MemPort {
    b: Arc<MemBackend>,
    core: u16,
    seen_gen: u64,
    snapshot: HashMap<u16, Vec<MemUser>>,
}

impl CorePort for MemPort {
    fn tick(&mut self) -> TickInfo {
        let g = self.b.tables_gen.load(Ordering::Acquire);
        let changed = g != self.seen_gen;
        if changed {
            self.snapshot = lock(&self.b.tables).clone();
            self.seen_gen = g;
        }
        TickInfo {
            tables_changed: changed,
            config_gen: 0,
        }
    }
    fn add_traffic(&mut self, node: u16, user_id: u32, up: u64, down: u64) {
        let mut t = lock(&self.b.traffic);
        let e = t.entry((node, user_id)).or_default();
        e.0 += up;
        e.1 += down;
    }
    fn push_event(&mut self, ev: DeviceEvent) -> bool {
        lock(&self.b.events).push((self.core, ev));
        true
    }
    fn pop_command(&mut self) -> Option<PortCommand> {
        lock(&self.b.commands)
            .get_mut(&self.core)
            .and_then(VecDeque::pop_front)
    }
    fn lookup(&self, node: u16, key: &[u8]) -> Option<UserRef> {
        self.snapshot
            .get(&node)?
            .iter()
            .find(|u| u.key == key)
            .map(|u| u.user)
    }
    fn for_each_user(&self, node: u16, f: &mut dyn FnMut(&UserRef) -> bool) {
        if let Some(us) = self.snapshot.get(&node) {
            for u in us {
                if !f(&u.user) {
                    break;
                }
            }
        }
    }
    fn users_gen(&self, _node: u16) -> Option<u64> {
        Some(self.seen_gen)
    }
    fn alive_elsewhere(&self, user: &UserRef) -> u32 {
        self.snapshot
            .get(&user.node)
            .and_then(|us| us.iter().find(|u| u.user.user_id == user.user_id))
            .map_or(0, |u| u.alive_elsewhere)
    }
}
