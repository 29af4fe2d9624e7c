//! `#[repr(C)]` layouts of the shared-memory files. Only fixed-width integers and atomics; the
//! sizes are asserted at compile time so that a change shows up as a layout-version bump.
//!
//! ```text
//! every file   [ SegHeader 64 B ][ kind-specific meta … ][ records … ]
//! ctl          [ SegHeader ][ CtlWords 64 B ][ NodeSlot × 256 ][ CoreSlot × 256 ]
//! config       [ SegHeader ][ ConfigMeta 64 B ][ blob A: u64 × W ][ blob B: u64 × W ]
//! users-N-a|b  [ SegHeader ][ TableMeta 64 B ][ UserRecord 64 B × cap ][ index u64 × 2^k ]
//! traffic-C    [ SegHeader ][ TrafficMeta 64 B ][ BankHeader ][ TrafficEntry × cap ] × 2
//! events-C     [ SegHeader ][ RingMeta 192 B ][ [u64; 4] × cap ]   (also cmds-C)
//! rates        [ SegHeader ][ RateSlot 16 B × 65536 ]
//! known-N      [ SegHeader ][ KnownMeta 64 B ][ u64 × count, sorted ]
//! gauges-C     [ SegHeader ][ AtomicU64 × MAX_NODES: open connections per node ]
//! user-conns-C [ SegHeader ][ UserConnsMeta 64 B ][ [key, count] u64 × 2 × count, sorted ]
//! ```

use super::sync::{AtomicU32, AtomicU64};
use std::path::Path;

use super::ShmError;

pub const MAGIC: u64 = u64::from_le_bytes(*b"V2SPSHM1");
/// Bump on any change of a layout in this file.
pub const LAYOUT_VERSION: u32 = 1;
pub const MAX_NODES: usize = 256;
pub const MAX_CORES: usize = 256;
/// Largest data-plane config JSON (each of the two copies).
pub const CONFIG_BLOB_BYTES: usize = 4 << 20;

pub const KIND_CTL: u32 = 1;
pub const KIND_CONFIG: u32 = 2;
pub const KIND_USERS: u32 = 3;
pub const KIND_TRAFFIC: u32 = 4;
pub const KIND_EVENTS: u32 = 5;
pub const KIND_CMDS: u32 = 6;
/// A kind added after version 1 shipped: a binary that does not know it never opens the file,
/// so adding it changed no existing layout (no version bump).
pub const KIND_RATES: u32 = 7;
/// Also added after version 1 (see [`KIND_RATES`]).
pub const KIND_KNOWN: u32 = 8;
/// Also added after version 1: a core's open connections per node (`gauges-<inst>-<core>`).
pub const KIND_GAUGES: u32 = 9;
pub const GAUGES_OFF: usize = 64;
pub const GAUGES_SIZE: usize = GAUGES_OFF + MAX_NODES * 8;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SegHeader {
    pub magic: u64,
    pub layout_version: u32,
    pub kind: u32,
    pub record_size: u32,
    pub capacity: u32,
    /// Random per creation of `ctl`; every other file carries the same id.
    pub instance_id: u64,
    pub total_size: u64,
    pub _reserved: [u64; 3],
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<SegHeader>() == 64);

impl SegHeader {
    pub fn new(kind: u32, record_size: usize, capacity: usize, instance_id: u64, total_size: usize) -> Self {
        SegHeader {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            kind,
            record_size: record_size as u32,
            capacity: capacity as u32,
            instance_id,
            total_size: total_size as u64,
            _reserved: [0; 3],
        }
    }

