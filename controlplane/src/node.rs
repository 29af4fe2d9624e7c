//! One node's sync worker: its own thread, its own panel client, its own schedule. A node
//! whose panel is down or returns garbage only affects itself; nothing here ever exits the
//! process.
//!
//! Pull (every `pull_interval`): config → users → alivelist. Push (every `push_interval`):
//! traffic batch (journalled, exactly-once) → alive IPs. Both first run right after start (so
//! a freshly started node serves at once), then on their interval with ±10 % jitter; a failed
//! pull is retried with backoff (2 s doubling up to the interval). A node that could not be
//! built (e.g. no ACME certificate yet) is rebuilt on each retry even when the panel's config
//! is unchanged. ACME certificates (`CertMode: http`, `dns`, `tls`) are checked every 12 h and
//! renewed when 30 days or less are left (the data plane reloads the files by mtime); a
//! `tls` node (TLS-ALPN-01, answered on its own port) orders right after it first listens.
//!
//! Xboard v2 (spec `xboard-node-api.md` §4): when the handshake offers a WebSocket channel,
//! its events are applied at once (the loop waits in 100 ms slices while a channel exists):
//! `sync.users`/`sync.user.delta` republish the user table through the same path as a REST
//! pull (the data plane closes the connections of users missing from a new table),
//! `sync.config` rebuilds the node, `sync.devices` updates the device counts. After every
//! (re)connect the device snapshot is sent at once and a REST pull follows; REST polling goes
//! on while connected (time-based expiry is never pushed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use v2sp_shared::config::NodeEntry;
use v2sp_shared::cred::CredKind;
use v2sp_shared::panel::{NodeInfo, PanelUser, DEFAULT_INTERVAL_SECS};
use v2sp_shared::shm::UserEntry;

use crate::agent::{Phase, Shared};
use crate::build;
use crate::hoststat::HostStat;
use crate::panel::ws::{WsChannel, WsEvent, WsOut};
use crate::panel::{Fetch, Panel};

/// Where a node's WebSocket events come from.
pub enum WsLink {
    /// The node's own channel (server-token mode).
    Own(WsChannel),
    /// A machine's channel, routed by node id (machine mode).
    Routed {
        events: std::sync::mpsc::Receiver<WsEvent>,
        out: WsOut,
    },
}

impl WsLink {
    fn try_recv(&self) -> Option<WsEvent> {
        match self {
            WsLink::Own(c) => c.events.try_recv().ok(),
            WsLink::Routed { events, .. } => events.try_recv().ok(),
        }
    }

    fn out(&self) -> &WsOut {
        match self {
            WsLink::Own(c) => &c.out,
            WsLink::Routed { out, .. } => out,
        }
    }
}

/// How often a v2 node without a WebSocket channel asks the handshake again.
const REHANDSHAKE_EVERY: Duration = Duration::from_secs(600);

/// Longest wait between looks at the WebSocket events.
const WS_POLL: Duration = Duration::from_millis(100);

pub struct NodeWorker {
    pub slot: u16,
    pub tag: String,
    entry: NodeEntry,
    panel: Box<dyn Panel>,
    shared: Arc<Shared>,
    info: Option<NodeInfo>,
    kind: Option<CredKind>,
    users: Option<Vec<UserEntry>>,
    /// The panel's user list the table was built from (WebSocket deltas apply to it).
    panel_users: Option<Vec<PanelUser>>,
    ws: Option<WsLink>,
    ws_connected: bool,
    /// This node's counted bytes [up, down] at the previous metrics report, and when: the
    /// speeds in `report.metrics` are the difference.
    last_counted: Option<(Instant, [u64; 2])>,
    host: HostStat,
    /// When to ask the handshake again while no channel is open.
    next_handshake: Instant,
    handshake_asked: bool,
    /// A built node config held back until every core has this node's users for its
    /// credential kind: a node listens only when it can serve (at start, after a cipher change).
    pending: Option<v2sp_shared::dpconfig::NodeConfig>,
    /// The credential kind of the user table the data plane holds for this node.
    published_kind: Option<CredKind>,
    pull_every: Duration,
    push_every: Duration,
    pull_failures: u32,
    /// Set when the node is removed or changed in the config file.
    retire: Arc<std::sync::atomic::AtomicBool>,
    /// The ACME certificate this node serves (`CertMode: http`, `dns`, `tls`).
    acme_files: Option<AcmeJob>,
    /// The local route/outbound files as the last config build read them (modification time
    /// and size): a change rebuilds the config at the next pull, as a panel change would.
    local_routing_stamp: Vec<Option<(std::time::SystemTime, u64)>>,
    next_cert_check: Instant,
}

