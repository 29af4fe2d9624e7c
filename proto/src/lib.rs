//! v2sp's protocols and transports, sans-IO: the inbound seam and every protocol's and
//! transport's wire code (Shadowsocks, VMess, VLESS, Trojan, AnyTLS, Hysteria 2's framing;
//! ws, grpc, httpupgrade, HTTP camouflage).
//!
//! This crate has no tokio and no sockets: the compiler keeps protocol code sans-IO, as
//! `quinn-proto` does for QUIC. Time mostly comes in as an argument; four reads of the clock
//! remain and are next to become arguments (SS-2022's timestamp window in `ss/ss2022.rs`, the
//! grpc flood window in `transport/grpc/h2.rs`, the HTTP camouflage's `Date` header in
//! `transport/tcphttp.rs`). The
//! data plane (`v2sp-dataplane`) owns sockets, buffers, splice, counting and limits, and
//! re-exports this crate as `v2sp_dataplane::proto` (and `transport`).
//!
//! A protocol never touches a socket. Its TCP handshake is a state machine fed with the bytes
//! the core read ([`StreamHandshake::feed`]); when it has seen enough it answers with a
//! [`Next`] — *what next* — and the relay engine (which owns sockets, buffers, splice and
//! counting) carries it out. After the handshake, payload passes through a [`StreamCodec`]
//! (frames opened/sealed in the core's buffers) or unchanged (`Next::Forward` with
//! `codec: None`, eligible for splice).

use std::fmt;
use std::net::SocketAddr;

use v2sp_shared::shm::UserRef;

#[cfg(feature = "anytls")]
pub mod anytls;
pub mod fixture;
#[cfg(feature = "hysteria2")]
pub mod hysteria2;
#[cfg(feature = "quic")]
pub mod quic;
#[cfg(feature = "shadowsocks")]
pub mod ss;
#[cfg(feature = "trojan")]
pub mod trojan;
#[cfg(feature = "tuic")]
pub mod tuic;
#[cfg(feature = "vless")]
pub mod vless;
#[cfg(feature = "vmess")]
pub mod vmess;

pub mod transport;

/// Where a proxied stream or datagram goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    Ip(SocketAddr),
    Domain(String, u16),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Ip(a) => write!(f, "{a}"),
            Destination::Domain(d, p) => write!(f, "{d}:{p}"),
        }
    }
}

/// Errors a codec reports. `Auth` means "this is not one of our users" and must be handled
/// exactly like other garbage on the wire (no distinctive reply).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("client sent malformed data: {0}")]
    Malformed(&'static str),
    #[error("authentication failed: {0}")]
    Auth(&'static str),
    #[error("replayed handshake")]
    Replay,
    #[error("timestamp outside the allowed window")]
    Timestamp,
    #[error("frame failed authentication (bad tag)")]
    BadTag,
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// How to drop a client that failed authentication: never a distinctive error or timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectPolicy {
    /// Keep reading and discarding until the client gives up or the handshake timeout fires,
    /// then close (what a server that is still waiting for more bytes looks like).
    DrainUntilTimeout,
    /// Close right away (only where the protocol's real servers do so).
    Close,
    /// Read (and discard) up to this many more bytes, then close: Xray's VMess answer to a bad
    /// auth id. A client that sends less is held until the handshake timeout, like any
    /// server still waiting.
    DrainThenClose(u32),
}

/// Result of feeding bytes to a handshake.
pub enum Step {
    /// Need at least this many more bytes (a hint; 0 = unknown).
    NeedMore(usize),
    /// Handshake finished.
    Done(Next),
}

/// What the core does with a connection after the handshake.
pub enum Next {
    /// Connect to `dest` and relay. `initial_upload` is plaintext already decoded that goes to
    /// the destination first; `reply` are wire bytes to send to the client right away;
    /// `codec` is `None` when the remaining bytes pass unchanged (splice-eligible).
    Forward {
        dest: Destination,
        user: UserRef,
        initial_upload: Vec<u8>,
        reply: Vec<u8>,
        codec: Option<Box<dyn StreamCodec>>,
    },
    /// Not one of ours (or malformed): handled without any distinctive behaviour.
    Reject { error: WireError, policy: RejectPolicy },
    /// Not one of ours, and the protocol has fallbacks (Trojan, VLESS, AnyTLS): `consumed` is every
    /// plaintext byte the handshake was fed. The core hands the connection (those bytes first)
    /// to the node's matching fallback; without one it behaves like `Reject` with
    /// `DrainUntilTimeout`. Never counted as user traffic.
    Fallback { error: WireError, consumed: Vec<u8> },
    /// The stream carries datagrams (Trojan UDP ASSOCIATE, VLESS UDP, VLESS mux/XUDP): the
    /// core owns the UDP sockets; `codec` cuts the plaintext stream into datagrams and frames
    /// the replies. `reply` goes to the client first, `initial` is plaintext already read
    /// after the header (fed to `codec` before anything else).
    UdpOverStream {
        user: UserRef,
        reply: Vec<u8>,
        initial: Vec<u8>,
        codec: Box<dyn DatagramStreamCodec>,
        /// Transport framing around the datagram stream (ws frames), set by the transport
        /// stage; protocols leave it `None`.
        framing: Option<Box<dyn StreamCodec>>,
    },
}

/// One event decoded from a datagram-carrying stream.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamDatagram {
    /// `payload` for `dest`, on `flow` (a mux sub-session; 0 where the protocol has one flow).
    /// Each flow has its own outbound socket; replies come back tagged with the flow.
    Packet {
        flow: u16,
        dest: Destination,
        payload: Vec<u8>,
    },
    /// The client closed `flow` (a datagram flow or a TCP sub-stream).
    End { flow: u16 },
    /// A mux TCP sub-stream `flow` to `dest` opens; `data` are its first bytes (may be empty).
    StreamOpen {
        flow: u16,
        dest: Destination,
        data: Vec<u8>,
    },
    /// Bytes for the open TCP sub-stream `flow`.
    StreamData { flow: u16, data: Vec<u8> },
}

