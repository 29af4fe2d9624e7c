//! PROXY protocol v1 and v2 (HAProxy spec), inbound side, sans-IO.
//!
//! ```text
//! v1 (text, ≤ 107 bytes incl. CRLF):
//!   "PROXY" SP ("TCP4"|"TCP6"|"UNKNOWN") [SP src SP dst SP sport SP dport] CRLF
//!
//! v2 (binary, 16-byte header + len):
//!   0      12        13         14        16
//!   +------+---------+----------+---------+---------------------------------------+
//!   | sig  | ver|cmd | fam|proto| len(BE) | addresses (len bytes, then TLVs)      |
//!   +------+---------+----------+---------+---------------------------------------+
//!   sig = 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A; ver = 2 (high nibble); cmd 0 = LOCAL, 1 = PROXY
//!   fam|proto: 0x11 TCP/IPv4, 0x12 UDP/IPv4 → src4 dst4 sport dport (12 B)
//!              0x21 TCP/IPv6, 0x22 UDP/IPv6 → src16 dst16 sport dport (36 B)
//!              0x00 UNSPEC → no address
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIG: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
const V1_MAX: usize = 107;

/// Parser outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet.
    Incomplete,
    /// Header complete: `consumed` bytes belong to it; `source` is the real client address
    /// (`None` for LOCAL/UNKNOWN/UNSPEC: keep the socket's peer address).
    Done {
        consumed: usize,
        source: Option<SocketAddr>,
    },
}

/// What was wrong with the header (the client's — i.e. the balancer's — fault).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line longer than 107 bytes")]
    V1TooLong,
    #[error("PROXY v1 malformed: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 unsupported version nibble")]
    V2Version,
    #[error("PROXY v2 unknown command")]
    V2Command,
    #[error("PROXY v2 address block shorter than its family needs")]
    V2Short,
}