    /// Refuse to attach on any mismatch (the Envoy hot-restart rule).
    pub fn check(&self, path: &Path, kind: u32, file_len: usize) -> Result<(), ShmError> {
        let bad = |what: String| {
            Err(ShmError::Layout {
                path: path.to_path_buf(),
                what,
            })
        };
        if self.magic != MAGIC {
            return bad(format!("bad magic {:#x}", self.magic));
        }
        if self.layout_version != LAYOUT_VERSION {
            return Err(ShmError::Version {
                path: path.to_path_buf(),
                found: self.layout_version,
                expected: LAYOUT_VERSION,
            });
        }
        if self.kind != kind {
            return bad(format!("segment kind {} where {} was expected", self.kind, kind));
        }
        if self.total_size != file_len as u64 {
            return bad(format!(
                "header says {} bytes, file has {}",
                self.total_size, file_len
            ));
        }
        let expect_record = match kind {
            KIND_USERS => size_of::<UserRecord>(),
            KIND_TRAFFIC => size_of::<TrafficEntry>(),
            KIND_EVENTS | KIND_CMDS => 32,
            _ => self.record_size as usize,
        };
        if self.record_size as usize != expect_record {
            return bad(format!(
                "record size {} where {} was expected",
                self.record_size, expect_record
            ));
        }
        Ok(())
    }
}

/// Global words of the `ctl` file (after the header).
#[repr(C, align(64))]
pub struct CtlWords {
    /// Bumped after any node's user table switches side.
    pub tables_gen: AtomicU64,
    /// Bumped after the config blob switches side.
    pub config_gen: AtomicU64,
    /// Bumped by the control plane to ask every core to flip its traffic bank.
    pub harvest_epoch: AtomicU64,
    pub control_pid: AtomicU32,
    pub dataplane_pid: AtomicU32,
    pub control_heartbeat_ms: AtomicU64,
    pub dataplane_heartbeat_ms: AtomicU64,
    /// Number of cores the running data plane uses.
    pub dataplane_cores: AtomicU32,
    /// I/O backend of the running data plane (1 = io_uring, 2 = epoll).
    pub dataplane_backend: AtomicU32,
    /// Config generation the data plane has applied.
    pub dataplane_config_gen: AtomicU64,
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<CtlWords>() == 64);

#[repr(C, align(64))]
pub struct NodeSlot {
    /// 1 while the node is configured.
    pub in_use: AtomicU32,
    /// Side (0 = a, 1 = b) cores use for new lookups.
    pub active: AtomicU32,
    /// `tables_gen` value published when each side was last retired (made inactive).
    pub retired_gen: [AtomicU64; 2],
    /// Bumped when a side's file is recreated with another capacity.
    pub incarnation: [AtomicU64; 2],
    pub cred_kind: AtomicU32,
    pub n_users: AtomicU32,
    pub _pad: [u64; 1],
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<NodeSlot>() == 64);

#[repr(C, align(64))]
pub struct CoreSlot {
    /// 1 while the core thread runs.
    pub running: AtomicU32,
    pub _pad0: u32,
    pub seen_tables_gen: AtomicU64,
    pub acked_harvest_epoch: AtomicU64,
    pub heartbeat_ms: AtomicU64,
    /// Open client connections and UDP sessions on this core (for `v2sp status`).
    pub open_conns: AtomicU64,
    pub accepted_total: AtomicU64,
    pub _pad1: [u64; 2],
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<CoreSlot>() == 64);

pub const CTL_WORDS_OFF: usize = 64;
pub const CTL_NODES_OFF: usize = 128;
pub const CTL_CORES_OFF: usize = CTL_NODES_OFF + MAX_NODES * 64;
pub const CTL_SIZE: usize = CTL_CORES_OFF + MAX_CORES * 64;

#[repr(C, align(64))]
pub struct ConfigMeta {
    pub active: AtomicU32,
    pub _pad: u32,
    pub len: [AtomicU64; 2],
    pub _pad1: [u64; 5],
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<ConfigMeta>() == 64);
pub const CONFIG_META_OFF: usize = 64;
pub const CONFIG_BLOB_OFF: usize = 128;
pub const CONFIG_SIZE: usize = CONFIG_BLOB_OFF + 2 * CONFIG_BLOB_BYTES;

#[repr(C, align(64))]
pub struct TableMeta {
    pub n_users: u32,
    pub index_mask: u32,
    pub cred_kind: u32,
    pub node: u32,
    pub records_off: u64,
    pub index_off: u64,
    pub _pad: [u64; 4],
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<TableMeta>() == 64);
pub const TABLE_META_OFF: usize = 64;
pub const TABLE_RECORDS_OFF: usize = 128;

