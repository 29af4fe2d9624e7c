//! QUIC nodes (Hysteria 2, TUIC): one quinn endpoint per core on an `SO_REUSEPORT` UDP socket,
//! driven by the core's own `current_thread` runtime (quinn's tokio runtime spawns its
//! endpoint and connection drivers there, so a connection lives and dies on the core that
//! accepted it). The protocol is a [`QuicInbound`] from `proto/` (which stream is what, how
//! replies are framed); everything else is here, the same for every QUIC protocol.
//!
//! A connection's life:
//! 1. QUIC handshake (TLS 1.3 with the node's certificate store and the protocol's ALPN),
//!    then the protocol's own server streams (HTTP/3's control stream for Hysteria 2).
//! 2. Client streams are read until their head says what they are. Until one authenticates
//!    a user (the key found in the node's table, the proof checked by the protocol, the device
//!    admitted by the same `admit` as every other protocol) nothing is relayed: streams that
//!    carry traffic wait, and the connection is closed when the node's handshake timeout runs
//!    out. The whole phase counts against the handshake limits, like a TCP handshake, and an
//!    unauthenticated connection costs little whatever its client sends: QUIC flow control
//!    gives it [`PRE_AUTH_WINDOW`] bytes of stream data and [`MAX_PENDING`] streams of each
//!    kind, its heads may hold [`PRE_AUTH_BYTES`] in all, and its datagrams are read at once
//!    (the first [`EARLY_DATAGRAMS`] kept for after the authentication, the rest dropped) so
//!    that quinn's datagram buffer never fills. The windows open once a user is admitted.
//! 3. Then: a `Connect` stream is relayed to its destination through the node's outbound
//!    (audit rules, private-destination refusal, timeouts), with the user's speed limit and
//!    exact counting: upload counted once written to the destination, download once quinn
//!    took it for the client. UDP packets (datagrams, or streams in TUIC's `quic` mode) go
//!    through one outbound socket per client session ([`UdpRelay`]), replies back the way
//!    the session came, counted and limited like every other UDP relay.
//!
//! The connection is registered with the core like any user connection, so a kick, the
//! user's removal, the node's removal or the idle sweep close it, and every stream with it.
//!
//! A node whose protocol asks for obfuscation (Hysteria 2's Salamander) runs its endpoint on
//! a [`SalamanderSocket`] (every datagram salted and scrambled in user space, below QUIC); a
//! node without gets quinn's own socket, untouched. Above either, a [`SteeringSocket`] hands
//! packets of another core's connection to that core (a client that hopped ports or was
//! rebound by its NAT lands on any core's socket; `steer`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use socket2::SockRef;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;
use v2sp_shared::dpconfig::NodeConfig;
use v2sp_shared::shm::UserRef;

use super::brutal::{RateSwitchFactory, SendRate};
use super::salamander_socket::SalamanderSocket;
use super::steer::{CidKey, CoreCidGenerator, SteeringSocket};
use super::{admit, Admitted, ConnMeter, Core, HandshakeGuard, InboundProtocol, NodeRt, Registered};
use crate::limits::gcra::Bucket;
use crate::proto::quic::salamander::{Salamander, SALT_LEN};
use crate::proto::quic::{Congestion, ConnState, Packet, PacketPath, QuicInbound, StreamHead};
use crate::proto::{Destination, Step, StreamHandshake, WireError};
use crate::relay::account::Account;
use crate::relay::ConnCtl;

/// Most bytes one read takes from either side (one allocation travels per chunk).
const READ_CHUNK: usize = 64 * 1024;
/// Streams of one connection (of each direction) open before it authenticated: what QUIC
/// flow control lets the client open; more streams get credit once it is admitted.
const MAX_PENDING: u32 = 16;
/// Connection-level receive window before authentication (stream data quinn buffers).
const PRE_AUTH_WINDOW: u32 = 64 * 1024;
/// Connection-level receive window once authenticated (the Hysteria reference's 20 MiB).
const AUTHED_WINDOW: u32 = 20 << 20;
/// Bytes the streams of one connection may hold before authentication (heads, and the first
/// payload that came with a request); a stream that would go over is refused. A legitimate
/// client sends its authentication and a few requests with their first writes.
const PRE_AUTH_BYTES: usize = 64 * 1024;
/// Largest read of a stream before authentication (heads are small; the budget above is
/// counted in these steps).
const PRE_AUTH_CHUNK: usize = 4 * 1024;
/// Datagrams kept from before the authentication (TUIC clients may send a UDP packet
/// alongside it); later ones are dropped, as UDP may.
const EARLY_DATAGRAMS: usize = 16;
/// Stream-borne packets and dissociations queued for the connection's loop (more are
/// dropped, as UDP may).
const CMD_QUEUE: usize = 256;
/// Replies sent on their own streams (TUIC `quic` mode) at once; more are dropped.
const MAX_REPLY_STREAMS: u32 = 64;
/// Web requests (Hysteria 2's masquerade) one connection gets answered; later ones are
/// rejected (H3_REQUEST_REJECTED: a browser retries on a new connection).
const MASQ_REQUESTS: u32 = 100;
/// Web requests of one connection answered at once; more wait for their turn.
const MASQ_CONCURRENT: usize = 4;
/// How long web requests may keep an unauthenticated connection: each one served moves the
/// connection's deadline to the node's handshake timeout after it, never beyond this after
/// the connection began. A browser gets a page and its resources; a prober cannot hold a
/// connection (and its handshake place) longer than this without authenticating.
const MASQ_LIFETIME: Duration = Duration::from_secs(30);

/// The protocol handle of a QUIC node: it has no TCP handshake (the node is served by
/// [`accept_loop`] instead of a TCP listener).
pub(super) struct QuicProto(pub(super) Rc<dyn QuicInbound>);

impl InboundProtocol for QuicProto {
    fn new_handshake(&self) -> Box<dyn StreamHandshake> {
        Box::new(NotTcp)
    }
    fn quic(&self) -> Option<Rc<dyn QuicInbound>> {
        Some(self.0.clone())
    }
}

struct NotTcp;

impl StreamHandshake for NotTcp {
    fn feed(&mut self, _data: &[u8], _ctx: &dyn crate::proto::AuthContext) -> Result<Step, WireError> {
        Err(WireError::Unsupported("this protocol is served over QUIC only"))
    }
}

/// quinn's default upper bound for path MTU discovery (`MtuDiscoveryConfig`): QUIC packets
/// up to this size, so that a datagram fits a 1500-byte path over IPv6.
const PLAIN_MTU_UPPER_BOUND: u16 = 1452;

/// What a QUIC node's endpoint is built from: quinn's server config and the node's packet
/// obfuscation.
#[derive(Clone)]
pub(super) struct QuicSettings {
    pub(super) server: quinn::ServerConfig,
    /// Salamander on every datagram, or `None` (quinn's socket as is).
    pub(super) obfs: Option<Salamander>,
    /// What each connection's transport config is built from ([`QuicSettings::for_connection`]).
    transport: Transport,
    /// What answers web requests that are not the protocol's (Hysteria 2's masquerade);
    /// `None`: the protocol's own refusal ([`QuicInbound::auth_refused`], a 404).
    #[cfg(feature = "hysteria2")]
    masq: Option<Arc<super::masq::Masq>>,
}

