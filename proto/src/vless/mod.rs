//! VLESS (server side), request header parsed incrementally from the decrypted stream.
//!
//! ```text
//! request:
//! +-----+------+--------+-------------+-----+---------+------+----------+---------+
//! | ver | uuid | addons | addons      | cmd | port    | atyp | address  | payload |
//! |  0  |  16  | len 1  | protobuf    |  1  | 2 (BE)  |  1   | variable |   ...   |
//! +-----+------+--------+-------------+-----+---------+------+----------+---------+
//! cmd:  0x01 TCP, 0x02 UDP, 0x03 MUX (no port/address)
//! atyp: 0x01 IPv4 (4 B), 0x02 domain (1 B length + name), 0x03 IPv6 (16 B)
//! addons: protobuf `Addons { string flow = 1; bytes seed = 2; }`
//!
//! response (before the first downlink byte):
//! +-----+--------+
//! | ver | addons |
//! |  0  | len 0  |
//! +-----+--------+
//! ```
//!
//! The user is looked up by the 16 uuid bytes (`cred::CredKind::VlessUuid`). A request must
//! carry the node's flow (none, or Vision over TLS/REALITY, framed by `vision` and
//! `tls::vision`); after a TCP header the stream is unchanged (`codec: None`); UDP and mux
//! (XUDP) carry datagrams ([`udp`]). Anything else goes to the node's fallback with every byte
//! read (`Next::Fallback`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

pub mod client;
pub mod udp;
pub mod vision;

use crate::{AuthContext, Destination, Next, Step, StreamHandshake, WireError};

pub const VERSION: u8 = 0;
pub const CMD_TCP: u8 = 1;
pub const CMD_UDP: u8 = 2;
pub const CMD_MUX: u8 = 3;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 2;
const ATYP_V6: u8 = 3;
/// The response header: version 0, no addons.
pub const RESPONSE: [u8; 2] = [VERSION, 0];
/// Longest possible header: ver, uuid, addons (len + 255), cmd, port, atyp, 1 + 255 domain.
pub const MAX_HEADER: usize = 1 + 16 + 1 + 255 + 1 + 2 + 1 + 1 + 255;

/// Parsed request header.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub uuid: [u8; 16],
    /// `flow` from the addons ("" when none).
    pub flow: String,
    pub cmd: u8,
    /// `None` for MUX.
    pub dest: Option<Destination>,
    /// Header length (payload starts here).
    pub len: usize,
}

/// Reads the `flow` field (1, length-delimited) of the addons message; other fields skipped.
pub fn addons_flow(mut pb: &[u8]) -> Result<String, WireError> {
    const BAD: WireError = WireError::Malformed("vless: bad addons");
    let varint = |b: &mut &[u8]| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    let mut flow = String::new();
    while !pb.is_empty() {
        let key = varint(&mut pb).ok_or(BAD)?;
        match key & 7 {
            0 => {
                varint(&mut pb).ok_or(BAD)?;
            }
            2 => {
                let n = usize::try_from(varint(&mut pb).ok_or(BAD)?).map_err(|_| BAD)?;
                let v = pb.get(..n).ok_or(BAD)?;
                pb = pb.get(n..).unwrap_or_default();
                if key >> 3 == 1 {
                    flow = std::str::from_utf8(v).map_err(|_| BAD)?.to_string();
                }
            }
            _ => return Err(BAD),
        }
    }
    Ok(flow)
}

fn port_at(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at + 2)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// Address (ATYP + address) at the start of `buf`: `Ok(None)` while incomplete.
fn address(buf: &[u8], port: u16) -> Result<Option<(Destination, usize)>, WireError> {
    let Some(&atyp) = buf.first() else {
        return Ok(None);
    };
    match atyp {
        ATYP_V4 => Ok(buf.get(1..5).map(|b| {
            let ip = Ipv4Addr::from([b[0], b[1], b[2], b[3]]);
            (Destination::Ip(SocketAddr::new(ip.into(), port)), 5)
        })),
        ATYP_V6 => Ok(buf.get(1..17).map(|b| {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            (
                Destination::Ip(SocketAddr::new(Ipv6Addr::from(o).into(), port)),
                17,
            )
        })),
        ATYP_DOMAIN => {
            let Some(&n) = buf.get(1) else {
                return Ok(None);
            };
            let n = usize::from(n);
            if n == 0 {
                return Err(WireError::Malformed("vless: empty domain"));
            }
            let Some(name) = buf.get(2..2 + n) else {
                return Ok(None);
            };
            let name =
                std::str::from_utf8(name).map_err(|_| WireError::Malformed("vless: domain is not UTF-8"))?;
            Ok(Some((Destination::Domain(name.to_string(), port), 2 + n)))
        }
        _ => Err(WireError::Malformed("vless: unknown address type")),
    }
}

