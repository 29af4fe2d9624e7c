//! Lossless traffic accounting: harvested banks → journal → per-node batches → panel.
//!
//! Rules (docs/design.md, "Accounting journal"):
//! * a harvested bank is journalled (fsync) before it is cleared in shared memory, keyed by
//!   `(instance, core, epoch)` so it is never counted twice;
//! * a batch is sealed under a fresh report id (journalled) before it is sent, and retired only
//!   when the panel acknowledges it: a 2xx whose body is JSON ([`PushOutcome::from_answer`]);
//! * only a batch that certainly never left this machine (connect failure, DNS failure) is
//!   merged back into the open deltas and goes out with the next push;
//! * every other batch — unknown fate (timeout, reset, 5xx, HTML or empty 200) or refused by
//!   the panel (JSON 4xx) — is re-sent verbatim with the same report id before anything else,
//!   so a panel that de-duplicates by `X-V2sp-Report-Id` counts it exactly once; newer traffic
//!   waits in the open deltas behind it (the journal bounds them: one sealed batch and one
//!   open map per node).

pub mod journal;
pub mod online;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use v2sp_shared::shm::HarvestedBank;

use crate::panel::{Panel, PushBody, PushOutcome};
use journal::{Deltas, Journal, Record};

pub struct Accounting {
    journal: Mutex<Journal>,
}

/// What one push round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// Deltas the panel accepted this round (for the device-online filter).
    pub accepted: Deltas,
    pub batches_sent: u32,
    /// Last failure, if the round ended on one.
    pub error: Option<String>,
    /// A batch is waiting for a retry with the same report id.
    pub unknown_pending: bool,
    /// The panel refused the batch with a JSON 4xx (kept, resent; counted in /metrics).
    pub refused: bool,
}

impl Accounting {
    pub fn open(state_dir: &Path) -> std::io::Result<Accounting> {
        let j = Journal::open(state_dir)?;
        let (up, down) = j.state().unreported();
        if up + down > 0 {
            tracing::info!(up, down, "journal replayed: unreported bytes will be pushed");
        }
        Ok(Accounting {
            journal: Mutex::new(j),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Journal a harvested bank. `tag_of` maps a node slot to the node's stable tag. Returns
    /// Ok(false) if the bank had already been journalled (safe to clear either way).
    pub fn ingest(&self, bank: &HarvestedBank, tag_of: &dyn Fn(u16) -> String) -> std::io::Result<bool> {
        let mut n: BTreeMap<String, Deltas> = BTreeMap::new();
        for e in &bank.entries {
            let d = n
                .entry(tag_of(e.node))
                .or_default()
                .entry(e.user_id)
                .or_insert([0, 0]);
            d[0] = d[0].saturating_add(e.up);
            d[1] = d[1].saturating_add(e.down);
        }
        self.lock().commit(Record::Harvest {
            i: bank.instance_id,
            c: bank.core,
            e: bank.epoch,
            n,
        })
    }

    /// Unreported bytes of one node (open + sealed).
    pub fn unreported(&self, tag: &str) -> (u64, u64) {
        let j = self.lock();
        let mut t = (0, 0);
        if let Some(b) = j.state().nodes.get(tag) {
            for v in b
                .open
                .values()
                .chain(b.sealed.iter().flat_map(|s| s.deltas.values()))
            {
                t.0 += v[0];
                t.1 += v[1];
            }
        }
        t
    }

    pub fn unreported_total(&self) -> (u64, u64) {
        self.lock().state().unreported()
    }

    /// One push round for a node: retry an unknown-outcome batch, then send the open deltas
    /// of users above `min_bytes` (`ReportMinTraffic`). Never holds the journal lock during
    /// HTTP.
    pub fn push_node(&self, tag: &str, panel: &mut dyn Panel, min_bytes: u64) -> PushReport {
        let mut report = PushReport::default();
        for _ in 0..2 {
            // `fresh`: sealed in this call, so never sent before. A batch found sealed was
            // sent at least once (in this run or before a restart) and may have reached the
            // panel, whatever its latest attempt says.
            let (batch, fresh) = {
                let mut j = self.lock();
                let books = j.state().nodes.get(tag).cloned().unwrap_or_default();
                match books.sealed {
                    Some(b) => (b, false),
                    None => {
                        let users: Vec<u32> = books
                            .open
                            .iter()
                            .filter(|(_, v)| v[0].saturating_add(v[1]) > min_bytes)
                            .map(|(&u, _)| u)
                            .collect();
                        if users.is_empty() {
                            return report;
                        }
                        let id = uuid::Uuid::new_v4().to_string();
                        if let Err(e) = j.commit(Record::Seal {
                            tag: tag.to_string(),
                            id,
                            u: users,
                        }) {
                            report.error = Some(format!("journal: {e}"));
                            return report;
                        }
                        match j.state().nodes.get(tag).and_then(|b| b.sealed.clone()) {
                            Some(b) => (b, true),
                            None => return report,
                        }
                    }
                }
            };
            let body: PushBody = batch.deltas.iter().map(|(&u, &v)| (u, v)).collect();
            let outcome = if body.is_empty() {
                PushOutcome::Accepted
            } else {
                panel.push(&body, &batch.id)
            };
            report.batches_sent += 1;
            let mut j = self.lock();
            let commit = |j: &mut Journal, r: Record| {
                if let Err(e) = j.commit(r) {
                    tracing::error!(error = %e, "cannot write the accounting journal");
                }
            };
            match outcome {
                PushOutcome::Accepted => {
                    commit(
                        &mut j,
                        Record::Accepted {
                            tag: tag.to_string(),
                            id: batch.id.clone(),
                        },
                    );
                    for (u, v) in batch.deltas {
                        let e = report.accepted.entry(u).or_insert([0, 0]);
                        e[0] += v[0];
                        e[1] += v[1];
                    }
                }
                PushOutcome::Refused { code, message } => {
                    // The panel's own refusal: the batch stays sealed and is resent verbatim
                    // (never dropped, never merged: it reached the panel).
                    report.refused = true;
                    report.error = Some(format!(
                        "panel REFUSED report {} with HTTP {code}: {message}; the batch is kept and resent until the panel takes it",
                        batch.id
                    ));
                    return report;
                }
                PushOutcome::NotDelivered { detail } if fresh => {
                    // Its first attempt never left the machine: newer traffic may join it.
                    commit(
                        &mut j,
                        Record::Unseal {
                            tag: tag.to_string(),
                            id: batch.id,
                        },
                    );
                    report.error = Some(format!("not delivered: {detail}"));
                    return report;
                }
                PushOutcome::NotDelivered { detail } => {
                    // An earlier attempt may have reached the panel (a 500 after it recorded
                    // the batch, then an outage): merging it now would count it twice.
                    report.unknown_pending = true;
                    report.error = Some(format!(
                        "not delivered, will retry report {} unchanged: {detail}",
                        batch.id
                    ));
                    return report;
                }
                PushOutcome::Unknown { detail } => {
                    report.unknown_pending = true;
                    report.error = Some(format!(
                        "outcome unknown, will retry report {}: {detail}",
                        batch.id
                    ));
                    return report;
                }
            }
        }
        report
    }
}
