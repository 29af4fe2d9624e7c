//! Standalone mode: `ApiHost = file:///abs/path.json`, no panel server.
//!
//! The file holds every node's config and users:
//! ```json
//! {"nodes": {"26": {"node_type": "vless", "server_port": 443, …}},
//!  "users": {"26": [{"id": 1, "uuid": "…", "speed_limit": 0, "device_limit": 0}]},
//!  "alive": {"1": 2}}
//! ```
//! (`alive`, panel-wide online IP counts, is optional.) It is re-read when its mtime or size
//! changes; a node whose part did not change is [`Fetch::Unchanged`].
//!
//! Pushes accumulate in `<path>.ledger.json`:
//! ```json
//! {"26": {"1": [up, down]}, "_applied_reports": {"26": ["<report id>", …]}}
//! ```
//! written atomically (temp file, fsync, rename, fsync of the directory). The last
//! [`REMEMBERED_REPORTS`] report ids per node are kept in `_applied_reports`, so a batch retried
//! with the same id is acknowledged but not added twice. One process owns a ledger; within it,
//! node threads sharing a file are serialised by a lock.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use v2sp_shared::panel::{AliveBody, AliveList, DecodeError, NodeInfo, PushBody, UserList};

use super::{Action, Fetch, NodeApi, Panel, PanelError, PushOutcome};

/// Appended to the panel file's path to name the ledger.
pub const LEDGER_SUFFIX: &str = ".ledger.json";
/// Key of the applied report ids in the ledger.
const APPLIED_KEY: &str = "_applied_reports";
/// Report ids remembered per node (a retry comes long before this many newer batches).
pub const REMEMBERED_REPORTS: usize = 4096;

/// Serialises ledger read-modify-write between node threads of this process.
static LEDGER_LOCK: Mutex<()> = Mutex::new(());

#[derive(Debug, Default, Clone)]
struct Seen {
    stamp: Option<(SystemTime, u64)>,
    hash: Option<[u8; 32]>,
}

/// The standalone panel of one node.
#[derive(Debug)]
pub struct FilePanel {
    path: PathBuf,
    ledger: PathBuf,
    node_id: u32,
    config_seen: Seen,
    users_seen: Seen,
}

impl FilePanel {
    /// `api.api_host` must be `file:///absolute/path.json`.
    pub fn new(api: &NodeApi) -> Result<FilePanel, PanelError> {
        let host = api.api_host.trim();
        let raw = host
            .strip_prefix("file://")
            .ok_or_else(|| PanelError::Config(format!("{host:?} is not a file:// ApiHost")))?;
        let path = PathBuf::from(raw);
        if !path.is_absolute() {
            return Err(PanelError::Config(format!(
                "file panel path {raw:?} must be absolute (file:///abs/path.json)"
            )));
        }
        let mut ledger = path.clone().into_os_string();
        ledger.push(LEDGER_SUFFIX);
        Ok(FilePanel {
            ledger: PathBuf::from(ledger),
            path,
            node_id: api.node_id,
            config_seen: Seen::default(),
            users_seen: Seen::default(),
        })
    }

    pub fn ledger_path(&self) -> &Path {
        &self.ledger
    }

    fn stamp(&self) -> Result<(SystemTime, u64), PanelError> {
        let meta = fs::metadata(&self.path).map_err(|e| {
            PanelError::Config(format!("cannot stat panel file {}: {e}", self.path.display()))
        })?;
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        Ok((mtime, meta.len()))
    }

    fn read(&self, action: Action) -> Result<Value, PanelError> {
        let bytes = fs::read(&self.path).map_err(|e| {
            PanelError::Config(format!("cannot read panel file {}: {e}", self.path.display()))
        })?;
        serde_json::from_slice(&bytes).map_err(|e| PanelError::Decode {
            action,
            source: DecodeError {
                what: "panel file",
                path: "$".into(),
                problem: format!("{} is not JSON: {e}", self.path.display()),
            },
        })
    }

    /// `doc[section][node_id]`, `None` when absent.
    fn section(&self, doc: &Value, section: &str) -> Option<Value> {
        doc.get(section)
            .and_then(|s| s.get(self.node_id.to_string()))
            .cloned()
    }

    fn fetch<T>(
        &mut self,
        action: Action,
        section: &'static str,
        decode: impl FnOnce(Option<Value>) -> Result<T, PanelError>,
    ) -> Result<Fetch<T>, PanelError> {
        let stamp = self.stamp()?;
        let seen = match action {
            Action::Config => &self.config_seen,
            _ => &self.users_seen,
        };
        if seen.stamp == Some(stamp) && seen.hash.is_some() {
            return Ok(Fetch::Unchanged);
        }
        let doc = self.read(action)?;
        let part = self.section(&doc, section);
        let hash: [u8; 32] = Sha256::digest(serde_json::to_vec(&part).unwrap_or_default()).into();
        let unchanged = seen.hash == Some(hash);
        let value = if unchanged { None } else { Some(decode(part)?) };
        let seen = match action {
            Action::Config => &mut self.config_seen,
            _ => &mut self.users_seen,
        };
        seen.stamp = Some(stamp);
        seen.hash = Some(hash);
        Ok(match value {
            None => Fetch::Unchanged,
            Some(value) => Fetch::Changed { value, etag: None },
        })
    }

