//! Mux.Cool TCP sub-streams inside a datagram-carrying connection ([`super::udp_stream`]):
//! v2ray/Xray clients with `mux` enabled send every TCP connection as a sub-stream of one
//! VLESS/VMess connection (command 3).
//!
//! Each sub-stream is a task of its own: it connects through the node's outbound (the same
//! connect path, private-destination check and timeouts as a normal connection), writes what
//! the client sends (after the user's speed limit; counted as upload once written) and reads
//! what the destination answers (speed limit, then queued to the connection, which counts it
//! as download once written to the client).
//!
//! Bounds: at most [`MAX_STREAMS`] sub-streams per connection; [`UP_QUEUE`] client frames
//! queued per sub-stream (when one is full the connection stops reading the client until it
//! has room: Mux.Cool has no flow control, and v2ray's server blocks the same way);
//! [`DOWN_QUEUE`] chunks of at most [`READ_CHUNK`] bytes queued from all sub-streams toward the
//! client (a sub-stream waits for room, so a slow client slows its destinations' reads).
//!
//! Ends, as v2ray's server: the destination's EOF (or an error) ends the sub-stream with an End
//! frame (error option on failure) and closes it; the client's End flushes what is queued,
//! half-closes the destination, and forwards nothing more (bytes still arriving are read and
//! dropped, uncounted, for at most the node's downlink-only timeout, so the close is orderly).
//! When the connection ends (EOF, kick, idle), every sub-stream task ends with it.

use std::collections::HashMap;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::Arc;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use v2sp_shared::shm::UserRef;

use super::{ConnMeter, Core, NodeRt};
use crate::limits::gcra::Bucket;
use crate::proto::Destination;
use crate::relay::account::Account;

/// TCP sub-streams one connection may hold open (more are refused with End + error).
pub(super) const MAX_STREAMS: usize = 128;
/// Client frames queued toward one sub-stream's destination.
pub(super) const UP_QUEUE: usize = 4;
/// Chunks queued from all sub-streams toward the client (at most 512 KiB).
pub(super) const DOWN_QUEUE: usize = 8;
/// Most bytes one read from a destination takes: one AnyTLS frame's worth. Per-chunk costs
/// (two task wake-ups, a channel hop, framing, a TLS seal) dominate a bulk download through a
/// session; 16 KiB chunks cost 1.55× sing-box's CPU per GB on AnyTLS, 64 KiB ones 0.96×.
pub(super) const READ_CHUNK: usize = 64 * 1024 - 1;

/// What a sub-stream task sends the connection.
pub(super) struct Down {
    flow: u16,
    /// Which opening of `flow` this is from (a late message from an ended one is ignored).
    gen: u64,
    pub(super) what: DownKind,
}

pub(super) enum DownKind {
    /// The outbound connection is up (AnyTLS v2 answers with a synack).
    Connected,
    Data(Vec<u8>),
    End {
        error: bool,
    },
}

struct Stream {
    gen: u64,
    up: mpsc::Sender<Vec<u8>>,
}

/// The connection's open sub-streams.
pub(super) struct Streams {
    map: HashMap<u16, Stream>,
    next_gen: u64,
    down: mpsc::Sender<Down>,
}

/// What a sub-stream needs from its connection.
pub(super) struct StreamEnv<'a> {
    pub(super) core: &'a Rc<Core>,
    pub(super) node: &'a Rc<NodeRt>,
    pub(super) user: UserRef,
    pub(super) bucket: &'a Arc<Bucket>,
}

impl Streams {
    pub(super) fn new() -> (Streams, mpsc::Receiver<Down>) {
        let (down, rx) = mpsc::channel(DOWN_QUEUE);
        (
            Streams {
                map: HashMap::new(),
                next_gen: 0,
                down,
            },
            rx,
        )
    }

    /// Opens sub-stream `flow` to `dest` with its first bytes; false when refused (too many).
    pub(super) fn open(&mut self, env: &StreamEnv<'_>, flow: u16, dest: Destination, first: Vec<u8>) -> bool {
        if self.map.len() >= MAX_STREAMS || self.map.contains_key(&flow) {
            return false;
        }
        let gen = self.next_gen;
        self.next_gen = gen.wrapping_add(1);
        let (up, up_rx) = mpsc::channel(UP_QUEUE);
        self.map.insert(flow, Stream { gen, up });
        let task = Task {
            core: env.core.clone(),
            node: env.node.clone(),
            user: env.user,
            bucket: env.bucket.clone(),
            flow,
            gen,
            down: self.down.clone(),
        };
        tokio::task::spawn_local(task.run(dest, first, up_rx));
        true
    }

    /// Queues client bytes for `flow`: `Err(data)` when its queue is full (wait with
    /// [`Streams::sender`], then push again). Bytes for a flow that is not open are dropped.
    pub(super) fn push(&mut self, flow: u16, data: Vec<u8>) -> Result<(), Vec<u8>> {
        let Some(s) = self.map.get(&flow) else {
            return Ok(());
        };
        match s.up.try_send(data) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(d)) => Err(d),
            // The task ended (its End is on the way): nothing more goes to the destination.
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        }
    }

    /// The queue of `flow`, to wait for room in.
    pub(super) fn sender(&self, flow: u16) -> Option<mpsc::Sender<Vec<u8>>> {
        self.map.get(&flow).map(|s| s.up.clone())
    }

    /// The client ended `flow`: its task flushes the queue, then half-closes the destination.
    pub(super) fn end(&mut self, flow: u16) {
        self.map.remove(&flow);
    }

    /// A message from a task: `None` when it is from a sub-stream no longer open. An End
    /// closes the flow.
    pub(super) fn accept(&mut self, d: Down) -> Option<(u16, DownKind)> {
        let current = self.map.get(&d.flow).is_some_and(|s| s.gen == d.gen);
        if !current {
            return None;
        }
        if matches!(d.what, DownKind::End { .. }) {
            self.map.remove(&d.flow);
        }
        Some((d.flow, d.what))
    }
}

