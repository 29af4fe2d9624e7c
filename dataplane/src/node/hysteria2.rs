//! Hysteria 2 nodes: one quinn endpoint per core on an `SO_REUSEPORT` UDP socket, driven by
//! the core's own `current_thread` runtime (quinn's tokio runtime spawns its endpoint and
//! connection drivers there, so a connection lives and dies on the core that accepted it).
//!
//! A connection's life:
//! 1. QUIC handshake (TLS 1.3 with the node's certificate store, ALPN `h3`), then HTTP/3: our
//!    control stream announces SETTINGS without a dynamic QPACK table; the client's control
//!    and QPACK streams are read and discarded.
//! 2. Requests on client bidi streams until one is the authentication request of a known
//!    user ([`crate::proto::hysteria2`]); the user's device admission is checked then (the
//!    same `admit` as every other protocol). Any other request, a wrong password, or a
//!    refused device gets a web server's 404, and the connection is closed when the node's
//!    handshake timeout runs out without a successful authentication. The whole phase counts
//!    against the handshake limits, like a TCP handshake.
//! 3. After 233: every client bidi stream is a TCP request, relayed to its destination
//!    through the node's outbound (audit rules, private-destination refusal, timeouts), with
//!    the user's speed limit and exact counting: upload counted once written to the
//!    destination, download once quinn took it for the client.
//! 4. UDP (`Hysteria-UDP: true`): QUIC datagrams, reassembled when fragmented, one outbound
//!    socket per client session id ([`UdpRelay`]), replies fragmented to the connection's
//!    datagram size; counted and limited like every other UDP relay.
//!
//! The connection is registered with the core like any user connection, so a kick, the
//! user's removal, the node's removal or the idle sweep close it (with H3_NO_ERROR), and
//! every stream with it.
//!
//! Congestion control is quinn's default (Cubic); the client's `Hysteria-CC-RX` is read but
//! Brutal is not implemented, so the server never sends faster than congestion control
//! allows.
//!
//! A node with `obfs: salamander` runs its endpoint on a [`SalamanderSocket`] (every datagram
//! salted and scrambled in user space, below QUIC); a node without obfuscation gets quinn's
//! own socket, untouched.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use socket2::SockRef;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;
use v2sp_shared::dpconfig::NodeConfig;
use v2sp_shared::shm::UserRef;

use super::salamander_socket::SalamanderSocket;
use super::{admit, Admitted, ConnMeter, Core, HandshakeGuard, InboundProtocol, NodeRt};
use crate::limits::gcra::Bucket;
use crate::proto::hysteria2::salamander::{Salamander, SALT_LEN};
use crate::proto::hysteria2::{self as hy2, h3, udp, AuthRequest, ServerRx};
use crate::proto::{Destination, Step, StreamHandshake, WireError};
use crate::relay::account::Account;
use crate::relay::ConnCtl;

/// Most bytes one read takes from either side (one allocation travels per chunk).
const READ_CHUNK: usize = 64 * 1024;
/// Client unidirectional streams (control, QPACK encoder/decoder) read per connection; more
/// are refused.
const MAX_UNI_STREAMS: u32 = 8;

/// The protocol handle of a Hysteria 2 node: it has no TCP handshake (the node is served by
/// [`accept_loop`] on QUIC instead of a TCP listener).
pub(super) struct Hysteria2Proto;

impl InboundProtocol for Hysteria2Proto {
    fn new_handshake(&self) -> Box<dyn StreamHandshake> {
        Box::new(NotTcp)
    }
    fn is_quic(&self) -> bool {
        true
    }
}

struct NotTcp;

impl StreamHandshake for NotTcp {
    fn feed(&mut self, _data: &[u8], _ctx: &dyn crate::proto::AuthContext) -> Result<Step, WireError> {
        Err(WireError::Unsupported("hysteria2 is served over QUIC only"))
    }
}

/// quinn's default upper bound for path MTU discovery (`MtuDiscoveryConfig`): QUIC packets
/// up to this size, so that a datagram fits a 1500-byte path over IPv6.
const PLAIN_MTU_UPPER_BOUND: u16 = 1452;

