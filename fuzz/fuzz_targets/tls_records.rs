//! Our TLS record layer after a real handshake (issue 11): a rustls client and our server
//! session, in memory, exchange application data, KeyUpdates (update_requested), close_notify,
//! tampered records and raw bytes, in the order and sizes the input chooses. Oracles: what the
//! client wrote comes out of our side intact (until garbage or tampering ends the
//! connection), everything we send satisfies the client's rustls, and what waits for a client
//! that does not read stays one KeyUpdate record at most.
//!
//! Input: byte 0 picks TLS 1.3 or 1.2 (and the chunk size the server is fed in), then pairs of
//! (operation, argument).
#![no_main]
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use v2sp_dataplane::tls::{provider, TlsSession};

#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// The server config as `tls::server_config` builds it: keys extractable, so our record layer
/// takes over after the handshake.
fn server() -> &'static Arc<rustls::ServerConfig> {
    static CFG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["fuzz.example".into()]).expect("rcgen");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .expect("cert");
        cfg.enable_secret_extraction = true;
        Arc::new(cfg)
    })
}

fn client(tls13: bool) -> ClientConnection {
    static CFG: OnceLock<[Arc<ClientConfig>; 2]> = OnceLock::new();
    let cfgs = CFG.get_or_init(|| {
        let make = |v: &'static rustls::SupportedProtocolVersion| {
            Arc::new(
                ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[v])
                    .expect("versions")
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAny))
                    .with_no_client_auth(),
            )
        };
        [make(&rustls::version::TLS12), make(&rustls::version::TLS13)]
    });
    let mut c = ClientConnection::new(cfgs[usize::from(tls13)].clone(), "fuzz.example".try_into().expect("name"))
        .expect("client");
    c.set_buffer_limit(None);
    c
}

fn client_out(c: &mut ClientConnection) -> Vec<u8> {
    let mut v = Vec::new();
    while c.wants_write() {
        if c.write_tls(&mut v).is_err() {
            break;
        }
    }
    v
}

/// Delivers our bytes to the client: it must accept them. Returns the plaintext it read.
fn to_client(c: &mut ClientConnection, wire: &[u8]) -> Vec<u8> {
    let mut r = wire;
    let mut got = Vec::new();
    while !r.is_empty() {
        c.read_tls(&mut r).expect("client read_tls");
        c.process_new_packets().expect("the client refused what our record layer sent");
        let mut b = [0u8; 16384];
        while let Ok(n @ 1..) = c.reader().read(&mut b) {
            got.extend_from_slice(&b[..n]);
        }
    }
    got
}

/// Feeds `wire` to the server in `step`-byte reads, keeping the partial record as the relay
/// does; `Err` once the session refuses its input.
fn feed(s: &mut TlsSession, carry: &mut Vec<u8>, wire: &[u8], step: usize, plain: &mut Vec<u8>) -> Result<(), ()> {
    for piece in wire.chunks(step.max(1)) {
        carry.extend_from_slice(piece);
        let used = s.open(carry, plain).map_err(|_| ())?;
        carry.drain(..used.min(carry.len()));
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, ops)) = data.split_first() else {
        return;
    };
    let tls13 = sel & 1 == 0;
    let step = usize::from(sel >> 1) % 64 + 1;
    let Ok(mut s) = TlsSession::new(server()) else { return };
    let mut c = client(tls13);
    let (mut carry, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
        let w = client_out(&mut c);
        feed(&mut s, &mut carry, &w, 1 << 20, &mut plain).expect("handshake");
        let mut back = Vec::new();
        s.pending_output(&mut back);
        to_client(&mut c, &back);
    }
    assert!(!s.is_handshaking() && !c.is_handshaking());
    // Tickets out; from here on our record layer serves.
    let mut w = Vec::new();
    s.seal(b"", &mut w).expect("seal");
    to_client(&mut c, &w);

    let mut sent_up = Vec::new();
    let mut got_up = Vec::new();
    let mut sent_down = Vec::new();
    let mut got_down = Vec::new();
    let mut tamper = false;
    let mut closed = false;
    let mut it = ops.chunks(2);
    while let Some(op) = it.next() {
        let (code, arg) = (op[0], usize::from(op.get(1).copied().unwrap_or(0)));
        match code % 8 {
            // The client writes (then everything it queued goes to us).
            0 | 1 => {
                if code % 8 == 1 && tls13 && !closed {
                    c.refresh_traffic_keys().expect("key update");
                }
                let data: Vec<u8> = (0..arg * 131).map(|i| (i * 7 + arg) as u8).collect();
                if !closed {
                    c.writer().write_all(&data).expect("client write");
                    sent_up.extend_from_slice(&data);
                }
                let mut w = client_out(&mut c);
                if tamper && !w.is_empty() {
                    let at = arg % w.len();
                    w[at] ^= 0x40;
                }
                if feed(&mut s, &mut carry, &w, step, &mut got_up).is_err() {
                    assert!(tamper, "our record layer refused the client's records");
                    return;
                }
                assert!(!tamper || w.is_empty() || got_up.len() <= sent_up.len());
            }
            // We seal data for the client (after anything queued, e.g. a KeyUpdate answer).
            2 => {
                let data: Vec<u8> = (0..arg * 257).map(|i| (i * 3 + arg) as u8).collect();
                let mut w = Vec::new();
                s.seal(&data, &mut w).expect("seal");
                sent_down.extend_from_slice(&data);
                got_down.extend(to_client(&mut c, &w));
            }
            // In place, as the relay seals a read.
            3 => {
                let Some(l) = s.seal_layout() else { continue };
                let n = (arg * 293).min(64 * 1024);
                let mut buf = vec![0u8; 80 * 1024];
                let mut put = 0;
                for (off, len) in l.slots(buf.len(), n) {
                    for (k, b) in buf[off..off + len].iter_mut().enumerate() {
                        *b = (put + k) as u8;
                    }
                    put += len;
                }
                let wire_len = s.seal_in_place(&mut buf, put, l).expect("seal in place");
                sent_down.extend((0..put).map(|i| i as u8));
                got_down.extend(to_client(&mut c, &buf[..wire_len]));
            }
            // Raw bytes from the input, as if the client sent them: anything may happen, but
            // nothing panics; the connection is over if they are refused.
            4 => {
                let raw: Vec<u8> = it.by_ref().take(arg / 2 + 1).flatten().copied().collect();
                let mut junk = Vec::new();
                if feed(&mut s, &mut carry, &raw, step, &mut junk).is_err() {
                    return;
                }
                // Accepted junk can only be a valid record prefix: keep the oracle honest.
                if !junk.is_empty() || !carry.is_empty() {
                    return;
                }
            }
            5 => tamper = true,
            6 => {
                if !closed {
                    c.send_close_notify();
                    closed = true;
                }
            }
            // What waits for a client that does not read: at most our KeyUpdate answer (and,
            // rarely, our own rotation).
            _ => {
                assert!(s.pending_len() <= 2 * 27, "{} bytes wait for the client", s.pending_len());
                let mut w = Vec::new();
                s.pending_output(&mut w);
                got_down.extend(to_client(&mut c, &w));
            }
        }
        assert!(s.pending_len() <= 2 * 27, "{} bytes wait for the client", s.pending_len());
    }
    if !tamper {
        assert_eq!(got_up, sent_up, "client data lost or changed");
    }
    assert_eq!(got_down, sent_down, "our data lost or changed");
});
