//! Steering QUIC packets to the core whose endpoint holds their connection.
//!
//! Every core serves a QUIC node with its own quinn endpoint on its own `SO_REUSEPORT`
//! socket, and the kernel picks the socket by a hash of the 4-tuple. A client that changes
//! its source address — a Hysteria 2 client hopping to another server port (a new socket,
//! so a new source port, redirected to the node's port by the node's firewall rules), or a
//! NAT rebinding — lands on a socket chosen at random among the cores, whose endpoint does
//! not know the connection (and would answer with a stateless reset, which ends it: the
//! reset key is shared).
//!
//! So the connection ids this process issues name the core that issued them
//! ([`CoreCidGenerator`]), and each endpoint's socket is wrapped in a [`SteeringSocket`]:
//! a short-header packet whose destination id names another core is handed to that core's
//! inbox and comes out of that core's socket as if received there (same source address,
//! same local address); replies leave from that core's socket, bound to the same port.
//!
//! ```text
//!            quinn (core 0)                    quinn (core 1)
//!                ▲  poll_recv                      ▲
//!   SteeringSocket 0 ──steer(cid names 1)──▶ inbox of SteeringSocket 1
//!                ▲                                 ▲
//!   Salamander (if any) / quinn-udp          Salamander / quinn-udp
//!                ▲                                 ▲
//!          UDP socket :443 ◀──SO_REUSEPORT──▶ UDP socket :443
//! ```
//!
//! The layer sits above Salamander (it reads plain QUIC headers) and below quinn. Costs and
//! bounds: a packet for this core costs one AES block (the core byte is masked); a packet for
//! another core costs a copy and one bounded channel hop, never more, whatever id an outsider
//! forges: an inbox holds at most [`INBOX_ITEMS`] runs and [`INBOX_BYTES`] bytes, and a full
//! inbox drops (counted). Long-header packets (handshakes: the client's first packets on a
//! 4-tuple, which create the connection where they land) and ids this process did not
//! issue stay where they are.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use tokio::sync::mpsc;

/// Length of the connection ids this process issues (quinn's default length: 8 bytes keep
/// the short header as small as before).
pub(super) const CID_LEN: usize = 8;
/// Random bytes of an id (after the core byte): 2^24 ids per core, as many as quinn's own
/// generator has; quinn draws again on a collision.
const NONCE_LEN: usize = 3;
/// Integrity tag (the rest): an id this process did not issue is recognised with
/// probability 2^-32, so quinn drops such packets without a reset and they are never
/// steered.
const TAG_LEN: usize = CID_LEN - 1 - NONCE_LEN;
/// The core byte of ids issued by cores 255 and above, which cannot be named in one byte:
/// their packets are never steered (such a core only loses packets that land elsewhere).
const NO_CORE: u8 = 0xff;

/// Datagram runs one core's inbox holds at most (a run: one datagram, or a GRO batch).
pub(super) const INBOX_ITEMS: usize = 1024;
/// Bytes one core's inbox holds at most (about 1400 full-size datagrams).
pub(super) const INBOX_BYTES: usize = 2 << 20;

/// The key of this process's connection ids: the core byte is masked with a keyed
/// pseudo-random byte of the nonce (so that the ids of one connection, and of one core, do
/// not share a visible byte: RFC 9000 §5.1 forbids ids an observer could correlate), and
/// the tag binds the core to the nonce.
#[derive(Clone)]
pub(super) struct CidKey(Aes128);

impl CidKey {
    pub(super) fn new(key: [u8; 16]) -> Self {
        CidKey(Aes128::new(&key.into()))
    }

    /// One AES block over a domain byte and the input: a PRF (the cipher is a pseudo-random
    /// permutation and the inputs are distinct per domain).
    fn prf(&self, domain: u8, nonce: &[u8], core: u8) -> [u8; 16] {
        let mut block = [0u8; 16];
        block[0] = domain;
        block[1] = core;
        for (b, n) in block[2..].iter_mut().zip(nonce) {
            *b = *n;
        }
        let mut b = block.into();
        self.0.encrypt_block(&mut b);
        b.into()
    }

    fn mask(&self, nonce: &[u8]) -> u8 {
        self.prf(1, nonce, 0)[0]
    }

