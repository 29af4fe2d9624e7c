//! Glue between the control plane's view (config, user tables, commands) and the engine:
//! per-core listeners per node, the connection lifecycle (PROXY header → handshake → device
//! admission → outbound → relay → cleanup) and the registry that closes a removed user's
//! connections within one tick.

pub mod auth;
#[cfg(feature = "quic")]
mod brutal;
mod engine;
mod fallback;
#[cfg(feature = "hysteria2")]
mod masq;
mod mux_tcp;
#[cfg(feature = "quic")]
mod quic;
#[cfg(feature = "quic")]
pub use quic::set_quic_reset_key;
#[cfg(feature = "quic")]
pub mod quic_handoff;
#[cfg(feature = "quic")]
mod salamander_socket;
pub mod sniff;
#[cfg(feature = "quic")]
mod steer;
mod udp;
mod udp_stream;
mod xhttp;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use v2sp_shared::dpconfig::{DataplaneConfig, NodeConfig, Timeouts};

pub use engine::{planned_cores, Engine, EngineOpts, PortFactory};

use crate::limits::devices::{Admit, DeviceTracker};
use crate::limits::gcra::{effective_bytes_per_sec, RateLimiters};
use crate::net::handover::SockKind;
use crate::net::proxy_protocol;
use crate::outbound::{ConnectOpts, DnsStrategy, Outbound, OutboundError, RouteCtx, Upstream};
use crate::proto::{Next, RejectPolicy, Step, StreamHandshake};
use crate::relay::{self, BufPool, ConnCtl, Meter, PipePool, RelayEnv, RelayTimeouts};
use crate::runtime::IoBackend;
use crate::stats::{CorePort, PortCommand};
use auth::{CoreAuth, ReplayFilter};
use v2sp_shared::audit::AuditRules;

/// A node's protocol on one core: makes one handshake state machine per connection.
pub trait InboundProtocol {
    fn new_handshake(&self) -> Box<dyn StreamHandshake>;
    /// The node's UDP codec, for protocols that also serve UDP on the same port.
    fn packet_codec(&self) -> Option<Rc<dyn crate::proto::PacketCodec>> {
        None
    }
    /// The node's QUIC protocol (Hysteria 2, TUIC), when it is served by a QUIC endpoint
    /// instead of a TCP listener; its `new_handshake` is then never used.
    #[cfg(feature = "quic")]
    fn quic(&self) -> Option<Rc<dyn crate::proto::quic::QuicInbound>> {
        None
    }
    fn is_quic(&self) -> bool {
        #[cfg(feature = "quic")]
        return self.quic().is_some();
        #[cfg(not(feature = "quic"))]
        false
    }
}

/// Builds a node's protocol (called on each core thread).
pub type ProtocolFactory = Arc<dyn Fn(&NodeConfig) -> Result<Rc<dyn InboundProtocol>, String> + Send + Sync>;

/// The default factory: protocols this build can serve.
pub fn default_protocols() -> ProtocolFactory {
    Arc::new(|n: &NodeConfig| match n.protocol {
        #[cfg(feature = "shadowsocks")]
        v2sp_shared::dpconfig::Protocol::Shadowsocks => shadowsocks(n),
        #[cfg(feature = "trojan")]
        v2sp_shared::dpconfig::Protocol::Trojan => Ok(Rc::new(TrojanProto)),
        #[cfg(feature = "vless")]
        v2sp_shared::dpconfig::Protocol::Vless => Ok(Rc::new(VlessProto(n.flow.clone()))),
        #[cfg(feature = "vmess")]
        v2sp_shared::dpconfig::Protocol::Vmess => {
            Ok(Rc::new(VmessProto(crate::proto::vmess::VmessInbound::new())))
        }
        #[cfg(feature = "anytls")]
        v2sp_shared::dpconfig::Protocol::Anytls => {
            let scheme = crate::proto::anytls::PaddingScheme::from_lines(&n.padding_scheme)?;
            Ok(Rc::new(AnytlsProto(Arc::new(scheme))))
        }
        #[cfg(feature = "hysteria2")]
        v2sp_shared::dpconfig::Protocol::Hysteria2 => Ok(quic(hysteria2(n)?)),
        #[cfg(feature = "tuic")]
        v2sp_shared::dpconfig::Protocol::Tuic => Ok(quic(tuic(n)?)),
        // Reached only in builds without some protocol's feature.
        #[allow(unreachable_patterns)]
        other => Err(format!(
            "protocol {} is not served by this build yet",
            other.as_str()
        )),
    })
}

/// A QUIC protocol's registration.
#[cfg(any(feature = "hysteria2", feature = "tuic"))]
fn quic(p: impl crate::proto::quic::QuicInbound + 'static) -> Rc<dyn InboundProtocol> {
    Rc::new(quic::QuicProto(Rc::new(p)))
}

/// A Hysteria 2 node as the panel configures it: its bandwidth (`up_mbps` caps what it sends
/// to a client, `down_mbps` is the receive rate it tells clients, `ignore_client_bandwidth`),
/// and its packet obfuscation (`obfs`: empty = none, `salamander` with a non-empty `obfs_password`;
/// the control plane has checked this, the data plane refuses anything else rather than
/// serve a node its clients cannot reach).
#[cfg(feature = "hysteria2")]
fn hysteria2(n: &NodeConfig) -> Result<crate::proto::hysteria2::Hysteria2Inbound, String> {
    use crate::proto::hysteria2::{salamander::Salamander, Bandwidth, Hysteria2Inbound};
    let Some(h) = &n.hysteria2 else {
        // No panel settings: clients are told `auto` and the node runs its own congestion
        // control.
        return Ok(Hysteria2Inbound {
            bandwidth: Bandwidth {
                ignore_client_bandwidth: true,
                ..Bandwidth::default()
            },
            obfs: None,
        });
    };
    let obfs = match h.obfs.as_str() {
        "" => None,
        "salamander" if h.obfs_password.is_empty() => {
            return Err("hysteria2 Salamander obfuscation needs a non-empty obfs password".to_string())
        }
        "salamander" => Some(Salamander::new(h.obfs_password.as_bytes())),
        other => {
            return Err(format!(
                "hysteria2 obfuscation {other:?} is not supported (none or salamander)"
            ))
        }
    };
    Ok(Hysteria2Inbound {
        bandwidth: Bandwidth {
            up_mbps: h.up_mbps,
            down_mbps: h.down_mbps,
            ignore_client_bandwidth: h.ignore_client_bandwidth,
        },
        obfs,
    })
}

/// A TUIC node as the panel configures it.
#[cfg(feature = "tuic")]
fn tuic(n: &NodeConfig) -> Result<crate::proto::tuic::TuicInbound, String> {
    let t = n.tuic.clone().unwrap_or_default();
    let cc = crate::proto::quic::Congestion::parse(&t.congestion_control)
        .ok_or_else(|| format!("tuic: unknown congestion control {:?}", t.congestion_control))?;
    let alpn = n.tls.as_ref().map(|t| t.alpn.clone()).unwrap_or_default();
    Ok(crate::proto::tuic::TuicInbound::new(
        cc,
        Duration::from_millis(u64::from(t.heartbeat_ms)),
        alpn,
    ))
}

#[cfg(feature = "trojan")]
struct TrojanProto;

#[cfg(feature = "trojan")]
impl InboundProtocol for TrojanProto {
    fn new_handshake(&self) -> Box<dyn StreamHandshake> {
        Box::new(crate::proto::trojan::TrojanHandshake::default())
    }
}

/// AnyTLS with the node's padding scheme.
#[cfg(feature = "anytls")]
struct AnytlsProto(Arc<crate::proto::anytls::PaddingScheme>);

#[cfg(feature = "anytls")]
impl InboundProtocol for AnytlsProto {
    fn new_handshake(&self) -> Box<dyn StreamHandshake> {
        Box::new(crate::proto::anytls::AnytlsHandshake::new(self.0.clone()))
    }
}

#[cfg(feature = "vless")]
/// VLESS with the node's flow (every user must request exactly it).
struct VlessProto(String);

#[cfg(feature = "vless")]
impl InboundProtocol for VlessProto {
    fn new_handshake(&self) -> Box<dyn StreamHandshake> {
        Box::new(crate::proto::vless::VlessHandshake::with_flow(&self.0))
    }
}

/// Built per core: its user key cache is this core's.
#[cfg(feature = "vmess")]
struct VmessProto(crate::proto::vmess::VmessInbound);

#[cfg(feature = "vmess")]
impl InboundProtocol for VmessProto {
    fn new_handshake(&self) -> Box<dyn StreamHandshake> {
        Box::new(self.0.handshake())
    }
}

#[cfg(feature = "shadowsocks")]
struct SsProto(crate::proto::ss::SsInbound);

#[cfg(feature = "shadowsocks")]
impl InboundProtocol for SsProto {
    fn new_handshake(&self) -> Box<dyn StreamHandshake> {
        self.0.handshake()
    }
    fn packet_codec(&self) -> Option<Rc<dyn crate::proto::PacketCodec>> {
        match self.0.udp_codec() {
            Ok(c) => Some(Rc::from(c)),
            Err(e) => {
                tracing::warn!("shadowsocks UDP disabled: {e}");
                None
            }
        }
    }
}