/// The node's transport settings (quinn's `TransportConfig` cannot be cloned, and each
/// connection needs its own: [`QuicSettings::for_connection`]).
#[derive(Clone)]
struct Transport {
    max_uni_streams: u32,
    /// Path MTU discovery's upper bound, when not quinn's default.
    mtu_upper_bound: Option<u16>,
    /// The node's congestion controller.
    congestion: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync>,
}

impl Transport {
    /// The Hysteria reference's QUIC defaults once a user is admitted (stream window 8 MiB,
    /// connection window 20 MiB, idle timeout 30 s), the pre-authentication bounds, and
    /// `congestion` as the controller.
    fn config(
        &self,
        congestion: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync>,
    ) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(Some(quinn::IdleTimeout::from(VarInt::from_u32(30_000))));
        t.stream_receive_window(VarInt::from_u32(8 << 20));
        // Until a user is admitted ([`serve_conn`] opens them then).
        t.receive_window(VarInt::from_u32(PRE_AUTH_WINDOW));
        t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_PENDING));
        t.max_concurrent_uni_streams(VarInt::from_u32(self.max_uni_streams.min(MAX_PENDING)));
        // Datagrams carry UDP; what queues unread is bounded (over it quinn drops the oldest).
        t.datagram_receive_buffer_size(Some(1 << 20));
        t.congestion_controller_factory(congestion);
        if let Some(upper) = self.mtu_upper_bound {
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(upper);
            t.mtu_discovery_config(Some(mtu));
        }
        t
    }
}

impl QuicSettings {
    /// The server config of one connection: the node's, with a congestion controller that
    /// starts as the node's and switches to Brutal when the driver puts a rate into `rate`
    /// ([`RateSwitch`](super::brutal::RateSwitch)). quinn builds the controller during the
    /// handshake from the transport config's factory, which is shared by every connection of
    /// a config and told nothing about the connection: the only way to hand a controller its
    /// connection's cell is a factory, hence a config, per connection (`Incoming::accept_with`).
    /// That costs a few small allocations next to a TLS handshake.
    fn for_connection(&self, rate: Arc<SendRate>) -> Arc<quinn::ServerConfig> {
        let mut sc = self.server.clone();
        let cc = Arc::new(RateSwitchFactory {
            fallback: self.transport.congestion.clone(),
            rate,
        });
        sc.transport_config(Arc::new(self.transport.config(cc)));
        Arc::new(sc)
    }
}

/// The QUIC settings of a node: TLS 1.3 from the node's certificate store with the protocol's
/// ALPN, its congestion control, connection migration (steered to the connection's core), the
/// transport of [`Transport::config`], and the protocol's packet
/// obfuscation.
pub(super) fn quic_settings(n: &NodeConfig, q: &dyn QuicInbound) -> Result<QuicSettings, String> {
    let obfs = q.obfuscation();
    let name = n.protocol.as_str();
    let tls = n.tls.as_ref().ok_or_else(|| {
        format!("{name} needs TLS settings (QUIC has no plaintext mode; CertMode none cannot serve it)")
    })?;
    if tls.reality.is_some() {
        return Err(format!("{name} cannot be served with REALITY"));
    }
    let mut tls = tls.clone();
    tls.alpn = q
        .alpn()
        .into_iter()
        .map(|a| String::from_utf8_lossy(&a).into_owned())
        .collect();
    let rustls = crate::tls::quic_server_config(&tls)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls)
        .map_err(|e| format!("QUIC TLS config: {e}"))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // A client's new address (a Hysteria 2 port hop, a NAT rebinding) is taken after path
    // validation; its packets reach the connection's core through `steer` whatever socket
    // the kernel gives them to.
    sc.migration(true);
    let congestion: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> = match q.congestion() {
        Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
        Congestion::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
        Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
    };
    let transport = Transport {
        max_uni_streams: q.max_uni_streams(),
        // Each datagram is 8 bytes longer than its QUIC packet: probe for 8 bytes less, so
        // the datagrams on the path stay within the same bound as a plain node's (quinn's
        // initial 1200 becomes 1208 on the wire, still far below IPv6's minimum of 1280).
        mtu_upper_bound: obfs.as_ref().map(|_| PLAIN_MTU_UPPER_BOUND - SALT_LEN as u16),
        congestion,
    };
    // The endpoint's own config (each connection is accepted with its own copy of it).
    sc.transport_config(Arc::new(transport.config(transport.congestion.clone())));
    #[cfg(feature = "hysteria2")]
    let masq = match n.hysteria2.as_ref().and_then(|h| h.masquerade.as_ref()) {
        Some(m) => Some(Arc::new(super::masq::Masq::new(m)?)),
        None => None,
    };
    Ok(QuicSettings {
        server: sc,
        obfs,
        transport,
        #[cfg(feature = "hysteria2")]
        masq,
    })
}

/// Whether two settings of a node put the same bytes on the wire below QUIC (an endpoint's
/// obfuscation is fixed with its socket: a change needs a new endpoint).
pub(super) fn same_obfuscation(a: Option<&QuicSettings>, b: Option<&QuicSettings>) -> bool {
    let key = |q: Option<&QuicSettings>| q.and_then(|q| q.obfs.as_ref()).map(Salamander::fingerprint);
    key(a) == key(b)
}

/// quinn's socket for `sock`, with Salamander on it when the node has it.
fn quic_socket(
    sock: std::net::UdpSocket,
    obfs: Option<&Salamander>,
) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
    use quinn::Runtime;
    match obfs {
        Some(o) => SalamanderSocket::wrap(sock, o.clone()),
        None => quinn::TokioRuntime.wrap_udp_socket(sock),
    }
}

/// The stateless-reset key every QUIC endpoint of this process uses: the shm directory's
/// (`v2sp_shared::shm::quic_reset_key`), so that a successor's resets carry the tokens the
/// predecessor's clients hold and end their connections at once. Unset (tests without a
/// shm directory): quinn's random key per endpoint.
static RESET_KEY: std::sync::OnceLock<[u8; v2sp_shared::shm::RESET_KEY_LEN]> = std::sync::OnceLock::new();

/// Sets the process's QUIC reset key (once, at start, before any node is served).
pub fn set_quic_reset_key(key: [u8; v2sp_shared::shm::RESET_KEY_LEN]) {
    let _ = RESET_KEY.set(key);
}

/// The key of the connection ids of this process: derived from the shared reset key, so that
/// a successor recognises (and resets) its predecessor's ids; without one (tests without a shm
/// directory) random, but the same for every core of the process, which steering needs.
fn cid_key() -> CidKey {
    static RANDOM: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    let mut key = [0u8; 16];
    match RESET_KEY.get() {
        Some(k) => {
            let hmac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, k);
            let tag = aws_lc_rs::hmac::sign(&hmac, b"v2sp quic connection id key");
            for (d, s) in key.iter_mut().zip(tag.as_ref()) {
                *d = *s;
            }
        }
        None => key = *RANDOM.get_or_init(rand::random),
    }
    CidKey::new(key)
}

/// The endpoint config of `core`: the shared reset key, and connection ids that name the core
/// (`steer`), checked with a key derived from the reset key. quinn drops a short-header packet
/// whose connection id its generator does not validate before it considers a reset, and the
/// default generator's key is random per endpoint: the successor must check ids the way the
/// predecessor made them.
fn endpoint_config(core: usize, key: &CidKey) -> quinn::EndpointConfig {
    let mut cfg = match RESET_KEY.get() {
        Some(k) => quinn::EndpointConfig::new(Arc::new(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            k,
        ))),
        None => quinn::EndpointConfig::default(),
    };
    let key = key.clone();
    cfg.cid_generator(move || Box::new(CoreCidGenerator::new(key.clone(), core)));
    cfg
}

