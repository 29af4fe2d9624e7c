//! Hysteria 2 (server side): what travels inside the QUIC connection once it is up. QUIC
//! itself (quinn) and the connection's life are the data plane's QUIC driver's
//! (`node/quic.rs`); this module is sans-IO, and [`Hysteria2Inbound`] is its description for
//! the seam ([`crate::quic`]).
//!
//! ```text
//! authentication: one HTTP/3 request on a client bidi stream ([`h3`]):
//!   :method POST   :path /auth   :authority hysteria
//!   hysteria-auth: <password>          (v2sp: the user's uuid, found by SHA-256)
//!   hysteria-cc-rx: <client rx, B/s>   (0 = unknown)
//!   hysteria-padding: <random>
//! success, status 233 ("HyOK"):
//!   hysteria-udp: true|false   hysteria-cc-rx: <server rx, B/s>|auto   hysteria-padding
//! anything else (a wrong password too) goes to the node's masquerade ([`masq`]): a web
//! server's answer, 404 when the node has none.
//!
//! TCP, one client bidi stream per connection, after authentication:
//! +--------------+-------------+--------------------+-------------+---------+---------
//! | 0x401 varint | addr varint | "host:port" string | pad varint  | padding | payload…
//! +--------------+-------------+--------------------+-------------+---------+---------
//! server's answer on the same stream, then payload both ways:
//! +-----------+-------------+---------+-------------+---------+---------
//! | status u8 | msg varint  | message | pad varint  | padding | payload…
//! +-----------+-------------+---------+-------------+---------+---------
//!   status 0 = OK, 1 = error (the stream is then closed)
//!
//! UDP, QUIC datagrams both ways ([`udp`]):
//! +-----------+-----------+---------+------------+-------------+-------------+---------
//! | session   | packet id | frag id | frag count | addr varint | "host:port" | payload
//! | u32 BE    | u16 BE    | u8      | u8         |             |             |
//! +-----------+-----------+---------+------------+-------------+-------------+---------
//! varint: QUIC's (RFC 9000 §16), the two top bits of the first byte give its length 1/2/4/8.
//! ```
//!
//! Limits follow the reference implementation: addresses up to 2048 bytes, padding up to 4096.
//! Below QUIC, a node may scramble every UDP datagram with [`salamander`].

use std::net::{IpAddr, SocketAddr};

use crate::{Destination, WireError};

pub mod h3;
mod inbound;
pub mod masq;
/// Salamander is a layer of the QUIC seam ([`crate::quic::salamander`]); Hysteria 2 defines it.
pub use crate::quic::salamander;
pub mod udp;

pub use inbound::{Hysteria2Conn, Hysteria2Inbound};

/// The frame type that opens a TCP request stream.
pub const TCP_REQUEST: u64 = 0x401;
/// Longest accepted `host:port` (the reference's `MaxAddressLength`).
pub const MAX_ADDRESS: usize = 2048;
/// Longest accepted padding (the reference's `MaxPaddingLength`).
pub const MAX_PADDING: usize = 4096;
/// The most bytes a TCP request header can take: type, lengths and their contents.
pub const MAX_TCP_REQUEST: usize = 8 + 8 + MAX_ADDRESS + 8 + MAX_PADDING;
/// HTTP status of a successful authentication.
pub const STATUS_AUTH_OK: u16 = 233;

/// The largest value a QUIC varint holds (2^62 - 1).
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// Decodes a QUIC varint at the start of `buf`: `Ok(None)` while incomplete, else the value
/// and its encoded length.
pub fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for b in bytes.iter().skip(1) {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, len))
}

/// Appends `v` as a QUIC varint in its shortest form; values above [`VARINT_MAX`] are clamped
/// (never produced by this module: lengths are bounded far below).
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    let v = v.min(VARINT_MAX);
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

