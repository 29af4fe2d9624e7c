//! Server name from a ClientHello, read before rustls consumes it (rustls' unbuffered server
//! connection does not expose the SNI; fallbacks select by it).
//!
//! ```text
//! record:    type 0x16 | version 2 | length 2 | handshake ...
//! handshake: type 0x01 | length 3 | version 2 | random 32 | session_id <1> | cipher_suites <2>
//!            | compression_methods <1> | extensions <2>
//! extension: type 2 | length 2 | data          (server_name = type 0)
//! server_name data: list length 2 | name_type 1 (0 = host_name) | name length 2 | name
//! ```
//!
//! Best effort: a ClientHello split across records (clients' TLS fragment option) gives `None`.

/// The `host_name` of the ClientHello in the first record of `buf`, if complete there.
pub fn client_hello_sni(buf: &[u8]) -> Option<String> {
    if *buf.first()? != 0x16 {
        return None;
    }
    let rec_len = usize::from(u16::from_be_bytes([*buf.get(3)?, *buf.get(4)?]));
    let hs = buf.get(5..5 + rec_len)?;
    if *hs.first()? != 0x01 {
        return None;
    }
    let body_len =
        (usize::from(*hs.get(1)?) << 16) | (usize::from(*hs.get(2)?) << 8) | usize::from(*hs.get(3)?);
    let body = hs.get(4..4 + body_len)?;
    let mut at = 2 + 32;
    at += 1 + usize::from(*body.get(at)?);
    at += 2 + usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
    at += 1 + usize::from(*body.get(at)?);
    let ext_len = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
    let mut exts = body.get(at + 2..at + 2 + ext_len)?;
    while exts.len() >= 4 {
        let typ = u16::from_be_bytes([exts[0], exts[1]]);
        let len = usize::from(u16::from_be_bytes([exts[2], exts[3]]));
        let data = exts.get(4..4 + len)?;
        if typ == 0 {
            let list = data.get(2..)?;
            if *list.first()? != 0 {
                return None;
            }
            let n = usize::from(u16::from_be_bytes([*list.get(1)?, *list.get(2)?]));
            let name = list.get(3..3 + n)?;
            return std::str::from_utf8(name).ok().map(str::to_ascii_lowercase);
        }
        exts = exts.get(4 + len..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Hand-built ClientHello (RFC 8446 §4.1.2 layout) naming "a.example".
    fn hello(name: &[u8]) -> Vec<u8> {
        let mut sni = vec![0x00, 0x00]; // extension type server_name
        let list_len = 3 + name.len();
        sni.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        sni.extend_from_slice(&(list_len as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        // An ALPN extension before it: type 16, "h2".
        let mut exts = vec![0x00, 0x10, 0x00, 0x05, 0x00, 0x03, 0x02, b'h', b'2'];
        exts.extend_from_slice(&sni);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.extend_from_slice(&[0x20]);
        body.extend_from_slice(&[9u8; 32]);
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn finds_the_host_name() {
        let h = hello(b"A.Example");
        assert_eq!(client_hello_sni(&h).as_deref(), Some("a.example"));
        // Incomplete record or not a handshake: none, no panic.
        for cut in 0..h.len() {
            assert_eq!(client_hello_sni(&h[..cut]), None);
        }
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), None);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = client_hello_sni(&data);
            let mut h = hello(b"x.y");
            h.truncate(60);
            h.extend_from_slice(&data);
            let _ = client_hello_sni(&h);
        }
    }
}