#[cfg(feature = "shadowsocks")]
fn shadowsocks(n: &NodeConfig) -> Result<Rc<dyn InboundProtocol>, String> {
    use crate::proto::ss::{Method, SsInbound};
    use base64::Engine as _;
    let ss = n
        .shadowsocks
        .as_ref()
        .ok_or("shadowsocks node without shadowsocks settings")?;
    let method = Method::from_name(&ss.cipher).ok_or_else(|| format!("unknown cipher {:?}", ss.cipher))?;
    let psk = match ss.server_key.trim() {
        "" => None,
        k => Some(
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .map_err(|e| format!("server_key is not base64: {e}"))?,
        ),
    };
    let inbound = SsInbound::new(method, psk.as_deref()).map_err(|e| format!("shadowsocks config: {e}"))?;
    Ok(Rc::new(SsProto(inbound)))
}

/// How long a handshake's salt / auth id is remembered at least. A timestamp accepted with a
/// skew of ±S is accepted during 2·S seconds of server time, so the window must be 2·S: with
/// only S (Xray keeps VMess auth ids 120 s) a hello first seen at the early edge could be
/// replayed at the late edge (issue 11). VMess (±120 s) is the widest; it covers SS-2022
/// (±30 s) and SS-2017 salt reuse in practice.
const REPLAY_WINDOW_S: u64 = 2 * max_skew_s();

const fn max_skew_s() -> u64 {
    let s = 30; // SS-2022 (`proto::ss::ss2022::MAX_TIME_DIFF_S`)
    #[cfg(feature = "vmess")]
    let s = if crate::proto::vmess::crypto::MAX_SKEW_S > s {
        crate::proto::vmess::crypto::MAX_SKEW_S
    } else {
        s
    };
    s
}

/// Process-wide state shared by all cores.
pub struct Shared {
    pub devices: DeviceTracker,
    pub rates: RateLimiters,
    pub replay: Box<dyn ReplayFilter>,
    pub protocols: ProtocolFactory,
    /// Splice unchanged streams (off = always copy; for measurement).
    pub splice: bool,
    /// The sessions of every XHTTP node (their requests may arrive on any core).
    pub xhttp: xhttp::Hub,
    /// The cores' QUIC inboxes per listening address, for packets that reach another core's
    /// socket than their connection's (`steer`).
    #[cfg(feature = "quic")]
    pub(crate) steering: Arc<steer::SteerRegistry>,
    /// The first core slot this process counts in (`V2SP_CORE_BASE`): QUIC connection ids name
    /// the slot, so the two processes of an upgrade issue ids the other tells apart.
    pub core_base: std::sync::atomic::AtomicU16,
}

impl Shared {
    pub fn new(protocols: ProtocolFactory) -> Arc<Self> {
        Self::with_rates(protocols, RateLimiters::default())
    }

    /// As [`Shared::new`], with the speed-limit buckets given (their clocks in shared memory).
    pub fn with_rates(protocols: ProtocolFactory, rates: RateLimiters) -> Arc<Self> {
        Arc::new(Shared {
            devices: DeviceTracker::default(),
            rates,
            replay: Box::new(crate::limits::replay::ReplayFilter::new(REPLAY_WINDOW_S, 1 << 20)),
            protocols,
            splice: std::env::var("V2SP_SPLICE").map(|v| v != "0").unwrap_or(true),
            xhttp: xhttp::Hub::default(),
            #[cfg(feature = "quic")]
            steering: Arc::default(),
            core_base: std::sync::atomic::AtomicU16::new(0),
        })
    }
}

/// One node as served on this core.
pub struct NodeRt {
    pub cfg: NodeConfig,
    proto: Rc<dyn InboundProtocol>,
    /// TLS terminated before the protocol handshake (`NodeConfig.tls`).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS-ALPN-01 answers (`TlsSettings.acme_tls_alpn_file`): the config for handshakes that
    /// offer ALPN `acme-tls/1` alone (`tls::acme_alpn`).
    acme_alpn: Option<Arc<rustls::ServerConfig>>,
    /// REALITY instead of a certificate (`TlsSettings.reality`).
    reality: Option<Arc<crate::tls::reality::RealityServer>>,
    /// QUIC settings of a QUIC node (`tls` is then `None`).
    #[cfg(feature = "quic")]
    quic: Option<quic::QuicSettings>,
    connect: ConnectOpts,
    handshake: Duration,
    relay: RelayTimeouts,
    /// Balancers whose connections start with a PROXY header (`proxy_protocol_from`, parsed).
    proxy_from: Vec<(IpAddr, u8)>,
    /// The XHTTP transport's settings: connections are then HTTP servers (`xhttp.rs`).
    xhttp: Option<Rc<crate::transport::xhttp::Xhttp>>,
    /// Proxies whose forwarding headers name the client (`trusted_proxies`, parsed).
    trusted_proxies: Vec<(IpAddr, u8)>,
}

impl NodeRt {
    /// Whether a connection from `peer` must start with a PROXY header: only on a node with
    /// the PROXY protocol on, and only from its balancers (loopback when none are named).
    /// Anyone else is served as a direct client, so a PROXY header from them is just bad
    /// protocol bytes and the per-IP caps count their own address.
    fn expects_proxy_header(&self, peer: IpAddr) -> bool {
        if !self.cfg.proxy_protocol {
            return false;
        }
        let peer = crate::net::normalise_ip(peer);
        if self.proxy_from.is_empty() {
            return peer.is_loopback();
        }
        self.proxy_from
            .iter()
            .any(|&(net, len)| v2sp_shared::audit::in_network(peer, net, len))
    }
}

struct NodeHandle {
    rt: Rc<NodeRt>,
    /// The settings the accept loop gives each new connection: replaced in place when the
    /// node changes but keeps its address, so the listening socket (and its accept queue)
    /// stays.
    live: Rc<RefCell<Rc<NodeRt>>>,
    /// The address the TCP listener is bound to.
    addr: SocketAddr,
    /// Stops the accept loop.
    stop: Rc<ConnCtl>,
    /// Stops the node's UDP loop, if it has one.
    stop_udp: Option<Rc<ConnCtl>>,
    /// The QUIC endpoint of a Hysteria 2 node (it serves instead of a TCP listener).
    #[cfg(feature = "quic")]
    quic: Option<quinn::Endpoint>,
    /// Duplicates of the node's listening sockets (TCP listener, UDP socket), for a successor
    /// process to take over on upgrade. Closed with the handle; the sockets stay open as long
    /// as the loops that serve them do.
    sockets: Vec<(SockKind, OwnedFd)>,
    /// What the node was built from (node config, timeouts, private flag).
    key: (NodeConfig, Timeouts, bool),
}

impl NodeHandle {
    fn stop_all(&self) {
        self.stop.cancel();
        if let Some(u) = &self.stop_udp {
            u.cancel();
        }
    }
}

struct ConnEntry {
    node: u16,
    /// The panel user whose traffic this is; `None` for connections that belong to no user
    /// (fallbacks): those are swept, drained and closed with their node, never kicked.
    user: Option<u32>,
    ctl: Rc<ConnCtl>,
}

/// Open connections per (node, user).
type UserConns = std::collections::BTreeMap<(u16, u32), u64>;

/// One core: its port to shared memory, pools, resolver, nodes and open connections.
pub struct Core {
    pub index: u16,
    pub backend: IoBackend,
    port: RefCell<Box<dyn CorePort>>,
    pub bufs: BufPool,
    pub pipes: PipePool,
    outbound: Outbound,
    pub shared: Arc<Shared>,
    /// io_uring driver when the backend is uring.
    uring: Option<Rc<crate::runtime::uring::UringIo>>,
    nodes: RefCell<HashMap<u16, NodeHandle>>,
    conns: RefCell<HashMap<u64, ConnEntry>>,
    /// Connections still in the handshake (not yet in `conns`), for draining.
    handshaking: Cell<usize>,
    /// TCP accept loops still running: a drain waits for them, because a loop told to stop
    /// may still hand over one connection the kernel gave it (io_uring accept cancelled late).
    accepting: Cell<usize>,
    /// The same, per source address (the TCP peer, before any PROXY header).
    handshaking_by_ip: RefCell<HashMap<IpAddr, u32>>,
    /// The caps on those two (from the config; 0 = none).
    handshake_limits: Cell<(u32, u32)>,
    /// Connections closed at accept because a cap was reached (logged now and then).
    handshakes_refused: Cell<u64>,
    next_id: Cell<u64>,
    /// Ticks so far (the per-node connection gauges are written every 10th, about once a second).
    ticks: Cell<u64>,
    /// The per-user connection counts last written for the control plane, and the tick.
    user_conns: RefCell<(UserConns, u64)>,
    /// Ticks seen, for the idle sweep's period.
    sweeps: Cell<u32>,
    /// A resync snapshot still to be pushed into this core's event ring (core 0 only).
    resync: RefCell<std::collections::VecDeque<crate::stats::DeviceEvent>>,
}

/// Event-ring slots a resync snapshot leaves free for live transitions.
const RESYNC_HEADROOM: usize = 1024;

