//! `Provider: alidns`: the TXT record through Alibaba Cloud DNS's RPC API (version
//! 2015-01-09): the zone from `DescribeDomains` (the longest domain of the account that the
//! record's name is under), `AddDomainRecord`, `DeleteDomainRecord`. Requests are GETs signed
//! with Alibaba Cloud's RPC signature: HMAC-SHA1, keyed with `AccessKeySecret + "&"`, over
//! `GET&%2F&` + the percent-encoded canonical query (parameters sorted by name, names and
//! values percent-encoded per RFC 3986, `~` kept).
//!
//! Credentials as lego reads them: `ALICLOUD_ACCESS_KEY`, `ALICLOUD_SECRET_KEY`, optionally
//! `ALICLOUD_SECURITY_TOKEN` (STS); `ALICLOUD_TTL` (default 600). `ALICLOUD_REGION_ID` is
//! accepted and checked but the public endpoint `alidns.aliyuncs.com` serves every region
//! (`V2SP_DNS_API_URL` replaces it). `ALICLOUD_RAM_ROLE` (instance metadata) is not supported.

use std::collections::BTreeMap;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hickory_proto::rr::Name;
use serde_json::Value;
use ureq::Agent;

use super::client::{agent, read};
use super::dns01::{DnsProvider, Env, API_URL_KEY};

const DEFAULT_ENDPOINT: &str = "https://alidns.aliyuncs.com/";
const API_VERSION: &str = "2015-01-09";

pub(crate) struct Alidns {
    agent: Agent,
    endpoint: String,
    access_key: String,
    secret: String,
    security_token: Option<String>,
    ttl: u64,
    /// (record name, value, record id) created by this order.
    records: Vec<(Name, String, String)>,
}

/// RFC 3986 percent-encoding as Alibaba Cloud signs it: unreserved characters kept, every
/// other byte `%XX` (upper case).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical query string (sorted by name) and its signature for `secret`.
pub(crate) fn sign(params: &BTreeMap<String, String>, secret: &str) -> (String, String) {
    let canonical = params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let to_sign = format!("GET&{}&{}", percent_encode("/"), percent_encode(&canonical));
    let key = hmac::Key::new(
        hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        format!("{secret}&").as_bytes(),
    );
    let sig = STANDARD.encode(hmac::sign(&key, to_sign.as_bytes()).as_ref());
    (canonical, sig)
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) of a Unix time.
fn iso8601(unix: i64) -> String {
    let (y, m, d) = super::cert::civil_from_days(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

impl Alidns {
    pub(crate) fn from_env(env: &Env<'_>, _root_ca: &str) -> Result<Alidns, String> {
        const P: &str = "alidns";
        let key = env.get(&["ALICLOUD_ACCESS_KEY"])?;
        let secret = env.get(&["ALICLOUD_SECRET_KEY"])?;
        let (access_key, secret) = match (key, secret) {
            (Some(k), Some(s)) => (k, s),
            (None, None) if env.get(&["ALICLOUD_RAM_ROLE"])?.is_some() => {
                return Err(format!(
                    "{P}: ALICLOUD_RAM_ROLE is not supported by v2sp; set ALICLOUD_ACCESS_KEY and ALICLOUD_SECRET_KEY"
                ))
            }
            (None, _) => return Err(format!("{P}: DNSEnv needs ALICLOUD_ACCESS_KEY")),
            (Some(_), None) => return Err(format!("{P}: DNSEnv needs ALICLOUD_SECRET_KEY")),
        };
        if let Some(r) = env.get(&["ALICLOUD_REGION_ID"])? {
            if r.is_empty() || r.len() > 64 || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!("{P}: ALICLOUD_REGION_ID {r:?} is not a region id"));
            }
        }
        let endpoint = env
            .get(&[API_URL_KEY])?
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) || endpoint.contains('?') {
            return Err(format!(
                "{P}: the API URL {endpoint:?} is not an http(s) endpoint"
            ));
        }
        Ok(Alidns {
            agent: agent(None).map_err(|e| e.to_string())?,
            endpoint,
            access_key,
            secret,
            security_token: env.get(&["ALICLOUD_SECURITY_TOKEN"])?,
            ttl: env.secs(&["ALICLOUD_TTL"], 600)?.as_secs(),
            records: Vec::new(),
        })
    }

    /// One signed call of `action` with its own parameters.
    fn call(&self, action: &str, own: &[(&str, String)]) -> Result<Value, String> {
        let mut p: BTreeMap<String, String> = own.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        for (k, v) in [
            ("AccessKeyId", self.access_key.clone()),
            ("Action", action.to_string()),
            ("Format", "JSON".into()),
            ("SignatureMethod", "HMAC-SHA1".into()),
            ("SignatureNonce", uuid::Uuid::new_v4().to_string()),
            ("SignatureVersion", "1.0".into()),
            ("Timestamp", iso8601(super::cert::now_unix())),
            ("Version", API_VERSION.into()),
        ] {
            p.insert(k.into(), v);
        }
        if let Some(t) = &self.security_token {
            p.insert("SecurityToken".into(), t.clone());
        }
        let (query, sig) = sign(&p, &self.secret);
        let url = format!("{}?{query}&Signature={}", self.endpoint, percent_encode(&sig));
        // The URL carries the STS token (when set): an error that quotes it must not log it.
        let redact = |e: String| match &self.security_token {
            Some(t) => e.replace(t.as_str(), "***").replace(&percent_encode(t), "***"),
            None => e,
        };
        let reply = read("alidns API", self.agent.get(&url).call()).map_err(|e| redact(e.detail))?;
        let v: Value = serde_json::from_slice(&reply.body)
            .map_err(|_| format!("{action}: HTTP {} with a body that is not JSON", reply.status))?;
        if reply.status >= 400 || v.get("Code").is_some() {
            return Err(format!(
                "{action}: HTTP {}: {} ({})",
                reply.status,
                v.get("Code").and_then(Value::as_str).unwrap_or("no code"),
                v.get("Message").and_then(Value::as_str).unwrap_or("no message")
            ));
        }
        Ok(v)
    }

    /// The account's domain that holds `fqdn` (the longest match), from `DescribeDomains`.
    fn zone(&self, fqdn: &Name) -> Result<Name, String> {
        let mut best: Option<Name> = None;
        // Bounded: 10 pages of 100 domains.
        for page in 1..=10u32 {
            let v = self.call(
                "DescribeDomains",
                &[("PageNumber", page.to_string()), ("PageSize", "100".into())],
            )?;
            let domains: Vec<&str> = v
                .pointer("/Domains/Domain")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|d| d.get("DomainName").and_then(Value::as_str))
                .collect();
            for d in &domains {
                if let Ok(n) = super::dnswire::name(d) {
                    if n.zone_of(fqdn) && best.as_ref().is_none_or(|b| n.num_labels() > b.num_labels()) {
                        best = Some(n);
                    }
                }
            }
            let total = v.get("TotalCount").and_then(Value::as_u64).unwrap_or(0);
            if domains.is_empty() || u64::from(page) * 100 >= total {
                break;
            }
        }
        best.ok_or_else(|| format!("no Alibaba Cloud DNS domain of this account holds {fqdn}"))
    }
}