/// This core's endpoint for a node at `addr`, and a duplicate of its socket (for a successor
/// process on upgrade: the raw descriptor, since obfuscation is applied in user space and the
/// successor wraps it again from its own settings). Its socket steers packets of other cores'
/// connections to them (`steer`), above the obfuscation.
pub(super) fn endpoint(
    addr: SocketAddr,
    cfg: QuicSettings,
    core: &Core,
) -> Result<(quinn::Endpoint, std::os::fd::OwnedFd), String> {
    let sock = crate::net::udp_socket_std(addr).map_err(|e| format!("UDP listen on {addr}: {e}"))?;
    let dup = sock
        .try_clone()
        .map_err(|e| format!("UDP socket on {addr}: {e}"))?
        .into();
    let sock = quic_socket(sock, cfg.obfs.as_ref()).map_err(|e| format!("UDP socket on {addr}: {e}"))?;
    // The core slot, not the index: ids of a predecessor and a successor differ (`quic_handoff`).
    let index = usize::from(core.index)
        + usize::from(core.shared.core_base.load(std::sync::atomic::Ordering::Relaxed));
    let key = cid_key();
    let sock = SteeringSocket::wrap(sock, index, key.clone(), core.shared.steering.group(addr));
    let ep = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(index, &key),
        Some(cfg.server),
        sock,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| format!("QUIC endpoint on {addr}: {e}"))?;
    Ok((ep, dup))
}

/// A successor took the node's UDP socket: stop reading it (move to a private socket on the
/// same address family, port 0, obfuscated like the old one so that nothing this endpoint
/// still sends leaves in the clear) and close this endpoint's connections. Their clients'
/// next packets reach the successor, which does not know them and answers with a stateless
/// reset; the clients then dial again and are served there.
pub(super) fn detach(ep: &quinn::Endpoint, close_code: u32, obfs: Option<&Salamander>) {
    ep.set_server_config(None);
    let local = match ep.local_addr() {
        Ok(a) if a.is_ipv6() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
        _ => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
    };
    match std::net::UdpSocket::bind(local).and_then(|s| {
        s.set_nonblocking(true)?;
        ep.rebind_abstract(quic_socket(s, obfs)?)
    }) {
        Ok(()) => {}
        Err(e) => tracing::warn!("QUIC endpoint keeps the shared socket after the hand-over: {e}"),
    }
    ep.close(code(close_code), b"server upgrade");
}

/// A successor took the node's UDP socket and hands back the packets of this endpoint's
/// connections (`quic_handoff`): stop reading the socket (sending through it goes on, so
/// replies leave from the node's port) and take no new connections.
pub(super) fn park(ep: &quinn::Endpoint, group: &super::steer::SteerGroup) {
    ep.set_server_config(None);
    group.park();
}

/// The node's obfuscation changed and a new endpoint serves its address: close this one's
/// connections (quinn drops the socket when they have drained and no handle is left).
pub(super) fn retire(ep: &quinn::Endpoint, close_code: u32) {
    ep.set_server_config(None);
    ep.close(code(close_code), b"obfuscation changed");
}

/// Unauthenticated QUIC connections one node may have on one core, as a share of the
/// worker's handshake cap (`MaxHandshakes`): one costs up to ~270 KiB (quinn's state, the
/// pre-authentication window and budget, early datagrams; measured by
/// `quic_adversarial.rs`) against ~25 KiB for a pending TLS handshake, so it gets an eighth
/// of the places (512 by default).
const QUIC_SHARE_OF_HANDSHAKES: u32 = 8;

/// A node's unauthenticated QUIC connections on one core, oldest first. When they fill their
/// places, a new connection takes the place of the oldest: a legitimate client authenticates
/// within a round trip, so the oldest is the one most likely to be an attacker holding its
/// place until the deadline, and a flood cannot lock clients out (the attacker has to keep
/// paying for new handshakes to hold on).
#[derive(Default)]
struct Unauthenticated {
    count: Cell<u32>,
    order: RefCell<std::collections::VecDeque<Rc<Place>>>,
}

/// One connection's place: `evict` tells it to go; `done` once it authenticated or ended.
#[derive(Default)]
struct Place {
    evict: ConnCtl,
    done: Cell<bool>,
}

impl Unauthenticated {
    /// A place for a new connection: free, or the oldest one's; `None` with no cap room and
    /// nobody to evict.
    fn take(self: &Rc<Self>, cap: u32) -> Option<PlaceGuard> {
        let mut order = self.order.borrow_mut();
        if cap != 0 && self.count.get() >= cap {
            loop {
                let oldest = order.pop_front()?;
                if !oldest.done.get() {
                    oldest.evict.cancel();
                    break;
                }
            }
        }
        // Entries of connections that finished in between are dropped now and then, so the
        // queue stays within a few times the cap.
        if order.len() > 4 * (cap.max(64) as usize) {
            order.retain(|p| !p.done.get());
        }
        let place = Rc::new(Place::default());
        order.push_back(place.clone());
        self.count.set(self.count.get() + 1);
        Some(PlaceGuard {
            all: self.clone(),
            place,
        })
    }
}

/// Holds a place until dropped (authenticated, or the connection ended).
struct PlaceGuard {
    all: Rc<Unauthenticated>,
    place: Rc<Place>,
}

impl Drop for PlaceGuard {
    fn drop(&mut self) {
        self.place.done.set(true);
        self.all.count.set(self.all.count.get().saturating_sub(1));
    }
}

/// Accepts connections until `stop`; then refuses new ones (open connections stay until their
/// registry entry closes them: node removal, drain, shutdown).
pub(super) async fn accept_loop(
    core: Rc<Core>,
    live: Rc<RefCell<Rc<NodeRt>>>,
    ep: quinn::Endpoint,
    stop: Rc<ConnCtl>,
) {
    let unauthenticated = Rc::new(Unauthenticated::default());
    loop {
        let incoming = tokio::select! {
            i = ep.accept() => i,
            _ = stop.cancelled() => None,
        };
        let Some(incoming) = incoming else { break };
        let Some(guard) = core.begin_handshake(incoming.remote_address().ip(), true) else {
            incoming.refuse();
            continue;
        };
        let (per_worker, _) = core.handshake_limits.get();
        let Some(place) = unauthenticated.take(per_worker.div_ceil(QUIC_SHARE_OF_HANDSHAKES)) else {
            incoming.refuse();
            continue;
        };
        let node = live.borrow().clone();
        tokio::task::spawn_local(serve_conn(core.clone(), node, incoming, (guard, place)));
    }
    ep.set_server_config(None);
}

fn code(c: u32) -> VarInt {
    VarInt::from_u32(c)
}

/// A connection's fixed send rate: `ceiling` (what the protocol allows, > 0), lowered to the
/// user's speed limit `limit` when there is one (0 = none). Brutal sends at this rate
/// whatever the path says, so it must never exceed what the user may use.
fn fixed_rate(ceiling: u64, limit: u64) -> u64 {
    match limit {
        0 => ceiling,
        l => ceiling.min(l),
    }
}

/// What stream tasks send to their connection's loop.
enum Cmd {
    /// A UDP packet that came on its own stream, or whose domain was resolved off the loop.
    Packet(Packet, PacketPath),
    Dissociate(u32),
    /// A failed authentication the protocol answers by closing the connection.
    Close,
}