impl Core {
    /// Must be called on the core thread inside its `LocalSet` (the uring reaper is spawned).
    pub fn new(index: u16, backend: IoBackend, port: Box<dyn CorePort>, shared: Arc<Shared>) -> Rc<Self> {
        let (backend, uring) = match backend {
            IoBackend::Uring => match crate::runtime::uring::UringIo::start() {
                Ok(u) => (IoBackend::Uring, Some(u)),
                Err(e) => {
                    tracing::warn!(core = index, "io_uring ring setup failed ({e}); core uses epoll");
                    (IoBackend::Epoll, None)
                }
            },
            IoBackend::Epoll => (IoBackend::Epoll, None),
        };
        Rc::new(Core {
            index,
            backend,
            uring,
            port: RefCell::new(port),
            bufs: BufPool::default(),
            pipes: PipePool::default(),
            outbound: Outbound::default(),
            shared,
            nodes: RefCell::new(HashMap::new()),
            conns: RefCell::new(HashMap::new()),
            handshaking: Cell::new(0),
            accepting: Cell::new(0),
            handshaking_by_ip: RefCell::new(HashMap::new()),
            handshake_limits: Cell::new({
                let d = v2sp_shared::dpconfig::HandshakeLimits::default();
                (d.per_worker, d.per_ip)
            }),
            handshakes_refused: Cell::new(0),
            next_id: Cell::new(1),
            ticks: Cell::new(0),
            user_conns: RefCell::new((std::collections::BTreeMap::new(), 0)),
            sweeps: Cell::new(0),
            resync: RefCell::new(std::collections::VecDeque::new()),
        })
    }

