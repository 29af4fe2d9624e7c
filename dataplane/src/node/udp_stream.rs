//! UDP carried inside a client stream (Trojan UDP ASSOCIATE, VLESS UDP, VLESS mux/XUDP): the
//! protocol's [`DatagramStreamCodec`] cuts the (TLS-decrypted) stream into datagrams; this
//! module owns the outbound UDP sockets, one per flow (mux sub-session), and frames the replies
//! back into the stream.
//!
//! Like a TCP connection: device admission on open, registered (a kick or the user's removal
//! closes it within a tick), idle timeout, the user's speed limit (datagrams over it are
//! dropped, never queued), private destinations refused unless allowed. Counting: upload =
//! payload bytes sent to a destination, download = payload bytes received and written to the
//! client (framing and TLS not counted).
//!
//! Mux.Cool TCP sub-streams (VLESS/VMess command 3 from v2ray/Xray clients with `mux`) are
//! served here too, each by a task of [`super::mux_tcp`]; this loop stops reading the client
//! while one of them has no room for the client's next frame, and keeps writing replies.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;
use v2sp_shared::shm::UserRef;

use super::mux_tcp::{DownKind, StreamEnv, Streams};
use super::udp::{datagram_target, open_outbound, send_now, to_socket_family};
use super::{ConnMeter, Core, NodeRt};
use crate::limits::gcra::Bucket;
use crate::proto::{DatagramStreamCodec, Destination, StreamDatagram};
use crate::relay::account::Account;
use crate::relay::ConnCtl;
use crate::tls::TlsSession;

/// Most flows one connection may hold (more are dropped until one ends).
const MAX_FLOWS: usize = 256;
/// Replies queued between the flows' sockets and the client (more are dropped, as UDP may).
const QUEUE: usize = 256;
/// Bytes those replies may hold at once: a client that does not read gets its replies
/// dropped past this, instead of 256 × 64 KiB held for it.
const QUEUE_BYTES: usize = 512 * 1024;
/// A client packet may not be longer than this (length fields are 16-bit; headers added).
const MAX_PENDING: usize = 2 * 65536 + 1024;

/// What is outside the datagram codec: TLS and/or transport framing (one stacked codec), or
/// nothing.
enum Outer {
    Plain,
    Codec(Box<dyn crate::proto::StreamCodec>),
}

impl Outer {
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, crate::proto::WireError> {
        match self {
            Outer::Plain => {
                out.extend_from_slice(wire);
                Ok(wire.len())
            }
            Outer::Codec(t) => t.open(wire, out),
        }
    }
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), crate::proto::WireError> {
        match self {
            Outer::Plain => {
                out.extend_from_slice(plain);
                Ok(())
            }
            Outer::Codec(t) => t.seal(plain, out),
        }
    }
}

/// Where the stream's wire bytes come from and go to.
pub(super) enum Client<'a> {
    /// A TCP connection (TLS and transport framing are in the stream's outer codec).
    Tcp(&'a TcpStream),
    /// An XHTTP session: its ordered upload, and the channel of its download's body.
    Http(&'a super::xhttp::Session, &'a mpsc::Sender<bytes::Bytes>),
}

