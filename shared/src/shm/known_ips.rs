//! The IPs the panel has seen for each user of a node, on every node (Xboard's WebSocket
//! `sync.devices`), as a set the data plane can ask "is this user's address known?".
//!
//! ```text
//! known-<node>   [ SegHeader 64 B ][ KnownMeta 64 B ][ u64 × count, sorted ascending ]
//!                  KnownMeta: hash key (32 B, random per file), count, valid until (unix ms)
//!                  entry: the first 8 bytes of BLAKE3-keyed(uid LE ‖ family ‖ 16 address bytes)
//! ```
//!
//! Why: Xboard's device rule admits a new address when it is already online for the user
//! anywhere, or when the addresses online everywhere are fewer than the limit (spec §5). The
//! counts alone (`alive_elsewhere`) cannot say whether the address at hand is among them, so
//! one phone using two nodes (a client testing latency, a switch between nodes) was refused
//! on the second at a limit of 1. The control plane writes this file whenever the panel sends
//! the lists (tmp + rename: a reader sees the old file or the new one, never a mix); a data
//! plane looks into it only for a new address at the limit, and re-checks the file's inode at
//! most once a second. The keyed hash keeps a client from choosing addresses that collide with
//! another user's; a false match needs a 64-bit collision.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::layout::{KnownMeta, SegHeader, KIND_KNOWN, KNOWN_KEYS_OFF, KNOWN_META_OFF};
use super::segment::Segment;
use super::{names, now_ms, ShmError};

/// Most entries one file holds (one node's users × their addresses): 8 MiB.
pub(crate) const MAX_ENTRIES: usize = 1 << 20;
/// How often a reader looks for a newer file.
const RECHECK: Duration = Duration::from_secs(1);

fn entry(hash_key: &[u8; 32], uid: u32, ip: IpAddr) -> u64 {
    let mut buf = [0u8; 21];
    buf[..4].copy_from_slice(&uid.to_le_bytes());
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            buf[4] = 4;
            buf[5..9].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            buf[4] = 6;
            buf[5..21].copy_from_slice(&v6.octets());
        }
    }
    let h = blake3::keyed_hash(hash_key, &buf);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

fn random_key(node: u16) -> [u8; 32] {
    use std::io::Read;
    let mut k = [0u8; 32];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut k));
    if read.is_err() {
        // No /dev/urandom: still unpredictable enough for a client that cannot read shm.
        let seed = format!(
            "{:?} {} {node} {:?}",
            std::time::SystemTime::now(),
            std::process::id(),
            Instant::now()
        );
        k = *blake3::hash(seed.as_bytes()).as_bytes();
    }
    k
}

/// Writes `<dir>/known-<node>` with `ips` (user id, address), valid for `valid_for`. Returns
/// the number of distinct entries (at most [`MAX_ENTRIES`]; the rest are left out).
pub(crate) fn write(
    dir: &Path,
    node: u16,
    ips: &[(u32, IpAddr)],
    valid_for: Duration,
) -> Result<usize, ShmError> {
    let hash_key = random_key(node);
    let mut keys: Vec<u64> = ips.iter().map(|&(uid, ip)| entry(&hash_key, uid, ip)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.truncate(MAX_ENTRIES);
    let size = KNOWN_KEYS_OFF + keys.len().max(1) * 8;
    let header = SegHeader::new(KIND_KNOWN, 8, keys.len(), 0, size);
    let path = dir.join(names::known(node));
    let tmp = path.with_extension(format!("w{}", std::process::id()));
    let seg = Segment::create(&tmp, size, header)?;
    let valid_until_ms = now_ms().saturating_add(u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX));
    seg.write(
        KNOWN_META_OFF,
        KnownMeta {
            hash_key,
            count: keys.len() as u64,
            valid_until_ms,
            _pad: [0; 2],
        },
    )?;
    seg.fill_with(KNOWN_KEYS_OFF, keys.len(), |s: &mut [u64]| {
        s.copy_from_slice(&keys)
    })?;
    // The file is complete before it takes the name readers open.
    std::fs::rename(&tmp, &path).map_err(|e| ShmError::io(&path, e))?;
    Ok(keys.len())
}

/// Removes `<dir>/known-<node>` (the panel's lists are gone or stale).
pub(crate) fn remove(dir: &Path, node: u16) {
    let _ = std::fs::remove_file(dir.join(names::known(node)));
}

struct Mapped {
    checked: Instant,
    ino: Option<u64>,
    seg: Option<Segment>,
}

/// A data-plane core's view of the `known-N` files.
#[derive(Default)]
pub(crate) struct KnownReader {
    nodes: HashMap<u16, Mapped>,
}

