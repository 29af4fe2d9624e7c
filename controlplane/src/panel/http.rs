//! Blocking HTTP panel client (spec §B.2–B.8) on ureq.
//!
//! * Headers: `User-Agent: v2sp/<version>`; `If-None-Match: <last ETag verbatim>` on config and
//!   user (omitted while none is stored); `Content-Type: application/json` on POSTs;
//!   `X-V2sp-Report-Id` on push.
//! * Pulls: status < 400 is success; ≥ 400 is [`PanelError::Status`] with the panel's
//!   `{"message": …}` or the first 200 characters of the body. Reports (push, alive) are
//!   acknowledged only by a 2xx JSON answer ([`PushOutcome::from_answer`]).
//! * Retries: only when no answer arrived (transport errors), at most [`RetryPolicy::retries`]
//!   more attempts with jittered exponential backoff (100 ms doubling, capped at 2 s). A push
//!   is retried only while its request certainly never left this host; once it may have
//!   reached the panel the caller gets [`PushOutcome::Unknown`] and retries it itself under the
//!   same report id (a stock panel would count an automatic retry twice).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sha2::{Digest, Sha256};
use ureq::Agent;
use v2sp_shared::panel::{
    encode_alive, encode_push, snippet, Action, AliveBody, AliveList, Handshake, MachineNodes, NodeInfo,
    NodeStatus, PushBody, Report, UserList, REPORT_ID_HEADER,
};

use super::connector::{BindTcpConnector, CountingConnector};
use super::url::{resolve_dialect, Endpoint};
use super::{ApiVersion, Dialect, Fetch, NodeApi, Panel, PanelError, PushOutcome};
use ureq::unversioned::transport::{Connector as _, RustlsConnector};

/// Largest reply body read (a user list of ~500k users).
const MAX_BODY: u64 = 64 << 20;

/// How transport failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub retries: u32,
    /// Delay before the first retry; doubles each time, jittered to 50–100 %.
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, retry: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << retry.min(16)).min(self.cap);
        let nanos = exp.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos.max(1)))
    }
}

/// Stored validators of one conditional action.
#[derive(Debug, Default, Clone)]
struct Validators {
    etag: Option<String>,
    hash: Option<[u8; 32]>,
}

/// A panel answer: status, ETag, body.
type Answer = (u16, Option<String>, Vec<u8>);

/// One attempt's result.
enum Attempt {
    Answer {
        status: u16,
        etag: Option<String>,
        body: Vec<u8>,
    },
    /// No (complete) answer. `sent`: request bytes may have reached the panel.
    NoAnswer { sent: bool, detail: String },
    /// The request could not even be formed (local configuration).
    Local(String),
}

/// HTTP panel client for one node. Not shared between threads: one per node loop.
pub struct PanelClient {
    api: NodeApi,
    endpoint: Endpoint,
    /// `Auto` until a probe settled it (only for bare hosts, see [`Dialect::Auto`]).
    dialect: Dialect,
    agent: Agent,
    sent: Arc<AtomicU64>,
    retry: RetryPolicy,
    config_cache: Validators,
    users_cache: Validators,
    /// `Auto` until a handshake settled it; then `V1` or `V2` for good.
    version: ApiVersion,
    /// The WebSocket URL of the last v2 handshake that offered one.
    ws_url: Option<String>,
    /// A handshake got an answer (with `ApiVersion: v2` it is still asked once for the URL).
    handshaken: bool,
    /// `ApiCAFile`'s certificates (also for the WebSocket channel); `None` = web PKI.
    roots: Option<super::PanelRoots>,
}