    fn tag(&self, nonce: &[u8], core: u8) -> [u8; TAG_LEN] {
        let out = self.prf(2, nonce, core);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&out[..TAG_LEN]);
        t
    }

    /// The id for `core` with this nonce.
    fn make(&self, core: u8, nonce: [u8; NONCE_LEN]) -> [u8; CID_LEN] {
        let mut cid = [0u8; CID_LEN];
        cid[0] = core ^ self.mask(&nonce);
        cid[1..1 + NONCE_LEN].copy_from_slice(&nonce);
        cid[1 + NONCE_LEN..].copy_from_slice(&self.tag(&nonce, core));
        cid
    }

    /// The core named by `cid` without checking the tag (the core byte unmasked).
    fn claimed_core(&self, cid: &[u8]) -> Option<u8> {
        let nonce = cid.get(1..1 + NONCE_LEN)?;
        Some(cid.first()? ^ self.mask(nonce))
    }

    /// The core that issued `cid`, or `None` when this key did not make it.
    pub(super) fn core_of(&self, cid: &[u8]) -> Option<u8> {
        if cid.len() != CID_LEN {
            return None;
        }
        let core = self.claimed_core(cid)?;
        let nonce = cid.get(1..1 + NONCE_LEN)?;
        (cid.get(1 + NONCE_LEN..)? == self.tag(nonce, core)).then_some(core)
    }
}

/// quinn's connection-id generator for one core: ids that name the core ([`CidKey`]).
pub(super) struct CoreCidGenerator {
    key: CidKey,
    core: u8,
}

impl CoreCidGenerator {
    pub(super) fn new(key: CidKey, core: usize) -> Self {
        let core = u8::try_from(core).unwrap_or(NO_CORE);
        CoreCidGenerator { key, core }
    }
}

impl ConnectionIdGenerator for CoreCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        ConnectionId::new(&self.key.make(self.core, rand::random()))
    }

    /// quinn asks this before it answers a short-header packet for an unknown connection with
    /// a stateless reset: ids of every core of this process (and of a predecessor with the
    /// same key) pass, so a client whose connection is gone is told at once.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        self.key.core_of(cid).map(|_| ()).ok_or(InvalidCid)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Where a received datagram belongs: `Some(core)` when it is a short-header packet whose
/// destination id this process issued on another core; `None` (stay here) for long headers,
/// ids of this core, ids not ours, and runts. Cheap when the packet is ours: the tag is only
/// checked for packets that would move.
pub(super) fn steer(packet: &[u8], my_core: usize, key: &CidKey) -> Option<usize> {
    let first = *packet.first()?;
    // Long header (Initial, 0-RTT, Handshake, Retry): where the 4-tuple lands is where the
    // connection is made. The fixed bit (0x40) is not checked: a peer may grease it (RFC 9287).
    if first & 0x80 != 0 {
        return None;
    }
    let cid = packet.get(1..1 + CID_LEN)?;
    let claimed = key.claimed_core(cid)?;
    if usize::from(claimed) == my_core || claimed == NO_CORE {
        return None;
    }
    key.core_of(cid).map(usize::from)
}

/// Where a run that does not stay goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Core(usize),
    Predecessor(usize),
}

/// A datagram run handed to another core: the bytes and how they were received.
struct Steered {
    data: Vec<u8>,
    meta: RecvMeta,
}

/// One core's inbox as other cores see it.
struct Inbox {
    tx: mpsc::Sender<Steered>,
    /// Bytes queued in it (the receiving socket takes them off).
    bytes: Arc<AtomicUsize>,
}

/// The steering of one listening address: each core's inbox and the counters.
pub(crate) struct SteerGroup {
    addr: SocketAddr,
    inboxes: RwLock<Vec<Option<Inbox>>>,
    /// In a successor: the predecessor's packets go there (`quic_handoff`).
    predecessor: Option<Arc<super::quic_handoff::ForwardLink>>,
    /// In a predecessor after the hand-over: the sockets are the successor's to read; this
    /// process only sends through them and receives what the successor hands back.
    parked: std::sync::atomic::AtomicBool,
    /// Datagram runs handed to another core.
    steered: AtomicU64,
    /// Runs dropped because the target's inbox was full.
    dropped: AtomicU64,
}

