//! TUIC v5 (server side): commands inside a QUIC connection. QUIC itself and the connection's
//! life are the data plane's QUIC driver's; this module only says what the bytes mean
//! ([`crate::quic`]). Facts from the protocol's specification and sing-box's client.
//!
//! ```text
//! every command:  +-----+------+----------+
//!                 | VER | TYPE |   OPT    |      VER = 0x05
//!                 +-----+------+----------+
//!                 |  1  |  1   | Variable |
//!
//! 0x00 Authenticate (client uni stream)   | UUID 16 | TOKEN 32 |
//!      TOKEN = TLS exporter (RFC 5705) of this connection, label = the 16 uuid bytes,
//!      context = the password, 32 bytes. v2sp: the panel's user uuid is both.
//! 0x01 Connect (client bidi stream)       | ADDR | then the stream is the TCP payload,
//!      both ways; the server sends no answer (a failed connect resets the stream).
//! 0x02 Packet (datagram: relay mode "native"; or one uni stream per packet: mode "quic")
//!      | ASSOC_ID u16 | PKT_ID u16 | FRAG_TOTAL u8 | FRAG_ID u8 | SIZE u16 | ADDR | payload |
//!      SIZE = payload bytes of this fragment; ADDR = 0xff (none) on fragments after the
//!      first. Replies go back the same way, with the source as ADDR.
//! 0x03 Dissociate (client uni stream)     | ASSOC_ID u16 |: the UDP session ends.
//! 0x04 Heartbeat (datagram, either way)   nothing: keeps the connection alive.
//!
//! ADDR:  | TYPE u8 | address | PORT u16 |   TYPE 0x00 domain (u8 length + name),
//!        0x01 IPv4 (4), 0x02 IPv6 (16), 0xff none (no address, no port).
//! ```
//!
//! The client sends Authenticate alongside its first requests (it does not wait for an
//! answer; there is none), so requests that arrive first wait for it, up to the node's
//! handshake timeout. A second Authenticate, an unknown version or command, and a bad token
//! end the connection's chances: nothing is relayed for an unauthenticated connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::quic::{self, Congestion, ConnState, Exporter, Packet, PacketPath, QuicInbound, StreamHead};
use crate::{Destination, WireError};

pub const VERSION: u8 = 0x05;
pub const CMD_AUTHENTICATE: u8 = 0x00;
pub const CMD_CONNECT: u8 = 0x01;
pub const CMD_PACKET: u8 = 0x02;
pub const CMD_DISSOCIATE: u8 = 0x03;
pub const CMD_HEARTBEAT: u8 = 0x04;

const ADDR_DOMAIN: u8 = 0x00;
const ADDR_IPV4: u8 = 0x01;
const ADDR_IPV6: u8 = 0x02;
const ADDR_NONE: u8 = 0xff;

/// Authenticate: header, uuid, token.
pub const AUTHENTICATE_LEN: usize = 2 + 16 + 32;
/// Packet header before its address: assoc, packet id, fragment total and id, size.
const PACKET_FIXED: usize = 2 + 2 + 1 + 1 + 2;
/// The longest address: type, length, 255-byte name, port.
const MAX_ADDR: usize = 1 + 1 + 255 + 2;
/// The longest head a stream may carry: a whole packet on a uni stream.
pub const MAX_HEAD: usize = 2 + PACKET_FIXED + MAX_ADDR + u16::MAX as usize;

