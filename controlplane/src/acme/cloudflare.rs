//! `Provider: cloudflare`: the TXT record through Cloudflare's API v4 (JSON): the zone found
//! by name (`GET /zones?name=`, from the record's name up), the record created
//! (`POST /zones/{zone}/dns_records`) and deleted (`DELETE /zones/{zone}/dns_records/{id}`).
//!
//! Credentials as lego reads them: an API token `CF_DNS_API_TOKEN` (`CLOUDFLARE_DNS_API_TOKEN`)
//! with DNS:Edit, optionally `CF_ZONE_API_TOKEN` (`CLOUDFLARE_ZONE_API_TOKEN`) with Zone:Read
//! for the zone lookup; or the global key `CF_API_EMAIL` + `CF_API_KEY` (`CLOUDFLARE_EMAIL` +
//! `CLOUDFLARE_API_KEY`). `CLOUDFLARE_TTL` (default 120), `CLOUDFLARE_BASE_URL` or v2sp's
//! `V2SP_DNS_API_URL` (default `https://api.cloudflare.com/client/v4`).

use hickory_proto::rr::Name;
use serde_json::{json, Value};
use ureq::Agent;

use super::client::{agent, read};
use super::dns01::{DnsProvider, Env, API_URL_KEY};

const DEFAULT_BASE: &str = "https://api.cloudflare.com/client/v4";

#[derive(Clone)]
enum Auth {
    Token(String),
    Key { email: String, key: String },
}

pub(crate) struct Cloudflare {
    agent: Agent,
    base: String,
    dns_auth: Auth,
    zone_auth: Auth,
    ttl: u64,
    /// (record name, value, zone id, record id) created by this order.
    records: Vec<(Name, String, String, String)>,
}

/// A Cloudflare id as it may go into a URL path (hex in practice).
fn safe_id(s: &str) -> Option<&str> {
    (!s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')).then_some(s)
}

impl Cloudflare {
    pub(crate) fn from_env(env: &Env<'_>, _root_ca: &str) -> Result<Cloudflare, String> {
        const P: &str = "cloudflare";
        let token = env.get(&["CF_DNS_API_TOKEN", "CLOUDFLARE_DNS_API_TOKEN"])?;
        let zone_token = env.get(&["CF_ZONE_API_TOKEN", "CLOUDFLARE_ZONE_API_TOKEN"])?;
        let email = env.get(&["CF_API_EMAIL", "CLOUDFLARE_EMAIL"])?;
        let key = env.get(&["CF_API_KEY", "CLOUDFLARE_API_KEY"])?;
        let (dns_auth, zone_auth) = match (token, zone_token, email, key) {
            (Some(t), z, _, _) => {
                let z = z.unwrap_or_else(|| t.clone());
                (Auth::Token(t), Auth::Token(z))
            }
            (None, Some(_), _, _) => {
                return Err(format!("{P}: CF_ZONE_API_TOKEN is set but CF_DNS_API_TOKEN is not"))
            }
            (None, None, Some(email), Some(key)) => {
                let a = Auth::Key { email, key };
                (a.clone(), a)
            }
            (None, None, None, Some(_)) => return Err(format!("{P}: CF_API_KEY needs CF_API_EMAIL")),
            (None, None, Some(_), None) => return Err(format!("{P}: CF_API_EMAIL needs CF_API_KEY")),
            (None, None, None, None) => {
                return Err(format!(
                    "{P}: DNSEnv needs CF_DNS_API_TOKEN (or CLOUDFLARE_DNS_API_TOKEN), or CF_API_EMAIL and CF_API_KEY"
                ))
            }
        };
        let base = env
            .get(&[API_URL_KEY, "CLOUDFLARE_BASE_URL"])?
            .unwrap_or_else(|| DEFAULT_BASE.into())
            .trim_end_matches('/')
            .to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(format!("{P}: the API URL {base:?} is not http(s)"));
        }
        Ok(Cloudflare {
            agent: agent(None).map_err(|e| e.to_string())?,
            base,
            dns_auth,
            zone_auth,
            ttl: env.secs(&["CLOUDFLARE_TTL"], 120)?.as_secs().max(120),
            records: Vec::new(),
        })
    }

    /// One API call; the `result` of a `success: true` reply.
    fn call(&self, method: &str, path: &str, auth: &Auth, body: Option<&Value>) -> Result<Value, String> {
        const STEP: &str = "cloudflare API";
        let url = format!("{}{path}", self.base);
        let with_auth = |r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match auth {
            Auth::Token(t) => r.header("authorization", format!("Bearer {t}")),
            Auth::Key { email, key } => r.header("x-auth-email", email).header("x-auth-key", key),
        };
        let resp = match (method, body) {
            ("GET", _) => with_auth(self.agent.get(&url)).call(),
            ("DELETE", _) => with_auth(self.agent.delete(&url)).call(),
            (_, b) => {
                let r = self.agent.post(&url).header("content-type", "application/json");
                let r = match auth {
                    Auth::Token(t) => r.header("authorization", format!("Bearer {t}")),
                    Auth::Key { email, key } => r.header("x-auth-email", email).header("x-auth-key", key),
                };
                r.send(b.map(Value::to_string).unwrap_or_default().as_bytes())
            }
        };
        let reply = read(STEP, resp).map_err(|e| e.detail)?;
        let v: Value = serde_json::from_slice(&reply.body).map_err(|_| {
            format!(
                "{method} {path}: HTTP {} with a body that is not JSON",
                reply.status
            )
        })?;
        if reply.status >= 400 || v.get("success").and_then(Value::as_bool) != Some(true) {
            let errors: Vec<String> = v
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .take(4)
                .map(|e| {
                    format!(
                        "{} {}",
                        e.get("code").map(Value::to_string).unwrap_or_default(),
                        e.get("message").and_then(Value::as_str).unwrap_or("")
                    )
                })
                .collect();
            return Err(format!(
                "{method} {path}: HTTP {}: {}",
                reply.status,
                if errors.is_empty() {
                    "no error given".into()
                } else {
                    errors.join("; ")
                }
            ));
        }
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    }

    /// The id of the zone holding `fqdn`: the longest of its parent names Cloudflare knows.
    fn zone_id(&self, fqdn: &Name) -> Result<String, String> {
        let mut n = fqdn.base_name();
        // Bounded: at most 10 lookups, never the root or a TLD alone.
        for _ in 0..10 {
            if n.num_labels() < 2 {
                break;
            }
            let name = n.to_ascii();
            let name = name.trim_end_matches('.');
            let r = self.call("GET", &format!("/zones?name={name}"), &self.zone_auth, None)?;
            if let Some(id) = r
                .as_array()
                .and_then(|a| a.first())
                .and_then(|z| z.get("id"))
                .and_then(Value::as_str)
            {
                return safe_id(id)
                    .map(str::to_string)
                    .ok_or_else(|| format!("zone {name}: unusable id {id:?}"));
            }
            n = n.base_name();
        }
        Err(format!("no Cloudflare zone of this account holds {fqdn}"))
    }
}