impl SteerGroup {
    fn new(addr: SocketAddr) -> Self {
        SteerGroup {
            addr,
            inboxes: RwLock::new(Vec::new()),
            predecessor: super::quic_handoff::link_to_predecessor(),
            parked: std::sync::atomic::AtomicBool::new(false),
            steered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Runs handed over so far, and runs dropped.
    #[cfg(test)]
    fn counts(&self) -> (u64, u64) {
        (
            self.steered.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    fn register(&self, core: usize, inbox: Inbox) {
        let mut v = self.inboxes.write().unwrap_or_else(|p| p.into_inner());
        if v.len() <= core {
            v.resize_with(core + 1, || None);
        }
        if let Some(slot) = v.get_mut(core) {
            *slot = Some(inbox);
        }
    }

    /// Removes `core`'s inbox if it is still `tx`'s (a newer socket of the core may have taken
    /// the place: a node whose obfuscation changed gets a new endpoint while the old drains).
    fn unregister(&self, core: usize, tx: &mpsc::Sender<Steered>) {
        let mut v = self.inboxes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = v.get_mut(core) {
            if slot.as_ref().is_some_and(|i| i.tx.same_channel(tx)) {
                *slot = None;
            }
        }
    }

    /// Stops this process's sockets of the address from reading (see `quic_handoff`).
    pub(crate) fn park(&self) {
        self.parked.store(true, Ordering::Relaxed);
    }

    fn serves(&self, core: usize) -> bool {
        let v = self.inboxes.read().unwrap_or_else(|p| p.into_inner());
        matches!(v.get(core), Some(Some(_)))
    }

    /// Hands a run to `core`'s inbox; dropped (and counted) when the inbox is full or gone.
    pub(super) fn hand_over(&self, core: usize, data: &[u8], meta: RecvMeta) {
        let v = self.inboxes.read().unwrap_or_else(|p| p.into_inner());
        let Some(Some(inbox)) = v.get(core) else {
            return self.note_drop();
        };
        let len = data.len();
        if inbox.bytes.fetch_add(len, Ordering::AcqRel) + len > INBOX_BYTES {
            inbox.bytes.fetch_sub(len, Ordering::AcqRel);
            return self.note_drop();
        }
        let item = Steered {
            data: data.to_vec(),
            meta: RecvMeta { len, ..meta },
        };
        if inbox.tx.try_send(item).is_err() {
            inbox.bytes.fetch_sub(len, Ordering::AcqRel);
            return self.note_drop();
        }
        let n = self.steered.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() && n >= 16 {
            tracing::info!(addr = %self.addr, steered = n, dropped = self.dropped.load(Ordering::Relaxed),
                "QUIC packets steered to the core that holds their connection (a client changed its address: port hopping, NAT rebinding)");
        }
    }

    fn note_drop(&self) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(addr = %self.addr, dropped = n, "QUIC packets for another core dropped: its inbox is full");
        }
    }
}

/// The steering groups of this process, by listening address (held weakly: a group lives as
/// long as a socket of it).
#[derive(Default)]
pub(crate) struct SteerRegistry(Mutex<HashMap<SocketAddr, Weak<SteerGroup>>>);

impl SteerRegistry {
    /// The group of `addr` if a socket of it is open.
    pub(crate) fn find(&self, addr: SocketAddr) -> Option<Arc<SteerGroup>> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&addr).and_then(Weak::upgrade)
    }

    /// The group of `addr`, made on first use.
    pub(crate) fn group(&self, addr: SocketAddr) -> Arc<SteerGroup> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = m.get(&addr).and_then(Weak::upgrade) {
            return g;
        }
        m.retain(|_, g| g.strong_count() > 0);
        let g = Arc::new(SteerGroup::new(addr));
        m.insert(addr, Arc::downgrade(&g));
        g
    }
}

/// A core's socket of a QUIC node with steering ([module docs](self)).
pub(super) struct SteeringSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    core: usize,
    key: CidKey,
    group: Arc<SteerGroup>,
    /// This core's inbox (only this core's endpoint driver polls it: the lock is never
    /// contended).
    rx: Mutex<mpsc::Receiver<Steered>>,
    tx: mpsc::Sender<Steered>,
    bytes: Arc<AtomicUsize>,
}

impl SteeringSocket {
    /// Wraps `inner` (quinn's socket, or Salamander's) for `core` of `group`, and opens the
    /// core's inbox.
    pub(super) fn wrap(
        inner: Arc<dyn AsyncUdpSocket>,
        core: usize,
        key: CidKey,
        group: Arc<SteerGroup>,
    ) -> Arc<dyn AsyncUdpSocket> {
        let (tx, rx) = mpsc::channel(INBOX_ITEMS);
        let bytes = Arc::new(AtomicUsize::new(0));
        group.register(
            core,
            Inbox {
                tx: tx.clone(),
                bytes: bytes.clone(),
            },
        );
        Arc::new(SteeringSocket {
            inner,
            core,
            key,
            group,
            rx: Mutex::new(rx),
            tx,
            bytes,
        })
    }

