//! UDP for packet protocols (Shadowsocks): one SO_REUSEPORT socket per node per core, a NAT
//! table of sessions keyed by (user, protocol session id) — or the client address where the
//! protocol has no session id — each with its own outbound socket and reply task. Sessions
//! count as online-IP references (no device-limit check for UDP, as the reference panel
//! behaves), are registered like connections (removed users and kicks end them), and close
//! after `conn_idle` without traffic. Speed limits police datagrams (drop, never queue).
//!
//! Bounded against floods (issue 11): at most [`MAX_SESSIONS_PER_USER`] sessions per user (the
//! least recently used one is closed for a new one) and [`MAX_SESSIONS`] per node and core
//! (new ones refused beyond), [`MAX_RESOLVING`] name resolutions in flight, and datagrams from
//! addresses no user was seen at get a budget of key trials ([`UnauthLimiter`]): a flood of
//! forged datagrams costs a bounded number of AEAD attempts per second, not users ×
//! datagrams.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use v2sp_shared::shm::UserRef;

use super::auth::{self, CoreAuth};
use super::{ConnMeter, Core, NodeRt, Registered};
use crate::limits::devices::Admit;
use crate::limits::gcra::{effective_bytes_per_sec, Bucket};
use crate::proto::{Destination, InboundPacket, PacketCodec, PacketSession};
use crate::relay::account::Account;
use crate::relay::ConnCtl;

type NatKey = (u32, u64, Option<SocketAddr>);

/// Sessions one user may hold on one node and core; a new one closes the least recently used.
const MAX_SESSIONS_PER_USER: usize = 256;
/// Sessions of one node on one core (each has an outbound socket): new ones refused beyond.
const MAX_SESSIONS: usize = 8192;
/// Name resolutions in flight for one node on one core (their datagrams are dropped beyond).
const MAX_RESOLVING: usize = 128;

/// Trial decryptions for datagrams from addresses without a known user: a token bucket per
/// node and core, and a negative cache of addresses whose datagrams keep failing.
pub(super) struct UnauthLimiter {
    tokens: Cell<f64>,
    refilled: Cell<Instant>,
    /// Failures per source address in the current window.
    failures: RefCell<HashMap<IpAddr, u32>>,
    window: Cell<Instant>,
}

impl UnauthLimiter {
    /// Key trials for unauthenticated datagrams per second (and burst): a datagram costs one
    /// per user of the node (a 2017-AEAD datagram is tried with every user's key), at most
    /// [`Self::MAX_COST`].
    const RATE: f64 = 8192.0;
    const MAX_COST: usize = 1024;
    /// Failures after which an address's unauthenticated datagrams are not tried until the
    /// window ends.
    const MAX_FAILURES: u32 = 16;
    const WINDOW: Duration = Duration::from_secs(10);
    /// Addresses remembered at most (the map is cleared beyond).
    const MAX_ADDRS: usize = 16384;

    pub(super) fn new(now: Instant) -> Self {
        UnauthLimiter {
            tokens: Cell::new(Self::RATE),
            refilled: Cell::new(now),
            failures: RefCell::new(HashMap::new()),
            window: Cell::new(now),
        }
    }

    /// Whether a datagram from `ip` (no user known at its address and port) may be tried.
    /// `known`: some user was seen at this IP (another port, a new socket of the same
    /// client): such datagrams skip the budget, so a flood of forged addresses does not lock
    /// out clients already in use; the failure cache still bounds them.
    pub(super) fn allow(&self, ip: IpAddr, known: bool, users: usize, now: Instant) -> bool {
        if now.saturating_duration_since(self.window.get()) >= Self::WINDOW {
            self.window.set(now);
            self.failures.borrow_mut().clear();
        }
        if self
            .failures
            .borrow()
            .get(&ip)
            .is_some_and(|&n| n >= Self::MAX_FAILURES)
        {
            return false;
        }
        if known {
            return true;
        }
        let dt = now.saturating_duration_since(self.refilled.get()).as_secs_f64();
        self.refilled.set(now);
        let t = (self.tokens.get() + dt * Self::RATE).min(Self::RATE);
        let cost = users.clamp(1, Self::MAX_COST) as f64;
        if t < cost {
            self.tokens.set(t);
            return false;
        }
        self.tokens.set(t - cost);
        true
    }

