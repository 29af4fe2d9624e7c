//! [`CorePort`] over the shared-memory segments (`v2sp_shared::shm::CoreShm`).

use v2sp_shared::shm::{Command, CoreShm, IpEvent, UserRef};

use super::{CorePort, DeviceEvent, PortCommand, TickInfo};

pub struct ShmPort {
    shm: CoreShm,
}

impl ShmPort {
    pub fn new(shm: CoreShm) -> Self {
        ShmPort { shm }
    }
}

impl CorePort for ShmPort {
    fn tick(&mut self) -> TickInfo {
        let t = self.shm.tick();
        TickInfo {
            tables_changed: t.tables_changed,
            config_gen: t.config_gen,
        }
    }
    fn add_traffic(&mut self, node: u16, user_id: u32, up: u64, down: u64) {
        self.shm.add_traffic(node, user_id, up, down);
    }
    fn push_event(&mut self, ev: DeviceEvent) -> bool {
        self.shm.push_event(IpEvent {
            kind: ev.kind,
            online: ev.online,
            node: ev.node,
            user_id: ev.user_id,
            ip: ev.ip,
            seq: ev.seq,
        })
    }
    fn event_space(&self) -> usize {
        self.shm.event_space()
    }
    fn pop_command(&mut self) -> Option<PortCommand> {
        Some(match self.shm.pop_command()? {
            Command::Kick { node, user_id } => PortCommand::Kick { node, user_id },
            Command::ResyncIps => PortCommand::ResyncIps,
            _ => PortCommand::Other,
        })
    }
    fn lookup(&self, node: u16, key: &[u8]) -> Option<UserRef> {
        self.shm.users(node)?.lookup(key)
    }
    fn for_each_user(&self, node: u16, f: &mut dyn FnMut(&UserRef) -> bool) {
        if let Some(t) = self.shm.users(node) {
            for u in t.iter() {
                if !f(&u) {
                    break;
                }
            }
        }
    }
    fn users_gen(&self, node: u16) -> Option<u64> {
        self.shm.users(node).map(|t| t.gen())
    }
    fn alive_elsewhere(&self, user: &UserRef) -> u32 {
        let Some(t) = self.shm.users(user.node) else {
            return 0;
        };
        match t.get(user.slot) {
            Some(u) if u.user_id == user.user_id => t.alive_elsewhere(user.slot),
            _ => 0,
        }
    }
    fn known_elsewhere(&self, user: &UserRef, ip: std::net::IpAddr) -> bool {
        self.shm.known_elsewhere(user.node, user.user_id, ip)
    }
    fn set_node_conns(&self, counts: &[u64]) {
        self.shm.set_node_conns(counts);
    }
    fn set_user_conns(&self, counts: &std::collections::BTreeMap<(u16, u32), u64>) {
        if let Err(e) = self.shm.set_user_conns(counts) {
            tracing::debug!(error = %e, "cannot write the per-user connection counts");
        }
    }
    fn set_open_conns(&self, n: u64) {
        self.shm.set_open_conns(n);
    }
    fn add_accepted(&self, n: u64) {
        self.shm.add_accepted(n);
    }
}