/// A `host:port` string as the client names destinations: an IP literal (IPv6 in brackets)
/// becomes [`Destination::Ip`], anything else a domain.
pub fn parse_address(s: &[u8]) -> Result<Destination, WireError> {
    let s = std::str::from_utf8(s).map_err(|_| WireError::Malformed("hysteria2: address is not UTF-8"))?;
    let (host, port) = s
        .rsplit_once(':')
        .ok_or(WireError::Malformed("hysteria2: address has no port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| WireError::Malformed("hysteria2: address port is not a number 0-65535"))?;
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    // An unbracketed IPv6 literal splits at its last colon, which may be part of the address
    // (`2001:db8::1:53`): refused, as Go's SplitHostPort refuses it.
    if bracketed.is_none() && host.contains(':') {
        return Err(WireError::Malformed("hysteria2: IPv6 address without brackets"));
    }
    let bare = bracketed.unwrap_or(host);
    if bare.is_empty() {
        return Err(WireError::Malformed("hysteria2: address has an empty host"));
    }
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(Destination::Ip(SocketAddr::new(ip, port))),
        Err(_) if bracketed.is_some() => Err(WireError::Malformed(
            "hysteria2: bracketed host is not an IPv6 address",
        )),
        Err(_) => Ok(Destination::Domain(bare.to_string(), port)),
    }
}

/// Formats `addr` as the client expects reply addresses (`1.2.3.4:5`, `[::1]:5`;
/// IPv4-mapped IPv6 as IPv4).
pub fn format_address(addr: SocketAddr) -> String {
    SocketAddr::new(addr.ip().to_canonical(), addr.port()).to_string()
}

/// A varint length at `at`, then that many bytes, no more than `max`: `Ok(None)` while
/// incomplete, else the range of the bytes and the offset after them.
fn length_prefixed(
    buf: &[u8],
    at: usize,
    max: usize,
    too_long: &'static str,
) -> Result<Option<(std::ops::Range<usize>, usize)>, WireError> {
    let Some((len, n)) = buf.get(at..).and_then(varint) else {
        return Ok(None);
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= max)
        .ok_or(WireError::Malformed(too_long))?;
    let start = at + n;
    let end = start + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((start..end, end)))
}

/// Parses a TCP request at the start of a stream: `Ok(None)` while incomplete, else the
/// destination and the header's length (what follows it is payload).
pub fn parse_tcp_request(buf: &[u8]) -> Result<Option<(Destination, usize)>, WireError> {
    let Some((ty, n)) = varint(buf) else {
        return Ok(None);
    };
    if ty != TCP_REQUEST {
        return Err(WireError::Malformed(
            "hysteria2: stream does not start with a TCP request (0x401)",
        ));
    }
    let Some((addr, after)) =
        length_prefixed(buf, n, MAX_ADDRESS, "hysteria2: address longer than 2048 bytes")?
    else {
        return Ok(None);
    };
    if addr.is_empty() {
        return Err(WireError::Malformed("hysteria2: empty address"));
    }
    let Some((_, end)) = length_prefixed(
        buf,
        after,
        MAX_PADDING,
        "hysteria2: padding longer than 4096 bytes",
    )?
    else {
        return Ok(None);
    };
    let dest = parse_address(buf.get(addr).unwrap_or_default())?;
    Ok(Some((dest, end)))
}

/// Appends a TCP response: status OK (`error: None`) or error with its message, and
/// `padding` bytes of padding.
pub fn put_tcp_response(out: &mut Vec<u8>, error: Option<&str>, padding: usize) {
    let msg = error.unwrap_or("").as_bytes();
    let msg = msg.get(..msg.len().min(MAX_ADDRESS)).unwrap_or_default();
    out.push(u8::from(error.is_some()));
    put_varint(out, msg.len() as u64);
    out.extend_from_slice(msg);
    let padding = padding.min(MAX_PADDING);
    put_varint(out, padding as u64);
    put_padding(out, padding);
}

/// Appends `n` random printable characters (padding is ignored by the peer; random text looks
/// like any header value).
pub fn put_padding(out: &mut Vec<u8>, n: usize) {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
    out.extend(raw.iter().map(|b| CHARS[usize::from(*b) % CHARS.len()]));
}

/// A random padding length in `lo..hi` (for responses; the reference pads 64–512 bytes).
pub fn padding_len(lo: usize, hi: usize) -> usize {
    use rand::Rng as _;
    if hi <= lo {
        return lo;
    }
    rand::rng().random_range(lo..hi)
}

/// Bytes per second in `mbps` megabits per second (the panel's unit, 10^6 bits).
pub fn mbps_to_bytes(mbps: u32) -> u64 {
    u64::from(mbps) * 125_000
}

/// What the server tells the client about its own receive rate (`Hysteria-CC-RX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerRx {
    /// Bytes per second the server accepts; 0 = unlimited (the client may send at any rate:
    /// the reference client then sends at its own configured upload rate, or runs its own
    /// congestion control without one).
    Rate(u64),
    /// The server names no rate: the client must run congestion control (BBR).
    Auto,
}

