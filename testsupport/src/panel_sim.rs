//! A panel simulator: both API dialects, ETag/304, exactly-once push bookkeeping and fault
//! injection, on 127.0.0.1 in one background thread.
//!
//! It is also a small reference for panel authors — what v2sp expects from a panel:
//!
//! * **Single endpoint** (v2sp's own dialect): `GET <path>?action=config|user|alivelist` and
//!   `POST <path>?action=push|alive`, query `node_id`, `token`, optional `node_type`.
//! * **UniProxy** (stock Xboard/v2board): `GET|POST /api/v1/server/UniProxy/<action>` with the
//!   same query parameters.
//! * `config` and `user` answer with an `ETag` (the quoted sha256 of the body) and with
//!   `304 Not Modified` when the request's `If-None-Match` contains it.
//! * `push` bodies are `{"<uid>":[up,down]}`. A push carrying `X-V2sp-Report-Id` that was
//!   already applied is answered `200` and **not added again** — this is what makes traffic
//!   accounting exactly-once when the agent retries a batch whose answer it never saw.
//! * Errors are `4xx/5xx` with `{"message": "…"}`.
//! * **Xboard v2** (with [`SimOptions::v2`]; spec `xboard-node-api.md` §3–4): every action
//!   under `/api/v2/server/<action>` (`report`, `handshake`, `status`, `machine/nodes` too),
//!   server-token or machine auth (`machine_id` + the machine's token), the WebSocket channel
//!   on `GET /ws` (auth in the query, `auth.success` + `sync.config` + `sync.users` on
//!   connect, a newer connection replacing the older one), pushes by [`PanelSim::ws_send`],
//!   and fault injection: [`PanelSim::set_ws_refuse`], [`PanelSim::ws_drop`], raw frames.
//!   A v2 POST whose `Content-Type` is not JSON has its body ignored, as Laravel does.
//!
//! ```no_run
//! use v2sp_testsupport::panel_sim::{Fault, PanelSim, SimOptions, user};
//! use v2sp_shared::panel::Action;
//!
//! let sim = PanelSim::start(SimOptions::default()).unwrap();
//! sim.set_node(26, serde_json::json!({"node_type": "vless", "server_port": 443}));
//! sim.set_users(26, vec![user(1, "2b4f9e9c-1b5e-4d1c-9d6a-1f0c6b7a8e01")]);
//! let api_host = sim.single_url(); // "http://127.0.0.1:PORT/api/v2sp"
//! sim.set_fault(Action::Push, Fault::AcceptThenDropReply); // the "answer lost" case
//! // … drive the agent, then:
//! let totals = sim.totals(26);
//! # let _ = (api_host, totals);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use v2sp_shared::panel::{
    decode_alive, decode_push, Action, AliveBody, PushBody, Report, REPORT_ID_HEADER, UNIPROXY_PATH,
};

/// Largest request head / body the simulator reads.
const MAX_HEAD: usize = 64 << 10;
const MAX_BODY: usize = 16 << 20;
/// A client that stalls longer than this mid-request is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the simulator does to requests of one action.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Answer this status with `{"message":"injected fault"}` (pushes are not applied).
    Status(u16),
    /// Answer 200 with an HTML page (a push *is* applied first, like a PHP warning page).
    Html,
    /// Answer 200 with bytes that are not JSON (a push *is* applied first).
    Garbage,
    /// Wait this long, then handle the request normally (a push is applied after the wait).
    Slow(Duration),
    /// Read the request, then reset the connection without answering or applying anything.
    Reset,
    /// Server-wide while set on any action: the listener is closed, connections are refused.
    Outage,
    /// Apply the push, then reset the connection without answering: the "answer lost" case.
    AcceptThenDropReply,
    /// Answer exactly this (status, `Content-Type`, body). `apply`: whether the request is
    /// handled first (a panel that recorded a push, then a 500/502 from it or from the gateway
    /// in front) or not at all (a CDN or captive proxy answering HTML 200 on its own).
    Answer {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
        apply: bool,
    },
}

impl Fault {
    /// A CDN's own page: status 200, HTML, the panel never saw the request.
    pub fn cdn_html_200() -> Fault {
        Fault::Answer {
            status: 200,
            content_type: "text/html",
            body: b"<!DOCTYPE html><html><body>Checking your browser...</body></html>".to_vec(),
            apply: false,
        }
    }

    /// The panel recorded the request, then `status` came back (a 500 from the panel, a 502
    /// from a gateway that gave up waiting for it) with an HTML error page.
    pub fn status_after_apply(status: u16) -> Fault {
        Fault::Answer {
            status,
            content_type: "text/html",
            body: format!("<html><body><h1>{status}</h1></body></html>").into_bytes(),
            apply: true,
        }
    }