    /// A tried datagram from `ip` opened for no user.
    pub(super) fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.borrow_mut();
        if f.len() >= Self::MAX_ADDRS && !f.contains_key(&ip) {
            f.clear();
        }
        let n = f.entry(ip).or_insert(0);
        *n = n.saturating_add(1);
    }
}

struct Session {
    client: Cell<SocketAddr>,
    user: UserRef,
    out: UdpSocket,
    state: RefCell<Box<dyn PacketSession>>,
    last: Cell<Instant>,
    ctl: Rc<ConnCtl>,
    bucket: Arc<Bucket>,
}

impl Session {
    fn meter<'a>(&'a self, core: &'a Core) -> ConnMeter<'a> {
        ConnMeter::of(core, &self.user)
    }

    /// The session's accounting: its user's bucket and meter (the session's idle clock is
    /// `last`, kept by the loops).
    fn account<'a>(&'a self, meter: &'a ConnMeter<'a>) -> Account<'a> {
        Account {
            meter,
            bucket: &self.bucket,
            ctl: None,
        }
    }
}

struct UdpNode {
    core: Rc<Core>,
    node: Rc<NodeRt>,
    sock: UdpSocket,
    codec: Rc<dyn PacketCodec>,
    sessions: RefCell<HashMap<NatKey, Rc<Session>>>,
    /// Sessions per user (for [`MAX_SESSIONS_PER_USER`]).
    per_user: RefCell<HashMap<u32, usize>>,
    hints: RefCell<HashMap<SocketAddr, UserRef>>,
    /// Addresses some user was seen at (cleared with `hints`).
    known_ips: RefCell<std::collections::HashSet<IpAddr>>,
    unauth: UnauthLimiter,
    resolving: Cell<usize>,
    /// The node's user count on this core, and when it was counted (once a second at most).
    users: Cell<(usize, Option<Instant>)>,
}

impl UdpNode {
    fn user_count(&self, now: Instant) -> usize {
        let (n, at) = self.users.get();
        if at.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
            return n;
        }
        let mut count = 0usize;
        self.core
            .port
            .borrow()
            .for_each_user(self.node.cfg.slot, &mut |_| {
                count += 1;
                true
            });
        self.users.set((count, Some(now)));
        count
    }
}

/// Serves the node's UDP socket until `stop`; then ends every session of this node on this core.
pub(super) async fn udp_loop(
    core: Rc<Core>,
    node: Rc<NodeRt>,
    sock: UdpSocket,
    codec: Rc<dyn PacketCodec>,
    stop: Rc<ConnCtl>,
) {
    let u = Rc::new(UdpNode {
        core,
        node,
        sock,
        codec,
        sessions: RefCell::new(HashMap::new()),
        per_user: RefCell::new(HashMap::new()),
        hints: RefCell::new(HashMap::new()),
        known_ips: RefCell::new(std::collections::HashSet::new()),
        unauth: UnauthLimiter::new(Instant::now()),
        resolving: Cell::new(0),
        users: Cell::new((0, None)),
    });
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            r = u.sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = stop.cancelled() => break,
        };
        let Some(pkt) = buf.get_mut(..n) else { continue };
        on_packet(&u, pkt, from);
    }
    for s in u.sessions.borrow().values() {
        s.ctl.cancel();
    }
}

