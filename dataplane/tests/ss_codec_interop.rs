//! Interop: the real `sslocal` (shadowsocks-rust) against a tiny blocking test server that uses
//! only v2sp's Shadowsocks codecs (handshake → connect → relay through the codec), for every
//! method, TCP: a few MiB echoed through and compared by SHA-256; UDP: datagrams echoed
//! through a SOCKS5 UDP association (SS-2022 sessions, replies keyed by the user PSK).
//!
//! Peer: /opt/v2sp-peers/bin/sslocal, installed by scripts/install-test-deps.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use v2sp_dataplane::limits::replay::ReplayFilter;
use v2sp_dataplane::proto::ss::{Method, SsInbound};
use v2sp_dataplane::proto::{AuthContext, Destination, Next, PacketSession, Step, StreamCodec};
use v2sp_shared::cred::{lookup_key, secret_for};
use v2sp_shared::shm::UserRef;

const SSLOCAL: &str = "/opt/v2sp-peers/bin/sslocal";
const UUIDS: [&str; 3] = [
    "0d7a1a49-0d1c-4b8a-9d8e-5e3f2a1b0c9d",
    "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37",
    "12345678-9abc-4def-8123-456789abcdef",
];
const TRANSFER: usize = 4 << 20;
const DEADLINE: Duration = Duration::from_secs(60);

fn sslocal_path() -> &'static str {
    if !std::path::Path::new(SSLOCAL).exists() {
        panic!(
            "{SSLOCAL} is missing: run scripts/install-test-deps.sh (installs shadowsocks-rust's sslocal)"
        );
    }
    SSLOCAL
}

struct Ctx {
    users: Vec<UserRef>,
    index: HashMap<Vec<u8>, UserRef>,
    replay: ReplayFilter,
}