/// Parses a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        return if buf.len() < 16 {
            Ok(Parsed::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if buf.len() < 6 {
            Ok(Parsed::Incomplete)
        } else {
            parse_v1(buf)
        };
    }
    Err(ProxyHeaderError::NotProxy)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let ver_cmd = buf.get(12).copied().unwrap_or(0);
    let fam = buf.get(13).copied().unwrap_or(0);
    let len = usize::from(u16::from_be_bytes([
        buf.get(14).copied().unwrap_or(0),
        buf.get(15).copied().unwrap_or(0),
    ]));
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::V2Version);
    }
    let total = 16 + len;
    let Some(body) = buf.get(16..total) else {
        return Ok(Parsed::Incomplete);
    };
    match ver_cmd & 0x0F {
        0 => {
            return Ok(Parsed::Done {
                consumed: total,
                source: None,
            })
        }
        1 => {}
        _ => return Err(ProxyHeaderError::V2Command),
    }
    let port = |a: Option<&u8>, b: Option<&u8>| u16::from_be_bytes([*a.unwrap_or(&0), *b.unwrap_or(&0)]);
    let source = match fam >> 4 {
        1 => {
            let a: [u8; 4] = body
                .get(0..4)
                .and_then(|s| s.try_into().ok())
                .ok_or(ProxyHeaderError::V2Short)?;
            if body.len() < 12 {
                return Err(ProxyHeaderError::V2Short);
            }
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(a)),
                port(body.get(8), body.get(9)),
            ))
        }
        2 => {
            let a: [u8; 16] = body
                .get(0..16)
                .and_then(|s| s.try_into().ok())
                .ok_or(ProxyHeaderError::V2Short)?;
            if body.len() < 36 {
                return Err(ProxyHeaderError::V2Short);
            }
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                port(body.get(32), body.get(33)),
            ))
        }
        _ => None, // UNSPEC or AF_UNIX: keep the socket address
    };
    Ok(Parsed::Done {
        consumed: total,
        source,
    })
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyHeaderError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&window[..end]).map_err(|_| ProxyHeaderError::V1Malformed("not ASCII"))?;
    let consumed = end + 2;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    let fam = parts
        .next()
        .ok_or(ProxyHeaderError::V1Malformed("missing family"))?;
    if fam == "UNKNOWN" {
        return Ok(Parsed::Done {
            consumed,
            source: None,
        });
    }
    let src = parts
        .next()
        .ok_or(ProxyHeaderError::V1Malformed("missing source"))?;
    let _dst = parts
        .next()
        .ok_or(ProxyHeaderError::V1Malformed("missing destination"))?;
    let sport = parts
        .next()
        .ok_or(ProxyHeaderError::V1Malformed("missing source port"))?;
    let _dport = parts
        .next()
        .ok_or(ProxyHeaderError::V1Malformed("missing destination port"))?;
    if parts.next().is_some() {
        return Err(ProxyHeaderError::V1Malformed("trailing fields"));
    }
    let ip: IpAddr = match fam {
        "TCP4" => IpAddr::V4(
            src.parse()
                .map_err(|_| ProxyHeaderError::V1Malformed("bad IPv4 source"))?,
        ),
        "TCP6" => IpAddr::V6(
            src.parse()
                .map_err(|_| ProxyHeaderError::V1Malformed("bad IPv6 source"))?,
        ),
        _ => return Err(ProxyHeaderError::V1Malformed("unknown family")),
    };
    let port: u16 = sport
        .parse()
        .map_err(|_| ProxyHeaderError::V1Malformed("bad source port"))?;
    Ok(Parsed::Done {
        consumed,
        source: Some(SocketAddr::new(ip, port)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET";
        assert_eq!(
            parse(h).unwrap(),
            Parsed::Done {
                consumed: h.len() - 3,
                source: Some("192.0.2.1:56324".parse().unwrap())
            }
        );
    }

    #[test]
    fn v1_tcp6_unknown_and_partial() {
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(
            parse(h).unwrap(),
            Parsed::Done {
                consumed: h.len(),
                source: Some("[2001:db8::1]:1".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Parsed::Done {
                consumed: 15,
                source: None
            }
        );
        for i in 0..h.len() - 1 {
            assert_eq!(parse(&h[..i]).unwrap(), Parsed::Incomplete, "prefix {i}");
        }
    }

    #[test]
    fn v1_errors() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::NotProxy));
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 x 1\r\n").is_err());
        assert!(parse(b"PROXY TCP4 ::1 5.6.7.8 1 1\r\n").is_err());
        let long = [b"PROXY ".as_slice(), &[b'A'; 120]].concat();
        assert_eq!(parse(&long), Err(ProxyHeaderError::V1TooLong));
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v2_ipv4_with_tlv_and_payload() {
        let mut body = vec![10, 0, 0, 7, 10, 0, 0, 1, 0x1F, 0x90, 0x01, 0xBB];
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // a TLV, ignored
        let mut h = v2(1, 0x11, &body);
        let hl = h.len();
        h.extend_from_slice(b"payload");
        assert_eq!(
            parse(&h).unwrap(),
            Parsed::Done {
                consumed: hl,
                source: Some("10.0.0.7:8080".parse().unwrap())
            }
        );
        for i in 0..hl {
            assert_eq!(parse(&h[..i]).unwrap(), Parsed::Incomplete, "prefix {i}");
        }
    }

    #[test]
    fn v2_ipv6_local_and_errors() {
        let mut body = [0u8; 36];
        body[15] = 1;
        body[32] = 0x12;
        body[33] = 0x34;
        let h = v2(1, 0x21, &body);
        assert_eq!(
            parse(&h).unwrap(),
            Parsed::Done {
                consumed: h.len(),
                source: Some("[::1]:4660".parse().unwrap())
            }
        );
        let local = v2(0, 0x00, &[]);
        assert_eq!(
            parse(&local).unwrap(),
            Parsed::Done {
                consumed: 16,
                source: None
            }
        );
        assert_eq!(parse(&v2(1, 0x11, &[1, 2, 3])), Err(ProxyHeaderError::V2Short));
        assert_eq!(parse(&v2(5, 0x11, &[0; 12])), Err(ProxyHeaderError::V2Command));
        let mut bad = v2(1, 0x11, &[0; 12]);
        bad[12] = 0x11;
        assert_eq!(parse(&bad), Err(ProxyHeaderError::V2Version));
    }
}