/// What the connection's stream tasks share.
struct ConnShared {
    core: Rc<Core>,
    node: Rc<NodeRt>,
    proto: Rc<dyn QuicInbound>,
    conn: quinn::Connection,
    ip: IpAddr,
    /// When the connection began (after its QUIC handshake).
    started: Instant,
    /// Authentication must succeed by then (moved on by web requests, up to
    /// [`MASQ_LIFETIME`] after `started`).
    deadline: Cell<Instant>,
    /// Web requests answered so far, and the places to answer them at once.
    web_requests: Cell<u32>,
    web_slots: tokio::sync::Semaphore,
    /// Set by the stream that authenticated the connection.
    env: RefCell<Option<Rc<StreamEnv>>>,
    /// The registry entry and device reference, taken by the connection's loop.
    reg: RefCell<Option<Registered>>,
    /// True once `env` is set (every waiter wakes: the loop and streams that wait).
    authed: tokio::sync::watch::Sender<bool>,
    /// Streams reading their head before authentication.
    pending: Cell<u32>,
    /// Bytes held by streams read before authentication (released with their
    /// [`PendingHead`]).
    pre_auth_bytes: Cell<usize>,
    cmds: mpsc::Sender<Cmd>,
    /// The connection's fixed send rate, read by its congestion controller (0: the node's
    /// controller).
    rate: Arc<SendRate>,
    /// The rate the protocol allows the connection once authenticated (the client's
    /// declaration within the node's cap), before the user's speed limit; 0 = none.
    rate_ceiling: Cell<u64>,
}

impl ConnShared {
    fn env(&self) -> Option<Rc<StreamEnv>> {
        self.env.borrow().clone()
    }

    /// Sets the connection's send rate from its ceiling and the user's speed limit (which
    /// the panel may change while the connection lives): never above either.
    fn apply_rate(&self, bucket: &Bucket) {
        let ceiling = self.rate_ceiling.get();
        if ceiling != 0 {
            self.rate.set(fixed_rate(ceiling, bucket.rate()));
        }
    }

    /// The connection's user, once it authenticated; `None` when the deadline passes first.
    async fn wait_auth(&self) -> Option<Rc<StreamEnv>> {
        if let Some(e) = self.env() {
            return Some(e);
        }
        let mut rx = self.authed.subscribe();
        tokio::select! {
            _ = rx.wait_for(|a| *a) => self.env(),
            _ = tokio::time::sleep_until(self.deadline.get()) => None,
        }
    }

    /// A web request keeps the unauthenticated connection for the node's handshake timeout
    /// more, within [`MASQ_LIFETIME`] of its start.
    fn extend_deadline(&self) {
        let until = (Instant::now() + self.node.handshake).min(self.started + MASQ_LIFETIME);
        if until > self.deadline.get() {
            self.deadline.set(until);
        }
    }

    fn send_cmd(&self, c: Cmd) {
        // Full queue: dropped, as UDP may (a Close is retried by the deadline anyway).
        let _ = self.cmds.try_send(c);
    }
}

/// Counts a stream read before authentication, and the bytes it holds; released when
/// dropped.
struct PendingHead<'a> {
    sh: &'a ConnShared,
    bytes: usize,
}

impl PendingHead<'_> {
    /// Takes `n` more bytes from the connection's budget; false when it is spent.
    fn hold(&mut self, n: usize) -> bool {
        let total = self.sh.pre_auth_bytes.get() + n;
        if total > PRE_AUTH_BYTES {
            return false;
        }
        self.sh.pre_auth_bytes.set(total);
        self.bytes += n;
        true
    }
}

impl Drop for PendingHead<'_> {
    fn drop(&mut self) {
        let sh = self.sh;
        sh.pending.set(sh.pending.get().saturating_sub(1));
        sh.pre_auth_bytes
            .set(sh.pre_auth_bytes.get().saturating_sub(self.bytes));
    }
}

async fn serve_conn(
    core: Rc<Core>,
    node: Rc<NodeRt>,
    incoming: quinn::Incoming,
    guard: (HandshakeGuard, PlaceGuard),
) {
    let evict = guard.1.place.clone();
    let Some(proto) = node.proto.quic() else {
        incoming.refuse();
        return;
    };
    let deadline = Instant::now() + node.handshake;
    let peer = incoming.remote_address();
    // The connection's fixed send rate, if its client declares one: its controller is built
    // during the handshake, watching this cell, which the authentication fills.
    let rate = Arc::new(SendRate::default());
    let handshake = async {
        match &node.quic {
            Some(q) => incoming.accept_with(q.for_connection(rate.clone()))?.await,
            None => incoming.accept()?.await,
        }
    };
    let conn = match tokio::select! {
        c = tokio::time::timeout_at(deadline, handshake) => c,
        _ = evict.evict.cancelled() => return,
    } {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(node = node.cfg.slot, %peer, "QUIC handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let close_code = proto.close_code();
    // The server's own streams stay open as long as the connection: held until this
    // function returns.
    let mut own = Vec::new();
    for bytes in proto.server_streams() {
        let opened = tokio::time::timeout_at(deadline, async {
            let mut s = conn.open_uni().await.ok()?;
            s.write_all(&bytes).await.ok()?;
            Some(s)
        });
        match opened.await {
            Ok(Some(s)) => own.push(s),
            _ => {
                conn.close(code(close_code), b"");
                return;
            }
        }
    }
    let (cmd_tx, mut cmds) = mpsc::channel(CMD_QUEUE);
    let sh = Rc::new(ConnShared {
        core: core.clone(),
        node: node.clone(),
        proto: proto.clone(),
        conn: conn.clone(),
        ip: crate::net::normalise_ip(peer.ip()),
        started: Instant::now(),
        deadline: Cell::new(deadline),
        web_requests: Cell::new(0),
        web_slots: tokio::sync::Semaphore::new(MASQ_CONCURRENT),
        env: RefCell::new(None),
        reg: RefCell::new(None),
        authed: tokio::sync::watch::Sender::new(false),
        pending: Cell::new(0),
        pre_auth_bytes: Cell::new(0),
        cmds: cmd_tx,
        rate,
        rate_ceiling: Cell::new(0),
    });
    let mut state = proto.connection();
    let mut guard = Some(guard);
    let mut reg: Option<Registered> = None;
    let mut udp: Option<UdpRelay> = None;
    let (reply_tx, mut replies) = mpsc::channel(UDP_QUEUE);
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    let heartbeat = proto.heartbeat();
    let beat_every = heartbeat.as_ref().map_or(Duration::from_secs(3600), |h| h.0);
    let mut beat = tokio::time::interval_at(Instant::now() + beat_every, beat_every);
    // The registry entry's control once authenticated; before that one that never fires.
    let mut ctl = Rc::new(ConnCtl::default());
    let mut authed = sh.authed.subscribe();
    let mut early: Vec<Vec<u8>> = Vec::new();
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    tokio::task::spawn_local(client_stream(sh.clone(), Some(send), recv));
                }
                Err(_) => break,
            },
            s = conn.accept_uni() => match s {
                Ok(recv) => {
                    tokio::task::spawn_local(client_stream(sh.clone(), None, recv));
                }
                Err(_) => break,
            },
            _ = authed.wait_for(|a| *a), if udp.is_none() => {
                let Some(env) = sh.env() else { break };
                reg = sh.reg.borrow_mut().take();
                // The handshake slot is free once the connection belongs to a user.
                guard = None;
                ctl = env.ctl.clone();
                ctl.arm(node.relay.idle);
                tracing::trace!(node = node.cfg.slot, user = env.user.user_id, %peer, protocol = node.cfg.protocol.as_str(), "QUIC client authenticated");
                // Full windows and stream credit for the user's traffic.
                conn.set_receive_window(VarInt::from_u32(AUTHED_WINDOW));
                conn.set_max_concurrent_bi_streams(VarInt::from_u32(1024));
                conn.set_max_concurrent_uni_streams(VarInt::from_u32(proto.max_uni_streams()));
                let u = udp.insert(UdpRelay {
                    env,
                    sessions: HashMap::new(),
                    replies: reply_tx.clone(),
                    reply_streams: Rc::new(Cell::new(0)),
                    resolved: sh.cmds.clone(),
                    resolving: Rc::new(Cell::new(0)),
                });
                for d in std::mem::take(&mut early) {
                    u.datagram(&mut *state, &d);
                }
            }
            _ = tokio::time::sleep_until(sh.deadline.get()), if udp.is_none() => {
                // Web requests may have moved the deadline on since this sleep began.
                if Instant::now() < sh.deadline.get() {
                    continue;
                }
                conn.close(code(close_code), b"");
                break;
            }
            _ = evict.evict.cancelled(), if udp.is_none() => {
                tracing::debug!(node = node.cfg.slot, %peer, "unauthenticated QUIC connection evicted for a newer one");
                conn.close(code(close_code), b"");
                break;
            }
            d = conn.read_datagram() => match d {
                Ok(d) => match udp.as_mut() {
                    Some(u) => u.datagram(&mut *state, &d),
                    None if early.len() < EARLY_DATAGRAMS => early.push(d.to_vec()),
                    None => {}
                },
                Err(_) => break,
            },
            Some(c) = cmds.recv() => match c {
                Cmd::Packet(p, path) => {
                    if let Some(u) = udp.as_mut() {
                        u.packet(p, path);
                    }
                }
                Cmd::Dissociate(assoc) => {
                    if let Some(u) = udp.as_mut() {
                        u.dissociate(assoc);
                    }
                }
                Cmd::Close => {
                    conn.close(code(close_code), b"");
                    break;
                }
            },
            Some((assoc, from, payload)) = replies.recv() => {
                if let Some(u) = udp.as_mut() {
                    u.reply(&conn, &mut *state, assoc, from, &payload);
                }
            }
            _ = sweep.tick() => {
                if let Some(u) = udp.as_mut() {
                    u.sweep();
                    sh.apply_rate(&u.env.bucket);
                }
            }
            _ = beat.tick(), if udp.is_some() => {
                if let Some((_, d)) = &heartbeat {
                    let _ = conn.send_datagram(d.clone().into());
                }
            }
            _ = ctl.cancelled() => {
                conn.close(code(close_code), b"");
                break;
            }
        }
    }
    drop(udp);
    drop(own);
    drop(guard);
    // A stream that authenticated after the loop ended leaves its entry here.
    drop(sh.reg.borrow_mut().take());
    drop(reg);
}