/// Parses the request from the start of `buf`: `Ok(None)` while incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, WireError> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(WireError::Malformed("vless: version is not 0"));
    }
    let (Some(id), Some(&alen)) = (buf.get(1..17), buf.get(17)) else {
        return Ok(None);
    };
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(id);
    let at = 18 + usize::from(alen);
    let Some(addons) = buf.get(18..at) else {
        return Ok(None);
    };
    let flow = addons_flow(addons)?;
    let Some(&cmd) = buf.get(at) else {
        return Ok(None);
    };
    if cmd == CMD_MUX {
        return Ok(Some(Request {
            uuid,
            flow,
            cmd,
            dest: None,
            len: at + 1,
        }));
    }
    if cmd != CMD_TCP && cmd != CMD_UDP {
        return Err(WireError::Malformed("vless: unknown command"));
    }
    let Some(port) = port_at(buf, at + 1) else {
        return Ok(None);
    };
    let Some((dest, alen)) = address(buf.get(at + 3..).unwrap_or_default(), port)? else {
        return Ok(None);
    };
    Ok(Some(Request {
        uuid,
        flow,
        cmd,
        dest: Some(dest),
        len: at + 3 + alen,
    }))
}

/// One connection's header state.
#[derive(Default)]
pub struct VlessHandshake {
    buf: Vec<u8>,
    authed: bool,
    /// The node's flow: a request must carry exactly this one ("" = none).
    flow: String,
}

impl VlessHandshake {
    /// A handshake for a node whose users use `flow` (e.g. [`vision::FLOW`]).
    pub fn with_flow(flow: &str) -> Self {
        VlessHandshake {
            flow: flow.to_string(),
            ..Self::default()
        }
    }
}

impl VlessHandshake {
    fn datagrams(
        &mut self,
        user: v2sp_shared::shm::UserRef,
        header_len: usize,
        codec: Box<dyn crate::DatagramStreamCodec>,
    ) -> Step {
        let initial = self.buf.get(header_len..).unwrap_or_default().to_vec();
        self.buf = Vec::new();
        Step::Done(Next::UdpOverStream {
            user,
            reply: RESPONSE.to_vec(),
            initial,
            codec,
            framing: None,
        })
    }

    /// Not ours: the node's fallback gets every byte read so far (xray behaviour); without
    /// one the core looks like a server still waiting for more bytes.
    fn reject(&mut self, error: WireError) -> Step {
        Step::Done(Next::Fallback {
            error,
            consumed: std::mem::take(&mut self.buf),
        })
    }
}

impl StreamHandshake for VlessHandshake {
    fn feed(&mut self, data: &[u8], ctx: &dyn AuthContext) -> Result<Step, WireError> {
        self.buf.extend_from_slice(data);
        if !self.authed {
            match self.buf.first() {
                None => return Ok(Step::NeedMore(17)),
                Some(&VERSION) => {}
                Some(_) => return Ok(self.reject(WireError::Malformed("vless: version is not 0"))),
            }
            let Some(id) = self.buf.get(1..17) else {
                return Ok(Step::NeedMore(17 - self.buf.len()));
            };
            if ctx.lookup(id).is_none() {
                return Ok(self.reject(WireError::Auth("vless: unknown uuid")));
            }
            self.authed = true;
        }
        let req = match parse_request(&self.buf) {
            Ok(Some(r)) => r,
            Ok(None) if self.buf.len() < MAX_HEADER => return Ok(Step::NeedMore(0)),
            Ok(None) => return Ok(self.reject(WireError::Malformed("vless: header too long"))),
            Err(e) => return Ok(self.reject(e)),
        };
        // A user whose flow is not the node's is treated like an unknown one.
        if req.flow != self.flow {
            return Ok(self.reject(WireError::Auth("vless: flow does not match the node")));
        }
        let Some(user) = ctx.lookup(&req.uuid) else {
            return Ok(self.reject(WireError::Auth("vless: unknown uuid")));
        };
        let dest = match (req.cmd, req.dest) {
            (CMD_TCP, Some(d)) => d,
            (CMD_UDP, Some(d)) => {
                return Ok(self.datagrams(user, req.len, Box::new(udp::VlessUdp { dest: d })))
            }
            (CMD_MUX, None) => return Ok(self.datagrams(user, req.len, Box::<udp::Xudp>::default())),
            _ => return Ok(self.reject(WireError::Malformed("vless: command without destination"))),
        };
        let initial_upload = self.buf.get(req.len..).unwrap_or_default().to_vec();
        self.buf = Vec::new();
        Ok(Step::Done(Next::Forward {
            dest,
            user,
            initial_upload,
            reply: RESPONSE.to_vec(),
            codec: None,
        }))
    }
}

#[cfg(test)]
mod tests;