/// What a Hysteria 2 node's endpoint is built from: quinn's server config and the node's
/// packet obfuscation.
#[derive(Clone)]
pub(super) struct QuicSettings {
    pub(super) server: quinn::ServerConfig,
    /// Salamander on every datagram, or `None` (quinn's socket as is).
    pub(super) obfs: Option<Salamander>,
}

/// The QUIC settings of a node: TLS 1.3 from the node's certificate store with ALPN `h3`, no
/// connection migration (a migrated path would reach another core's socket), the reference
/// implementation's QUIC defaults (stream window 8 MiB, connection window 20 MiB, idle
/// timeout 30 s), and the node's obfuscation.
pub(super) fn quic_settings(n: &NodeConfig) -> Result<QuicSettings, String> {
    let obfs = obfuscation(n)?;
    let tls = n
        .tls
        .as_ref()
        .ok_or("hysteria2 needs TLS settings (QUIC has no plaintext mode; CertMode none cannot serve it)")?;
    if tls.reality.is_some() {
        return Err("hysteria2 cannot be served with REALITY".to_string());
    }
    let mut tls = tls.clone();
    tls.alpn = vec!["h3".to_string()];
    let rustls = crate::tls::quic_server_config(&tls)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls)
        .map_err(|e| format!("QUIC TLS config: {e}"))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.migration(false);
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(VarInt::from_u32(30_000))));
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t.receive_window(VarInt::from_u32(20 << 20));
    t.max_concurrent_bidi_streams(VarInt::from_u32(1024));
    t.max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
    // Datagrams carry UDP; what queues unread is bounded (over it quinn drops the oldest).
    t.datagram_receive_buffer_size(Some(1 << 20));
    if obfs.is_some() {
        // Each datagram is 8 bytes longer than its QUIC packet: probe for 8 bytes less, so
        // the datagrams on the path stay within the same bound as a plain node's (quinn's
        // initial 1200 becomes 1208 on the wire, still far below IPv6's minimum of 1280).
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(PLAIN_MTU_UPPER_BOUND - SALT_LEN as u16);
        t.mtu_discovery_config(Some(mtu));
    }
    sc.transport_config(Arc::new(t));
    Ok(QuicSettings { server: sc, obfs })
}

/// The node's packet obfuscation from its settings (`obfs`: empty = none, `salamander` with a
/// non-empty `obfs_password`; the control plane has checked this, the data plane refuses
/// anything else rather than serve a node its clients cannot reach).
fn obfuscation(n: &NodeConfig) -> Result<Option<Salamander>, String> {
    let Some(h) = &n.hysteria2 else {
        return Ok(None);
    };
    match h.obfs.as_str() {
        "" => Ok(None),
        "salamander" if h.obfs_password.is_empty() => {
            Err("hysteria2 Salamander obfuscation needs a non-empty obfs password".to_string())
        }
        "salamander" => Ok(Some(Salamander::new(h.obfs_password.as_bytes()))),
        other => Err(format!(
            "hysteria2 obfuscation {other:?} is not supported (none or salamander)"
        )),
    }
}

