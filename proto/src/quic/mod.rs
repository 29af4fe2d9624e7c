//! The QUIC shape of the inbound seam: what a protocol carried inside QUIC (Hysteria 2, TUIC)
//! tells the data plane's QUIC driver (`node/quic.rs`), sans-IO.
//!
//! The driver owns quinn, sockets, the handshake deadline, device admission, the registry,
//! outbound connections, the UDP sessions, counting and limits. A protocol only says what
//! bytes mean:
//!
//! ```text
//!   client bidi stream ──► bidi_head(bytes, authed) ─┐
//!   client uni stream  ──► uni_head(bytes, authed)  ─┼─► StreamHead: NeedMore | Discard
//!                                                    │     | Auth{key, token, rx, web} | Refuse{reply}
//!                                                    │     | Web(head) | Connect{dest, used} | Packet
//!                                                    │     | Dissociate{assoc}
//!   datagram           ──► ConnState::datagram ──────┴─► Option<Packet> (after reassembly)
//!   UDP reply          ◄── ConnState::seal_reply (datagrams, or one uni-stream message)
//! ```
//!
//! Authentication: the driver looks the claimed key up in the node's user table, asks the
//! protocol to [`QuicInbound::verify`] the claim against the user's secret (with the TLS
//! exporter of this connection, RFC 5705, for protocols that bind the proof to the session),
//! admits the device, and only then writes [`QuicInbound::auth_reply`]. Streams that carry
//! traffic (`Connect`, `Packet`, `Dissociate`) wait for authentication, bounded by the node's
//! handshake timeout (TUIC clients send their first request alongside the authentication).
//!
//! Adding a QUIC protocol is a folder under `proto/` with an implementation of
//! [`QuicInbound`] and [`ConnState`], and one registration line in the data plane.

pub mod defrag;
pub mod salamander;

use std::net::SocketAddr;
use std::time::Duration;

use crate::{Destination, WireError};

/// The congestion controller a node asks for (quinn's: Cubic, NewReno, BBR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    #[default]
    Cubic,
    NewReno,
    Bbr,
}

impl Congestion {
    /// Xboard's / sing-box's names (`cubic`, `new_reno`, `bbr`); empty = Cubic.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "" | "cubic" => Self::Cubic,
            "new_reno" | "newreno" | "reno" => Self::NewReno,
            "bbr" => Self::Bbr,
            _ => return None,
        })
    }
}

/// A client's UDP packet, whole.
#[derive(Debug, PartialEq, Eq)]
pub struct Packet {
    /// The client's UDP session (Hysteria 2 session id, TUIC association id): one outbound
    /// socket each.
    pub assoc: u32,
    pub dest: Destination,
    pub payload: Vec<u8>,
}

/// Which way a UDP session's packets travel; replies go back the way the session's first
/// packet came (TUIC's `udp_relay_mode`: `native` datagrams or `quic` streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketPath {
    Datagram,
    /// One client-bound unidirectional stream per packet.
    Stream,
}

/// What the first bytes of a client-opened stream are.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamHead {
    /// The head is not complete yet.
    NeedMore,
    /// Not ours to act on: read and drop the rest (HTTP/3 control and QPACK streams).
    Discard,
    /// A claim to be the user found by `key` in the node's user table, with a proof the
    /// protocol checks in [`QuicInbound::verify`]. `rx`: the receive rate the client declares,
    /// in bytes per second (Hysteria 2's `Hysteria-CC-RX`); 0 = none declared. What the
    /// server makes of it is [`QuicInbound::send_rate`].
    Auth {
        key: Vec<u8>,
        token: Option<[u8; 32]>,
        rx: u64,
        /// The web request the claim came in (Hysteria 2's `POST /auth`): a failed claim is
        /// answered like any other web request ([`StreamHead::Web`]); `None` for protocols
        /// whose claims are not web requests.
        web: Option<Box<WebHead>>,
    },
    /// A request that is not for us: `reply` is written and the stream finished; the
    /// connection goes on.
    Refuse { reply: Vec<u8> },
    /// A web request that is not the protocol's (Hysteria 2: any HTTP/3 request other than a
    /// valid authentication): answered by the node's masquerade, or with
    /// [`QuicInbound::auth_refused`] when it has none. The connection goes on.
    Web(Box<WebHead>),
    /// A TCP relay to `dest`; what follows the first `used` bytes is payload.
    Connect { dest: Destination, used: usize },
    /// A UDP packet carried on its own stream.
    Packet(Packet),
    /// The client ends UDP session `assoc`.
    Dissociate { assoc: u32 },
}

