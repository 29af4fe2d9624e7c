//! Append-only, fsync'd journal of the accounting state machine.
//!
//! ```text
//! line   := crc32(hex, 8) ' ' json '\n'
//! json   := {"h":{"i":instance, "c":core, "e":epoch, "n":{tag:{uid:[up,down]}}}}   harvested bank
//!         | {"s":{"tag":tag, "id":report_id, "u":[uid,…]}}                          batch sealed
//!         | {"a":{"tag":tag, "id":report_id}}                                        panel accepted
//!         | {"u":{"tag":tag, "id":report_id}}                                        not delivered: merge back
//!         | {"snap":{"state":State}}                                                 compaction
//! ```
//! Replaying the records in order rebuilds [`State`] exactly. A torn last line (crash while
//! appending) fails its CRC and is dropped: it was never acknowledged to anyone, since every
//! record is fsync'd before the action it allows (clearing a bank, sending a batch).
//!
//! A failed append (ENOSPC, EIO) is cut off again (the file is truncated to its last good
//! length); if even that fails, the next record starts on a fresh line, and replay finds a
//! complete record glued behind a fragment by its `crc32 ' ' '{'` start.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Per-user bytes `[up, down]`.
pub type Deltas = BTreeMap<u32, [u64; 2]>;

/// A batch sent (or about to be sent) to the panel under one report id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub id: String,
    pub deltas: Deltas,
}

/// Unreported traffic of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBooks {
    /// Harvested, not yet part of a batch.
    pub open: Deltas,
    /// Sent with an unknown outcome, or about to be sent: retried verbatim, same id.
    pub sealed: Option<Batch>,
}

/// Everything the journal protects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub nodes: BTreeMap<String, NodeBooks>,
    /// Highest bank epoch journalled per (shm instance, core): a bank at or below it was
    /// already counted.
    pub harvested: BTreeMap<String, u64>,
}

pub(crate) fn bank_key(instance: u64, core: u16) -> String {
    format!("{instance:016x}/{core}")
}

// Externally tagged on purpose: serde's internally tagged enums buffer their content and then
// cannot read the integer map keys (user ids) back from JSON strings.
#[derive(Debug, Serialize, Deserialize)]
pub enum Record {
    #[serde(rename = "h")]
    Harvest {
        i: u64,
        c: u16,
        e: u64,
        n: BTreeMap<String, Deltas>,
    },
    #[serde(rename = "s")]
    Seal { tag: String, id: String, u: Vec<u32> },
    #[serde(rename = "a")]
    Accepted { tag: String, id: String },
    #[serde(rename = "u")]
    Unseal { tag: String, id: String },
    #[serde(rename = "snap")]
    Snapshot { state: State },
}

fn add(d: &mut Deltas, uid: u32, v: [u64; 2]) {
    let e = d.entry(uid).or_insert([0, 0]);
    e[0] = e[0].saturating_add(v[0]);
    e[1] = e[1].saturating_add(v[1]);
}

impl State {
    /// Apply one record. Returns false for a harvest that was already applied.
    pub fn apply(&mut self, r: &Record) -> bool {
        match r {
            Record::Harvest { i, c, e, n } => {
                let k = bank_key(*i, *c);
                if self.harvested.get(&k).is_some_and(|&last| *e <= last) {
                    return false;
                }
                self.harvested.insert(k, *e);
                for (tag, deltas) in n {
                    let books = self.nodes.entry(tag.clone()).or_default();
                    for (&uid, &v) in deltas {
                        add(&mut books.open, uid, v);
                    }
                }
            }
            Record::Seal { tag, id, u } => {
                let books = self.nodes.entry(tag.clone()).or_default();
                let mut deltas = Deltas::new();
                for uid in u {
                    if let Some(v) = books.open.remove(uid) {
                        deltas.insert(*uid, v);
                    }
                }
                // A previous sealed batch would be overwritten only through a bug upstream;
                // merge it instead of losing it.
                if let Some(prev) = books.sealed.take() {
                    for (uid, v) in prev.deltas {
                        add(&mut deltas, uid, v);
                    }
                }
                books.sealed = Some(Batch {
                    id: id.clone(),
                    deltas,
                });
            }
            Record::Accepted { tag, id } => {
                if let Some(books) = self.nodes.get_mut(tag) {
                    if books.sealed.as_ref().is_some_and(|b| &b.id == id) {
                        books.sealed = None;
                    }
                }
            }
            Record::Unseal { tag, id } => {
                if let Some(books) = self.nodes.get_mut(tag) {
                    if books.sealed.as_ref().is_some_and(|b| &b.id == id) {
                        if let Some(b) = books.sealed.take() {
                            for (uid, v) in b.deltas {
                                add(&mut books.open, uid, v);
                            }
                        }
                    }
                }
            }
            Record::Snapshot { state } => *self = state.clone(),
        }
        true
    }

