//! Known answers from `vectors.py` (python `cryptography`, independent of this code).
#![allow(clippy::unwrap_used)]

use super::*;

const SERVER_PRIV: &str = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";
const HELLO: &str = "010000a40303030a11181f262d343b424950575e656c737a81888f969da4abb2b9c0c7ced5dc206f26d079f48fe9fdf9cc6b66539eeafc5b8b713a88d14363acc53dccbb0eb6b300061301130213030100005500000014001200000f7777772e6578616d706c652e636f6d002b00050403040303003300260024001d00205714769d116bf76436ae74bc793d2c30ad1903c59ac5273805c7e2698b410c36000d0006000408070403";
const AUTH_KEY: &str = "44452af9ecc1a5c70251f2cefbf92c8b0f3a1a7cb445dc3ef1223959f2a606fa";
const CERT_SIG: &str = "b725dca7dece161afdfe117440c6c1f8086744ea4cc28f02445e80301074083c8b42d7a43a940a293530d32058fb16dc3523042cb77c1de6e630a09824aeff32";
const ED_PUB: &str = "0b10151a1f24292e33383d42474c51565b60656a6f74797e83888d92979ca1a6";
/// The vector's client time (s) and short id.
const NOW_MS: u64 = 1_700_000_000_000;
const SHORT_ID: &str = "0123456789abcdef";

/// The vector's ClientHello (the seed is unused: one well-formed base for mutations).
pub(crate) fn sample_hello(_seed: u64) -> Vec<u8> {
    hex::decode(HELLO).unwrap()
}

fn key() -> [u8; 32] {
    hex::decode(SERVER_PRIV).unwrap().try_into().unwrap()
}

fn names() -> Vec<String> {
    vec!["www.example.com".into()]
}

fn ids() -> Vec<[u8; 8]> {
    vec![decode_short_id(SHORT_ID).unwrap()]
}

#[test]
fn known_answer_authenticates() {
    let m = sample_hello(0);
    let auth = authenticate(&key(), &names(), &ids(), 0, &m, 0).unwrap();
    assert_eq!(hex::encode(auth), AUTH_KEY);
    // Within and outside a 60 s window.
    assert!(authenticate(&key(), &names(), &ids(), 60_000, &m, NOW_MS + 59_000).is_some());
    assert!(authenticate(&key(), &names(), &ids(), 60_000, &m, NOW_MS - 61_000).is_none());
    let sig = cert_signature(&auth, &hex::decode(ED_PUB).unwrap());
    assert_eq!(hex::encode(sig), CERT_SIG);
}

/// Issue 11: a captured hello replayed later authenticates again, but is not seen for the
/// first time: the server treats it as a stranger (relays it to dest). Another hello of the
/// same client (a new random) is new.
#[test]
fn a_replayed_hello_is_not_a_first_sighting() {
    let filter = crate::limits::replay::ReplayFilter::new(240, 1 << 16);
    let seen = |k: &[u8]| filter.check_and_insert(k, 1_000);
    let m = sample_hello(0);
    assert!(authenticate(&key(), &names(), &ids(), 0, &m, 0).is_some());
    assert!(first_sighting(&m, &seen));
    assert!(
        authenticate(&key(), &names(), &ids(), 0, &m, 0).is_some(),
        "a replay authenticates"
    );
    assert!(!first_sighting(&m, &seen), "the replay must not pass");
    let mut other = m.clone();
    other[hello::SESSION_ID_AT - 1 - 32] ^= 1; // the first byte of the random
    assert!(first_sighting(&other, &seen));
    // Not a ClientHello: never a first sighting.
    assert!(!first_sighting(b"\x01\x00", &seen));
    // The key cannot collide with a 32-byte Shadowsocks salt equal to the random.
    let random: [u8; 32] = m[6..38].try_into().unwrap();
    assert!(
        filter.check_and_insert(&random, 1_000),
        "salts and REALITY randoms are apart"
    );
}