/// One user of one node (64 bytes, one cache line).
#[repr(C, align(64))]
pub struct UserRecord {
    /// Protocol secret (see `cred`), `secret_len` bytes used.
    pub secret: [u8; 32],
    pub user_id: u32,
    pub speed_limit_mbps: u32,
    pub device_limit: u32,
    /// Panel-wide online IP count minus the IPs this node reported; updated in place.
    pub alive_elsewhere: AtomicU32,
    pub flags: u32,
    pub secret_len: u8,
    pub _pad: [u8; 11],
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<UserRecord>() == 64);
pub const USER_ENABLED: u32 = 1;

#[repr(C, align(64))]
pub struct TrafficMeta {
    /// pid of the writing data plane; `OWNER_CONTROL` while the control plane takes over a
    /// dead writer's bank; 0 = none.
    pub owner_pid: AtomicU32,
    pub active_bank: AtomicU32,
    pub _pad: [u64; 7],
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<TrafficMeta>() == 64);
pub const OWNER_CONTROL: u32 = u32::MAX;

#[repr(C, align(64))]
pub struct BankHeader {
    /// Harvest epoch this bank was activated in.
    pub epoch: AtomicU64,
    pub len: AtomicU32,
    /// Times an add found the bank full (the bytes stay with the core for the next bank).
    pub overflow: AtomicU32,
    pub _pad: [u64; 6],
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<BankHeader>() == 64);

/// Accumulated payload bytes of one user of one node on one core.
#[repr(C)]
pub struct TrafficEntry {
    /// `node << 32 | user_id`.
    pub key: AtomicU64,
    pub up: AtomicU64,
    pub down: AtomicU64,
    pub _pad: AtomicU64,
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<TrafficEntry>() == 32);
pub const TRAFFIC_META_OFF: usize = 64;
pub const TRAFFIC_BANKS_OFF: usize = 128;

#[repr(C, align(64))]
pub struct RingMeta {
    /// Next slot the producer writes (only the producer stores it).
    pub head: AtomicU64,
    pub _pad0: [u64; 7],
    /// Next slot the consumer reads (only the consumer stores it).
    pub tail: AtomicU64,
    pub _pad1: [u64; 7],
    /// Items dropped because the ring was full.
    pub dropped: AtomicU64,
    pub _pad2: [u64; 7],
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<RingMeta>() == 192);
pub const RING_META_OFF: usize = 64;
pub const RING_SLOTS_OFF: usize = 256;

/// One speed-limit clock of the `rates` file (see `rates.rs`).
#[repr(C)]
pub struct RateSlot {
    /// `1 << 63 | node << 32 | user_id`; 0 = never used.
    pub key: AtomicU64,
    /// GCRA theoretical arrival time, ns on `CLOCK_MONOTONIC`.
    pub tat: AtomicU64,
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<RateSlot>() == 16);
pub const RATE_SLOTS_OFF: usize = 64;
pub const RATE_SLOTS: usize = 1 << 16;

/// The meta block of a `known-N` file (see `known_ips.rs`).
#[repr(C)]
pub struct KnownMeta {
    /// The key of the keyed hash the entries are made with (random per file).
    pub hash_key: [u8; 32],
    /// Entries after the meta block.
    pub count: u64,
    /// Unix ms after which the file no longer says anything (the panel's lists are stale).
    pub valid_until_ms: u64,
    pub _pad: [u64; 2],
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<KnownMeta>() == 64);
pub const KNOWN_META_OFF: usize = 64;
pub const KNOWN_KEYS_OFF: usize = 128;

/// Also added after version 1 (see [`KIND_RATES`]): a core's open connections per (node,
/// user), `user-conns-<inst>-<core>`, replaced whole (tmp + rename); see `user_conns.rs`.
pub const KIND_USER_CONNS: u32 = 10;

/// The meta block of a `user-conns` file.
#[repr(C)]
pub struct UserConnsMeta {
    /// Unix ms when the core wrote the file (a reader ignores old ones: the core is gone).
    pub written_ms: u64,
    /// Entries after the meta block.
    pub count: u64,
    pub _pad: [u64; 6],
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<UserConnsMeta>() == 64);
pub const USER_CONNS_META_OFF: usize = 64;
pub const USER_CONNS_ENTRIES_OFF: usize = 128;