impl Client<'_> {
    async fn write_all(&self, wire: &[u8]) -> io::Result<()> {
        match self {
            Client::Tcp(s) => crate::tls::write_all(s, wire).await,
            Client::Http(_, down) => down
                .send(bytes::Bytes::copy_from_slice(wire))
                .await
                .map_err(|_| io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Appends what the client sent next to `into`: `Ok(0)` at its end, `WouldBlock` when a
    /// readiness turned out false. Cancel-safe (nothing is taken unless it is returned).
    async fn read(&self, bufs: &crate::relay::BufPool, into: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Client::Tcp(s) => {
                s.readable().await?;
                let mut b = bufs.take();
                let r = s.try_read(&mut b);
                if let Ok(n) = r {
                    into.extend_from_slice(b.get(..n).unwrap_or_default());
                }
                bufs.put(b);
                r
            }
            Client::Http(session, _) => Ok(session.next_upload().await.map_or(0, |b| {
                into.extend_from_slice(&b);
                b.len()
            })),
        }
    }
}

struct Flow {
    sock: Rc<UdpSocket>,
    ctl: Rc<ConnCtl>,
}

/// A reply datagram from a flow's socket.
type Reply = (u16, SocketAddr, Vec<u8>);

/// Admits, registers and serves one datagram-carrying connection until it ends.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    core: Rc<Core>,
    node: Rc<NodeRt>,
    client: Client<'_>,
    peer: SocketAddr,
    user: UserRef,
    reply: Vec<u8>,
    initial: Vec<u8>,
    codec: Box<dyn DatagramStreamCodec>,
    framing: Option<Box<dyn crate::proto::StreamCodec>>,
    tls: Option<Box<(TlsSession, Vec<u8>)>>,
) {
    let slot = node.cfg.slot;
    let ip = crate::net::normalise_ip(peer.ip());
    // Device admission, registry and bucket exactly as for a TCP connection.
    let Some(super::Admitted {
        reg: _reg,
        ctl,
        bucket,
    }) = super::admit(&core, &node, &user, ip)
    else {
        return;
    };
    let (outer, carry) = match (tls.map(|b| *b), framing) {
        (Some((session, carry)), framing) => (
            Outer::Codec(Box::new(crate::tls::TlsCodec::new(session, framing))),
            carry,
        ),
        (None, Some(framing)) => (Outer::Codec(framing), Vec::new()),
        (None, None) => (Outer::Plain, Vec::new()),
    };
    // The core's idle sweep and kick/removal cancel `ctl`; every await of the connection,
    // writes to a client that does not read included, ends with it (the select below).
    ctl.arm(node.relay.idle);
    let mut conn = Conn {
        core: &core,
        node: &node,
        client,
        user,
        bucket,
        ctl: &ctl,
        outer,
        codec,
        flows: RefCell::new(HashMap::new()),
        last: std::cell::Cell::new(Instant::now()),
        stalled: VecDeque::new(),
        queued: Rc::new(std::cell::Cell::new(0)),
    };
    let end = tokio::select! {
        end = conn.run(reply, initial, carry) => end,
        _ = ctl.cancelled() => if ctl.timed_out() { End::Idle } else { End::Cancelled },
    };
    for f in conn.flows.borrow().values() {
        f.ctl.cancel();
    }
    match end {
        End::Error(why) => tracing::debug!(node = slot, user = user.user_id, "datagram stream ended: {why}"),
        other => tracing::trace!(node = slot, ?other, "datagram stream ended"),
    }
}

struct Conn<'a> {
    core: &'a Rc<Core>,
    node: &'a Rc<NodeRt>,
    client: Client<'a>,
    user: UserRef,
    bucket: Arc<Bucket>,
    ctl: &'a ConnCtl,
    outer: Outer,
    codec: Box<dyn DatagramStreamCodec>,
    flows: RefCell<HashMap<u16, Flow>>,
    last: std::cell::Cell<Instant>,
    /// Decoded events not acted on yet: the first is client data for a TCP sub-stream whose
    /// queue is full (the client is not read until it has room).
    stalled: VecDeque<StreamDatagram>,
    /// Payload bytes in the reply queue (bounded by [`QUEUE_BYTES`]).
    queued: Rc<std::cell::Cell<usize>>,
}