/// Parses an address at the start of `buf`: `Ok(None)` while incomplete, else the address
/// (`None` for type 0xff) and its length.
pub fn parse_address(buf: &[u8]) -> Result<Option<(Option<Destination>, usize)>, WireError> {
    let Some(&ty) = buf.first() else {
        return Ok(None);
    };
    let port_at = |n: usize| buf.get(n..n + 2).map(|p| u16::from_be_bytes([p[0], p[1]]));
    let (dest, len) = match ty {
        ADDR_NONE => return Ok(Some((None, 1))),
        ADDR_IPV4 => {
            let (Some(a), Some(port)) = (buf.get(1..5), port_at(5)) else {
                return Ok(None);
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            (Destination::Ip(SocketAddr::new(IpAddr::V4(ip), port)), 7)
        }
        ADDR_IPV6 => {
            let (Some(a), Some(port)) = (buf.get(1..17), port_at(17)) else {
                return Ok(None);
            };
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            let ip = Ipv6Addr::from(o);
            (Destination::Ip(SocketAddr::new(ip.to_canonical(), port)), 19)
        }
        ADDR_DOMAIN => {
            let Some(&n) = buf.get(1) else {
                return Ok(None);
            };
            let n = usize::from(n);
            if n == 0 {
                return Err(WireError::Malformed("tuic: empty domain"));
            }
            let (Some(name), Some(port)) = (buf.get(2..2 + n), port_at(2 + n)) else {
                return Ok(None);
            };
            let name =
                std::str::from_utf8(name).map_err(|_| WireError::Malformed("tuic: domain is not UTF-8"))?;
            // sing-box writes IP literals it could not classify as domains; serve them as IPs.
            let dest = match name.parse::<IpAddr>() {
                Ok(ip) => Destination::Ip(SocketAddr::new(ip.to_canonical(), port)),
                Err(_) => Destination::Domain(name.to_string(), port),
            };
            (dest, 2 + n + 2)
        }
        _ => return Err(WireError::Malformed("tuic: unknown address type")),
    };
    Ok(Some((Some(dest), len)))
}

/// Appends `addr` (a reply's source) in TUIC's encoding; IPv4-mapped IPv6 as IPv4.
pub fn put_address(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            out.push(ADDR_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(ADDR_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// A Packet command's fields; `addr` and `payload` are ranges of the parsed buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketHeader {
    pub assoc: u16,
    pub packet: u16,
    pub frag_total: u8,
    pub frag_id: u8,
    pub addr: std::ops::Range<usize>,
    pub payload: std::ops::Range<usize>,
}

/// Parses a Packet command's body (after VER and TYPE) at the start of `buf`: `Ok(None)`
/// while incomplete.
pub fn parse_packet(buf: &[u8]) -> Result<Option<PacketHeader>, WireError> {
    let Some(f) = buf.get(..PACKET_FIXED) else {
        return Ok(None);
    };
    let assoc = u16::from_be_bytes([f[0], f[1]]);
    let packet = u16::from_be_bytes([f[2], f[3]]);
    let (frag_total, frag_id) = (f[4], f[5]);
    let size = usize::from(u16::from_be_bytes([f[6], f[7]]));
    if frag_total == 0 || frag_id >= frag_total {
        return Err(WireError::Malformed("tuic: fragment id outside its total"));
    }
    let Some((dest, alen)) = parse_address(buf.get(PACKET_FIXED..).unwrap_or_default())? else {
        return Ok(None);
    };
    if dest.is_none() && frag_id == 0 {
        return Err(WireError::Malformed("tuic: first fragment without an address"));
    }
    let addr = PACKET_FIXED..PACKET_FIXED + alen;
    let payload = addr.end..addr.end + size;
    if buf.len() < payload.end {
        return Ok(None);
    }
    Ok(Some(PacketHeader {
        assoc,
        packet,
        frag_total,
        frag_id,
        addr,
        payload,
    }))
}

/// Encodes `payload` from `from` for `assoc` as Packet commands of at most `max` bytes each
/// (fragmenting when needed, up to 255 fragments), appended to `out`. False (nothing
/// appended) when one fragment cannot fit or 255 are not enough.
pub fn encode_packet(
    out: &mut Vec<Vec<u8>>,
    assoc: u16,
    packet: u16,
    from: SocketAddr,
    payload: &[u8],
    max: usize,
) -> bool {
    let mut addr = Vec::with_capacity(19);
    put_address(&mut addr, from);
    let head_len = 2 + PACKET_FIXED + addr.len();
    let Some(room) = max.checked_sub(head_len).filter(|&r| r > 0) else {
        return false;
    };
    let count = payload.len().div_ceil(room).max(1);
    let Ok(total) = u8::try_from(count) else {
        return false;
    };
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![payload]
    } else {
        payload.chunks(room).collect()
    };
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut d = Vec::with_capacity(head_len + chunk.len());
        d.extend_from_slice(&[VERSION, CMD_PACKET]);
        d.extend_from_slice(&assoc.to_be_bytes());
        d.extend_from_slice(&packet.to_be_bytes());
        d.extend_from_slice(&[total, i as u8]);
        d.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        // Every fragment names the source (the specification allows "none" after the first;
        // clients read either).
        d.extend_from_slice(&addr);
        d.extend_from_slice(chunk);
        out.push(d);
    }
    true
}

/// The passwords a panel user's uuid may have been handed out as: TUIC clients get the uuid
/// string as password, which the user table keeps as 16 bytes; panels write it lowercase
/// (Xboard's `Helper::guid`), some tools uppercase.
fn passwords(uuid: &[u8]) -> Option<[String; 2]> {
    let u: [u8; 16] = uuid.try_into().ok()?;
    let h = hex::encode(u);
    let s = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    let upper = s.to_ascii_uppercase();
    Some([s, upper])
}

/// A TUIC v5 node's settings, as the panel gives them.
#[derive(Clone, Debug)]
pub struct TuicInbound {
    pub congestion: Congestion,
    /// How often the server sends a heartbeat datagram (Xboard: 3 s).
    pub heartbeat: Duration,
    /// ALPN: what the panel hands clients (`h3` when it names none).
    pub alpn: Vec<String>,
}

impl TuicInbound {
    pub fn new(congestion: Congestion, heartbeat: Duration, alpn: Vec<String>) -> Self {
        let alpn = if alpn.is_empty() {
            vec!["h3".to_string()]
        } else {
            alpn
        };
        TuicInbound {
            congestion,
            heartbeat: heartbeat.max(Duration::from_secs(1)),
            alpn,
        }
    }
}

impl QuicInbound for TuicInbound {
    fn alpn(&self) -> Vec<Vec<u8>> {
        self.alpn.iter().map(|a| a.as_bytes().to_vec()).collect()
    }
    fn congestion(&self) -> Congestion {
        self.congestion
    }
    fn max_uni_streams(&self) -> u32 {
        // Relay mode "quic" opens one unidirectional stream per UDP packet.
        512
    }
    fn max_head(&self) -> usize {
        MAX_HEAD
    }
    fn bidi_head(&self, buf: &[u8], _authed: bool) -> Result<StreamHead, WireError> {
        let (Some(&ver), Some(&cmd)) = (buf.first(), buf.get(1)) else {
            return Ok(StreamHead::NeedMore);
        };
        if ver != VERSION {
            return Err(WireError::Malformed("tuic: unknown version"));
        }
        if cmd != CMD_CONNECT {
            return Err(WireError::Malformed(
                "tuic: bidirectional stream is not a Connect",
            ));
        }
        match parse_address(buf.get(2..).unwrap_or_default())? {
            None => Ok(StreamHead::NeedMore),
            Some((None, _)) => Err(WireError::Malformed("tuic: Connect without an address")),
            Some((Some(dest), n)) => Ok(StreamHead::Connect { dest, used: 2 + n }),
        }
    }
    fn uni_head(&self, buf: &[u8], _authed: bool) -> Result<StreamHead, WireError> {
        let (Some(&ver), Some(&cmd)) = (buf.first(), buf.get(1)) else {
            return Ok(StreamHead::NeedMore);
        };
        if ver != VERSION {
            return Err(WireError::Malformed("tuic: unknown version"));
        }
        let body = buf.get(2..).unwrap_or_default();
        match cmd {
            CMD_AUTHENTICATE => {
                let Some(b) = body.get(..48) else {
                    return Ok(StreamHead::NeedMore);
                };
                let mut token = [0u8; 32];
                token.copy_from_slice(&b[16..48]);
                Ok(StreamHead::Auth {
                    key: b[..16].to_vec(),
                    token: Some(token),
                    // TUIC declares no bandwidth: the node's congestion controller.
                    rx: 0,
                    web: None,
                })
            }
            CMD_PACKET => {
                let Some(h) = parse_packet(body)? else {
                    return Ok(StreamHead::NeedMore);
                };
                // A packet on its own stream is never fragmented by sing-box; a fragment
                // would need reassembly across streams, which no client does: refused.
                if h.frag_total != 1 {
                    return Err(WireError::Malformed("tuic: fragmented packet on a stream"));
                }
                let Some((Some(dest), _)) = parse_address(body.get(h.addr.clone()).unwrap_or_default())?
                else {
                    return Err(WireError::Malformed("tuic: packet without an address"));
                };
                Ok(StreamHead::Packet(Packet {
                    assoc: u32::from(h.assoc),
                    dest,
                    payload: body.get(h.payload).unwrap_or_default().to_vec(),
                }))
            }
            CMD_DISSOCIATE => {
                let Some(a) = body.get(..2) else {
                    return Ok(StreamHead::NeedMore);
                };
                Ok(StreamHead::Dissociate {
                    assoc: u32::from(u16::from_be_bytes([a[0], a[1]])),
                })
            }
            CMD_CONNECT => Err(WireError::Malformed("tuic: Connect on a unidirectional stream")),
            _ => Err(WireError::Malformed("tuic: unknown command")),
        }
    }
    fn verify(&self, key: &[u8], token: Option<&[u8; 32]>, secret: &[u8], export: Exporter<'_>) -> bool {
        let (Some(token), Some(candidates)) = (token, passwords(secret)) else {
            return false;
        };
        if key != secret {
            return false;
        }
        candidates.iter().any(|password| {
            let mut expected = [0u8; 32];
            export(key, password.as_bytes(), &mut expected) && constant_time_eq(&expected, token)
        })
    }
    fn connect_reply(&self, _result: Result<(), &str>) -> Option<Vec<u8>> {
        None
    }
    fn reject_code(&self) -> u32 {
        0
    }
    fn close_code(&self) -> u32 {
        0
    }
    fn heartbeat(&self) -> Option<(Duration, Vec<u8>)> {
        Some((self.heartbeat, vec![VERSION, CMD_HEARTBEAT]))
    }
    fn connection(&self) -> Box<dyn ConnState> {
        Box::new(TuicConn::default())
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One connection: reassembly of fragmented datagrams, reply packet ids.
#[derive(Default)]
pub struct TuicConn {
    defrag: quic::defrag::Defragmenter,
    packet_id: u16,
}

impl ConnState for TuicConn {
    fn datagram(&mut self, d: &[u8]) -> Result<Option<Packet>, WireError> {
        let (Some(&ver), Some(&cmd)) = (d.first(), d.get(1)) else {
            return Err(WireError::Malformed("tuic: datagram shorter than a command"));
        };
        if ver != VERSION {
            return Err(WireError::Malformed("tuic: unknown version"));
        }
        match cmd {
            CMD_HEARTBEAT => Ok(None),
            CMD_PACKET => {
                let body = d.get(2..).unwrap_or_default();
                let h = parse_packet(body)?.ok_or(WireError::Malformed("tuic: truncated packet"))?;
                if h.payload.end != body.len() {
                    return Err(WireError::Malformed(
                        "tuic: packet size does not match the datagram",
                    ));
                }
                let whole = self.defrag.feed(quic::defrag::Fragment {
                    session: u32::from(h.assoc),
                    packet: h.packet,
                    frag_id: h.frag_id,
                    frag_count: h.frag_total,
                    addr: if h.frag_id == 0 {
                        body.get(h.addr.clone()).unwrap_or_default()
                    } else {
                        &[]
                    },
                    payload: body.get(h.payload.clone()).unwrap_or_default(),
                });
                let Some((addr, payload)) = whole else {
                    return Ok(None);
                };
                match parse_address(&addr)? {
                    Some((Some(dest), _)) => Ok(Some(Packet {
                        assoc: u32::from(h.assoc),
                        dest,
                        payload,
                    })),
                    _ => Err(WireError::Malformed("tuic: packet without an address")),
                }
            }
            _ => Err(WireError::Malformed("tuic: unexpected command in a datagram")),
        }
    }

    fn seal_reply(
        &mut self,
        assoc: u32,
        from: SocketAddr,
        payload: &[u8],
        path: PacketPath,
        max: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> bool {
        let Ok(assoc) = u16::try_from(assoc) else {
            return false;
        };
        let id = self.packet_id;
        self.packet_id = id.wrapping_add(1);
        let max = match path {
            PacketPath::Datagram => max,
            // A stream carries the whole packet in one message.
            PacketPath::Stream => usize::MAX,
        };
        encode_packet(out, assoc, id, from, payload, max)
    }
}

#[cfg(test)]
mod tests;