impl DnsProvider for Cloudflare {
    fn present(&mut self, fqdn: &Name, value: &str) -> Result<(), String> {
        let zone = self.zone_id(fqdn)?;
        let name = fqdn.to_ascii().trim_end_matches('.').to_string();
        let body = json!({"type": "TXT", "name": name, "content": value, "ttl": self.ttl});
        let r = self.call(
            "POST",
            &format!("/zones/{zone}/dns_records"),
            &self.dns_auth,
            Some(&body),
        )?;
        let id = r
            .get("id")
            .and_then(Value::as_str)
            .and_then(safe_id)
            .ok_or("the created record has no usable id")?;
        self.records
            .push((fqdn.clone(), value.to_string(), zone, id.to_string()));
        Ok(())
    }

    fn cleanup(&mut self, fqdn: &Name, value: &str) -> Result<(), String> {
        let Some(i) = self.records.iter().position(|r| &r.0 == fqdn && r.1 == value) else {
            return Ok(());
        };
        let (_, _, zone, id) = self.records.swap_remove(i);
        self.call(
            "DELETE",
            &format!("/zones/{zone}/dns_records/{id}"),
            &self.dns_auth,
            None,
        )
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::collections::BTreeMap;

    fn try_env(pairs: &[(&str, &str)]) -> Result<Cloudflare, String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Cloudflare::from_env(&Env::new(&map), "")
    }

    #[test]
    fn credentials_as_lego_names_them() {
        let e = try_env(&[]).err().unwrap();
        assert!(
            e.contains("CF_DNS_API_TOKEN") && e.contains("CF_API_EMAIL"),
            "{e}"
        );
        assert!(try_env(&[("CF_API_KEY", "k")])
            .err()
            .unwrap()
            .contains("needs CF_API_EMAIL"));
        assert!(try_env(&[("CLOUDFLARE_ZONE_API_TOKEN", "z")])
            .err()
            .unwrap()
            .contains("CF_DNS_API_TOKEN is not"));
        let c = try_env(&[("CLOUDFLARE_DNS_API_TOKEN", "t")]).unwrap();
        assert!(matches!(&c.zone_auth, Auth::Token(t) if t == "t"));
        assert_eq!(c.base, DEFAULT_BASE);
        let c = try_env(&[
            ("CLOUDFLARE_EMAIL", "a@b"),
            ("CLOUDFLARE_API_KEY", "k"),
            ("CLOUDFLARE_BASE_URL", "http://127.0.0.1:9/client/v4/"),
            ("CLOUDFLARE_TTL", "60"),
        ])
        .unwrap();
        assert!(matches!(&c.dns_auth, Auth::Key { email, key } if email == "a@b" && key == "k"));
        assert_eq!(c.base, "http://127.0.0.1:9/client/v4");
        assert_eq!(c.ttl, 120, "Cloudflare's minimum");
        assert!(try_env(&[("CF_DNS_API_TOKEN", "t"), ("V2SP_DNS_API_URL", "ftp://x")]).is_err());
    }
}
