//! VLESS request encoder and response-header stripper (sans-IO), the client side of
//! `dataplane::proto::vless` (no flow, TCP). This is the plaintext inside TLS (or on the bare
//! TCP stream when the node has no TLS).
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
//! +-----+-----------+------------------+
//! | ver | addons len| addons (len B)   |
//! |  0  |     1     | skipped          |
//! +-----+-----------+------------------+
//! ```

use anyhow::{bail, Context};
use v2sp_dataplane::proto::Destination;

pub const VERSION: u8 = 0;
pub const CMD_TCP: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 2;
const ATYP_V6: u8 = 3;

/// The 16 bytes of a uuid in its text form (hyphens optional).
pub fn uuid_bytes(uuid: &str) -> anyhow::Result<[u8; 16]> {
    let hexs: String = uuid.chars().filter(|c| *c != '-').collect();
    let v = hex::decode(&hexs).with_context(|| format!("uuid {uuid:?} is not hex"))?;
    v.try_into()
        .map_err(|v: Vec<u8>| anyhow::anyhow!("uuid {uuid:?} has {} bytes, not 16", v.len()))
}

/// Append a TCP request to `dest` for user `uuid`, followed by the first payload `first`.
pub fn request(uuid: &[u8; 16], dest: &Destination, first: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    out.push(VERSION);
    out.extend_from_slice(uuid);
    out.push(0); // no addons
    out.push(CMD_TCP);
    match dest {
        Destination::Ip(a) => {
            out.extend_from_slice(&a.port().to_be_bytes());
            match a.ip() {
                std::net::IpAddr::V4(ip) => {
                    out.push(ATYP_V4);
                    out.extend_from_slice(&ip.octets());
                }
                std::net::IpAddr::V6(ip) => {
                    out.push(ATYP_V6);
                    out.extend_from_slice(&ip.octets());
                }
            }
        }
        Destination::Domain(name, port) => {
            let len = u8::try_from(name.len()).context("VLESS domain longer than 255 bytes")?;
            out.extend_from_slice(&port.to_be_bytes());
            out.push(ATYP_DOMAIN);
            out.push(len);
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(first);
    Ok(())
}

/// Strips the response header from the start of the downlink stream, however it is split.
#[derive(Debug, Default)]
pub struct ResponseHeader {
    got: usize,
    addons_len: Option<usize>,
}

impl ResponseHeader {
    pub fn done(&self) -> bool {
        self.addons_len.is_some_and(|n| self.got >= 2 + n)
    }

    /// Consume header bytes from the front of `data`; returns the payload that follows.
    pub fn strip<'a>(&mut self, mut data: &'a [u8]) -> anyhow::Result<&'a [u8]> {
        while !self.done() {
            let Some((&b, rest)) = data.split_first() else {
                return Ok(&[]);
            };
            match self.got {
                0 if b != VERSION => bail!("VLESS response version {b}, expected {VERSION}"),
                1 => self.addons_len = Some(usize::from(b)),
                _ => {}
            }
            self.got += 1;
            data = rest;
        }
        Ok(data)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const UUID: &str = "705d4ada-fc32-48de-951c-2ab9d5765ce0";

    #[test]
    fn uuid_text_to_bytes() {
        let b = uuid_bytes(UUID).unwrap();
        assert_eq!(b[0], 0x70);
        assert_eq!(b[15], 0xe0);
        assert!(uuid_bytes("705d4ada").is_err());
        assert!(uuid_bytes("zz5d4ada-fc32-48de-951c-2ab9d5765ce0").is_err());
    }

    #[test]
    fn request_layout_ipv4() {
        let u = uuid_bytes(UUID).unwrap();
        let d = Destination::Ip("127.0.0.1:8080".parse().unwrap());
        let mut out = Vec::new();
        request(&u, &d, b"hi", &mut out).unwrap();
        let mut want = vec![0];
        want.extend_from_slice(&u);
        want.extend_from_slice(&[0, 1, 0x1f, 0x90, 1, 127, 0, 0, 1, b'h', b'i']);
        assert_eq!(out, want);
    }

    #[test]
    fn request_layout_domain_and_v6() {
        let u = [0u8; 16];
        let mut out = Vec::new();
        request(&u, &Destination::Domain("ab.c".into(), 443), b"", &mut out).unwrap();
        assert_eq!(&out[17..], &[0, 1, 0x01, 0xbb, 2, 4, b'a', b'b', b'.', b'c']);
        out.clear();
        request(&u, &Destination::Ip("[::1]:1".parse().unwrap()), b"", &mut out).unwrap();
        assert_eq!(out.len(), 1 + 16 + 1 + 1 + 2 + 1 + 16);
        assert_eq!(out[21], 3);
    }

    #[test]
    fn response_header_split_anywhere() {
        let wire = [0u8, 2, 9, 9, b'x', b'y'];
        for cut in 0..=wire.len() {
            let mut h = ResponseHeader::default();
            let mut got = h.strip(&wire[..cut]).unwrap().to_vec();
            got.extend_from_slice(h.strip(&wire[cut..]).unwrap());
            assert_eq!(got, b"xy", "cut at {cut}");
            assert!(h.done());
        }
        let mut h = ResponseHeader::default();
        assert!(h.strip(&[1, 0]).is_err());
    }
}
