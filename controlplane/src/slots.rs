//! Stable node slots: a node keeps its shared-memory slot across restarts, so traffic left in
//! a bank by an earlier run is attributed to the right node. Persisted in the state dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use v2sp_shared::shm::layout::MAX_NODES;

pub struct SlotMap {
    path: PathBuf,
    by_tag: BTreeMap<String, u16>,
}

impl SlotMap {
    pub fn load(state_dir: &Path) -> SlotMap {
        let path = state_dir.join("slots.json");
        let by_tag = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        SlotMap { path, by_tag }
    }

    /// The slot of `tag`, assigning a free one (and persisting) if new. Slots of tags that are
    /// no longer configured are reused only when no free slot is left, oldest tag first.
    pub fn slot_for(&mut self, tag: &str, live: &[String]) -> Option<u16> {
        if let Some(&s) = self.by_tag.get(tag) {
            return Some(s);
        }
        let used: std::collections::BTreeSet<u16> = self.by_tag.values().copied().collect();
        let slot = match (0..MAX_NODES as u16).find(|s| !used.contains(s)) {
            Some(s) => s,
            None => {
                let stale = self
                    .by_tag
                    .iter()
                    .find(|(t, _)| !live.contains(t))
                    .map(|(t, &s)| (t.clone(), s))?;
                self.by_tag.remove(&stale.0);
                stale.1
            }
        };
        self.by_tag.insert(tag.to_string(), slot);
        self.save();
        Some(slot)
    }

    pub fn tag_of(&self, slot: u16) -> Option<&str> {
        self.by_tag
            .iter()
            .find(|(_, &s)| s == slot)
            .map(|(t, _)| t.as_str())
    }

    fn save(&self) {
        let tmp = self.path.with_extension("json.tmp");
        let ok = serde_json::to_vec_pretty(&self.by_tag)
            .ok()
            .and_then(|b| std::fs::write(&tmp, b).ok())
            .and_then(|_| std::fs::rename(&tmp, &self.path).ok());
        if ok.is_none() {
            tracing::warn!(path = %self.path.display(), "cannot persist node slots");
        }
    }
}