impl Ctx {
    fn new(m: Method) -> Self {
        let kind = m.cred_kind();
        let mut users = Vec::new();
        let mut index = HashMap::new();
        for (i, u) in UUIDS.iter().enumerate() {
            let s = secret_for(kind, u).unwrap();
            let r = UserRef {
                node: 1,
                slot: i as u32,
                user_id: 10 + i as u32,
                gen: 1,
                secret: s.bytes,
                secret_len: s.len,
                speed_limit_mbps: 0,
                device_limit: 0,
            };
            if let Some(k) = lookup_key(kind, s.as_slice()) {
                index.insert(k.as_slice().to_vec(), r);
            }
            users.push(r);
        }
        Ctx {
            users,
            index,
            replay: ReplayFilter::new(60, 1 << 16),
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl AuthContext for Ctx {
    fn lookup(&self, key: &[u8]) -> Option<UserRef> {
        self.index.get(key).copied()
    }
    fn for_each_user(&self, f: &mut dyn FnMut(&UserRef) -> bool) {
        for u in &self.users {
            if !f(u) {
                break;
            }
        }
    }
    fn check_replay(&self, nonce: &[u8]) -> bool {
        self.replay.check_and_insert(nonce, now())
    }
    fn now_unix(&self) -> u64 {
        now()
    }
}

/// Echo target: returns every byte it reads.
fn spawn_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// One proxied connection through the codecs under test.
fn serve_one(mut client: TcpStream, inbound: SsInbound, ctx: Arc<Ctx>, user_seen: Arc<Mutex<Vec<u32>>>) {
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut hs = inbound.handshake();
    let mut buf = vec![0u8; 64 * 1024];
    let next = loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match hs.feed(&buf[..n], ctx.as_ref()).unwrap() {
            Step::NeedMore(_) => continue,
            Step::Done(next) => break next,
        }
    };
    let Next::Forward {
        dest,
        user,
        initial_upload,
        reply,
        codec,
    } = next
    else {
        // Reject: drain until the client gives up (what the real server does).
        while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
        return;
    };
    user_seen.lock().unwrap().push(user.user_id);
    let Destination::Ip(target) = dest else {
        panic!("test targets are IPs")
    };
    let mut up = TcpStream::connect(target).unwrap();
    up.write_all(&initial_upload).unwrap();
    client.write_all(&reply).unwrap();
    let codec: Arc<Mutex<Box<dyn StreamCodec>>> = Arc::new(Mutex::new(codec.unwrap()));
    // target → client
    let (mut up_r, mut cl_w, c2) = (
        up.try_clone().unwrap(),
        client.try_clone().unwrap(),
        Arc::clone(&codec),
    );
    let down = thread::spawn(move || {
        let mut b = vec![0u8; 32 * 1024];
        let mut out = Vec::new();
        loop {
            let n = match up_r.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            out.clear();
            c2.lock().unwrap().seal(&b[..n], &mut out).unwrap();
            if cl_w.write_all(&out).is_err() {
                break;
            }
        }
        let _ = cl_w.shutdown(Shutdown::Write);
    });
    // client → target
    let mut pending: Vec<u8> = Vec::new();
    let mut plain = Vec::new();
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        plain.clear();
        let used = codec.lock().unwrap().open(&pending, &mut plain).unwrap();
        pending.drain(..used);
        up.write_all(&plain).unwrap();
    }
    let _ = up.shutdown(Shutdown::Write);
    let _ = down.join();
}

fn spawn_server(inbound: SsInbound, ctx: Arc<Ctx>, seen: Arc<Mutex<Vec<u32>>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (ctx, seen) = (Arc::clone(&ctx), Arc::clone(&seen));
            thread::spawn(move || serve_one(s, inbound, ctx, seen));
        }
    });
    addr
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start sslocal on a free port and wait until it listens. A port picked by `free_port` can
/// be taken by a test running in parallel before sslocal binds it: then sslocal exits, and we
/// try again on another port. (Once, on a busy machine, the port answered but the greeting was
/// reset: whatever listened was not sslocal, so the listener is now checked to speak SOCKS5.)
fn spawn_sslocal(bin: &str, extra: &[&str], server: &str, method: &str, password: &str) -> (Kill, u16) {
    for _ in 0..5 {
        let local = free_port();
        let mut child = Kill(
            Command::new(bin)
                .args(extra)
                .args([
                    "-b",
                    &format!("127.0.0.1:{local}"),
                    "-s",
                    server,
                    "-m",
                    method,
                    "-k",
                    password,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(probe) = TcpStream::connect(("127.0.0.1", local)) {
                // Something listens; make sure it is this sslocal (a SOCKS5 server) and not a
                // process that took the port first (then this sslocal failed to bind): a
                // greeting answered with "no authentication" says so.
                if socks_greets(probe) && matches!(child.0.try_wait(), Ok(None)) {
                    return (child, local);
                }
                break;
            }
            if matches!(child.0.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("sslocal never started listening (5 ports tried)");
}

fn socks_greets(mut s: TcpStream) -> bool {
    let mut r = [0u8; 2];
    s.set_read_timeout(Some(Duration::from_secs(5))).is_ok()
        && s.write_all(&[5, 1, 0]).is_ok()
        && s.read_exact(&mut r).is_ok()
        && r == [5, 0]
}

fn free_port() -> u16 {
    v2sp_testsupport::ports::claim()
}

/// SOCKS5 CONNECT through sslocal.
fn socks_connect(local: u16, target: SocketAddr) -> TcpStream {
    let start = Instant::now();
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", local)) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(10) => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("sslocal did not listen on {local}: {e}"),
        }
    };
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut r = [0u8; 2];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r, [5, 0]);
    let SocketAddr::V4(t) = target else {
        panic!("v4 only")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&t.ip().octets());
    req.extend_from_slice(&t.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(rep[1], 0, "SOCKS5 connect failed");
    s
}

fn run_method(m: Method) {
    let bin = sslocal_path();
    let b64 = base64::engine::general_purpose::STANDARD;
    let psk: Vec<u8> = (0..m.aead().key_len() as u8)
        .map(|i| i.wrapping_mul(13).wrapping_add(5))
        .collect();
    let eih = m.is_2022() && m != Method::Blake3ChaCha20Poly1305;
    let inbound = SsInbound::new(m, eih.then_some(&psk[..])).unwrap();
    let user = 1;
    let password = if m.is_2022() {
        let upsk = b64.encode(secret_for(m.cred_kind(), UUIDS[user]).unwrap().as_slice());
        if eih {
            format!("{}:{upsk}", b64.encode(&psk))
        } else {
            upsk
        }
    } else {
        UUIDS[user].to_string()
    };
    let ctx = Arc::new(Ctx::new(m));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = spawn_server(inbound, ctx, Arc::clone(&seen));
    let echo = spawn_echo();
    let (_child, local) = spawn_sslocal(bin, &[], &server.to_string(), m.name(), &password);
    let s = socks_connect(local, echo);
    let data: Vec<u8> = (0..TRANSFER)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = Sha256::digest(&data);
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        for piece in data.chunks(50_000) {
            w.write_all(piece).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut r = s;
    let mut got = Vec::with_capacity(TRANSFER);
    r.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got.len(), TRANSFER, "{}: echoed length", m.name());
    assert_eq!(Sha256::digest(&got), want, "{}: echoed bytes differ", m.name());
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[10 + user as u32],
        "{}: user",
        m.name()
    );
}

#[test]
fn sslocal_aes_128_gcm() {
    run_method(Method::Aes128Gcm);
}
#[test]
fn sslocal_aes_256_gcm() {
    run_method(Method::Aes256Gcm);
}
#[test]
fn sslocal_chacha20_ietf_poly1305() {
    run_method(Method::ChaCha20Poly1305);
}
#[test]
fn sslocal_2022_blake3_aes_128_gcm_eih() {
    run_method(Method::Blake3Aes128Gcm);
}
#[test]
fn sslocal_2022_blake3_aes_256_gcm_eih() {
    run_method(Method::Blake3Aes256Gcm);
}
#[test]
fn sslocal_2022_blake3_chacha20_poly1305() {
    run_method(Method::Blake3ChaCha20Poly1305);
}

/// UDP test server: open each datagram, keep one session (and one upstream socket) per
/// `(user, session id)`, forward to the target, seal the target's reply.
fn spawn_udp_server(inbound: SsInbound, ctx: Arc<Ctx>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let codec = inbound.udp_codec().unwrap();
    thread::spawn(move || {
        let mut sessions: HashMap<(u32, u64), (Box<dyn PacketSession>, UdpSocket)> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        let mut back = vec![0u8; 65536];
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            let Ok(pkt) = codec.open_packet(&mut buf[..n], None, ctx.as_ref()) else {
                continue;
            };
            let key = (pkt.user.user_id, pkt.session_id);
            let (session, up) = match sessions.entry(key) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => {
                    let up = UdpSocket::bind("127.0.0.1:0").unwrap();
                    up.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    v.insert((codec.new_session(&pkt).unwrap(), up))
                }
            };
            if !session.accept(&pkt) {
                continue;
            }
            let Destination::Ip(target) = pkt.dest.clone() else {
                continue;
            };
            up.send_to(&buf[pkt.payload.clone()], target).unwrap();
            let Ok((m, src)) = up.recv_from(&mut back) else {
                continue;
            };
            let mut out = Vec::new();
            session.seal(&Destination::Ip(src), &back[..m], &mut out).unwrap();
            sock.send_to(&out, from).unwrap();
        }
    });
    addr
}