impl std::fmt::Debug for PanelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanelClient")
            .field("api_host", &self.endpoint.api_host())
            .field("node_id", &self.api.node_id)
            .field("dialect", &self.dialect)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl PanelClient {
    pub fn new(api: NodeApi) -> Result<PanelClient, PanelError> {
        let endpoint = Endpoint::new(&api)?;
        if let Some(ip) = api.send_ip {
            // Fail at start, as a configuration error, rather than on every request.
            std::net::TcpListener::bind((ip, 0))
                .map_err(|e| PanelError::Config(format!("ApiSendIP {ip} is not usable on this host: {e}")))?;
        }
        let dialect = resolve_dialect(&api.api_host, api.dialect);
        let timeout = if api.timeout.is_zero() {
            Duration::from_secs(5)
        } else {
            api.timeout
        };
        let roots = api.ca_file.as_deref().map(super::load_panel_roots).transpose()?;
        let root_certs = match &roots {
            Some(r) => ureq::tls::RootCerts::new_with_certs(
                &r.iter()
                    .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                    .collect::<Vec<_>>(),
            ),
            None => ureq::tls::RootCerts::WebPki,
        };
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(concat!("v2sp/", env!("CARGO_PKG_VERSION")))
            .timeout_global(Some(timeout))
            .max_redirects(3)
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .provider(ureq::tls::TlsProvider::Rustls)
                    .root_certs(root_certs)
                    .unversioned_rustls_crypto_provider(Arc::new(
                        rustls::crypto::aws_lc_rs::default_provider(),
                    ))
                    .build(),
            )
            .build();
        let sent = Arc::new(AtomicU64::new(0));
        let connector = CountingConnector {
            inner: BindTcpConnector { bind: api.send_ip }.chain(RustlsConnector::default()),
            sent: sent.clone(),
        };
        let agent = Agent::with_parts(
            config,
            connector,
            ureq::unversioned::resolver::DefaultResolver::default(),
        );
        // v2sp's single endpoint (an ApiHost with its own path or query) has no v2 API under
        // it: `auto` probes only Xboard-style hosts (bare, or ending in the UniProxy path).
        let version = match (api.version, dialect) {
            (ApiVersion::Auto, Dialect::Single) => ApiVersion::V1,
            (v, _) => v,
        };
        Ok(PanelClient {
            version,
            api,
            endpoint,
            dialect,
            agent,
            sent,
            retry: RetryPolicy::default(),
            config_cache: Validators::default(),
            users_cache: Validators::default(),
            ws_url: None,
            handshaken: false,
            roots,
        })
    }

    /// The API version in use: `Auto` while no handshake has been answered yet.
    pub fn version(&self) -> ApiVersion {
        self.version
    }

    /// The WebSocket URL the last handshake offered (v2 only).
    pub fn ws_url(&self) -> Option<&str> {
        self.ws_url.as_deref()
    }

    /// `POST handshake` (v2): the panel's JSON object answer settles `ApiVersion: auto` on v2
    /// and gives the WebSocket URL; any other answer (404, HTML) settles it on v1. No answer
    /// leaves it open (the error is returned).
    pub fn handshake(&mut self) -> Result<Option<String>, PanelError> {
        let action = Action::Handshake;
        let url = self.endpoint.v2_url(action);
        let answer = self.attempt_url(&url, action, None, Some((b"{}", None)));
        match answer {
            Attempt::Answer { status, body, .. } => {
                self.handshaken = true;
                let hs = if (200..300).contains(&status) {
                    Handshake::decode(&body).ok()
                } else {
                    None
                };
                match hs {
                    Some(hs) => {
                        if self.version != ApiVersion::V2 {
                            tracing::info!(node_id = self.api.node_id, websocket = ?hs.ws_url, "panel speaks Xboard's v2 node API; using it");
                        }
                        self.version = ApiVersion::V2;
                        self.ws_url = hs.ws_url.clone();
                        Ok(hs.ws_url)
                    }
                    None if self.version == ApiVersion::V2 => Err(status_error(action, status, &body)),
                    None => {
                        if self.version == ApiVersion::Auto {
                            tracing::info!(
                                node_id = self.api.node_id,
                                status,
                                "no v2 handshake on this panel; using the v1 API"
                            );
                        }
                        self.version = ApiVersion::V1;
                        Ok(None)
                    }
                }
            }
            Attempt::Local(m) => Err(PanelError::Config(m)),
            Attempt::NoAnswer { detail, .. } => Err(PanelError::Transport {
                action,
                attempts: 1,
                detail,
            }),
        }
    }

    /// Settle `ApiVersion: auto` before the first request.
    fn settle_version(&mut self, action: Action) -> Result<(), PanelError> {
        if self.version == ApiVersion::Auto {
            self.handshake().map_err(|e| match e {
                PanelError::Transport { detail, attempts, .. } => PanelError::Transport {
                    action,
                    attempts,
                    detail: format!("API version unknown (handshake got no answer): {detail}"),
                },
                other => other,
            })?;
        } else if self.version == ApiVersion::V2 && !self.handshaken {
            // Forced v2: the handshake only gives the WebSocket URL; REST works without it.
            if let Err(e) = self.handshake() {
                tracing::warn!(error = %e, "v2 handshake failed; REST only until it answers");
            }
        }
        Ok(())
    }

    /// `POST machine/nodes` (machine mode): the nodes this machine serves.
    pub fn machine_nodes(&mut self) -> Result<MachineNodes, PanelError> {
        let action = Action::MachineNodes;
        let body = self.auth_body();
        let (status, _, reply) = self
            .exchange(action, None, Some((&body, None)), true)
            .map_err(|(e, _)| e)?;
        if !(200..300).contains(&status) {
            return Err(status_error(action, status, &reply));
        }
        MachineNodes::decode(&reply).map_err(|source| PanelError::Decode { action, source })
    }

    /// `POST machine/status`: the machine's load (`cpu`, `mem`, `swap`, `disk`) with the
    /// machine's auth in the body too.
    pub fn machine_status(&mut self, status: &NodeStatus) -> Result<(), PanelError> {
        let action = Action::MachineStatus;
        let mut body = serde_json::to_value(status).unwrap_or_default();
        if let (serde_json::Value::Object(m), Ok(serde_json::Value::Object(auth))) = (
            &mut body,
            serde_json::from_slice::<serde_json::Value>(&self.auth_body()),
        ) {
            m.extend(auth);
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        self.post_acknowledged(action, &bytes)
    }

    /// A report without a journal (alive, status): one POST (transport retries allowed), then
    /// the acknowledgement rule — only the panel's own JSON 2xx is success.
    fn post_acknowledged(&mut self, action: Action, bytes: &[u8]) -> Result<(), PanelError> {
        let (code, _, reply) = self
            .exchange(action, None, Some((bytes, None)), true)
            .map_err(|(e, _)| e)?;
        match PushOutcome::from_answer(code, &reply) {
            PushOutcome::Accepted => Ok(()),
            PushOutcome::Refused { code, message } => Err(PanelError::Status {
                action,
                code,
                message,
            }),
            PushOutcome::Unknown { detail } | PushOutcome::NotDelivered { detail } => {
                Err(PanelError::Unacknowledged { action, detail })
            }
        }
    }

    /// `{"machine_id":M,"token":T}` (or node id and token) for POSTs whose auth goes in the body.
    fn auth_body(&self) -> Vec<u8> {
        let mut o = serde_json::Map::new();
        if let Some(m) = self.api.machine_id {
            o.insert("machine_id".into(), m.into());
        } else {
            o.insert("node_id".into(), self.api.node_id.into());
        }
        o.insert("token".into(), self.api.api_key.clone().into());
        serde_json::to_vec(&o).unwrap_or_default()
    }

    /// One v2 `report`; `report_id` for traffic batches. Acknowledged as a push is.
    pub fn report(&mut self, report: &Report, report_id: Option<&str>) -> PushOutcome {
        self.post_batch(Action::Report, &report.encode(), report_id)
    }

    /// A journalled batch (v1 push, v2 report): one POST, never retried here once it may have
    /// reached the panel (the caller resends it under the same report id), classified by the
    /// acknowledgement rule.
    fn post_batch(&mut self, action: Action, bytes: &[u8], report_id: Option<&str>) -> PushOutcome {
        match self.exchange(action, None, Some((bytes, report_id)), false) {
            Ok((status, _, reply)) => PushOutcome::from_answer(status, &reply),
            Err((e, false)) => PushOutcome::NotDelivered {
                detail: e.to_string(),
            },
            Err((e, true)) => PushOutcome::Unknown {
                detail: e.to_string(),
            },
        }
    }

    /// Replace the retry policy (tests use short delays).
    pub fn with_retry(mut self, retry: RetryPolicy) -> PanelClient {
        self.retry = retry;
        self
    }

    /// The dialect in use: `Auto` while a bare `ApiHost` has not been probed yet.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn node_api(&self) -> &NodeApi {
        &self.api
    }

    /// One HTTP exchange, no retries.
    fn attempt(
        &self,
        dialect: Dialect,
        action: Action,
        etag: Option<&str>,
        body: Option<(&[u8], Option<&str>)>,
    ) -> Attempt {
        let url = if self.version == ApiVersion::V2 || action_is_v2_only(action) {
            self.endpoint.v2_url(action)
        } else {
            self.endpoint.url(dialect, action)
        };
        self.attempt_url(&url, action, etag, body)
    }

    /// One HTTP exchange with `url`, no retries.
    fn attempt_url(
        &self,
        url: &str,
        action: Action,
        etag: Option<&str>,
        body: Option<(&[u8], Option<&str>)>,
    ) -> Attempt {
        let url = url.to_string();
        let before = self.sent.load(Ordering::Relaxed);
        let result = match body {
            None => {
                let mut req = self.agent.get(&url);
                if let Some(tag) = etag {
                    req = req.header("If-None-Match", tag);
                }
                req.call()
            }
            Some((bytes, report_id)) => {
                let mut req = self.agent.post(&url).header("Content-Type", "application/json");
                if let Some(id) = report_id {
                    req = req.header(REPORT_ID_HEADER, id);
                }
                req.send(bytes)
            }
        };
        let sent = self.sent.load(Ordering::Relaxed) != before;
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => return classify(e, sent),
        };
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .filter(|t| !t.is_empty());
        match resp.body_mut().with_config().limit(MAX_BODY).read_to_vec() {
            Ok(body) => Attempt::Answer { status, etag, body },
            // A POST's answer that could not be read whole is no acknowledgement: the empty
            // body makes it "unknown" (resent under the same report id).
            Err(_) if action.is_post() => Attempt::Answer {
                status,
                etag,
                body: Vec::new(),
            },
            Err(e) => Attempt::NoAnswer {
                sent: true,
                detail: format!("HTTP {status} but the body could not be read: {e}"),
            },
        }
    }

    /// An exchange in the right dialect, with the auto-detect probe and transport retries.
    /// `retry_sent`: whether an attempt whose request may have been delivered is retried.
    fn exchange(
        &mut self,
        action: Action,
        etag: Option<&str>,
        body: Option<(&[u8], Option<&str>)>,
        retry_sent: bool,
    ) -> Result<Answer, (PanelError, bool)> {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let dialect = self.dialect;
            let mut result = self.attempt(dialect, action, etag, body);
            if dialect == Dialect::Auto && self.version != ApiVersion::V2 && !action_is_v2_only(action) {
                if let Attempt::Answer { status: 404, .. } = result {
                    // Bare host and no single endpoint there: is it a stock panel?
                    let uni = self.attempt(Dialect::UniProxy, action, etag, body);
                    match uni {
                        Attempt::Answer { status, .. } if status != 404 => {
                            tracing::info!(
                                api_host = self.endpoint.api_host(),
                                "panel speaks the UniProxy dialect; using it from now on"
                            );
                            self.dialect = Dialect::UniProxy;
                            result = uni;
                        }
                        // The UniProxy request may have been applied: that outcome, not the
                        // single endpoint's 404, is what the caller must see.
                        Attempt::NoAnswer { sent: true, .. } => result = uni,
                        _ => {}
                    }
                } else if let Attempt::Answer { .. } = result {
                    self.dialect = Dialect::Single;
                }
            }
            match result {
                Attempt::Answer { status, etag, body } => return Ok((status, etag, body)),
                Attempt::Local(msg) => return Err((PanelError::Config(msg), false)),
                Attempt::NoAnswer { sent, detail } => {
                    if attempts > self.retry.retries || (sent && !retry_sent) {
                        return Err((
                            PanelError::Transport {
                                action,
                                attempts,
                                detail,
                            },
                            sent,
                        ));
                    }
                    let delay = self.retry.delay(attempts - 1);
                    tracing::debug!(%action, attempts, ?delay, %detail, "panel request failed; retrying");
                    std::thread::sleep(delay);
                }
            }
        }
    }

    fn fetch<T>(
        &mut self,
        action: Action,
        decode: impl FnOnce(&[u8]) -> Result<T, v2sp_shared::panel::DecodeError>,
    ) -> Result<Fetch<T>, PanelError> {
        self.settle_version(action)?;
        let cached = match action {
            Action::Config => self.config_cache.clone(),
            _ => self.users_cache.clone(),
        };
        let (status, etag, body) = self
            .exchange(action, cached.etag.as_deref(), None, true)
            .map_err(|(e, _)| e)?;
        if status == 304 {
            if cached.hash.is_none() {
                return Err(PanelError::Status {
                    action,
                    code: 304,
                    message: "304 Not Modified although nothing was fetched before".into(),
                });
            }
            return Ok(Fetch::Unchanged);
        }
        if status >= 400 {
            return Err(status_error(action, status, &body));
        }
        let hash: [u8; 32] = Sha256::digest(&body).into();
        let slot = match action {
            Action::Config => &mut self.config_cache,
            _ => &mut self.users_cache,
        };
        if slot.hash == Some(hash) {
            // Same bytes as the last good answer: a panel without ETag/304 support.
            slot.etag = etag;
            return Ok(Fetch::Unchanged);
        }
        let value = decode(&body).map_err(|source| PanelError::Decode { action, source })?;
        slot.hash = Some(hash);
        slot.etag = etag.clone();
        Ok(Fetch::Changed { value, etag })
    }
}

