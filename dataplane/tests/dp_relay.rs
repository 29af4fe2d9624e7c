//! Engine tests over loopback: exact relay (copy, splice, codec), half-close, counting,
//! timeouts, private-destination refusal, device admission, user removal, kick, panics,
//! config reload. Run under both backends: `V2SP_IO=epoll` and `V2SP_IO=uring`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod dp_common;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dp_common::*;
use v2sp_dataplane::stats::PortCommand;

const UP: usize = 6 * 1024 * 1024 + 123;
const DOWN: usize = 5 * 1024 * 1024 + 77;

fn exact_relay(splice: bool, xor: u8) {
    let port = free_port();
    let h = Harness::start(config(vec![node(3, port)]), splice);
    h.backend.set_users(3, vec![user(3, 42, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150)); // one tick
    let up = data(UP, 1);
    let down = data(DOWN, 2);
    let (dport, peer) = half_close_peer(down.clone());
    let mut c = connect_from("127.0.0.1".parse().unwrap(), port);
    let mut first = header(42, dport, xor);
    // a little payload rides with the header (initial_upload)
    first.extend(up[..1000].iter().map(|b| b ^ xor));
    c.write_all(&first).unwrap();
    let wire: Vec<u8> = up[1000..].iter().map(|b| b ^ xor).collect();
    let writer = {
        let mut c2 = c.try_clone().unwrap();
        std::thread::spawn(move || {
            c2.write_all(&wire).unwrap();
            c2.shutdown(Shutdown::Write).unwrap(); // half-close: downlink must continue
        })
    };
    let (got, eof) = read_to_end(&mut c);
    writer.join().unwrap();
    assert!(eof);
    let got: Vec<u8> = got.iter().map(|b| b ^ xor).collect();
    let (up_sha, up_len) = peer.join().unwrap();
    assert_eq!(up_len, UP);
    assert_eq!(up_sha, sha(&up));
    assert_eq!(got.len(), DOWN);
    assert_eq!(sha(&got), sha(&down));
    assert!(
        wait_until(Duration::from_secs(3), || h.backend.traffic(3, 42)
            == (UP as u64, DOWN as u64)),
        "counted {:?}",
        h.backend.traffic(3, 42)
    );
}

#[test]
fn dp_relay_exact_splice_path_with_half_close() {
    exact_relay(true, 0);
}

#[test]
fn dp_relay_exact_copy_path_with_half_close() {
    exact_relay(false, 0);
}

#[test]
fn dp_relay_exact_codec_path_with_half_close() {
    exact_relay(true, 0x5A);
}

#[test]
fn dp_private_destination_refused_unless_allowed() {
    let port = free_port();
    let mut cfg = config(vec![node(1, port)]);
    cfg.allow_private_destinations = false;
    let h = Harness::start(cfg, true);
    h.backend.set_users(1, vec![user(1, 7, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let dport = l.local_addr().unwrap().port();
    let mut c = connect_from("127.0.0.1".parse().unwrap(), port);
    c.write_all(&header(7, dport, 0)).unwrap();
    c.write_all(b"hello").unwrap();
    let (_, _) = read_to_end(&mut c); // closed by the data plane
    assert!(
        l.accept().is_err(),
        "no connection may reach a loopback destination"
    );
}

#[test]
fn dp_device_admission_exact_across_cores() {
    let port = free_port();
    let h = Harness::start(config(vec![node(2, port)]), true);
    h.backend.set_users(2, vec![user(2, 9, 0, 2)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = echo_peer(16);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut keep = Vec::new();
    // several connections from .2 and .3 (spread over both cores by SO_REUSEPORT)
    for src in ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"] {
        let mut c = connect_from(ip(src), port);
        c.write_all(&header(9, echo, 0)).unwrap();
        assert!(echo_once(&mut c, b"ping"), "{src} must be admitted");
        keep.push(c);
    }
    for _ in 0..3 {
        let mut c = connect_from(ip("127.0.0.4"), port);
        c.write_all(&header(9, echo, 0)).unwrap();
        assert!(!echo_once(&mut c, b"ping"), "third IP must be refused");
    }
    let ev = h.backend.events();
    assert_eq!(ev.iter().filter(|(_, e)| e.online).count(), 2, "{ev:?}");
    // closing all of .2's connections frees a device slot
    let c3 = keep.remove(3);
    keep.remove(1);
    drop(c3);
    let _ = keep.remove(0);
    let _ = keep.remove(0);
    assert!(wait_until(Duration::from_secs(3), || h
        .backend
        .events()
        .iter()
        .filter(|(_, e)| !e.online)
        .count()
        == 2));
    let mut c = connect_from(ip("127.0.0.4"), port);
    c.write_all(&header(9, echo, 0)).unwrap();
    assert!(echo_once(&mut c, b"ping"), ".4 admitted once the others left");
}

/// The control plane's resync request (it lost events, or restarted): core 0 answers for the
/// whole process with every online IP between two markers; the other cores stay quiet.
#[test]
fn dp_resync_lists_every_online_ip_once() {
    use v2sp_dataplane::limits::devices::IpEventKind;
    let port = free_port();
    let h = Harness::start(config(vec![node(2, port)]), true);
    h.backend.set_users(2, vec![user(2, 9, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = echo_peer(8);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut keep = Vec::new();
    for src in ["127.0.0.2", "127.0.0.3", "127.0.0.2"] {
        let mut c = connect_from(ip(src), port);
        c.write_all(&header(9, echo, 0)).unwrap();
        assert!(echo_once(&mut c, b"ping"));
        keep.push(c);
    }
    let onlines: Vec<_> = h.backend.events().into_iter().map(|(_, e)| e).collect();
    for core in 0..2 {
        h.backend.send_command(core, PortCommand::ResyncIps);
    }
    assert!(wait_until(Duration::from_secs(3), || h
        .backend
        .events()
        .iter()
        .any(|(_, e)| e.kind == IpEventKind::ResyncEnd)));
    std::thread::sleep(Duration::from_millis(300)); // a second answer would have come by now
    let resync: Vec<_> = h
        .backend
        .events()
        .into_iter()
        .filter(|(_, e)| e.kind != IpEventKind::Transition)
        .collect();
    assert_eq!(resync.len(), 4, "{resync:?}");
    assert!(resync.iter().all(|(core, _)| *core == 0));
    assert_eq!(resync[0].1.kind, IpEventKind::ResyncBegin);
    assert_eq!(resync[3].1.kind, IpEventKind::ResyncEnd);
    let mut listed: Vec<_> = resync[1..3].iter().map(|(_, e)| (e.ip, e.seq)).collect();
    let mut want: Vec<_> = onlines.iter().map(|e| (e.ip, e.seq)).collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want, "the snapshot carries each IP's last transition");
    assert!(resync[0].1.seq > want.iter().map(|w| w.1).max().unwrap());
}

#[test]
fn dp_user_removal_and_kick_close_connections() {
    let port = free_port();
    let h = Harness::start(config(vec![node(4, port)]), true);
    h.backend.set_users(4, vec![user(4, 1, 0, 0), user(4, 2, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = echo_peer(8);
    let lo = "127.0.0.1".parse().unwrap();
    let mut a = connect_from(lo, port);
    a.write_all(&header(1, echo, 0)).unwrap();
    assert!(echo_once(&mut a, b"a"));
    let mut b = connect_from(lo, port);
    b.write_all(&header(2, echo, 0)).unwrap();
    assert!(echo_once(&mut b, b"b"));
    let t = Instant::now();
    h.backend.set_users(4, vec![user(4, 2, 0, 0)]);
    let (_, _) = read_to_end(&mut a);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "removed user closed within a tick or two"
    );
    assert!(echo_once(&mut b, b"still here"));
    for core in 0..2 {
        h.backend
            .send_command(core, PortCommand::Kick { node: 4, user_id: 2 });
    }
    let (_, _) = read_to_end(&mut b);
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[test]
fn dp_timeouts_handshake_and_idle() {
    let port = free_port();
    let mut cfg = config(vec![node(5, port)]);
    cfg.timeouts.handshake = 1;
    cfg.timeouts.conn_idle = 1;
    let h = Harness::start(cfg, true);
    h.backend.set_users(5, vec![user(5, 3, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let lo = "127.0.0.1".parse().unwrap();
    // silent client: closed by the handshake timeout
    let t = Instant::now();
    let mut c = connect_from(lo, port);
    let (_, _) = read_to_end(&mut c);
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(900) && e < Duration::from_secs(5),
        "{e:?}"
    );
    // unknown user: drained, then closed by the handshake timeout (no distinctive reply)
    let t = Instant::now();
    let mut c = connect_from(lo, port);
    c.write_all(&header(99, 1, 0)).unwrap();
    let (got, _) = read_to_end(&mut c);
    assert!(got.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(900));
    // idle relay: closed after ~1 s without traffic
    let echo = echo_peer(2);
    let mut c = connect_from(lo, port);
    c.write_all(&header(3, echo, 0)).unwrap();
    assert!(echo_once(&mut c, b"x"));
    let t = Instant::now();
    let (_, _) = read_to_end(&mut c);
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(800) && e < Duration::from_secs(5),
        "{e:?}"
    );
}

#[test]
fn dp_uplink_only_timeout_after_downlink_closed() {
    // destination closes right away; the client keeps its side open and silent:
    // the relay must close after uplink_only (1 s), not conn_idle (300 s).
    let port = free_port();
    let mut cfg = config(vec![node(6, port)]);
    cfg.timeouts.uplink_only = 1;
    let h = Harness::start(cfg, true);
    h.backend.set_users(6, vec![user(6, 3, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dport = l.local_addr().unwrap().port();
    let closer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"bye").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_secs(4));
    });
    let mut c = connect_from("127.0.0.1".parse().unwrap(), port);
    c.write_all(&header(3, dport, 0)).unwrap();
    let mut b = [0u8; 3];
    c.read_exact(&mut b).unwrap();
    let t = Instant::now();
    let mut rest = [0u8; 16];
    assert_eq!(c.read(&mut rest).unwrap(), 0, "FIN forwarded to the client");
    // stay silent (writes would count as uplink activity), then probe: the relay must have
    // closed our connection after ~uplink_only, so writes soon fail with a reset
    std::thread::sleep(Duration::from_millis(1600));
    let closed = wait_until(Duration::from_secs(1), || c.write_all(b"z").is_err());
    assert!(
        closed,
        "relay must end within uplink_only after the downlink closed"
    );
    assert!(t.elapsed() < Duration::from_secs(4));
    closer.join().unwrap();
}

#[test]
fn dp_panic_in_connection_keeps_core_serving() {
    let port = free_port();
    let h = Harness::start(config(vec![node(7, port)]), true);
    h.backend.set_users(7, vec![user(7, 1, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = echo_peer(4);
    let lo = "127.0.0.1".parse().unwrap();
    for _ in 0..4 {
        let mut c = connect_from(lo, port);
        let mut hdr = vec![5u8];
        hdr.extend_from_slice(b"panic");
        hdr.extend_from_slice(&[0, 1, 0]);
        c.write_all(&hdr).unwrap();
        let (_, _) = read_to_end(&mut c);
    }
    let mut c = connect_from(lo, port);
    c.write_all(&header(1, echo, 0)).unwrap();
    assert!(echo_once(&mut c, b"alive"));
}

#[test]
fn dp_config_reload_adds_and_removes_nodes_without_touching_others() {
    let p1 = free_port();
    let p2 = free_port();
    let h = Harness::start(config(vec![node(1, p1)]), true);
    h.backend.set_users(1, vec![user(1, 1, 0, 0)]);
    h.backend.set_users(2, vec![user(2, 1, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = echo_peer(8);
    let lo = "127.0.0.1".parse().unwrap();
    let mut a = connect_from(lo, p1);
    a.write_all(&header(1, echo, 0)).unwrap();
    assert!(echo_once(&mut a, b"one"));
    let engine = h.engine.as_ref().unwrap();
    engine.update_config(Arc::new(config(vec![node(1, p1), node(2, p2)])));
    assert!(wait_until(Duration::from_secs(3), || {
        std::net::TcpStream::connect(("127.0.0.1", p2)).is_ok()
    }));
    let mut b = connect_from(lo, p2);
    b.write_all(&header(1, echo, 0)).unwrap();
    assert!(echo_once(&mut b, b"two"));
    assert!(echo_once(&mut a, b"one still open"));
    engine.update_config(Arc::new(config(vec![node(2, p2)])));
    let (_, _) = read_to_end(&mut a); // node 1 removed: its connection closes
    assert!(echo_once(&mut b, b"two unaffected"));
    assert!(wait_until(Duration::from_secs(3), || {
        std::net::TcpStream::connect(("127.0.0.1", p1)).is_err()
    }));
}

#[test]
fn dp_proxy_protocol_source_is_used_for_devices() {
    let port = free_port();
    let mut n = node(8, port);
    n.proxy_protocol = true;
    let h = Harness::start(config(vec![n]), true);
    h.backend.set_users(8, vec![user(8, 5, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = echo_peer(2);
    let mut c = connect_from("127.0.0.1".parse().unwrap(), port);
    let mut first = b"PROXY TCP4 203.0.113.9 127.0.0.1 4444 80\r\n".to_vec();
    first.extend(header(5, echo, 0));
    c.write_all(&first).unwrap();
    assert!(echo_once(&mut c, b"pp"));
    let ev = h.backend.events();
    assert!(
        ev.iter()
            .any(|(_, e)| e.online && e.ip == "203.0.113.9".parse::<IpAddr>().unwrap()),
        "{ev:?}"
    );
}

#[test]
fn dp_shutdown_drains_open_connections() {
    let port = free_port();
    let h = Harness::start_with(config(vec![node(9, port)]), true, Duration::from_secs(2));
    h.backend.set_users(9, vec![user(9, 1, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = echo_peer(2);
    let mut c = connect_from("127.0.0.1".parse().unwrap(), port);
    c.write_all(&header(1, echo, 0)).unwrap();
    assert!(echo_once(&mut c, b"before"));
    let mut h = h;
    let engine = h.engine.take().unwrap();
    let t = Instant::now();
    let j = std::thread::spawn(move || engine.shutdown());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        echo_once(&mut c, b"during grace"),
        "open connections keep working during the grace period"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer accepting"
    );
    j.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    let (_, _) = read_to_end(&mut c);
}

#[test]
fn dp_speed_limit_engages_on_both_paths() {
    // 1 Mbps = 125 000 B/s with a 1 s burst: 400 000 bytes up + down from the same budget
    // cannot finish in much under (800 000 - 125 000) / 125 000 = 5.4 s. Lower bound only.
    for splice in [true, false] {
        let port = free_port();
        let h = Harness::start(config(vec![node(11, port)]), splice);
        h.backend.set_users(11, vec![user(11, 5, 1, 0)]);
        std::thread::sleep(Duration::from_millis(150));
        let echo = echo_peer(1);
        let mut c = connect_from("127.0.0.1".parse().unwrap(), port);
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(&header(5, echo, 0)).unwrap();
        let msg = data(400_000, 3);
        let t = Instant::now();
        let w = {
            let mut c2 = c.try_clone().unwrap();
            let m = msg.clone();
            std::thread::spawn(move || c2.write_all(&m).unwrap())
        };
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap();
        w.join().unwrap();
        let e = t.elapsed();
        assert_eq!(sha(&got), sha(&msg));
        assert!(
            e >= Duration::from_secs(4),
            "splice={splice}: limited transfer took only {e:?}"
        );
        assert!(wait_until(Duration::from_secs(3), || h.backend.traffic(11, 5)
            == (400_000, 400_000)));
    }
}

/// A node whose settings change (here its speed limit, then its port) keeps its open
/// connections; new ones get the new settings (the Go agents re-create the inbound and drop
/// every user). Only removing the node closes them.
/// Two nodes on one port: without a guard both listeners would bind (SO_REUSEPORT) and the
/// kernel would split the connections between them. The node of the lower slot keeps the port.
#[test]
fn dp_second_node_on_a_taken_port_is_not_served() {
    let p = free_port();
    let h = Harness::start(config(vec![node(1, p), node(2, p)]), true);
    h.backend.set_users(1, vec![user(1, 1, 0, 0)]);
    h.backend.set_users(2, vec![user(2, 2, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = echo_peer(24);
    let lo = "127.0.0.1".parse().unwrap();
    for i in 0..24 {
        let mut c = connect_from(lo, p);
        c.write_all(&header(1, echo, 0)).unwrap();
        assert!(
            echo_once(&mut c, b"node 1 only"),
            "connection {i} did not reach node 1"
        );
    }
}

#[test]
fn dp_changed_node_keeps_open_connections() {
    let (p1, p2) = (free_port(), free_port());
    let h = Harness::start(config(vec![node(1, p1)]), true);
    h.backend.set_users(1, vec![user(1, 1, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = echo_peer(8);
    let lo = "127.0.0.1".parse().unwrap();
    let mut a = connect_from(lo, p1);
    a.write_all(&header(1, echo, 0)).unwrap();
    assert!(echo_once(&mut a, b"before"));
    let engine = h.engine.as_ref().unwrap();
    let mut changed = node(1, p1);
    changed.speed_limit_mbps = 100;
    engine.update_config(Arc::new(config(vec![changed.clone()])));
    std::thread::sleep(Duration::from_millis(300));
    assert!(echo_once(&mut a, b"same port, new settings"));
    let mut b = connect_from(lo, p1);
    b.write_all(&header(1, echo, 0)).unwrap();
    assert!(echo_once(&mut b, b"new connection, same listener"));
    changed.port = p2;
    engine.update_config(Arc::new(config(vec![changed])));
    assert!(wait_until(Duration::from_secs(3), || {
        std::net::TcpStream::connect(("127.0.0.1", p2)).is_ok()
    }));
    assert!(echo_once(&mut a, b"port moved"));
    assert!(echo_once(&mut b, b"port moved too"));
    let mut c = connect_from(lo, p2);
    c.write_all(&header(1, echo, 0)).unwrap();
    assert!(echo_once(&mut c, b"on the new port"));
    assert!(wait_until(Duration::from_secs(3), || {
        std::net::TcpStream::connect(("127.0.0.1", p1)).is_err()
    }));
    // New settings that cannot be served (the port is taken by another program) change
    // nothing: the node goes on where it was.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut bad = node(1, taken.local_addr().unwrap().port());
    bad.speed_limit_mbps = 100;
    engine.update_config(Arc::new(config(vec![bad])));
    std::thread::sleep(Duration::from_millis(300));
    assert!(echo_once(&mut c, b"still served"));
    let mut d = connect_from(lo, p2);
    d.write_all(&header(1, echo, 0)).unwrap();
    assert!(echo_once(&mut d, b"old port still accepts"));
    engine.update_config(Arc::new(config(vec![])));
    let (_, _) = read_to_end(&mut a); // removed: its connections close
    let (_, _) = read_to_end(&mut c);
}

/// Connections that never finish their handshake (a flood, slowloris) are capped per source
/// address and per worker: beyond the cap a new connection is closed at once, and the budget
/// comes back when those connections end.
#[test]
fn dp_handshake_cap_per_source_address() {
    let port = free_port();
    let mut cfg = config(vec![node(1, port)]);
    cfg.handshake_limits = v2sp_shared::dpconfig::HandshakeLimits {
        per_worker: 0,
        per_ip: 3,
    };
    let h = Harness::start(cfg, true);
    h.backend.set_users(1, vec![user(1, 1, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    // 20 silent connections; the harness runs 2 workers, so at most 2 × 3 may wait.
    let silent: Vec<std::net::TcpStream> = (0..20).map(|_| connect_from(lo, port)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut closed = 0;
    for mut s in silent.iter() {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => closed += 1,
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                closed += 1
            }
            _ => {}
        }
    }
    assert!((14..=20).contains(&closed), "{closed} of 20 closed at once");
    drop(silent);
    // The places come back: a real client gets through.
    let echo = echo_peer(1);
    assert!(wait_until(Duration::from_secs(3), || {
        let mut c = connect_from(lo, port);
        c.write_all(&header(1, echo, 0)).is_ok() && echo_once(&mut c, b"after the flood")
    }));
}

/// How many of `conns` the data plane has closed (a non-blocking read sees EOF or a reset).
fn closed_at_once(conns: &[std::net::TcpStream]) -> usize {
    let mut closed = 0;
    for mut s in conns.iter() {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => closed += 1,
            _ => {}
        }
        s.set_nonblocking(false).unwrap();
    }
    closed
}

/// Issue 11: behind a balancer the per-IP handshake cap counts the client the PROXY header
/// names, not the balancer (which would otherwise be refused after 3 pending handshakes).
#[test]
fn dp_handshake_cap_counts_the_client_behind_the_balancer() {
    let port = free_port();
    let mut n = node(1, port);
    n.proxy_protocol = true;
    n.proxy_protocol_from = vec!["127.0.0.1/32".into()];
    let mut cfg = config(vec![n]);
    cfg.handshake_limits = v2sp_shared::dpconfig::HandshakeLimits {
        per_worker: 0,
        per_ip: 3,
    };
    // Long enough that no pending handshake ends by its deadline during the test.
    cfg.timeouts.handshake = 30;
    let _h = Harness::start(cfg, true);
    std::thread::sleep(Duration::from_millis(150));
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let pending = |client: &dyn Fn(usize) -> String| -> Vec<std::net::TcpStream> {
        (0..20)
            .map(|i| {
                let mut s = connect_from(lo, port);
                let head = format!("PROXY TCP4 {} 127.0.0.1 4444 80\r\n", client(i));
                s.write_all(head.as_bytes()).unwrap();
                s
            })
            .collect()
    };
    // 20 clients behind the balancer, one pending handshake each: all wait.
    let distinct = pending(&|i| format!("203.0.113.{}", i + 1));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        closed_at_once(&distinct),
        0,
        "distinct clients behind one balancer"
    );
    drop(distinct);
    // 20 pending handshakes of one client behind the balancer: that client is capped.
    let same = pending(&|_| "198.51.100.7".into());
    std::thread::sleep(Duration::from_millis(300));
    let closed = closed_at_once(&same);
    assert!((14..=20).contains(&closed), "{closed} of 20 closed at once");
}

/// Issue 11: a PROXY header is honoured only from the configured balancers; anyone else is a
/// direct client whose PROXY header is just bad protocol bytes.
#[test]
fn dp_proxy_header_only_from_configured_balancers() {
    let port = free_port();
    let mut n = node(8, port);
    n.proxy_protocol = true;
    n.proxy_protocol_from = vec!["127.0.0.2/32".into()];
    let h = Harness::start(config(vec![n]), true);
    h.backend.set_users(8, vec![user(8, 5, 0, 0)]);
    std::thread::sleep(Duration::from_millis(150));
    let echo = echo_peer(3);
    let spoof = |from: &str, claimed: &str| {
        let mut c = connect_from(from.parse().unwrap(), port);
        let mut first = format!("PROXY TCP4 {claimed} 127.0.0.1 4444 80\r\n").into_bytes();
        first.extend(header(5, echo, 0));
        c.write_all(&first).unwrap();
        c
    };
    // The balancer: its header is used.
    let mut c = spoof("127.0.0.2", "203.0.113.9");
    assert!(echo_once(&mut c, b"pp"));
    // Not a balancer: the header is not taken as one (and the connection is not served).
    let mut c = spoof("127.0.0.3", "203.0.113.66");
    assert!(!echo_once(&mut c, b"spoofed"));
    // Not a balancer, no header: a direct client.
    let mut c = connect_from("127.0.0.4".parse().unwrap(), port);
    c.write_all(&header(5, echo, 0)).unwrap();
    assert!(echo_once(&mut c, b"direct"));
    let ev = h.backend.events();
    let online = |ip: &str| {
        ev.iter()
            .any(|(_, e)| e.online && e.ip == ip.parse::<IpAddr>().unwrap())
    };
    assert!(online("203.0.113.9"), "{ev:?}");
    assert!(online("127.0.0.4"), "{ev:?}");
    assert!(!online("203.0.113.66"), "{ev:?}");
}