fn on_packet(u: &Rc<UdpNode>, pkt: &mut [u8], from: SocketAddr) {
    let hint = u.hints.borrow().get(&from).copied();
    let ip = crate::net::normalise_ip(from.ip());
    if hint.is_none()
        && !u.unauth.allow(
            ip,
            u.known_ips.borrow().contains(&ip),
            u.user_count(Instant::now()),
            Instant::now(),
        )
    {
        return;
    }
    let opened = {
        let port = u.core.port.borrow();
        let ctx = CoreAuth {
            port: &**port,
            node: u.node.cfg.slot,
            replay: &*u.core.shared.replay,
            now_unix: auth::unix_now(),
            peer: Some(from.ip()),
        };
        u.codec.open_packet(pkt, hint.as_ref(), &ctx)
    };
    // Garbage and unknown users are dropped without a reply (no distinctive behaviour).
    let p = match opened {
        Ok(p) => p,
        Err(e) => {
            if hint.is_none() {
                u.unauth.failed(ip);
            }
            tracing::debug!(node = u.node.cfg.slot, %from, error = %e, "datagram dropped");
            return;
        }
    };
    let key: NatKey = (
        p.user.user_id,
        p.session_id,
        if p.session_id == 0 { Some(from) } else { None },
    );
    let existing = u
        .sessions
        .borrow()
        .get(&key)
        .filter(|s| !s.ctl.is_cancelled())
        .cloned();
    let sess = match existing {
        Some(s) => s,
        None => match new_session(u, &p, from, key) {
            Some(s) => s,
            None => return,
        },
    };
    if !sess.state.borrow_mut().accept(&p) {
        return; // replayed or out-of-window packet id
    }
    sess.client.set(from);
    sess.last.set(Instant::now());
    if hint != Some(p.user) {
        let mut h = u.hints.borrow_mut();
        let mut known = u.known_ips.borrow_mut();
        if h.len() > 65536 {
            h.clear();
            known.clear();
        }
        h.insert(from, p.user);
        known.insert(crate::net::normalise_ip(from.ip()));
    }
    let Some(payload) = pkt.get(p.payload.clone()) else {
        return;
    };
    // Routed as the client named the destination (a name by its rules for names), once.
    let Some(allow_private) = udp_route(&u.node, &sess.user, &p.dest) else {
        return;
    };
    match &p.dest {
        Destination::Ip(a) => send_up(u, &sess, *a, payload, allow_private),
        Destination::Domain(..) => {
            // Resolution may wait; do it off the receive loop with a copy of the payload,
            // a bounded number at a time (the datagram is dropped beyond, as UDP may).
            if u.resolving.get() >= MAX_RESOLVING {
                return;
            }
            u.resolving.set(u.resolving.get() + 1);
            let (u2, s2, dest, data) = (u.clone(), sess.clone(), p.dest.clone(), payload.to_vec());
            tokio::task::spawn_local(async move {
                let opts = udp_opts(&u2.node, allow_private);
                let resolved = tokio::select! {
                    r = u2.core.outbound.resolve(&dest, &opts) => r.ok(),
                    _ = s2.ctl.cancelled() => None,
                };
                u2.resolving.set(u2.resolving.get().saturating_sub(1));
                if let Some(a) = resolved.as_ref().and_then(|a| a.first()) {
                    send_up(&u2, &s2, *a, &data, allow_private);
                }
            });
        }
    }
}

fn send_up(u: &UdpNode, s: &Session, to: SocketAddr, payload: &[u8], allow_private: bool) {
    if !datagram_checks(&u.node, to, allow_private) {
        return;
    }
    let meter = s.meter(&u.core);
    let acct = s.account(&meter);
    if !acct.fits(payload.len()) {
        return;
    }
    match send_now(&s.out, payload, to_socket_family(&s.out, to)) {
        Ok(n) => acct.sent_up(n as u64),
        Err(e) => tracing::debug!(%to, error = %e, "datagram not sent upstream"),
    }
}