/// Reads a client stream's head and acts on it. `send`: the stream's send side (bidirectional
/// streams).
async fn client_stream(sh: Rc<ConnShared>, mut send: Option<quinn::SendStream>, mut recv: quinn::RecvStream) {
    let authed = sh.env().is_some();
    let mut pending = if authed {
        None
    } else {
        if sh.pending.get() >= MAX_PENDING {
            refuse(&sh, send.as_mut(), &mut recv);
            return;
        }
        sh.pending.set(sh.pending.get() + 1);
        Some(PendingHead { sh: &sh, bytes: 0 })
    };
    let until = if authed {
        Instant::now() + sh.node.handshake
    } else {
        sh.deadline.get()
    };
    let bidi = send.is_some();
    let mut buf = Vec::new();
    let head = loop {
        let parsed = if bidi {
            sh.proto.bidi_head(&buf, authed)
        } else {
            sh.proto.uni_head(&buf, authed)
        };
        match parsed {
            Ok(StreamHead::NeedMore) if buf.len() < sh.proto.max_head() => {}
            Ok(StreamHead::NeedMore) => {
                tracing::debug!(node = sh.node.cfg.slot, ip = %sh.ip, "QUIC stream head too long");
                refuse(&sh, send.as_mut(), &mut recv);
                return;
            }
            Ok(h) => break h,
            Err(e) => {
                tracing::debug!(node = sh.node.cfg.slot, ip = %sh.ip, protocol = sh.node.cfg.protocol.as_str(), "{e}");
                refuse(&sh, send.as_mut(), &mut recv);
                if !authed && sh.proto.auth_refused().is_none() {
                    // Protocols that do not answer bad requests close the connection.
                    sh.send_cmd(Cmd::Close);
                }
                return;
            }
        }
        let step = if pending.is_some() {
            PRE_AUTH_CHUNK
        } else {
            READ_CHUNK
        };
        match tokio::time::timeout_at(until, recv.read_chunk(step, true)).await {
            Ok(Ok(Some(c))) => {
                if let Some(p) = pending.as_mut() {
                    if !p.hold(c.bytes.len()) {
                        tracing::debug!(node = sh.node.cfg.slot, ip = %sh.ip, "QUIC streams over their budget before authentication");
                        refuse(&sh, send.as_mut(), &mut recv);
                        return;
                    }
                }
                buf.extend_from_slice(&c.bytes);
            }
            _ => {
                refuse(&sh, send.as_mut(), &mut recv);
                return;
            }
        }
    };
    // A head that carries traffic stays counted while it waits for the authentication.
    let mut pending = match head {
        StreamHead::Connect { .. } | StreamHead::Packet(_) | StreamHead::Dissociate { .. } => pending,
        _ => None,
    };
    match head {
        StreamHead::NeedMore => {}
        StreamHead::Discard => while let Ok(Some(_)) = recv.read_chunk(READ_CHUNK, true).await {},
        StreamHead::Auth { key, token, rx, web } => {
            // A failed claim is answered as the protocol says: a web request like any other
            // (Hysteria 2: nothing tells a wrong password from a page that is not there),
            // its refusal, or the connection's end.
            if let Err(send) = authenticate(&sh, &key, token.as_ref(), rx, send).await {
                match (web, send, sh.proto.auth_refused()) {
                    (Some(w), Some(s), _) => serve_web(&sh, *w, buf, s, recv).await,
                    (None, Some(mut s), Some(r)) => {
                        let _ = s.write_all(&r).await;
                        let _ = s.finish();
                    }
                    _ => sh.send_cmd(Cmd::Close),
                }
            }
        }
        StreamHead::Web(w) => match send {
            Some(s) => serve_web(&sh, *w, buf, s, recv).await,
            None => refuse(&sh, None, &mut recv),
        },
        StreamHead::Refuse { reply } => {
            if let Some(mut s) = send {
                let _ = s.write_all(&reply).await;
                let _ = s.finish();
            }
        }
        StreamHead::Connect { dest, used } => {
            let env = sh.wait_auth().await;
            drop(pending.take());
            let (Some(env), Some(send)) = (env, send) else {
                return;
            };
            let initial = buf.split_off(used.min(buf.len()));
            drop(buf);
            tcp_stream(&env, &*sh.proto, dest, send, recv, initial).await;
        }
        StreamHead::Packet(p) => {
            if sh.wait_auth().await.is_some() {
                drop(pending.take());
                sh.send_cmd(Cmd::Packet(p, PacketPath::Stream));
            }
        }
        StreamHead::Dissociate { assoc } => {
            if sh.wait_auth().await.is_some() {
                drop(pending.take());
                sh.send_cmd(Cmd::Dissociate(assoc));
            }
        }
    }
}

