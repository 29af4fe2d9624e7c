//! Shared-memory contract between the control plane and the data plane.
//!
//! The protocols (A/B user tables with per-core quiescent acknowledgements, per-core traffic
//! banks flipped on a harvest epoch, SPSC rings for IP events and commands) are described in
//! `docs/design.md`; the byte layouts are in [`layout`]. [`ControlShm`] is the control plane's
//! handle, [`DataplaneShm`]/[`CoreShm`] the data plane's.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

mod control;
mod dataplane;
mod known_ips;
pub mod layout;
mod rates;
mod rcu;
mod reset_key;
mod ring;
mod segment;
mod sync;
mod traffic;
mod user_conns;
mod user_table;

pub use control::{ControlShm, CoreStatus, PublishStats, Status};
pub use dataplane::{CoreShm, DataplaneShm, Tick};
pub use rates::{RateTable, SharedClock};
pub use reset_key::{quic_reset_key, RESET_KEY_LEN};
pub use segment::monotonic_ns;
pub use traffic::{HarvestedBank, TrafficDelta, TrafficWriter, DEFAULT_BANK_CAPACITY};
pub use user_table::{key_hash, UserEntry, UserTableView};

/// A resolved user, copied out of the shared table so a connection never holds a reference
/// into a buffer that may be recycled. `slot`/`gen` let a connection re-resolve its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRef {
    /// Node slot (index into the control segment's node slots).
    pub node: u16,
    /// Record index in the node's active user table when resolved.
    pub slot: u32,
    /// Panel user id.
    pub user_id: u32,
    /// Table generation the lookup was made in.
    pub gen: u64,
    /// Protocol secret (see `cred`), `secret_len` bytes used.
    pub secret: [u8; 32],
    pub secret_len: u8,
    pub speed_limit_mbps: u32,
    pub device_limit: u32,
}

impl UserRef {
    pub fn secret(&self) -> &[u8] {
        &self.secret[..usize::from(self.secret_len).min(32)]
    }
}

/// What went wrong with a shared-memory file. Always the fault of the local installation
/// (permissions, version skew, a stuck peer), never of a client.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: layout version {found}, this binary speaks {expected}; restart both processes from the same release")]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path}: not a v2sp segment of the expected layout: {what}")]
    Layout { path: PathBuf, what: String },
    #[error("busy: {what}")]
    Busy { what: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("config blob: {0}")]
    Config(String),
}

impl ShmError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ShmError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What an [`IpEvent`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpEventKind {
    /// The (node, user, ip) went online (0 → 1 open references) or offline (1 → 0).
    Transition,
    /// Part of a resync: the (node, user, ip) is online; `seq` is that of its last transition.
    Snapshot,
    /// A resync starts; `seq` is the data plane's sequence number before it looked.
    ResyncBegin,
    /// The resync that began with the same `seq` is complete.
    ResyncEnd,
}

/// One event of the data plane's online-IP stream.
///
/// Each core pushes into its own ring, and the control plane drains the rings one after the
/// other, so events of one IP that moved between cores can arrive out of order (online on
/// core 0, offline on core 1, online on core 0 again may be read as offline, online, online).
/// `seq` orders them: it is taken from one process-wide counter while the IP's state is
/// locked, so for one (node, user, ip) a later transition always has a larger `seq`, and the
/// counter starts at the data plane's start time in microseconds, so a restarted data plane
/// continues above the previous one. `seq == 0` marks an event of an older data plane, which
/// had no sequence numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpEvent {
    pub kind: IpEventKind,
    pub online: bool,
    pub node: u16,
    pub user_id: u32,
    pub ip: IpAddr,
    pub seq: u64,
}

/// Set in word 0 by data planes that send `seq` (older ones put a timestamp and core there).
const EVENT_SEQUENCED: u64 = 1 << 7;

impl IpEvent {
    /// A resync marker (no node, user or IP).
    pub fn marker(kind: IpEventKind, seq: u64) -> IpEvent {
        IpEvent {
            kind,
            online: false,
            node: 0,
            user_id: 0,
            ip: IpAddr::from([0, 0, 0, 0]),
            seq,
        }
    }

