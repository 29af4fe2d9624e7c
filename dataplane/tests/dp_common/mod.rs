//! Shared harness for the data-plane engine tests: an in-memory port, a trivial test protocol
//! and loopback peers. Every wait is bounded.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use v2sp_dataplane::node::{Engine, EngineOpts, InboundProtocol, ProtocolFactory, Shared};
use v2sp_dataplane::proto::{
    AuthContext, Destination, Next, RejectPolicy, Step, StreamCodec, StreamHandshake, WireError,
};
use v2sp_dataplane::stats::mem::{MemBackend, MemUser};
use v2sp_dataplane::stats::CorePort;
use v2sp_shared::cred::CredKind;
use v2sp_shared::dpconfig::{DataplaneConfig, NodeConfig, Protocol};
use v2sp_shared::shm::UserRef;

/// Test wire format: `[klen u8][key][port u16 BE][xor u8]` then payload. `xor != 0` selects a
/// codec that XORs payload both ways (exercises the codec path); `xor == 0` passes bytes
/// unchanged (splice path). Key `panic` panics inside the handshake.
pub struct TestProto;

struct TestHs {
    buf: Vec<u8>,
}

struct XorCodec(u8);

impl StreamCodec for XorCodec {
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        out.extend(wire.iter().map(|b| b ^ self.0));
        Ok(wire.len())
    }
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        out.extend(plain.iter().map(|b| b ^ self.0));
        Ok(())
    }
}

impl StreamHandshake for TestHs {
    fn feed(&mut self, data: &[u8], ctx: &dyn AuthContext) -> Result<Step, WireError> {
        self.buf.extend_from_slice(data);
        let Some(&klen) = self.buf.first() else {
            return Ok(Step::NeedMore(1));
        };
        let k = usize::from(klen);
        if self.buf.len() < 1 + k + 3 {
            return Ok(Step::NeedMore(0));
        }
        let key = self.buf[1..1 + k].to_vec();
        if key == b"panic" {
            panic!("test protocol asked to panic");
        }
        let port = u16::from_be_bytes([self.buf[1 + k], self.buf[2 + k]]);
        let xor = self.buf[3 + k];
        let Some(user) = ctx.lookup(&key) else {
            return Ok(Step::Done(Next::Reject {
                error: WireError::Auth("unknown"),
                policy: RejectPolicy::DrainUntilTimeout,
            }));
        };
        let rest: Vec<u8> = self.buf[4 + k..].iter().map(|b| b ^ xor).collect();
        Ok(Step::Done(Next::Forward {
            dest: Destination::Ip(SocketAddr::from(([127, 0, 0, 1], port))),
            user,
            initial_upload: rest,
            reply: Vec::new(),
            codec: if xor == 0 {
                None
            } else {
                Some(Box::new(XorCodec(xor)))
            },
        }))
    }
}

impl InboundProtocol for TestProto {
    fn new_handshake(&self) -> Box<dyn StreamHandshake> {
        Box::new(TestHs { buf: Vec::new() })
    }
}

pub fn factory() -> ProtocolFactory {
    Arc::new(|_n: &NodeConfig| Ok(Rc::new(TestProto) as Rc<dyn InboundProtocol>))
}

pub fn user(node: u16, id: u32, speed: u32, devices: u32) -> MemUser {
    let key = format!("user{id}").into_bytes();
    let mut secret = [0u8; 32];
    secret[..key.len()].copy_from_slice(&key);
    MemUser {
        key: key.clone(),
        user: UserRef {
            node,
            slot: id,
            user_id: id,
            gen: 1,
            secret,
            secret_len: key.len() as u8,
            speed_limit_mbps: speed,
            device_limit: devices,
        },
        alive_elsewhere: 0,
    }
}

/// A port for a node: from the suite's one allocator (never one the kernel hands to a
/// `bind(0)` socket or a connection).
pub fn free_port() -> u16 {
    v2sp_testsupport::ports::claim()
}