fn refuse(sh: &ConnShared, send: Option<&mut quinn::SendStream>, recv: &mut quinn::RecvStream) {
    let c = code(sh.proto.reject_code());
    let _ = recv.stop(c);
    if let Some(s) = send {
        let _ = s.reset(c);
    }
}

/// Checks a claim: the key in the node's table, the protocol's proof against the user's
/// secret, the device admitted. On success the connection is the user's, sends at the fixed
/// rate the protocol allows for the client's declared receive rate `rx` (if any), and the
/// protocol's answer goes out; on failure `send` comes back for the caller's answer.
async fn authenticate(
    sh: &ConnShared,
    key: &[u8],
    token: Option<&[u8; 32]>,
    rx: u64,
    send: Option<quinn::SendStream>,
) -> Result<(), Option<quinn::SendStream>> {
    let (core, node) = (&sh.core, &sh.node);
    let slot = node.cfg.slot;
    let admitted = if sh.env().is_some() {
        // A second authentication on a connection that has its user.
        tracing::debug!(node = slot, ip = %sh.ip, "QUIC connection authenticated twice");
        None
    } else {
        let user = core.port.borrow().lookup(slot, key);
        let conn = &sh.conn;
        let mut export = |label: &[u8], ctx: &[u8], out: &mut [u8; 32]| {
            conn.export_keying_material(out, label, ctx).is_ok()
        };
        match user {
            Some(u) if sh.proto.verify(key, token, u.secret(), &mut export) => {
                admit(core, node, &u, sh.ip).map(|a| (u, a))
            }
            Some(_) => {
                tracing::debug!(node = slot, ip = %sh.ip, "QUIC authentication: bad proof");
                None
            }
            None => {
                tracing::debug!(node = slot, ip = %sh.ip, "QUIC authentication: unknown user");
                None
            }
        }
    };
    let Some((user, Admitted { reg, ctl, bucket })) = admitted else {
        return Err(send);
    };
    // Before the answer: the client's requests follow it, and the bytes sent back to them go
    // out at the fixed rate from the first.
    if let Some(r) = sh.proto.send_rate(rx) {
        sh.rate_ceiling.set(r);
        sh.apply_rate(&bucket);
        tracing::debug!(
            node = slot,
            user = user.user_id,
            declared = rx,
            rate = sh.rate.get(),
            "QUIC connection sends at a fixed rate (Brutal)"
        );
    }
    *sh.env.borrow_mut() = Some(Rc::new(StreamEnv {
        core: core.clone(),
        node: node.clone(),
        user,
        bucket,
        ctl,
    }));
    *sh.reg.borrow_mut() = Some(reg);
    // Set before the answer goes out: the client opens its requests once it has it.
    sh.authed.send_replace(true);
    if let (Some(r), Some(mut s)) = (sh.proto.auth_reply(), send) {
        if s.write_all(&r).await.is_ok() {
            let _ = s.finish();
        }
    }
    Ok(())
}

/// A web request that is not the protocol's (`buf`: the stream's bytes so far, its head
/// first): answered by the node's masquerade, [`MASQ_REQUESTS`] per connection and
/// [`MASQ_CONCURRENT`] at once, each one keeping an unauthenticated connection a little
/// longer (`ConnShared::extend_deadline`); without a masquerade, the protocol's refusal as
/// before (a 404 that does not move the deadline).
async fn serve_web(
    sh: &ConnShared,
    head: crate::proto::quic::WebHead,
    mut buf: Vec<u8>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    #[cfg(feature = "hysteria2")]
    let masq = sh.node.quic.as_ref().and_then(|q| q.masq.clone());
    #[cfg(not(feature = "hysteria2"))]
    let masq: Option<()> = None;
    let Some(masq) = masq else {
        match sh.proto.auth_refused() {
            Some(r) => {
                let _ = send.write_all(&r).await;
                let _ = send.finish();
            }
            None => refuse(sh, Some(&mut send), &mut recv),
        }
        return;
    };
    if sh.web_requests.get() >= MASQ_REQUESTS {
        refuse(sh, Some(&mut send), &mut recv);
        return;
    }
    sh.web_requests.set(sh.web_requests.get() + 1);
    let slot = tokio::select! {
        s = sh.web_slots.acquire() => s,
        _ = tokio::time::sleep_until(sh.deadline.get()), if sh.env().is_none() => {
            refuse(sh, Some(&mut send), &mut recv);
            return;
        }
    };
    let Ok(_slot) = slot else { return };
    // Counted from the start too: a slow answer is not cut by a deadline it began before.
    sh.extend_deadline();
    let body = buf.split_off(head.used.min(buf.len()));
    drop(buf);
    #[cfg(feature = "hysteria2")]
    masq.serve(&head.request, body, &mut send, &mut recv).await;
    #[cfg(not(feature = "hysteria2"))]
    let _ = (masq, body, head);
    sh.extend_deadline();
}

/// UDP sessions of one connection the client opened at once (more are dropped until one ends).
const MAX_UDP_SESSIONS: usize = 256;
/// A UDP session silent this long is closed (the reference server's UDP idle timeout); the
/// client's next packet for it opens a new one.
const UDP_SESSION_IDLE: Duration = Duration::from_secs(60);
/// Replies queued toward the client (more are dropped, as UDP may).
const UDP_QUEUE: usize = 256;
/// Domain resolutions for UDP packets under way per connection (more packets are dropped).
const MAX_RESOLVING: u32 = 16;

/// A reply datagram: session, source, payload.
type Reply = (u32, SocketAddr, Vec<u8>);

struct UdpSession {
    sock: Rc<UdpSocket>,
    /// Stops the session's reader task.
    ctl: Rc<ConnCtl>,
    last: Instant,
    /// The way the session's first packet came; replies go back that way.
    path: PacketPath,
}

/// The UDP relay of one connection: one outbound socket per client session. Counting:
/// upload = payload bytes sent to a destination, download = payload bytes of replies handed
/// to quinn for the client (headers and fragmentation not counted). Over the user's speed
/// limit a datagram is dropped, never queued.
struct UdpRelay {
    env: Rc<StreamEnv>,
    sessions: HashMap<u32, UdpSession>,
    replies: mpsc::Sender<Reply>,
    /// Replies being written on their own streams.
    reply_streams: Rc<Cell<u32>>,
    /// Where a packet for a domain comes back once resolved (the connection's loop).
    resolved: mpsc::Sender<Cmd>,
    /// Resolutions under way.
    resolving: Rc<Cell<u32>>,
}

impl UdpRelay {
    /// A client datagram: a packet once whole.
    fn datagram(&mut self, state: &mut dyn ConnState, d: &[u8]) {
        match state.datagram(d) {
            Ok(Some(p)) => self.packet(p, PacketPath::Datagram),
            Ok(None) => {}
            Err(e) => tracing::debug!(node = self.env.node.cfg.slot, "QUIC datagram dropped: {e}"),
        }
    }

