#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The TLS stage without sockets: a rustls client against [`TlsSession`]/[`TlsCodec`], with
//! records split at every awkward boundary.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::{ClientConfig, ClientConnection};

use super::*;

pub(crate) fn pair(dir: &std::path::Path) -> TlsSettings {
    let c = rcgen::generate_simple_self_signed(vec!["example.com".to_string()]).unwrap();
    let cert = dir.join("c.pem");
    let key = dir.join("k.pem");
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    TlsSettings {
        cert_mode: "self".into(),
        cert_file: cert.display().to_string(),
        key_file: key.display().to_string(),
        server_name: "example.com".into(),
        reject_unknown_sni: false,
        alpn: vec![],
        reality: None,
        acme_tls_alpn_file: String::new(),
    }
}

pub(crate) fn client(version: &'static rustls::SupportedProtocolVersion) -> ClientConnection {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::outbound::tls::NoVerification))
        .with_no_client_auth();
    let mut c = ClientConnection::new(Arc::new(cfg), "example.com".try_into().unwrap()).unwrap();
    c.set_buffer_limit(None);
    c
}

pub(crate) fn client_out(c: &mut ClientConnection) -> Vec<u8> {
    let mut v = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut v).unwrap();
    }
    v
}

/// Feeds `wire` in `step`-byte pieces the way the relay does (carry of the partial record).
fn feed(s: &mut TlsSession, carry: &mut Vec<u8>, wire: &[u8], step: usize, plain: &mut Vec<u8>) {
    for piece in wire.chunks(step.max(1)) {
        carry.extend_from_slice(piece);
        let used = s.open(carry, plain).unwrap();
        carry.drain(..used);
    }
}

fn round_trip(version: &'static rustls::SupportedProtocolVersion, step: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_config(&pair(dir.path())).unwrap();
    let mut s = TlsSession::new(&cfg).unwrap();
    let mut c = client(version);
    let mut carry = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..10 {
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
        let w = client_out(&mut c);
        feed(&mut s, &mut carry, &w, step, &mut plain);
        let mut back = Vec::new();
        s.pending_output(&mut back);
        let mut r = &back[..];
        while !r.is_empty() {
            c.read_tls(&mut r).unwrap();
        }
        c.process_new_packets().unwrap();
    }
    assert!(!s.is_handshaking() && !c.is_handshaking());
    // Client → server: 100 KiB in several records, fed in odd pieces.
    let data: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 251) as u8).collect();
    c.writer().write_all(&data).unwrap();
    let w = client_out(&mut c);
    let mut codec = TlsCodec::new(s, None);
    let mut got = Vec::new();
    for piece in w.chunks(step.max(1)) {
        carry.extend_from_slice(piece);
        let used = codec.open(&carry, &mut got).unwrap();
        carry.drain(..used);
    }
    assert!(carry.is_empty());
    assert_eq!(got, data);
    // Server → client.
    let mut sealed = Vec::new();
    codec.seal(b"hello back", &mut sealed).unwrap();
    let mut r = &sealed[..];
    while !r.is_empty() {
        c.read_tls(&mut r).unwrap();
    }
    c.process_new_packets().unwrap();
    let mut buf = [0u8; 64];
    let n = c.reader().read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello back");
    if version == &rustls::version::TLS13 {
        // Post-handshake KeyUpdate from the client, both directions keep working.
        c.refresh_traffic_keys().unwrap();
        c.writer().write_all(b"after key update").unwrap();
        let w = client_out(&mut c);
        let mut got = Vec::new();
        assert_eq!(codec.open(&w, &mut got).unwrap(), w.len());
        assert_eq!(got, b"after key update");
        let mut sealed = Vec::new();
        codec.seal(b"still fine", &mut sealed).unwrap();
        let mut r = &sealed[..];
        while !r.is_empty() {
            c.read_tls(&mut r).unwrap();
        }
        c.process_new_packets().unwrap();
        let n = c.reader().read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"still fine");
    }
}

#[test]
fn tls13_and_tls12_round_trip_whole_and_split_records() {
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for step in [1, 3, 1000, 1 << 20] {
            round_trip(v, step);
        }
    }
}

