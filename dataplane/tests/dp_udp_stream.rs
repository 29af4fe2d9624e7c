//! UDP over the stream through the engine with the real Trojan and VLESS codecs (plaintext
//! listeners, so the test drives the wire by hand): datagrams reach a UDP echo and come back
//! framed, exact per-user counting of payload only, device admission, and a removed or
//! kicked user's association closed within a tick or two. Run under both backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod dp_common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use dp_common::*;
use sha2::{Digest, Sha224};
use v2sp_dataplane::stats::mem::MemUser;
use v2sp_dataplane::stats::PortCommand;
use v2sp_shared::cred::CredKind;
use v2sp_shared::dpconfig::Protocol;
use v2sp_shared::shm::UserRef;

fn trojan_user(node: u16, id: u32, devices: u32) -> MemUser {
    let pw = format!("password-{id}");
    let key = Sha224::digest(pw.as_bytes()).to_vec();
    let mut secret = [0u8; 32];
    secret[..28].copy_from_slice(&key);
    MemUser {
        key,
        user: UserRef {
            node,
            slot: id,
            user_id: id,
            gen: 1,
            secret,
            secret_len: 28,
            speed_limit_mbps: 0,
            device_limit: devices,
        },
        alive_elsewhere: 0,
    }
}

fn udp_echo() -> u16 {
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = u.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut b = vec![0u8; 65536];
        while let Ok((n, from)) = u.recv_from(&mut b) {
            let _ = u.send_to(&b[..n], from);
        }
    });
    port
}

fn associate(id: u32) -> Vec<u8> {
    let mut w = hex::encode(Sha224::digest(format!("password-{id}").as_bytes())).into_bytes();
    w.extend_from_slice(b"\r\n\x03\x01\x00\x00\x00\x00\x00\x00\r\n");
    w
}

fn packet(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![1, 127, 0, 0, 1];
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(b"\r\n");
    p.extend_from_slice(payload);
    p
}

/// Sends one datagram through the association and reads its echo (framed with the echo's
/// address); false if the connection closed instead.
fn roundtrip(c: &mut TcpStream, echo: u16, payload: &[u8]) -> bool {
    if c.write_all(&packet(echo, payload)).is_err() {
        return false;
    }
    let mut want = packet(echo, payload);
    let mut got = vec![0u8; want.len()];
    if c.read_exact(&mut got).is_err() {
        return false;
    }
    want.truncate(want.len());
    assert_eq!(got, want, "reply framed with the source address");
    true
}

fn trojan_node(slot: u16, port: u16) -> v2sp_shared::dpconfig::NodeConfig {
    let mut n = node(slot, port);
    n.protocol = Protocol::Trojan;
    n.cred_kind = CredKind::TrojanSha224;
    n
}