pub fn node(slot: u16, port: u16) -> NodeConfig {
    NodeConfig {
        slot,
        tag: format!("test-{slot}"),
        listen_ip: "127.0.0.1".into(),
        port,
        protocol: Protocol::Vless,
        cred_kind: CredKind::VlessUuid,
        speed_limit_mbps: 0,
        proxy_protocol: false,
        proxy_protocol_from: Vec::new(),
        trusted_proxies: Vec::new(),
        send_ip: String::new(),
        dns_strategy: String::new(),
        shadowsocks: None,
        transport: Default::default(),
        tls: None,
        fallbacks: Vec::new(),
        flow: String::new(),
        block_rules: Vec::new(),
        dns_routes: Vec::new(),
        route_rules: Vec::new(),
        outbounds: Vec::new(),
        padding_scheme: Vec::new(),
        hysteria2: None,
        tuic: None,
    }
}

pub struct Harness {
    pub backend: Arc<MemBackend>,
    pub engine: Option<Engine>,
    pub port: u16,
}

impl Harness {
    pub fn start(cfg: DataplaneConfig, splice: bool) -> Harness {
        Self::start_with(cfg, splice, Duration::from_secs(10))
    }
    pub fn start_with(cfg: DataplaneConfig, splice: bool, grace: Duration) -> Harness {
        Self::start_protocols(cfg, splice, grace, factory())
    }
    /// With the given protocols (e.g. `node::default_protocols()` for the real ones).
    pub fn start_protocols(
        cfg: DataplaneConfig,
        splice: bool,
        grace: Duration,
        protocols: ProtocolFactory,
    ) -> Harness {
        let backend = MemBackend::new();
        let b2 = backend.clone();
        let port = cfg.nodes.first().map_or(0, |n| n.port);
        let mut shared = Shared::new(protocols);
        Arc::get_mut(&mut shared).unwrap().splice = splice;
        let opts = EngineOpts {
            workers: 2,
            grace,
            tick: Duration::from_millis(50),
        };
        let engine = Engine::start(
            opts,
            Arc::new(move |core| Ok(Box::new(b2.port(core)) as Box<dyn CorePort>)),
            shared,
            Arc::new(cfg),
        )
        .unwrap();
        assert!(engine.wait_ready(Duration::from_secs(10)));
        eprintln!("backend: {} ({})", engine.backend, engine.backend_reason);
        Harness {
            backend,
            engine: Some(engine),
            port,
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.shutdown();
        }
    }
}

pub fn config(nodes: Vec<NodeConfig>) -> DataplaneConfig {
    DataplaneConfig {
        allow_private_destinations: true,
        nodes,
        ..Default::default()
    }
}

pub fn header(id: u32, dest_port: u16, xor: u8) -> Vec<u8> {
    let key = format!("user{id}").into_bytes();
    let mut h = vec![key.len() as u8];
    h.extend_from_slice(&key);
    h.extend_from_slice(&dest_port.to_be_bytes());
    h.push(xor);
    h
}

pub fn connect_from(src: IpAddr, port: u16) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(src, 0).into()).unwrap();
    s.connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)).into(),
        Duration::from_secs(5),
    )
    .unwrap();
    let t: TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    t
}

pub fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha(d: &[u8]) -> [u8; 32] {
    Sha256::digest(d).into()
}

/// Reads until EOF or error; returns the bytes and whether it ended with a clean EOF.
pub fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut v = Vec::new();
    let mut b = vec![0u8; 65536];
    for _ in 0..1_000_000 {
        match s.read(&mut b) {
            Ok(0) => return (v, true),
            Ok(n) => v.extend_from_slice(&b[..n]),
            Err(_) => return (v, false),
        }
    }
    (v, false)
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// A destination that reads everything until EOF (hashing it), then sends `reply` and closes.
/// Returns (sha of what it read, bytes read) through the join handle.
pub fn half_close_peer(reply: Vec<u8>) -> (u16, std::thread::JoinHandle<([u8; 32], usize)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (got, eof) = read_to_end(&mut s);
        assert!(eof, "destination must see the client's FIN");
        s.write_all(&reply).unwrap();
        drop(s);
        (sha(&got), got.len())
    });
    (port, h)
}

/// An echo destination (bounded to one connection per accept, `n` accepts).
pub fn echo_peer(n: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = l.accept() else { return };
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).ok();
                let mut b = vec![0u8; 65536];
                for _ in 0..100_000 {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => {
                            if s.write_all(&b[..k]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// Sends `msg` and expects it echoed back (true) or the connection closed (false).
pub fn echo_once(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).is_ok() && got == msg
}
