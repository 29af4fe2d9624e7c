//! Server name (and whether ALPN offers `acme-tls/1` alone) from a ClientHello, read before
//! rustls consumes it (rustls' unbuffered server connection does not expose the SNI;
//! fallbacks select by it; TLS-ALPN-01 validations get their own config).
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

/// The data of extension `typ` in the ClientHello in the first record of `buf`, if complete
/// there.
fn client_hello_extension(buf: &[u8], typ: u16) -> Option<&[u8]> {
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
        let t = u16::from_be_bytes([exts[0], exts[1]]);
        let len = usize::from(u16::from_be_bytes([exts[2], exts[3]]));
        let data = exts.get(4..4 + len)?;
        if t == typ {
            return Some(data);
        }
        exts = exts.get(4 + len..)?;
    }
    None
}

/// The `host_name` of the ClientHello in the first record of `buf`, if complete there.
pub fn client_hello_sni(buf: &[u8]) -> Option<String> {
    let data = client_hello_extension(buf, 0)?;
    let list = data.get(2..)?;
    if *list.first()? != 0 {
        return None;
    }
    let n = usize::from(u16::from_be_bytes([*list.get(1)?, *list.get(2)?]));
    let name = list.get(3..3 + n)?;
    std::str::from_utf8(name).ok().map(str::to_ascii_lowercase)
}

/// Whether the ClientHello in the first record of `buf` offers exactly one ALPN protocol,
/// `proto` (RFC 7301: extension 16, a list of length-prefixed names). TLS-ALPN-01 validators
/// offer `acme-tls/1` alone (RFC 8737 §3); a normal client never does.
pub fn client_hello_offers_only(buf: &[u8], proto: &[u8]) -> bool {
    let Some(data) = client_hello_extension(buf, 16) else {
        return false;
    };
    let Some(list) = data.get(2..) else {
        return false;
    };
    let declared = data
        .get(..2)
        .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
    list.len() == proto.len() + 1
        && declared == Some(list.len())
        && list.first().map(|&n| usize::from(n)) == Some(proto.len())
        && list.get(1..) == Some(proto)
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

    /// The same hello with an ALPN list in place of "h2".
    fn hello_alpn(protos: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for p in protos {
            list.push(p.len() as u8);
            list.extend_from_slice(p);
        }
        let mut ext = vec![0x00, 0x10];
        ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
        ext.extend_from_slice(&list);
        let h = hello(b"a.example");
        // The original ALPN extension is the 9 bytes after the extensions' length.
        let ext_at = 5 + 4 + 2 + 32 + 33 + 6;
        let mut out = h[..ext_at].to_vec();
        let old_len = u16::from_be_bytes([h[ext_at], h[ext_at + 1]]) as usize;
        out.extend_from_slice(&((old_len - 9 + ext.len()) as u16).to_be_bytes());
        out.extend_from_slice(&ext);
        out.extend_from_slice(&h[ext_at + 2 + 9..]);
        // Fix the handshake and record lengths.
        let body = out.len() - 9;
        out[6..9].copy_from_slice(&(body as u32).to_be_bytes()[1..]);
        let rec = out.len() - 5;
        out[3..5].copy_from_slice(&(rec as u16).to_be_bytes());
        out
    }

    #[test]
    fn acme_tls_alone_is_recognised() {
        let acme: &[u8] = b"acme-tls/1";
        let h = hello_alpn(&[acme]);
        assert_eq!(client_hello_sni(&h).as_deref(), Some("a.example"));
        assert!(client_hello_offers_only(&h, acme));
        assert!(!client_hello_offers_only(&hello_alpn(&[b"h2", acme]), acme));
        assert!(!client_hello_offers_only(&hello_alpn(&[acme, b"http/1.1"]), acme));
        assert!(!client_hello_offers_only(&hello_alpn(&[b"acme-tls/2"]), acme));
        assert!(!client_hello_offers_only(&hello(b"a.example"), acme));
        for cut in 0..h.len() {
            assert!(!client_hello_offers_only(&h[..cut], acme));
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = client_hello_sni(&data);
            let _ = client_hello_offers_only(&data, b"acme-tls/1");
            let mut h = hello(b"x.y");
            h.truncate(60);
            h.extend_from_slice(&data);
            let _ = client_hello_sni(&h);
            let _ = client_hello_offers_only(&h, b"acme-tls/1");
        }
    }
}
