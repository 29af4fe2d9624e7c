//! `action=user` and `action=alivelist` replies (spec §B.5, §B.6, §J.7–8).
//!
//! User list: `{"users":[{"id":1,"uuid":"…","speed_limit":null,"device_limit":2}, …]}`.
//! Only those four fields are read (the panel decides who is listed). `null` limits are 0
//! (unlimited); numbers may arrive as numeric strings or integral floats. One broken user does
//! not cost everybody their service: it is skipped and the reason recorded in
//! [`UserList::skipped`]. `"users": null` is an empty list.
//!
//! Alive list: `{"alive":{"26":2}}` = distinct online IPs the panel knows per user, across all
//! nodes. PHP's empty array (`[]` in place of `{}`) is an empty map.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::fields::{self, Fields};
use super::DecodeError;

/// One user as the agent needs it. The uuid is the credential for every protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PanelUser {
    pub id: u32,
    pub uuid: String,
    /// Mbps, 0 = unlimited.
    pub speed_limit: u32,
    /// Distinct IPs, 0 = unlimited.
    pub device_limit: u32,
}

/// A list entry that was left out, and why (for one log line per pull, not per user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedUser {
    /// Position in the panel's array.
    pub index: usize,
    /// The user's id when it could be read.
    pub id: Option<u32>,
    pub reason: String,
}

/// Decoded `action=user` reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserList {
    pub users: Vec<PanelUser>,
    pub skipped: Vec<SkippedUser>,
}

/// Longest credential accepted; uuids are 36 characters, custom panels may send passwords.
const MAX_UUID_LEN: usize = 128;

impl UserList {
    /// Decode a `user` reply body.
    pub fn decode(bytes: &[u8]) -> Result<UserList, DecodeError> {
        let v = fields::parse_json(bytes, "user list")?;
        UserList::from_value(&v)
    }

    /// Decode from a parsed value: either the `{"users": …}` object or the bare array (the file
    /// panel stores bare arrays).
    pub fn from_value(v: &Value) -> Result<UserList, DecodeError> {
        let list = match v {
            Value::Object(m) => match m.get("users") {
                Some(l) => l,
                None => {
                    return Err(DecodeError {
                        what: "user list",
                        path: "users".into(),
                        problem: "missing (expected {\"users\": [...]})".into(),
                    })
                }
            },
            arr @ Value::Array(_) => arr,
            other => {
                return Err(DecodeError {
                    what: "user list",
                    path: "$".into(),
                    problem: format!("expected an object with \"users\", got {}", fields::show(other)),
                })
            }
        };
        let items = match list {
            Value::Null => Vec::new(),
            other => fields::list_of(other).ok_or_else(|| DecodeError {
                what: "user list",
                path: "users".into(),
                problem: format!("expected an array of users, got {}", fields::show(other)),
            })?,
        };
        let mut out = UserList {
            users: Vec::with_capacity(items.len()),
            skipped: Vec::new(),
        };
        let mut seen_uuid: HashSet<String> = HashSet::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match decode_user(item, index) {
                Ok(u) => {
                    if seen_uuid.insert(u.uuid.clone()) {
                        out.users.push(u);
                    } else {
                        out.skipped.push(SkippedUser {
                            index,
                            id: Some(u.id),
                            reason: "uuid already used by an earlier user in the list".into(),
                        });
                    }
                }
                Err((id, reason)) => out.skipped.push(SkippedUser { index, id, reason }),
            }
        }
        Ok(out)
    }
}

