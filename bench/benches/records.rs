//! Record and chunk framing of the TLS-based and VMess protocols, the per-byte cost after the
//! handshake (the Shadowsocks methods are in `dataplane/benches/ss_framing.rs`):
//!
//! * `tls_seal/<suite>/<size>`: `dataplane::tls::TlsSession::seal` of 16 KiB / 256 KiB (the
//!   download direction: the server encrypts what the target sent), per TLS 1.3 cipher suite,
//!   on a session from `dataplane::tls::server_config` (rustls + aws-lc-rs, as a node builds
//!   it) after a real in-memory handshake with a rustls client.
//! * `tls_open/<suite>/<size>`: `TlsSession::open_in_place` of the same amounts sealed by the
//!   client (made outside the timing, consumed in order) — the upload direction, decrypted in
//!   the read buffer as the relay does.
//! * `vmess_chunks/<security>`: 16 KiB through VMess body framing (`ChunkWriter::seal` on one
//!   side, `ChunkReader::open` on the other) with chunk stream + masking + global padding, per
//!   security (aes-128-gcm, chacha20-poly1305, none).
//!
//! `V2SP_BENCH_ITERS=N` runs each case exactly N times without criterion (see
//! `support/instr.rs`, `scripts/instr-count.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "support/instr.rs"]
mod instr;

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;

use criterion::Throughput;
use instr::Runner;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedCipherSuite};
use v2sp_dataplane::proto::vmess::body::{
    BodyParams, ChunkReader, ChunkWriter, Security, OPT_CHUNK_MASKING, OPT_CHUNK_STREAM, OPT_GLOBAL_PADDING,
};
use v2sp_dataplane::proto::vmess::crypto::AeadKind;
use v2sp_dataplane::tls::{server_config, TlsSession};
use v2sp_shared::dpconfig::TlsSettings;

const NAME: &str = "v2sp.bench";
const SIZES: [(usize, &str); 2] = [(16 << 10, "16KiB"), (256 << 10, "256KiB")];

/// A server session from the node's own config builder and a client that trusts its
/// certificate, handshaken in memory with `suite` (TLS 1.3).
fn handshaken(suite: SupportedCipherSuite) -> (TlsSession, ClientConnection, tempfile::TempDir) {
    let ck = rcgen::generate_simple_self_signed(vec![NAME.to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let cfg = server_config(&TlsSettings {
        cert_mode: "file".into(),
        cert_file: cert.display().to_string(),
        key_file: key.display().to_string(),
        server_name: NAME.into(),
        ..Default::default()
    })
    .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![suite];
    let ccfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = ClientConnection::new(Arc::new(ccfg), ServerName::try_from(NAME).unwrap()).unwrap();
    // 256 KiB written at once (rustls buffers 64 KiB of plaintext by default).
    client.set_buffer_limit(None);
    let mut server = TlsSession::new(&cfg).unwrap();
    let mut plain = Vec::new();
    for _ in 0..20 {
        let mut c2s = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut c2s).unwrap();
        }
        let used = server.open(&c2s, &mut plain).unwrap();
        assert_eq!(used, c2s.len());
        let mut s2c = Vec::new();
        server.pending_output(&mut s2c);
        let mut rd = &s2c[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets().unwrap();
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            break;
        }
    }
    assert!(!server.is_handshaking() && !client.is_handshaking());
    (server, client, dir)
}

fn suite_name(s: SupportedCipherSuite) -> &'static str {
    match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => "aes128gcm",
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => "aes256gcm",
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "chacha20poly1305",
        _ => "other",
    }
}

fn tls(r: &mut Runner) {
    for suite in rustls::crypto::aws_lc_rs::DEFAULT_CIPHER_SUITES
        .iter()
        .copied()
        .filter(|s| s.version() == &rustls::version::TLS13)
    {
        let sn = suite_name(suite);
        for (size, label) in SIZES {
            let plain = vec![0x5a_u8; size];
            let (mut server, mut client, _dir) = handshaken(suite);
            let mut out = Vec::with_capacity(size + 4096);
            r.case(
                "tls_seal",
                &format!("{sn}/{label}"),
                Some(Throughput::Bytes(size as u64)),
                || {
                    out.clear();
                    server.seal(black_box(&plain), &mut out).unwrap();
                    black_box(&out);
                },
            );
            // Sealed by the client, opened by the server in the order made.
            let mut opened = Vec::with_capacity(size);
            r.case_batched(
                "tls_open",
                &format!("{sn}/{label}"),
                Some(Throughput::Bytes(size as u64)),
                || {
                    client.writer().write_all(&plain).unwrap();
                    let mut wire = Vec::with_capacity(size + 4096);
                    while client.wants_write() {
                        client.write_tls(&mut wire).unwrap();
                    }
                    wire
                },
                |mut wire| {
                    opened.clear();
                    let used = server.open_in_place(&mut wire, &mut opened).unwrap();
                    assert_eq!((used, opened.len()), (wire.len(), size));
                },
            );
            // Nothing left unread on the client side matters: the sessions are dropped here.
            let _ = client.reader().read(&mut [0u8; 1]);
        }
    }
}

fn vmess(r: &mut Runner) {
    let size = 16 << 10;
    for (name, security) in [
        ("aes-128-gcm", Security::Aead(AeadKind::Aes128Gcm)),
        ("chacha20-poly1305", Security::Aead(AeadKind::ChaCha20Poly1305)),
        ("none", Security::None),
    ] {
        let p = BodyParams {
            security,
            options: OPT_CHUNK_STREAM | OPT_CHUNK_MASKING | OPT_GLOBAL_PADDING,
            request_key: [7; 16],
            request_iv: [9; 16],
        };
        let (key, iv) = ([0x11; 16], [0x22; 16]);
        let mut w = ChunkWriter::new(&p, &key, &iv).unwrap();
        let mut rd = ChunkReader::new(&p, &key, &iv).unwrap();
        let plain = vec![0x5a_u8; size];
        let (mut wire, mut out) = (Vec::with_capacity(size + 1024), Vec::with_capacity(size));
        r.case("vmess_chunks", name, Some(Throughput::Bytes(size as u64)), || {
            wire.clear();
            out.clear();
            w.seal(black_box(&plain), &mut wire).unwrap();
            let n = rd.open(&wire, &mut out).unwrap();
            assert_eq!((n, out.len()), (wire.len(), size));
        });
    }
}

fn main() {
    instr::main(&[tls, vmess]);
}