/// The head of a web request on a request stream, and how many bytes of the stream it took
/// (what follows is the request's body, framed by the protocol).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WebHead {
    pub request: WebRequest,
    pub used: usize,
}

/// One decoded web request head.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WebRequest {
    pub method: String,
    /// Path and query as sent (`:path`).
    pub path: String,
    pub authority: String,
    /// Regular header fields, names lower-case as sent on the wire.
    pub headers: Vec<(String, String)>,
}

impl WebRequest {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The TLS exporter of the connection (RFC 5705): fills `out` for `(label, context)`; false
/// when the TLS session cannot export.
pub type Exporter<'a> = &'a mut dyn FnMut(&[u8], &[u8], &mut [u8; 32]) -> bool;

/// A QUIC protocol's server side for one node (built per core).
pub trait QuicInbound {
    /// ALPN values the node accepts (QUIC requires one).
    fn alpn(&self) -> Vec<Vec<u8>>;
    /// The congestion controller of the node's connections, unless [`QuicInbound::send_rate`]
    /// fixes a connection's rate.
    fn congestion(&self) -> Congestion {
        Congestion::Cubic
    }
    /// The fixed rate in bytes per second the server sends at on a connection whose client
    /// declared, when it authenticated, that it receives `client_rx` bytes per second (0 =
    /// nothing declared): Hysteria 2's Brutal. `None`: the node's [`QuicInbound::congestion`].
    /// The driver lowers the rate further to the user's speed limit; it never raises it.
    fn send_rate(&self, client_rx: u64) -> Option<u64> {
        let _ = client_rx;
        None
    }
    /// Unidirectional streams a client may have open at once.
    fn max_uni_streams(&self) -> u32;
    /// Longest stream head: a stream whose head is still incomplete after this many bytes is
    /// refused.
    fn max_head(&self) -> usize;
    /// Unidirectional streams the server opens when the connection is up, with their bytes
    /// (HTTP/3's control stream); kept open for the connection's life.
    fn server_streams(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// What a client bidirectional stream is; `authed`: the connection has authenticated.
    fn bidi_head(&self, buf: &[u8], authed: bool) -> Result<StreamHead, WireError>;
    /// What a client unidirectional stream is.
    fn uni_head(&self, buf: &[u8], authed: bool) -> Result<StreamHead, WireError>;
    /// Whether an [`StreamHead::Auth`] claim proves the user whose table secret is `secret`.
    fn verify(&self, key: &[u8], token: Option<&[u8; 32]>, secret: &[u8], export: Exporter<'_>) -> bool;
    /// Written on the authentication stream once the user is admitted (then finished).
    fn auth_reply(&self) -> Option<Vec<u8>> {
        None
    }
    /// Written on an authentication stream whose claim failed (unknown user, bad proof,
    /// device refused) and on a [`StreamHead::Web`] request when the node has no masquerade,
    /// then finished; the connection may try again until its handshake deadline. `None`: the
    /// connection is closed at once (a web request's stream is reset).
    fn auth_refused(&self) -> Option<Vec<u8>> {
        None
    }
    /// Written on a `Connect` stream once the destination answered (`Ok`) or failed (`Err`
    /// with the reason). `None` on failure: the stream is reset with [`QuicInbound::reject_code`].
    fn connect_reply(&self, result: Result<(), &str>) -> Option<Vec<u8>>;
    /// Application error code for refused streams.
    fn reject_code(&self) -> u32;
    /// Application error code the server closes connections with.
    fn close_code(&self) -> u32;
    /// A datagram the server sends at this interval once authenticated (TUIC heartbeat).
    fn heartbeat(&self) -> Option<(Duration, Vec<u8>)> {
        None
    }
    /// Packet obfuscation under QUIC (Hysteria 2's Salamander), applied by the node's socket.
    fn obfuscation(&self) -> Option<salamander::Salamander> {
        None
    }
    /// Per-connection protocol state.
    fn connection(&self) -> Box<dyn ConnState>;
}

/// One connection's protocol state: datagram reassembly and reply framing.
pub trait ConnState {
    /// A client datagram after authentication: a whole packet, or `None` (a fragment kept
    /// for later, a heartbeat).
    fn datagram(&mut self, d: &[u8]) -> Result<Option<Packet>, WireError>;
    /// Frames a reply to session `assoc` from `from`. [`PacketPath::Datagram`]: datagrams of
    /// at most `max` bytes each; [`PacketPath::Stream`]: one stream message. Appended to `out`;
    /// false (nothing appended) when it cannot be framed.
    fn seal_reply(
        &mut self,
        assoc: u32,
        from: SocketAddr,
        payload: &[u8],
        path: PacketPath,
        max: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> bool;
}