fn decode_user(item: &Value, index: usize) -> Result<PanelUser, (Option<u32>, String)> {
    let m = match item {
        Value::Object(m) => m,
        other => {
            return Err((
                None,
                format!(
                    "users[{index}]: expected a user object, got {}",
                    fields::show(other)
                ),
            ))
        }
    };
    let f = Fields::new(m, format!("users[{index}]"), "user list");
    let id = match f.get("id") {
        None => return Err((None, format!("{}: missing", f.child_path("id")))),
        Some(v) => match fields::uint_of(v, u64::from(u32::MAX)) {
            Ok(Some(id)) => id as u32,
            Ok(None) => return Err((None, format!("{}: empty", f.child_path("id")))),
            Err(p) => return Err((None, format!("{}: {p}", f.child_path("id")))),
        },
    };
    let uuid = match f.get("uuid") {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(other) => {
            return Err((
                Some(id),
                format!(
                    "{}: expected a string, got {}",
                    f.child_path("uuid"),
                    fields::show(other)
                ),
            ))
        }
        None => return Err((Some(id), format!("{}: missing", f.child_path("uuid")))),
    };
    if uuid.is_empty() {
        return Err((Some(id), format!("{}: empty", f.child_path("uuid"))));
    }
    if uuid.len() > MAX_UUID_LEN || uuid.chars().any(char::is_control) {
        return Err((
            Some(id),
            format!(
                "{}: not a usable credential (longer than {MAX_UUID_LEN} or has control characters)",
                f.child_path("uuid")
            ),
        ));
    }
    let limit = |key: &str| -> Result<u32, (Option<u32>, String)> {
        f.opt_uint(key, u64::from(u32::MAX))
            .map(|v| v.unwrap_or(0) as u32)
            .map_err(|e| (Some(id), format!("{}: {}", e.path, e.problem)))
    };
    Ok(PanelUser {
        id,
        uuid,
        speed_limit: limit("speed_limit")?,
        device_limit: limit("device_limit")?,
    })
}

/// Decoded `action=alivelist` reply: user id → online IP count across the panel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AliveList {
    pub counts: BTreeMap<u32, u32>,
}