    fn apply_push(&self, body: &PushBody, report_id: &str) -> Result<(), (bool, String)> {
        // (applied?, why) — `applied` is true when the failure came after the rename.
        let _guard = LEDGER_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut ledger: Map<String, Value> = match fs::read(&self.ledger) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return Err((
                        false,
                        format!(
                            "ledger {} is corrupt; refusing to overwrite it",
                            self.ledger.display()
                        ),
                    ))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => {
                return Err((
                    false,
                    format!("cannot read ledger {}: {e}", self.ledger.display()),
                ))
            }
        };
        let node_key = self.node_id.to_string();
        let applied = ledger
            .entry(APPLIED_KEY)
            .or_insert_with(|| Value::Object(Map::new()));
        if !applied.is_object() {
            *applied = Value::Object(Map::new());
        }
        let ids = match applied.as_object_mut().map(|m| {
            m.entry(node_key.clone())
                .or_insert_with(|| Value::Array(Vec::new()))
        }) {
            Some(v) => v,
            None => return Err((false, "ledger bookkeeping is inconsistent".into())),
        };
        if !ids.is_array() {
            *ids = Value::Array(Vec::new());
        }
        if let Some(list) = ids.as_array_mut() {
            if list.iter().any(|v| v.as_str() == Some(report_id)) {
                tracing::debug!(
                    report_id,
                    "file panel: report already applied; not adding it again"
                );
                return Ok(());
            }
            list.push(Value::String(report_id.to_string()));
            let excess = list.len().saturating_sub(REMEMBERED_REPORTS);
            list.drain(..excess);
        }
        let totals = ledger
            .entry(node_key)
            .or_insert_with(|| Value::Object(Map::new()));
        if !totals.is_object() {
            return Err((
                false,
                format!("ledger {}: node entry is not an object", self.ledger.display()),
            ));
        }
        if let Some(totals) = totals.as_object_mut() {
            for (uid, [up, down]) in body {
                let cur = totals.get(&uid.to_string()).and_then(|v| v.as_array()).map(|a| {
                    let n = |i: usize| a.get(i).and_then(Value::as_u64).unwrap_or(0);
                    [n(0), n(1)]
                });
                let [u0, d0] = cur.unwrap_or([0, 0]);
                totals.insert(
                    uid.to_string(),
                    Value::Array(vec![
                        Value::from(u0.saturating_add(*up)),
                        Value::from(d0.saturating_add(*down)),
                    ]),
                );
            }
        }
        write_atomically(&self.ledger, &Value::Object(ledger))
    }

    /// Totals recorded in the ledger for this node (for tests and `v2sp` status output).
    pub fn ledger_totals(&self) -> Result<BTreeMap<u32, [u64; 2]>, PanelError> {
        let bytes = match fs::read(&self.ledger) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => {
                return Err(PanelError::Config(format!(
                    "cannot read ledger {}: {e}",
                    self.ledger.display()
                )))
            }
        };
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| PanelError::Config(format!("ledger {} is corrupt: {e}", self.ledger.display())))?;
        let mut out = BTreeMap::new();
        if let Some(m) = doc.get(self.node_id.to_string()).and_then(Value::as_object) {
            for (k, v) in m {
                if let (Ok(uid), Some(a)) = (k.parse::<u32>(), v.as_array()) {
                    let n = |i: usize| a.get(i).and_then(Value::as_u64).unwrap_or(0);
                    out.insert(uid, [n(0), n(1)]);
                }
            }
        }
        Ok(out)
    }
}

/// tmp + fsync + rename + fsync(dir). Err((after_rename, why)).
fn write_atomically(path: &Path, value: &Value) -> Result<(), (bool, String)> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| (false, format!("cannot encode ledger: {e}")))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err((false, format!("cannot write {}: {e}", tmp.display())));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err((false, format!("cannot rename {} into place: {e}", tmp.display())));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| (true, format!("ledger written but directory fsync failed: {e}")))
}

impl Panel for FilePanel {
    fn config(&mut self) -> Result<Fetch<NodeInfo>, PanelError> {
        let node_id = self.node_id;
        let path = self.path.display().to_string();
        self.fetch(Action::Config, "nodes", |part| match part {
            Some(v) => NodeInfo::from_value(v).map_err(|source| PanelError::Decode {
                action: Action::Config,
                source,
            }),
            None => Err(PanelError::Config(format!(
                "panel file {path} has no nodes.\"{node_id}\""
            ))),
        })
    }

    fn users(&mut self) -> Result<Fetch<UserList>, PanelError> {
        self.fetch(Action::User, "users", |part| match part {
            None => Ok(UserList::default()),
            Some(v) => UserList::from_value(&v).map_err(|source| PanelError::Decode {
                action: Action::User,
                source,
            }),
        })
    }

    fn alivelist(&mut self) -> Result<AliveList, PanelError> {
        let doc = self.read(Action::AliveList)?;
        match doc.get("alive") {
            None => Ok(AliveList::default()),
            Some(a) => {
                let wrapped = serde_json::json!({ "alive": a }).to_string();
                AliveList::decode(wrapped.as_bytes()).map_err(|source| PanelError::Decode {
                    action: Action::AliveList,
                    source,
                })
            }
        }
    }

    fn push(&mut self, body: &PushBody, report_id: &str) -> PushOutcome {
        match self.apply_push(body, report_id) {
            Ok(()) => PushOutcome::Accepted,
            Err((false, detail)) => PushOutcome::NotDelivered { detail },
            Err((true, detail)) => PushOutcome::Unknown { detail },
        }
    }

    fn alive(&mut self, body: &AliveBody) -> Result<(), PanelError> {
        tracing::debug!(
            users = body.len(),
            "file panel: alive report accepted (not stored)"
        );
        Ok(())
    }

    fn forget_cache(&mut self) {
        self.config_seen = Seen::default();
        self.users_seen = Seen::default();
    }
}
