//! Pure functions from "what the panel said" + "what the local config says" to what the data
//! plane serves. No I/O: tested directly.

use v2sp_shared::config::NodeEntry;
use v2sp_shared::cred::{secret_for, CredKind};
use v2sp_shared::dpconfig::{NodeConfig, Protocol, ShadowsocksSettings};
use v2sp_shared::panel::{NodeInfo, PanelUser};
use v2sp_shared::shm::UserEntry;

/// Why a node cannot be served with what the panel sent (the panel's or the operator's fault).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("node type unknown: set NodeType locally or have the panel send node_type/protocol")]
    NoType,
    #[error("node type {0:?} is not supported")]
    Unsupported(String),
    #[error("panel sent server_port 0")]
    NoPort,
    #[error("shadowsocks node without a cipher")]
    NoCipher,
    #[error("shadowsocks cipher {0:?} is not supported")]
    BadCipher(String),
    #[error("cipher {0} needs a server_key (base64 PSK) from the panel")]
    NoServerKey(String),
    #[error("this build of v2sp does not serve {0} yet")]
    NotServedYet(&'static str),
}

/// Canonical cipher name and credential kind.
pub fn ss_cipher(name: &str) -> Option<(&'static str, CredKind)> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "aes-128-gcm" | "aead_aes_128_gcm" => ("aes-128-gcm", CredKind::SsLegacy16),
        "aes-256-gcm" | "aead_aes_256_gcm" => ("aes-256-gcm", CredKind::SsLegacy32),
        "chacha20-ietf-poly1305" | "chacha20-poly1305" | "aead_chacha20_poly1305" => {
            ("chacha20-ietf-poly1305", CredKind::SsLegacy32)
        }
        "2022-blake3-aes-128-gcm" => ("2022-blake3-aes-128-gcm", CredKind::Ss2022Psk16),
        "2022-blake3-aes-256-gcm" => ("2022-blake3-aes-256-gcm", CredKind::Ss2022Psk32),
        "2022-blake3-chacha20-poly1305" => ("2022-blake3-chacha20-poly1305", CredKind::Ss2022Psk32),
        _ => return None,
    })
}

/// The protocol a node speaks: local `NodeType` wins, else the panel's `node_type`/`protocol`.
pub fn node_protocol(entry: &NodeEntry, info: &NodeInfo) -> Result<Protocol, BuildError> {
    let t = if entry.node_type.trim().is_empty() {
        info.node_type.clone().ok_or(BuildError::NoType)?
    } else {
        entry.node_type.clone()
    };
    Protocol::parse(&t).ok_or(BuildError::Unsupported(t))
}

/// Build the data-plane config of one node.
pub fn node_config(
    slot: u16,
    tag: &str,
    entry: &NodeEntry,
    info: &NodeInfo,
) -> Result<NodeConfig, BuildError> {
    let protocol = node_protocol(entry, info)?;
    if info.server_port == 0 {
        return Err(BuildError::NoPort);
    }
    let (cred_kind, shadowsocks) = match protocol {
        Protocol::Shadowsocks => {
            let raw = info.cipher.as_deref().ok_or(BuildError::NoCipher)?;
            let (cipher, kind) = ss_cipher(raw).ok_or_else(|| BuildError::BadCipher(raw.to_string()))?;
            let server_key = info.server_key.clone().unwrap_or_default();
            // The AES 2022 ciphers carry users in identity headers under the server PSK; the
            // chacha variant has no identity headers (users are tried by their own keys), and
            // Xboard sends `server_key: null` for it.
            if cipher.starts_with("2022-blake3-aes") && server_key.trim().is_empty() {
                return Err(BuildError::NoServerKey(cipher.to_string()));
            }
            let ss = ShadowsocksSettings {
                cipher: cipher.to_string(),
                server_key: server_key.trim().to_string(),
                replay_check: !entry.disable_iv_check,
            };
            (kind, Some(ss))
        }
        Protocol::Vless => (CredKind::VlessUuid, None),
        Protocol::Vmess => (CredKind::VmessUuid, None),
        Protocol::Trojan => (CredKind::TrojanSha224, None),
        Protocol::Hysteria2 => return Err(BuildError::NotServedYet("hysteria2")),
        Protocol::Anytls => return Err(BuildError::NotServedYet("anytls")),
    };
    if !matches!(protocol, Protocol::Shadowsocks) {
        // The TLS-family protocols land with their own issue; refuse clearly rather than
        // opening a port that speaks nothing.
        return Err(BuildError::NotServedYet(protocol.as_str()));
    }
    let send_ip = if entry.send_ip.is_unspecified() {
        String::new()
    } else {
        entry.send_ip.to_string()
    };
    Ok(NodeConfig {
        slot,
        tag: tag.to_string(),
        listen_ip: entry.listen_ip.to_string(),
        port: info.server_port,
        protocol,
        cred_kind,
        speed_limit_mbps: u32::try_from(entry.limit.speed_limit_mbps).unwrap_or(u32::MAX),
        proxy_protocol: entry.enable_proxy_protocol,
        send_ip,
        dns_strategy: entry.outbound_domain_strategy().to_string(),
        shadowsocks,
        transport: serde_json::json!({
            "network": info.network,
            "network_settings": info.network_settings,
        }),
    })
}