/// Sans-IO codec of a datagram-carrying stream (plaintext, after TLS).
pub trait DatagramStreamCodec: Send {
    /// Decodes complete packets at the front of `plain` into `out`; returns how many bytes were
    /// consumed (a partial packet stays for the next call). `reply` gets wire bytes the client
    /// must receive now (e.g. a mux End for a refused sub-stream).
    fn open(
        &mut self,
        plain: &[u8],
        out: &mut Vec<StreamDatagram>,
        reply: &mut Vec<u8>,
    ) -> Result<usize, WireError>;
    /// Frames a reply datagram from `from` on `flow`, appending wire bytes to `out`.
    fn seal(
        &mut self,
        flow: u16,
        from: SocketAddr,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError>;
    /// Frames bytes from the destination of TCP sub-stream `flow` (codecs with sub-streams).
    fn seal_stream(&mut self, _flow: u16, _data: &[u8], _out: &mut Vec<u8>) -> Result<(), WireError> {
        Err(WireError::Unsupported("no TCP sub-streams"))
    }
    /// Frames the news that TCP sub-stream `flow`'s outbound connection is up (AnyTLS v2
    /// synack); nothing for protocols without such a reply.
    fn seal_connected(&mut self, _flow: u16, _out: &mut Vec<u8>) -> Result<(), WireError> {
        Ok(())
    }
    /// Frames the end of TCP sub-stream `flow` (`error`: it failed) and forgets the flow.
    fn seal_end(&mut self, _flow: u16, _error: bool, _out: &mut Vec<u8>) -> Result<(), WireError> {
        Err(WireError::Unsupported("no TCP sub-streams"))
    }
}

/// Per-connection state after the handshake: frames payload in both directions.
pub trait StreamCodec: Send {
    /// Open client→server wire bytes. Consumes complete frames from `wire` and appends their
    /// plaintext to `out`; returns how many bytes of `wire` were consumed (a partial frame stays
    /// for the next call).
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError>;
    /// Seal server→client plaintext, appending wire bytes to `out`.
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError>;
    /// Whether the codec has wire bytes of its own for the client (a transport's control
    /// frames, e.g. a WebSocket pong); checked after `open`, then the relay's client-bound
    /// direction calls [`StreamCodec::take_control`].
    fn has_control(&self) -> bool {
        false
    }
    /// Appends those bytes (framed, and encrypted by outer layers) to `out`.
    fn take_control(&mut self, _out: &mut Vec<u8>) -> Result<(), WireError> {
        Ok(())
    }
    /// Whether the codec's own output for the client (control frames: pongs, acknowledgements,
    /// key updates) is over its budget: the relay stops reading from the client until the
    /// client-bound direction has sent it ([`StreamCodec::take_control`]), so a peer that sends
    /// requests for replies and never reads them gets TCP backpressure, not our memory.
    fn output_over_budget(&self) -> bool {
        false
    }
    /// Whether the codec holds sealed bytes it may not send yet (the client's flow-control
    /// window is closed, HTTP/2): the relay stops reading the download source until
    /// [`StreamCodec::has_control`] signals that they can go.
    fn send_blocked(&self) -> bool {
        false
    }
    /// Whether this direction (`upload`: client→server) now passes bytes unchanged, so the
    /// relay may splice it (XTLS Vision after its switch to direct).
    fn passthrough(&self, _upload: bool) -> bool {
        false
    }
    /// Whether the client ended its side inside the protocol (gRPC END_STREAM, TLS
    /// close_notify) while the connection stays open for control frames: the relay then
    /// half-closes the destination, as it does on a TCP FIN.
    fn input_ended(&self) -> bool {
        false
    }
    /// Appends the bytes that end our side when the destination finished (gRPC trailers, TLS
    /// close_notify); the relay writes them before its FIN.
    fn close_output(&mut self, _out: &mut Vec<u8>) -> Result<(), WireError> {
        Ok(())
    }
    /// Where the relay may read server→client plaintext so that [`StreamCodec::seal_in_place`]
    /// frames it without a copy; `None` (the default, or for now) means use `seal`.
    fn seal_layout(&self) -> Option<SealLayout> {
        None
    }
    /// Seals `n` plaintext bytes that a vectored read put into `buf`'s payload slots (slot `i`
    /// at `i * stride + head`, every slot full except the last); the wire bytes are then
    /// `buf[..returned]`, contiguous.
    fn seal_in_place(&mut self, _buf: &mut [u8], _n: usize, _l: SealLayout) -> Result<usize, WireError> {
        Err(WireError::Unsupported("in-place sealing"))
    }
}

/// The destination side of a proxy outbound that re-frames the stream (Shadowsocks): the
/// mirror of [`StreamCodec`]. The relay seals the plaintext it took from the client into the
/// upstream's wire format, and opens the upstream's replies into plaintext for the client;
/// the user's bytes are counted as plaintext, once, as for a direct destination.
pub trait UpstreamCodec: Send {
    /// Appends the upstream wire bytes that carry `plain`.
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError>;
    /// Consumes all of `wire` (a partial frame is kept inside, bounded by the protocol's frame
    /// size) and appends the plaintext of complete frames to `out`.
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<(), WireError>;
}

/// Frame geometry for in-place sealing: each frame is `head` bytes (header) + up to `max`
/// payload bytes + `tail` bytes (tag), and frames follow each other with no gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealLayout {
    pub head: usize,
    pub max: usize,
    pub tail: usize,
}