/// Where the node's rules send a datagram for `dest`: `Some(private destinations allowed)` to
/// send it directly, `None` to drop it. UDP goes direct or nowhere: a rule that sends it to
/// a blackhole drops it, and so does one that names a proxy outbound (SOCKS5, HTTP and
/// Shadowsocks outbounds carry TCP only here). A freedom outbound's own source address and
/// DNS strategy apply to TCP; datagrams leave through the session's socket.
pub(super) fn udp_route(node: &NodeRt, user: &UserRef, dest: &Destination) -> Option<bool> {
    use crate::outbound::route::Route;
    let ctx = crate::outbound::RouteCtx {
        node_tag: &node.cfg.tag,
        user_id: user.user_id,
        user_uuid: None,
        source: None,
        sniffed_protocol: None,
        sniffed_domain: None,
    };
    match node.connect.route(dest, v2sp_shared::route::Network::Udp, &ctx) {
        Route::Default => Some(node.connect.allow_private),
        Route::Direct {
            names_destination, ..
        } => Some(node.connect.allow_private || names_destination),
        Route::Block { rule } => {
            tracing::debug!(node = node.cfg.slot, %dest, rule, "datagram routed to a blackhole");
            None
        }
        Route::Proxy {
            rule, tag, outbound, ..
        } => {
            tracing::debug!(node = node.cfg.slot, %dest, rule, tag, kind = outbound.kind(), "datagram dropped: UDP through a proxy outbound is not served");
            None
        }
    }
}

/// The node's outbound options with private destinations allowed when a route said so.
fn udp_opts(node: &NodeRt, allow_private: bool) -> std::borrow::Cow<'_, crate::outbound::ConnectOpts> {
    if allow_private && !node.connect.allow_private {
        std::borrow::Cow::Owned(crate::outbound::ConnectOpts {
            allow_private: true,
            ..node.connect.clone()
        })
    } else {
        std::borrow::Cow::Borrowed(&node.connect)
    }
}

/// Whether a client datagram may go to the address `to` (routed by that address first; the
/// QUIC relays ask this for datagrams that name an address).
#[cfg(feature = "quic")]
pub(super) fn datagram_allowed(node: &NodeRt, user: &UserRef, to: SocketAddr) -> bool {
    udp_route(node, user, &Destination::Ip(to))
        .is_some_and(|allow_private| datagram_checks(node, to, allow_private))
}

/// Whether a routed datagram may go to `to`: private destinations only where the node (or
/// the route) allows them, and no audit rule blocking the address (every UDP relay asks this
/// per datagram).
fn datagram_checks(node: &NodeRt, to: SocketAddr, allow_private: bool) -> bool {
    if !allow_private && crate::outbound::is_forbidden(to.ip()) {
        tracing::debug!(%to, "datagram to a private destination refused");
        return false;
    }
    if let Some(rule) = node.connect.blocked_ip(to.ip()) {
        tracing::debug!(%to, rule, "datagram blocked by audit rule");
        return false;
    }
    true
}

/// Where a client datagram for `dest` goes: its address, resolved through the node's
/// outbound for a domain, if [`datagram_allowed`]; `None` drops the datagram.
pub(super) async fn datagram_target(
    core: &Core,
    node: &NodeRt,
    user: &UserRef,
    dest: &Destination,
) -> Option<SocketAddr> {
    let allow_private = udp_route(node, user, dest)?;
    let to = match dest {
        Destination::Ip(a) => *a,
        Destination::Domain(..) => match core.outbound.resolve(dest, &udp_opts(node, allow_private)).await {
            Ok(addrs) => *addrs.first()?,
            Err(e) => {
                tracing::debug!(%dest, "datagram destination unresolved: {e}");
                return None;
            }
        },
    };
    datagram_checks(node, to, allow_private).then_some(to)
}

/// A new outbound socket for a UDP session or flow of `node` (`None`, logged, when the system
/// refuses one).
pub(super) fn open_outbound(node: &NodeRt) -> Option<Rc<UdpSocket>> {
    match outbound_socket(node.connect.send_ip) {
        Ok(s) => Some(Rc::new(s)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open an outbound UDP socket");
            None
        }
    }
}