impl DnsProvider for Alidns {
    fn present(&mut self, fqdn: &Name, value: &str) -> Result<(), String> {
        let zone = self.zone(fqdn)?;
        let zone_text = zone.to_ascii().trim_end_matches('.').to_string();
        let name = fqdn.to_ascii().trim_end_matches('.').to_string();
        // RR: the record's name relative to the domain.
        let rr = name
            .strip_suffix(&zone_text)
            .map(|r| r.trim_end_matches('.'))
            .filter(|r| !r.is_empty())
            .unwrap_or("@")
            .to_string();
        let v = self.call(
            "AddDomainRecord",
            &[
                ("DomainName", zone_text),
                ("RR", rr),
                ("Type", "TXT".into()),
                ("Value", value.to_string()),
                ("TTL", self.ttl.to_string()),
            ],
        )?;
        let id = v
            .get("RecordId")
            .and_then(|i| {
                i.as_str()
                    .map(str::to_string)
                    .or_else(|| i.as_u64().map(|n| n.to_string()))
            })
            .filter(|i| !i.is_empty() && i.len() <= 64)
            .ok_or("the created record has no RecordId")?;
        self.records.push((fqdn.clone(), value.to_string(), id));
        Ok(())
    }

    fn cleanup(&mut self, fqdn: &Name, value: &str) -> Result<(), String> {
        let Some(i) = self.records.iter().position(|r| &r.0 == fqdn && r.1 == value) else {
            return Ok(());
        };
        let (_, _, id) = self.records.swap_remove(i);
        self.call("DeleteDomainRecord", &[("RecordId", id)]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// Alibaba Cloud's documented example of the RPC signature (ECS `DescribeRegions`,
    /// AccessKeySecret `testsecret`).
    #[test]
    fn signature_known_answer_from_alibaba_cloud_docs() {
        let p: BTreeMap<String, String> = [
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (query, sig) = sign(&p, "testsecret");
        assert_eq!(
            query,
            "AccessKeyId=testid&Action=DescribeRegions&Format=XML&SignatureMethod=HMAC-SHA1\
             &SignatureNonce=3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf&SignatureVersion=1.0\
             &Timestamp=2016-02-23T12%3A46%3A24Z&Version=2014-05-26"
        );
        assert_eq!(sig, "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
    }

    #[test]
    fn encoding_and_timestamps() {
        assert_eq!(percent_encode("a b*c~d/é"), "a%20b%2Ac~d%2F%C3%A9");
        assert_eq!(iso8601(1_456_231_584), "2016-02-23T12:46:24Z");
    }

    #[test]
    fn credentials_as_lego_names_them() {
        let env = |pairs: &[(&str, &str)]| -> Result<Alidns, String> {
            let map: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Alidns::from_env(&Env::new(&map), "")
        };
        assert!(env(&[]).err().unwrap().contains("ALICLOUD_ACCESS_KEY"));
        assert!(env(&[("ALICLOUD_ACCESS_KEY", "k")])
            .err()
            .unwrap()
            .contains("ALICLOUD_SECRET_KEY"));
        assert!(env(&[("ALICLOUD_RAM_ROLE", "r")])
            .err()
            .unwrap()
            .contains("not supported"));
        let bad_region = [
            ("ALICLOUD_ACCESS_KEY", "k"),
            ("ALICLOUD_SECRET_KEY", "s"),
            ("ALICLOUD_REGION_ID", "x/y"),
        ];
        assert!(env(&bad_region).err().unwrap().contains("region"));
        let a = env(&[("ALICLOUD_ACCESS_KEY", "k"), ("ALICLOUD_SECRET_KEY", "s")]).unwrap();
        assert_eq!((a.endpoint.as_str(), a.ttl), (DEFAULT_ENDPOINT, 600));
    }
}