/// Actions that exist only under `/api/v2/server/`.
fn action_is_v2_only(action: Action) -> bool {
    matches!(
        action,
        Action::Report | Action::Handshake | Action::MachineNodes | Action::MachineStatus
    )
}

fn classify(e: ureq::Error, sent: bool) -> Attempt {
    use ureq::Error as E;
    match e {
        E::BadUri(m) => Attempt::Local(format!("ApiHost gives an invalid URL: {m}")),
        E::Http(m) => Attempt::Local(format!("cannot form the request: {m}")),
        E::InvalidProxyUrl => Attempt::Local("invalid proxy URL".into()),
        E::Tls(m) if !sent => Attempt::NoAnswer {
            sent,
            detail: format!("TLS: {m} (is this build compiled with TLS support?)"),
        },
        other => Attempt::NoAnswer {
            sent,
            detail: other.to_string(),
        },
    }
}

/// `{"message": …}` when the panel sent one, else the start of the body.
fn status_error(action: Action, code: u16, body: &[u8]) -> PanelError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str().map(str::to_string)))
        .unwrap_or_else(|| snippet(String::from_utf8_lossy(body).trim(), 200));
    PanelError::Status {
        action,
        code,
        message,
    }
}

impl Panel for PanelClient {
    fn config(&mut self) -> Result<Fetch<NodeInfo>, PanelError> {
        self.fetch(Action::Config, NodeInfo::decode)
    }