#[test]
fn garbage_is_a_wire_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_config(&pair(dir.path())).unwrap();
    let mut s = TlsSession::new(&cfg).unwrap();
    let mut out = Vec::new();
    assert!(s.open(b"GET / HTTP/1.1\r\n", &mut out).is_err());
    let mut s = TlsSession::new(&cfg).unwrap();
    // A well-framed record that is not a ClientHello.
    assert!(s.open(&[0x16, 3, 1, 0, 4, 1, 2, 3, 4], &mut out).is_err());
}

#[test]
fn reject_unknown_sni_refuses_other_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = pair(dir.path());
    t.reject_unknown_sni = true;
    t.server_name = "other.example".into();
    let cfg = server_config(&t).unwrap();
    let mut s = TlsSession::new(&cfg).unwrap();
    let mut c = client(&rustls::version::TLS13);
    let w = client_out(&mut c);
    let mut out = Vec::new();
    assert!(s.open(&w, &mut out).is_err());
}

#[test]
fn missing_or_mismatched_files_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = pair(dir.path());
    t.key_file = dir.path().join("nope.pem").display().to_string();
    assert!(server_config(&t).is_err());
    let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
    let k2 = dir.path().join("k2.pem");
    std::fs::write(&k2, other.signing_key.serialize_pem()).unwrap();
    t.key_file = k2.display().to_string();
    assert!(server_config(&t).is_err());
}

proptest::proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = server_config(&pair(dir.path())).unwrap();
        let mut s = TlsSession::new(&cfg).unwrap();
        let mut out = Vec::new();
        let _ = s.open(&data, &mut out);
        let mut s = TlsSession::new(&cfg).unwrap();
        let mut buf = data.clone();
        let _ = s.open_in_place(&mut buf, &mut out);
    }
}

/// Splits every handshake record into records of at most `n` payload bytes (what clients'
/// anti-censorship "TLS fragment" options do to the ClientHello).
fn refragment(wire: &[u8], n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= wire.len() {
        let len = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        let body = &wire[at + 5..at + 5 + len];
        if wire[at] == 0x16 {
            for part in body.chunks(n) {
                out.extend_from_slice(&wire[at..at + 3]);
                out.extend_from_slice(&(part.len() as u16).to_be_bytes());
                out.extend_from_slice(part);
            }
        } else {
            out.extend_from_slice(&wire[at..at + 5 + len]);
        }
        at += 5 + len;
    }
    out
}

#[test]
fn client_hello_fragmented_across_records_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_config(&pair(dir.path())).unwrap();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for step in [1, 7, 4096] {
            let mut s = TlsSession::new(&cfg).unwrap();
            let mut c = client(version);
            // The accept stage: one stable buffer, bytes arriving `step` at a time.
            let mut carry = Vec::new();
            let mut plain = Vec::new();
            for _ in 0..10 {
                if !c.is_handshaking() && !s.is_handshaking() {
                    break;
                }
                let w = refragment(&client_out(&mut c), 50);
                for piece in w.chunks(step) {
                    carry.extend_from_slice(piece);
                    let used = s.open_in_place(&mut carry, &mut plain).unwrap();
                    carry.drain(..used);
                }
                let mut back = Vec::new();
                s.pending_output(&mut back);
                let mut r = &back[..];
                while !r.is_empty() {
                    c.read_tls(&mut r).unwrap();
                }
                c.process_new_packets().unwrap();
            }
            assert!(
                !s.is_handshaking() && !c.is_handshaking(),
                "{version:?} step {step}"
            );
            assert!(carry.is_empty());
            c.writer().write_all(b"after").unwrap();
            let w = client_out(&mut c);
            let mut got = Vec::new();
            assert_eq!(s.open(&w, &mut got).unwrap(), w.len());
            assert_eq!(got, b"after");
        }
    }
}

/// A client offering exactly one cipher suite.
fn client_with_suite(
    version: &'static rustls::SupportedProtocolVersion,
    suite: rustls::SupportedCipherSuite,
) -> ClientConnection {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = vec![suite];
    let cfg = ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::outbound::tls::NoVerification))
        .with_no_client_auth();
    let mut c = ClientConnection::new(Arc::new(cfg), "example.com".try_into().unwrap()).unwrap();
    c.set_buffer_limit(None);
    c
}

/// Handshake between `s` and `c` in memory.
fn establish(s: &mut TlsSession, c: &mut ClientConnection) {
    let mut carry = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..10 {
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
        let w = client_out(c);
        feed(s, &mut carry, &w, 1 << 20, &mut plain);
        let mut back = Vec::new();
        s.pending_output(&mut back);
        to_client(c, &back);
    }
    assert!(!s.is_handshaking() && !c.is_handshaking());
}