impl KnownReader {
    /// Whether the panel's lists (current ones) have `ip` online for `uid` on `node`'s file.
    pub(crate) fn contains(&mut self, dir: &Path, node: u16, uid: u32, ip: IpAddr) -> bool {
        use std::os::unix::fs::MetadataExt;
        let now = Instant::now();
        let m = self.nodes.entry(node).or_insert(Mapped {
            checked: now - RECHECK,
            ino: None,
            seg: None,
        });
        if now.duration_since(m.checked) >= RECHECK {
            m.checked = now;
            let path = dir.join(names::known(node));
            match std::fs::symlink_metadata(&path) {
                Ok(md) if Some(md.ino()) == m.ino => {}
                Ok(md) => {
                    m.ino = Some(md.ino());
                    m.seg = Segment::open(&path, KIND_KNOWN).ok();
                }
                Err(_) => {
                    m.ino = None;
                    m.seg = None;
                }
            }
        }
        let Some(seg) = &m.seg else { return false };
        let Ok(meta) = seg.at::<KnownMeta>(KNOWN_META_OFF) else {
            return false;
        };
        if meta.valid_until_ms < now_ms() {
            return false;
        }
        let Ok(count) = usize::try_from(meta.count) else {
            return false;
        };
        let Ok(keys) = seg.slice::<u64>(KNOWN_KEYS_OFF, count.min(MAX_ENTRIES)) else {
            return false;
        };
        keys.binary_search(&entry(&meta.hash_key, uid, ip)).is_ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn temporaries_of_dead_writers_are_swept() {
        let d = tempfile::tempdir().unwrap();
        // A pid that cannot exist (above the kernel's pid_max) and ours.
        std::fs::write(d.path().join("known-3.w4000000000"), b"x").unwrap();
        std::fs::write(d.path().join("users-1-a.tmp4000000000"), b"x").unwrap();
        std::fs::write(d.path().join(format!("known-4.w{}", std::process::id())), b"x").unwrap();
        write(d.path(), 5, &[(1, ip("192.0.2.1"))], Duration::from_secs(60)).unwrap();
        assert_eq!(super::super::control::sweep_temporaries(d.path()), 2);
        let left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(left.contains(&"known-5".to_string()), "{left:?}");
        assert!(
            left.iter().any(|n| n.starts_with("known-4.w")),
            "a live writer's file stays: {left:?}"
        );
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn written_lists_are_found_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let ips = [
            (7, ip("198.51.100.7")),
            (7, ip("2001:db8::1")),
            (8, ip("203.0.113.9")),
        ];
        assert_eq!(write(d.path(), 3, &ips, Duration::from_secs(60)).unwrap(), 3);
        let mut r = KnownReader::default();
        assert!(r.contains(d.path(), 3, 7, ip("198.51.100.7")));
        assert!(
            r.contains(d.path(), 3, 7, ip("::ffff:198.51.100.7")),
            "IPv4-mapped is the same address"
        );
        assert!(r.contains(d.path(), 3, 7, ip("2001:db8::1")));
        assert!(
            !r.contains(d.path(), 3, 8, ip("198.51.100.7")),
            "another user's address"
        );
        assert!(!r.contains(d.path(), 3, 7, ip("198.51.100.8")));
        assert!(!r.contains(d.path(), 4, 7, ip("198.51.100.7")), "another node");
    }

    #[test]
    fn a_new_file_is_seen_within_a_second_and_stale_or_removed_lists_say_nothing() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), 1, &[(1, ip("192.0.2.1"))], Duration::from_secs(60)).unwrap();
        let mut r = KnownReader::default();
        assert!(r.contains(d.path(), 1, 1, ip("192.0.2.1")));
        write(d.path(), 1, &[(1, ip("192.0.2.2"))], Duration::from_secs(60)).unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert!(!r.contains(d.path(), 1, 1, ip("192.0.2.1")));
        assert!(r.contains(d.path(), 1, 1, ip("192.0.2.2")));
        write(d.path(), 1, &[(1, ip("192.0.2.3"))], Duration::ZERO).unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert!(!r.contains(d.path(), 1, 1, ip("192.0.2.3")), "stale lists");
        write(d.path(), 1, &[(1, ip("192.0.2.4"))], Duration::from_secs(60)).unwrap();
        remove(d.path(), 1);
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert!(!r.contains(d.path(), 1, 1, ip("192.0.2.4")), "removed");
        // An empty list is a valid file that contains nothing.
        write(d.path(), 2, &[], Duration::from_secs(60)).unwrap();
        assert!(!r.contains(d.path(), 2, 1, ip("192.0.2.4")));
    }
}