#[test]
fn dp_trojan_udp_counts_admits_and_closes_on_removal_and_kick() {
    let port = free_port();
    let h = Harness::start_protocols(
        config(vec![trojan_node(6, port)]),
        true,
        Duration::from_secs(10),
        v2sp_dataplane::node::default_protocols(),
    );
    h.backend
        .set_users(6, vec![trojan_user(6, 1, 1), trojan_user(6, 2, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = udp_echo();
    let lo = "127.0.0.1".parse().unwrap();
    // User 1: header and first packet in one write, then more; split packets too.
    let mut a = connect_from(lo, port);
    let mut first = associate(1);
    first.extend_from_slice(&packet(echo, b"hello"));
    a.write_all(&first).unwrap();
    let mut got = vec![0u8; packet(echo, b"hello").len()];
    a.read_exact(&mut got).unwrap();
    assert_eq!(got, packet(echo, b"hello"));
    let big = data(4000, 3);
    let p = packet(echo, &big);
    a.write_all(&p[..7]).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    a.write_all(&p[7..]).unwrap();
    let mut got = vec![0u8; p.len()];
    a.read_exact(&mut got).unwrap();
    assert_eq!(got, p);
    assert!(roundtrip(&mut a, echo, b""));
    let sent = 5 + 4000;
    assert!(
        wait_until(Duration::from_secs(3), || h.backend.traffic(6, 1) == (sent, sent)),
        "payload bytes only: {:?}",
        h.backend.traffic(6, 1)
    );
    // Device limit 1: a second IP for user 1 is refused while the first is online.
    let mut other = connect_from("127.0.0.2".parse().unwrap(), port);
    other.write_all(&associate(1)).unwrap();
    assert!(!roundtrip(&mut other, echo, b"x"), "second device refused");
    // User 2 (no limit) from the other IP.
    let mut b = connect_from("127.0.0.2".parse().unwrap(), port);
    b.write_all(&associate(2)).unwrap();
    assert!(roundtrip(&mut b, echo, b"b"));
    // Removal closes user 1's association; user 2's stays.
    let t = Instant::now();
    h.backend.set_users(6, vec![trojan_user(6, 2, 0)]);
    let _ = read_to_end(&mut a);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "removed user closed within a tick or two"
    );
    assert!(roundtrip(&mut b, echo, b"still here"));
    for core in 0..2 {
        h.backend
            .send_command(core, PortCommand::Kick { node: 6, user_id: 2 });
    }
    let _ = read_to_end(&mut b);
    assert!(t.elapsed() < Duration::from_secs(4));
    assert_eq!(h.backend.traffic(6, 2), (11, 11));
}

#[test]
fn dp_trojan_udp_idle_timeout_and_speed_limit_drops() {
    let port = free_port();
    let mut cfg = config(vec![trojan_node(7, port)]);
    cfg.timeouts.conn_idle = 1;
    let h = Harness::start_protocols(
        cfg,
        true,
        Duration::from_secs(10),
        v2sp_dataplane::node::default_protocols(),
    );
    let mut slow = trojan_user(7, 1, 0);
    slow.user.speed_limit_mbps = 1; // 125 000 bytes/s
    h.backend.set_users(7, vec![slow]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = udp_echo();
    let mut a = connect_from("127.0.0.1".parse().unwrap(), port);
    a.write_all(&associate(1)).unwrap();
    assert!(roundtrip(&mut a, echo, b"x"));
    // A burst far over the limit: datagrams over it are dropped, never queued, and what was
    // counted is what went through.
    let big = data(60_000, 9);
    for _ in 0..20 {
        a.write_all(&packet(echo, &big)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let (up, _) = h.backend.traffic(7, 1);
    assert!(up <= 1 + 4 * 60_000, "over the limit datagrams dropped: {up}");
    // Idle: closed about 1 s after the last datagram.
    let t = Instant::now();
    let (got, _) = read_to_end(&mut a);
    let e = t.elapsed();
    assert!(e < Duration::from_secs(5), "{e:?}");
    // Whatever replies arrived were counted as download (payload only).
    let replies = got.len() / packet(echo, &big).len();
    assert_eq!(got.len() % packet(echo, &big).len(), 0, "whole replies only");
    let (_, down) = h.backend.traffic(7, 1);
    assert_eq!(
        down,
        1 + (replies * 60_000) as u64,
        "down {down}, {replies} replies read"
    );
}

/// Issue 11: a client that never reads its replies blocks the association's writes; a kick
/// must still close it (and release its upstream sockets) within a tick or two, instead of
/// the write waiting forever where the cancellation is not seen.
#[test]
fn dp_udp_stream_non_reading_client_is_still_kicked() {
    let port = free_port();
    let h = Harness::start_protocols(
        config(vec![trojan_node(9, port)]),
        true,
        Duration::from_secs(10),
        v2sp_dataplane::node::default_protocols(),
    );
    h.backend.set_users(9, vec![trojan_user(9, 1, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = udp_echo();
    let ip: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(&std::net::SocketAddr::new(ip, 0).into()).unwrap();
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut a: TcpStream = sock.into();
    a.write_all(&associate(1)).unwrap();
    assert!(roundtrip(&mut a, echo, b"x"));
    // Echoes of these fill every buffer between the data plane and this client, which does
    // not read: the data plane's write to it blocks (and then its reads of us stop too).
    a.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
    let p = packet(echo, &data(16_000, 5));
    let t = Instant::now();
    for _ in 0..2000 {
        if a.write_all(&p).is_err() || t.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let offline = |h: &Harness| {
        h.backend
            .events()
            .iter()
            .any(|(_, e)| !e.online && e.ip == ip && e.user_id == 1)
    };
    assert!(!offline(&h), "still open before the kick");
    for core in 0..2 {
        h.backend
            .send_command(core, PortCommand::Kick { node: 9, user_id: 1 });
    }
    assert!(
        wait_until(Duration::from_secs(3), || offline(&h)),
        "a kicked association whose client does not read was not closed"
    );
    drop(a);
}
