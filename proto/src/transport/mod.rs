//! Stream transports (xray's `network`): a sans-IO layer between TLS and the protocol
//! handshake, the same for every stream protocol (Trojan, VLESS, VMess).
//!
//! ```text
//! client ─TLS─▶ plaintext ─▶ [transport handshake] ─reply (101)─▶ client
//!                                │ early data + bytes after the request
//!                                ▼
//!                         framing codec (ws frames; none for tcp/httpupgrade)
//!                                │ stream bytes
//!                                ▼
//!                         protocol StreamHandshake::feed ─▶ Next::Forward{reply, codec}
//!
//! relay codec:  TlsCodec( Layered( framing, protocol codec ) )   (each layer optional)
//! ```
//!
//! [`Chain`] is what the connection's handshake loop feeds: it runs the transport's upgrade,
//! answers it (bytes the caller sends at once, sealed by TLS if any), decodes the framing and
//! feeds the protocol only stream bytes; when the protocol finishes, its reply is framed and
//! its codec wrapped in [`Layered`]. A protocol needs no transport-specific code: it is a
//! plain [`StreamHandshake`] either way.

pub mod grpc;
pub mod http;
pub mod httpupgrade;
pub mod tcphttp;
pub mod ws;
pub mod xhttp;

use v2sp_shared::dpconfig::Transport;

use crate::{AuthContext, Next, RejectPolicy, Step, StreamCodec, StreamHandshake, WireError};

/// Result of feeding the transport's upgrade stage.
pub enum Upgrade {
    NeedMore,
    Done(Upgraded),
    /// Refused: send these bytes (may be empty) and close.
    Reject(Vec<u8>),
}

/// A finished upgrade.
pub struct Upgraded {
    /// Bytes for the client right away (the 101 response).
    pub reply: Vec<u8>,
    /// Stream bytes the request itself carried (WebSocket early data).
    pub early: Vec<u8>,
    /// Transport bytes the client sent after the request (framed if `framing` is set).
    pub rest: Vec<u8>,
    /// Framing for the rest of the connection; `None`: raw bytes.
    pub framing: Option<Box<dyn StreamCodec>>,
}

/// A transport's server-side upgrade, fed plaintext as it arrives.
pub trait TransportHandshake: Send {
    fn feed(&mut self, data: &[u8]) -> Result<Upgrade, WireError>;
}

/// The upgrade stage for a node's transport (`None` for raw TCP).
pub fn handshake_for(t: &Transport) -> Option<Box<dyn TransportHandshake>> {
    match t {
        Transport::Tcp => None,
        Transport::Ws(s) => Some(Box::new(ws::WsHandshake::new(s))),
        Transport::HttpUpgrade(s) => Some(Box::new(httpupgrade::HttpUpgradeHandshake::new(s))),
        Transport::TcpHttp(s) => Some(Box::new(tcphttp::TcpHttpHandshake::new(s))),
        Transport::Grpc(s) => Some(Box::new(grpc::GrpcHandshake::new(s))),
        // Served by the data plane's HTTP session driver, never through a chain.
        Transport::Xhttp(_) => None,
    }
}

/// Transport upgrade then protocol handshake, for one connection.
pub struct Chain {
    /// Present until the upgrade is done.
    transport: Option<Box<dyn TransportHandshake>>,
    framing: Option<Box<dyn StreamCodec>>,
    /// The transport's upgrade happened (ws, httpupgrade, tcp+http).
    upgraded: bool,
    /// Framed bytes fed before the protocol's handshake ended that carried no stream byte
    /// (control frames: pings, acks, window updates).
    idle_framing: usize,
    proto: Box<dyn StreamHandshake>,
}

/// Framed bytes without a stream byte accepted before the protocol's handshake ends: a real
/// client sends its request right after the upgrade (a ping or an ack at most before it), so
/// an unauthenticated flood of control frames stops costing parse work here (it is then
/// drained unread until the handshake deadline).
pub const MAX_IDLE_FRAMING: usize = 16 * 1024;

impl Chain {
    pub fn new(t: &Transport, proto: Box<dyn StreamHandshake>) -> Self {
        Chain {
            transport: handshake_for(t),
            framing: None,
            upgraded: false,
            idle_framing: 0,
            proto,
        }
    }

