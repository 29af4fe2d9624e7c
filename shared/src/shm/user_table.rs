//! A node's user table in one side (A or B) of its double buffer.
//!
//! Built completely by the control plane while no core reads that side, then published; cores
//! only read it. Open addressing over `u64` entries `tag << 32 | (slot + 1)` (0 = empty),
//! linear probing, capacity a power of two ≥ 1.5 × users, so a lookup is one hash and
//! usually one cache line of index plus one record.

use super::layout::{TableMeta, UserRecord, TABLE_META_OFF, TABLE_RECORDS_OFF, USER_ENABLED};
use super::segment::{prefetch, Segment};
use super::{ShmError, UserRef};
use crate::cred::{lookup_key, CredKind, Secret};

/// One user as the control plane publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub user_id: u32,
    pub secret: Secret,
    pub speed_limit_mbps: u32,
    pub device_limit: u32,
    pub alive_elsewhere: u32,
}

/// 64-bit hash of a lookup key. Keys are mostly uniform already (hashes, random UUIDs), but
/// time-ordered UUIDs are not, so every byte is mixed.
pub fn key_hash(key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (key.len() as u64).wrapping_mul(K) ^ 0x2545_F491_4F6C_DD1D;
    for chunk in key.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
        h ^= h >> 29;
    }
    h ^= h >> 32;
    h = h.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    h ^ (h >> 32)
}

/// (record capacity, index capacity) for `n` users, with headroom so small changes in the
/// user count reuse the file.
pub(crate) fn capacities_for(n: usize) -> (usize, usize) {
    let cap = (n + n / 4).max(1024).next_multiple_of(1024);
    let index = (cap + cap / 2).next_power_of_two();
    (cap, index)
}

pub(crate) fn table_file_size(cap: usize, index_cap: usize) -> usize {
    TABLE_RECORDS_OFF + cap * size_of::<UserRecord>() + index_cap * 8
}

/// How far ahead of the insert the index build prefetches its probe line. The index is
/// random access over up to tens of MiB, so without it every insert waits for DRAM.
const PREFETCH_AHEAD: usize = 16;

/// Write a complete table into `seg` (which no reader uses at the moment). `hashes` is
/// scratch space kept by the caller between publishes (one `u64` per user).
///
/// Records are written in one sequential pass straight into the file, the index is built in
/// place (zeroed, then filled with the probe line of the insert `PREFETCH_AHEAD` users later
/// already requested), so a publish touches each byte of the table once and allocates
/// nothing in steady state.
pub(crate) fn write_table(
    seg: &Segment,
    node: u16,
    kind: CredKind,
    users: &[UserEntry],
    hashes: &mut Vec<u64>,
) -> Result<(), ShmError> {
    let cap = seg.header().capacity as usize;
    let index_off = TABLE_RECORDS_OFF + cap * size_of::<UserRecord>();
    let index_cap = seg.len().saturating_sub(index_off) / 8;
    if users.len() > cap || !index_cap.is_power_of_two() || index_cap <= cap {
        return Err(ShmError::Layout {
            path: seg.path().to_path_buf(),
            what: format!(
                "{} users do not fit a table of {cap} records / {index_cap} index slots",
                users.len()
            ),
        });
    }
    let mask = index_cap - 1;
    let has_key = kind.has_lookup_key();
    hashes.clear();
    seg.fill_with::<UserRecord, _>(TABLE_RECORDS_OFF, users.len(), |records| {
        for (r, u) in records.iter_mut().zip(users) {
            *r = UserRecord {
                secret: u.secret.bytes,
                user_id: u.user_id,
                speed_limit_mbps: u.speed_limit_mbps,
                device_limit: u.device_limit,
                alive_elsewhere: super::sync::AtomicU32::new(u.alive_elsewhere),
                flags: USER_ENABLED,
                secret_len: u.secret.len,
                _pad: [0; 11],
            };
        }
    })?;
    if has_key {
        hashes.extend(
            users
                .iter()
                .map(|u| lookup_key(kind, u.secret.as_slice()).map_or(0, |k| key_hash(k.as_slice()))),
        );
    }
    seg.fill_with::<u64, _>(index_off, index_cap, |index| {
        index.fill(0);
        for (slot, &h) in hashes.iter().enumerate() {
            if let Some(&ahead) = hashes.get(slot + PREFETCH_AHEAD) {
                prefetch(&index[ahead as usize & mask]);
            }
            let entry = (h & 0xFFFF_FFFF_0000_0000) | (slot as u64 + 1);
            let mut i = h as usize & mask;
            // Terminates: at most `cap` < `index_cap` entries are occupied.
            while index[i] != 0 {
                i = (i + 1) & mask;
            }
            index[i] = entry;
        }
    })?;
    seg.write(
        TABLE_META_OFF,
        TableMeta {
            n_users: users.len() as u32,
            index_mask: mask as u32,
            cred_kind: kind as u32,
            node: u32::from(node),
            records_off: TABLE_RECORDS_OFF as u64,
            index_off: index_off as u64,
            _pad: [0; 4],
        },
    )?;
    Ok(())
}

