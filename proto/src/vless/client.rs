//! VLESS client side (no flow, TCP): the request header and the response-header stripper, as
//! the destination-side codec of a VLESS proxy outbound over plain TCP. After the headers the
//! bytes pass unchanged.
//!
//! ```text
//! request:
//! +-----+------+--------+-----+---------+------+----------+---------+
//! | ver | uuid | addons | cmd | port    | atyp | address  | payload |
//! |  0  |  16  | len 0  |  1  | 2 (BE)  |  1   | variable |   ...   |
//! +-----+------+--------+-----+---------+------+----------+---------+
//! atyp: 0x01 IPv4 (4 B), 0x02 domain (1 B length + name), 0x03 IPv6 (16 B)
//!
//! response (before the first downlink byte):
//! +-----+------------+------------------+
//! | ver | addons len | addons (len B)   |
//! |  0  |     1      | skipped          |
//! +-----+------------+------------------+
//! ```

use std::net::IpAddr;

use super::{ATYP_DOMAIN, ATYP_V4, ATYP_V6};
use crate::{Destination, WireError};

/// The request header of a TCP CONNECT to `dest` for user `uuid` (a name that is an IP
/// literal goes as that address).
pub fn request(uuid: &[u8; 16], dest: &Destination) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0];
    out.extend_from_slice(uuid);
    out.extend_from_slice(&[0, 1]); // no addons; cmd TCP
    let (ip, name, port) = match dest {
        Destination::Ip(a) => (Some(a.ip()), "", a.port()),
        Destination::Domain(d, p) => (d.parse::<IpAddr>().ok(), d.as_str(), *p),
    };
    out.extend_from_slice(&port.to_be_bytes());
    match ip {
        Some(IpAddr::V4(v4)) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            out.push(ATYP_V6);
            out.extend_from_slice(&v6.octets());
        }
        None => {
            let len = u8::try_from(name.len()).map_err(|_| WireError::Malformed("vless: name too long"))?;
            out.extend_from_slice(&[ATYP_DOMAIN, len]);
            out.extend_from_slice(name.as_bytes());
        }
    }
    Ok(out)
}

/// A VLESS client stream: the request header goes first (sent at connect by the caller), the
/// response header is stripped from the downlink however it is split.
#[derive(Debug, Default)]
pub struct ClientStream {
    /// Response header bytes still to skip: `None` until its length byte arrived.
    skip: Option<usize>,
    /// The version byte was seen.
    ver_seen: bool,
}

impl crate::UpstreamCodec for ClientStream {
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        out.extend_from_slice(plain);
        Ok(())
    }

    fn open(&mut self, mut wire: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if !self.ver_seen {
            let Some((&ver, rest)) = wire.split_first() else {
                return Ok(());
            };
            if ver != 0 {
                return Err(WireError::Malformed("vless: response version"));
            }
            self.ver_seen = true;
            wire = rest;
        }
        if self.skip.is_none() {
            let Some((&n, rest)) = wire.split_first() else {
                return Ok(());
            };
            self.skip = Some(usize::from(n));
            wire = rest;
        }
        let skip = self.skip.unwrap_or(0);
        let n = skip.min(wire.len());
        self.skip = Some(skip - n);
        out.extend_from_slice(wire.get(n..).unwrap_or_default());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::UpstreamCodec as _;

    #[test]
    fn request_known_answer() {
        let uuid = [0x11; 16];
        let r = request(&uuid, &Destination::Ip("127.0.0.1:8080".parse().unwrap())).unwrap();
        let mut want = vec![0];
        want.extend_from_slice(&uuid);
        want.extend_from_slice(&[0, 1, 0x1f, 0x90, 1, 127, 0, 0, 1]);
        assert_eq!(r, want);
        let r = request(&uuid, &Destination::Domain("a.io".into(), 443)).unwrap();
        assert_eq!(&r[17..], &[0, 1, 1, 187, 2, 4, b'a', b'.', b'i', b'o']);
        // What our own server parses back.
        let mut full = r.clone();
        full.extend_from_slice(b"hi");
        let parsed = super::super::parse_request(&full).unwrap().unwrap();
        assert_eq!(parsed.dest, Some(Destination::Domain("a.io".into(), 443)));
    }

    #[test]
    fn response_header_is_stripped_however_split() {
        let wire = [0u8, 2, 9, 9, b'o', b'k', b'!'];
        for split in 0..wire.len() {
            let mut c = ClientStream::default();
            let mut out = Vec::new();
            c.open(&wire[..split], &mut out).unwrap();
            c.open(&wire[split..], &mut out).unwrap();
            assert_eq!(out, b"ok!", "split at {split}");
        }
        assert!(ClientStream::default().open(&[1, 0], &mut Vec::new()).is_err());
    }
}