fn spawn_udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    thread::spawn(move || {
        let mut b = vec![0u8; 65536];
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            let Ok((n, from)) = s.recv_from(&mut b) else { break };
            let _ = s.send_to(&b[..n], from);
        }
    });
    addr
}

fn run_udp(m: Method) {
    let bin = sslocal_path();
    let b64 = base64::engine::general_purpose::STANDARD;
    let psk: Vec<u8> = (0..m.aead().key_len() as u8)
        .map(|i| i.wrapping_mul(13).wrapping_add(5))
        .collect();
    let eih = m.is_2022() && m != Method::Blake3ChaCha20Poly1305;
    let inbound = SsInbound::new(m, eih.then_some(&psk[..])).unwrap();
    let user = 2;
    let password = if m.is_2022() {
        let upsk = b64.encode(secret_for(m.cred_kind(), UUIDS[user]).unwrap().as_slice());
        if eih {
            format!("{}:{upsk}", b64.encode(&psk))
        } else {
            upsk
        }
    } else {
        UUIDS[user].to_string()
    };
    let ctx = Arc::new(Ctx::new(m));
    let server = spawn_udp_server(inbound, ctx);
    let echo = spawn_udp_echo();
    let (_child, local) = spawn_sslocal(bin, &["-U"], &server.to_string(), m.name(), &password);
    let mut ctl = TcpStream::connect(("127.0.0.1", local)).unwrap();
    ctl.set_read_timeout(Some(DEADLINE)).unwrap();
    ctl.write_all(&[5, 1, 0]).unwrap();
    let mut r = [0u8; 2];
    ctl.read_exact(&mut r).unwrap();
    ctl.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap();
    let mut rep = [0u8; 10];
    ctl.read_exact(&mut rep).unwrap();
    assert_eq!(rep[1], 0, "UDP associate failed");
    let relay = SocketAddr::from((
        [rep[4], rep[5], rep[6], rep[7]],
        u16::from_be_bytes([rep[8], rep[9]]),
    ));
    let relay = if relay.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], relay.port()))
    } else {
        relay
    };
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let SocketAddr::V4(e) = echo else { panic!("v4") };
    let mut sent = Sha256::new();
    let mut got = Sha256::new();
    let mut echoed = 0;
    for i in 0..20usize {
        let data: Vec<u8> = (0..(100 + 60 * i)).map(|j| (i * 31 + j) as u8).collect();
        let mut dg = vec![0, 0, 0, 1];
        dg.extend_from_slice(&e.ip().octets());
        dg.extend_from_slice(&e.port().to_be_bytes());
        dg.extend_from_slice(&data);
        // UDP may drop on a busy box: retry a few times, bounded.
        for _ in 0..5 {
            sock.send_to(&dg, relay).unwrap();
            let mut b = vec![0u8; 65536];
            if let Ok(n) = sock.recv(&mut b) {
                assert!(n >= 10, "short SOCKS5 UDP reply");
                assert_eq!(&b[4..10], &dg[4..10], "reply names the echo target as its source");
                got.update(&b[10..n]);
                sent.update(&data);
                echoed += 1;
                break;
            }
        }
    }
    assert_eq!(echoed, 20, "{}: datagrams echoed", m.name());
    assert_eq!(
        got.finalize(),
        sent.finalize(),
        "{}: echoed datagrams differ",
        m.name()
    );
}

#[test]
fn sslocal_udp_aes_128_gcm() {
    run_udp(Method::Aes128Gcm);
}
#[test]
fn sslocal_udp_chacha20_ietf_poly1305() {
    run_udp(Method::ChaCha20Poly1305);
}
#[test]
fn sslocal_udp_2022_blake3_aes_128_gcm_eih() {
    run_udp(Method::Blake3Aes128Gcm);
}
#[test]
fn sslocal_udp_2022_blake3_aes_256_gcm_eih() {
    run_udp(Method::Blake3Aes256Gcm);
}
#[test]
fn sslocal_udp_2022_blake3_chacha20_poly1305() {
    run_udp(Method::Blake3ChaCha20Poly1305);
}
