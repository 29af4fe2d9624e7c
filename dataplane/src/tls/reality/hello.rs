//! ClientHello reassembly and parsing for REALITY (only the fields REALITY needs), sans-IO.
//!
//! ```text
//! handshake message (may span several handshake records):
//! +------+--------+---------+--------+--------+-----+--------+------------+--------+------------+
//! | type | len    | version | random | sid len| sid | suites | compression| ext len| extensions |
//! |  1=1 | 3 (BE) |    2    |   32   |   1    | 32  | 2+n    |  1+n       |   2    |  ...       |
//! +------+--------+---------+--------+--------+-----+--------+------------+--------+------------+
//!                                              ^ offset 39: the REALITY session id
//! extensions used: 0 server_name, 43 supported_versions (0x0304 = TLS 1.3),
//!                  51 key_share (0x001d X25519: 32 B; 0x11ec X25519MLKEM768: 1184 + 32 B)
//! ```

use crate::proto::WireError;
use crate::tls::deframe;

/// Offset of the session id in the handshake message (type, length, version, random, sid len).
pub const SESSION_ID_AT: usize = 4 + 2 + 32 + 1;
/// Largest ClientHello we reassemble (post-quantum key shares make hellos ~1.8 KiB; Chrome
/// with many extensions stays well under this).
pub const MAX_HELLO: usize = 16 * 1024;

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_KEY_SHARE: u16 = 51;
const GROUP_X25519: u16 = 0x001d;
const GROUP_X25519_MLKEM768: u16 = 0x11ec;
const MLKEM768_SHARE: usize = 1184;
const TLS13: u16 = 0x0304;

/// The fields REALITY authenticates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub random: [u8; 32],
    /// The 32-byte legacy session id (`None` when it is not 32 bytes long).
    pub session_id: Option<[u8; 32]>,
    /// SNI host name, lower-cased.
    pub server_name: Option<String>,
    pub tls13: bool,
    /// The client's X25519 share (plain, or the classical half of X25519MLKEM768).
    pub x25519: Option<[u8; 32]>,
}

/// Collects the ClientHello handshake message from the records at the front of `wire`.
/// `Ok(None)`: more bytes needed; `Err`: not a ClientHello REALITY can use (fall back).
pub fn reassemble(wire: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
    let mut msg: Vec<u8> = Vec::new();
    let mut at = 0usize;
    // Bounded: each pass consumes one record of at least one byte, and msg is capped.
    for _ in 0..64 {
        let rest = wire.get(at..).unwrap_or_default();
        let Some(len) = deframe::record_len(rest)? else {
            return Ok(None);
        };
        if rest.first() != Some(&HANDSHAKE) {
            return Err(WireError::Malformed("REALITY: first records are not a handshake"));
        }
        msg.extend_from_slice(rest.get(deframe::HEADER_LEN..len).unwrap_or_default());
        at += len;
        if let Some(h) = msg.get(..4) {
            if h.first() != Some(&CLIENT_HELLO) {
                return Err(WireError::Malformed("REALITY: not a ClientHello"));
            }
            let body = usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]);
            let total = 4 + body;
            if total > MAX_HELLO {
                return Err(WireError::Malformed("REALITY: ClientHello too long"));
            }
            if msg.len() >= total {
                msg.truncate(total);
                return Ok(Some(msg));
            }
        }
    }
    Err(WireError::Malformed("REALITY: ClientHello in too many records"))
}

/// A bounds-checked reader.
struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Parses a ClientHello handshake message (as [`reassemble`] returns it).
pub fn parse(msg: &[u8]) -> Result<Hello, WireError> {
    const BAD: WireError = WireError::Malformed("REALITY: malformed ClientHello");
    let mut r = R(msg);
    if r.u8() != Some(CLIENT_HELLO) {
        return Err(BAD);
    }
    r.take(3).ok_or(BAD)?;
    r.u16().ok_or(BAD)?; // legacy_version
    let mut random = [0u8; 32];
    random.copy_from_slice(r.take(32).ok_or(BAD)?);
    let sid = r.vec8().ok_or(BAD)?;
    let session_id = <[u8; 32]>::try_from(sid).ok();
    r.vec16().ok_or(BAD)?; // cipher suites
    r.vec8().ok_or(BAD)?; // compression methods
    let mut hello = Hello {
        random,
        session_id,
        server_name: None,
        tls13: false,
        x25519: None,
    };
    if r.0.is_empty() {
        return Ok(hello);
    }
    let mut exts = R(r.vec16().ok_or(BAD)?);
    while !exts.0.is_empty() {
        let ty = exts.u16().ok_or(BAD)?;
        let mut body = R(exts.vec16().ok_or(BAD)?);
        match ty {
            EXT_SERVER_NAME => {
                let mut list = R(body.vec16().ok_or(BAD)?);
                while !list.0.is_empty() {
                    let kind = list.u8().ok_or(BAD)?;
                    let name = list.vec16().ok_or(BAD)?;
                    if kind == 0 && hello.server_name.is_none() {
                        let s = std::str::from_utf8(name).map_err(|_| BAD)?;
                        hello.server_name = Some(s.to_ascii_lowercase());
                    }
                }
            }
            EXT_SUPPORTED_VERSIONS => {
                let mut list = R(body.vec8().ok_or(BAD)?);
                while !list.0.is_empty() {
                    if list.u16().ok_or(BAD)? == TLS13 {
                        hello.tls13 = true;
                    }
                }
            }
            EXT_KEY_SHARE => {
                let mut list = R(body.vec16().ok_or(BAD)?);
                while !list.0.is_empty() {
                    let group = list.u16().ok_or(BAD)?;
                    let data = list.vec16().ok_or(BAD)?;
                    let x = match group {
                        GROUP_X25519 => Some(data),
                        GROUP_X25519_MLKEM768 => data.get(MLKEM768_SHARE..),
                        _ => None,
                    };
                    if let (None, Some(Ok(k))) = (hello.x25519, x.map(<[u8; 32]>::try_from)) {
                        hello.x25519 = Some(k);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(hello)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics_on_random_input(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse(&data);
            let _ = reassemble(&data);
        }

        #[test]
        fn never_panics_on_mutated_hellos(seed in any::<u64>(), flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..16)) {
            let mut m = crate::tls::reality::tests::sample_hello(seed);
            for (at, b) in flips {
                let i = usize::from(at) % m.len();
                m[i] ^= b;
            }
            let _ = parse(&m);
            let mut rec = vec![22, 3, 1, (m.len() >> 8) as u8, m.len() as u8];
            rec.extend_from_slice(&m);
            let _ = reassemble(&rec);
        }
    }

    #[test]
    fn fragmented_hello_is_reassembled() {
        let m = crate::tls::reality::tests::sample_hello(1);
        let (a, b) = m.split_at(100);
        let mut wire = Vec::new();
        for part in [a, b] {
            wire.extend_from_slice(&[22, 3, 1, (part.len() >> 8) as u8, part.len() as u8]);
            wire.extend_from_slice(part);
        }
        assert_eq!(reassemble(&wire[..wire.len() - 1]).unwrap(), None);
        assert_eq!(reassemble(&wire).unwrap().unwrap(), m);
        let h = parse(&m).unwrap();
        assert!(h.tls13);
        assert_eq!(h.server_name.as_deref(), Some("www.example.com"));
        assert!(h.x25519.is_some() && h.session_id.is_some());
        assert!(reassemble(b"GET / HTTP/1.1\r\n").is_err());
        assert!(reassemble(&[23, 3, 3, 0, 1, 0]).is_err());
    }
}