#[test]
fn wrong_key_name_short_id_or_tampering_fail() {
    let m = sample_hello(0);
    let mut other = key();
    other[0] ^= 8; // (bits 0-2 are clamped away)
    assert!(authenticate(&other, &names(), &ids(), 0, &m, 0).is_none());
    assert!(authenticate(&key(), &["example.org".into()], &ids(), 0, &m, 0).is_none());
    assert!(authenticate(&key(), &names(), &[[0u8; 8]], 0, &m, 0).is_none());
    // Any byte of the hello is covered (AAD, nonce, key share, tag).
    for i in [10, 45, 80, m.len() - 1] {
        let mut t = m.clone();
        t[i] ^= 0x40;
        assert!(
            authenticate(&key(), &names(), &ids(), 0, &t, 0).is_none(),
            "byte {i}"
        );
    }
}

#[test]
fn keys_short_ids_and_dests_decode() {
    assert_eq!(decode_short_id(""), Some([0; 8]));
    assert_eq!(decode_short_id("ab"), Some([0xab, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(decode_short_id("abc"), None);
    assert_eq!(decode_short_id("0123456789abcdef01"), None);
    // `xray x25519` style key (base64url, no padding).
    let k = decode_key("UuMBgl7MXTPx9inmQp2UC7Jcnwc6XYbwDNebonM-FCc").unwrap();
    assert_eq!(k[0], 0x52);
    assert!(decode_key("short").is_none());
    assert_eq!(
        parse_dest("www.example.com:443"),
        Some(Destination::Domain("www.example.com".into(), 443))
    );
    assert_eq!(
        parse_dest("127.0.0.1:8443"),
        Some(Destination::Ip("127.0.0.1:8443".parse().unwrap()))
    );
    assert_eq!(parse_dest("example.com"), None);
}

#[test]
fn proxy_headers() {
    let s: SocketAddr = "1.2.3.4:5000".parse().unwrap();
    let d: SocketAddr = "[::ffff:10.0.0.1]:443".parse().unwrap();
    assert_eq!(
        proxy_header(1, s, d),
        b"PROXY TCP4 1.2.3.4 10.0.0.1 5000 443\r\n".to_vec()
    );
    let v2 = proxy_header(2, s, d);
    let parsed = crate::net::proxy_protocol::parse(&v2).unwrap();
    assert_eq!(
        parsed,
        crate::net::proxy_protocol::Parsed::Done {
            consumed: v2.len(),
            source: Some(s)
        }
    );
}

/// The per-connection certificate parses as X.509 with an ed25519 key and carries the HMAC
/// as its signature; a TLS 1.3 handshake with it completes.
#[test]
fn certificate_and_handshake() {
    let srv = RealityServer::new(&RealitySettings {
        dest: "127.0.0.1:1".into(),
        server_names: names(),
        private_key: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key()),
        short_ids: vec![SHORT_ID.into()],
        xver: 0,
        max_time_diff_ms: 0,
    })
    .unwrap();
    let auth: [u8; 32] = hex::decode(AUTH_KEY).unwrap().try_into().unwrap();
    let der = srv.certificate(&auth);
    assert_eq!(
        &der[der.len() - 64..],
        &cert_signature(&auth, &srv.ed25519_public)[..]
    );
    // The public key sits in the certificate (SubjectPublicKeyInfo ends with it).
    assert!(der.windows(32).any(|w| w == &srv.ed25519_public[..]));
    let cfg = srv.server_config(&auth).unwrap();
    let mut session = crate::tls::TlsSession::new(&cfg).unwrap();
    let mut client = crate::tls::tests::client(&rustls::version::TLS13);
    let mut plain = Vec::new();
    for _ in 0..8 {
        let mut wire = crate::tls::tests::client_out(&mut client);
        if !wire.is_empty() {
            let used = session.open_in_place(&mut wire, &mut plain).unwrap();
            assert!(used > 0);
        }
        let mut out = Vec::new();
        session.pending_output(&mut out);
        if !out.is_empty() {
            client.read_tls(&mut &out[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        if !session.is_handshaking() && !client.is_handshaking() {
            break;
        }
    }
    assert!(!client.is_handshaking());
    let certs = client.peer_certificates().unwrap();
    assert_eq!(certs[0].as_ref(), &der[..]);
    assert_eq!(client.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
}