    /// Feeds plaintext the client sent (after TLS). Bytes appended to `send` go to the client
    /// before anything else (sealed by TLS if the node has it), whatever the result.
    pub fn feed(
        &mut self,
        data: &[u8],
        ctx: &dyn AuthContext,
        send: &mut Vec<u8>,
    ) -> Result<Step, WireError> {
        let mut decoded = Vec::new();
        let stream: &[u8] = if let Some(t) = self.transport.as_mut() {
            match t.feed(data)? {
                Upgrade::NeedMore => return Ok(Step::NeedMore(0)),
                Upgrade::Reject(reply) => {
                    send.extend_from_slice(&reply);
                    return Ok(Step::Done(Next::Reject {
                        error: WireError::Malformed("transport: request refused"),
                        policy: RejectPolicy::Close,
                    }));
                }
                Upgrade::Done(up) => {
                    self.transport = None;
                    self.upgraded = true;
                    send.extend_from_slice(&up.reply);
                    decoded = up.early;
                    self.framing = up.framing;
                    match self.framing.as_mut() {
                        Some(f) => open_all(f.as_mut(), &up.rest, &mut decoded)?,
                        None => decoded.extend_from_slice(&up.rest),
                    }
                    if decoded.is_empty() {
                        self.idle(up.rest.len())?;
                        return Ok(Step::NeedMore(0));
                    }
                    &decoded
                }
            }
        } else if let Some(f) = self.framing.as_mut() {
            open_all(f.as_mut(), data, &mut decoded)?;
            if decoded.is_empty() {
                self.idle(data.len())?;
                return Ok(Step::NeedMore(0));
            }
            &decoded
        } else {
            data
        };
        let step = self.proto.feed(stream, ctx)?;
        // Xray's fallbacks serve raw TCP (+TLS) only: behind an upgraded transport, a client
        // that is not ours is held like any unauthenticated one.
        if self.upgraded {
            if let Step::Done(Next::Fallback { error, .. }) = step {
                return Ok(Step::Done(Next::Reject {
                    error,
                    policy: RejectPolicy::DrainUntilTimeout,
                }));
            }
        }
        let Some(framing) = self.framing.take() else {
            return Ok(step);
        };
        match step {
            Step::Done(Next::UdpOverStream {
                user,
                reply,
                initial,
                codec,
                framing: _,
            }) => {
                // The core seals `reply` through this framing (and TLS) itself.
                Ok(Step::Done(Next::UdpOverStream {
                    user,
                    reply,
                    initial,
                    codec,
                    framing: Some(Box::new(Layered::new(framing, None))),
                }))
            }
            Step::Done(Next::Forward {
                dest,
                user,
                initial_upload,
                reply,
                codec,
            }) => {
                let mut framing = framing;
                let mut framed = Vec::new();
                framing.seal(&reply, &mut framed)?;
                Ok(Step::Done(Next::Forward {
                    dest,
                    user,
                    initial_upload,
                    reply: framed,
                    codec: Some(Box::new(Layered::new(framing, codec))),
                }))
            }
            other => {
                self.framing = Some(framing);
                Ok(other)
            }
        }
    }
}

impl Chain {
    /// Counts framed bytes that carried nothing for the protocol (see [`MAX_IDLE_FRAMING`]).
    fn idle(&mut self, n: usize) -> Result<(), WireError> {
        self.idle_framing = self.idle_framing.saturating_add(n);
        if self.idle_framing > MAX_IDLE_FRAMING {
            return Err(WireError::Malformed(
                "transport: only control frames before the protocol's handshake",
            ));
        }
        Ok(())
    }
}

/// Opens framed bytes that the framing codec must consume completely (a streaming codec keeps
/// its own partial state).
fn open_all(f: &mut dyn StreamCodec, wire: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    let used = f.open(wire, out)?;
    if used != wire.len() {
        return Err(WireError::Unsupported("transport framing left bytes behind"));
    }
    Ok(())
}

/// The relay's codec for a framed transport: transport framing outside, the protocol's codec
/// (if any) inside. TLS, when present, wraps this.
pub struct Layered {
    framing: Box<dyn StreamCodec>,
    inner: Option<Box<dyn StreamCodec>>,
    /// Stream bytes not yet consumed by `inner` (its partial frame).
    inner_carry: Vec<u8>,
}

impl Layered {
    pub fn new(framing: Box<dyn StreamCodec>, inner: Option<Box<dyn StreamCodec>>) -> Self {
        Layered {
            framing,
            inner,
            inner_carry: Vec::new(),
        }
    }
}

impl StreamCodec for Layered {
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let Some(inner) = self.inner.as_mut() else {
            open_all(self.framing.as_mut(), wire, out)?;
            return Ok(wire.len());
        };
        open_all(self.framing.as_mut(), wire, &mut self.inner_carry)?;
        let n = inner.open(&self.inner_carry, out)?;
        self.inner_carry.drain(..n.min(self.inner_carry.len()));
        if self.inner_carry.is_empty() {
            // Nothing held between reads.
            self.inner_carry = Vec::new();
        }
        Ok(wire.len())
    }

    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        match self.inner.as_mut() {
            None => self.framing.seal(plain, out),
            Some(inner) => {
                let mut framed = Vec::with_capacity(plain.len() + 64);
                inner.seal(plain, &mut framed)?;
                self.framing.seal(&framed, out)
            }
        }
    }

    fn has_control(&self) -> bool {
        self.framing.has_control() || self.inner.as_ref().is_some_and(|i| i.has_control())
    }

    fn send_blocked(&self) -> bool {
        self.framing.send_blocked()
    }

    fn output_over_budget(&self) -> bool {
        self.framing.output_over_budget() || self.inner.as_ref().is_some_and(|i| i.output_over_budget())
    }

    fn input_ended(&self) -> bool {
        self.framing.input_ended() || self.inner.as_ref().is_some_and(|i| i.input_ended())
    }

    fn close_output(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if let Some(inner) = self.inner.as_mut() {
            let mut plain = Vec::new();
            inner.close_output(&mut plain)?;
            if !plain.is_empty() {
                self.framing.seal(&plain, out)?;
            }
        }
        self.framing.close_output(out)
    }

    fn take_control(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.framing.take_control(out)?;
        if let Some(inner) = self.inner.as_mut() {
            let mut plain = Vec::new();
            inner.take_control(&mut plain)?;
            if !plain.is_empty() {
                self.framing.seal(&plain, out)?;
            }
        }
        Ok(())
    }
}

// The chain tests drive a VLESS handshake behind each transport.
#[cfg(all(test, feature = "vless"))]
mod tests;