    fn users(&mut self) -> Result<Fetch<UserList>, PanelError> {
        self.fetch(Action::User, UserList::decode)
    }

    fn alivelist(&mut self) -> Result<AliveList, PanelError> {
        let action = Action::AliveList;
        self.settle_version(action)?;
        let (status, _, body) = self.exchange(action, None, None, true).map_err(|(e, _)| e)?;
        if status >= 400 {
            return Err(status_error(action, status, &body));
        }
        AliveList::decode(&body).map_err(|source| PanelError::Decode { action, source })
    }

    fn push(&mut self, body: &PushBody, report_id: &str) -> PushOutcome {
        if let Err(e) = self.settle_version(Action::Push) {
            // Nothing was sent: the batch may be merged into the next one.
            return PushOutcome::NotDelivered {
                detail: e.to_string(),
            };
        }
        if self.version == ApiVersion::V2 {
            // The sealed batch alone, so a resend under the same id is the same body.
            let report = Report {
                traffic: body.clone(),
                ..Report::default()
            };
            return self.report(&report, Some(report_id));
        }
        self.post_batch(Action::Push, &encode_push(body), Some(report_id))
    }

    fn alive(&mut self, body: &AliveBody) -> Result<(), PanelError> {
        self.settle_version(Action::Alive)?;
        if self.version == ApiVersion::V2 {
            let report = Report {
                alive: body.clone(),
                ..Report::default()
            };
            self.post_acknowledged(Action::Report, &report.encode())
        } else {
            self.post_acknowledged(Action::Alive, &encode_alive(body))
        }
    }

