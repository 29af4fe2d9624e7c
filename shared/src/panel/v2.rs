//! Xboard's v2 node API wire types (spec `xboard-node-api.md` §2.6, §3): the combined
//! `report` body, the `status` object, the `handshake` and `machine/nodes` answers.
//!
//! ```text
//! report:    {"traffic":{"<uid>":[up,down]}, "alive":{"<uid>":["ip",…]},
//!             "online":{"<uid>":conns}, "status":{cpu,mem,swap,disk}, "metrics":{…}}
//! handshake: {"websocket":{"enabled":true,"ws_url":"wss://host/ws"}}
//! machine/nodes: {"nodes":[{"id","type","name"}],"base_config":{push_interval,pull_interval}}
//! ```
//!
//! Panel answers are decoded tolerantly (PHP shapes, §8): `[]` for an empty map, objects with
//! numeric keys where lists are expected, string numbers.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{fields, AliveBody, DecodeError, PushBody};

/// Memory-like pair of the `status` object, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsedTotal {
    pub total: u64,
    pub used: u64,
}

/// v1 `POST status` body and v2 `report.status` (§2.6): CPU percent 0–100, byte counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeStatus {
    pub cpu: f64,
    pub mem: UsedTotal,
    pub swap: UsedTotal,
    pub disk: UsedTotal,
}

/// The parts of one v2 `report`; empty parts are left out of the body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub traffic: PushBody,
    pub alive: AliveBody,
    pub online: BTreeMap<u32, u32>,
    pub status: Option<NodeStatus>,
    /// `report.metrics` (and WS `node.status`): `uptime`, `active_connections`, … (§3.2).
    pub metrics: Option<Map<String, Value>>,
}

impl Report {
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Map::new();
        let put = |o: &mut Map<String, Value>, k: &str, v: serde_json::Result<Value>| {
            if let Ok(v) = v {
                o.insert(k.to_string(), v);
            }
        };
        if !self.traffic.is_empty() {
            put(&mut o, "traffic", serde_json::to_value(&self.traffic));
        }
        if !self.alive.is_empty() {
            put(&mut o, "alive", serde_json::to_value(&self.alive));
        }
        if !self.online.is_empty() {
            put(&mut o, "online", serde_json::to_value(&self.online));
        }
        if let Some(s) = &self.status {
            put(&mut o, "status", serde_json::to_value(s));
        }
        if let Some(m) = &self.metrics {
            o.insert("metrics".into(), Value::Object(m.clone()));
        }
        serde_json::to_vec(&Value::Object(o)).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// Decode as the panel would (simulator): every part optional, `[]` = empty.
    pub fn decode(bytes: &[u8]) -> Result<Report, DecodeError> {
        let v = fields::parse_json(bytes, "report body")?;
        let obj = match v {
            Value::Object(m) => m,
            Value::Array(a) if a.is_empty() => Map::new(),
            other => {
                return Err(DecodeError {
                    what: "report body",
                    path: "$".into(),
                    problem: format!("expected an object, got {}", fields::show(&other)),
                })
            }
        };
        let part = |k: &str| {
            obj.get(k)
                .filter(|v| !v.is_null())
                .map(|v| v.to_string().into_bytes())
        };
        let mut r = Report::default();
        if let Some(b) = part("traffic") {
            r.traffic = super::decode_push(&b).map_err(|e| nest(e, "traffic"))?;
        }
        if let Some(b) = part("alive") {
            r.alive = super::decode_alive(&b).map_err(|e| nest(e, "alive"))?;
        }
        if let Some(Value::Object(m)) = obj.get("online") {
            for (k, v) in m {
                if let (Ok(uid), Ok(Some(n))) = (k.trim().parse::<u32>(), fields::uint_of(v, u32::MAX.into()))
                {
                    r.online.insert(uid, u32::try_from(n).unwrap_or(u32::MAX));
                }
            }
        }
        if let Some(s) = obj.get("status").filter(|v| v.is_object()) {
            let num = |p: &[&str]| {
                let mut v = s;
                for k in p {
                    match v.get(k) {
                        Some(x) => v = x,
                        None => return 0.0,
                    }
                }
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|t| t.parse().ok()))
                    .unwrap_or(0.0)
            };
            let ut = |k: &str| UsedTotal {
                total: num(&[k, "total"]) as u64,
                used: num(&[k, "used"]) as u64,
            };
            r.status = Some(NodeStatus {
                cpu: num(&["cpu"]),
                mem: ut("mem"),
                swap: ut("swap"),
                disk: ut("disk"),
            });
        }
        if let Some(Value::Object(m)) = obj.get("metrics") {
            r.metrics = Some(m.clone());
        }
        Ok(r)
    }
}

fn nest(mut e: DecodeError, part: &str) -> DecodeError {
    e.what = "report body";
    e.path = format!("{part}.{}", e.path);
    e
}

/// `handshake` answer: the WebSocket URL when the panel offers the channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handshake {
    pub ws_url: Option<String>,
}