    /// Where a received datagram goes, if not here: another core of this address, or the
    /// predecessor of an upgrade (an id of ours, of a core this process does not serve).
    fn target(&self, datagram: &[u8]) -> Option<Route> {
        let core = steer(datagram, self.core, &self.key)?;
        if self.group.serves(core) {
            Some(Route::Core(core))
        } else {
            self.group
                .predecessor
                .as_ref()
                .filter(|l| l.alive())
                .map(|_| Route::Predecessor(core))
        }
    }

    fn send_to(&self, route: Route, data: &[u8], meta: RecvMeta) {
        match route {
            Route::Core(core) => self.group.hand_over(core, data, meta),
            Route::Predecessor(core) => {
                if let Some(l) = &self.group.predecessor {
                    l.send(self.group.addr, core, data, &meta);
                }
            }
        }
    }

    /// Moves the datagrams of a received run that belong to another core there: the whole
    /// run when all of it goes to one core (the usual case: GRO only joins datagrams of one
    /// 4-tuple), else datagram by datagram, the ones that stay moved left so that the run
    /// stays regular (all `stride` long but the last).
    fn route(&self, buf: &mut [u8], meta: &mut RecvMeta) {
        let len = meta.len.min(buf.len());
        if len == 0 {
            return;
        }
        let stride = if meta.stride == 0 { len } else { meta.stride };
        let target =
            |buf: &[u8], at: usize| self.target(buf.get(at..len.min(at + stride)).unwrap_or_default());
        let first = target(buf, 0);
        let uniform = (stride..len).step_by(stride).all(|at| target(buf, at) == first);
        if uniform {
            if let Some(route) = first {
                self.send_to(route, buf.get(..len).unwrap_or_default(), *meta);
                meta.len = 0;
            }
            return;
        }
        let (mut at, mut out) = (0, 0);
        while at < len {
            let end = len.min(at + stride);
            match target(buf, at) {
                Some(route) => {
                    let one = RecvMeta {
                        stride: end - at,
                        ..*meta
                    };
                    self.send_to(route, buf.get(at..end).unwrap_or_default(), one);
                }
                None => {
                    buf.copy_within(at..end, out);
                    out += end - at;
                }
            }
            at = end;
        }
        meta.len = out;
    }

    /// Up to `max` runs from the inbox into `bufs`/`metas`; how many.
    fn take_steered(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        metas: &mut [RecvMeta],
        max: usize,
    ) -> usize {
        let mut rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        while n < max.min(bufs.len()).min(metas.len()) {
            let Poll::Ready(Some(s)) = rx.poll_recv(cx) else {
                break;
            };
            self.bytes.fetch_sub(s.data.len(), Ordering::AcqRel);
            let (Some(buf), Some(meta)) = (bufs.get_mut(n), metas.get_mut(n)) else {
                break;
            };
            // Every endpoint's buffers have the same size; a run that would not fit is dropped.
            let Some(dst) = buf.get_mut(..s.data.len()) else {
                continue;
            };
            dst.copy_from_slice(&s.data);
            *meta = s.meta;
            n += 1;
        }
        n
    }
}

impl Drop for SteeringSocket {
    fn drop(&mut self) {
        self.group.unregister(self.core, &self.tx);
    }
}

