//! The core's port to the control plane: traffic bank writer, IP event ring writer, command
//! ring reader and the current user tables. [`CorePort`] is what the engine codes against; the
//! shared-memory implementation wraps `v2sp_shared::shm::CoreShm`, and [`mem::MemPort`] is the
//! in-memory one for tests and benches.

pub mod mem;
pub mod shm;

use v2sp_shared::shm::UserRef;

pub use crate::limits::devices::DeviceEvent;

/// Result of one periodic tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickInfo {
    /// A new user-table generation is visible (re-check open connections, limits).
    pub tables_changed: bool,
    pub config_gen: u64,
}

/// Commands from the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortCommand {
    Kick {
        node: u16,
        user_id: u32,
    },
    /// Report every online IP again (the control plane lost events or restarted).
    ResyncIps,
    Other,
}

/// Single-writer port of one core. All methods are cheap and non-blocking (plain stores into
/// shared memory); called from the core thread only.
pub trait CorePort {
    /// Periodic housekeeping (harvest flips, acks, table generation check). ~every 100 ms.
    fn tick(&mut self) -> TickInfo;
    /// Adds payload bytes for (node, user).
    fn add_traffic(&mut self, node: u16, user_id: u32, up: u64, down: u64);
    /// Queues an online/offline event; false if the ring was full (counted as dropped).
    fn push_event(&mut self, ev: DeviceEvent) -> bool;
    /// Events that fit in the ring now (a resync snapshot only fills free space).
    fn event_space(&self) -> usize {
        usize::MAX
    }
    fn pop_command(&mut self) -> Option<PortCommand>;
    /// O(1) lookup in the node's current user table.
    fn lookup(&self, node: u16, key: &[u8]) -> Option<UserRef>;
    /// Iterates the node's current users until `f` returns false.
    fn for_each_user(&self, node: u16, f: &mut dyn FnMut(&UserRef) -> bool);
    /// Generation of `node`'s table as `for_each_user` sees it (`None` = unknown).
    fn users_gen(&self, _node: u16) -> Option<u64> {
        None
    }
    /// The panel's alive count of this user minus this node's own IPs.
    fn alive_elsewhere(&self, user: &UserRef) -> u32;
    /// Whether the panel's device lists have `ip` online for this user on any node.
    fn known_elsewhere(&self, _user: &UserRef, _ip: std::net::IpAddr) -> bool {
        false
    }
    /// Gauge of open connections on this core (status only).
    fn set_open_conns(&self, _n: u64) {}
    /// This core's open connections per node slot (`counts[node]`), for the panel's metrics.
    fn set_node_conns(&self, _counts: &[u64]) {}
    /// This core's open connections per (node, user), for the panel's per-user online counts.
    fn set_user_conns(&self, _counts: &std::collections::BTreeMap<(u16, u32), u64>) {}
    /// Counts `n` client connections accepted by this core (`v2sp_connections_accepted_total`).
    fn add_accepted(&self, _n: u64) {}
}