/// Panel users → table entries. Users whose uuid cannot make a credential are skipped and
/// returned with the reason (logged by the caller; one bad user never blocks the others).
pub fn user_entries(kind: CredKind, users: &[PanelUser]) -> (Vec<UserEntry>, Vec<(u32, String)>) {
    let mut ok = Vec::with_capacity(users.len());
    let mut bad = Vec::new();
    for u in users {
        match secret_for(kind, &u.uuid) {
            Ok(secret) => ok.push(UserEntry {
                user_id: u.id,
                secret,
                speed_limit_mbps: u.speed_limit,
                device_limit: u.device_limit,
                alive_elsewhere: 0,
            }),
            Err(e) => bad.push((u.id, e.to_string())),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    fn entry(node_type: &str) -> NodeEntry {
        let text = format!(
            r#"{{"Nodes":[{{"ApiHost":"http://127.0.0.1:1","ApiKey":"k","NodeID":1,"NodeType":"{node_type}","LimitConfig":{{"SpeedLimit":50}}}}]}}"#
        );
        v2sp_shared::config::parse_str(&text, Path::new("t.json"))
            .unwrap()
            .config
            .nodes
            .remove(0)
    }

    fn info(json: &str) -> NodeInfo {
        NodeInfo::decode(json.as_bytes()).unwrap()
    }

    #[test]
    fn shadowsocks_2022_from_xboard_reply() {
        let i = info(
            r#"{"protocol":"shadowsocks","server_port":"8388","cipher":"2022-blake3-aes-128-gcm","server_key":"AAAAAAAAAAAAAAAAAAAAAA=="}"#,
        );
        let c = node_config(3, "t", &entry(""), &i).unwrap();
        assert_eq!(c.port, 8388);
        assert_eq!(c.cred_kind, CredKind::Ss2022Psk16);
        assert_eq!(c.speed_limit_mbps, 50);
        assert_eq!(c.shadowsocks.unwrap().server_key, "AAAAAAAAAAAAAAAAAAAAAA==");
    }

    #[test]
    fn aes_2022_without_server_key_is_a_clear_error_chacha_is_fine() {
        let i = info(r#"{"server_port":1,"cipher":"2022-blake3-aes-256-gcm","server_key":null}"#);
        assert_eq!(
            node_config(0, "t", &entry("shadowsocks"), &i),
            Err(BuildError::NoServerKey("2022-blake3-aes-256-gcm".into()))
        );
        // Xboard's reply for the chacha variant.
        let i = info(r#"{"server_port":1,"cipher":"2022-blake3-chacha20-poly1305","server_key":null}"#);
        assert!(node_config(0, "t", &entry("shadowsocks"), &i).is_ok());
    }

    #[test]
    fn aliases_and_unknown_ciphers() {
        assert_eq!(ss_cipher("AEAD_AES_128_GCM").unwrap().0, "aes-128-gcm");
        assert!(ss_cipher("rc4-md5").is_none());
        let i = info(r#"{"server_port":1,"cipher":"rc4-md5"}"#);
        assert!(matches!(
            node_config(0, "t", &entry("shadowsocks"), &i),
            Err(BuildError::BadCipher(_))
        ));
    }

    #[test]
    fn users_with_bad_uuids_are_skipped_not_fatal() {
        let users = vec![
            PanelUser {
                id: 1,
                uuid: "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37".into(),
                speed_limit: 0,
                device_limit: 2,
            },
            PanelUser {
                id: 2,
                uuid: "short".into(),
                speed_limit: 0,
                device_limit: 0,
            },
        ];
        let (ok, bad) = user_entries(CredKind::Ss2022Psk32, &users);
        assert_eq!(ok.len(), 1);
        assert_eq!(bad[0].0, 2);
    }
}