    /// Total unreported bytes (for logs and status).
    pub fn unreported(&self) -> (u64, u64) {
        let mut t = (0u64, 0u64);
        for b in self.nodes.values() {
            for v in b
                .open
                .values()
                .chain(b.sealed.iter().flat_map(|s| s.deltas.values()))
            {
                t.0 = t.0.saturating_add(v[0]);
                t.1 = t.1.saturating_add(v[1]);
            }
        }
        t
    }
}

/// The journal file plus the state it describes.
pub struct Journal {
    path: PathBuf,
    file: File,
    state: State,
    bytes: u64,
    /// The file may end in a fragment of a failed append: the next record starts with '\n'.
    torn: bool,
    /// Tests: the next append writes this many bytes of its line, then fails with ENOSPC.
    #[cfg(test)]
    fail_next: Option<usize>,
}

/// Compact when the log grows beyond this.
const COMPACT_BYTES: u64 = 8 << 20;

impl Journal {
    /// Open (creating the directory and file) and replay.
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("accounting.journal");
        let mut state = State::default();
        let mut dropped = 0usize;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).split(b'\n') {
                let line = line?;
                match decode_line(&line) {
                    Some(r) => {
                        state.apply(&r);
                    }
                    None if line.is_empty() => {}
                    None => {
                        dropped += 1;
                        // A record glued behind a fragment (a failed append that could not
                        // be cut off, by a version without the fresh-line rule) is kept.
                        if let Some(r) = resync(&line) {
                            state.apply(&r);
                        }
                    }
                }
            }
        }
        if dropped > 0 {
            tracing::warn!(path = %path.display(), dropped, "journal had torn or corrupt lines (crash while appending); they were never acted upon");
        }
        let mut j = Journal {
            file: File::open("/dev/null")?,
            path,
            state,
            bytes: 0,
            torn: false,
            #[cfg(test)]
            fail_next: None,
        };
        // Start every run from a compacted file: replay cost stays bounded.
        j.compact()?;
        Ok(j)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Append, fsync, then apply. Returns false (nothing written) for an already-applied
    /// harvest.
    pub fn commit(&mut self, r: Record) -> std::io::Result<bool> {
        let mut probe = self.state.clone_shallow_for(&r);
        if !probe.apply(&r) {
            return Ok(false);
        }
        let mut line = encode_line(&r)?;
        if self.torn {
            line.insert(0, b'\n');
        }
        if let Err(e) = self.append(&line) {
            // Not applied, not acknowledged: cut the partial line off again, so the next
            // record does not continue it.
            self.torn = self.file.set_len(self.bytes).is_err() || self.file.sync_data().is_err();
            return Err(e);
        }
        self.torn = false;
        self.bytes += line.len() as u64;
        self.state.apply(&r);
        if self.bytes > COMPACT_BYTES {
            self.compact()?;
        }
        Ok(true)
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.fail_next.take() {
            self.file.write_all(line.get(..n).unwrap_or(line))?;
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.write_all(line)?;
        self.file.sync_data()
    }

    /// Rewrite the file as one snapshot record (tmp + fsync + rename + fsync dir).
    pub fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("journal.tmp");
        let line = encode_line(&Record::Snapshot {
            state: self.state.clone(),
        })?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&line)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.bytes = line.len() as u64;
        self.torn = false;
        Ok(())
    }
}

impl State {
    /// Only harvest records can be refused; everything else always applies.
    fn clone_shallow_for(&self, r: &Record) -> State {
        match r {
            Record::Harvest { .. } => State {
                nodes: BTreeMap::new(),
                harvested: self.harvested.clone(),
            },
            _ => State::default(),
        }
    }
}

fn encode_line(r: &Record) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