/// Whether two settings of a node put the same bytes on the wire below QUIC (an endpoint's
/// obfuscation is fixed with its socket: a change needs a new endpoint).
pub(super) fn same_obfuscation(a: &NodeConfig, b: &NodeConfig) -> bool {
    let key = |n: &NodeConfig| {
        n.hysteria2
            .as_ref()
            .filter(|h| !h.obfs.is_empty())
            .map(|h| (h.obfs.clone(), h.obfs_password.clone()))
    };
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

/// This core's endpoint for a node at `addr`, and a duplicate of its socket (for a successor
/// process on upgrade: the raw descriptor, since obfuscation is applied in user space and the
/// successor wraps it again from its own settings).
pub(super) fn endpoint(
    addr: SocketAddr,
    cfg: QuicSettings,
) -> Result<(quinn::Endpoint, std::os::fd::OwnedFd), String> {
    let sock = crate::net::udp_socket_std(addr).map_err(|e| format!("UDP listen on {addr}: {e}"))?;
    let dup = sock
        .try_clone()
        .map_err(|e| format!("UDP socket on {addr}: {e}"))?
        .into();
    let sock = quic_socket(sock, cfg.obfs.as_ref()).map_err(|e| format!("UDP socket on {addr}: {e}"))?;
    let ep = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
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
pub(super) fn detach(ep: &quinn::Endpoint, obfs: Option<&Salamander>) {
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
    ep.close(code(h3::H3_NO_ERROR), b"server upgrade");
}

/// The node's obfuscation changed and a new endpoint serves its address: close this one's
/// connections (quinn drops the socket when they have drained and no handle is left).
pub(super) fn retire(ep: &quinn::Endpoint) {
    ep.set_server_config(None);
    ep.close(code(h3::H3_NO_ERROR), b"obfuscation changed");
}

/// Accepts connections until `stop`; then refuses new ones (open connections stay until their
/// registry entry closes them: node removal, drain, shutdown).
pub(super) async fn accept_loop(
    core: Rc<Core>,
    live: Rc<RefCell<Rc<NodeRt>>>,
    ep: quinn::Endpoint,
    stop: Rc<ConnCtl>,
) {
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
        let node = live.borrow().clone();
        tokio::task::spawn_local(serve_conn(core.clone(), node, incoming, guard));
    }
    ep.set_server_config(None);
}

fn code(c: u32) -> VarInt {
    VarInt::from_u32(c)
}

async fn serve_conn(core: Rc<Core>, node: Rc<NodeRt>, incoming: quinn::Incoming, guard: HandshakeGuard) {
    let deadline = Instant::now() + node.handshake;
    let peer = incoming.remote_address();
    let conn = match tokio::time::timeout_at(deadline, async { incoming.accept()?.await }).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(node = node.cfg.slot, %peer, "QUIC handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    // Our control stream must stay open as long as the connection (RFC 9114 §6.2.1): held
    // until this function returns.
    let _control = match open_control(&conn).await {
        Some(s) => s,
        None => return,
    };
    tokio::task::spawn_local(discard_uni_streams(conn.clone()));
    let ip = crate::net::normalise_ip(peer.ip());
    let authed = tokio::time::timeout_at(deadline, authenticate(&core, &node, &conn, ip)).await;
    let Ok(Some((user, admitted))) = authed else {
        conn.close(code(h3::H3_NO_ERROR), b"");
        return;
    };
    drop(guard);
    let Admitted { reg, ctl, bucket } = admitted;
    ctl.arm(node.relay.idle);
    tracing::trace!(node = node.cfg.slot, user = user.user_id, %peer, "hysteria2 client authenticated");
    let env = Rc::new(StreamEnv {
        core: core.clone(),
        node: node.clone(),
        user,
        bucket,
        ctl: ctl.clone(),
    });
    let (reply_tx, mut replies) = mpsc::channel(UDP_QUEUE);
    let mut udp = UdpRelay {
        env: env.clone(),
        sessions: HashMap::new(),
        defrag: udp::Defragmenter::default(),
        replies: reply_tx,
        packet_id: 0,
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    tokio::task::spawn_local(tcp_stream(env.clone(), send, recv));
                }
                Err(_) => break,
            },
            d = conn.read_datagram() => match d {
                Ok(d) => udp.client_datagram(&d).await,
                Err(_) => break,
            },
            Some((session, from, payload)) = replies.recv() => udp.reply(&conn, session, from, &payload),
            _ = sweep.tick() => udp.sweep(),
            _ = ctl.cancelled() => {
                conn.close(code(h3::H3_NO_ERROR), b"");
                break;
            }
        }
    }
    drop(udp);
    drop(reg);
}

/// UDP sessions of one connection the client opened at once (more are dropped until one ends).
const MAX_UDP_SESSIONS: usize = 256;
/// A UDP session silent this long is closed (the reference server's UDP idle timeout); the
/// client's next packet for it opens a new one.
const UDP_SESSION_IDLE: Duration = Duration::from_secs(60);
/// Replies queued toward the client (more are dropped, as UDP may).
const UDP_QUEUE: usize = 256;

