//! Xboard's node WebSocket channel (spec `xboard-node-api.md` §4), one blocking thread per
//! channel on tungstenite over a plain or rustls (aws-lc-rs, webpki roots) TCP stream.
//!
//! * URL: `ws_url?token=T&node_id=N` (node) or `ws_url?machine_id=M&token=T` (machine); the
//!   panel authenticates during the upgrade and answers `auth.success`, `sync.config`,
//!   `sync.users`, or `{"event":"error"}` and a close.
//! * Frames: text, `{"event": …, "data": {…}}`. `ping` is answered with `pong` at once; the
//!   rest is decoded here (PHP shapes tolerated, §8) and handed to the node worker as a
//!   [`WsEvent`]. Garbage frames are logged and skipped; they never end the channel.
//! * Liveness: the panel pings every 55 s but never drops a silent client, so this side sends
//!   a WebSocket ping after 30 s of silence and reconnects after [`DEAD_AFTER`] without any
//!   frame. Reconnects back off 1 s doubling to 60 s (jittered); a session that lasted 10 s
//!   resets the backoff.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};
use v2sp_shared::panel::{decode_node_list, MachineNode, PanelUser, UserList};

/// Reconnect when nothing at all came from the panel for this long (it pings every 55 s).
pub const DEAD_AFTER: Duration = Duration::from_secs(150);
/// Send our own WebSocket ping after this much silence.
const PING_AFTER: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often the channel thread looks at its outgoing queue and stop flag.
const POLL: Duration = Duration::from_millis(100);
/// Largest frame accepted (a `sync.users` of ~500k users).
const MAX_FRAME: usize = 64 << 20;

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsTarget {
    /// `ws://…` or `wss://…` from the handshake.
    pub url: String,
    pub token: String,
    pub node_id: u32,
    /// Machine mode: authenticate as the machine (all its nodes share the channel).
    pub machine_id: Option<u32>,
    pub send_ip: Option<IpAddr>,
    pub timeout: Duration,
    /// `ApiCAFile`: the only CAs trusted for `wss://`; `None` = web PKI roots.
    pub roots: Option<super::PanelRoots>,
}

/// What the panel pushed, decoded. `node_id` is set in machine mode (`data.node_id`).
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// Authenticated (`auth.success`): re-send the device snapshot, pull over REST.
    Connected,
    /// The channel is down (a reconnect follows on its own).
    Disconnected(String),
    /// `sync.config`: the §2.1 object without `base_config`.
    Config { node_id: Option<u32>, config: Value },
    /// `sync.users`: full replacement.
    Users {
        node_id: Option<u32>,
        users: Vec<PanelUser>,
    },
    /// `sync.user.delta`: `add` (an existing id is updated) or `remove`.
    UserDelta {
        node_id: Option<u32>,
        add: Vec<PanelUser>,
        remove: Vec<u32>,
    },
    /// `sync.devices`: every user's IPs across all nodes.
    Devices {
        node_id: Option<u32>,
        users: BTreeMap<u32, Vec<String>>,
    },
    /// `sync.nodes` (machine mode): the machine's node list.
    Nodes(Vec<MachineNode>),
}

impl WsEvent {
    pub fn node_id(&self) -> Option<u32> {
        match self {
            WsEvent::Config { node_id, .. }
            | WsEvent::Users { node_id, .. }
            | WsEvent::UserDelta { node_id, .. }
            | WsEvent::Devices { node_id, .. } => *node_id,
            _ => None,
        }
    }
}

/// The sending half, clonable: in machine mode each node's sender adds its `node_id`.
#[derive(Debug, Clone)]
pub struct WsOut {
    tx: Sender<String>,
    node_id: Option<u32>,
}

impl WsOut {
    /// A sender into `tx` (a machine forwards its nodes' messages to its current channel).
    pub fn new(tx: Sender<String>) -> WsOut {
        WsOut { tx, node_id: None }
    }

    /// Queue an already encoded message.
    pub fn send_raw(&self, text: String) {
        let _ = self.tx.send(text);
    }
    /// This sender with `data.node_id` added to every message (machine mode).
    pub fn for_node(&self, node_id: u32) -> WsOut {
        WsOut {
            tx: self.tx.clone(),
            node_id: Some(node_id),
        }
    }

    /// Queue `{"event": event, "data": data}`; dropped while the channel is down.
    pub fn send(&self, event: &str, mut data: Value) {
        if let (Some(id), Value::Object(m)) = (self.node_id, &mut data) {
            m.insert("node_id".into(), id.into());
        }
        let _ = self.tx.send(json!({"event": event, "data": data}).to_string());
    }
}