impl Handshake {
    /// Any JSON object is a v2 panel's answer; `websocket.enabled` (bool, 0/1, "1") with a
    /// non-empty `ws_url` turns the channel on.
    pub fn decode(bytes: &[u8]) -> Result<Handshake, DecodeError> {
        let v = fields::parse_json(bytes, "handshake")?;
        if !v.is_object() {
            return Err(DecodeError {
                what: "handshake",
                path: "$".into(),
                problem: format!("expected an object, got {}", fields::show(&v)),
            });
        }
        let ws = v.get("websocket");
        let enabled = ws.and_then(|w| w.get("enabled")).is_some_and(truthy);
        let url = ws
            .and_then(|w| w.get("ws_url"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string);
        Ok(Handshake {
            ws_url: if enabled { url } else { None },
        })
    }
}

/// PHP truthiness of a flag: `true`, non-zero numbers, `"1"`/`"true"`.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => matches!(s.trim(), "1" | "true"),
        _ => false,
    }
}

/// One node of a machine (`machine/nodes`, WS `sync.nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineNode {
    pub id: u32,
    /// Node type (`vless`, `shadowsocks`, …), lower case.
    pub node_type: String,
    pub name: String,
}

/// `machine/nodes` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineNodes {
    pub nodes: Vec<MachineNode>,
    /// `base_config.pull_interval` / `push_interval` seconds, when present.
    pub pull_interval: Option<u64>,
    pub push_interval: Option<u64>,
}

impl MachineNodes {
    pub fn decode(bytes: &[u8]) -> Result<MachineNodes, DecodeError> {
        let v = fields::parse_json(bytes, "machine node list")?;
        let nodes = decode_node_list(v.get("nodes").unwrap_or(&Value::Null), "nodes")?;
        let interval = |k: &str| {
            v.get("base_config")
                .and_then(|b| b.get(k))
                .and_then(|x| fields::uint_of(x, u64::from(u32::MAX)).ok().flatten())
                .filter(|&n| n > 0)
        };
        Ok(MachineNodes {
            nodes,
            pull_interval: interval("pull_interval"),
            push_interval: interval("push_interval"),
        })
    }
}

/// `[{id,type,name}]`, also as an object with numeric keys or `null`/`[]` for none.
pub fn decode_node_list(v: &Value, path: &str) -> Result<Vec<MachineNode>, DecodeError> {
    let bad = |p: String, problem: String| DecodeError {
        what: "machine node list",
        path: p,
        problem,
    };
    let items: Vec<&Value> = match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a.iter().collect(),
        Value::Object(m) => m.values().collect(),
        other => {
            return Err(bad(
                path.into(),
                format!("expected a list, got {}", fields::show(other)),
            ))
        }
    };
    let mut out = Vec::new();
    for (i, n) in items.into_iter().enumerate() {
        let id = n
            .get("id")
            .map(|x| fields::uint_of(x, u64::from(u32::MAX)))
            .transpose()
            .map_err(|e| bad(format!("{path}[{i}].id"), e))?
            .flatten()
            .and_then(|x| u32::try_from(x).ok())
            .filter(|&x| x > 0)
            .ok_or_else(|| {
                bad(
                    format!("{path}[{i}].id"),
                    "missing or not a positive integer".into(),
                )
            })?;
        let s = |k: &str| {
            n.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        out.push(MachineNode {
            id,
            node_type: s("type").to_ascii_lowercase(),
            name: s("name"),
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn report_wire_shape_skips_empty_parts() {
        let mut r = Report::default();
        assert_eq!(r.encode(), b"{}".to_vec());
        r.traffic.insert(26, [1, 2]);
        assert_eq!(r.encode(), br#"{"traffic":{"26":[1,2]}}"#.to_vec());
        r.status = Some(NodeStatus {
            cpu: 12.5,
            mem: UsedTotal { total: 8, used: 3 },
            ..NodeStatus::default()
        });
        let back = Report::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert_eq!(Report::decode(b"[]").unwrap(), Report::default());
        assert!(Report::decode(b"<html>").is_err());
    }

    #[test]
    fn handshake_and_machine_nodes_php_shapes() {
        let h = Handshake::decode(br#"{"websocket":{"enabled":true,"ws_url":"ws://h/ws"}}"#).unwrap();
        assert_eq!(h.ws_url.as_deref(), Some("ws://h/ws"));
        let h = Handshake::decode(br#"{"websocket":{"enabled":false}}"#).unwrap();
        assert_eq!(h.ws_url, None);
        assert!(Handshake::decode(b"[1]").is_err());
        let m = MachineNodes::decode(
            br#"{"nodes":{"0":{"id":"3","type":"VLESS","name":"a"}},"base_config":{"pull_interval":"5","push_interval":0}}"#,
        )
        .unwrap();
        assert_eq!(m.nodes[0].id, 3);
        assert_eq!(m.nodes[0].node_type, "vless");
        assert_eq!(m.pull_interval, Some(5));
        assert_eq!(m.push_interval, None);
        assert!(MachineNodes::decode(br#"{"nodes":[{"id":-1}]}"#).is_err());
        assert_eq!(MachineNodes::decode(br#"{"nodes":[]}"#).unwrap().nodes, vec![]);
    }
}
