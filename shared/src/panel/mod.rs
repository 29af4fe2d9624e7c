//! Panel API wire types (spec §B.4–B.8), decoded tolerantly.
//!
//! The panel is an untrusted peer written in PHP (Xboard, v2board, wyx2685/v2board) or by hand
//! (v2sp's single-endpoint custom panels). The types here accept every shape those panels are
//! known to send for a value and reject anything else with a [`DecodeError`] that names the
//! field path (`tls_settings.server_port`, `users[3].speed_limit`), so an operator can tell the
//! panel author exactly what is wrong. Nothing here panics on panel input.
//!
//! | action      | type                        | direction |
//! |-------------|-----------------------------|-----------|
//! | `config`    | [`NodeInfo`]                | panel → agent |
//! | `user`      | [`UserList`]                | panel → agent |
//! | `alivelist` | [`AliveList`]               | panel → agent |
//! | `push`      | [`PushBody`] `{"26":[up,down]}` | agent → panel |
//! | `alive`     | [`AliveBody`] `{"26":["1.2.3.4"]}` | agent → panel |

mod fields;
mod node_info;
mod users;
mod v2;

use std::collections::BTreeMap;

pub use fields::snippet;
pub use node_info::{BaseConfig, NodeInfo, Route, TlsMode, TlsSettings, DEFAULT_INTERVAL_SECS, KNOWN_KEYS};
pub use users::{AliveList, PanelUser, SkippedUser, UserList};
pub use v2::{decode_node_list, truthy, Handshake, MachineNode, MachineNodes, NodeStatus, Report, UsedTotal};

/// Body of `push`: user id → `[upload_bytes, download_bytes]`. Serialises as
/// `{"26":[1024,2048]}` (serde_json writes integer map keys as strings).
pub type PushBody = BTreeMap<u32, [u64; 2]>;

/// Body of `alive`: user id → the plain IP addresses (no port, no `::ffff:`) seen online.
pub type AliveBody = BTreeMap<u32, Vec<String>>;

/// The panel sent something this agent cannot use. Always the panel's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("panel sent an unusable {what}: {path}: {problem}")]
pub struct DecodeError {
    /// Which payload: `"node config"`, `"user list"`, `"alive list"`.
    pub what: &'static str,
    /// JSON path of the offending field, `$` for the whole body.
    pub path: String,
    /// What was wrong with it.
    pub problem: String,
}

/// Which API call a request is, in the names both dialects use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Config,
    User,
    AliveList,
    Push,
    Alive,
    /// v2 `POST /api/v2/server/report` (traffic, alive, online, status, metrics in one body).
    Report,
    /// v2 `POST /api/v2/server/handshake` (WebSocket discovery).
    Handshake,
    /// v1 `POST status` (CPU, memory, swap, disk).
    Status,
    /// Machine mode `POST /api/v2/server/machine/nodes`.
    MachineNodes,
    /// Machine mode `POST /api/v2/server/machine/status` (the machine's load).
    MachineStatus,
}

impl Action {
    /// The v1 actions (both dialects).
    pub const ALL: [Action; 5] = [
        Action::Config,
        Action::User,
        Action::AliveList,
        Action::Push,
        Action::Alive,
    ];

    /// Every action under `/api/v2/server/` (the v1 ones are served there too).
    pub const V2: [Action; 10] = [
        Action::Config,
        Action::User,
        Action::AliveList,
        Action::Push,
        Action::Alive,
        Action::Report,
        Action::Handshake,
        Action::Status,
        Action::MachineNodes,
        Action::MachineStatus,
    ];

    /// The name used as `action=` value (single endpoint) and as path segment (UniProxy).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Config => "config",
            Action::User => "user",
            Action::AliveList => "alivelist",
            Action::Push => "push",
            Action::Alive => "alive",
            Action::Report => "report",
            Action::Handshake => "handshake",
            Action::Status => "status",
            Action::MachineNodes => "machine/nodes",
            Action::MachineStatus => "machine/status",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// An action name under `/api/v2/server/` (`report`, `handshake`, `machine/nodes`, …).
    pub fn parse_v2(s: &str) -> Option<Action> {
        Action::V2.into_iter().find(|a| a.as_str() == s)
    }