/// A running channel; stops (and joins its thread) when dropped.
pub struct WsChannel {
    pub events: Receiver<WsEvent>,
    pub out: WsOut,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsChannel")
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

impl WsChannel {
    pub fn start(target: WsTarget) -> io::Result<WsChannel> {
        let (ev_tx, events) = mpsc::channel();
        let (out_tx, out_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicBool::new(false));
        let (s, c) = (stop.clone(), connected.clone());
        let name = match target.machine_id {
            Some(m) => format!("ws-machine-{m}"),
            None => format!("ws-node-{}", target.node_id),
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(&target, &ev_tx, &out_rx, &s, &c))?;
        Ok(WsChannel {
            events,
            out: WsOut {
                tx: out_tx,
                node_id: None,
            },
            stop,
            connected,
            thread: Some(thread),
        })
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

impl Drop for WsChannel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    target: &WsTarget,
    events: &Sender<WsEvent>,
    out: &Receiver<String>,
    stop: &AtomicBool,
    connected: &AtomicBool,
) {
    let mut backoff = Duration::from_secs(1);
    while !stop.load(Ordering::Acquire) {
        let started = Instant::now();
        match connect(target) {
            Ok(mut ws) => {
                // Messages queued while the channel was down describe an old state.
                while out.try_recv().is_ok() {}
                let reason = session(&mut ws, events, out, stop, connected);
                connected.store(false, Ordering::Relaxed);
                let _ = ws.close(None);
                let _ = ws.flush();
                if stop.load(Ordering::Acquire) {
                    return;
                }
                tracing::warn!(node_id = target.node_id, machine_id = ?target.machine_id, %reason, "WebSocket channel lost; reconnecting (REST polling goes on)");
                if events.send(WsEvent::Disconnected(reason)).is_err() {
                    return;
                }
                if started.elapsed() >= Duration::from_secs(10) {
                    backoff = Duration::from_secs(1);
                }
            }
            Err(e) => {
                tracing::warn!(node_id = target.node_id, url = %target.url, error = %e, ?backoff, "WebSocket connect failed; retrying (REST polling goes on)");
            }
        }
        let ms = backoff.as_millis() as u64;
        let wait = Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)));
        let until = Instant::now() + wait;
        while Instant::now() < until && !stop.load(Ordering::Acquire) {
            std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connected session; returns why it ended.
fn session(
    ws: &mut WebSocket<Stream>,
    events: &Sender<WsEvent>,
    out: &Receiver<String>,
    stop: &AtomicBool,
    connected: &AtomicBool,
) -> String {
    let mut last_rx = Instant::now();
    let mut last_ping = Instant::now();
    loop {
        if stop.load(Ordering::Acquire) {
            return "stopping".into();
        }
        while let Ok(text) = out.try_recv() {
            if let Err(e) = ws.send(Message::text(text)) {
                return format!("send failed: {e}");
            }
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                last_rx = Instant::now();
                match decode_frame(t.as_str()) {
                    Frame::Ping => {
                        if let Err(e) = ws.send(Message::text(r#"{"event":"pong","data":{}}"#)) {
                            return format!("send failed: {e}");
                        }
                    }
                    Frame::Event(ev) => {
                        if ev == WsEvent::Connected {
                            connected.store(true, Ordering::Relaxed);
                            tracing::info!("WebSocket channel authenticated");
                        }
                        if events.send(ev).is_err() {
                            return "node worker gone".into();
                        }
                    }
                    Frame::Error(m) => {
                        tracing::error!(message = %m, "panel refused the WebSocket channel");
                    }
                    Frame::Ignored => {}
                    Frame::Bad(problem) => {
                        tracing::warn!(%problem, frame = %v2sp_shared::panel::snippet(t.as_str(), 200), "unusable WebSocket frame from the panel skipped");
                    }
                }
            }
            Ok(Message::Close(_)) => return "closed by the panel".into(),
            Ok(_) => last_rx = Instant::now(),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return e.to_string(),
        }
        if last_rx.elapsed() >= DEAD_AFTER {
            return format!("nothing from the panel for {} s", DEAD_AFTER.as_secs());
        }
        if last_rx.elapsed() >= PING_AFTER && last_ping.elapsed() >= PING_AFTER {
            last_ping = Instant::now();
            if let Err(e) = ws.send(Message::Ping(Vec::new().into())) {
                return format!("send failed: {e}");
            }
        }
    }
}

enum Frame {
    Ping,
    Event(WsEvent),
    Error(String),
    Ignored,
    Bad(String),
}

fn node_id_of(data: &Value) -> Option<u32> {
    let v = data.get("node_id")?;
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .and_then(|n| u32::try_from(n).ok())
}

/// A JSON list, or a PHP array with keys encoded as an object.
fn items(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(Value::Object(m)) => m.values().collect(),
        _ => Vec::new(),
    }
}

fn decode_frame(text: &str) -> Frame {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Frame::Bad(format!("not JSON: {e}")),
    };
    let Some(event) = v.get("event").and_then(Value::as_str) else {
        return Frame::Bad("no \"event\"".into());
    };
    let null = Value::Null;
    let data = v.get("data").unwrap_or(&null);
    let node_id = node_id_of(data);
    match event {
        "ping" => Frame::Ping,
        "auth.success" => Frame::Event(WsEvent::Connected),
        "error" => Frame::Error(
            data.get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_string(),
        ),
        "sync.config" => match data.get("config") {
            Some(c @ Value::Object(_)) => Frame::Event(WsEvent::Config {
                node_id,
                config: c.clone(),
            }),
            _ => Frame::Bad("sync.config without a config object".into()),
        },
        "sync.users" => {
            let list = json!({"users": items(data.get("users"))});
            match UserList::from_value(&list) {
                Ok(l) => Frame::Event(WsEvent::Users {
                    node_id,
                    users: l.users,
                }),
                Err(e) => Frame::Bad(e.to_string()),
            }
        }
        "sync.user.delta" => {
            let action = data.get("action").and_then(Value::as_str).unwrap_or_default();
            let users = items(data.get("users"));
            match action {
                "add" => match UserList::from_value(&json!({ "users": users })) {
                    Ok(l) => Frame::Event(WsEvent::UserDelta {
                        node_id,
                        add: l.users,
                        remove: Vec::new(),
                    }),
                    Err(e) => Frame::Bad(e.to_string()),
                },
                "remove" => {
                    let remove: Vec<u32> = users
                        .iter()
                        .filter_map(|u| {
                            let id = u.get("id").unwrap_or(u);
                            id.as_u64()
                                .or_else(|| id.as_str().and_then(|s| s.trim().parse().ok()))
                                .and_then(|n| u32::try_from(n).ok())
                        })
                        .collect();
                    Frame::Event(WsEvent::UserDelta {
                        node_id,
                        add: Vec::new(),
                        remove,
                    })
                }
                other => Frame::Bad(format!("sync.user.delta with unknown action {other:?}")),
            }
        }
        "sync.devices" => {
            let mut users = BTreeMap::new();
            if let Some(Value::Object(m)) = data.get("users") {
                for (k, ips) in m {
                    let Ok(uid) = k.trim().parse::<u32>() else {
                        continue;
                    };
                    let list: Vec<String> = items(Some(ips))
                        .into_iter()
                        .filter_map(|ip| ip.as_str().map(str::to_string))
                        .collect();
                    users.insert(uid, list);
                }
            }
            Frame::Event(WsEvent::Devices { node_id, users })
        }
        "sync.nodes" => match decode_node_list(data.get("nodes").unwrap_or(&null), "nodes") {
            Ok(n) => Frame::Event(WsEvent::Nodes(n)),
            Err(e) => Frame::Bad(e.to_string()),
        },
        _ => Frame::Ignored,
    }
}