    /// A client packet: sent on at once to an address; a domain is resolved off the
    /// connection's loop ([`MAX_RESOLVING`] at a time, more are dropped as UDP may) and the
    /// packet comes back through [`Cmd::Packet`] with the address.
    fn packet(&mut self, p: Packet, path: PacketPath) {
        let Packet { assoc, dest, payload } = p;
        let to = match dest {
            Destination::Ip(to) if super::udp::datagram_allowed(&self.env.node, &self.env.user, to) => to,
            Destination::Ip(_) => return,
            Destination::Domain(..) => {
                if self.resolving.get() >= MAX_RESOLVING {
                    return;
                }
                self.resolving.set(self.resolving.get() + 1);
                let (env, tx, busy) = (self.env.clone(), self.resolved.clone(), self.resolving.clone());
                tokio::task::spawn_local(async move {
                    // Not raced against the connection's control: its `cancelled` wakes one
                    // waiter, which must be the connection's loop. The outbound's resolver
                    // bounds the wait, and a closed connection drops the result.
                    let to = super::udp::datagram_target(&env.core, &env.node, &env.user, &dest).await;
                    busy.set(busy.get().saturating_sub(1));
                    if let Some(to) = to {
                        let p = Packet {
                            assoc,
                            dest: Destination::Ip(to),
                            payload,
                        };
                        let _ = tx.try_send(Cmd::Packet(p, path));
                    }
                });
                return;
            }
        };
        let Some(sock) = self.session(assoc, path) else {
            return;
        };
        let meter = self.env.meter();
        let acct = self.env.account(&meter);
        if !acct.fits(payload.len()) {
            return;
        }
        match super::udp::send_now(&sock, &payload, super::udp::to_socket_family(&sock, to)) {
            Ok(n) => acct.sent_up(n as u64),
            Err(e) => tracing::debug!(%to, error = %e, "datagram not sent upstream"),
        }
    }

    /// The session's outbound socket, opened (with its reader task) on first use.
    fn session(&mut self, id: u32, path: PacketPath) -> Option<Rc<UdpSocket>> {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.last = Instant::now();
            return Some(s.sock.clone());
        }
        if self.sessions.len() >= MAX_UDP_SESSIONS {
            return None;
        }
        let sock = super::udp::open_outbound(&self.env.node)?;
        let ctl = Rc::new(ConnCtl::default());
        tokio::task::spawn_local(read_replies(
            self.env.core.clone(),
            id,
            sock.clone(),
            ctl.clone(),
            self.replies.clone(),
        ));
        self.sessions.insert(
            id,
            UdpSession {
                sock: sock.clone(),
                ctl,
                last: Instant::now(),
                path,
            },
        );
        Some(sock)
    }

    /// The client ended session `assoc`.
    fn dissociate(&mut self, assoc: u32) {
        if let Some(s) = self.sessions.remove(&assoc) {
            s.ctl.cancel();
        }
    }

    fn reply(
        &mut self,
        conn: &quinn::Connection,
        state: &mut dyn ConnState,
        session: u32,
        from: SocketAddr,
        payload: &[u8],
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.last = Instant::now();
        let path = s.path;
        let max = match path {
            PacketPath::Datagram => match conn.max_datagram_size() {
                Some(m) => m,
                None => return,
            },
            PacketPath::Stream => usize::MAX,
        };
        if path == PacketPath::Stream && self.reply_streams.get() >= MAX_REPLY_STREAMS {
            return;
        }
        let meter = self.env.meter();
        let acct = self.env.account(&meter);
        if !acct.fits(payload.len()) {
            return;
        }
        let mut out = Vec::new();
        if !state.seal_reply(session, from, payload, path, max, &mut out) {
            return;
        }
        match path {
            PacketPath::Datagram => {
                for d in out {
                    if conn.send_datagram(d.into()).is_err() {
                        return;
                    }
                }
            }
            PacketPath::Stream => {
                // Counted once handed over: quinn owns the bytes from here, as for datagrams.
                let busy = self.reply_streams.clone();
                busy.set(busy.get() + 1);
                let conn = conn.clone();
                tokio::task::spawn_local(async move {
                    if let Ok(mut s) = conn.open_uni().await {
                        for m in out {
                            if s.write_all(&m).await.is_err() {
                                break;
                            }
                        }
                        let _ = s.finish();
                    }
                    busy.set(busy.get().saturating_sub(1));
                });
            }
        }
        acct.sent_down(payload.len() as u64);
    }

    /// Closes sessions silent for [`UDP_SESSION_IDLE`].
    fn sweep(&mut self) {
        self.sessions.retain(|_, s| {
            let keep = s.last.elapsed() < UDP_SESSION_IDLE;
            if !keep {
                s.ctl.cancel();
            }
            keep
        });
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for s in self.sessions.values() {
            s.ctl.cancel();
        }
    }
}

/// Reads a session's replies and queues them for the connection (until the session or the
/// connection ends).
async fn read_replies(
    core: Rc<Core>,
    session: u32,
    sock: Rc<UdpSocket>,
    ctl: Rc<ConnCtl>,
    tx: mpsc::Sender<Reply>,
) {
    loop {
        tokio::select! {
            r = sock.readable() => if r.is_err() { return },
            _ = ctl.cancelled() => return,
            _ = tx.closed() => return,
        }
        let mut b = core.bufs.take();
        let r = sock.try_recv_from(&mut b);
        let item = match &r {
            Ok((n, from)) => Some((
                session,
                SocketAddr::new(crate::net::normalise_ip(from.ip()), from.port()),
                b.get(..*n).unwrap_or_default().to_vec(),
            )),
            Err(_) => None,
        };
        core.bufs.put(b);
        match (item, r) {
            (Some(item), _) => {
                // Full queue: the datagram is dropped, as UDP may.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(item) {
                    return;
                }
            }
            (None, Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => return,
        }
    }
}

/// What a TCP stream task needs from its connection.
struct StreamEnv {
    core: Rc<Core>,
    node: Rc<NodeRt>,
    user: UserRef,
    bucket: Arc<Bucket>,
    /// The connection's registry entry: touched when bytes move (idle sweep).
    ctl: Rc<ConnCtl>,
}

impl StreamEnv {
    fn meter(&self) -> ConnMeter<'_> {
        ConnMeter::of(&self.core, &self.user)
    }

    /// The connection's accounting: every stream and datagram of it draws on one bucket and
    /// touches one idle clock.
    fn account<'a>(&'a self, meter: &'a ConnMeter<'a>) -> Account<'a> {
        Account {
            meter,
            bucket: &self.bucket,
            ctl: Some(&self.ctl),
        }
    }
}