impl ServerRx {
    /// From the node's settings: `ignore_client_bandwidth` → `auto` (as the reference server
    /// does), else `down_mbps` (the server's download is the client's upload).
    pub fn from_settings(down_mbps: u32, ignore_client_bandwidth: bool) -> Self {
        if ignore_client_bandwidth {
            ServerRx::Auto
        } else {
            ServerRx::Rate(mbps_to_bytes(down_mbps))
        }
    }

    pub fn header_value(self) -> String {
        match self {
            ServerRx::Rate(r) => r.to_string(),
            ServerRx::Auto => "auto".to_string(),
        }
    }
}

/// A node's bandwidth settings as the panel gives them, from the server's point of view:
/// `up_mbps` is what it sends (to clients), `down_mbps` what it receives (from clients).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bandwidth {
    /// The most the server sends to one client, in Mbps; 0 = no cap.
    pub up_mbps: u32,
    /// The rate the server tells clients it receives at, in Mbps; 0 = unlimited.
    pub down_mbps: u32,
    /// Clients' declared rates are ignored: the server tells them `auto` (run your own
    /// congestion control) and runs its own on every connection.
    pub ignore_client_bandwidth: bool,
}

impl Bandwidth {
    /// What the server answers in `Hysteria-CC-RX`.
    pub fn server_rx(&self) -> ServerRx {
        ServerRx::from_settings(self.down_mbps, self.ignore_client_bandwidth)
    }

    /// The fixed rate (Brutal) the server sends at to a client that declared it receives
    /// `client_rx` bytes per second: the declaration, capped by `up_mbps` when the node has
    /// one. `None` (the node's own congestion control) when the client declared nothing or
    /// the node ignores declarations. As the reference server, a client that declares
    /// nothing is not sent to at `up_mbps`: it may not be able to take that much.
    pub fn send_rate(&self, client_rx: u64) -> Option<u64> {
        if self.ignore_client_bandwidth || client_rx == 0 {
            return None;
        }
        Some(match mbps_to_bytes(self.up_mbps) {
            0 => client_rx,
            cap => client_rx.min(cap),
        })
    }
}

/// A client's authentication request, taken from its HTTP/3 request.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthRequest {
    /// `Hysteria-Auth`: the password.
    pub auth: String,
    /// `Hysteria-CC-RX`: the client's receive rate in bytes per second (0 = unknown; a value
    /// that is not a number counts as unknown, as in the reference server).
    pub cc_rx: u64,
}

impl AuthRequest {
    /// `Some` when `req` is the special authentication request (`POST /auth`, authority
    /// `hysteria`, an auth header); `None` for any other request (answered like a web
    /// server would).
    pub fn from_request(req: &h3::Request) -> Option<Self> {
        if req.method != "POST" || req.path != "/auth" || req.authority != "hysteria" {
            return None;
        }
        let auth = req.header("hysteria-auth")?;
        let cc_rx = req
            .header("hysteria-cc-rx")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Some(AuthRequest {
            auth: auth.to_string(),
            cc_rx,
        })
    }

    /// The user table's lookup key for this password (`CredKind::Sha256Password`).
    pub fn lookup_key(&self) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(self.auth.as_bytes()).into()
    }
}

/// The HEADERS frame of a successful authentication.
pub fn auth_ok_response(udp: bool, rx: ServerRx) -> Vec<u8> {
    let mut pad = Vec::new();
    put_padding(&mut pad, padding_len(64, 512));
    let rx = rx.header_value();
    h3::response(
        STATUS_AUTH_OK,
        &[
            ("hysteria-udp", if udp { "true" } else { "false" }),
            ("hysteria-cc-rx", &rx),
            ("hysteria-padding", std::str::from_utf8(&pad).unwrap_or_default()),
        ],
        b"",
    )
}

/// What a web server without the requested page answers (Go's `http.NotFound`).
pub fn not_found_response() -> Vec<u8> {
    const BODY: &[u8] = b"404 page not found\n";
    let len = BODY.len().to_string();
    h3::response(
        404,
        &[
            ("content-type", "text/plain; charset=utf-8"),
            ("x-content-type-options", "nosniff"),
            ("content-length", &len),
        ],
        BODY,
    )
}

#[cfg(test)]
mod tests;