/// A plain or TLS TCP stream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// The URL with the auth query (spec §4.2).
pub fn auth_url(t: &WsTarget) -> String {
    let sep = if t.url.contains('?') { '&' } else { '?' };
    let token = encode(&t.token);
    match t.machine_id {
        Some(m) => format!("{}{sep}machine_id={m}&token={token}", t.url),
        None => format!("{}{sep}token={token}&node_id={}", t.url, t.node_id),
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn connect(t: &WsTarget) -> Result<WebSocket<Stream>, String> {
    let url = auth_url(t);
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else {
        return Err(format!("ws_url {:?} is not a ws:// or wss:// URL", t.url));
    };
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let (host, port) = split_host_port(authority, if tls { 443 } else { 80 })?;
    let addr: SocketAddr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let timeout = if t.timeout.is_zero() {
        Duration::from_secs(5)
    } else {
        t.timeout
    };
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    if let Some(ip) = t.send_ip {
        sock.bind(&SocketAddr::new(ip, 0).into())
            .map_err(|e| format!("ApiSendIP {ip}: {e}"))?;
    }
    sock.connect_timeout(&addr.into(), timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let tcp: TcpStream = sock.into();
    let _ = tcp.set_nodelay(true);
    // The upgrade itself runs with the full timeout; the session polls.
    tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let stream = if tls {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &t.roots {
            Some(certs) => {
                let (_, bad) = roots.add_parsable_certificates(certs.iter().cloned());
                if roots.is_empty() {
                    return Err(format!("none of ApiCAFile's {bad} certificates is a usable CA"));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("bad TLS server name {host}: {e}"))?;
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
        Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
    } else {
        Stream::Plain(tcp)
    };
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (ws, resp) = tungstenite::client::client_with_config(url.as_str(), stream, Some(config))
        .map_err(|e| format!("WebSocket upgrade: {e}"))?;
    tracing::debug!(status = resp.status().as_u16(), "WebSocket upgraded");
    let tcp = match ws.get_ref() {
        Stream::Plain(s) => s,
        Stream::Tls(s) => s.get_ref(),
    };
    tcp.set_read_timeout(Some(POLL)).map_err(|e| e.to_string())?;
    Ok(ws)
}

fn split_host_port(authority: &str, default: u16) -> Result<(String, u16), String> {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("bad host {authority:?}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port in {authority:?}"))?,
            None => default,
        };
        return Ok((h.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.to_string(),
            p.parse().map_err(|_| format!("bad port in {authority:?}"))?,
        )),
        None if authority.is_empty() => Err("ws_url has no host".into()),
        None => Ok((authority.to_string(), default)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ev(s: &str) -> WsEvent {
        match decode_frame(s) {
            Frame::Event(e) => e,
            _ => panic!("not an event: {s}"),
        }
    }

    #[test]
    fn frames_with_php_shapes() {
        assert!(matches!(decode_frame(r#"{"event":"ping"}"#), Frame::Ping));
        assert_eq!(
            ev(r#"{"event":"auth.success","data":{"node_id":1}}"#),
            WsEvent::Connected
        );
        match ev(r#"{"event":"sync.users","data":{"users":[]}}"#) {
            WsEvent::Users { users, node_id } => assert!(users.is_empty() && node_id.is_none()),
            other => panic!("{other:?}"),
        }
        match ev(
            r#"{"event":"sync.user.delta","data":{"action":"remove","users":{"0":{"id":"7"}},"node_id":3}}"#,
        ) {
            WsEvent::UserDelta { remove, node_id, .. } => {
                assert_eq!(remove, vec![7]);
                assert_eq!(node_id, Some(3));
            }
            other => panic!("{other:?}"),
        }
        match ev(r#"{"event":"sync.devices","data":{"users":{"5":{"0":"1.1.1.1","2":"2.2.2.2"},"6":[]}}}"#) {
            WsEvent::Devices { users, .. } => {
                assert_eq!(users[&5], vec!["1.1.1.1".to_string(), "2.2.2.2".to_string()]);
                assert!(users[&6].is_empty());
            }
            other => panic!("{other:?}"),
        }
        match ev(r#"{"event":"sync.nodes","data":{"nodes":[]}}"#) {
            WsEvent::Nodes(n) => assert!(n.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode_frame("<html>"), Frame::Bad(_)));
        assert!(matches!(
            decode_frame(r#"{"event":"sync.config","data":[]}"#),
            Frame::Bad(_)
        ));
        assert!(matches!(
            decode_frame(r#"{"event":"control.reload"}"#),
            Frame::Ignored
        ));
    }

    #[test]
    fn auth_query() {
        let mut t = WsTarget {
            url: "ws://127.0.0.1:9/ws".into(),
            token: "a b".into(),
            node_id: 4,
            machine_id: None,
            send_ip: None,
            timeout: Duration::from_secs(1),
            roots: None,
        };
        assert_eq!(auth_url(&t), "ws://127.0.0.1:9/ws?token=a%20b&node_id=4");
        t.machine_id = Some(2);
        assert_eq!(auth_url(&t), "ws://127.0.0.1:9/ws?machine_id=2&token=a%20b");
        assert_eq!(split_host_port("[::1]:80", 1).unwrap(), ("::1".into(), 80));
        assert_eq!(split_host_port("h", 443).unwrap(), ("h".into(), 443));
    }
}
