//! Hysteria 2 as a QUIC protocol of the seam ([`crate::quic`]): which stream is what, and how
//! replies are framed. The wire formats are in the parent module.
//!
//! Before authentication every client bidirectional stream is an HTTP/3 request: the
//! authentication request of a known user gets 233, anything else (another request, a wrong
//! password, a refused device) is a web request for the node's masquerade (a 404 without
//! one). After it, a bidirectional stream is a TCP request, or again a web request when it
//! starts with anything but the TCP request's frame type (a second authentication included:
//! the connection has its user). Client unidirectional streams (HTTP/3 control, QPACK) are read and dropped:
//! with a zero-capacity table there are no QPACK instructions to act on, and nothing in the
//! client's SETTINGS changes what we send.

use std::net::SocketAddr;

use super::{h3, udp, AuthRequest, Bandwidth};
use crate::quic::salamander::Salamander;
use crate::quic::{ConnState, Exporter, Packet, PacketPath, QuicInbound, StreamHead, WebHead};
use crate::WireError;

/// Client unidirectional streams (control, QPACK encoder/decoder) open at once; more wait.
const MAX_UNI_STREAMS: u32 = 8;

/// A Hysteria 2 node: its bandwidth (what it tells clients about its receive rate, what it
/// sends at), and its obfuscation.
#[derive(Clone)]
pub struct Hysteria2Inbound {
    pub bandwidth: Bandwidth,
    /// Salamander with the node's `obfs-password`, or none.
    pub obfs: Option<Salamander>,
}

impl QuicInbound for Hysteria2Inbound {
    fn alpn(&self) -> Vec<Vec<u8>> {
        vec![b"h3".to_vec()]
    }
    fn max_uni_streams(&self) -> u32 {
        MAX_UNI_STREAMS
    }
    fn max_head(&self) -> usize {
        (h3::MAX_HEADERS + 32).max(super::MAX_TCP_REQUEST)
    }
    fn server_streams(&self) -> Vec<Vec<u8>> {
        // Our control stream must stay open as long as the connection (RFC 9114 §6.2.1).
        vec![h3::control_stream_preface()]
    }
    fn bidi_head(&self, buf: &[u8], authed: bool) -> Result<StreamHead, WireError> {
        // After authentication a stream is a TCP request, or an HTTP/3 request as before it
        // (the reference server serves both on an authenticated connection).
        let tcp = match super::varint(buf) {
            None => return Ok(StreamHead::NeedMore),
            Some((ty, _)) => ty == super::TCP_REQUEST,
        };
        if authed && tcp {
            return Ok(match super::parse_tcp_request(buf)? {
                Some((dest, used)) => StreamHead::Connect { dest, used },
                None if buf.len() >= super::MAX_TCP_REQUEST => {
                    return Err(WireError::Malformed("hysteria2: TCP request too long"))
                }
                None => StreamHead::NeedMore,
            });
        }
        let Some((request, used)) = h3::parse_request_head(buf)? else {
            if buf.len() > h3::MAX_HEADERS + 32 {
                return Err(WireError::Malformed("http3: request head too large"));
            }
            return Ok(StreamHead::NeedMore);
        };
        let web = Box::new(WebHead { request, used });
        Ok(match AuthRequest::from_request(&web.request) {
            Some(a) if !authed => StreamHead::Auth {
                key: a.lookup_key().to_vec(),
                token: None,
                rx: a.cc_rx,
                web: Some(web),
            },
            _ => StreamHead::Web(web),
        })
    }
    fn uni_head(&self, _buf: &[u8], _authed: bool) -> Result<StreamHead, WireError> {
        Ok(StreamHead::Discard)
    }
    fn verify(&self, key: &[u8], _token: Option<&[u8; 32]>, secret: &[u8], _export: Exporter<'_>) -> bool {
        // The key is SHA-256 of the password, found in the table: knowing it is the proof.
        key == secret
    }
    fn send_rate(&self, client_rx: u64) -> Option<u64> {
        self.bandwidth.send_rate(client_rx)
    }
    fn auth_reply(&self) -> Option<Vec<u8>> {
        Some(super::auth_ok_response(true, self.bandwidth.server_rx()))
    }
    fn auth_refused(&self) -> Option<Vec<u8>> {
        Some(super::not_found_response())
    }
    fn connect_reply(&self, result: Result<(), &str>) -> Option<Vec<u8>> {
        let mut r = Vec::new();
        super::put_tcp_response(&mut r, result.err(), super::padding_len(64, 512));
        Some(r)
    }
    fn reject_code(&self) -> u32 {
        h3::H3_REQUEST_REJECTED
    }
    fn close_code(&self) -> u32 {
        h3::H3_NO_ERROR
    }
    fn connection(&self) -> Box<dyn ConnState> {
        Box::new(Hysteria2Conn::default())
    }
    fn obfuscation(&self) -> Option<Salamander> {
        self.obfs.clone()
    }
}

/// One connection: reassembly, reply packet ids.
#[derive(Default)]
pub struct Hysteria2Conn {
    defrag: udp::Defragmenter,
    packet_id: u16,
}

impl ConnState for Hysteria2Conn {
    fn datagram(&mut self, d: &[u8]) -> Result<Option<Packet>, WireError> {
        let m = udp::decode(d)?;
        let Some((addr, payload)) = self.defrag.feed(&m, d) else {
            return Ok(None);
        };
        Ok(Some(Packet {
            assoc: m.session,
            dest: super::parse_address(&addr)?,
            payload,
        }))
    }

    fn seal_reply(
        &mut self,
        assoc: u32,
        from: SocketAddr,
        payload: &[u8],
        _path: PacketPath,
        max: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> bool {
        let id = self.packet_id;
        self.packet_id = id.wrapping_add(1);
        udp::encode(out, assoc, id, &super::format_address(from), payload, max)
    }
}