    fn forget_cache(&mut self) {
        self.config_cache = Validators::default();
        self.users_cache = Validators::default();
    }

    fn status(
        &mut self,
        status: &NodeStatus,
        metrics: &serde_json::Map<String, serde_json::Value>,
        online: &std::collections::BTreeMap<u32, u32>,
    ) -> Result<(), PanelError> {
        self.settle_version(Action::Status)?;
        let (action, bytes) = if self.version == ApiVersion::V2 {
            let report = Report {
                status: Some(status.clone()),
                metrics: Some(metrics.clone()),
                online: online.clone(),
                ..Report::default()
            };
            (Action::Report, report.encode())
        } else if self.dialect == Dialect::UniProxy {
            (Action::Status, serde_json::to_vec(status).unwrap_or_default())
        } else {
            // v2sp's single endpoint has no status action.
            return Ok(());
        };
        self.post_acknowledged(action, &bytes)
    }

    fn websocket(&self) -> Option<super::ws::WsTarget> {
        if self.version != ApiVersion::V2 {
            return None;
        }
        let url = self.ws_url.clone()?;
        Some(super::ws::WsTarget {
            url,
            token: self.api.api_key.clone(),
            node_id: self.api.node_id,
            machine_id: self.api.machine_id,
            send_ip: self.api.send_ip,
            timeout: self.api.timeout,
            roots: self.roots.clone(),
        })
    }

    fn refresh_handshake(&mut self) {
        if self.version != ApiVersion::V1 {
            if let Err(e) = self.handshake() {
                tracing::debug!(error = %e, "handshake failed; keeping the last WebSocket URL");
            }
        }
    }
}
