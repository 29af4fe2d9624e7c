//! Talking to the panel: the HTTP client for both API dialects ([`PanelClient`]) and the
//! standalone `file://` panel ([`FilePanel`]), behind one trait ([`Panel`]).
//!
//! The sync loops (pull/push scheduling, journal, exactly-once accounting) live elsewhere and
//! only use this API:
//!
//! * [`Panel::config`] / [`Panel::users`] return [`Fetch::Unchanged`] for a 304 *and* for a
//!   body identical (sha256) to the last one successfully decoded, so a panel without ETag
//!   support does not cause a rebuild on every pull. Caches are updated only after a
//!   successful decode; [`Panel::forget_cache`] forces the next fetch to be `Changed`.
//! * [`Panel::push`] returns a [`PushOutcome`] that says whether the batch may have reached the
//!   panel, so the caller can retry it verbatim under the same report id.
//! * Every error names whose fault it is ([`PanelError::fault`]).
//!
//! Construct with [`open`], which picks the file panel for `file:///abs/path.json` and the HTTP
//! client otherwise.

mod connector;
mod file;
mod http;
mod url;
pub mod ws;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

pub use file::{FilePanel, LEDGER_SUFFIX, REMEMBERED_REPORTS};
pub use http::{PanelClient, RetryPolicy};
pub use url::{resolve_dialect, Endpoint, V2_PATH};
pub use v2sp_shared::config::ApiVersion;
pub use v2sp_shared::panel::{
    snippet, Action, AliveBody, AliveList, DecodeError, MachineNode, MachineNodes, NodeInfo, NodeStatus,
    PanelUser, PushBody, Report, UserList, REPORT_ID_HEADER,
};

/// Which request layout the panel speaks (spec §B.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Decide from `ApiHost` (see [`resolve_dialect`]): a host whose path ends in
    /// `/api/v1/server/UniProxy` is UniProxy; a bare host (`https://panel.example` or
    /// `https://panel.example/`, no query) is probed with the single endpoint first and switched
    /// to UniProxy for good if that answers 404 and UniProxy answers anything else; every other
    /// `ApiHost` is the single endpoint.
    #[default]
    Auto,
    /// v2sp's `ApiHost?action=X&node_id=…&node_type=…&token=…`.
    Single,
    /// Stock Xboard/v2board: `ApiHost/api/v1/server/UniProxy/X?node_id=…&node_type=…&token=…`.
    UniProxy,
}

/// Where and how to reach the panel for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeApi {
    /// `https://panel.example/api`, or `file:///abs/path.json` for the standalone panel.
    pub api_host: String,
    pub api_key: String,
    pub node_id: u32,
    /// Sent as `node_type`; omitted when `None` or empty (the panel then names the type in
    /// the config body).
    pub node_type: Option<String>,
    /// Per attempt (connect + send + receive).
    pub timeout: Duration,
    /// Local source address for panel connections (`ApiSendIP`).
    pub send_ip: Option<IpAddr>,
    pub dialect: Dialect,
    /// Xboard node API version: `Auto` probes `POST /api/v2/server/handshake` once.
    pub version: ApiVersion,
    /// Machine mode: `machine_id` sent with the machine's token (spec §3.3).
    pub machine_id: Option<u32>,
    /// `ApiCAFile`: the only CAs trusted for an https/wss panel; `None` = web PKI roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl NodeApi {
    /// Defaults of the local config file: 30 s timeout, auto dialect, no node type.
    pub fn new(api_host: impl Into<String>, api_key: impl Into<String>, node_id: u32) -> NodeApi {
        NodeApi {
            api_host: api_host.into(),
            api_key: api_key.into(),
            node_id,
            node_type: None,
            timeout: Duration::from_secs(30),
            send_ip: None,
            dialect: Dialect::Auto,
            version: ApiVersion::Auto,
            machine_id: None,
            ca_file: None,
        }
    }
}

/// CA certificates a panel is trusted by.
pub type PanelRoots = std::sync::Arc<Vec<rustls::pki_types::CertificateDer<'static>>>;