/// Delivers `wire` to the client; returns the plaintext it read.
fn to_client(c: &mut ClientConnection, wire: &[u8]) -> Vec<u8> {
    let mut r = wire;
    let mut got = Vec::new();
    while !r.is_empty() {
        c.read_tls(&mut r).unwrap();
        c.process_new_packets().unwrap();
        let mut b = [0u8; 4096];
        while let Ok(n @ 1..) = c.reader().read(&mut b) {
            got.extend_from_slice(&b[..n]);
        }
    }
    got
}

const MAX_PLAIN_TEST: usize = record::MAX_PLAIN;

#[test]
fn own_record_layer_serves_every_suite_and_rotates_keys() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let suites = [
        (&rustls::version::TLS13, cs::TLS13_AES_128_GCM_SHA256),
        (&rustls::version::TLS13, cs::TLS13_AES_256_GCM_SHA384),
        (&rustls::version::TLS13, cs::TLS13_CHACHA20_POLY1305_SHA256),
        (
            &rustls::version::TLS12,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS12,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS12,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_config(&pair(dir.path())).unwrap();
    for (version, suite) in suites {
        let name = format!("{:?}", suite.suite());
        let mut s = TlsSession::new(&cfg).unwrap();
        let mut c = client_with_suite(version, suite);
        establish(&mut s, &mut c);
        // Server → client: 100 KiB (7 records), then the keys live in our record layer.
        let data: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 253) as u8).collect();
        let mut wire = Vec::new();
        s.seal(&data, &mut wire).unwrap();
        assert!(s.records_mut().is_some(), "{name}: still on rustls' record path");
        assert_eq!(to_client(&mut c, &wire), data, "{name}");
        // In place, as the relay does it: plaintext read into the layout's slots.
        let l = s.seal_layout().expect("in-place layout");
        for n in [
            1,
            MAX_PLAIN_TEST - 1,
            MAX_PLAIN_TEST,
            MAX_PLAIN_TEST + 1,
            5 * MAX_PLAIN_TEST + 77,
        ] {
            let mut buf = vec![0u8; 256 * 1024];
            let mut put = 0;
            for (off, len) in l.slots(buf.len(), n) {
                buf[off..off + len].copy_from_slice(&data[put..put + len]);
                put += len;
            }
            assert_eq!(put, n);
            let wire_len = s.seal_in_place(&mut buf, n, l).unwrap();
            assert_eq!(
                to_client(&mut c, &buf[..wire_len]),
                &data[..n],
                "{name}: in place, {n} bytes"
            );
        }
        // Client → server, fed a byte at a time.
        c.writer().write_all(&data[..40_000]).unwrap();
        let w = client_out(&mut c);
        let (mut carry, mut got) = (Vec::new(), Vec::new());
        feed(&mut s, &mut carry, &w, 1, &mut got);
        assert!(carry.is_empty(), "{name}");
        assert_eq!(got, &data[..40_000], "{name}");
        if version == &rustls::version::TLS13 {
            // Our own KeyUpdate every 3 records: the client follows it.
            s.records_mut().unwrap().set_rotate_after(3);
            let mut wire = Vec::new();
            s.seal(&data, &mut wire).unwrap();
            s.seal(b"after rotation", &mut wire).unwrap();
            let mut want = data.clone();
            want.extend_from_slice(b"after rotation");
            assert_eq!(to_client(&mut c, &wire), want, "{name}");
        }
        // close_notify from the client ends the upload; nothing after it counts.
        c.send_close_notify();
        let w = client_out(&mut c);
        let mut got = Vec::new();
        assert_eq!(s.open(&w, &mut got).unwrap(), w.len());
        assert!(got.is_empty() && s.peer_closed(), "{name}");
    }
}