/// One TCP request stream after its head: audit, outbound connect, the protocol's answer,
/// relay.
async fn tcp_stream(
    env: &StreamEnv,
    proto: &dyn QuicInbound,
    dest: Destination,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut initial: Vec<u8>,
) {
    let slot = env.node.cfg.slot;
    let fail = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, why: &str| {
        let reply = proto.connect_reply(Err(why));
        if reply.is_none() {
            let c = code(proto.reject_code());
            let _ = recv.stop(c);
            let _ = send.reset(c);
        }
        reply
    };
    if let Some((rule, what)) = sniff_block(env, &dest, &mut recv, &mut initial).await {
        tracing::info!(node = slot, user = env.user.user_id, %dest, sniffed = %what, rule, "destination blocked by audit rule");
        if let Some(r) = fail(&mut send, &mut recv, "blocked") {
            let _ = send.write_all(&r).await;
            let _ = send.finish();
        }
        return;
    }
    let uuid = super::route_uuid(&env.node, &env.user);
    let ctx = crate::outbound::RouteCtx {
        node_tag: &env.node.cfg.tag,
        user_id: env.user.user_id,
        user_uuid: uuid.as_deref(),
        source: None,
        sniffed_protocol: None,
        sniffed_domain: None,
    };
    let upstream = match env.core.outbound.open_plain(&dest, &env.node.connect, &ctx).await {
        Ok(s) => s,
        Err(e) => {
            match &e {
                crate::outbound::OutboundError::Blocked(d, rule) => {
                    tracing::info!(node = slot, user = env.user.user_id, dest = %d, rule, "destination blocked by audit rule")
                }
                crate::outbound::OutboundError::Routed(d, rule) => {
                    tracing::info!(node = slot, user = env.user.user_id, dest = %d, rule = %rule, "destination routed to a blackhole")
                }
                _ => tracing::debug!(node = slot, %dest, "outbound failed: {e}"),
            }
            if let Some(r) = fail(&mut send, &mut recv, &e.to_string()) {
                let _ = send.write_all(&r).await;
                let _ = send.finish();
            }
            return;
        }
    };
    crate::net::tune_stream(&upstream);
    if let Some(ok) = proto.connect_reply(Ok(())) {
        if send.write_all(&ok).await.is_err() {
            return;
        }
    }
    relay(env, &upstream, send, recv, initial).await;
}

/// Audit rules that need the client's first bytes (`protocol:` rules; domain rules when the
/// client named an IP), as for TCP protocols (`super::sniff_first`): waits up to
/// `super::SNIFF_WAIT` for them when none came with the request, then checks the sniffed
/// protocol and domain. `Some((rule, what))` when a rule blocks the stream.
async fn sniff_block(
    env: &StreamEnv,
    dest: &Destination,
    recv: &mut quinn::RecvStream,
    initial: &mut Vec<u8>,
) -> Option<(i64, String)> {
    let a = env.node.connect.audit.as_deref()?;
    if !super::sniff::wanted(a, dest) {
        return None;
    }
    if initial.is_empty() {
        if let Ok(Ok(Some(c))) =
            tokio::time::timeout(super::SNIFF_WAIT, recv.read_chunk(READ_CHUNK, true)).await
        {
            initial.extend_from_slice(&c.bytes);
        }
    }
    super::sniff::verdict(a, initial)
}

/// Client bytes to the destination: after the speed limit, counted once written.
async fn forward(acct: &Account<'_>, upstream: &TcpStream, data: &[u8]) -> Result<(), ()> {
    acct.send_up(data.len(), crate::tls::write_all(upstream, data))
        .await
        .map_err(|_| ())
}

/// Chunks one upload read takes from quinn. Each is one STREAM frame as it arrived (about
/// 1.2 KB): read one at a time and written one at a time they cost a `write` per packet,
/// which made the Hysteria 2 upload path 1.7× shoes' CPU per GB (issue 12); together they
/// go out in one `writev`.
const UP_CHUNKS: usize = 64;

/// Most bytes paced and written at once on the upload path. quinn hands out a chunk per
/// STREAM frame, except when it defragments a stream's buffer into one large chunk (up to
/// the stream window, 8 MiB): taken whole, such a chunk would reserve seconds of a user's
/// speed limit at once and leave in one burst.
const UP_BATCH: usize = 64 * 1024;

/// Client bytes to the destination in batches of at most [`UP_BATCH`] bytes: whole chunks
/// together in one `writev`, a larger chunk in slices; each batch after the speed limit and
/// counted once written.
async fn forward_chunks(acct: &Account<'_>, upstream: &TcpStream, chunks: &mut [Bytes]) -> Result<(), ()> {
    let mut i = 0;
    while i < chunks.len() {
        let (mut len, mut j) = (0, i);
        while let Some(c) = chunks.get(j) {
            if len + c.len() > UP_BATCH {
                break;
            }
            len += c.len();
            j += 1;
        }
        if j == i {
            // One chunk larger than a batch: its first slice now, the rest next round.
            let Some(c) = chunks.get_mut(i) else { break };
            let piece = c.split_to(UP_BATCH);
            forward(acct, upstream, &piece).await?;
            continue;
        }
        let batch = chunks.get_mut(i..j).unwrap_or_default();
        acct.send_up(len, write_all_vectored(upstream, batch))
            .await
            .map_err(|_| ())?;
        i = j;
    }
    Ok(())
}

/// Writes every byte of `bufs` (consuming them) with vectored writes.
async fn write_all_vectored(s: &TcpStream, bufs: &mut [Bytes]) -> std::io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let Some(rest) = bufs.get(first..) else { break };
        let mut io = [std::io::IoSlice::new(&[]); UP_CHUNKS];
        let mut k = 0;
        for (slot, b) in io.iter_mut().zip(rest.iter().filter(|b| !b.is_empty())) {
            *slot = std::io::IoSlice::new(b);
            k += 1;
        }
        if k == 0 {
            break;
        }
        s.writable().await?;
        let mut n = match s.try_write_vectored(io.get(..k).unwrap_or_default()) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        // Skip what was written: whole chunks, then part of the next.
        while let Some(b) = bufs.get_mut(first) {
            if b.len() <= n {
                n -= b.len();
                *b = Bytes::new();
                first += 1;
            } else {
                bytes::Buf::advance(b, n);
                break;
            }
        }
    }
    Ok(())
}

/// Relays until both directions ended (one ended: the other gets the node's uplink-only or
/// downlink-only timeout) or either fails.
async fn relay(
    env: &StreamEnv,
    upstream: &TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    initial: Vec<u8>,
) {
    let meter = env.meter();
    let acct = &env.account(&meter);
    let up = async {
        // What came with the request (sing-box sends its first bytes along with it).
        if !initial.is_empty() {
            forward(acct, upstream, &initial).await?;
        }
        let mut chunks = vec![Bytes::new(); UP_CHUNKS];
        loop {
            match recv.read_chunks(&mut chunks).await {
                Ok(Some(n)) => {
                    let got = chunks.get_mut(..n).unwrap_or_default();
                    forward_chunks(acct, upstream, got).await?;
                }
                Ok(None) => break,
                Err(_) => return Err(()),
            }
        }
        let _ = SockRef::from(upstream).shutdown(Shutdown::Write);
        Ok(())
    };
    let down = async {
        loop {
            upstream.readable().await.map_err(|_| ())?;
            let mut v = bytes::BytesMut::with_capacity(READ_CHUNK);
            match upstream.try_read_buf(&mut v) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(()),
            }
            // Handed to quinn as it is (no copy into its send buffer).
            let n = v.len();
            acct.send_down(n, send.write_chunk(v.freeze()))
                .await
                .map_err(|_| ())?;
        }
        let _ = send.finish();
        Ok(())
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let mut linger: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => {
                if r.is_err() {
                    return;
                }
                up_done = true;
                linger.get_or_insert(Instant::now() + env.node.relay.downlink_only);
            }
            r = &mut down, if !down_done => {
                if r.is_err() {
                    return;
                }
                down_done = true;
                linger.get_or_insert(Instant::now() + env.node.relay.uplink_only);
            }
            _ = tokio::time::sleep_until(linger.unwrap_or(far)), if linger.is_some() => return,
        }
    }
}