/// Reads `ApiCAFile`: every certificate in it, at least one. At most 1 MiB is read, so a wrong
/// path (a device, a huge file) is a clear error rather than a stall.
pub fn load_panel_roots(path: &std::path::Path) -> Result<PanelRoots, PanelError> {
    use rustls::pki_types::pem::PemObject as _;
    use std::io::Read as _;
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut pem))
        .map_err(|e| PanelError::Config(format!("ApiCAFile {}: {e}", path.display())))?;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| PanelError::Config(format!("ApiCAFile {}: {e:?}", path.display())))?;
    if certs.is_empty() {
        return Err(PanelError::Config(format!(
            "ApiCAFile {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(std::sync::Arc::new(certs))
}

/// Result of a conditional fetch.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetch<T> {
    /// 304, or the same body as the last successful fetch.
    Unchanged,
    Changed {
        value: T,
        etag: Option<String>,
    },
}

impl<T> Fetch<T> {
    pub fn changed(self) -> Option<T> {
        match self {
            Fetch::Unchanged => None,
            Fetch::Changed { value, .. } => Some(value),
        }
    }
}

/// What happened to a traffic report. The caller keeps the batch (and its report id) until
/// `Accepted`; only `NotDelivered` lets it merge the batch into newer traffic.
///
/// The acknowledgement rule (README, "API"): a report is acknowledged **only** by a 2xx answer
/// whose body parses as JSON — the panel's own answer. A CDN's or captive proxy's HTML page
/// with status 200 never reached the panel; a 500/502/reset may come after the panel recorded
/// the report. Either way the outcome is unknown and the batch is resent verbatim under the
/// same report id, which a panel that de-duplicates by `X-V2sp-Report-Id` counts once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The panel answered 2xx with a JSON body.
    Accepted,
    /// The panel itself refused it: a 4xx with a JSON body. Kept and resent verbatim (a panel
    /// that refuses a batch today may take it after an operator fixes it); never dropped.
    Refused { code: u16, message: String },
    /// The request certainly never reached the panel (bad URL, DNS failure, connection
    /// refused/unreachable, connect timeout): the batch may be merged into the next one.
    NotDelivered { detail: String },
    /// Request bytes were (possibly) sent and no acknowledgement came back: timeout, reset,
    /// 5xx, 3xx, a 2xx that is not JSON (HTML, empty, garbage), a 4xx that is not the panel's
    /// JSON. The panel may have applied it. Retry with the *same* report id.
    Unknown { detail: String },
}

impl PushOutcome {
    /// Classifies a panel's answer to a report by the acknowledgement rule.
    pub fn from_answer(status: u16, body: &[u8]) -> PushOutcome {
        let json = serde_json::from_slice::<serde_json::Value>(body).ok();
        let text = || snippet(String::from_utf8_lossy(body).trim(), 200);
        match (status, json) {
            (200..=299, Some(_)) => PushOutcome::Accepted,
            (200..=299, None) if body.iter().all(u8::is_ascii_whitespace) => PushOutcome::Unknown {
                detail: format!("HTTP {status} with an empty body is not the panel's acknowledgement"),
            },
            (200..=299, None) => PushOutcome::Unknown {
                detail: format!(
                    "HTTP {status} whose body is not JSON (a proxy or CDN page, not the panel's acknowledgement): {}",
                    text()
                ),
            },
            (400..=499, Some(v)) => PushOutcome::Refused {
                code: status,
                message: v
                    .get("message")
                    .and_then(|m| m.as_str().map(str::to_string))
                    .unwrap_or_else(text),
            },
            (_, _) => PushOutcome::Unknown {
                detail: format!("HTTP {status}: {}", text()),
            },
        }
    }
}

/// Whose fault an error is, for logs and operator messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The panel answered, but with an error or something unusable.
    Panel,
    /// The network between us and the panel (or the panel host being down).
    Transport,
    /// The local configuration (`ApiHost`, `ApiSendIP`, file panel path).
    Config,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PanelError {
    /// The panel answered ≥ 400 (or an unexpected 304).
    #[error("panel answered {action} with HTTP {code}: {message}")]
    Status {
        action: Action,
        code: u16,
        message: String,
    },
    /// The panel answered with a body this agent cannot use (HTML, garbage, wrong shapes).
    #[error("panel answered {action} with an unusable body: {source}")]
    Decode {
        action: Action,
        #[source]
        source: DecodeError,
    },
    /// A report (alive) got no acknowledgement: 5xx, a 2xx that is not JSON, a 3xx.
    #[error("panel did not acknowledge {action}: {detail}")]
    Unacknowledged { action: Action, detail: String },
    /// No answer: connect/DNS/timeout/reset, after all retries.
    #[error("no answer from panel for {action} after {attempts} attempt(s): {detail}")]
    Transport {
        action: Action,
        attempts: u32,
        detail: String,
    },
    /// The local configuration is unusable (bad `ApiHost`, unreadable panel file, …).
    #[error("panel configuration error: {0}")]
    Config(String),
}

impl PanelError {
    pub fn fault(&self) -> Fault {
        match self {
            PanelError::Status { .. } | PanelError::Decode { .. } | PanelError::Unacknowledged { .. } => {
                Fault::Panel
            }
            PanelError::Transport { .. } => Fault::Transport,
            PanelError::Config(_) => Fault::Config,
        }
    }

    /// HTTP status when the panel answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            PanelError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One node's view of a panel.
pub trait Panel: Send {
    /// `action=config`.
    fn config(&mut self) -> Result<Fetch<NodeInfo>, PanelError>;
    /// `action=user`.
    fn users(&mut self) -> Result<Fetch<UserList>, PanelError>;
    /// `action=alivelist`. Callers that want spec behaviour use [`Panel::alivelist_fail_open`].
    fn alivelist(&mut self) -> Result<AliveList, PanelError>;
    /// `action=push` with header `X-V2sp-Report-Id: <report_id>`.
    fn push(&mut self, body: &PushBody, report_id: &str) -> PushOutcome;
    /// `action=alive`.
    fn alive(&mut self, body: &AliveBody) -> Result<(), PanelError>;
    /// Drop stored ETags and body hashes, so the next `config`/`users` is `Changed`.
    fn forget_cache(&mut self);

    /// The machine's load: v1 `POST status` (UniProxy dialect only; v2sp's single endpoint
    /// has none), or a v2 `report` with `status`, `metrics` and `online` (open connections per
    /// user, which v1 has no place for). Panels without it: `Ok`.
    fn status(
        &mut self,
        _status: &NodeStatus,
        _metrics: &serde_json::Map<String, serde_json::Value>,
        _online: &BTreeMap<u32, u32>,
    ) -> Result<(), PanelError> {
        Ok(())
    }

    /// Where to open the WebSocket channel, when the panel (v2) offers one.
    fn websocket(&self) -> Option<ws::WsTarget> {
        None
    }

    /// Ask the panel again whether it offers the WebSocket channel (v2 `handshake`).
    fn refresh_handshake(&mut self) {}

    /// `alivelist`, with every error logged and mapped to an empty map: device limiting fails
    /// open while the panel cannot tell us who is online (spec §B.6).
    fn alivelist_fail_open(&mut self) -> BTreeMap<u32, u32> {
        match self.alivelist() {
            Ok(a) => a.counts,
            Err(e) => {
                tracing::warn!(error = %e, fault = ?e.fault(), "alivelist unavailable; device limits fail open until the next pull");
                BTreeMap::new()
            }
        }
    }
}

/// The panel for `api`: [`FilePanel`] for `file://` hosts, [`PanelClient`] otherwise.
pub fn open(api: NodeApi) -> Result<Box<dyn Panel>, PanelError> {
    if api.api_host.trim_start().starts_with("file://") {
        Ok(Box::new(FilePanel::new(&api)?))
    } else {
        Ok(Box::new(PanelClient::new(api)?))
    }
}