    /// Status 200 with an empty body; `apply`: whether the panel recorded the request.
    pub fn empty_200(apply: bool) -> Fault {
        Fault::Answer {
            status: 200,
            content_type: "application/json",
            body: Vec::new(),
            apply,
        }
    }

    /// The panel's own JSON refusal (not applied).
    pub fn json_refusal(status: u16, message: &str) -> Fault {
        Fault::Answer {
            status,
            content_type: "application/json",
            body: json!({"status": "fail", "message": message})
                .to_string()
                .into_bytes(),
            apply: false,
        }
    }
}

/// Simulator behaviour fixed at start.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Expected `token`; others get 403.
    pub token: String,
    /// Path of the single endpoint (`None`: this panel does not speak it, like stock Xboard).
    pub single_path: Option<String>,
    /// Whether `/api/v1/server/UniProxy/<action>` is served.
    pub uniproxy: bool,
    /// Send ETags and honour If-None-Match (switchable later with [`PanelSim::set_etag`]).
    pub etag: bool,
    /// Serve Xboard's `/api/v2/server/*` and the WebSocket channel on `/ws`.
    pub v2: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            token: "test-token".into(),
            single_path: Some("/api/v2sp".into()),
            uniproxy: true,
            etag: true,
            v2: false,
        }
    }
}

/// Which dialect a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimDialect {
    Single,
    UniProxy,
    /// `/api/v2/server/<action>`.
    V2,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Decoded query parameters in order of appearance.
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub action: Option<Action>,
    pub dialect: Option<SimDialect>,
    /// Status answered, `None` when no answer was sent (reset faults).
    pub status: Option<u16>,
    /// The client's address (shows the agent's `ApiSendIP`).
    pub peer: Option<SocketAddr>,
}

impl RecordedRequest {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A push the simulator accepted (applied or recognised as a duplicate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedPush {
    pub node_id: u32,
    pub report_id: Option<String>,
    pub body: PushBody,
    /// The report id had been applied before: answered 200, not added again.
    pub duplicate: bool,
}

#[derive(Debug, Clone, Default)]
struct FaultPlan {
    fault: Fault,
    /// Hits left before reverting to `Fault::None`; `None` = until changed.
    remaining: Option<u32>,
}

#[derive(Debug, Default)]
struct State {
    nodes: BTreeMap<u32, Value>,
    users: BTreeMap<u32, Vec<Value>>,
    alive_counts: BTreeMap<u32, u32>,
    etag: bool,
    faults: BTreeMap<Action, FaultPlan>,
    requests: Vec<RecordedRequest>,
    pushes: Vec<AcceptedPush>,
    report_ids: BTreeSet<(u32, String)>,
    totals: BTreeMap<u32, BTreeMap<u32, (u64, u64)>>,
    alive_reports: BTreeMap<u32, Vec<AliveBody>>,
    /// node → user → this node's IPs (replaced per reported user, as Xboard does).
    online: BTreeMap<u32, BTreeMap<u32, Vec<String>>>,
    /// machine id → (token, node ids bound to it).
    machines: BTreeMap<u32, (String, Vec<u32>)>,
    /// Whether the handshake offers the WebSocket channel.
    ws_enabled: bool,
    /// Upgrades answered 503 while set.
    ws_refuse: bool,
    ws_conns: Vec<WsConn>,
    /// Authenticated WebSocket connections so far.
    ws_accepted: u32,
    /// Agent → panel WebSocket messages, in order (`pong` included).
    ws_received: Vec<Value>,
    /// Last `status` (v1) or `report.status` per node.
    status: BTreeMap<u32, Value>,
    /// Last `report.metrics` per node.
    metrics: BTreeMap<u32, Value>,
    /// Last v2 `report.online` per node (open connections per user), as Xboard caches it.
    online_conns: BTreeMap<u32, BTreeMap<u32, u32>>,
    /// Last `machine/status` per machine.
    machine_status: BTreeMap<u32, Value>,
}

/// One live WebSocket connection of the simulator.
#[derive(Debug)]
struct WsConn {
    /// The nodes it serves (one, or a machine's).
    nodes: Vec<u32>,
    machine: Option<u32>,
    tx: std::sync::mpsc::Sender<String>,
    closed: Arc<AtomicBool>,
}

impl State {
    /// A machine's nodes as `machine/nodes` and `sync.nodes` list them.
    fn machine_node_list(&self, nodes: &[u32]) -> Vec<Value> {
        nodes
            .iter()
            .map(|id| {
                let ty = self
                    .nodes
                    .get(id)
                    .and_then(|n| n.get("node_type").or_else(|| n.get("protocol")))
                    .cloned()
                    .unwrap_or(Value::Null);
                json!({"id": id, "type": ty, "name": format!("node-{id}")})
            })
            .collect()
    }

    fn outage(&self) -> bool {
        self.faults.values().any(|p| p.fault == Fault::Outage)
    }

    /// The fault for one hit of `action`, consuming a counted plan.
    fn take_fault(&mut self, action: Action) -> Fault {
        let Some(plan) = self.faults.get_mut(&action) else {
            return Fault::None;
        };
        let fault = plan.fault.clone();
        if let Some(n) = plan.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.faults.remove(&action);
            }
        }
        fault
    }
}