impl fmt::Debug for SteeringSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SteeringSocket")
            .field("core", &self.core)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for SteeringSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    /// Steered runs first (at most half the buffers, so a busy inbox cannot starve the
    /// socket), then the socket's own datagrams, routed; then the inbox again if room is left.
    /// The inbox registers the waker whenever it is empty, so a run handed over while quinn
    /// waits on the socket wakes the endpoint.
    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let room = bufs.len().min(meta.len());
        let mut n = self.take_steered(cx, bufs, meta, room.div_ceil(2));
        let mut err = None;
        let parked = self.group.parked.load(Ordering::Relaxed);
        if let (Some(b), Some(m)) = (bufs.get_mut(n..room), meta.get_mut(n..room)) {
            if !b.is_empty() && !parked {
                match self.inner.poll_recv(cx, b, m) {
                    Poll::Ready(Ok(k)) => {
                        for (buf, m) in b.iter_mut().zip(m.iter_mut()).take(k) {
                            self.route(buf, m);
                        }
                        n += k;
                    }
                    Poll::Ready(Err(e)) => err = Some(e),
                    Poll::Pending => {}
                }
            }
        }
        if let (Some(b), Some(m)) = (bufs.get_mut(n..room), meta.get_mut(n..room)) {
            n += self.take_steered(cx, b, m, room);
        }
        match (n, err) {
            (0, Some(e)) => Poll::Ready(Err(e)),
            (0, None) => Poll::Pending,
            // An error after some runs: reported on the next call if it persists.
            (n, _) => Poll::Ready(Ok(n)),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::future::poll_fn;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use quinn::Runtime;

    use super::*;

    fn key(b: u8) -> CidKey {
        CidKey::new([b; 16])
    }

    fn short(cid: &[u8], payload: &[u8]) -> Vec<u8> {
        [&[0x40][..], cid, payload].concat()
    }

    #[test]
    fn ids_name_their_core_and_validate_only_under_their_key() {
        let k = key(1);
        for core in [0usize, 1, 7, 254] {
            let mut g = CoreCidGenerator::new(k.clone(), core);
            for _ in 0..200 {
                let cid = g.generate_cid();
                assert_eq!(cid.len(), CID_LEN);
                assert_eq!(k.core_of(&cid), Some(core as u8));
                assert!(g.validate(&cid).is_ok());
                // Another process key (another host, a test run) does not recognise it.
                assert!(key(2).core_of(&cid).is_none_or(|c| c != core as u8));
            }
        }
        // Cores that cannot be named get the reserved byte: never steered.
        let mut big = CoreCidGenerator::new(k.clone(), 300);
        let cid = big.generate_cid();
        assert_eq!(k.core_of(&cid), Some(NO_CORE));
        assert_eq!(steer(&short(&cid, b"x"), 0, &k), None);
    }

    #[test]
    fn ids_do_not_show_their_core() {
        // The first byte of core 0's ids takes many values (masked per nonce), and a flipped
        // core byte or a flipped tag bit no longer validates.
        let k = key(3);
        let mut g = CoreCidGenerator::new(k.clone(), 0);
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..2000 {
            let cid = g.generate_cid();
            firsts.insert(cid[0]);
            let mut forged = cid.to_vec();
            forged[0] ^= 1;
            assert_eq!(k.core_of(&forged), None);
            let mut forged = cid.to_vec();
            forged[7] ^= 0x80;
            assert_eq!(k.core_of(&forged), None);
        }
        assert!(firsts.len() > 200, "{} distinct first bytes", firsts.len());
    }

    #[test]
    fn steer_moves_only_short_headers_with_another_cores_id() {
        let k = key(4);
        let on1 = CoreCidGenerator::new(k.clone(), 1).generate_cid();
        let on0 = CoreCidGenerator::new(k.clone(), 0).generate_cid();
        assert_eq!(steer(&short(&on1, b"payload"), 0, &k), Some(1));
        assert_eq!(steer(&short(&on1, b"payload"), 1, &k), None);
        assert_eq!(steer(&short(&on0, b"payload"), 0, &k), None);
        // The fixed bit may be greased.
        let mut greased = short(&on1, b"p");
        greased[0] = 0x00;
        assert_eq!(steer(&greased, 0, &k), Some(1));
        // Long header with our id as its destination: stays.
        let mut long = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
        long.extend_from_slice(&on1);
        assert_eq!(steer(&long, 0, &k), None);
        // Not our id, a runt, nothing.
        assert_eq!(steer(&short(&[9; 8], b"p"), 0, &k), None);
        assert_eq!(steer(&short(&on1[..5], b""), 0, &k), None);
        assert_eq!(steer(&[], 0, &k), None);
        // An id under another key never moves.
        assert_eq!(steer(&short(&on1, b"p"), 0, &key(5)), None);
    }

    /// Two cores' sockets on one port: a datagram carrying core 1's id that the kernel gives
    /// to core 0's socket comes out of core 1's with its true source; a mixed GRO-like run is
    /// split; ours stay; a full inbox drops and counts.
    #[test]
    fn sockets_hand_packets_to_the_owning_core() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let k = key(6);
            let reg = SteerRegistry::default();
            let bind = || {
                let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            };
            let s0 = bind();
            let addr0 = s0.local_addr().unwrap();
            let group = reg.group(addr0);
            assert!(Arc::ptr_eq(&group, &reg.group(addr0)));
            let a = SteeringSocket::wrap(
                quinn::TokioRuntime.wrap_udp_socket(s0).unwrap(),
                0,
                k.clone(),
                group.clone(),
            );
            let b = SteeringSocket::wrap(
                quinn::TokioRuntime.wrap_udp_socket(bind()).unwrap(),
                1,
                k.clone(),
                group.clone(),
            );
            let client = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let for1 = CoreCidGenerator::new(k.clone(), 1).generate_cid();
            let for0 = CoreCidGenerator::new(k.clone(), 0).generate_cid();
            let recv = |s: &Arc<dyn AsyncUdpSocket>| {
                let s = s.clone();
                async move {
                    let mut storage = vec![0u8; 64 * 1024];
                    let mut bufs = [IoSliceMut::new(&mut storage)];
                    let mut metas = [RecvMeta::default()];
                    let r = tokio::time::timeout(
                        Duration::from_secs(2),
                        poll_fn(|cx| s.poll_recv(cx, &mut bufs, &mut metas)),
                    )
                    .await;
                    r.ok().map(|r| {
                        r.unwrap();
                        (bufs[0][..metas[0].len].to_vec(), metas[0])
                    })
                }
            };

            // Core 1's packet arrives at core 0's socket: core 0 yields nothing for quinn
            // (len 0), core 1 yields it with the client's address.
            client.send_to(&short(&for1, b"to core 1"), addr0).unwrap();
            let (got0, _) = recv(&a).await.unwrap();
            assert!(got0.is_empty());
            let (got1, m1) = recv(&b).await.expect("steered to core 1");
            assert_eq!(got1, short(&for1, b"to core 1"));
            assert_eq!(m1.addr, client.local_addr().unwrap());
            assert_eq!(group.counts(), (1, 0));

            // Core 0's own packet and a handshake stay.
            client.send_to(&short(&for0, b"mine"), addr0).unwrap();
            assert_eq!(recv(&a).await.unwrap().0, short(&for0, b"mine"));
            let long = [&[0xc3u8, 0, 0, 0, 1, 8][..], &for1[..], b"hello"].concat();
            client.send_to(&long, addr0).unwrap();
            assert_eq!(recv(&a).await.unwrap().0, long);

            // A run of three (as GRO hands them: stride 20, the last shorter) with one
            // datagram for core 1 in the middle: it moves, the others close up.
            let d0 = short(&for0, &[0xa0; 11]);
            let d1 = short(&for1, &[0xb1; 11]);
            let d2 = short(&for0, &[0xc2; 5]);
            let mut run = [d0.clone(), d1.clone(), d2.clone()].concat();
            let mut m = RecvMeta {
                len: run.len(),
                stride: 20,
                ..RecvMeta::default()
            };
            let sock_a = SteeringSocket {
                inner: quinn::TokioRuntime.wrap_udp_socket(bind()).unwrap(),
                core: 0,
                key: k.clone(),
                group: group.clone(),
                rx: Mutex::new(mpsc::channel(1).1),
                tx: mpsc::channel(1).0,
                bytes: Arc::new(AtomicUsize::new(0)),
            };
            sock_a.route(&mut run, &mut m);
            assert_eq!((m.len, m.stride), (34, 20));
            assert_eq!(run[..34], [d0, d2].concat()[..]);
            let (got, meta) = recv(&b).await.expect("the middle datagram");
            assert_eq!((got, meta.stride), (d1.clone(), 20));

            // A core that does not serve this address (a predecessor's core 7): stays.
            let for7 = CoreCidGenerator::new(k.clone(), 7).generate_cid();
            client.send_to(&short(&for7, b"gone"), addr0).unwrap();
            assert_eq!(recv(&a).await.unwrap().0, short(&for7, b"gone"));

            // Core 1 stops reading: its inbox fills, then drops are counted.
            let before = group.counts();
            for _ in 0..INBOX_ITEMS + 5 {
                group.hand_over(1, &d1, RecvMeta::default());
            }
            let after = group.counts();
            assert_eq!(after.0 - before.0, INBOX_ITEMS as u64);
            assert_eq!(after.1 - before.1, 5);
            drop(b);
            assert!(!group.serves(1), "a dropped socket leaves the group");
        });
    }
}
