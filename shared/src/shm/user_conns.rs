//! Open connections per (node, user) of one data-plane core, for the panel's per-user online
//! counts (Xboard v2 `report.online`: `{"<uid>": connections}`).
//!
//! ```text
//! user-conns-<inst>-<core>  [ SegHeader 64 B ][ UserConnsMeta 64 B ][ [key, count] × count ]
//!                           key = node << 32 | user id, ascending; count = open connections
//! ```
//!
//! Why a file replaced whole rather than counters in place: a core knows its connections per
//! user only by walking its registry (about every 5 s), and the users with connections change
//! all the time. Writing a small sorted file and renaming it over the old one gives the reader
//! a consistent snapshot with no protocol between the processes. A core of a data plane that
//! is gone stops rewriting its file, and readers leave out files older than [`MAX_AGE`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::layout::{SegHeader, UserConnsMeta, KIND_USER_CONNS, USER_CONNS_ENTRIES_OFF, USER_CONNS_META_OFF};
use super::segment::Segment;
use super::{names, now_ms, ShmError};

/// Most entries one file holds (users with a connection on one core): 4 MiB.
pub(crate) const MAX_ENTRIES: usize = 1 << 18;
/// A file not rewritten for this long belongs to a core that is gone.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(30);

fn key(node: u16, user_id: u32) -> u64 {
    (u64::from(node) << 32) | u64::from(user_id)
}

/// Replaces core `core`'s file with `counts` ((node, user) → open connections; zeros are left
/// out). Returns the entries written (at most [`MAX_ENTRIES`]).
pub(crate) fn write(
    dir: &Path,
    instance: u64,
    core: u16,
    counts: &BTreeMap<(u16, u32), u64>,
) -> Result<usize, ShmError> {
    let entries: Vec<[u64; 2]> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .take(MAX_ENTRIES)
        .map(|(&(node, uid), &n)| [key(node, uid), n])
        .collect();
    let size = USER_CONNS_ENTRIES_OFF + entries.len().max(1) * 16;
    let header = SegHeader::new(KIND_USER_CONNS, 16, entries.len(), instance, size);
    let path = dir.join(names::user_conns(instance, core));
    let tmp = path.with_extension(format!("w{}", std::process::id()));
    let seg = Segment::create(&tmp, size, header)?;
    seg.write(
        USER_CONNS_META_OFF,
        UserConnsMeta {
            written_ms: now_ms(),
            count: entries.len() as u64,
            _pad: [0; 6],
        },
    )?;
    seg.fill_with(USER_CONNS_ENTRIES_OFF, entries.len(), |s: &mut [[u64; 2]]| {
        s.copy_from_slice(&entries)
    })?;
    // The file is complete before it takes the name readers open.
    std::fs::rename(&tmp, &path).map_err(|e| ShmError::io(&path, e))?;
    Ok(entries.len())
}

/// Adds core `core`'s counts for `node` to `into` (user id → connections), if its file is
/// recent.
pub(crate) fn add_node(dir: &Path, instance: u64, core: u16, node: u16, into: &mut BTreeMap<u32, u64>) {
    let Ok(seg) = Segment::open(&dir.join(names::user_conns(instance, core)), KIND_USER_CONNS) else {
        return;
    };
    let Ok(meta) = seg.at::<UserConnsMeta>(USER_CONNS_META_OFF) else {
        return;
    };
    let age = now_ms().saturating_sub(meta.written_ms);
    if u128::from(age) > MAX_AGE.as_millis() {
        return;
    }
    let count = usize::try_from(meta.count).unwrap_or(0).min(MAX_ENTRIES);
    let Ok(entries) = seg.slice::<[u64; 2]>(USER_CONNS_ENTRIES_OFF, count) else {
        return;
    };
    let lo = entries.partition_point(|e| e[0] < key(node, 0));
    for e in entries.get(lo..).unwrap_or_default() {
        if (e[0] >> 32) as u16 != node {
            break;
        }
        let n = into.entry(e[0] as u32).or_default();
        *n = n.saturating_add(e[1]);
    }
}

/// Removes core `core`'s file (its instance is gone).
pub(crate) fn remove(dir: &Path, instance: u64, core: u16) {
    let _ = std::fs::remove_file(dir.join(names::user_conns(instance, core)));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cores_add_up_per_node_and_old_files_say_nothing() {
        let d = tempfile::tempdir().unwrap();
        let c0 = BTreeMap::from([((1, 7), 2), ((1, 9), 1), ((2, 7), 5), ((0, 7), 4), ((1, 8), 0)]);
        assert_eq!(write(d.path(), 42, 0, &c0).unwrap(), 4);
        write(d.path(), 42, 1, &BTreeMap::from([((1, 7), 3)])).unwrap();
        let mut got = BTreeMap::new();
        for core in 0..3 {
            add_node(d.path(), 42, core, 1, &mut got);
        }
        assert_eq!(got, BTreeMap::from([(7, 5), (9, 1)]));
        let mut other = BTreeMap::new();
        add_node(d.path(), 43, 0, 1, &mut other);
        assert!(other.is_empty(), "another instance's files are not read");
        // A rewrite replaces the counts; an empty one is a valid file.
        write(d.path(), 42, 1, &BTreeMap::new()).unwrap();
        let mut got = BTreeMap::new();
        add_node(d.path(), 42, 1, 1, &mut got);
        assert!(got.is_empty());
        remove(d.path(), 42, 0);
        add_node(d.path(), 42, 0, 1, &mut got);
        assert!(got.is_empty(), "removed");
    }

    #[test]
    fn a_file_past_its_age_is_left_out() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), 1, 0, &BTreeMap::from([((3, 1), 1)])).unwrap();
        let seg = Segment::open(&d.path().join(names::user_conns(1, 0)), KIND_USER_CONNS).unwrap();
        seg.write(
            USER_CONNS_META_OFF,
            UserConnsMeta {
                written_ms: now_ms() - MAX_AGE.as_millis() as u64 - 1000,
                count: 1,
                _pad: [0; 6],
            },
        )
        .unwrap();
        let mut got = BTreeMap::new();
        add_node(d.path(), 1, 0, 3, &mut got);
        assert!(got.is_empty());
    }
}