    /// Open relayed connections on this core.
    pub fn open_connections(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Admits a just-accepted connection from `ip` to its handshake, or `None` when this
    /// worker's cap or the address's cap is reached (the caller closes it). The guard gives the
    /// place back when the handshake ends, however it ends. A connection from a PROXY-protocol
    /// balancer (`per_ip` false) is counted against the address it names, once its header is
    /// read ([`HandshakeGuard::rekey`]).
    fn begin_handshake(self: &Rc<Self>, ip: IpAddr, per_ip: bool) -> Option<HandshakeGuard> {
        self.port.borrow().add_accepted(1);
        let ip = crate::net::normalise_ip(ip);
        let (per_worker, _) = self.handshake_limits.get();
        if per_worker != 0 && self.handshaking.get() >= per_worker as usize {
            self.refuse_handshake(ip);
            return None;
        }
        let mut guard = HandshakeGuard {
            core: self.clone(),
            ip: None,
            worker: true,
        };
        self.handshaking.set(self.handshaking.get() + 1);
        if per_ip && !guard.rekey(ip) {
            return None;
        }
        Some(guard)
    }

    fn refuse_handshake(&self, ip: IpAddr) {
        let n = self.handshakes_refused.get() + 1;
        self.handshakes_refused.set(n);
        if n.is_power_of_two() {
            tracing::warn!(core = self.index, %ip, refused = n, "handshake limit reached: new connections are closed at once (MaxHandshakes / MaxHandshakesPerIP)");
        }
    }

    pub fn serving_nodes(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.nodes.borrow().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Periodic tick: port housekeeping, table changes, commands.
    pub fn tick(&self) {
        let info = self.port.borrow_mut().tick();
        self.port
            .borrow()
            .set_open_conns(self.conns.borrow().len() as u64);
        let t = self.ticks.get().wrapping_add(1);
        self.ticks.set(t);
        if t.is_multiple_of(10) {
            // Open connections per node, for the panel's "online connections" (one pass over
            // this core's registry about once a second; nothing per byte or per open).
            let mut per_node = vec![0u64; v2sp_shared::shm::layout::MAX_NODES];
            for e in self.conns.borrow().values() {
                if let Some(c) = per_node.get_mut(usize::from(e.node)) {
                    *c += 1;
                }
            }
            self.port.borrow().set_node_conns(&per_node);
        }
        if t.is_multiple_of(50) {
            self.publish_user_conns(t);
        }
        if info.tables_changed {
            self.refresh_users();
        }
        self.sweep_idle();
        loop {
            let cmd = self.port.borrow_mut().pop_command();
            match cmd {
                Some(PortCommand::Kick { node, user_id }) => {
                    self.cancel_where(|e| e.node == node && e.user == Some(user_id))
                }
                // The device tracker is process-wide, so one core answers for all; a newer
                // request replaces a snapshot not yet fully sent.
                Some(PortCommand::ResyncIps) if self.index == 0 => {
                    let snap = self.shared.devices.snapshot();
                    tracing::info!(
                        online = snap.events.len().saturating_sub(2),
                        "resyncing online IPs with the control plane"
                    );
                    *self.resync.borrow_mut() = snap.events;
                }
                Some(PortCommand::ResyncIps | PortCommand::Other) => {}
                None => break,
            }
        }
        self.push_resync();
    }

    /// Open connections per (node, user) for the panel's per-user online counts, about every
    /// 5 s: written when they changed, and at least every 10 s so the control plane knows this
    /// core is alive (it ignores files older than 30 s).
    fn publish_user_conns(&self, tick: u64) {
        let mut counts = std::collections::BTreeMap::new();
        for e in self.conns.borrow().values() {
            if let Some(uid) = e.user {
                *counts.entry((e.node, uid)).or_insert(0u64) += 1;
            }
        }
        let mut last = self.user_conns.borrow_mut();
        if counts == last.0 && tick.saturating_sub(last.1) < 100 {
            return;
        }
        self.port.borrow().set_user_conns(&counts);
        *last = (counts, tick);
    }

    /// Moves what fits of a pending resync into the event ring, keeping room for live events.
    fn push_resync(&self) {
        let mut pending = self.resync.borrow_mut();
        if pending.is_empty() {
            return;
        }
        let mut port = self.port.borrow_mut();
        let room = port.event_space().saturating_sub(RESYNC_HEADROOM);
        for _ in 0..room {
            let Some(ev) = pending.pop_front() else { break };
            port.push_event(ev);
        }
    }

    /// Closes relays silent for longer than their idle allowance (see `relay::ConnCtl`). Every
    /// fourth tick (~0.4 s): timeouts are whole seconds, and a scan of the registry is cheap.
    fn sweep_idle(&self) {
        let n = self.sweeps.get().wrapping_add(1);
        self.sweeps.set(n);
        if !n.is_multiple_of(4) {
            return;
        }
        let now = tokio::time::Instant::now();
        for e in self.conns.borrow().values() {
            e.ctl.sweep(now);
        }
    }

    /// Enters a connection into the registry (closed on kick, user removal, node removal,
    /// idle timeout and shutdown); returns its id for the removal on drop.
    fn register(&self, node: u16, user: Option<u32>, ctl: Rc<ConnCtl>) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.conns.borrow_mut().insert(id, ConnEntry { node, user, ctl });
        id
    }

    fn cancel_where(&self, f: impl Fn(&ConnEntry) -> bool) {
        for e in self.conns.borrow().values() {
            if f(e) {
                e.ctl.cancel();
            }
        }
    }

    /// A new table generation: close connections of users that are gone, apply limit changes.
    fn refresh_users(&self) {
        let nodes: HashSet<u16> = self.conns.borrow().values().map(|e| e.node).collect();
        for node in nodes {
            let node_mbps = self
                .nodes
                .borrow()
                .get(&node)
                .map_or(0, |h| h.rt.cfg.speed_limit_mbps);
            let mut present: HashMap<u32, u32> = HashMap::new();
            self.port.borrow().for_each_user(node, &mut |u| {
                present.insert(u.user_id, u.speed_limit_mbps);
                true
            });
            for e in self.conns.borrow().values().filter(|e| e.node == node) {
                let Some(user_id) = e.user else { continue };
                match present.get(&user_id) {
                    None => e.ctl.cancel(),
                    Some(&mbps) => {
                        self.shared
                            .rates
                            .update(node, user_id, effective_bytes_per_sec(node_mbps, mbps))
                    }
                }
            }
        }
    }

    /// Brings the served nodes in line with `cfg`. Unchanged nodes are not touched. A removed
    /// node stops accepting and its connections are closed. A changed node serves new
    /// connections with the new settings, on the same listening socket when its address did
    /// not change; its open connections go on with the settings they were accepted under (the
    /// Go agents re-create the inbound and drop every user, spec §D). New nodes start.
    pub fn apply_config(self: &Rc<Self>, cfg: &DataplaneConfig) {
        // Adopt the newest user tables before any listener opens: the control plane publishes
        // a node's users (and waits for every core) before the config that makes it listen,
        // and this tick makes sure this core reads them even between its periodic ticks.
        self.tick();
        self.handshake_limits
            .set((cfg.handshake_limits.per_worker, cfg.handshake_limits.per_ip));
        // The control plane never publishes two nodes on one port; a config that does anyway
        // (hand-written, or an older control plane) serves the lower slot only.
        let refused = v2sp_shared::dpconfig::listen_conflicts(&cfg.nodes);
        if self.index == 0 {
            for (slot, kept) in &refused {
                tracing::error!(slot, kept, "node not served: its port is used by another node");
            }
        }
        let wanted: HashMap<u16, &NodeConfig> = cfg
            .nodes
            .iter()
            .filter(|n| !refused.iter().any(|&(s, _)| s == n.slot))
            .map(|n| (n.slot, n))
            .collect();
        let key = |n: &NodeConfig| (n.clone(), cfg.timeouts.clone(), cfg.allow_private_destinations);
        let stale: Vec<u16> = self
            .nodes
            .borrow()
            .iter()
            .filter(|(slot, h)| wanted.get(slot).is_none_or(|n| h.key != key(n)))
            .map(|(s, _)| *s)
            .collect();
        for slot in stale {
            let Some(old) = self.nodes.borrow_mut().remove(&slot) else {
                continue;
            };
            let Some(n) = wanted.get(&slot) else {
                old.stop_all();
                self.cancel_where(|e| e.node == slot);
                continue;
            };
            if let Err(e) = self.restart_node(old, n, cfg) {
                tracing::error!(core = self.index, node = %n.tag, "cannot serve the changed node: {e}");
            }
        }
        for n in wanted.values() {
            if self.nodes.borrow().contains_key(&n.slot) {
                continue;
            }
            if let Err(e) = self.start_node(n, cfg) {
                tracing::error!(core = self.index, node = %n.tag, "cannot serve node: {e}");
            }
        }
    }

    /// A changed node: new settings for new connections. `old` is stopped unless its listener
    /// can be kept.
    fn restart_node(
        self: &Rc<Self>,
        old: NodeHandle,
        n: &NodeConfig,
        cfg: &DataplaneConfig,
    ) -> Result<(), String> {
        let built = self
            .node_rt(n, cfg)
            .and_then(|rt| Ok((rt, crate::net::listen_addr(&n.listen_ip, n.port)?)));
        let (rt, addr) = match built {
            Ok(x) => x,
            Err(e) => {
                // Bad new settings (an unreadable certificate, say) change nothing: the node
                // goes on with the last good ones, and the next config is tried again.
                self.nodes.borrow_mut().insert(n.slot, old);
                return Err(format!("{e}; keeping the previous settings"));
            }
        };
        // A QUIC endpoint's obfuscation is part of its socket: a change needs a new endpoint.
        #[cfg(feature = "quic")]
        let same_kind = old.quic.is_some() == rt.proto.is_quic()
            && quic::same_obfuscation(old.rt.quic.as_ref(), rt.quic.as_ref());
        #[cfg(not(feature = "quic"))]
        let same_kind = true;
        if addr != old.addr || !same_kind {
            #[cfg(feature = "quic")]
            let replaced_quic = addr == old.addr && rt.proto.is_quic();
            if let Err(e) = self.serve(rt, addr, cfg) {
                self.nodes.borrow_mut().insert(n.slot, old);
                return Err(format!("{e}; keeping the previous settings"));
            }
            old.stop_all();
            // The old endpoint shares the port with the new one (SO_REUSEPORT spreads clients
            // over both): close it, so its socket goes once its connections have drained. Its
            // clients speak the old obfuscation and cannot go on anyway.
            #[cfg(feature = "quic")]
            if let (true, Some(ep)) = (replaced_quic, &old.quic) {
                quic::retire(ep, old.rt.proto.quic().map_or(0, |q| q.close_code()));
            }
            return Ok(());
        }
        // Same address: the accept loop keeps its socket and hands out the new settings.
        *old.live.borrow_mut() = rt.clone();
        #[cfg(feature = "quic")]
        if let (Some(ep), Some(q)) = (&old.quic, &rt.quic) {
            ep.set_server_config(Some(q.server.clone()));
        }
        if let Some(u) = &old.stop_udp {
            u.cancel();
        }
        let mut sockets: Vec<_> = old
            .sockets
            .into_iter()
            .filter(|(k, _)| *k == SockKind::Tcp)
            .collect();
        #[cfg(feature = "quic")]
        if old.quic.is_some() {
            // The endpoint keeps its UDP socket.
            sockets = Vec::new();
        }
        let stop_udp = self.serve_udp(&rt, addr).map(|(stop, fd)| {
            sockets.push((SockKind::Udp, fd));
            stop
        });
        self.nodes.borrow_mut().insert(
            n.slot,
            NodeHandle {
                rt,
                live: old.live,
                addr,
                stop: old.stop,
                stop_udp,
                #[cfg(feature = "quic")]
                quic: old.quic,
                sockets,
                key: (n.clone(), cfg.timeouts.clone(), cfg.allow_private_destinations),
            },
        );
        Ok(())
    }

    fn start_node(self: &Rc<Self>, n: &NodeConfig, cfg: &DataplaneConfig) -> Result<(), String> {
        let rt = self.node_rt(n, cfg)?;
        let addr = crate::net::listen_addr(&n.listen_ip, n.port)?;
        self.serve(rt, addr, cfg)
    }

    /// The TCP listener (and UDP socket, if the protocol has datagrams) for a node.
    fn serve(self: &Rc<Self>, rt: Rc<NodeRt>, addr: SocketAddr, cfg: &DataplaneConfig) -> Result<(), String> {
        #[cfg(feature = "quic")]
        if let Some(q) = &rt.quic {
            return self.serve_quic(rt.clone(), q.clone(), addr, cfg);
        }
        let listener = match &self.uring {
            Some(_) => crate::net::tcp_listener_std(addr, false).map(Listener::Uring),
            None => crate::net::tcp_listener(addr).map(Listener::Tokio),
        }
        .map_err(|e| format!("listen on {addr}: {e}"))?;
        let mut sockets = Vec::new();
        match listener.dup() {
            Ok(fd) => sockets.push((SockKind::Tcp, fd)),
            Err(e) => {
                tracing::warn!(core = self.index, %addr, "no duplicate of the listener for upgrades: {e}")
            }
        }
        let n = &rt.cfg;
        let stop = Rc::new(ConnCtl::default());
        let live = Rc::new(RefCell::new(rt.clone()));
        let stop_udp = self.serve_udp(&rt, addr).map(|(stop, fd)| {
            sockets.push((SockKind::Udp, fd));
            stop
        });
        self.nodes.borrow_mut().insert(
            n.slot,
            NodeHandle {
                rt: rt.clone(),
                live: live.clone(),
                addr,
                stop: stop.clone(),
                stop_udp,
                #[cfg(feature = "quic")]
                quic: None,
                sockets,
                key: (n.clone(), cfg.timeouts.clone(), cfg.allow_private_destinations),
            },
        );
        // Counted now, not when the task first runs: a drain that starts in between waits.
        self.accepting.set(self.accepting.get() + 1);
        tokio::task::spawn_local(accept_loop(self.clone(), live, listener, stop));
        Ok(())
    }

    /// A Hysteria 2 node: this core's QUIC endpoint instead of a TCP listener.
    #[cfg(feature = "quic")]
    fn serve_quic(
        self: &Rc<Self>,
        rt: Rc<NodeRt>,
        quic: quic::QuicSettings,
        addr: SocketAddr,
        cfg: &DataplaneConfig,
    ) -> Result<(), String> {
        let (ep, fd) = quic::endpoint(addr, quic, self)?;
        let n = &rt.cfg;
        let stop = Rc::new(ConnCtl::default());
        let live = Rc::new(RefCell::new(rt.clone()));
        self.nodes.borrow_mut().insert(
            n.slot,
            NodeHandle {
                rt: rt.clone(),
                live: live.clone(),
                addr,
                stop: stop.clone(),
                stop_udp: None,
                quic: Some(ep.clone()),
                sockets: vec![(SockKind::Udp, fd)],
                key: (n.clone(), cfg.timeouts.clone(), cfg.allow_private_destinations),
            },
        );
        tokio::task::spawn_local(quic::accept_loop(self.clone(), live, ep, stop));
        Ok(())
    }

    /// The node's UDP loop, if its protocol carries datagrams: its stop handle and a duplicate
    /// of its socket (for a successor on upgrade).
    fn serve_udp(self: &Rc<Self>, rt: &Rc<NodeRt>, addr: SocketAddr) -> Option<(Rc<ConnCtl>, OwnedFd)> {
        let codec = rt.proto.packet_codec()?;
        match crate::net::udp_socket(addr).and_then(|s| Ok((s.as_fd().try_clone_to_owned()?, s))) {
            Ok((fd, sock)) => {
                let stop = Rc::new(ConnCtl::default());
                tokio::task::spawn_local(udp::udp_loop(self.clone(), rt.clone(), sock, codec, stop.clone()));
                Some((stop, fd))
            }
            Err(e) => {
                tracing::error!(core = self.index, node = %rt.cfg.tag, "UDP listen on {addr}: {e}");
                None
            }
        }
    }

    /// A node's settings as the data plane runs them (TLS config, protocol, outbound).
    fn node_rt(self: &Rc<Self>, n: &NodeConfig, cfg: &DataplaneConfig) -> Result<Rc<NodeRt>, String> {
        let proto = (self.shared.protocols)(n)?;
        let reality = match n.tls.as_ref().and_then(|t| t.reality.as_ref()) {
            Some(r) => Some(Arc::new(crate::tls::reality::RealityServer::new(r)?)),
            None => None,
        };
        #[cfg(feature = "quic")]
        let quic = match proto.quic() {
            Some(q) => Some(quic::quic_settings(n, &*q)?),
            None => None,
        };
        let tls = match reality {
            Some(_) => None,
            // QUIC nodes run their TLS inside quinn.
            None if proto.is_quic() => None,
            None => n.tls.as_ref().map(crate::tls::server_config).transpose()?,
        };
        let acme_alpn = match n.tls.as_ref().map(|t| t.acme_tls_alpn_file.trim()) {
            Some(f) if !f.is_empty() && tls.is_some() => Some(crate::tls::acme_alpn::challenge_config(f)?),
            _ => None,
        };
        let send_ip = match n.send_ip.trim() {
            "" => None,
            s => Some(
                s.parse::<IpAddr>()
                    .map_err(|_| format!("send_ip {s:?} is not an IP"))?,
            ),
        };
        Ok(Rc::new(NodeRt {
            cfg: n.clone(),
            proto,
            tls,
            acme_alpn,
            reality,
            #[cfg(feature = "quic")]
            quic,
            connect: ConnectOpts {
                strategy: DnsStrategy::parse(&n.dns_strategy),
                send_ip,
                timeout: Duration::from_secs(u64::from(cfg.timeouts.connect.max(1))),
                allow_private: cfg.allow_private_destinations,
                audit: audit_rules(n),
                dns_routes: crate::outbound::dns_routes(&n.dns_routes),
                routing: Arc::new(crate::outbound::route::Routing::compile(n)),
            },
            handshake: Duration::from_secs(u64::from(cfg.timeouts.handshake.max(1))),
            relay: RelayTimeouts::from(&cfg.timeouts),
            proxy_from: n
                .proxy_protocol_from
                .iter()
                .map(|c| v2sp_shared::audit::parse_network(c))
                .collect::<Result<_, _>>()?,
            trusted_proxies: n
                .trusted_proxies
                .iter()
                .map(|c| v2sp_shared::audit::parse_network(c))
                .collect::<Result<_, _>>()?,
            xhttp: match &n.transport {
                v2sp_shared::dpconfig::Transport::Xhttp(x) => {
                    Some(Rc::new(crate::transport::xhttp::Xhttp::new(x)))
                }
                _ => None,
            },
        }))
    }

    /// Stops accepting on every node (shutdown).
    pub fn stop_listening(&self) {
        for (_, h) in self.nodes.borrow_mut().drain() {
            h.stop_all();
        }
    }

    /// Duplicates of every listening socket of this core, for a successor process.
    pub fn handover_sockets(&self) -> Vec<(SockKind, SocketAddr, OwnedFd)> {
        let nodes = self.nodes.borrow();
        let mut out = Vec::new();
        for h in nodes.values() {
            for (kind, fd) in &h.sockets {
                match fd.try_clone() {
                    Ok(d) => out.push((*kind, h.addr, d)),
                    Err(e) => {
                        tracing::warn!(core = self.index, addr = %h.addr, "cannot duplicate a listening socket: {e}")
                    }
                }
            }
        }
        out
    }

    /// A successor process serves the listening sockets now: stop accepting (a connection the
    /// kernel already handed over is still served), stop reading the shared UDP sockets, and
    /// keep serving open TCP connections. A QUIC endpoint cannot share its socket with
    /// another process (each datagram would reach one of the two at random), so it moves to a
    /// private socket and its connections are closed: QUIC clients reconnect to the successor.
    pub fn stop_listening_for_successor(&self) {
        #[cfg(feature = "quic")]
        let handoff = quic_handoff::successor_forwards();
        for (_, h) in self.nodes.borrow_mut().drain() {
            h.stop_all();
            #[cfg(feature = "quic")]
            if let Some(ep) = &h.quic {
                if handoff {
                    // The successor reads the shared socket and hands back the packets of this
                    // process's connections: they go on until they end or the drain does.
                    quic::park(ep, &self.shared.steering.group(h.addr));
                } else {
                    let code = h.rt.proto.quic().map_or(0, |q| q.close_code());
                    quic::detach(ep, code, h.rt.quic.as_ref().and_then(|q| q.obfs.as_ref()));
                }
            }
        }
        #[cfg(feature = "quic")]
        if handoff {
            quic_handoff::start_receiver(self.shared.steering.clone());
        }
    }

    /// Closes every open connection (end of the drain grace period).
    pub fn cancel_all(&self) {
        self.cancel_where(|_| true);
    }

    /// Connections open or in handshake, and accept loops still running.
    pub fn busy(&self) -> usize {
        self.conns.borrow().len() + self.handshaking.get() + self.accepting.get()
    }
}

enum Listener {
    Tokio(TcpListener),
    /// Blocking-mode socket accepted through io_uring (the kernel arms its own poll).
    Uring(std::net::TcpListener),
}

impl Listener {
    /// A second descriptor of the same listening socket.
    fn dup(&self) -> std::io::Result<OwnedFd> {
        match self {
            Listener::Tokio(l) => l.as_fd().try_clone_to_owned(),
            Listener::Uring(l) => l.as_fd().try_clone_to_owned(),
        }
    }
}

/// The next connection on `l`, or `None` once `stop` is cancelled. On io_uring a stop cancels
/// the pending accept and still returns a connection the kernel took before the cancel, so
/// nothing in the accept queue is lost when a successor process takes the socket over.
async fn accept_one(
    core: &Core,
    l: &Listener,
    stop: &ConnCtl,
) -> Option<std::io::Result<(TcpStream, SocketAddr)>> {
    match (l, &core.uring) {
        (Listener::Uring(l), Some(u)) => {
            let r = u
                .accept_until(std::os::fd::AsRawFd::as_raw_fd(l), stop.cancelled())
                .await?;
            Some(r.and_then(|s| {
                let peer = s.peer_addr()?;
                Ok((s, peer))
            }))
        }
        (Listener::Tokio(l), _) => tokio::select! {
            r = l.accept() => Some(r),
            () = stop.cancelled() => None,
        },
        (Listener::Uring(_), None) => Some(Err(std::io::Error::other("uring listener without a ring"))),
    }
}

async fn accept_loop(core: Rc<Core>, node: Rc<RefCell<Rc<NodeRt>>>, listener: Listener, stop: Rc<ConnCtl>) {
    struct Running(Rc<Core>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.accepting.set(self.0.accepting.get().saturating_sub(1));
        }
    }
    let _running = Running(core.clone());
    while !stop.is_cancelled() {
        let Some(r) = accept_one(&core, &listener, &stop).await else {
            return;
        };
        match r {
            Ok((s, peer)) => {
                let n = node.borrow().clone();
                let Some(guard) = core.begin_handshake(peer.ip(), !n.expects_proxy_header(peer.ip())) else {
                    drop(s);
                    continue;
                };
                let c = core.clone();
                crate::runtime::spawn_conn(handle_conn(c, n, s, peer, guard));
            }
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(core = core.index, "accept failed: {e}");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

/// A place in the handshake budget ([`Core::begin_handshake`]).
struct HandshakeGuard {
    core: Rc<Core>,
    /// The address whose per-IP count holds this place (`None`: not counted yet).
    ip: Option<IpAddr>,
    /// Whether the worker's count holds it too (see [`HandshakeGuard::relaying_unauthenticated`]).
    worker: bool,
}

impl HandshakeGuard {
    /// The handshake ended in a relay for nobody (a fallback, REALITY's dest): the worker's
    /// place goes back, but the address keeps its count until the relay ends. Otherwise one
    /// address could hold any number of relays without authenticating (issue 11); counting
    /// them per worker instead would let those relays lock real handshakes out.
    fn relaying_unauthenticated(&mut self) {
        if std::mem::take(&mut self.worker) {
            let c = &self.core;
            c.handshaking.set(c.handshaking.get().saturating_sub(1));
        }
    }

    /// Counts this handshake against `ip` (instead of the address it was counted against, if
    /// any); false, with the place given back, when `ip` is at its cap.
    fn rekey(&mut self, ip: IpAddr) -> bool {
        let ip = crate::net::normalise_ip(ip);
        self.release_ip();
        let (_, per_ip) = self.core.handshake_limits.get();
        let mut by_ip = self.core.handshaking_by_ip.borrow_mut();
        let here = by_ip.get(&ip).copied().unwrap_or(0);
        if per_ip != 0 && here >= per_ip {
            drop(by_ip);
            self.core.refuse_handshake(ip);
            return false;
        }
        by_ip.insert(ip, here + 1);
        self.ip = Some(ip);
        true
    }

    fn release_ip(&mut self) {
        let Some(ip) = self.ip.take() else { return };
        let mut by_ip = self.core.handshaking_by_ip.borrow_mut();
        if let Some(n) = by_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_ip.remove(&ip);
            }
        }
    }
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.relaying_unauthenticated();
        self.release_ip();
    }
}