#[test]
fn tampered_or_unprotected_records_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_config(&pair(dir.path())).unwrap();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut s = TlsSession::new(&cfg).unwrap();
        let mut c = client(version);
        establish(&mut s, &mut c);
        let mut w = Vec::new();
        s.seal(b"x", &mut w).unwrap();
        c.writer().write_all(b"hello").unwrap();
        let mut w = client_out(&mut c);
        let last = w.len() - 1;
        w[last] ^= 1;
        let mut got = Vec::new();
        assert!(matches!(s.open(&w, &mut got), Err(WireError::BadTag)));
        assert!(got.is_empty());
        // A plaintext handshake record after the handshake.
        let mut s2 = TlsSession::new(&cfg).unwrap();
        let mut c2 = client(version);
        establish(&mut s2, &mut c2);
        s2.seal(b"", &mut Vec::new()).unwrap();
        assert!(s2.open(&[0x16, 3, 3, 0, 4, 1, 0, 0, 0], &mut got).is_err());
        // Shorter than a tag.
        assert!(s2.open(&[0x17, 3, 3, 0, 3, 1, 2, 3], &mut got).is_err());
    }
}

#[test]
fn tickets_resume_on_another_cores_config() {
    let dir = tempfile::tempdir().unwrap();
    let settings = pair(dir.path());
    // Two cores build their own config for the same node.
    let (core_a, core_b) = (
        server_config(&settings).unwrap(),
        server_config(&settings).unwrap(),
    );
    let ccfg = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::outbound::tls::NoVerification))
            .with_no_client_auth(),
    );
    let mut first = ClientConnection::new(ccfg.clone(), "example.com".try_into().unwrap()).unwrap();
    let mut s = TlsSession::new(&core_a).unwrap();
    establish(&mut s, &mut first);
    // The tickets came with the handshake's last flight; the client stored them.
    let mut second = ClientConnection::new(ccfg, "example.com".try_into().unwrap()).unwrap();
    let mut s = TlsSession::new(&core_b).unwrap();
    establish(&mut s, &mut second);
    assert_eq!(second.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
}

/// When the destination is done, our side ends with close_notify: a rustls client reads a
/// clean end of stream (not "peer closed without close_notify").
#[test]
fn our_end_is_close_notify() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_config(&pair(dir.path())).unwrap();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut s = TlsSession::new(&cfg).unwrap();
        let mut c = client(version);
        establish(&mut s, &mut c);
        let mut codec = TlsCodec::new(s, None);
        let mut wire = Vec::new();
        codec.seal(b"last words", &mut wire).unwrap();
        codec.close_output(&mut wire).unwrap();
        let mut r = &wire[..];
        while !r.is_empty() {
            c.read_tls(&mut r).unwrap();
        }
        let st = c.process_new_packets().unwrap();
        assert!(st.peer_has_closed(), "{version:?}");
        let mut got = Vec::new();
        c.reader().read_to_end(&mut got).unwrap();
        assert_eq!(got, b"last words");
    }
}

/// A TLS 1.3 client's KeyUpdate(update_requested), sent again and again by a client that
/// never reads: we answer once (RFC 8446 §4.6.3 needs one KeyUpdate before our next data),
/// so what waits for it is one 27-byte record; today's main queued an answer per request.
/// The client then reads our data under the keys it expects.
#[test]
fn key_update_requests_are_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_config(&pair(dir.path())).unwrap();
    let mut s = TlsSession::new(&cfg).unwrap();
    let mut c = client(&rustls::version::TLS13);
    establish(&mut s, &mut c);
    let mut plain = Vec::new();
    for round in 0..3 {
        for _ in 0..200 {
            c.refresh_traffic_keys().unwrap();
            c.writer().write_all(b"k").unwrap();
        }
        let w = client_out(&mut c);
        let (mut carry, mut got) = (Vec::new(), Vec::new());
        feed(&mut s, &mut carry, &w, 4096, &mut got);
        assert_eq!(got, vec![b'k'; 200], "round {round}");
        // One KeyUpdate record: header 5 + message 5 + content type 1 + tag 16.
        assert_eq!(s.pending_len(), 27, "round {round}");
        let mut codec_view = Vec::new();
        s.pending_output(&mut codec_view);
        s.seal(b"data after the update", &mut codec_view).unwrap();
        plain.extend(to_client(&mut c, &codec_view));
    }
    assert_eq!(plain, b"data after the update".repeat(3));
}

/// The client's traffic key, to write records rustls' client would not (tests).
fn client_tx(c: ClientConnection) -> (aws_lc_rs::aead::LessSafeKey, [u8; 12], u64) {
    let secrets = c.dangerous_extract_secrets().unwrap();
    let (seq, rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv }) = secrets.tx else {
        panic!("not AES-128-GCM")
    };
    let key = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_128_GCM, key.as_ref()).unwrap();
    (
        aws_lc_rs::aead::LessSafeKey::new(key),
        iv.as_ref().try_into().unwrap(),
        seq,
    )
}