/// What the periodic ACME check works with: the effective `CertConfig` (the panel's
/// `cert_config` applied), the files, and for TLS-ALPN-01 where the node answers.
#[derive(Clone, Debug)]
struct AcmeJob {
    cert: v2sp_shared::config::CertConfig,
    cert_file: String,
    key_file: String,
    tls_alpn: Option<crate::acme::TlsAlpnTarget>,
}

/// Where this host reaches a node listening on `ip`:`port` (the loopback of the same family
/// for an unspecified address).
fn reach(ip: &str, port: u16) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Ok(IpAddr::V6(a)) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Ok(a) => a,
        Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    std::net::SocketAddr::new(ip, port)
}

/// How often an ACME certificate's expiry is checked, and after a failed renewal.
const CERT_CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
const CERT_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl NodeWorker {
    pub fn new(
        slot: u16,
        tag: String,
        entry: NodeEntry,
        panel: Box<dyn Panel>,
        shared: Arc<Shared>,
        retire: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        NodeWorker {
            slot,
            tag,
            entry,
            panel,
            shared,
            info: None,
            kind: None,
            users: None,
            panel_users: None,
            ws: None,
            ws_connected: false,
            last_counted: None,
            host: HostStat::default(),
            next_handshake: Instant::now(),
            handshake_asked: false,
            pending: None,
            published_kind: None,
            pull_every: Duration::from_secs(DEFAULT_INTERVAL_SECS),
            push_every: Duration::from_secs(DEFAULT_INTERVAL_SECS),
            pull_failures: 0,
            retire,
            acme_files: None,
            local_routing_stamp: Vec::new(),
            next_cert_check: Instant::now() + CERT_CHECK_EVERY,
        }
    }

    /// Use a machine's WebSocket channel instead of opening one (machine mode).
    pub fn with_ws(mut self, link: WsLink) -> Self {
        self.ws = Some(link);
        self
    }

    /// Run until the agent stops; performs the final push when asked to.
    pub fn run(mut self) {
        let mut next_pull = Instant::now();
        let mut next_push = Instant::now() + Duration::from_millis(500);
        loop {
            if self.retire.load(std::sync::atomic::Ordering::Acquire) {
                // Report what this node still owes, then leave; the agent unpublishes it.
                self.push();
                return;
            }
            match self.shared.phase() {
                Phase::Running => {}
                Phase::Draining => {
                    // Wait for the final harvest, then push once.
                    self.shared.wait_final_push();
                    self.push();
                    return;
                }
                Phase::Stopped => return,
            }
            if self.ws.is_some() && self.handle_ws_events() {
                next_pull = Instant::now();
            }
            let now = Instant::now();
            if now >= next_pull {
                let push_every = self.push_every;
                let ok = self.pull();
                self.shared.metrics.pull(self.slot, ok);
                next_pull = Instant::now()
                    + if ok {
                        jitter(self.pull_every)
                    } else {
                        self.backoff()
                    };
                // The panel's intervals take effect at once: a node that started on the
                // default 60 s (panel down or answering garbage) must not wait out that timer
                // once the panel says `push_interval: 2`.
                if self.push_every != push_every {
                    next_push = next_push.min(Instant::now() + jitter(self.push_every));
                }
                if ok && self.ws.is_none() && Instant::now() >= self.next_handshake {
                    // The panel may turn its WebSocket on later (or its WS process comes
                    // back): ask again every 10 minutes.
                    if self.handshake_asked {
                        self.panel.refresh_handshake();
                    }
                    self.handshake_asked = true;
                    self.next_handshake = Instant::now() + REHANDSHAKE_EVERY;
                    if let Some(target) = self.panel.websocket() {
                        match WsChannel::start(target) {
                            Ok(c) => self.ws = Some(WsLink::Own(c)),
                            Err(e) => {
                                tracing::warn!(node = %self.tag, error = %e, "cannot start the WebSocket thread")
                            }
                        }
                    }
                }
            }
            if now >= next_push {
                self.push();
                next_push = Instant::now() + jitter(self.push_every);
            }
            if self.acme_files.is_some() && Instant::now() >= self.next_cert_check {
                self.check_certificate();
            }
            let mut next = next_pull.min(next_push);
            if self.acme_files.is_some() {
                next = next.min(self.next_cert_check);
            }
            let mut until = next.saturating_duration_since(Instant::now());
            if self.ws.is_some() {
                until = until.min(WS_POLL);
            }
            self.shared.sleep(until);
        }
    }

    fn backoff(&mut self) -> Duration {
        self.pull_failures = self.pull_failures.saturating_add(1);
        let secs = 2u64
            .saturating_pow(self.pull_failures.min(10))
            .min(self.pull_every.as_secs().max(2));
        Duration::from_secs(secs)
    }

    /// One pull round; false if it failed (retry with backoff).
    pub fn pull(&mut self) -> bool {
        match self.panel.config() {
            Ok(Fetch::Changed { value, .. }) => self.apply_config(value),
            Ok(Fetch::Unchanged) => {
                // The last build failed (an ACME order, a certificate file): try it again;
                // and the local route/outbound files changed since it: build again.
                if self.kind.is_none() || self.shared.local_routing.stamp() != self.local_routing_stamp {
                    if let Some(info) = self.info.clone() {
                        self.apply_config(info);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(node = %self.tag, error = %e, fault = ?e.fault(), "config pull failed; serving the last known config");
                return false;
            }
        }
        let Some(kind) = self.kind else { return false };
        match self.panel.users() {
            Ok(Fetch::Changed { value, .. }) => {
                if !value.skipped.is_empty() {
                    tracing::warn!(node = %self.tag, skipped = value.skipped.len(), first = ?value.skipped.first(), "panel user list had unusable entries");
                }
                self.set_users(kind, value.users, "REST");
            }
            Ok(Fetch::Unchanged) => {
                if self.users.is_none() {
                    return false;
                }
            }
            Err(e) => {
                tracing::warn!(node = %self.tag, error = %e, fault = ?e.fault(), "user pull failed; keeping the last user list");
                return false;
            }
        }
        let counts = self.panel.alivelist_fail_open();
        self.apply_alive(&counts);
        self.pull_failures = 0;
        true
    }

    /// Build and publish the user table from the panel's list (REST pull or WebSocket).
    fn set_users(&mut self, kind: CredKind, users: Vec<PanelUser>, source: &str) {
        let (entries, bad) = build::user_entries(kind, &users);
        if !bad.is_empty() {
            tracing::warn!(node = %self.tag, count = bad.len(), first = ?bad.first(), "users skipped: no credential could be derived");
        }
        if entries.is_empty() {
            // v2sp ignored empty lists, so removed users kept access forever (spec §B.5).
            tracing::warn!(node = %self.tag, source, "panel returned NO users: every user of this node is removed and their connections closed");
        }
        self.panel_users = Some(users);
        self.users = Some(entries);
        self.publish_users();
    }

    /// Apply every pending WebSocket event; true when a REST pull should follow at once.
    fn handle_ws_events(&mut self) -> bool {
        let mut pull_now = false;
        for _ in 0..1024 {
            let Some(ev) = self.ws.as_ref().and_then(WsLink::try_recv) else {
                break;
            };
            pull_now |= self.apply_ws_event(ev);
        }
        pull_now
    }

    fn apply_ws_event(&mut self, ev: WsEvent) -> bool {
        match ev {
            WsEvent::Connected => {
                self.ws_connected = true;
                // The panel wiped this node's devices on connect: send them back at once.
                self.send_devices();
                return true;
            }
            WsEvent::Disconnected(_) => self.ws_connected = false,
            WsEvent::Users { users, .. } => {
                if let Some(kind) = self.kind {
                    tracing::info!(node = %self.tag, users = users.len(), "WebSocket: user list replaced");
                    self.set_users(kind, users, "WebSocket");
                }
            }
            WsEvent::UserDelta { add, remove, .. } => {
                let (Some(kind), Some(mut users)) = (self.kind, self.panel_users.clone()) else {
                    // No table yet: the REST pull brings the whole list.
                    return true;
                };
                users.retain(|u| !remove.contains(&u.id) && !add.iter().any(|a| a.id == u.id));
                tracing::info!(node = %self.tag, added = add.len(), removed = remove.len(), "WebSocket: user delta");
                users.extend(add);
                users.sort_by_key(|u| u.id);
                self.set_users(kind, users, "WebSocket");
            }
            WsEvent::Config { config, .. } => {
                let bytes = config.to_string().into_bytes();
                match NodeInfo::decode(&bytes) {
                    Ok(mut info) => {
                        // `sync.config` has no base_config: the intervals stay the REST ones.
                        if let Some(old) = &self.info {
                            info.base_config = old.base_config;
                        }
                        if self.info.as_ref() != Some(&info) {
                            tracing::info!(node = %self.tag, "WebSocket: node config changed");
                            self.apply_config(info);
                            return self.users.is_none();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.tag, error = %e, "WebSocket sync.config unusable; ignored")
                    }
                }
            }
            WsEvent::Devices { users, .. } => {
                // The addresses themselves, so that one already online elsewhere is let in at
                // the limit (Xboard's rule; the counts alone cannot say which address they
                // are). Trusted for two report rounds: the panel answers each report.devices.
                let known: Vec<(u32, std::net::IpAddr)> = users
                    .iter()
                    .flat_map(|(uid, ips)| ips.iter().filter_map(move |ip| Some((*uid, parse_panel_ip(ip)?))))
                    .collect();
                let valid_for = (self.push_every * 2 + Duration::from_secs(15)).max(Duration::from_secs(60));
                if let Err(e) = self.shared.shm.publish_known_ips(self.slot, &known, valid_for) {
                    tracing::warn!(node = %self.tag, error = %e, "cannot publish the panel's device lists");
                }
                let counts: BTreeMap<u32, u32> = users
                    .into_iter()
                    .map(|(uid, mut ips)| {
                        ips.sort();
                        ips.dedup();
                        (uid, ips.len() as u32)
                    })
                    .collect();
                self.apply_alive(&counts);
            }
            WsEvent::Nodes(_) => {}
        }
        false
    }

    /// WebSocket `report.devices`: this node's full device snapshot.
    fn send_devices(&mut self) {
        let Some(ws) = self.ws.as_ref() else { return };
        let devices = self.shared.online().current_ips(self.slot);
        let map: serde_json::Map<String, serde_json::Value> = devices
            .into_iter()
            .map(|(uid, ips)| (uid.to_string(), ips.into()))
            .collect();
        ws.out()
            .send("report.devices", serde_json::json!({ "devices": map }));
    }

    /// `report.metrics` / WS `node.status` (Xboard §3.2): host figures, users, users online,
    /// and this node's speeds over the last report interval.
    fn metrics(&mut self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = crate::hoststat::metrics();
        let users = self.panel_users.as_ref().map_or(0, Vec::len);
        m.insert("total_users".into(), users.into());
        m.insert(
            "active_users".into(),
            self.shared.online().current_ips(self.slot).len().into(),
        );
        // Xboard's admin shows this as the node's "online connections".
        m.insert(
            "active_connections".into(),
            self.shared.shm.node_open_conns(self.slot).into(),
        );
        let counted = self
            .shared
            .metrics
            .snapshot()
            .get(&self.slot)
            .map_or([0, 0], |c| c.counted);
        let now = Instant::now();
        let (inbound, outbound) = speeds(self.last_counted, (now, counted));
        self.last_counted = Some((now, counted));
        m.insert("inbound_speed".into(), inbound.into());
        m.insert("outbound_speed".into(), outbound.into());
        m.insert(
            "ws".into(),
            serde_json::json!({"enabled": self.ws.is_some(), "connected": self.ws_connected}),
        );
        m
    }

    fn apply_config(&mut self, info: NodeInfo) {
        let bc = info.base_config;
        self.pull_every = Duration::from_secs(bc.pull_interval_secs.max(1));
        self.push_every = Duration::from_secs(bc.push_interval_secs.max(1));
        self.shared.note_push_interval(self.push_every);
        let built = build::with_panel_cert(&self.entry, &info, &self.shared.cert_dir).and_then(|entry| {
            let mut nc = build::node_config(self.slot, &self.tag, &entry, &info)?;
            if self.shared.local_routing.route_file.is_some()
                || self.shared.local_routing.outbound_file.is_some()
            {
                (nc.route_rules, nc.outbounds) =
                    crate::routing::node_routing(&self.tag, &info, &self.shared.local_routing);
            }
            Ok((nc, entry.cert.clone()))
        });
        match built {
            Ok((nc, cert)) => {
                use v2sp_shared::config::CertMode;
                let acme = matches!(cert.cert_mode, CertMode::Http | CertMode::Dns | CertMode::Tls);
                self.acme_files = nc
                    .tls
                    .as_ref()
                    .filter(|t| acme && t.reality.is_none())
                    .map(|t| AcmeJob {
                        tls_alpn: (cert.cert_mode == CertMode::Tls).then(|| crate::acme::TlsAlpnTarget {
                            challenge_file: t.acme_tls_alpn_file.clone().into(),
                            connect: reach(&nc.listen_ip, nc.port),
                        }),
                        cert: cert.clone(),
                        cert_file: t.cert_file.clone(),
                        key_file: t.key_file.clone(),
                    });
                // The build has just checked the certificate; if it is still due (the order
                // failed and an older one is served), try again sooner. TLS-ALPN-01 orders
                // only once the node listens: right after this pull has published it.
                let due = self
                    .acme_files
                    .as_ref()
                    .is_some_and(|j| crate::acme::renewal_due(j.cert_file.as_ref(), j.key_file.as_ref()));
                let tls_alpn = self.acme_files.as_ref().is_some_and(|j| j.tls_alpn.is_some());
                self.next_cert_check = Instant::now()
                    + match (due, tls_alpn) {
                        (true, true) => Duration::ZERO,
                        (true, false) => CERT_RETRY_AFTER,
                        (false, _) => CERT_CHECK_EVERY,
                    };
                let kind_changed = self.kind != Some(nc.cred_kind);
                self.kind = Some(nc.cred_kind);
                tracing::info!(node = %self.tag, port = nc.port, protocol = nc.protocol.as_str(), "node config applied");
                if kind_changed && self.users.is_some() {
                    // Secrets depend on the credential kind (the cipher changed): the cached
                    // user list must be fetched and rebuilt, even if the panel says 304.
                    self.users = None;
                    self.panel.forget_cache();
                }
                if self.published_kind == Some(nc.cred_kind) {
                    self.pending = None;
                    self.shared.set_served(self.slot, Some(nc));
                } else {
                    // Served once the users for this kind are on every core (publish_users).
                    self.pending = Some(nc);
                }
            }
            Err(e) => {
                tracing::error!(node = %self.tag, error = %e, "node cannot be served with this panel config");
                self.kind = None;
                self.acme_files = None;
                self.pending = None;
                self.shared.set_served(self.slot, None);
            }
        }
        self.info = Some(info);
        self.local_routing_stamp = self.shared.local_routing.stamp();
    }

    /// The periodic ACME check: renews when 30 days or less are left. A failure leaves the
    /// served certificate as it is and is tried again in an hour.
    fn check_certificate(&mut self) {
        let Some(job) = self.acme_files.clone() else {
            return;
        };
        let cert = &job.cert_file;
        let ok = match crate::acme::ensure(
            &job.cert,
            std::path::Path::new(&job.cert_file),
            std::path::Path::new(&job.key_file),
            job.tls_alpn.as_ref(),
        ) {
            Ok(outcome) => {
                let ok = !matches!(outcome, crate::acme::Outcome::Kept { .. });
                build::log_acme(cert, outcome);
                ok
            }
            Err(e) => {
                tracing::error!(node = %self.tag, error = %e, "ACME renewal failed and no usable certificate is left on disk; the data plane keeps the one it loaded");
                false
            }
        };
        self.next_cert_check = Instant::now() + if ok { CERT_CHECK_EVERY } else { CERT_RETRY_AFTER };
    }

    fn publish_users(&mut self) {
        let (Some(kind), Some(users)) = (self.kind, self.users.as_ref()) else {
            return;
        };
        match self
            .shared
            .shm
            .publish_users(self.slot, kind, users, Duration::from_secs(5))
        {
            Ok(st) => {
                tracing::info!(node = %self.tag, users = st.users, gen = st.tables_gen, "user table published");
                self.published_kind = Some(kind);
                // Every running core has acknowledged the table: the node may listen now.
                if let Some(nc) = self.pending.take_if(|nc| nc.cred_kind == kind) {
                    self.shared.set_served(self.slot, Some(nc));
                }
            }
            Err(e) => {
                tracing::error!(node = %self.tag, error = %e, "cannot publish users; will retry");
                self.panel.forget_cache();
            }
        }
    }

    fn apply_alive(&mut self, counts: &BTreeMap<u32, u32>) {
        let online = self.shared.online();
        let slot = self.slot;
        let serving = self.shared.shm.dataplane_pid();
        let f = |uid: u32| online.alive_elsewhere(slot, uid, counts.get(&uid).copied().unwrap_or(0), serving);
        if let Err(e) = self.shared.shm.set_alive_elsewhere(self.slot, &f) {
            tracing::warn!(node = %self.tag, error = %e, "cannot update online counts");
        }
    }

    /// One push round: traffic (exactly once), then online IPs.
    pub fn push(&mut self) {
        let min = self.entry.report_min_traffic_bytes();
        let report = self.shared.acct.push_node(&self.tag, self.panel.as_mut(), min);
        if report.refused {
            self.shared.metrics.refused(self.slot);
        }
        if let Some(err) = &report.error {
            if report.refused {
                tracing::error!(node = %self.tag, error = %err, "traffic report refused by the panel; bytes stay journalled");
            } else {
                tracing::warn!(node = %self.tag, error = %err, "traffic push incomplete; bytes stay journalled");
            }
        }
        let accepted = report.accepted.values().fold([0u64; 2], |t, d| {
            [t[0].saturating_add(d[0]), t[1].saturating_add(d[1])]
        });
        let alive = self.shared.online().take_alive(
            self.slot,
            &report.accepted,
            self.entry.device_online_min_traffic_bytes(),
        );
        let mut ok = report.error.is_none();
        if !alive.is_empty() {
            if let Err(e) = self.panel.alive(&alive) {
                tracing::warn!(node = %self.tag, error = %e, "alive report failed");
                ok = false;
            }
        }
        if self.shared.phase() == Phase::Running {
            let status = self.host.sample();
            let metrics = self.metrics();
            // Xboard v2 `online`: open connections per user on this node.
            let online: BTreeMap<u32, u32> = self
                .shared
                .shm
                .user_open_conns(self.slot)
                .into_iter()
                .map(|(uid, n)| (uid, u32::try_from(n).unwrap_or(u32::MAX)))
                .collect();
            if let Err(e) = self.panel.status(&status, &metrics, &online) {
                tracing::debug!(node = %self.tag, error = %e, "status report failed");
            }
            if self.ws_connected {
                self.send_devices();
                if let Some(ws) = self.ws.as_ref() {
                    ws.out().send("node.status", serde_json::Value::Object(metrics));
                }
            }
        }
        self.shared.metrics.push(self.slot, ok, accepted);
    }
}

fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    let spread = ms / 10;
    if spread == 0 {
        return d;
    }
    Duration::from_millis(ms - spread + rand::rng().random_range(0..=2 * spread))
}

/// Bytes per second [up, down] between two readings of a node's counted bytes (0 for the first
/// reading, or when the counters went back, as after a node left and came back).
fn speeds(prev: Option<(Instant, [u64; 2])>, (now, cur): (Instant, [u64; 2])) -> (u64, u64) {
    let Some((then, old)) = prev else { return (0, 0) };
    let secs = now.saturating_duration_since(then).as_secs_f64();
    if secs < 0.001 {
        return (0, 0);
    }
    let rate = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs) as u64;
    (rate(old[0], cur[0]), rate(old[1], cur[1]))
}

/// An address as the panel lists it (Xboard stores `1.2.3.4`, `::1`, and strips a port from
/// `1.2.3.4:5678` and `[::1]:443`); `None` for anything else.
fn parse_panel_ip(s: &str) -> Option<std::net::IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Some(ip.to_canonical());
    }
    s.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn speeds_are_the_difference_over_the_interval() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(speeds(None, (t1, [10, 10])), (0, 0));
        assert_eq!(speeds(Some((t0, [1000, 0])), (t1, [3000, 8000])), (1000, 4000));
        // Counters that went back (the node left and came back) give 0, not a wrap-around.
        assert_eq!(speeds(Some((t0, [5000, 5000])), (t1, [10, 10])), (0, 0));
    }

    #[test]
    fn panel_addresses_as_xboard_stores_them() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(parse_panel_ip("1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_panel_ip(" 1.2.3.4:5678 "), Some(ip("1.2.3.4")));
        assert_eq!(parse_panel_ip("[::1]:443"), Some(ip("::1")));
        assert_eq!(parse_panel_ip("::ffff:1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_panel_ip("not an ip"), None);
    }
}