/// Read-only view of a published table.
pub struct UserTableView<'a> {
    records: &'a [UserRecord],
    index: &'a [u64],
    kind: CredKind,
    node: u16,
    gen: u64,
}

impl<'a> UserTableView<'a> {
    pub(crate) fn new(seg: &'a Segment, gen: u64) -> Result<Self, ShmError> {
        let meta: &TableMeta = seg.at(TABLE_META_OFF)?;
        let cap = seg.header().capacity as usize;
        let n = (meta.n_users as usize).min(cap);
        let index_len = meta.index_mask as usize + 1;
        let kind = CredKind::from_u32(meta.cred_kind).ok_or_else(|| ShmError::Layout {
            path: seg.path().to_path_buf(),
            what: format!("unknown credential kind {}", meta.cred_kind),
        })?;
        Ok(UserTableView {
            records: seg.slice(meta.records_off as usize, n)?,
            index: seg.slice(meta.index_off as usize, index_len)?,
            kind,
            node: meta.node as u16,
            gen,
        })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    pub fn kind(&self) -> CredKind {
        self.kind
    }
    pub fn gen(&self) -> u64 {
        self.gen
    }

    fn user_ref(&self, slot: usize, r: &UserRecord) -> UserRef {
        UserRef {
            node: self.node,
            slot: slot as u32,
            user_id: r.user_id,
            gen: self.gen,
            secret: r.secret,
            secret_len: r.secret_len.min(32),
            speed_limit_mbps: r.speed_limit_mbps,
            device_limit: r.device_limit,
        }
    }

    /// Find the user whose lookup key is `key`; `None` for unknown keys and for protocols
    /// without a lookup key.
    pub fn lookup(&self, key: &[u8]) -> Option<UserRef> {
        if self.index.is_empty() || !self.kind.has_lookup_key() {
            return None;
        }
        let mask = self.index.len() - 1;
        let h = key_hash(key);
        let tag = h & 0xFFFF_FFFF_0000_0000;
        let mut i = h as usize & mask;
        for _ in 0..self.index.len() {
            let e = self.index[i];
            if e == 0 {
                return None;
            }
            if e & 0xFFFF_FFFF_0000_0000 == tag {
                let slot = (e & 0xFFFF_FFFF) as usize - 1;
                if let Some(r) = self.records.get(slot) {
                    let secret = &r.secret[..usize::from(r.secret_len.min(32))];
                    if r.flags & USER_ENABLED != 0
                        && lookup_key(self.kind, secret).is_some_and(|k| k.as_slice() == key)
                    {
                        return Some(self.user_ref(slot, r));
                    }
                }
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// The user in `slot` (connections re-resolve limits after a table change this way).
    pub fn get(&self, slot: u32) -> Option<UserRef> {
        self.records
            .get(slot as usize)
            .map(|r| self.user_ref(slot as usize, r))
    }

    /// Panel-wide online IPs of the user in `slot` on other nodes (updated in place).
    pub fn alive_elsewhere(&self, slot: u32) -> u32 {
        self.records.get(slot as usize).map_or(0, |r| {
            r.alive_elsewhere.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Every enabled user, in slot order (for protocols that try each user's key).
    pub fn iter(&self) -> impl Iterator<Item = UserRef> + '_ {
        self.records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.flags & USER_ENABLED != 0)
            .map(|(i, r)| self.user_ref(i, r))
    }

    pub(crate) fn records(&self) -> &'a [UserRecord] {
        self.records
    }
}