    /// Word 0: bit 0 online, bits 1–2 kind, bit 7 sequenced, bits 8–15 family, 16–31 node,
    /// 32–63 user. Words 1–2: the address (IPv4 in the first 4 bytes). Word 3: `seq`.
    pub(crate) fn encode(&self) -> [u64; 4] {
        let (family, bytes) = match self.ip {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (4u64, b)
            }
            IpAddr::V6(a) => (6u64, a.octets()),
        };
        let kind: u64 = match self.kind {
            IpEventKind::Transition => 0,
            IpEventKind::Snapshot => 1,
            IpEventKind::ResyncBegin => 2,
            IpEventKind::ResyncEnd => 3,
        };
        let w0 = u64::from(self.online)
            | (kind << 1)
            | EVENT_SEQUENCED
            | (family << 8)
            | (u64::from(self.node) << 16)
            | (u64::from(self.user_id) << 32);
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&bytes[..8]);
        hi.copy_from_slice(&bytes[8..]);
        [w0, u64::from_le_bytes(lo), u64::from_le_bytes(hi), self.seq]
    }

    pub(crate) fn decode(w: [u64; 4]) -> Option<IpEvent> {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&w[1].to_le_bytes());
        bytes[8..].copy_from_slice(&w[2].to_le_bytes());
        let ip = match (w[0] >> 8) & 0xff {
            4 => IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]),
            6 => IpAddr::from(bytes),
            _ => return None,
        };
        let sequenced = w[0] & EVENT_SEQUENCED != 0;
        let kind = match (w[0] >> 1) & 3 {
            _ if !sequenced => IpEventKind::Transition,
            0 => IpEventKind::Transition,
            1 => IpEventKind::Snapshot,
            2 => IpEventKind::ResyncBegin,
            _ => IpEventKind::ResyncEnd,
        };
        Some(IpEvent {
            kind,
            online: w[0] & 1 == 1,
            node: (w[0] >> 16) as u16,
            user_id: (w[0] >> 32) as u32,
            ip,
            seq: if sequenced { w[3] } else { 0 },
        })
    }
}

/// Control → data plane commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Close every connection of this user on this node.
    Kick { node: u16, user_id: u32 },
    /// Re-read certificate files for this node.
    ReloadCerts { node: u16 },
    /// Report every online IP again (the control plane lost events).
    ResyncIps,
}

impl Command {
    pub(crate) fn encode(&self) -> [u64; 4] {
        match *self {
            Command::Kick { node, user_id } => [1 | (u64::from(node) << 32), u64::from(user_id), 0, 0],
            Command::ReloadCerts { node } => [2 | (u64::from(node) << 32), 0, 0, 0],
            Command::ResyncIps => [3, 0, 0, 0],
        }
    }
    pub(crate) fn decode(w: [u64; 4]) -> Option<Command> {
        let node = (w[0] >> 32) as u16;
        match w[0] as u32 {
            1 => Some(Command::Kick {
                node,
                user_id: w[1] as u32,
            }),
            2 => Some(Command::ReloadCerts { node }),
            3 => Some(Command::ResyncIps),
            _ => None,
        }
    }
}

/// In the shm directory: the outcome of the last data-plane upgrade, one line written by the
/// data plane being replaced (`ok <old pid> <new pid>` or `failed <old pid> <reason>`) and
/// read by `v2sp upgrade`.
pub const UPGRADE_STATUS_FILE: &str = "upgrade-status";

/// File names inside the shm directory.
pub(crate) mod names {
    pub(crate) const CTL: &str = "ctl";
    pub(crate) const RATES: &str = "rates";
    pub(crate) const QUIC_RESET_KEY: &str = "quic-reset-key";
    pub(crate) fn known(node: u16) -> String {
        format!("known-{node}")
    }
    pub(crate) const CONFIG: &str = "config";
    pub(crate) fn users(node: u16, side: usize) -> String {
        format!("users-{node}-{}", if side == 0 { 'a' } else { 'b' })
    }
    pub(crate) fn traffic(instance: u64, core: u16) -> String {
        format!("traffic-{instance:016x}-{core}")
    }
    pub(crate) fn events(instance: u64, core: u16) -> String {
        format!("events-{instance:016x}-{core}")
    }
    pub(crate) fn gauges(instance: u64, core: u16) -> String {
        format!("gauges-{instance:016x}-{core}")
    }
    pub(crate) fn user_conns(instance: u64, core: u16) -> String {
        format!("user-conns-{instance:016x}-{core}")
    }
    pub(crate) fn cmds(instance: u64, core: u16) -> String {
        format!("cmds-{instance:016x}-{core}")
    }
    /// Parse `traffic-<instance>-<core>`.
    pub(crate) fn parse_traffic(name: &str) -> Option<(u64, u16)> {
        let rest = name.strip_prefix("traffic-")?;
        let (inst, core) = rest.split_once('-')?;
        Some((u64::from_str_radix(inst, 16).ok()?, core.parse().ok()?))
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(all(test, loom))]
mod loom_models;
#[cfg(test)]
mod tests;
