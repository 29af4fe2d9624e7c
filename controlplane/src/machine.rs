//! Xboard machine mode (spec `xboard-node-api.md` §3.3, §4): one config entry
//! `{"ApiHost", "ApiKey": <machine token>, "MachineID": M}` without `NodeID` serves every node
//! the panel's `POST machine/nodes` lists. A supervisor thread per machine asks for the list
//! every `pull_interval` (and on WebSocket `sync.nodes`), starts a node worker for each new
//! node (machine auth: `machine_id` + token + `node_id`) and stops the workers of nodes that
//! left the list (their traffic is reported first, then they are unpublished). One WebSocket
//! channel per machine: events are routed to the node named by `data.node_id`, and the
//! nodes' messages go out with their `node_id`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use v2sp_shared::config::NodeEntry;
use v2sp_shared::panel::MachineNode;

use crate::agent::{node_api, start_node_worker, Phase, Shared, WorkerHandle};
use crate::node::WsLink;
use crate::panel::ws::{WsChannel, WsEvent, WsOut};
use crate::panel::{Panel, PanelClient};

/// Node types this agent can serve, as the panel names them.
const KNOWN_TYPES: [&str; 9] = [
    "vmess",
    "vless",
    "trojan",
    "shadowsocks",
    "hysteria",
    "hysteria2",
    "anytls",
    "tuic",
    "v2ray",
];

struct Node {
    worker: WorkerHandle,
    tag: String,
    events: Sender<WsEvent>,
}

struct Machine {
    entry: NodeEntry,
    shared: Arc<Shared>,
    retire: Arc<AtomicBool>,
    client: PanelClient,
    nodes: BTreeMap<u32, Node>,
    ws: Option<WsChannel>,
    /// The nodes' outgoing WebSocket messages, forwarded to the current channel.
    out_tx: Sender<String>,
    out_rx: Receiver<String>,
}

/// Start the supervisor of a machine entry.
pub(crate) fn start(shared: &Arc<Shared>, e: &NodeEntry) -> Option<WorkerHandle> {
    let tag = e.tag();
    let client = match PanelClient::new(node_api(e)) {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(machine = %tag, error = %err, "machine not started: bad panel settings");
            return None;
        }
    };
    let retire = Arc::new(AtomicBool::new(false));
    let (out_tx, out_rx) = mpsc::channel();
    let m = Machine {
        entry: e.clone(),
        shared: shared.clone(),
        retire: retire.clone(),
        client,
        nodes: BTreeMap::new(),
        ws: None,
        out_tx,
        out_rx,
    };
    let thread = std::thread::Builder::new()
        .name(format!("machine-{}", e.machine_id.unwrap_or(0)))
        .spawn(move || m.run())
        .ok()?;
    Some(WorkerHandle {
        entry: e.clone(),
        slot: u16::MAX,
        retire,
        thread,
        machine: true,
    })
}

impl Machine {
    fn run(mut self) {
        let mut next_list = Instant::now();
        let mut next_status = Instant::now() + Duration::from_secs(1);
        let mut push_every = Duration::from_secs(v2sp_shared::panel::DEFAULT_INTERVAL_SECS);
        let mut host = crate::hoststat::HostStat::default();
        let mut every = Duration::from_secs(v2sp_shared::panel::DEFAULT_INTERVAL_SECS);
        loop {
            if self.retire.load(Ordering::Acquire) {
                for (_, n) in std::mem::take(&mut self.nodes) {
                    n.worker.stop(&self.shared, &n.tag, true);
                }
                return;
            }
            if self.shared.phase() != Phase::Running {
                // The node workers do the final push themselves; wait for them.
                self.ws = None;
                for (_, n) in std::mem::take(&mut self.nodes) {
                    let _ = n.worker.thread.join();
                }
                return;
            }
            if Instant::now() >= next_list {
                if self.ws.is_none() {
                    self.client.refresh_handshake();
                    if let Some(target) = self.client.websocket() {
                        match WsChannel::start(target) {
                            Ok(c) => self.ws = Some(c),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot start the machine's WebSocket thread")
                            }
                        }
                    }
                }
                match self.client.machine_nodes() {
                    Ok(list) => {
                        if let Some(s) = list.pull_interval {
                            every = Duration::from_secs(s.max(1));
                        }
                        if let Some(s) = list.push_interval {
                            push_every = Duration::from_secs(s.max(1));
                            next_status = next_status.min(Instant::now() + push_every);
                        }
                        self.apply(list.nodes);
                        next_list = Instant::now() + every;
                    }
                    Err(e) => {
                        tracing::warn!(machine = %self.entry.tag(), error = %e, fault = ?e.fault(), "machine node list unavailable; serving the last one");
                        next_list = Instant::now() + every.min(Duration::from_secs(10));
                    }
                }
            }
            if Instant::now() >= next_status {
                if let Err(e) = self.client.machine_status(&host.sample()) {
                    tracing::debug!(error = %e, "machine status report failed");
                }
                next_status = Instant::now() + push_every;
            }
            self.route_events();
            while let Ok(text) = self.out_rx.try_recv() {
                if let Some(ws) = &self.ws {
                    ws.out.send_raw(text);
                }
            }
            self.shared.sleep(Duration::from_millis(50));
        }
    }

    fn route_events(&mut self) {
        for _ in 0..1024 {
            let Some(ev) = self.ws.as_ref().and_then(|w| w.events.try_recv().ok()) else {
                return;
            };
            match ev {
                WsEvent::Nodes(list) => self.apply(list),
                WsEvent::Connected | WsEvent::Disconnected(_) => {
                    for n in self.nodes.values() {
                        let _ = n.events.send(ev.clone());
                    }
                }
                other => match other.node_id().and_then(|id| self.nodes.get(&id)) {
                    Some(n) => {
                        let _ = n.events.send(other);
                    }
                    None => {
                        tracing::debug!(node_id = ?other.node_id(), "WebSocket event for a node this machine does not serve")
                    }
                },
            }
        }
    }

    /// Serve exactly the listed nodes.
    fn apply(&mut self, list: Vec<MachineNode>) {
        let gone: Vec<u32> = self
            .nodes
            .keys()
            .filter(|id| !list.iter().any(|n| n.id == **id))
            .copied()
            .collect();
        for id in gone {
            if let Some(n) = self.nodes.remove(&id) {
                tracing::info!(node = %n.tag, "node left the machine's list: no longer served");
                n.worker.stop(&self.shared, &n.tag, true);
                self.shared.wake_all();
            }
        }
        for node in list {
            if self.nodes.contains_key(&node.id) {
                continue;
            }
            let mut e = self.entry.clone();
            e.node_id = i64::from(node.id);
            e.node_type = match node.node_type.as_str() {
                "v2ray" => "vmess".into(),
                t if KNOWN_TYPES.contains(&t) => t.into(),
                _ => String::new(),
            };
            let tag = e.tag();
            let (tx, rx) = mpsc::channel();
            let link = WsLink::Routed {
                events: rx,
                out: WsOut::new(self.out_tx.clone()).for_node(node.id),
            };
            tracing::info!(node = %tag, name = %node.name, "machine node added");
            if let Some(worker) = start_node_worker(&self.shared, &e, std::slice::from_ref(&tag), Some(link))
            {
                // A channel that is up already will not say "connected" again.
                if self.ws.as_ref().is_some_and(WsChannel::connected) {
                    let _ = tx.send(WsEvent::Connected);
                }
                self.nodes.insert(
                    node.id,
                    Node {
                        worker,
                        tag,
                        events: tx,
                    },
                );
            }
        }
    }
}