/// A TLS 1.3 record of inner type `typ` sealed under `key` at sequence `seq`.
fn seal13(key: &aws_lc_rs::aead::LessSafeKey, iv: [u8; 12], seq: u64, typ: u8, body: &[u8]) -> Vec<u8> {
    let mut nonce = iv;
    for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    let mut data = body.to_vec();
    data.push(typ);
    let len = (data.len() + 16) as u16;
    let mut rec = vec![0x17, 3, 3];
    rec.extend_from_slice(&len.to_be_bytes());
    let aad: [u8; 5] = rec[..5].try_into().unwrap();
    key.seal_in_place_append_tag(
        aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
        aws_lc_rs::aead::Aad::from(aad),
        &mut data,
    )
    .unwrap();
    rec.extend(data);
    rec
}

/// A KeyUpdate changes the key, so it must end its record (RFC 8446 §5.1): two in one
/// record, or one followed by another message, are refused. Today's main accepted any number
/// per record, deriving (and answering) each.
#[test]
fn key_update_must_end_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_config(&pair(dir.path())).unwrap();
    let ku_req = [24u8, 0, 0, 1, 1];
    let ku = [24u8, 0, 0, 1, 0];
    let cases: [(&str, Vec<u8>, bool); 4] = [
        ("one KeyUpdate", ku.to_vec(), true),
        ("one requested KeyUpdate", ku_req.to_vec(), true),
        ("two KeyUpdates", [ku_req, ku_req].concat(), false),
        (
            "KeyUpdate then a ticket",
            [&ku[..], &[4, 0, 0, 0]].concat(),
            false,
        ),
    ];
    for (name, body, ok) in cases {
        let mut s = TlsSession::new(&cfg).unwrap();
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        p.cipher_suites = vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
        let mut ccfg = ClientConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::outbound::tls::NoVerification))
            .with_no_client_auth();
        ccfg.enable_secret_extraction = true;
        let mut c = ClientConnection::new(Arc::new(ccfg), "example.com".try_into().unwrap()).unwrap();
        establish(&mut s, &mut c);
        // Let the client read the tickets first (it would otherwise not give up its keys).
        let mut w = Vec::new();
        s.seal(b"", &mut w).unwrap();
        to_client(&mut c, &w);
        let (key, iv, seq) = client_tx(c);
        let rec = seal13(&key, iv, seq, 22, &body);
        let r = s.open(&rec, &mut Vec::new());
        assert_eq!(r.is_ok(), ok, "{name}: {r:?}");
        if ok {
            assert!(s.pending_len() <= 27, "{name}");
        }
    }
}

/// A handshake we fail ends with rustls' fatal alert, not silence: decode_error for a
/// malformed ClientHello and for bytes that are not TLS records at all (rustls sees the bad
/// record header our deframer refused; before a handshake rustls answers an oversized record
/// with decode_error too).
#[test]
fn failed_handshakes_get_a_fatal_alert() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_config(&pair(dir.path())).unwrap();
    let cases: [(&str, &[u8]); 3] = [
        ("truncated ClientHello", &[0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0]),
        ("plain HTTP", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        ("record too long", &[0x16, 3, 1, 0xff, 0xff, 1, 2, 3]),
    ];
    for (name, wire) in cases {
        let mut s = TlsSession::new(&cfg).unwrap();
        let mut buf = wire.to_vec();
        assert!(s.open_in_place(&mut buf, &mut Vec::new()).is_err(), "{name}");
        let mut alert = Vec::new();
        s.pending_output(&mut alert);
        s.failure_alert(&mut alert);
        // A plaintext alert record: fatal (2), decode_error (50).
        assert_eq!(alert, [21, 3, 3, 0, 2, 2, 50], "{name}");
    }
    // Over a socket, as `accept` runs it: the alert, then our FIN.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    client.write_all(&[0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0]).unwrap();
    let r = rt.block_on(async {
        let s = TcpStream::from_std(server).unwrap();
        accept(&s, &cfg, Vec::new(), &mut [0u8; 4096]).await.err()
    });
    assert!(matches!(r, Some(AcceptError::Wire(_))));
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 7);
    assert_eq!((got[0], got[5], got[6]), (21, 2, 50));
}