struct Shared {
    opts: SimOptions,
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not wedge the simulator for the others.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running simulator. Stops (and joins its thread) when dropped.
pub struct PanelSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PanelSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanelSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl PanelSim {
    /// Bind 127.0.0.1:0 and serve in a background thread.
    pub fn start(opts: SimOptions) -> io::Result<PanelSim> {
        Self::start_on(
            "127.0.0.1:0"
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            opts,
        )
    }

    /// Serve on `addr` (for the `v2sp-panel-sim` binary).
    pub fn start_on(addr: SocketAddr, opts: SimOptions) -> io::Result<PanelSim> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                etag: opts.etag,
                ws_enabled: true,
                ..State::default()
            }),
            opts,
            stop: AtomicBool::new(false),
        });
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("panel-sim".into())
            .spawn(move || serve(listener, addr, &s2))?;
        Ok(PanelSim {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` — a bare host (auto-detect probes it).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// ApiHost for the single-endpoint dialect (`http://127.0.0.1:PORT<single_path>`).
    pub fn single_url(&self) -> String {
        let path = self.shared.opts.single_path.as_deref().unwrap_or("/");
        format!("http://{}{}", self.addr, path)
    }

    /// ApiHost for the UniProxy dialect as stock-panel users write it (bare host).
    pub fn uniproxy_url(&self) -> String {
        self.base_url()
    }

    /// `ws://127.0.0.1:PORT/ws`, the URL the handshake gives.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Create (or rebind) a machine: its token and the nodes bound to it, in `sort` order.
    pub fn set_machine(&self, machine_id: u32, token: &str, nodes: Vec<u32>) {
        let mut st = self.shared.lock();
        st.machines.insert(machine_id, (token.to_string(), nodes.clone()));
        // `sync.nodes` is always published to the machine's socket.
        let list = st.machine_node_list(&nodes);
        let frame = json!({"event": "sync.nodes", "data": {"nodes": list}, "timestamp": 0}).to_string();
        for c in st.ws_conns.iter().filter(|c| c.machine == Some(machine_id)) {
            let _ = c.tx.send(frame.clone());
        }
    }

    /// Whether the handshake offers the WebSocket channel (default: yes).
    pub fn set_ws_enabled(&self, on: bool) {
        self.shared.lock().ws_enabled = on;
    }

    /// Fault: answer WebSocket upgrades with 503 while set.
    pub fn set_ws_refuse(&self, on: bool) {
        self.shared.lock().ws_refuse = on;
    }

    /// Push `{"event":event,"data":data}` to the connection serving `node_id` (in machine
    /// mode `data.node_id` is added, as the panel does). Returns how many got it.
    pub fn ws_send(&self, node_id: u32, event: &str, data: Value) -> usize {
        let st = self.shared.lock();
        let mut n = 0;
        for c in st.ws_conns.iter().filter(|c| c.nodes.contains(&node_id)) {
            let mut data = data.clone();
            if let (Some(_), Value::Object(m)) = (c.machine, &mut data) {
                m.insert("node_id".into(), node_id.into());
            }
            let frame = json!({"event": event, "data": data, "timestamp": 0}).to_string();
            if c.tx.send(frame).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Fault: send these bytes as a text frame to the connection serving `node_id`.
    pub fn ws_send_raw(&self, node_id: u32, text: &str) {
        let st = self.shared.lock();
        for c in st.ws_conns.iter().filter(|c| c.nodes.contains(&node_id)) {
            let _ = c.tx.send(text.to_string());
        }
    }

    /// Fault: close every WebSocket connection (as a panel restart does).
    pub fn ws_drop(&self) {
        let mut st = self.shared.lock();
        for c in st.ws_conns.drain(..) {
            c.closed.store(true, Ordering::SeqCst);
        }
    }

    /// Live WebSocket connections.
    pub fn ws_live(&self) -> usize {
        let mut st = self.shared.lock();
        st.ws_conns.retain(|c| !c.closed.load(Ordering::SeqCst));
        st.ws_conns.len()
    }

    /// Authenticated WebSocket connections so far.
    pub fn ws_accepted(&self) -> u32 {
        self.shared.lock().ws_accepted
    }

    /// Agent → panel WebSocket messages so far.
    pub fn ws_received(&self) -> Vec<Value> {
        self.shared.lock().ws_received.clone()
    }

    /// Last status object (v1 `status` or v2 `report.status`) of a node.
    pub fn status_of(&self, node_id: u32) -> Option<Value> {
        self.shared.lock().status.get(&node_id).cloned()
    }

    /// Last `machine/status` of a machine.
    pub fn machine_status(&self, machine_id: u32) -> Option<Value> {
        self.shared.lock().machine_status.get(&machine_id).cloned()
    }

    /// Last v2 `report.online` of a node: user id → open connections.
    pub fn online_conns_of(&self, node_id: u32) -> Option<BTreeMap<u32, u32>> {
        self.shared.lock().online_conns.get(&node_id).cloned()
    }

    /// Last `report.metrics` of a node.
    pub fn metrics_of(&self, node_id: u32) -> Option<Value> {
        self.shared.lock().metrics.get(&node_id).cloned()
    }

    pub fn token(&self) -> &str {
        &self.shared.opts.token
    }

    pub fn set_node(&self, node_id: u32, config: Value) {
        self.shared.lock().nodes.insert(node_id, config);
    }

    pub fn remove_node(&self, node_id: u32) {
        self.shared.lock().nodes.remove(&node_id);
    }

    /// The users of a node, as JSON objects (anything goes, to test quirks).
    pub fn set_users(&self, node_id: u32, users: Vec<Value>) {
        self.shared.lock().users.insert(node_id, users);
    }

    /// Panel-wide online IP counts returned by `alivelist`.
    pub fn set_alive(&self, counts: BTreeMap<u32, u32>) {
        self.shared.lock().alive_counts = counts;
    }

    pub fn set_etag(&self, on: bool) {
        self.shared.lock().etag = on;
    }

    /// Apply `fault` to every request of `action` until changed.
    pub fn set_fault(&self, action: Action, fault: Fault) {
        let mut st = self.shared.lock();
        if fault == Fault::None {
            st.faults.remove(&action);
        } else {
            st.faults.insert(
                action,
                FaultPlan {
                    fault,
                    remaining: None,
                },
            );
        }
    }

    /// Apply `fault` to the next `times` requests of `action`, then behave normally
    /// (not meaningful for `Outage`, which refuses connections before any request is seen).
    pub fn set_fault_times(&self, action: Action, fault: Fault, times: u32) {
        let mut st = self.shared.lock();
        if times == 0 || fault == Fault::None {
            st.faults.remove(&action);
        } else {
            st.faults.insert(
                action,
                FaultPlan {
                    fault,
                    remaining: Some(times),
                },
            );
        }
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Every request received so far (faulted ones included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Requests of one action.
    pub fn requests_for(&self, action: Action) -> Vec<RecordedRequest> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.action == Some(action))
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Pushes accepted (applied or recognised duplicates), in order.
    pub fn pushes(&self) -> Vec<AcceptedPush> {
        self.shared.lock().pushes.clone()
    }

    /// Per-user `(upload, download)` totals applied for a node.
    pub fn totals(&self, node_id: u32) -> BTreeMap<u32, (u64, u64)> {
        self.shared
            .lock()
            .totals
            .get(&node_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Alive bodies received for a node, in order.
    pub fn alive_reports(&self, node_id: u32) -> Vec<AliveBody> {
        self.shared
            .lock()
            .alive_reports
            .get(&node_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Load nodes/users/alive from a document shaped like the file panel's
    /// (`{"nodes":{"26":{…}},"users":{"26":[…]},"alive":{"1":2}}`). Keys that are not node ids are
    /// an error naming the key.
    pub fn load_state(&self, doc: &Value) -> Result<(), String> {
        let mut nodes = BTreeMap::new();
        let mut users = BTreeMap::new();
        let mut alive = BTreeMap::new();
        let id = |k: &str, what: &str| {
            k.trim()
                .parse::<u32>()
                .map_err(|_| format!("{what}: key {k:?} is not a node/user id"))
        };
        if let Some(m) = doc.get("nodes").and_then(Value::as_object) {
            for (k, v) in m {
                nodes.insert(id(k, "nodes")?, v.clone());
            }
        }
        if let Some(m) = doc.get("users").and_then(Value::as_object) {
            for (k, v) in m {
                let list = v
                    .as_array()
                    .cloned()
                    .ok_or_else(|| format!("users.{k}: expected an array"))?;
                users.insert(id(k, "users")?, list);
            }
        }
        if let Some(m) = doc.get("alive").and_then(Value::as_object) {
            for (k, v) in m {
                let n = v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| format!("alive.{k}: expected a count"))?;
                alive.insert(id(k, "alive")?, n);
            }
        }
        let mut st = self.shared.lock();
        st.nodes = nodes;
        st.users = users;
        st.alive_counts = alive;
        Ok(())
    }

    /// Stop serving and join the thread (also done on drop).
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.ws_drop();
    }
}

impl Drop for PanelSim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A user object as Xboard sends it.
pub fn user(id: u32, uuid: &str) -> Value {
    json!({"id": id, "uuid": uuid, "speed_limit": null, "device_limit": null})
}

/// [`user`] for each uuid, with ids 1, 2, …
pub fn users(uuids: &[&str]) -> Vec<Value> {
    uuids
        .iter()
        .zip(1u32..)
        .map(|(uuid, id)| user(id, uuid))
        .collect()
}

fn serve(listener: TcpListener, addr: SocketAddr, shared: &Arc<Shared>) {
    let mut listener = Some(listener);
    while !shared.stop.load(Ordering::SeqCst) {
        let outage = shared.lock().outage();
        if outage {
            // Closing the listener makes connects fail with "connection refused".
            listener = None;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let l = match listener.as_ref() {
            Some(l) => l,
            None => {
                match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
                    Ok(l) => listener = Some(l),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
                continue;
            }
        };
        match l.accept() {
            Ok((stream, _)) => {
                let _ = handle_connection(stream, shared);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_request(stream: &mut TcpStream) -> io::Result<Request> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("request head too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed before the request head ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if header("transfer-encoding").is_some() {
        return Err(bad("chunked request bodies are not supported by the simulator"));
    }
    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    if len > MAX_BODY {
        return Err(bad("request body too large"));
    }
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed inside the request body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    let (path, raw_query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let query = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Request {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What to send back.
struct Reply {
    status: u16,
    content_type: &'static str,
    etag: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            etag: None,
            body: v.to_string().into_bytes(),
        }
    }

    fn message(status: u16, msg: &str) -> Reply {
        Reply::json(status, &json!({"status": "fail", "message": msg}))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_reply(stream: &mut TcpStream, r: &Reply) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\n",
        r.status,
        reason(r.status)
    );
    if r.status != 304 {
        head.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            r.content_type,
            r.body.len()
        ));
    }
    if let Some(tag) = &r.etag {
        head.push_str(&format!("ETag: {tag}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if r.status != 304 {
        stream.write_all(&r.body)?;
    }
    stream.flush()
}

/// Close with RST instead of FIN, so the client sees a reset, not an empty answer.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

fn sleep_unless_stopping(d: Duration, shared: &Shared) {
    let end = Instant::now() + d;
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(10)));
    }
}

fn handle_connection(mut stream: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let req = read_request(&mut stream)?;
    if shared.opts.v2 && req.path == "/ws" {
        return ws_upgrade(stream, &req, shared);
    }
    let (action, dialect) = route(&req, &shared.opts);
    let fault = match action {
        Some(a) => shared.lock().take_fault(a),
        None => Fault::None,
    };
    let mut record = RecordedRequest {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers: req.headers.clone(),
        body: req.body.clone(),
        action,
        dialect,
        status: None,
        peer: stream.peer_addr().ok(),
    };
    if let Fault::Slow(d) = fault {
        sleep_unless_stopping(d, shared);
    }
    let reply = match (&fault, action) {
        (Fault::Reset | Fault::Outage, _) => None,
        (
            Fault::Answer {
                status,
                content_type,
                body,
                apply,
            },
            Some(a),
        ) => {
            if *apply {
                let _ = handle_action(&req, a, shared);
            }
            Some(Reply {
                status: *status,
                content_type,
                etag: None,
                body: body.clone(),
            })
        }
        (Fault::Status(code), Some(_)) => Some(Reply::message(*code, "injected fault")),
        (_, None) => Some(Reply {
            status: 404,
            content_type: "text/html",
            etag: None,
            body: b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>".to_vec(),
        }),
        (_, Some(a)) => Some(handle_action(&req, a, shared)),
    };
    let reply = match (fault, reply) {
        (Fault::AcceptThenDropReply, _) | (_, None) => None,
        (Fault::Html, Some(r)) if r.status < 400 => Some(Reply {
            status: 200,
            content_type: "text/html",
            etag: None,
            body: b"<html><body><b>Warning</b>: something went wrong</body></html>".to_vec(),
        }),
        (Fault::Garbage, Some(r)) if r.status < 400 => Some(Reply {
            status: 200,
            content_type: "application/json",
            etag: None,
            body: b"\x00\x01{{not json".to_vec(),
        }),
        (_, r) => r,
    };
    record.status = reply.as_ref().map(|r| r.status);
    shared.lock().requests.push(record);
    match reply {
        Some(r) => write_reply(&mut stream, &r),
        None => {
            reset(stream);
            Ok(())
        }
    }
}

fn route(req: &Request, opts: &SimOptions) -> (Option<Action>, Option<SimDialect>) {
    if opts.v2 {
        if let Some(a) = req.path.strip_prefix(V2_PATH).and_then(Action::parse_v2) {
            return (Some(a), Some(SimDialect::V2));
        }
    }
    if opts.uniproxy {
        if let Some(rest) = req.path.strip_prefix(UNIPROXY_PATH) {
            let rest = rest.strip_prefix('/').unwrap_or_default();
            let a = Action::parse(rest).or((rest == "status").then_some(Action::Status));
            if let Some(a) = a {
                return (Some(a), Some(SimDialect::UniProxy));
            }
        }
    }
    if let Some(single) = &opts.single_path {
        let norm = |p: &str| {
            if p.is_empty() {
                "/".to_string()
            } else {
                p.to_string()
            }
        };
        if norm(&req.path) == norm(single) {
            let a = req
                .query
                .iter()
                .find(|(k, _)| k == "action")
                .and_then(|(_, v)| Action::parse(v));
            if let Some(a) = a {
                return (Some(a), Some(SimDialect::Single));
            }
        }
    }
    (None, None)
}

fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Sha256::digest(body)))
}

fn conditional(req: &Request, body: Vec<u8>, etag_on: bool) -> Reply {
    let mut r = Reply {
        status: 200,
        content_type: "application/json",
        etag: None,
        body,
    };
    if etag_on {
        let tag = etag_of(&r.body);
        let bare = tag.trim_matches('"');
        let inm = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("if-none-match"))
            .map(|(_, v)| v.as_str());
        if inm.is_some_and(|v| v.contains(bare)) {
            r.status = 304;
            r.body.clear();
        }
        r.etag = Some(tag);
    }
    r
}

/// Prefix of the v2 routes.
const V2_PATH: &str = "/api/v2/server/";

/// Whether a POST body is read as JSON: Laravel parses it only with a JSON `Content-Type`.
fn json_body(req: &Request) -> bool {
    req.headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.to_ascii_lowercase().contains("json"))
}

/// Auth fields from the query, else (JSON POSTs) from the body.
fn auth_param(req: &Request, key: &str) -> Option<String> {
    if let Some((_, v)) = req.query.iter().find(|(n, _)| n == key) {
        return Some(v.clone());
    }
    if req.method.eq_ignore_ascii_case("POST") && json_body(req) {
        let v: Value = serde_json::from_slice(&req.body).ok()?;
        return match v.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
    }
    None
}

fn handle_action(req: &Request, action: Action, shared: &Shared) -> Reply {
    let v2 = req.path.starts_with(V2_PATH);
    let token = auth_param(req, "token");
    let machine = auth_param(req, "machine_id");
    let node_param = auth_param(req, "node_id").and_then(|v| v.trim().parse::<u32>().ok());
    if let Some(m) = machine.filter(|_| v2) {
        let st = shared.lock();
        let Some((mtoken, nodes)) = m.trim().parse::<u32>().ok().and_then(|m| st.machines.get(&m)) else {
            return Reply::message(401, "Machine not found or disabled");
        };
        if token.as_deref() != Some(mtoken.as_str()) {
            return Reply::message(401, "Machine not found or disabled");
        }
        if action == Action::MachineStatus {
            let v: Value = if json_body(req) {
                serde_json::from_slice(&req.body).unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            let ok = v
                .get("cpu")
                .and_then(Value::as_f64)
                .is_some_and(|c| (0.0..=100.0).contains(&c))
                && ["total", "used"].iter().all(|f| {
                    v.get("mem")
                        .and_then(|o| o.get(f))
                        .and_then(Value::as_u64)
                        .is_some()
                });
            if !ok {
                return Reply::json(
                    422,
                    &json!({"message": "The given data was invalid.", "errors": {}}),
                );
            }
            let id = m.trim().parse::<u32>().unwrap_or(0);
            drop(st);
            shared.lock().machine_status.insert(id, v);
            return Reply::json(200, &json!({"data": true}));
        }
        if action == Action::MachineNodes {
            let list = st.machine_node_list(nodes);
            return Reply::json(
                200,
                &json!({"nodes": list, "base_config": {"push_interval": 1, "pull_interval": 1}}),
            );
        }
        match node_param {
            Some(n) if nodes.contains(&n) => {}
            None if action == Action::Handshake => {}
            _ => return Reply::message(400, "Node not found on this machine"),
        }
    } else if token.as_deref() != Some(shared.opts.token.as_str()) {
        return Reply::message(403, "token is error");
    } else if action == Action::MachineNodes {
        return Reply::message(403, "Machine not found or disabled");
    }
    if action == Action::Handshake {
        let st = shared.lock();
        let ws = if st.ws_enabled {
            // Xboard honours X-Forwarded-Proto from its proxy (spec §3.1): behind a TLS
            // terminator the URL is wss://.
            let https = req
                .headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("x-forwarded-proto") && v.eq_ignore_ascii_case("https"));
            let scheme = if https { "wss" } else { "ws" };
            json!({"enabled": true, "ws_url": format!("{scheme}://{}/ws", host_of(req))})
        } else {
            json!({"enabled": false})
        };
        return Reply::json(200, &json!({ "websocket": ws }));
    }
    let node_id = match node_param {
        Some(n) => n,
        None => return Reply::message(400, "node_id is missing or invalid"),
    };
    let want_post = action.is_post();
    if req.method.eq_ignore_ascii_case("POST") != want_post {
        return Reply::message(405, "wrong method for this action");
    }
    let mut st = shared.lock();
    if !st.nodes.contains_key(&node_id) {
        return Reply::message(404, "Server does not exist");
    }
    let report_id = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(REPORT_ID_HEADER))
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty());
    match action {
        Action::Report => {
            // Laravel ignores a body without a JSON Content-Type: the report counts nothing.
            let body: &[u8] = if json_body(req) { &req.body } else { b"{}" };
            let r = match Report::decode(body) {
                Ok(r) => r,
                Err(e) => return Reply::message(422, &e.to_string()),
            };
            if !r.traffic.is_empty() {
                apply_traffic(&mut st, node_id, report_id, r.traffic);
            }
            if !r.alive.is_empty() {
                let online = st.online.entry(node_id).or_default();
                for (uid, ips) in &r.alive {
                    online.insert(*uid, ips.clone());
                }
                st.alive_reports.entry(node_id).or_default().push(r.alive);
            }
            if let Some(s) = r.status {
                st.status
                    .insert(node_id, serde_json::to_value(&s).unwrap_or(Value::Null));
            }
            if let Some(m) = r.metrics {
                st.metrics.insert(node_id, Value::Object(m));
            }
            if !r.online.is_empty() {
                st.online_conns.insert(node_id, r.online);
            }
            Reply::json(200, &json!({"data": true}))
        }
        Action::Status => {
            let v: Value = if json_body(req) {
                serde_json::from_slice(&req.body).unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            let ok = v
                .get("cpu")
                .and_then(Value::as_f64)
                .is_some_and(|c| (0.0..=100.0).contains(&c))
                && ["mem", "swap", "disk"].iter().all(|k| {
                    ["total", "used"]
                        .iter()
                        .all(|f| v.get(k).and_then(|o| o.get(f)).and_then(Value::as_u64).is_some())
                });
            if !ok {
                return Reply::json(
                    422,
                    &json!({"message": "The given data was invalid.", "errors": {}}),
                );
            }
            st.status.insert(node_id, v);
            Reply::json(200, &json!({"data": true, "code": 0, "message": "success"}))
        }
        Action::Handshake | Action::MachineNodes | Action::MachineStatus => {
            Reply::message(403, "Machine not found or disabled")
        }
        Action::Config => {
            let body = st
                .nodes
                .get(&node_id)
                .map(Value::to_string)
                .unwrap_or_default()
                .into_bytes();
            conditional(req, body, st.etag)
        }
        Action::User => {
            let users = st.users.get(&node_id).cloned().unwrap_or_default();
            let body = json!({ "users": users }).to_string().into_bytes();
            conditional(req, body, st.etag)
        }
        Action::AliveList => {
            let alive: serde_json::Map<String, Value> = st
                .alive_counts
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            Reply::json(200, &json!({ "alive": alive }))
        }
        Action::Push => {
            let body = match decode_push(&req.body) {
                Ok(b) => b,
                Err(e) => return Reply::message(400, &e.to_string()),
            };
            apply_traffic(&mut st, node_id, report_id, body);
            Reply::json(200, &json!({"status": "success", "message": "ok", "data": true}))
        }
        Action::Alive => {
            let body = match decode_alive(&req.body) {
                Ok(b) => b,
                Err(e) => return Reply::message(400, &e.to_string()),
            };
            let online = st.online.entry(node_id).or_default();
            for (uid, ips) in &body {
                online.insert(*uid, ips.clone());
            }
            st.alive_reports.entry(node_id).or_default().push(body);
            Reply::json(200, &json!({"status": "success", "message": "ok", "data": true}))
        }
    }
}

/// Count a traffic batch once per report id (push and v2 report share the ids).
fn apply_traffic(st: &mut State, node_id: u32, report_id: Option<String>, body: PushBody) {
    let duplicate = match &report_id {
        Some(id) => !st.report_ids.insert((node_id, id.clone())),
        None => false,
    };
    if !duplicate {
        let totals = st.totals.entry(node_id).or_default();
        for (uid, [up, down]) in &body {
            let e = totals.entry(*uid).or_insert((0, 0));
            e.0 = e.0.saturating_add(*up);
            e.1 = e.1.saturating_add(*down);
        }
    }
    st.pushes.push(AcceptedPush {
        node_id,
        report_id,
        body,
        duplicate,
    });
}

/// The request's `Host` header (the panel builds `ws_url` from it).
fn host_of(req: &Request) -> String {
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// The node config as `sync.config` carries it (no `base_config`).
fn sync_config(st: &State, node_id: u32) -> Value {
    let mut c = st.nodes.get(&node_id).cloned().unwrap_or(Value::Null);
    if let Value::Object(m) = &mut c {
        m.remove("base_config");
    }
    c
}

fn frame(event: &str, data: Value) -> String {
    json!({"event": event, "data": data, "timestamp": 0}).to_string()
}

/// `GET /ws`: authenticate from the query (spec §4.2), then serve the connection in its own
/// thread.
fn ws_upgrade(mut stream: TcpStream, req: &Request, shared: &Arc<Shared>) -> io::Result<()> {
    let key = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, v)| v.clone());
    let refuse = shared.lock().ws_refuse;
    let Some(key) = key.filter(|_| !refuse) else {
        let r = Reply::message(503, "websocket unavailable");
        return write_reply(&mut stream, &r);
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    stream.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let mut ws = tungstenite::WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Server, None);
    let q = |k: &str| req.query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let token = q("token").unwrap_or_default();
    let mut st = shared.lock();
    // Authenticate: node mode or machine mode.
    let auth: Result<(Vec<u32>, Option<u32>), &str> = match q("machine_id") {
        Some(m) => match m
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(|m| st.machines.get(&m).map(|x| (m, x)))
        {
            Some((m, (t, nodes))) if *t == token => Ok((nodes.clone(), Some(m))),
            _ => Err("invalid machine credentials"),
        },
        None if token != shared.opts.token => Err("invalid token"),
        None => match q("node_id").and_then(|n| n.trim().parse::<u32>().ok()) {
            Some(n) if st.nodes.contains_key(&n) => Ok((vec![n], None)),
            _ => Err("node not found"),
        },
    };
    let (nodes, machine) = match auth {
        Ok(a) => a,
        Err(m) => {
            drop(st);
            let _ = ws.send(tungstenite::Message::text(
                json!({"event":"error","data":{"message": m}}).to_string(),
            ));
            let _ = ws.close(None);
            let _ = ws.flush();
            return Ok(());
        }
    };
    // A newer connection for the same node/machine closes the older one.
    for c in &st.ws_conns {
        if c.machine == machine && (machine.is_some() || c.nodes == nodes) {
            c.closed.store(true, Ordering::SeqCst);
        }
    }
    st.ws_conns.retain(|c| !c.closed.load(Ordering::SeqCst));
    for n in &nodes {
        st.online.remove(n);
    }
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let closed = Arc::new(AtomicBool::new(false));
    let mut hello = vec![match machine {
        Some(m) => frame("auth.success", json!({"machine_id": m, "node_ids": nodes})),
        None => frame("auth.success", json!({"node_id": nodes[0]})),
    }];
    for &n in &nodes {
        let mut c = json!({"config": sync_config(&st, n)});
        let users = st.users.get(&n).cloned().unwrap_or_default();
        let mut u = json!({ "users": users });
        if machine.is_some() {
            c["node_id"] = n.into();
            u["node_id"] = n.into();
        }
        hello.push(frame("sync.config", c));
        hello.push(frame("sync.users", u));
    }
    st.ws_conns.push(WsConn {
        nodes,
        machine,
        tx,
        closed: closed.clone(),
    });
    st.ws_accepted += 1;
    drop(st);
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("panel-sim-ws".into())
        .spawn(move || ws_serve(ws, hello, &rx, &closed, &shared))?;
    Ok(())
}

fn ws_serve(
    mut ws: tungstenite::WebSocket<TcpStream>,
    hello: Vec<String>,
    rx: &std::sync::mpsc::Receiver<String>,
    closed: &AtomicBool,
    shared: &Arc<Shared>,
) {
    let _ = ws.get_ref().set_read_timeout(Some(Duration::from_millis(20)));
    for f in hello {
        if ws.send(tungstenite::Message::text(f)).is_err() {
            return;
        }
    }
    // Bounded: the connection lives at most 10 minutes.
    let end = Instant::now() + Duration::from_secs(600);
    while Instant::now() < end && !closed.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
        while let Ok(f) = rx.try_recv() {
            if ws.send(tungstenite::Message::text(f)).is_err() {
                closed.store(true, Ordering::SeqCst);
                return;
            }
        }
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v = serde_json::from_str(t.as_str()).unwrap_or(Value::String(t.to_string()));
                shared.lock().ws_received.push(v);
            }
            Ok(tungstenite::Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    closed.store(true, Ordering::SeqCst);
    // Dropping the socket without a close frame, like a panel restart.
    drop(ws);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%26c"), "a b&c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }
}