/// A reply datagram: session, source, payload.
type Reply = (u32, SocketAddr, Vec<u8>);

struct UdpSession {
    sock: Rc<UdpSocket>,
    /// Stops the session's reader task.
    ctl: Rc<ConnCtl>,
    last: Instant,
}

/// The UDP relay of one connection: one outbound socket per client session id. Counting:
/// upload = payload bytes sent to a destination, download = payload bytes of replies handed
/// to quinn for the client (headers and fragmentation not counted). Over the user's speed
/// limit a datagram is dropped, never queued.
struct UdpRelay {
    env: Rc<StreamEnv>,
    sessions: HashMap<u32, UdpSession>,
    defrag: udp::Defragmenter,
    replies: mpsc::Sender<Reply>,
    /// Packet id of the next reply (distinguishes fragments of different packets).
    packet_id: u16,
}

impl UdpRelay {
    async fn client_datagram(&mut self, d: &[u8]) {
        let node = &self.env.node;
        let m = match udp::decode(d) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(node = node.cfg.slot, "hysteria2 datagram dropped: {e}");
                return;
            }
        };
        let Some((addr, payload)) = self.defrag.feed(&m, d) else {
            return;
        };
        let dest = match hy2::parse_address(&addr) {
            Ok(dest) => dest,
            Err(e) => {
                tracing::debug!(node = node.cfg.slot, "hysteria2 datagram dropped: {e}");
                return;
            }
        };
        let to = match &dest {
            Destination::Ip(a) => *a,
            Destination::Domain(..) => match self.env.core.outbound.resolve(&dest, &node.connect).await {
                Ok(addrs) => match addrs.first() {
                    Some(a) => *a,
                    None => return,
                },
                Err(e) => {
                    tracing::debug!(%dest, "datagram destination unresolved: {e}");
                    return;
                }
            },
        };
        if !node.connect.allow_private && crate::outbound::is_forbidden(to.ip()) {
            tracing::debug!(%to, "datagram to a private destination refused");
            return;
        }
        if let Some(rule) = node.connect.blocked_ip(to.ip()) {
            tracing::debug!(%to, rule, "datagram blocked by audit rule");
            return;
        }
        let Some(sock) = self.session(m.session) else {
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
    fn session(&mut self, id: u32) -> Option<Rc<UdpSocket>> {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.last = Instant::now();
            return Some(s.sock.clone());
        }
        if self.sessions.len() >= MAX_UDP_SESSIONS {
            return None;
        }
        let sock = match super::udp::outbound_socket(self.env.node.connect.send_ip) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open an outbound UDP socket");
                return None;
            }
        };
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
            },
        );
        Some(sock)
    }

    fn reply(&mut self, conn: &quinn::Connection, session: u32, from: SocketAddr, payload: &[u8]) {
        let Some(max) = conn.max_datagram_size() else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            s.last = Instant::now();
        }
        let meter = self.env.meter();
        let acct = self.env.account(&meter);
        if !acct.fits(payload.len()) {
            return;
        }
        let mut out = Vec::new();
        let id = self.packet_id;
        self.packet_id = id.wrapping_add(1);
        if !udp::encode(&mut out, session, id, &hy2::format_address(from), payload, max) {
            return;
        }
        for d in out {
            if conn.send_datagram(d.into()).is_err() {
                return;
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

async fn open_control(conn: &quinn::Connection) -> Option<quinn::SendStream> {
    let mut s = conn.open_uni().await.ok()?;
    s.write_all(&h3::control_stream_preface()).await.ok()?;
    Some(s)
}

/// Reads the client's unidirectional streams (HTTP/3 control, QPACK) and drops what they
/// carry: with a zero-capacity table there are no QPACK instructions to act on, and nothing
/// in the client's SETTINGS changes what we send. The streams stay open until the client
/// ends them (closing a control stream is a connection error for the peer).
async fn discard_uni_streams(conn: quinn::Connection) {
    while let Ok(mut r) = conn.accept_uni().await {
        tokio::task::spawn_local(
            async move { while let Ok(Some(_)) = r.read_chunk(READ_CHUNK, true).await {} },
        );
    }
}

/// Reads one request head from a request stream (bounded by [`h3::MAX_HEADERS`]).
async fn read_request(recv: &mut quinn::RecvStream) -> Result<h3::Request, WireError> {
    let mut buf = Vec::new();
    loop {
        if let Some(req) = h3::parse_request(&buf)? {
            return Ok(req);
        }
        if buf.len() > h3::MAX_HEADERS + 32 {
            return Err(WireError::Malformed("http3: request head too large"));
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
            _ => {
                return Err(WireError::Malformed(
                    "http3: request stream ended before its head",
                ))
            }
        }
    }
}

/// Serves requests until one authenticates a user who is admitted; every other request gets a
/// 404. Bounded in time by the caller.
async fn authenticate(
    core: &Rc<Core>,
    node: &Rc<NodeRt>,
    conn: &quinn::Connection,
    ip: std::net::IpAddr,
) -> Option<(UserRef, Admitted)> {
    let rx = node.cfg.hysteria2.as_ref().map_or(ServerRx::Auto, |h| {
        ServerRx::from_settings(h.down_mbps, h.ignore_client_bandwidth)
    });
    loop {
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let req = match read_request(&mut recv).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(node = node.cfg.slot, %ip, "hysteria2: {e}");
                let _ = send.reset(code(h3::H3_REQUEST_REJECTED));
                continue;
            }
        };
        let auth = AuthRequest::from_request(&req);
        let user = auth
            .as_ref()
            .and_then(|a| core.port.borrow().lookup(node.cfg.slot, &a.lookup_key()));
        if let Some(user) = user {
            if let Some(admitted) = admit(core, node, &user, ip) {
                if send.write_all(&hy2::auth_ok_response(true, rx)).await.is_err() {
                    return None;
                }
                let _ = send.finish();
                return Some((user, admitted));
            }
        } else if auth.is_some() {
            tracing::debug!(node = node.cfg.slot, %ip, "hysteria2: unknown password");
        }
        let _ = send.write_all(&hy2::not_found_response()).await;
        let _ = send.finish();
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
        ConnMeter {
            core: &self.core,
            node: self.node.cfg.slot,
            user_id: self.user.user_id,
        }
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

/// One TCP request stream: request, outbound connect, answer, relay.
async fn tcp_stream(env: Rc<StreamEnv>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let slot = env.node.cfg.slot;
    let mut head = Vec::new();
    let (dest, used) = loop {
        match hy2::parse_tcp_request(&head) {
            Ok(Some(x)) => break x,
            Ok(None) if head.len() < hy2::MAX_TCP_REQUEST => {}
            Ok(None) | Err(_) => {
                tracing::debug!(
                    node = slot,
                    user = env.user.user_id,
                    "hysteria2: malformed TCP request"
                );
                let _ = recv.stop(code(h3::H3_REQUEST_REJECTED));
                let _ = send.reset(code(h3::H3_REQUEST_REJECTED));
                return;
            }
        }
        let read = tokio::time::timeout(env.node.handshake, recv.read_chunk(READ_CHUNK, true));
        match read.await {
            Ok(Ok(Some(c))) => head.extend_from_slice(&c.bytes),
            _ => return,
        }
    };
    let mut initial = head.split_off(used.min(head.len()));
    drop(head);
    if let Some((rule, what)) = sniff_block(&env, &dest, &mut recv, &mut initial).await {
        tracing::info!(node = slot, user = env.user.user_id, %dest, sniffed = %what, rule, "destination blocked by audit rule");
        let mut r = Vec::new();
        hy2::put_tcp_response(&mut r, Some("blocked"), hy2::padding_len(64, 512));
        let _ = send.write_all(&r).await;
        let _ = send.finish();
        return;
    }
    let upstream = match env.core.outbound.connect(&dest, &env.node.connect).await {
        Ok(s) => s,
        Err(e) => {
            match &e {
                crate::outbound::OutboundError::Blocked(d, rule) => {
                    tracing::info!(node = slot, user = env.user.user_id, dest = %d, rule, "destination blocked by audit rule")
                }
                _ => tracing::debug!(node = slot, %dest, "outbound failed: {e}"),
            }
            let mut r = Vec::new();
            hy2::put_tcp_response(&mut r, Some(&e.to_string()), hy2::padding_len(64, 512));
            let _ = send.write_all(&r).await;
            let _ = send.finish();
            return;
        }
    };
    crate::net::tune_stream(&upstream);
    let mut ok = Vec::new();
    hy2::put_tcp_response(&mut ok, None, hy2::padding_len(64, 512));
    if send.write_all(&ok).await.is_err() {
        return;
    }
    relay(&env, &upstream, send, recv, initial).await;
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
    use v2sp_shared::audit::Target;
    let a = env.node.connect.audit.as_deref()?;
    let dest_is_ip = match dest {
        Destination::Ip(_) => true,
        Destination::Domain(d, _) => d.parse::<std::net::IpAddr>().is_ok(),
    };
    if !a.wants_sniff(dest_is_ip) {
        return None;
    }
    if initial.is_empty() {
        if let Ok(Ok(Some(c))) =
            tokio::time::timeout(super::SNIFF_WAIT, recv.read_chunk(READ_CHUNK, true)).await
        {
            initial.extend_from_slice(&c.bytes);
        }
    }
    let s = super::sniff::sniff(initial)?;
    if let Some(rule) = a.blocks_protocol(s.protocol) {
        return Some((rule, s.protocol.to_string()));
    }
    let d = s.domain?;
    let rule = a.blocks(Target::Domain(&d))?;
    Some((rule, format!("{} {d}", s.protocol)))
}

/// Client bytes to the destination: after the speed limit, counted once written.
async fn forward(acct: &Account<'_>, upstream: &TcpStream, data: &[u8]) -> Result<(), ()> {
    acct.send_up(data.len(), crate::tls::write_all(upstream, data))
        .await
        .map_err(|_| ())
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
        loop {
            match recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(c)) => forward(acct, upstream, &c.bytes).await?,
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
            let mut v = Vec::with_capacity(READ_CHUNK);
            match upstream.try_read_buf(&mut v) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(()),
            }
            acct.send_down(v.len(), send.write_all(&v))
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn node(hysteria2: serde_json::Value) -> NodeConfig {
        serde_json::from_value(serde_json::json!({
            "slot": 1, "tag": "hy2", "listen_ip": "", "port": 443, "protocol": "hysteria2",
            "cred_kind": "Sha256Password", "hysteria2": hysteria2,
        }))
        .unwrap()
    }

    #[test]
    fn obfuscation_from_the_node_settings() {
        assert!(obfuscation(&node(serde_json::Value::Null)).unwrap().is_none());
        assert!(obfuscation(&node(serde_json::json!({"obfs_password": "unused"})))
            .unwrap()
            .is_none());
        let s = obfuscation(&node(
            serde_json::json!({"obfs": "salamander", "obfs_password": "pw"}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(s.key(&[0; 8]), Salamander::new(b"pw").key(&[0; 8]));
        let err = obfuscation(&node(serde_json::json!({"obfs": "salamander"}))).unwrap_err();
        assert!(err.contains("password"), "{err}");
        let err = obfuscation(&node(serde_json::json!({"obfs": "xor", "obfs_password": "pw"}))).unwrap_err();
        assert!(err.contains("not supported"), "{err}");
    }

    #[test]
    fn an_obfuscation_change_needs_a_new_endpoint() {
        let plain = node(serde_json::json!({"up_mbps": 10}));
        let plain_with_stray_password = node(serde_json::json!({"obfs_password": "x"}));
        let a = node(serde_json::json!({"obfs": "salamander", "obfs_password": "a"}));
        let b = node(serde_json::json!({"obfs": "salamander", "obfs_password": "b"}));
        assert!(same_obfuscation(&plain, &node(serde_json::Value::Null)));
        assert!(same_obfuscation(&plain, &plain_with_stray_password));
        assert!(same_obfuscation(&a, &a.clone()));
        assert!(!same_obfuscation(&plain, &a));
        assert!(!same_obfuscation(&a, &b));
    }
}