impl SealLayout {
    pub fn stride(&self) -> usize {
        self.head + self.max + self.tail
    }

    /// Payload slots of a buffer of `len` bytes, limited to `grant` payload bytes in all:
    /// (offset, length) of each.
    pub fn slots(&self, len: usize, grant: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let stride = self.stride().max(1);
        let full = len / stride;
        (0..full)
            .map(move |i| {
                (
                    i * stride + self.head,
                    grant.saturating_sub(i * self.max).min(self.max),
                )
            })
            .take_while(|&(_, n)| n > 0)
    }
}

/// Everything a handshake may consult: the node's current user table and shared defences.
pub trait AuthContext {
    /// O(1) lookup by protocol lookup key (see `v2sp_shared::cred`).
    fn lookup(&self, key: &[u8]) -> Option<UserRef>;
    /// Iterate all users (for protocols that must try each user's key).
    fn for_each_user(&self, f: &mut dyn FnMut(&UserRef) -> bool);
    /// Record a handshake nonce/salt; false if seen before (replay), across all cores.
    fn check_replay(&self, nonce: &[u8]) -> bool;
    /// Unix time in seconds (injected so tests control the clock).
    fn now_unix(&self) -> u64;
    /// Generation of the user table `for_each_user` walks (changes whenever the table does), so
    /// protocols that precompute per-user keys know when to rebuild; `None` = unknown (rebuild
    /// every time).
    fn users_gen(&self) -> Option<u64> {
        None
    }
    /// The client's address (after PROXY protocol), for protocols that try the user last seen
    /// from there first.
    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        None
    }
}

/// A TCP protocol's server-side handshake.
pub trait StreamHandshake {
    fn feed(&mut self, data: &[u8], ctx: &dyn AuthContext) -> Result<Step, WireError>;
}

/// A decoded client datagram.
pub struct InboundPacket {
    pub user: UserRef,
    /// Protocol session (SS-2022 client session id; 0 where the protocol has none). The NAT
    /// table keys sessions by `(user.user_id, session_id)` (plus the client address where this
    /// is 0).
    pub session_id: u64,
    /// Packet counter within the session (SS-2022 client packet id; 0 where none). Checked
    /// by the session's [`PacketSession::accept`] (sliding-window replay filter).
    pub packet_id: u64,
    pub dest: Destination,
    /// Payload range inside the buffer passed to `open_packet`.
    pub payload: std::ops::Range<usize>,
}

/// A UDP protocol's per-packet codec (server side). Stateless across packets; per-session
/// state (reply keys, server session id and packet counter, replay window) lives in the
/// [`PacketSession`] the NAT entry owns.
pub trait PacketCodec: Send + Sync {
    /// Decrypt and authenticate one client datagram in place. `hint` is the user this client
    /// address was last authenticated as (tried first by protocols that try each user's key).
    fn open_packet(
        &self,
        pkt: &mut [u8],
        hint: Option<&UserRef>,
        ctx: &dyn AuthContext,
    ) -> Result<InboundPacket, WireError>;
    /// State for a new client session, created from its first accepted packet.
    fn new_session(&self, first: &InboundPacket) -> Result<Box<dyn PacketSession>, WireError>;
}

/// Per-session UDP state (one per NAT entry).
pub trait PacketSession: Send {
    /// Whether `pkt` (opened by `open_packet` for this session) is fresh: false for a replayed
    /// or out-of-window packet id, which must be dropped. Call once per packet, first packet
    /// included.
    fn accept(&mut self, pkt: &InboundPacket) -> bool;
    /// Seal a reply from `from` to the client, appending wire bytes to `out`.
    fn seal(&mut self, from: &Destination, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError>;
}