/// The last complete record inside a corrupt line: a fragment followed by a record that was
/// appended without a line break between them.
fn resync(line: &[u8]) -> Option<Record> {
    (1..line.len())
        .rev()
        .filter(|&i| line.get(i + 8..i + 10) == Some(&b" {"[..]))
        .find_map(|i| decode_line(line.get(i..)?))
}

fn decode_line(line: &[u8]) -> Option<Record> {
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if crc32fast::hash(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn harvest(e: u64, tag: &str, uid: u32, up: u64) -> Record {
        Record::Harvest {
            i: 1,
            c: 0,
            e,
            n: BTreeMap::from([(tag.to_string(), Deltas::from([(uid, [up, 0])]))]),
        }
    }

    #[test]
    fn replay_restores_state_and_refuses_double_harvest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            assert!(j.commit(harvest(1, "n", 5, 100)).unwrap());
            assert!(!j.commit(harvest(1, "n", 5, 100)).unwrap(), "same bank twice");
            assert!(j.commit(harvest(2, "n", 5, 50)).unwrap());
            j.commit(Record::Seal {
                tag: "n".into(),
                id: "r1".into(),
                u: vec![5],
            })
            .unwrap();
            assert!(j.commit(harvest(3, "n", 6, 7)).unwrap());
        }
        let j = Journal::open(dir.path()).unwrap();
        let b = &j.state().nodes["n"];
        assert_eq!(
            b.sealed,
            Some(Batch {
                id: "r1".into(),
                deltas: Deltas::from([(5, [150, 0])])
            })
        );
        assert_eq!(b.open, Deltas::from([(6, [7, 0])]));
    }

    #[test]
    fn unseal_merges_back_and_accept_retires() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.commit(harvest(1, "n", 5, 100)).unwrap();
        j.commit(Record::Seal {
            tag: "n".into(),
            id: "r1".into(),
            u: vec![5],
        })
        .unwrap();
        j.commit(harvest(2, "n", 5, 1)).unwrap();
        j.commit(Record::Unseal {
            tag: "n".into(),
            id: "r1".into(),
        })
        .unwrap();
        assert_eq!(j.state().nodes["n"].open, Deltas::from([(5, [101, 0])]));
        j.commit(Record::Seal {
            tag: "n".into(),
            id: "r2".into(),
            u: vec![5],
        })
        .unwrap();
        j.commit(Record::Accepted {
            tag: "n".into(),
            id: "r2".into(),
        })
        .unwrap();
        assert_eq!(j.state().unreported(), (0, 0));
    }

    #[test]
    fn torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            j.commit(harvest(1, "n", 5, 100)).unwrap();
        }
        let p = dir.path().join("accounting.journal");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"deadbeef {\"h\":{\"i\":1,\"c\":0,\"e\":9,\"n\":{\"n\":{\"5\":[99")
            .unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.state().nodes["n"].open, Deltas::from([(5, [100, 0])]));
    }

    /// ENOSPC halfway through a line: the fragment is cut off, the next record is whole and
    /// survives a restart; the failed one was never applied.
    #[test]
    fn failed_append_leaves_no_fragment_before_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            j.commit(harvest(1, "n", 5, 100)).unwrap();
            j.fail_next = Some(20);
            assert!(j.commit(harvest(2, "n", 5, 1000)).is_err());
            assert!(j.commit(harvest(3, "n", 5, 7)).unwrap());
        }
        let text = std::fs::read(dir.path().join("accounting.journal")).unwrap();
        assert!(text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .all(|l| decode_line(l).is_some()));
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.state().nodes["n"].open, Deltas::from([(5, [107, 0])]));
    }

    /// A journal where a fragment and the next record share a line (written by a version that
    /// did not cut fragments off): the record is kept.
    #[test]
    fn record_glued_to_a_fragment_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            j.commit(harvest(1, "n", 5, 100)).unwrap();
        }
        let p = dir.path().join("accounting.journal");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"deadbeef {\"h\":{\"i\":1,\"c\":0,\"e\":9,\"n\":{\"n\":{\"5\":[99")
            .unwrap();
        f.write_all(&encode_line(&harvest(2, "n", 5, 7)).unwrap())
            .unwrap();
        f.write_all(&encode_line(&harvest(3, "n", 6, 1)).unwrap())
            .unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(
            j.state().nodes["n"].open,
            Deltas::from([(5, [107, 0]), (6, [1, 0])])
        );
    }
}