/// Send a datagram with one non-blocking syscall. Not `UdpSocket::try_send_to`: tokio answers
/// WouldBlock from its readiness cache until the reactor has seen the socket writable, which
/// dropped the first datagram of every new session. A full socket buffer still returns
/// WouldBlock, and the datagram is dropped, as UDP may.
pub(super) fn send_now(sock: &UdpSocket, data: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(sock).send_to(data, &to.into())
}

/// The outbound socket is dual-stack IPv6 when possible: IPv4 targets go IPv4-mapped.
pub(super) fn to_socket_family(sock: &UdpSocket, to: SocketAddr) -> SocketAddr {
    match (sock.local_addr().map(|a| a.is_ipv6()).unwrap_or(false), to) {
        (true, SocketAddr::V4(v4)) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        _ => to,
    }
}

pub(super) fn outbound_socket(send_ip: Option<IpAddr>) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |ip: IpAddr| -> io::Result<UdpSocket> {
        let s = Socket::new(
            Domain::for_address(SocketAddr::new(ip, 0)),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        if ip.is_ipv6() {
            s.set_only_v6(false)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::new(ip, 0).into())?;
        UdpSocket::from_std(s.into())
    };
    match send_ip {
        Some(ip) => bind(ip),
        None => bind(IpAddr::V6(Ipv6Addr::UNSPECIFIED)).or_else(|_| bind(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
    }
}

/// Makes room for a new session of `user`: the user's least recently used session is closed
/// when the user is at [`MAX_SESSIONS_PER_USER`]; false when the node is at [`MAX_SESSIONS`].
fn make_room(u: &UdpNode, user: u32) -> bool {
    let held = u.per_user.borrow().get(&user).copied().unwrap_or(0);
    if held >= MAX_SESSIONS_PER_USER {
        let sessions = u.sessions.borrow();
        let lru = sessions
            .iter()
            .filter(|(k, s)| k.0 == user && !s.ctl.is_cancelled())
            .min_by_key(|(_, s)| s.last.get())
            .map(|(k, s)| (*k, s.clone()));
        drop(sessions);
        if let Some((k, s)) = lru {
            s.ctl.cancel();
            forget(u, &k, &s);
        }
    }
    u.sessions.borrow().len() < MAX_SESSIONS
}

/// Removes `s` from the table (if it is still the entry for `key`).
fn forget(u: &UdpNode, key: &NatKey, s: &Rc<Session>) {
    let mut sessions = u.sessions.borrow_mut();
    if sessions.get(key).is_some_and(|x| Rc::ptr_eq(x, s)) {
        sessions.remove(key);
        let mut per_user = u.per_user.borrow_mut();
        if let Some(n) = per_user.get_mut(&key.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_user.remove(&key.0);
            }
        }
    }
}

fn new_session(u: &Rc<UdpNode>, p: &InboundPacket, from: SocketAddr, key: NatKey) -> Option<Rc<Session>> {
    let core = &u.core;
    // A cancelled session still under this key (kicked, say) goes first.
    let stale = u.sessions.borrow().get(&key).cloned();
    if let Some(old) = stale {
        forget(u, &key, &old);
    }
    if !make_room(u, p.user.user_id) {
        tracing::debug!(node = u.node.cfg.slot, "UDP session table full: datagram dropped");
        return None;
    }
    let state = u
        .codec
        .new_session(p)
        .map_err(|e| tracing::debug!(error = %e, "UDP session refused"))
        .ok()?;
    let out = outbound_socket(u.node.connect.send_ip)
        .map_err(|e| tracing::warn!(error = %e, "cannot open an outbound UDP socket"))
        .ok()?;
    let slot = u.node.cfg.slot;
    let ip = crate::net::normalise_ip(from.ip());
    // Online-IP bookkeeping only: the device limit is not applied to UDP.
    if let Admit::Yes(Some(ev)) = core
        .shared
        .devices
        .admit(slot, p.user.user_id, ip, 0, 0, &|| false)
    {
        core.port.borrow_mut().push_event(ev);
    }
    let ctl = Rc::new(ConnCtl::default());
    let id = core.register(slot, Some(p.user.user_id), ctl.clone());
    let bucket = core.shared.rates.bucket(
        slot,
        p.user.user_id,
        effective_bytes_per_sec(u.node.cfg.speed_limit_mbps, p.user.speed_limit_mbps),
    );
    let s = Rc::new(Session {
        client: Cell::new(from),
        user: p.user,
        out,
        state: RefCell::new(state),
        last: Cell::new(Instant::now()),
        ctl,
        bucket,
    });
    u.sessions.borrow_mut().insert(key, s.clone());
    *u.per_user.borrow_mut().entry(p.user.user_id).or_insert(0) += 1;
    tokio::task::spawn_local(downlink(u.clone(), s.clone(), key, id, ip));
    Some(s)
}

async fn downlink(u: Rc<UdpNode>, s: Rc<Session>, key: NatKey, id: u64, ip: IpAddr) {
    let core = u.core.clone();
    let _reg = Registered {
        core: core.clone(),
        id,
        node: u.node.cfg.slot,
        user_id: s.user.user_id,
        ip,
    };
    let idle: Duration = u.node.relay.idle;
    loop {
        let deadline = s.last.get() + idle;
        tokio::select! {
            r = s.out.readable() => if r.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => {
                if Instant::now() >= s.last.get() + idle { break }
                continue;
            }
            _ = s.ctl.cancelled() => break,
        }
        // Take a buffer only once a datagram is ready (idle sessions hold none).
        let mut b = core.bufs.take();
        let (n, from) = match s.out.try_recv_from(&mut b) {
            Ok(x) => x,
            Err(e) => {
                core.bufs.put(b);
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                break;
            }
        };
        s.last.set(Instant::now());
        let from = SocketAddr::new(crate::net::normalise_ip(from.ip()), from.port());
        let meter = s.meter(&core);
        let acct = s.account(&meter);
        if acct.fits(n) {
            let mut out = core.bufs.take_vec();
            let sealed =
                s.state
                    .borrow_mut()
                    .seal(&Destination::Ip(from), b.get(..n).unwrap_or_default(), &mut out);
            if sealed.is_ok() && send_now(&u.sock, &out, s.client.get()).is_ok() {
                acct.sent_down(n as u64);
            }
            core.bufs.put_vec(out);
        }
        core.bufs.put(b);
    }
    forget(&u, &key, &s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_trials_are_rate_limited_and_failing_addresses_cached() {
        let t0 = Instant::now();
        let l = UnauthLimiter::new(t0);
        let a: IpAddr = "198.51.100.1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        // A flood from many (forged) addresses: one second's budget, then nothing.
        let tried = (0..100_000u32)
            .filter(|i| l.allow(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), false, 64, t0))
            .count();
        assert_eq!(
            tried,
            UnauthLimiter::RATE as usize / 64,
            "one second's budget of key trials"
        );
        // An address some user was seen at is still tried.
        assert!(l.allow(a, true, 64, t0));
        // The budget comes back with time.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.allow(a, false, 64, t1));
        // One address that keeps failing is not tried again within the window...
        for _ in 0..UnauthLimiter::MAX_FAILURES {
            l.failed(a);
        }
        let t2 = t1 + Duration::from_secs(1);
        assert!(!l.allow(a, true, 64, t2));
        assert!(l.allow("198.51.100.2".parse().unwrap_or(a), false, 64, t2));
        // ...and is again after it.
        assert!(l.allow(a, false, 64, t2 + UnauthLimiter::WINDOW));
    }
}