/// Counts a user's payload into the core's shared-memory bank.
pub(super) struct ConnMeter<'a> {
    pub(super) core: &'a Core,
    pub(super) node: u16,
    pub(super) user_id: u32,
}

impl<'a> ConnMeter<'a> {
    /// The meter of `user`'s traffic (on the node the user was found in) on `core`.
    pub(super) fn of(core: &'a Core, user: &v2sp_shared::shm::UserRef) -> Self {
        ConnMeter {
            core,
            node: user.node,
            user_id: user.user_id,
        }
    }
}

impl Meter for ConnMeter<'_> {
    fn up(&self, n: u64) {
        self.core
            .port
            .borrow_mut()
            .add_traffic(self.node, self.user_id, n, 0);
    }
    fn down(&self, n: u64) {
        self.core
            .port
            .borrow_mut()
            .add_traffic(self.node, self.user_id, 0, n);
    }
}

/// A user's connection admitted on this core.
struct Admitted {
    reg: Registered,
    ctl: Rc<ConnCtl>,
    bucket: Arc<crate::limits::gcra::Bucket>,
}

/// Device admission (exact across cores; touched on open/close only), the registry entry and
/// the user's speed-limit bucket, for every kind of user connection (TCP relay, UDP over a
/// stream). `None` when the device limit refuses the source IP.
/// How long a connection whose first bytes must be sniffed waits for them (Xray's sniffer
/// waits a few hundred ms too). A client that sends nothing first (a server-first protocol)
/// is passed unsniffed after this.
const SNIFF_WAIT: Duration = Duration::from_millis(300);