/// One sub-stream's task.
struct Task {
    core: Rc<Core>,
    node: Rc<NodeRt>,
    user: UserRef,
    bucket: Arc<Bucket>,
    flow: u16,
    gen: u64,
    down: mpsc::Sender<Down>,
}

impl Task {
    fn meter(&self) -> ConnMeter<'_> {
        ConnMeter::of(&self.core, &self.user)
    }

    /// The sub-stream's accounting: the user's bucket and meter; the idle clock is the
    /// connection's (its loop touches it for every frame).
    fn account<'a>(&'a self, meter: &'a ConnMeter<'a>) -> Account<'a> {
        Account {
            meter,
            bucket: &self.bucket,
            ctl: None,
        }
    }

    async fn run(self, dest: Destination, first: Vec<u8>, mut up: mpsc::Receiver<Vec<u8>>) {
        // The connection's end (its receiver dropped) ends every sub-stream.
        let error = tokio::select! {
            e = self.serve(&dest, first, &mut up) => e,
            _ = self.down.closed() => return,
        };
        if let Some(error) = error {
            let _ = self
                .down
                .send(Down {
                    flow: self.flow,
                    gen: self.gen,
                    what: DownKind::End { error },
                })
                .await;
        }
    }

    /// Relays until the sub-stream ends: `Some(error)` when an End frame is due, `None` when
    /// the client ended it.
    async fn serve(
        &self,
        dest: &Destination,
        first: Vec<u8>,
        up: &mut mpsc::Receiver<Vec<u8>>,
    ) -> Option<bool> {
        let uuid = super::route_uuid(&self.node, &self.user);
        let ctx = crate::outbound::RouteCtx {
            node_tag: &self.node.cfg.tag,
            user_id: self.user.user_id,
            user_uuid: uuid.as_deref(),
            source: None,
            sniffed_protocol: None,
            sniffed_domain: None,
        };
        let s = match self
            .core
            .outbound
            .open_plain(dest, &self.node.connect, &ctx)
            .await
        {
            Ok(s) => s,
            Err(crate::outbound::OutboundError::Blocked(d, rule)) => {
                tracing::info!(node = self.node.cfg.slot, dest = %d, rule, "mux sub-stream: destination blocked by audit rule");
                return Some(true);
            }
            Err(crate::outbound::OutboundError::Routed(d, rule)) => {
                tracing::info!(node = self.node.cfg.slot, dest = %d, rule = %rule, "mux sub-stream: destination routed to a blackhole");
                return Some(true);
            }
            Err(e) => {
                tracing::debug!(node = self.node.cfg.slot, %dest, "mux sub-stream: outbound failed: {e}");
                return Some(true);
            }
        };
        let up_now = Down {
            flow: self.flow,
            gen: self.gen,
            what: DownKind::Connected,
        };
        if self.down.send(up_now).await.is_err() {
            return None;
        }
        let uplink = self.uplink(&s, first, up);
        let downlink = self.downlink(&s);
        let client_ended = tokio::select! {
            r = uplink => r.ok(),
            r = downlink => return Some(r.is_err()),
        };
        match client_ended {
            Some(()) => {
                // Orderly close: drop what still arrives (uncounted), bounded in time.
                let linger = self.node.relay.downlink_only;
                let _ = tokio::time::timeout(linger, self.discard(&s)).await;
                None
            }
            None => Some(true),
        }
    }

    /// Client bytes to the destination until the client ends the sub-stream (then half-close).
    async fn uplink(
        &self,
        s: &TcpStream,
        first: Vec<u8>,
        up: &mut mpsc::Receiver<Vec<u8>>,
    ) -> std::io::Result<()> {
        let meter = self.meter();
        let mut next = (!first.is_empty()).then_some(first);
        // Bounded by the client: each pass writes one frame it sent.
        loop {
            let data = match next.take() {
                Some(d) => d,
                None => match up.recv().await {
                    Some(d) => d,
                    None => break,
                },
            };
            self.account(&meter)
                .send_up(data.len(), crate::tls::write_all(s, &data))
                .await?;
        }
        let _ = SockRef::from(s).shutdown(Shutdown::Write);
        Ok(())
    }

    /// Destination bytes to the connection until EOF (`Ok`) or an error.
    async fn downlink(&self, s: &TcpStream) -> std::io::Result<()> {
        let meter = self.meter();
        loop {
            let Some(data) = self.read_chunk(s).await? else {
                return Ok(());
            };
            // Paced here; counted by the connection once written to the client.
            self.account(&meter).pace(data.len()).await;
            let d = Down {
                flow: self.flow,
                gen: self.gen,
                what: DownKind::Data(data),
            };
            if self.down.send(d).await.is_err() {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
        }
    }

    /// Reads and drops until EOF or an error.
    async fn discard(&self, s: &TcpStream) {
        while let Ok(Some(_)) = self.read_chunk(s).await {}
    }

    /// One read of at most [`READ_CHUNK`] bytes (`None` at EOF); the chunk is allocated only
    /// once the socket is readable.
    async fn read_chunk(&self, s: &TcpStream) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            s.readable().await?;
            // Read straight into the chunk that travels to the session (no pooled buffer and
            // no copy out of it); allocated only once the socket is readable.
            let mut v = Vec::with_capacity(READ_CHUNK);
            match s.try_read_buf(&mut v) {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(v)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