    /// `push` and `alive` are POSTs with a JSON body; the others are GETs.
    pub fn is_post(self) -> bool {
        !matches!(self, Action::Config | Action::User | Action::AliveList)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The path suffix of the stock panels' ("UniProxy") dialect, appended to `ApiHost`.
pub const UNIPROXY_PATH: &str = "/api/v1/server/UniProxy";

/// Header carrying the agent's stable id for one traffic batch, so a panel can de-duplicate a
/// `push` that the agent retries after losing the answer.
pub const REPORT_ID_HEADER: &str = "X-V2sp-Report-Id";

/// Serialise a push body (`{"26":[up,down]}`).
pub fn encode_push(body: &PushBody) -> Vec<u8> {
    encode_map(body)
}

/// Serialise an alive body (`{"26":["1.2.3.4"]}`).
pub fn encode_alive(body: &AliveBody) -> Vec<u8> {
    encode_map(body)
}

fn encode_map<V: serde::Serialize>(body: &BTreeMap<u32, V>) -> Vec<u8> {
    // Serialising a map with integer keys and plain values cannot fail; fall back to an empty
    // object rather than panic if serde_json ever disagrees.
    serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec())
}

/// Decode a push body as a panel would (used by the simulator and the file panel). Entries that
/// are not `[int, int]` are an error naming the user id.
pub fn decode_push(bytes: &[u8]) -> Result<PushBody, DecodeError> {
    let v = fields::parse_json(bytes, "push body")?;
    let obj = match &v {
        serde_json::Value::Object(m) => m,
        // PHP encodes an empty map as `[]`.
        serde_json::Value::Array(a) if a.is_empty() => return Ok(PushBody::new()),
        other => {
            return Err(DecodeError {
                what: "push body",
                path: "$".into(),
                problem: format!(
                    "expected an object of user id → [up, down], got {}",
                    fields::show(other)
                ),
            })
        }
    };
    let mut out = PushBody::new();
    for (k, val) in obj {
        let bad = |problem: String| DecodeError {
            what: "push body",
            path: k.clone(),
            problem,
        };
        let uid: u32 = k
            .trim()
            .parse()
            .map_err(|_| bad("user id is not a decimal u32".into()))?;
        let pair = match val {
            serde_json::Value::Array(a) if a.len() == 2 => a,
            other => return Err(bad(format!("expected [up, down], got {}", fields::show(other)))),
        };
        let mut ud = [0u64; 2];
        for (slot, x) in ud.iter_mut().zip(pair.iter()) {
            *slot = fields::uint_of(x, u64::MAX).map_err(bad)?.unwrap_or(0);
        }
        let e = out.entry(uid).or_insert([0, 0]);
        e[0] = e[0].saturating_add(ud[0]);
        e[1] = e[1].saturating_add(ud[1]);
    }
    Ok(out)
}

/// Decode an alive body (`{"26":["1.2.3.4"]}`) as a panel would.
pub fn decode_alive(bytes: &[u8]) -> Result<AliveBody, DecodeError> {
    let v = fields::parse_json(bytes, "alive body")?;
    let obj = match &v {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Array(a) if a.is_empty() => return Ok(AliveBody::new()),
        other => {
            return Err(DecodeError {
                what: "alive body",
                path: "$".into(),
                problem: format!(
                    "expected an object of user id → [ip, …], got {}",
                    fields::show(other)
                ),
            })
        }
    };
    let mut out = AliveBody::new();
    for (k, val) in obj {
        let bad = |problem: String| DecodeError {
            what: "alive body",
            path: k.clone(),
            problem,
        };
        let uid: u32 = k
            .trim()
            .parse()
            .map_err(|_| bad("user id is not a decimal u32".into()))?;
        let ips = match val {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|ip| match ip {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    other => Err(bad(format!("expected an IP string, got {}", fields::show(other)))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            other => return Err(bad(format!("expected [ip, …], got {}", fields::show(other)))),
        };
        out.insert(uid, ips);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn push_body_wire_shape() {
        let mut b = PushBody::new();
        b.insert(26, [1024, 2048]);
        b.insert(3, [0, 7]);
        assert_eq!(encode_push(&b), br#"{"3":[0,7],"26":[1024,2048]}"#.to_vec());
        assert_eq!(decode_push(&encode_push(&b)).unwrap(), b);
        assert_eq!(encode_push(&PushBody::new()), b"{}".to_vec());
    }

    #[test]
    fn alive_body_wire_shape() {
        let mut b = AliveBody::new();
        b.insert(26, vec!["1.1.1.1".into(), "2001:db8::1".into()]);
        assert_eq!(encode_alive(&b), br#"{"26":["1.1.1.1","2001:db8::1"]}"#.to_vec());
        assert_eq!(decode_alive(&encode_alive(&b)).unwrap(), b);
    }

    #[test]
    fn push_body_rejects_bad_entries_by_user() {
        let e = decode_push(br#"{"26":[1,2,3]}"#).unwrap_err();
        assert_eq!(e.path, "26");
        let e = decode_push(br#"{"x":[1,2]}"#).unwrap_err();
        assert_eq!(e.path, "x");
        assert_eq!(decode_push(b"[]").unwrap(), PushBody::new());
    }

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert!(Action::Push.is_post() && !Action::User.is_post());
    }
}
