//! Issue 11 for the QUIC nodes (TUIC, Hysteria 2): a client that completes the QUIC handshake
//! and never authenticates gets nothing but bounded cost. The attacker is our own quinn
//! client, on loopback, bounded in count and time.
//!
//! Each attacker connection pushes on every pre-authentication bound of `node/quic.rs` at
//! once: more streams than the 16 of credit (bidirectional heads that never complete, TUIC
//! Connect requests with 16 KiB of payload that wait for an authentication that never
//! comes, unidirectional Packet commands announcing 64 KiB; on Hysteria 2, HTTP/3 request
//! heads announcing 60 KiB of which 32 KiB come), and 2 MiB of datagrams. Asserted: the data
//! plane's RSS grows by less than 48 MiB for 96 such connections (~240 KiB each measured,
//! of which ~53 KiB is an idle quinn connection), nothing is relayed or counted for them,
//! every one is closed by the handshake deadline, and a real sing-box client is served
//! during the attack. With a small `MaxHandshakes` the unauthenticated connections are capped
//! per node and core, the oldest giving its place to the newest, so the legitimate client
//! still gets in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use v2sp_testsupport::harness::{
    free_port, payload, rss_bytes, self_signed_certs, sing_box_outbound, tcp_echo_through, Echo, NodeSpec,
    V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUIDS: [&str; 1] = ["705d4ada-fc32-48de-951c-2ab9d5765ce0"];
const DOMAIN: &str = "v2sp.test";
const MIB: u64 = 1 << 20;

/// Accepts any server certificate: the attacker does not care who it talks to.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config() -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(60_000))));
    c.transport_config(Arc::new(t));
    c
}

/// One attacker connection: everything that costs the server before authentication. Returns
/// the connection (held open) once its streams and datagrams are out.
async fn attack(ep: &quinn::Endpoint, server: SocketAddr, tuic: bool) -> Option<quinn::Connection> {
    let conn = ep.connect(server, DOMAIN).ok()?.await.ok()?;
    let mut tasks = Vec::new();
    for k in 0..24u32 {
        let c = conn.clone();
        tasks.push(tokio::spawn(async move {
            let Ok((mut send, _recv)) = c.open_bi().await else {
                return;
            };
            let mut w = if tuic {
                if k % 2 == 0 {
                    // A complete Connect to 127.0.0.1:9 with 16 KiB of payload: waits for an
                    // authentication that never comes.
                    let mut w = vec![5, 1, 1, 127, 0, 0, 1, 0, 9];
                    w.extend(std::iter::repeat_n(0x41, 16 << 10));
                    w
                } else {
                    // A Connect naming a domain of 200 bytes of which 3 come.
                    vec![5, 1, 0, 200, b'a', b'b', b'c']
                }
            } else {
                // An HTTP/3 HEADERS frame announcing 60 KiB, 32 KiB of it sent.
                let mut w = vec![0x01, 0x80, 0x00, 0xf0, 0x00];
                w.extend(std::iter::repeat_n(0x5a, 32 << 10));
                w
            };
            let _ = send.write_all(&w).await;
            w.clear();
            // Held open (not finished) until the server gives up.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(send);
        }));
    }
    for _ in 0..24u32 {
        let c = conn.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut send) = c.open_uni().await else { return };
            // TUIC: a Packet announcing 64 KiB of payload, 48 KiB sent; Hysteria 2: junk on
            // what would be a control stream.
            let mut w = vec![5, 2, 0, 1, 0, 1, 1, 0, 0xff, 0xff, 1, 127, 0, 0, 1, 0, 53];
            w.extend(std::iter::repeat_n(0x42, 48 << 10));
            let _ = send.write_all(&w).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(send);
        }));
    }
    // 2 MiB of datagrams (a TUIC packet each, or Hysteria 2 UDP messages).
    let mut d = vec![5, 2, 0, 1, 0, 1, 1, 0, 0x04, 0x90, 1, 127, 0, 0, 1, 0, 53];
    d.resize(1100, 0x43);
    for _ in 0..(2 * MIB as usize / 1100) {
        let _ = conn.send_datagram(d.clone().into());
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for t in tasks {
        t.abort();
    }
    Some(conn)
}

fn quic_node(kind: &str) -> NodeSpec {
    let port = free_port();
    let info = match kind {
        "tuic" => json!({"node_type": "tuic", "protocol": "tuic", "version": 5, "server_port": port,
                         "server_name": DOMAIN, "congestion_control": "cubic", "heartbeat": "3s",
                         "base_config": {"push_interval": 1, "pull_interval": 1}}),
        _ => json!({"node_type": "hysteria2", "protocol": "hysteria", "version": 2, "server_port": port,
                    "server_name": DOMAIN, "up_mbps": 0, "down_mbps": 0, "obfs": null,
                    "base_config": {"push_interval": 1, "pull_interval": 1}}),
    };
    NodeSpec {
        node_id: 1,
        port,
        info,
        users: users(&UUIDS),
    }
}