#[derive(Debug)]
enum End {
    Eof,
    Idle,
    Cancelled,
    Error(&'static str),
}

impl Conn<'_> {
    fn meter(&self) -> ConnMeter<'_> {
        ConnMeter::of(self.core, &self.user)
    }

    /// The connection's accounting: datagrams and sub-streams draw on one bucket and touch
    /// one idle clock.
    fn account<'a>(&'a self, meter: &'a ConnMeter<'a>) -> Account<'a> {
        Account {
            meter,
            bucket: &self.bucket,
            ctl: Some(self.ctl),
        }
    }

    /// Something moved: the idle clocks (this loop's and the core's sweep) restart.
    fn active(&self) {
        self.last.set(Instant::now());
        self.ctl.touch();
    }

    async fn run(&mut self, reply: Vec<u8>, initial: Vec<u8>, carry: Vec<u8>) -> End {
        let (tx, mut rx) = mpsc::channel::<Reply>(QUEUE);
        // Dropped when this returns: every sub-stream task ends with the connection.
        let (mut streams, mut down_rx) = Streams::new();
        let streams = &mut streams;
        if !reply.is_empty() {
            let mut wire = Vec::new();
            if self.outer.seal(&reply, &mut wire).is_err() || self.client.write_all(&wire).await.is_err() {
                return End::Error("reply");
            }
        }
        let mut wire_in = carry;
        let mut plain = initial;
        if let Err(e) = self.decode(&mut wire_in, &mut plain, &tx, streams).await {
            return e;
        }
        let idle = self.node.relay.idle;
        loop {
            let deadline = self.last.get() + idle;
            // The sub-stream whose queue the next event waits for.
            let waiting = match self.stalled.front() {
                Some(StreamDatagram::StreamData { flow, .. }) => streams.sender(*flow),
                _ => None,
            };
            let stalled = !self.stalled.is_empty();
            tokio::select! {
                room = async {
                    match waiting.as_ref() {
                        Some(s) => s.reserve().await.is_ok(),
                        None => false,
                    }
                }, if stalled => {
                    if !room {
                        // The sub-stream is gone: its data is dropped.
                        self.stalled.pop_front();
                    }
                    self.active();
                    if let Err(e) = self.act(&tx, streams).await {
                        return e;
                    }
                }
                Some(d) = down_rx.recv() => {
                    self.active();
                    let Some((flow, what)) = streams.accept(d) else { continue };
                    let mut framed = Vec::new();
                    let (sealed, n) = match what {
                        DownKind::Connected => (self.codec.seal_connected(flow, &mut framed), 0),
                        DownKind::Data(data) => (self.codec.seal_stream(flow, &data, &mut framed), data.len()),
                        DownKind::End { error } => (self.codec.seal_end(flow, error, &mut framed), 0),
                    };
                    if sealed.is_err() {
                        return End::Error("seal");
                    }
                    // Nothing to send (a codec without a connect reply; a stream the client
                    // closed meanwhile): nothing written, nothing counted.
                    if framed.is_empty() {
                        continue;
                    }
                    let mut wire = Vec::with_capacity(framed.len() + 64);
                    if self.outer.seal(&framed, &mut wire).is_err() {
                        return End::Error("seal");
                    }
                    if self.client.write_all(&wire).await.is_err() {
                        return End::Error("client write");
                    }
                    if n > 0 {
                        self.account(&self.meter()).sent_down(n as u64);
                    }
                }
                r = self.client.read(&self.core.bufs, &mut wire_in), if !stalled => {
                    match r {
                        Ok(0) => return End::Eof,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => return End::Error("client read"),
                    }
                    self.active();
                    if let Err(e) = self.decode(&mut wire_in, &mut plain, &tx, streams).await {
                        return e;
                    }
                }
                Some((flow, from, data)) = rx.recv() => {
                    self.queued.set(self.queued.get().saturating_sub(data.len()));
                    self.active();
                    if !self.account(&self.meter()).fits(data.len()) {
                        continue;
                    }
                    let mut framed = Vec::with_capacity(data.len() + 64);
                    if self.codec.seal(flow, from, &data, &mut framed).is_err() {
                        continue;
                    }
                    let mut wire = Vec::with_capacity(framed.len() + 64);
                    if self.outer.seal(&framed, &mut wire).is_err() {
                        return End::Error("seal");
                    }
                    if self.client.write_all(&wire).await.is_err() {
                        return End::Error("client write");
                    }
                    self.account(&self.meter()).sent_down(data.len() as u64);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if Instant::now() >= self.last.get() + idle {
                        return End::Idle;
                    }
                }
                _ = self.ctl.cancelled() => return End::Cancelled,
            }
        }
    }

    /// Sends the transport's control frames (HTTP/2 acks and window updates, ws pongs).
    async fn send_control(&mut self) -> Result<(), End> {
        let Outer::Codec(c) = &mut self.outer else {
            return Ok(());
        };
        if !c.has_control() {
            return Ok(());
        }
        let mut wire = Vec::new();
        c.take_control(&mut wire).map_err(|_| End::Error("seal"))?;
        self.client
            .write_all(&wire)
            .await
            .map_err(|_| End::Error("client write"))
    }

    /// Opens what came in and sends the complete datagrams.
    async fn decode(
        &mut self,
        wire_in: &mut Vec<u8>,
        plain: &mut Vec<u8>,
        tx: &mpsc::Sender<Reply>,
        streams: &mut Streams,
    ) -> Result<(), End> {
        let used = self.outer.open(wire_in, plain).map_err(|_| End::Error("TLS"))?;
        wire_in.drain(..used.min(wire_in.len()));
        self.send_control().await?;
        let mut events = Vec::new();
        let mut reply = Vec::new();
        let opened = self.codec.open(plain, &mut events, &mut reply);
        if opened.is_err() && !reply.is_empty() {
            // The protocol's last word before it ends the stream (an AnyTLS alert).
            let mut wire = Vec::new();
            if self.outer.seal(&reply, &mut wire).is_ok() {
                let _ = self.client.write_all(&wire).await;
            }
        }
        let used = opened.map_err(|e| {
            tracing::debug!(node = self.node.cfg.slot, error = %e, "datagram stream malformed");
            End::Error("malformed")
        })?;
        plain.drain(..used.min(plain.len()));
        if plain.len() > MAX_PENDING || wire_in.len() > MAX_PENDING {
            return Err(End::Error("packet too long"));
        }
        // An idle session holds no buffers: what a burst grew goes back once it is consumed.
        for v in [&mut *wire_in, &mut *plain] {
            if v.is_empty() && v.capacity() > 4096 {
                *v = Vec::new();
            }
        }
        if !reply.is_empty() {
            let mut wire = Vec::new();
            self.outer
                .seal(&reply, &mut wire)
                .map_err(|_| End::Error("seal"))?;
            self.client
                .write_all(&wire)
                .await
                .map_err(|_| End::Error("client write"))?;
        }
        self.stalled.extend(events);
        self.act(tx, streams).await
    }

    /// Acts on the decoded events in order, until a TCP sub-stream's queue is full.
    async fn act(&mut self, tx: &mpsc::Sender<Reply>, streams: &mut Streams) -> Result<(), End> {
        // Bounded by what one read decoded.
        while let Some(ev) = self.stalled.pop_front() {
            match ev {
                StreamDatagram::Packet { flow, dest, payload } => {
                    self.send_up(flow, dest, &payload, tx).await
                }
                StreamDatagram::End { flow } => {
                    if let Some(f) = self.flows.borrow_mut().remove(&flow) {
                        f.ctl.cancel();
                    }
                    streams.end(flow);
                }
                StreamDatagram::StreamOpen { flow, dest, data } => {
                    let env = StreamEnv {
                        core: self.core,
                        node: self.node,
                        user: self.user,
                        bucket: &self.bucket,
                    };
                    if !streams.open(&env, flow, dest, data) {
                        let mut framed = Vec::new();
                        let mut wire = Vec::new();
                        self.codec
                            .seal_end(flow, true, &mut framed)
                            .and_then(|()| self.outer.seal(&framed, &mut wire))
                            .map_err(|_| End::Error("seal"))?;
                        self.client
                            .write_all(&wire)
                            .await
                            .map_err(|_| End::Error("client write"))?;
                    }
                }
                StreamDatagram::StreamData { flow, data } => {
                    if let Err(data) = streams.push(flow, data) {
                        self.stalled.push_front(StreamDatagram::StreamData { flow, data });
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    async fn send_up(&self, flow: u16, dest: Destination, payload: &[u8], tx: &mpsc::Sender<Reply>) {
        let Some(to) = datagram_target(self.core, self.node, &self.user, &dest).await else {
            return;
        };
        let Some(sock) = self.flow_socket(flow, tx) else {
            return;
        };
        let meter = self.meter();
        let acct = self.account(&meter);
        if !acct.fits(payload.len()) {
            return;
        }
        match send_now(&sock, payload, to_socket_family(&sock, to)) {
            Ok(n) => acct.sent_up(n as u64),
            Err(e) => tracing::debug!(%to, error = %e, "datagram not sent upstream"),
        }
    }

    /// The flow's outbound socket, opened (with its reader task) on first use.
    fn flow_socket(&self, flow: u16, tx: &mpsc::Sender<Reply>) -> Option<Rc<UdpSocket>> {
        if let Some(f) = self.flows.borrow().get(&flow) {
            return Some(f.sock.clone());
        }
        if self.flows.borrow().len() >= MAX_FLOWS {
            return None;
        }
        let sock = open_outbound(self.node)?;
        let ctl = Rc::new(ConnCtl::default());
        tokio::task::spawn_local(read_flow(
            self.core.clone(),
            flow,
            sock.clone(),
            ctl.clone(),
            tx.clone(),
            self.queued.clone(),
        ));
        self.flows.borrow_mut().insert(
            flow,
            Flow {
                sock: sock.clone(),
                ctl,
            },
        );
        Some(sock)
    }
}

/// Reads a flow's replies and queues them for the connection (until the flow or the
/// connection ends). A pooled buffer is taken only once a datagram is ready.
async fn read_flow(
    core: Rc<Core>,
    flow: u16,
    sock: Rc<UdpSocket>,
    ctl: Rc<ConnCtl>,
    tx: mpsc::Sender<Reply>,
    queued: Rc<std::cell::Cell<usize>>,
) {
    loop {
        tokio::select! {
            r = sock.readable() => if r.is_err() { return },
            _ = ctl.cancelled() => return,
            _ = tx.closed() => return,
        }
        let mut b = core.bufs.take();
        let r = sock.try_recv_from(&mut b);
        let item = match r {
            // No room in the queue's byte budget: dropped, as UDP may.
            Ok((n, _)) if queued.get() + n > QUEUE_BYTES => None,
            Ok((n, from)) => Some((
                flow,
                SocketAddr::new(crate::net::normalise_ip(from.ip()), from.port()),
                b.get(..n).unwrap_or_default().to_vec(),
            )),
            Err(_) => None,
        };
        core.bufs.put(b);
        match (item, r) {
            (Some(item), _) => {
                let n = item.2.len();
                // Full queue: the datagram is dropped, as UDP may.
                match tx.try_send(item) {
                    Ok(()) => queued.set(queued.get() + n),
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                }
            }
            (None, Ok(_)) => {}
            (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            _ => return,
        }
    }
}
