//! SOCKS5 address (RFC 1928 §5) as Shadowsocks carries it.
//!
//! ```text
//! +------+----------------------------+----------+
//! | ATYP | address                    | port     |
//! +------+----------------------------+----------+
//! | 0x01 | IPv4, 4 B                  | u16 BE   |
//! | 0x03 | len 1 B, domain `len` B    | u16 BE   |
//! | 0x04 | IPv6, 16 B                 | u16 BE   |
//! +------+----------------------------+----------+
//! ```

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{Destination, WireError};

const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

/// Outcome of parsing an address from a possibly incomplete buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The address and how many bytes it took.
    Done(Destination, usize),
    /// The buffer ends inside the address.
    Incomplete,
}

fn port_at(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Parse an address at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, WireError> {
    let Some(&atyp) = buf.first() else {
        return Ok(Parsed::Incomplete);
    };
    match atyp {
        ATYP_V4 => {
            let (Some(ip), Some(port)) = (buf.get(1..5), port_at(buf, 5)) else {
                return Ok(Parsed::Incomplete);
            };
            let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            Ok(Parsed::Done(Destination::Ip(SocketAddr::new(ip.into(), port)), 7))
        }
        ATYP_V6 => {
            let (Some(ip), Some(port)) = (buf.get(1..17), port_at(buf, 17)) else {
                return Ok(Parsed::Incomplete);
            };
            let mut o = [0u8; 16];
            o.copy_from_slice(ip);
            Ok(Parsed::Done(
                Destination::Ip(SocketAddr::new(Ipv6Addr::from(o).into(), port)),
                19,
            ))
        }
        ATYP_DOMAIN => {
            let Some(&len) = buf.get(1) else {
                return Ok(Parsed::Incomplete);
            };
            let len = usize::from(len);
            if len == 0 {
                return Err(WireError::Malformed("empty domain name in address"));
            }
            let (Some(name), Some(port)) = (buf.get(2..2 + len), port_at(buf, 2 + len)) else {
                return Ok(Parsed::Incomplete);
            };
            let name =
                std::str::from_utf8(name).map_err(|_| WireError::Malformed("domain name is not UTF-8"))?;
            // A literal IP sent as a domain is still an IP (no resolver round trip).
            let dest = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Destination::Ip(SocketAddr::new(ip, port)),
                Err(_) => Destination::Domain(name.to_owned(), port),
            };
            Ok(Parsed::Done(dest, 4 + len))
        }
        _ => Err(WireError::Malformed("unknown address type")),
    }
}

/// Parse an address that must be complete (UDP packets, SS-2022 headers).
pub fn parse_complete(buf: &[u8]) -> Result<(Destination, usize), WireError> {
    match parse(buf)? {
        Parsed::Done(d, n) => Ok((d, n)),
        Parsed::Incomplete => Err(WireError::Malformed("truncated address")),
    }
}

/// Append the encoding of `dest` to `out`.
pub fn write(dest: &Destination, out: &mut Vec<u8>) -> Result<(), WireError> {
    match dest {
        Destination::Ip(SocketAddr::V4(a)) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Destination::Ip(SocketAddr::V6(a)) => {
            out.push(ATYP_V6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Destination::Domain(name, port) => {
            let len = u8::try_from(name.len())
                .map_err(|_| WireError::Unsupported("domain longer than 255 bytes"))?;
            out.push(ATYP_DOMAIN);
            out.push(len);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&port.to_be_bytes());
        }
    }
    Ok(())
}

/// Encoded length of `dest`.
pub fn encoded_len(dest: &Destination) -> usize {
    match dest {
        Destination::Ip(SocketAddr::V4(_)) => 7,
        Destination::Ip(SocketAddr::V6(_)) => 19,
        Destination::Domain(name, _) => 4 + name.len(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn known_encodings() {
        let v4 = [1, 127, 0, 0, 1, 0x1f, 0x90];
        assert_eq!(
            parse(&v4).unwrap(),
            Parsed::Done(Destination::Ip("127.0.0.1:8080".parse().unwrap()), 7)
        );
        let mut d = vec![3, 11];
        d.extend_from_slice(b"example.com");
        d.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse(&d).unwrap(),
            Parsed::Done(Destination::Domain("example.com".into(), 443), 15)
        );
        let mut v6 = vec![4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&53u16.to_be_bytes());
        assert_eq!(
            parse(&v6).unwrap(),
            Parsed::Done(Destination::Ip("[::1]:53".parse().unwrap()), 19)
        );
    }

    #[test]
    fn round_trip_and_truncation() {
        for dest in [
            Destination::Ip("10.1.2.3:1".parse().unwrap()),
            Destination::Ip("[2001:db8::1]:65535".parse().unwrap()),
            Destination::Domain("a.b".into(), 80),
        ] {
            let mut w = Vec::new();
            write(&dest, &mut w).unwrap();
            assert_eq!(w.len(), encoded_len(&dest));
            assert_eq!(parse(&w).unwrap(), Parsed::Done(dest.clone(), w.len()));
            for cut in 0..w.len() {
                assert_eq!(parse(&w[..cut]).unwrap(), Parsed::Incomplete);
            }
        }
        assert!(parse(&[9, 1, 2]).is_err());
        assert!(parse(&[3, 0, 0, 80]).is_err());
    }
}