enum Sniff {
    /// Go on; what was sniffed, when the node's rules asked for it (routing reads it).
    Pass(Option<sniff::Sniffed>),
    /// Rule id, and what was sniffed (for the log).
    Block(i64, String),
    /// The client's bytes did not decode, or the socket failed: end the connection.
    Drop,
}

/// Audit rules that need the client's first bytes (`protocol:` rules; domain rules when the
/// client named an IP): decodes what the client has sent, or waits up to [`SNIFF_WAIT`] for
/// it, into `initial_upload` (plaintext for the destination; wire bytes of an incomplete
/// frame stay in `pending_up` for the relay), then checks the sniffed protocol and domain.
async fn sniff_first(
    node: &NodeRt,
    dest: &crate::proto::Destination,
    client: &mut TcpStream,
    codec: &mut Option<Box<dyn crate::proto::StreamCodec>>,
    pending_up: &mut Vec<u8>,
    initial_upload: &mut Vec<u8>,
) -> Sniff {
    let audit = node.connect.audit.as_deref().filter(|a| sniff::wanted(a, dest));
    let dest_is_ip = match dest {
        crate::proto::Destination::Ip(_) => true,
        crate::proto::Destination::Domain(d, _) => d.parse::<IpAddr>().is_ok(),
    };
    if audit.is_none() && !node.connect.routing.wants_sniff(dest_is_ip) {
        return Sniff::Pass(None);
    }
    let deadline = tokio::time::Instant::now() + SNIFF_WAIT;
    let mut buf = Vec::new();
    let mut fresh = 0;
    while initial_upload.is_empty() {
        let mut wire = std::mem::take(pending_up);
        wire.extend_from_slice(buf.get(..fresh).unwrap_or_default());
        if !wire.is_empty() {
            match codec.as_mut() {
                None => initial_upload.append(&mut wire),
                Some(c) => {
                    let used = match c.open(&wire, initial_upload) {
                        Ok(n) => n.min(wire.len()),
                        Err(_) => return Sniff::Drop,
                    };
                    *pending_up = wire.split_off(used);
                    if c.has_control() {
                        // Transport control frames (a pong, a window update) go out now, as the
                        // relay would send them.
                        let mut out = Vec::new();
                        if c.take_control(&mut out).is_err() || client.write_all(&out).await.is_err() {
                            return Sniff::Drop;
                        }
                    }
                }
            }
            if !initial_upload.is_empty() {
                break;
            }
        }
        if buf.is_empty() {
            buf = vec![0u8; 16 * 1024];
        }
        fresh = 0;
        match tokio::time::timeout_at(deadline, client.readable()).await {
            Err(_) => return Sniff::Pass(None),
            Ok(Err(_)) => return Sniff::Drop,
            Ok(Ok(())) => {}
        }
        match client.try_read(&mut buf) {
            // The client's end of stream: nothing to sniff; the relay sees it too.
            Ok(0) => return Sniff::Pass(None),
            Ok(n) => fresh = n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Sniff::Drop,
        }
    }
    if let Some((rule, what)) = audit.and_then(|a| sniff::verdict(a, initial_upload)) {
        return Sniff::Block(rule, what);
    }
    Sniff::Pass(sniff::sniff(initial_upload))
}

/// The user's uuid as routing rules name it (`user` conditions), on nodes whose credential is
/// the uuid; `None` elsewhere or when the node has no rules.
pub(crate) fn route_uuid(node: &NodeRt, user: &v2sp_shared::shm::UserRef) -> Option<String> {
    use v2sp_shared::cred::CredKind;
    if node.connect.routing.is_empty()
        || !matches!(node.cfg.cred_kind, CredKind::VlessUuid | CredKind::VmessUuid)
    {
        return None;
    }
    let b = user.secret.get(..16)?;
    let h = hex::encode(b);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// The node's compiled audit rules (`None` when it has none). The control plane validated
/// every pattern; one that still does not compile is left out, never fatal.
fn audit_rules(n: &NodeConfig) -> Option<Arc<AuditRules>> {
    if n.block_rules.is_empty() {
        return None;
    }
    let (rules, skipped) = AuditRules::compile(n.block_rules.iter().map(|b| (b.id, b.pattern.as_str())));
    for s in skipped {
        tracing::warn!(node = n.slot, rule = s.rule_id, entry = %s.entry, "audit rule skipped: {}", s.why);
    }
    (!rules.is_empty()).then(|| Arc::new(rules))
}

/// The relay codec of a TLS connection: TLS around the protocol's codec, or, on a VLESS node
/// with the Vision flow, Vision (padding, then raw once the inner TLS 1.3 allows; tls/vision.rs),
/// which strips the padding from `initial_upload` too. `None`: the client's first bytes were
/// not valid Vision.
#[cfg_attr(not(feature = "vless"), allow(unused_variables, clippy::ptr_arg))]
fn tls_codec(
    flow: &str,
    user: &v2sp_shared::shm::UserRef,
    session: crate::tls::TlsSession,
    inner: Option<Box<dyn crate::proto::StreamCodec>>,
    initial_upload: &mut Vec<u8>,
) -> Option<Box<dyn crate::proto::StreamCodec>> {
    #[cfg(feature = "vless")]
    if flow == crate::proto::vless::vision::FLOW {
        let uuid: [u8; 16] = user.secret.get(..16)?.try_into().ok()?;
        let mut v = crate::tls::vision::VisionCodec::new(session, uuid);
        *initial_upload = v.unpad_initial(initial_upload).ok()?;
        return Some(Box::new(v));
    }
    Some(Box::new(crate::tls::TlsCodec::new(session, inner)))
}

fn admit(core: &Rc<Core>, node: &NodeRt, user: &v2sp_shared::shm::UserRef, ip: IpAddr) -> Option<Admitted> {
    let slot = node.cfg.slot;
    let alive = core.port.borrow().alive_elsewhere(user);
    let known = || core.port.borrow().known_elsewhere(user, ip);
    match core
        .shared
        .devices
        .admit(slot, user.user_id, ip, user.device_limit, alive, &known)
    {
        Admit::No => {
            tracing::debug!(node = slot, user = user.user_id, %ip, "device limit reached");
            return None;
        }
        Admit::Yes(Some(ev)) => {
            core.port.borrow_mut().push_event(ev);
        }
        Admit::Yes(None) => {}
    }
    let ctl = Rc::new(ConnCtl::default());
    let id = core.register(slot, Some(user.user_id), ctl.clone());
    let reg = Registered {
        core: core.clone(),
        id,
        node: slot,
        user_id: user.user_id,
        ip,
    };
    let bucket = core.shared.rates.bucket(
        slot,
        user.user_id,
        effective_bytes_per_sec(node.cfg.speed_limit_mbps, user.speed_limit_mbps),
    );
    Some(Admitted { reg, ctl, bucket })
}

/// A registered connection that belongs to no user: removed from the registry when dropped.
struct Unowned {
    core: Rc<Core>,
    id: u64,
}

impl Unowned {
    fn register(core: &Rc<Core>, node: u16, ctl: Rc<ConnCtl>) -> Self {
        let id = core.register(node, None, ctl);
        Unowned {
            core: core.clone(),
            id,
        }
    }
}

impl Drop for Unowned {
    fn drop(&mut self) {
        self.core.conns.borrow_mut().remove(&self.id);
    }
}

/// Registered connection: removed from the registry and its device reference released (with
/// the Offline event on this core) when dropped, whatever way the task ends.
struct Registered {
    core: Rc<Core>,
    id: u64,
    node: u16,
    user_id: u32,
    ip: IpAddr,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.core.conns.borrow_mut().remove(&self.id);
        if let Some(ev) = self.core.shared.devices.release(self.node, self.user_id, self.ip) {
            self.core.port.borrow_mut().push_event(ev);
        }
    }
}

enum Handshake {
    /// An XHTTP node's connection after TLS (if any): the plaintext read so far, and the TLS
    /// session with its partial record.
    Http(Vec<u8>, Option<(crate::tls::TlsSession, Vec<u8>)>),
    /// The protocol's answer, and the TLS session with the partial record that followed the
    /// header (TLS nodes only).
    Forward(Next, Option<Box<(crate::tls::TlsSession, Vec<u8>)>>),
    /// REALITY: not one of ours; relayed unchanged to the node's dest (this socket).
    Fallback(TcpStream),
    Drop,
}