fn legit(kind: &str, v: &V2sp, echo: &Echo, seed: u64) -> Result<u64, String> {
    let tls = json!({"enabled": true, "server_name": DOMAIN, "insecure": true, "alpn": ["h3"]});
    let out = match kind {
        "tuic" => json!({"type": "tuic", "server": "127.0.0.1", "server_port": v.nodes[0].port,
                         "uuid": UUIDS[0], "password": UUIDS[0], "tls": tls}),
        _ => json!({"type": "hysteria2", "server": "127.0.0.1", "server_port": v.nodes[0].port,
                    "password": UUIDS[0], "tls": tls}),
    };
    let (proc_, socks) = sing_box_outbound(out, v.dir.path()).map_err(|e| format!("sing-box: {e:#}"))?;
    tcp_echo_through(socks, echo.port, &payload(256 << 10, seed))
        .map_err(|e| format!("{e:#}\n{}", proc_.log()))
}

/// `max_handshakes`: the data plane's `MaxHandshakes` (an eighth of it per node and core
/// for unauthenticated QUIC connections).
fn flood(kind: &str, max_handshakes: u32) -> (usize, u64) {
    const CONNS: usize = 96;
    const IPS: u8 = 6;
    const BOUND: u64 = 48 * MIB;
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    // A handshake deadline long enough that every attacker connection is pending when RSS is
    // measured.
    let v = V2sp::start_with(
        vec![quic_node(kind)],
        self_signed_certs(certs.path(), DOMAIN),
        json!({"Timeouts": {"Handshake": 12}, "MaxHandshakes": max_handshakes}),
    )
    .unwrap();
    let pid = v.dataplane_pid();
    let moved =
        legit(kind, &v, &echo, 1).unwrap_or_else(|e| panic!("before the attack: {e}\n{}", v.agent.log()));
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes(pid);
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, v.nodes[0].port));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let conns = rt.block_on(async {
        let mut eps = Vec::new();
        for i in 0..IPS {
            let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)), 0);
            let mut ep = quinn::Endpoint::client(src).unwrap();
            ep.set_default_client_config(client_config());
            eps.push(ep);
        }
        let tasks: Vec<_> = (0..CONNS)
            .map(|i| {
                let ep = eps[i % eps.len()].clone();
                let tuic = kind == "tuic";
                tokio::spawn(async move { attack(&ep, server, tuic).await })
            })
            .collect();
        let mut conns = Vec::new();
        for t in tasks {
            if let Ok(Some(c)) = t.await {
                conns.push(c);
            }
        }
        (eps, conns)
    });
    let setup = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let held = conns.1.iter().filter(|c| c.close_reason().is_none()).count();
    let during = rss_bytes(pid);
    let growth = during.saturating_sub(before);
    let during_attack = legit(kind, &v, &echo, 2);
    eprintln!(
        "{kind} pre-authentication flood: {} of {CONNS} connections up in {setup:?}, {held} held; data plane RSS {} -> {} KiB (+{} KiB, {} KiB per connection)",
        conns.1.len(),
        before / 1024,
        during / 1024,
        growth / 1024,
        growth / 1024 / CONNS as u64
    );
    // Every attacker connection is closed by the deadline (12 s from its start, plus slack).
    let deadline = started + Duration::from_secs(25);
    let open = rt.block_on(async {
        loop {
            let open = conns.1.iter().filter(|c| c.close_reason().is_none()).count();
            if open == 0 || Instant::now() > deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    drop(conns);
    drop(rt);
    if let Err(e) = during_attack {
        panic!(
            "a legitimate client failed during the attack: {e}\n{}",
            v.agent.log()
        );
    }
    assert_eq!(
        open, 0,
        "attacker connections still open after the handshake deadline"
    );
    assert!(
        growth < BOUND,
        "data plane RSS grew by {} KiB under {CONNS} unauthenticated connections (bound {} KiB)",
        growth / 1024,
        BOUND / 1024
    );
    // Only the legitimate transfers were counted.
    let mut expected = std::collections::BTreeMap::new();
    v2sp_testsupport::harness::expect(&mut expected, 1, 1, 2 * moved, 2 * moved);
    v.finish(&[], &expected);
    (held, growth)
}

#[test]
fn tuic_unauthenticated_flood_is_bounded() {
    let (held, _) = flood("tuic", 4096);
    assert_eq!(
        held, 96,
        "attacker connections closed early under the default caps"
    );
}

#[test]
fn hysteria2_unauthenticated_flood_is_bounded() {
    let (held, _) = flood("hysteria2", 4096);
    assert_eq!(
        held, 96,
        "attacker connections closed early under the default caps"
    );
}

/// With `MaxHandshakes: 64` a node keeps 8 unauthenticated QUIC connections per core: each
/// new one takes the place of the oldest, so the flood holds no more than 16 and the
/// legitimate client (checked inside `flood`) still gets in.
#[test]
fn unauthenticated_quic_connections_are_capped_and_the_oldest_go_first() {
    let (held, _) = flood("tuic", 64);
    assert!(
        held <= 16,
        "{held} unauthenticated connections held with room for 16"
    );
}