impl AliveList {
    /// Decode an `alivelist` reply. Garbage is an error; callers treat any error as "empty"
    /// (device limiting fails open, spec §B.6).
    pub fn decode(bytes: &[u8]) -> Result<AliveList, DecodeError> {
        let v = fields::parse_json(bytes, "alive list")?;
        let bad = |path: String, problem: String| DecodeError {
            what: "alive list",
            path,
            problem,
        };
        let alive = match &v {
            Value::Object(m) => match m.get("alive") {
                Some(a) => a,
                None => {
                    return Err(bad(
                        "alive".into(),
                        "missing (expected {\"alive\": {...}})".into(),
                    ))
                }
            },
            // A whole-body PHP empty array.
            Value::Array(a) if a.is_empty() => return Ok(AliveList::default()),
            other => {
                return Err(bad(
                    "$".into(),
                    format!("expected an object with \"alive\", got {}", fields::show(other)),
                ))
            }
        };
        let map = match alive {
            Value::Null => return Ok(AliveList::default()),
            Value::Array(a) if a.is_empty() => return Ok(AliveList::default()),
            Value::Object(m) => m,
            other => {
                return Err(bad(
                    "alive".into(),
                    format!(
                        "expected an object of user id → count, got {}",
                        fields::show(other)
                    ),
                ))
            }
        };
        let mut counts = BTreeMap::new();
        for (k, val) in map {
            let path = format!("alive.{k}");
            let uid: u32 = k
                .trim()
                .parse()
                .map_err(|_| bad(path.clone(), "user id is not a decimal u32".into()))?;
            let n = fields::uint_of(val, u64::from(u32::MAX)).map_err(|p| bad(path.clone(), p))?;
            counts.insert(uid, n.unwrap_or(0) as u32);
        }
        Ok(AliveList { counts })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const U1: &str = "2b4f9e9c-1b5e-4d1c-9d6a-1f0c6b7a8e01";
    const U2: &str = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f";

    fn users(v: Value) -> UserList {
        UserList::decode(v.to_string().as_bytes()).unwrap()
    }

    /// Xboard: ints, nulls for "unlimited".
    #[test]
    fn xboard_user_list() {
        let l = users(json!({"users": [
            {"id": 1, "uuid": U1, "speed_limit": null, "device_limit": null},
            {"id": 2, "uuid": U2, "speed_limit": 100, "device_limit": 3}
        ]}));
        assert_eq!(l.skipped, vec![]);
        assert_eq!(
            l.users,
            vec![
                PanelUser {
                    id: 1,
                    uuid: U1.into(),
                    speed_limit: 0,
                    device_limit: 0
                },
                PanelUser {
                    id: 2,
                    uuid: U2.into(),
                    speed_limit: 100,
                    device_limit: 3
                },
            ]
        );
    }

    /// Hand-written panels: numeric strings, integral floats, extra fields ignored.
    #[test]
    fn custom_panel_numbers_as_strings() {
        let l = users(json!({"users": [
            {"id": "7", "uuid": U1, "speed_limit": "50", "device_limit": 2.0, "u": 1, "d": 2, "transfer_enable": 3}
        ]}));
        assert_eq!(
            l.users[0],
            PanelUser {
                id: 7,
                uuid: U1.into(),
                speed_limit: 50,
                device_limit: 2
            }
        );
    }

    #[test]
    fn null_and_php_empty_lists() {
        assert_eq!(users(json!({"users": null})), UserList::default());
        assert_eq!(users(json!({"users": []})), UserList::default());
        assert_eq!(users(json!({"users": {}})), UserList::default());
    }

    #[test]
    fn bad_users_are_skipped_with_a_reason() {
        let l = users(json!({"users": [
            {"id": 1, "uuid": U1},
            {"id": 2},
            {"id": 3, "uuid": ""},
            {"id": 4, "uuid": 1234},
            {"uuid": U2},
            {"id": 6, "uuid": U2, "speed_limit": 1.5},
            {"id": 7, "uuid": U2, "device_limit": -1},
            "garbage",
            {"id": 9, "uuid": U1},
            {"id": 10, "uuid": U2}
        ]}));
        assert_eq!(l.users.iter().map(|u| u.id).collect::<Vec<_>>(), vec![1, 10]);
        let skipped: Vec<(usize, Option<u32>)> = l.skipped.iter().map(|s| (s.index, s.id)).collect();
        assert_eq!(
            skipped,
            vec![
                (1, Some(2)),
                (2, Some(3)),
                (3, Some(4)),
                (4, None),
                (5, Some(6)),
                (6, Some(7)),
                (7, None),
                (8, Some(9))
            ]
        );
        assert!(
            l.skipped[0].reason.contains("users[1].uuid"),
            "{:?}",
            l.skipped[0]
        );
        assert!(l.skipped[3].reason.contains("users[4].id"), "{:?}", l.skipped[3]);
        assert!(
            l.skipped[4].reason.contains("users[5].speed_limit"),
            "{:?}",
            l.skipped[4]
        );
        assert!(
            l.skipped[5].reason.contains("users[6].device_limit"),
            "{:?}",
            l.skipped[5]
        );
        assert!(l.skipped[7].reason.contains("already used"), "{:?}", l.skipped[7]);
    }

    #[test]
    fn whole_list_errors() {
        for (body, path) in [
            (&b"{}"[..], "users"),
            (b"{\"users\": 5}", "users"),
            (b"\"x\"", "$"),
            (b"<html>502</html>", "$"),
        ] {
            let e = UserList::decode(body).unwrap_err();
            assert_eq!(e.path, path, "{e}");
        }
    }

    #[test]
    fn alive_list_shapes() {
        let a = AliveList::decode(br#"{"alive":{"26":2,"27":"1","28":3.0}}"#).unwrap();
        assert_eq!(a.counts, BTreeMap::from([(26, 2), (27, 1), (28, 3)]));
        assert_eq!(
            AliveList::decode(br#"{"alive":[]}"#).unwrap(),
            AliveList::default()
        );
        assert_eq!(
            AliveList::decode(br#"{"alive":null}"#).unwrap(),
            AliveList::default()
        );
        assert_eq!(AliveList::decode(b"[]").unwrap(), AliveList::default());
        for garbage in [
            &b"<html>"[..],
            b"{}",
            b"{\"alive\":{\"x\":1}}",
            b"{\"alive\":{\"1\":-1}}",
            b"{\"alive\":7}",
        ] {
            assert!(AliveList::decode(garbage).is_err());
        }
    }
}