/// Waits until `s` is readable, then reads into a pooled buffer (taken only now, so a
/// connection waiting for its handshake bytes holds none) and appends what came to `out`.
async fn read_pooled(bufs: &BufPool, s: &TcpStream, out: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        s.readable().await?;
        let mut b = bufs.take();
        let r = s.try_read(&mut b);
        if let Ok(n) = r {
            out.extend_from_slice(b.get(..n).unwrap_or_default());
        }
        bufs.put(b);
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// What one read of a TLS handshake takes at most: a pending handshake holds this (not a
/// 16 KiB record buffer) while it waits for the client's next bytes.
const HANDSHAKE_READ: usize = 2048;

async fn handshake(
    core: &Core,
    node: &NodeRt,
    s: &TcpStream,
    peer: &mut SocketAddr,
    guard: &mut HandshakeGuard,
    deadline: tokio::time::Instant,
) -> Handshake {
    // No buffer is held while the client is silent: reads go through the core's pool, and the
    // TLS stage gets a small one only once the first bytes are there (slowloris, issue 11).
    let mut first: Vec<u8> = Vec::new();
    if node.expects_proxy_header(peer.ip()) {
        let mut head: Vec<u8> = Vec::new();
        loop {
            match read_pooled(&core.bufs, s, &mut head).await {
                Ok(0) | Err(_) => return Handshake::Drop,
                Ok(_) => {}
            }
            match proxy_protocol::parse(&head) {
                Ok(proxy_protocol::Parsed::Incomplete) if head.len() < 4096 => continue,
                Ok(proxy_protocol::Parsed::Done { consumed, source }) => {
                    if let Some(src) = source {
                        *peer = src;
                    }
                    first = head.get(consumed..).unwrap_or_default().to_vec();
                    break;
                }
                _ => return Handshake::Drop,
            }
        }
        // The per-address cap counts the real client, not the balancer.
        if !guard.rekey(peer.ip()) {
            return Handshake::Drop;
        }
    }
    // TLS nodes: the protocol sees the decrypted stream; `carry` is the partial record.
    let mut tls = None;
    let mut carry = Vec::new();
    if let Some(r) = &node.reality {
        use crate::tls::reality::{accept, Outcome};
        let mut buf = vec![0u8; HANDSHAKE_READ];
        // A client still silent just before the deadline is handed to dest too (dest's own
        // timeouts apply, as for any of its visitors).
        let give_up = deadline - Duration::from_millis(100).min(node.handshake / 4);
        match accept(
            r,
            &core.outbound,
            &node.connect,
            s,
            *peer,
            first,
            &mut buf,
            give_up,
            &|key| core.shared.replay.check_and_insert(key),
        )
        .await
        {
            Outcome::Authed(r) => match *r {
                Ok(a) => {
                    first = a.plaintext;
                    carry = a.carry;
                    tls = Some(a.session);
                }
                Err(e) => {
                    tracing::debug!(node = node.cfg.slot, %peer, "REALITY client authenticated, TLS handshake failed: {e:?}");
                    return Handshake::Drop;
                }
            },
            Outcome::Drop => {
                tracing::debug!(node = node.cfg.slot, %peer, "REALITY handshake dropped");
                return Handshake::Drop;
            }
            Outcome::Fallback(dest) => {
                tracing::debug!(node = node.cfg.slot, %peer, "not a REALITY client of this node: relayed to dest");
                return Handshake::Fallback(dest);
            }
        }
    } else if let Some(cfg) = &node.tls {
        // Neither the TLS session nor a read buffer exists before the client's whole first
        // record (its ClientHello) is here: a client trickling it holds only what it sent.
        // (Until it is complete, or is not TLS at all: `accept` says which.)
        while let Ok(None) = crate::tls::deframe::record_len(&first) {
            match read_pooled(&core.bufs, s, &mut first).await {
                Ok(0) | Err(_) => return Handshake::Drop,
                Ok(_) => {}
            }
        }
        let mut buf = vec![0u8; HANDSHAKE_READ];
        // A TLS-ALPN-01 validator (ALPN `acme-tls/1` alone): the challenge certificate, and
        // nothing after the handshake.
        let acme = node
            .acme_alpn
            .as_ref()
            .filter(|_| crate::tls::sni::client_hello_offers_only(&first, crate::tls::acme_alpn::ACME_TLS_1));
        if let Some(acme) = acme {
            if crate::tls::accept(s, acme, first, &mut buf).await.is_ok() {
                tracing::debug!(node = node.cfg.slot, %peer, "TLS-ALPN-01 validation handshake answered");
            }
            return Handshake::Drop;
        }
        match crate::tls::accept(s, cfg, first, &mut buf).await {
            Ok(a) => {
                first = a.plaintext;
                carry = a.carry;
                tls = Some(a.session);
            }
            Err(crate::tls::AcceptError::Wire(_)) => return drain(&core.bufs, s, usize::MAX).await,
            Err(crate::tls::AcceptError::Io) => return Handshake::Drop,
        }
    }
    if node.xhttp.is_some() {
        return Handshake::Http(first, tls.map(|t| (t, carry)));
    }
    // The node's transport (ws, httpupgrade, …) in front of the protocol handshake.
    let mut hs = crate::transport::Chain::new(&node.cfg.transport, node.proto.new_handshake());
    let mut chunk = first;
    loop {
        if !chunk.is_empty() {
            let mut send = Vec::new();
            let step = {
                let port = core.port.borrow();
                let ctx = CoreAuth {
                    port: &**port,
                    node: node.cfg.slot,
                    replay: &*core.shared.replay,
                    now_unix: auth::unix_now(),
                    peer: Some(crate::net::normalise_ip(peer.ip())),
                };
                hs.feed(&chunk, &ctx, &mut send)
            };
            // The deadline holds whatever the transport did with the bytes (a decode that
            // took long, a stage that keeps asking for more).
            if tokio::time::Instant::now() >= deadline {
                return Handshake::Drop;
            }
            // The transport's answer (101) goes out before the protocol's handshake ends.
            if !send.is_empty() {
                let mut wire = Vec::new();
                let sealed = match tls.as_mut() {
                    Some(t) => t.seal(&send, &mut wire).is_ok(),
                    None => {
                        wire = send;
                        true
                    }
                };
                if !sealed || crate::tls::write_all(s, &wire).await.is_err() {
                    return Handshake::Drop;
                }
            }
            match step {
                Ok(Step::NeedMore(_)) => {}
                Ok(Step::Done(next)) => {
                    if let Next::Reject { error, .. } | Next::Fallback { error, .. } = &next {
                        tracing::debug!(node = node.cfg.slot, %peer, "protocol handshake refused: {error}");
                    }
                    return Handshake::Forward(next, tls.map(|t| Box::new((t, carry))));
                }
                Err(e) => {
                    tracing::debug!(node = node.cfg.slot, %peer, "transport handshake refused: {e}");
                    return drain(&core.bufs, s, usize::MAX).await;
                }
            }
        }
        chunk.clear();
        match tls.as_mut() {
            None => match read_pooled(&core.bufs, s, &mut chunk).await {
                Ok(0) | Err(_) => return Handshake::Drop,
                Ok(_) => {}
            },
            Some(t) => {
                match read_pooled(&core.bufs, s, &mut carry).await {
                    Ok(0) | Err(_) => return Handshake::Drop,
                    Ok(_) => {}
                }
                let used = match t.open(&carry, &mut chunk) {
                    Ok(u) => u,
                    Err(_) => return drain(&core.bufs, s, usize::MAX).await,
                };
                carry.drain(..used.min(carry.len()));
                if carry.len() > crate::tls::deframe::HEADER_LEN + crate::tls::deframe::MAX_FRAGMENT {
                    return drain(&core.bufs, s, usize::MAX).await;
                }
                // Post-handshake messages (tickets, key updates) go out as they come.
                let mut out = Vec::new();
                t.pending_output(&mut out);
                if !out.is_empty() && crate::tls::write_all(s, &out).await.is_err() {
                    return Handshake::Drop;
                }
            }
        }
    }
}

/// Reads and discards until EOF, an error, or `limit` bytes (the caller bounds it in time);
/// a pooled buffer is taken per read, so a rejected client that goes silent holds none.
async fn drain(bufs: &BufPool, s: &TcpStream, limit: usize) -> Handshake {
    let mut left = limit;
    for _ in 0..1_000_000 {
        if left == 0 {
            break;
        }
        if s.readable().await.is_err() {
            break;
        }
        let mut b = bufs.take();
        let room = b.len().min(left);
        let r = s.try_read(b.get_mut(..room).unwrap_or_default());
        bufs.put(b);
        match r {
            Ok(0) => break,
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    Handshake::Drop
}

/// REALITY fallback: client and dest relayed unchanged, counted for nobody, unlimited.
async fn fallback_relay(core: &Rc<Core>, node: &NodeRt, client: &TcpStream, dest: &TcpStream) {
    let end = fallback::relay_unowned(core, node, client, dest, Vec::new(), None).await;
    tracing::trace!(node = node.cfg.slot, ?end, "REALITY fallback ended");
}

/// A connection past handshake, admission, reply and connect: what the relay phase needs.
struct Opened {
    node: Rc<NodeRt>,
    client: TcpStream,
    upstream: TcpStream,
    /// A proxy outbound's framing towards `upstream` (Shadowsocks), if any.
    up_codec: Option<Box<dyn crate::proto::UpstreamCodec>>,
    codec: Option<Box<dyn crate::proto::StreamCodec>>,
    pending_up: Vec<u8>,
    ctl: Rc<ConnCtl>,
    bucket: Arc<crate::limits::gcra::Bucket>,
    user_id: u32,
    /// Registry entry and device reference (and the core), released when the connection ends.
    reg: Registered,
}

/// The connection task. Two phases: the setup (PROXY header, handshake, TLS accept, admission,
/// reply, connect; ~4 KiB of future state) runs in its own allocation, freed once it ends,
/// so an established connection's task holds only the relay's state.
fn handle_conn(
    core: Rc<Core>,
    node: Rc<NodeRt>,
    client: TcpStream,
    peer: SocketAddr,
    hs_guard: HandshakeGuard,
) -> impl std::future::Future<Output = ()> {
    let setup = Box::pin(open(core, node, client, peer, hs_guard));
    async move {
        let Some(mut c) = setup.await else {
            return;
        };
        let core = &*c.reg.core;
        let slot = c.node.cfg.slot;
        let meter = ConnMeter {
            core,
            node: slot,
            user_id: c.user_id,
        };
        let env = RelayEnv {
            bufs: &core.bufs,
            pipes: &core.pipes,
            meter: &meter,
            bucket: &c.bucket,
            timeouts: c.node.relay,
            ctl: &c.ctl,
            splice: core.shared.splice,
            uring: core.uring.as_ref(),
        };
        let pending_up = std::mem::take(&mut c.pending_up);
        let end = relay::relay_upstream(
            &env,
            &c.client,
            &c.upstream,
            pending_up,
            c.codec.take(),
            c.up_codec.take(),
        )
        .await;
        tracing::trace!(node = slot, ?end, "connection ended");
    }
}

async fn open(
    core: Rc<Core>,
    node: Rc<NodeRt>,
    mut client: TcpStream,
    mut peer: SocketAddr,
    mut hs_guard: HandshakeGuard,
) -> Option<Opened> {
    crate::net::tune_stream(&client);
    // One deadline for the whole handshake, including draining a rejected client.
    let deadline = tokio::time::Instant::now() + node.handshake;
    let hs = tokio::time::timeout_at(
        deadline,
        handshake(&core, &node, &client, &mut peer, &mut hs_guard, deadline),
    );
    let (next, tls) = match hs.await {
        Ok(Handshake::Forward(n, tls)) => (n, tls),
        Ok(Handshake::Fallback(dest)) => {
            hs_guard.relaying_unauthenticated();
            fallback_relay(&core, &node, &client, &dest).await;
            return None;
        }
        Ok(Handshake::Drop) => return None,
        Ok(Handshake::Http(first, tls)) => {
            xhttp::serve(core, node, client, peer, hs_guard, tls, first).await;
            return None;
        }
        Err(_) => {
            tracing::debug!(node = node.cfg.slot, %peer, "handshake deadline passed");
            return None;
        }
    };
    let (dest, user, mut initial_upload, mut reply, mut codec) = match next {
        Next::Forward {
            dest,
            user,
            initial_upload,
            reply,
            codec,
        } => (dest, user, initial_upload, reply, codec),
        Next::Reject {
            policy: RejectPolicy::Close,
            ..
        } => return None,
        Next::Reject {
            policy: RejectPolicy::DrainUntilTimeout,
            ..
        } => {
            let _ = tokio::time::timeout_at(deadline, drain(&core.bufs, &client, usize::MAX)).await;
            return None;
        }
        Next::Reject {
            policy: RejectPolicy::DrainThenClose(limit),
            ..
        } => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let _ = tokio::time::timeout_at(deadline, drain(&core.bufs, &client, limit)).await;
            return None;
        }
        Next::Fallback { consumed, .. } => {
            hs_guard.relaying_unauthenticated();
            fallback::serve(&core, &node, client, peer, consumed, tls, deadline).await;
            return None;
        }
        Next::UdpOverStream {
            user,
            reply,
            initial,
            codec,
            framing,
        } => {
            drop(hs_guard);
            udp_stream::serve(
                core.clone(),
                node.clone(),
                udp_stream::Client::Tcp(&client),
                peer,
                user,
                reply,
                initial,
                codec,
                framing,
                tls,
            )
            .await;
            return None;
        }
    };
    let slot = node.cfg.slot;
    let ip = crate::net::normalise_ip(peer.ip());
    let Admitted { reg, ctl, bucket } = admit(&core, &node, &user, ip)?;
    drop(hs_guard);
    // TLS: the reply is sealed, and TLS wraps the protocol's codec (if any) for the relay.
    let mut pending_up = Vec::new();
    if let Some((mut session, carry)) = tls.map(|b| *b) {
        let mut wire = Vec::new();
        if session.seal(&reply, &mut wire).is_err() {
            return None;
        }
        reply = wire;
        pending_up = carry;
        codec = Some(tls_codec(
            &node.cfg.flow,
            &user,
            session,
            codec.take(),
            &mut initial_upload,
        )?);
    }
    if !reply.is_empty() && client.write_all(&reply).await.is_err() {
        return None;
    }
    drop(reply);
    let sniffed = match sniff_first(
        &node,
        &dest,
        &mut client,
        &mut codec,
        &mut pending_up,
        &mut initial_upload,
    )
    .await
    {
        Sniff::Pass(s) => s,
        Sniff::Block(rule, what) => {
            tracing::info!(node = slot, user = user.user_id, %dest, sniffed = %what, rule, "destination blocked by audit rule");
            return None;
        }
        Sniff::Drop => return None,
    };
    let uuid = route_uuid(&node, &user);
    let ctx = RouteCtx {
        node_tag: &node.cfg.tag,
        user_id: user.user_id,
        user_uuid: uuid.as_deref(),
        source: Some(ip),
        sniffed_protocol: sniffed.as_ref().map(|s| s.protocol),
        sniffed_domain: sniffed.as_ref().and_then(|s| s.domain.as_deref()),
    };
    let connect = core.outbound.open(&dest, &node.connect, &ctx);
    let Upstream {
        stream: mut upstream,
        codec: mut up_codec,
    } = tokio::select! {
        r = connect => match r {
            Ok(s) => s,
            Err(OutboundError::Blocked(d, rule)) => {
                tracing::info!(node = slot, user = user.user_id, dest = %d, rule, "destination blocked by audit rule");
                return None;
            }
            Err(OutboundError::Routed(d, rule)) => {
                tracing::info!(node = slot, user = user.user_id, dest = %d, rule = %rule, "destination routed to a blackhole");
                return None;
            }
            Err(e) => {
                tracing::debug!(node = slot, %dest, "outbound failed: {e}");
                return None;
            }
        },
        _ = ctl.cancelled() => return None,
    };
    let meter = ConnMeter {
        core: &core,
        node: slot,
        user_id: user.user_id,
    };
    if !initial_upload.is_empty() {
        let acct = relay::account::Account {
            meter: &meter,
            bucket: &bucket,
            ctl: Some(&ctl),
        };
        // Counted as the plaintext the user sent, whatever a proxy outbound makes of it.
        if let Some(c) = up_codec.as_mut() {
            let mut wire = Vec::new();
            if c.seal(&initial_upload, &mut wire).is_err() {
                return None;
            }
            let sent = acct.send_up(initial_upload.len(), upstream.write_all(&wire));
            if sent.await.is_err() {
                return None;
            }
        } else {
            let sent = acct.send_up(initial_upload.len(), upstream.write_all(&initial_upload));
            if sent.await.is_err() {
                return None;
            }
        }
    }
    drop(initial_upload);
    Some(Opened {
        node,
        client,
        upstream,
        up_codec,
        codec,
        pending_up,
        ctl,
        bucket,
        user_id: user.user_id,
        reg,
    })
}

#[cfg(test)]
mod replay_window_tests {
    /// A hello accepted at the early edge of its timestamp window must still be remembered at
    /// the late edge.
    #[test]
    fn replay_window_covers_the_whole_accepted_skew() {
        #[cfg(feature = "shadowsocks")]
        const {
            assert!(super::REPLAY_WINDOW_S >= 2 * crate::proto::ss::ss2022::MAX_TIME_DIFF_S)
        };
        #[cfg(feature = "vmess")]
        const {
            assert!(super::REPLAY_WINDOW_S >= 2 * crate::proto::vmess::crypto::MAX_SKEW_S)
        };
    }
}

#[cfg(all(test, feature = "hysteria2"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod quic_registration_tests {
    use super::*;
    use crate::proto::quic::QuicInbound as _;

    fn node(hysteria2: serde_json::Value) -> NodeConfig {
        serde_json::from_value(serde_json::json!({
            "slot": 1, "tag": "hy2", "listen_ip": "", "port": 443, "protocol": "hysteria2",
            "cred_kind": "Sha256Password", "hysteria2": hysteria2,
        }))
        .unwrap()
    }

    #[test]
    fn hysteria2_obfuscation_from_the_node_settings() {
        use crate::proto::hysteria2::salamander::Salamander;
        assert!(hysteria2(&node(serde_json::Value::Null))
            .unwrap()
            .obfuscation()
            .is_none());
        assert!(hysteria2(&node(serde_json::json!({"obfs_password": "unused"})))
            .unwrap()
            .obfuscation()
            .is_none());
        let s = hysteria2(&node(
            serde_json::json!({"obfs": "salamander", "obfs_password": "pw"}),
        ))
        .unwrap()
        .obfuscation()
        .unwrap();
        assert_eq!(s.fingerprint(), Salamander::new(b"pw").fingerprint());
        assert_ne!(s.fingerprint(), Salamander::new(b"pW").fingerprint());
        let err = hysteria2(&node(serde_json::json!({"obfs": "salamander"})))
            .err()
            .unwrap();
        assert!(err.contains("password"), "{err}");
        let err = hysteria2(&node(serde_json::json!({"obfs": "xor", "obfs_password": "pw"})))
            .err()
            .unwrap();
        assert!(err.contains("not supported"), "{err}");
    }
}
