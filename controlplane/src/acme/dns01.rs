//! DNS-01 (RFC 8555 §8.4): the TXT record `_acme-challenge.<domain>` =
//! base64url(SHA-256(key authorization)), put there by a [`DnsProvider`] and seen at the
//! zone's servers before the CA is asked to validate.
//!
//! Providers (`Provider`), configured by `DNSEnv` with the variable names lego reads (so an
//! operator's existing settings carry over; each also read from the process environment, and
//! `NAME_FILE` = a file holding the value):
//!
//! - `rfc2136`: dynamic update (RFC 2136) at `RFC2136_NAMESERVER`, TSIG-signed with
//!   `RFC2136_TSIG_KEY`/`RFC2136_TSIG_SECRET`/`RFC2136_TSIG_ALGORITHM` (default `hmac-sha1.`,
//!   as lego; sha256/384/512 too) or `RFC2136_TSIG_FILE` (a `tsig-keygen` key file).
//! - `cloudflare`: API v4 ([`super::cloudflare`]).
//! - `alidns`: Alibaba Cloud DNS ([`super::alidns`]).
//!
//! Propagation: the record must be visible at `V2SP_DNS_RESOLVER` (v2sp extension, a
//! `host:port` DNS server, for split-horizon setups and tests), else at RFC 2136's own name
//! server, else at every authoritative server of the zone (found through the system
//! resolver), polled every `<P>_POLLING_INTERVAL` up to `<P>_PROPAGATION_TIMEOUT` seconds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::rr::Name;
use sha2::{Digest as _, Sha256};
use v2sp_shared::config::CertConfig;

use super::client::{fail, AcmeError};
use super::dnswire::{self, Change, TsigKey};
use super::jws::b64;
use super::solver::{Presented, Solver};

/// v2sp extension in `DNSEnv`: the DNS server (`host:port`) asked whether the TXT record is
/// visible, instead of the zone's authoritative servers.
pub(crate) const RESOLVER_KEY: &str = "V2SP_DNS_RESOLVER";
/// v2sp extension in `DNSEnv`: the base URL of the provider's HTTP API (cloudflare, alidns),
/// for a local or proxied endpoint; lego's `CLOUDFLARE_BASE_URL` is read too.
pub(crate) const API_URL_KEY: &str = "V2SP_DNS_API_URL";
/// The largest `NAME_FILE` read.
const MAX_ENV_FILE: u64 = 64 * 1024;

/// `DNSEnv`, with the process environment and `_FILE` variables behind it.
pub(crate) struct Env<'a> {
    map: &'a BTreeMap<String, String>,
}

impl<'a> Env<'a> {
    pub(crate) fn new(map: &'a BTreeMap<String, String>) -> Env<'a> {
        Env { map }
    }

    /// The first of `names` that is set (non-empty): `DNSEnv[name]`, `DNSEnv[name_FILE]`'s
    /// file, then the same in the process environment.
    pub(crate) fn get(&self, names: &[&str]) -> Result<Option<String>, String> {
        for n in names {
            let file_key = format!("{n}_FILE");
            let direct = self
                .map
                .get(*n)
                .cloned()
                .or_else(|| std::env::var(n).ok())
                .filter(|v| !v.trim().is_empty());
            if let Some(v) = direct {
                return Ok(Some(v.trim().to_string()));
            }
            let file = self
                .map
                .get(&file_key)
                .cloned()
                .or_else(|| std::env::var(&file_key).ok())
                .filter(|v| !v.trim().is_empty());
            if let Some(path) = file {
                use std::io::Read as _;
                let mut text = String::new();
                std::fs::File::open(path.trim())
                    .and_then(|f| f.take(MAX_ENV_FILE).read_to_string(&mut text))
                    .map_err(|e| format!("{file_key} ({}): {e}", path.trim()))?;
                if !text.trim().is_empty() {
                    return Ok(Some(text.trim().to_string()));
                }
            }
        }
        Ok(None)
    }

    /// As [`Env::get`], an error naming the variables when none is set.
    pub(crate) fn required(&self, provider: &str, names: &[&str]) -> Result<String, String> {
        self.get(names)?.ok_or_else(|| match names.split_first() {
            Some((first, [])) => format!("{provider}: DNSEnv needs {first}"),
            Some((first, rest)) => format!("{provider}: DNSEnv needs {first} (or {})", rest.join(", ")),
            None => format!("{provider}: DNSEnv is missing a setting"),
        })
    }

    /// Whole seconds from the first of `names` that is set, else `default`.
    pub(crate) fn secs(&self, names: &[&str], default: u64) -> Result<Duration, String> {
        match self.get(names)? {
            None => Ok(Duration::from_secs(default)),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|s| *s <= 86_400)
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    format!(
                        "{}: expected whole seconds, found {v:?}",
                        names.first().unwrap_or(&"")
                    )
                }),
        }
    }
}

/// Puts and removes the challenge TXT record.
pub(crate) trait DnsProvider {
    /// Creates the TXT record `fqdn` = `value` (other TXT records there are left alone).
    fn present(&mut self, fqdn: &Name, value: &str) -> Result<(), String>;
    /// Removes that record.
    fn cleanup(&mut self, fqdn: &Name, value: &str) -> Result<(), String>;
    /// A server that shows the record as soon as `present` returns (RFC 2136's primary).
    fn primary(&self) -> Option<SocketAddr> {
        None
    }
}

/// How long and how often the record's visibility is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Propagation {
    pub timeout: Duration,
    pub interval: Duration,
}

/// The provider named by `Provider`, configured from `DNSEnv` (errors name what is missing).
pub(crate) fn provider(cfg: &CertConfig) -> Result<(Box<dyn DnsProvider>, Propagation), String> {
    let env = Env::new(&cfg.dns_env);
    let name = cfg.provider.trim().to_ascii_lowercase();
    let prop = |prefix: &str, timeout: u64| -> Result<Propagation, String> {
        Ok(Propagation {
            timeout: env.secs(&[&format!("{prefix}_PROPAGATION_TIMEOUT")], timeout)?,
            interval: env
                .secs(&[&format!("{prefix}_POLLING_INTERVAL")], 2)?
                .max(Duration::from_millis(200)),
        })
    };
    match name.as_str() {
        "rfc2136" => Ok((Box::new(Rfc2136::from_env(&env)?), prop("RFC2136", 60)?)),
        "cloudflare" => Ok((
            Box::new(super::cloudflare::Cloudflare::from_env(
                &env,
                cfg.acme_root_ca.trim(),
            )?),
            prop("CLOUDFLARE", 120)?,
        )),
        "alidns" => Ok((
            Box::new(super::alidns::Alidns::from_env(&env, cfg.acme_root_ca.trim())?),
            prop("ALICLOUD", 60)?,
        )),
        "" => Err("CertMode dns needs Provider (cloudflare, alidns or rfc2136)".into()),
        other => Err(format!(
            "DNS provider {other:?} is not supported by v2sp (cloudflare, alidns, rfc2136)"
        )),
    }
}

/// `_acme-challenge.<domain>`.
pub(crate) fn challenge_name(domain: &str) -> Result<Name, String> {
    dnswire::name(&format!(
        "_acme-challenge.{}",
        domain.trim().trim_start_matches("*.")
    ))
}

/// The TXT value for a key authorization.
pub(crate) fn txt_value(key_authorization: &str) -> String {
    b64(&Sha256::digest(key_authorization.as_bytes()))
}

/// The DNS-01 solver.
pub(crate) struct Dns01 {
    provider: Box<dyn DnsProvider>,
    propagation: Propagation,
    /// `V2SP_DNS_RESOLVER`.
    check_at: Option<SocketAddr>,
    presented: Vec<(Name, String)>,
}

const STEP: &str = "dns-01 record";

impl Dns01 {
    pub(crate) fn new(cfg: &CertConfig) -> Result<Dns01, AcmeError> {
        const CONFIG: &str = "DNS provider";
        let (provider, propagation) = provider(cfg).map_err(|e| fail(CONFIG, e))?;
        let check_at = Env::new(&cfg.dns_env)
            .get(&[RESOLVER_KEY])
            .map_err(|e| fail(CONFIG, e))?
            .map(|s| dnswire::server_addr(&s))
            .transpose()
            .map_err(|e| fail(CONFIG, format!("{RESOLVER_KEY}: {e}")))?;
        Ok(Dns01 {
            provider,
            propagation,
            check_at,
            presented: Vec::new(),
        })
    }

    pub(crate) fn propagation(&self) -> Propagation {
        self.propagation
    }

    /// The servers that must show the record.
    fn servers(&self, fqdn: &Name) -> Result<Vec<SocketAddr>, String> {
        if let Some(s) = self.check_at.or_else(|| self.provider.primary()) {
            return Ok(vec![s]);
        }
        let resolver = dnswire::system_resolver()?;
        let zone = dnswire::find_zone(resolver, fqdn, true, QUERY_TIMEOUT)?;
        dnswire::zone_servers(resolver, &zone, QUERY_TIMEOUT)
    }
}

/// Each DNS query's own limit.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

impl Solver for Dns01 {
    fn challenge_type(&self) -> &'static str {
        "dns-01"
    }

    fn present(&mut self, p: &Presented<'_>) -> Result<(), AcmeError> {
        let fqdn = challenge_name(p.domain).map_err(|e| fail(STEP, e))?;
        let value = txt_value(p.key_authorization);
        self.provider
            .present(&fqdn, &value)
            .map_err(|e| fail(STEP, format!("creating {fqdn} TXT: {e}")))?;
        tracing::info!(record = %fqdn, "ACME: DNS-01 TXT record created");
        self.presented.push((fqdn, value));
        Ok(())
    }

    fn wait_ready(&mut self, deadline: Instant) -> Result<(), AcmeError> {
        const WAIT: &str = "dns-01 propagation";
        let until = deadline.min(Instant::now() + self.propagation.timeout);
        let mut pending: Vec<(Name, String, Vec<SocketAddr>)> = Vec::new();
        for (fqdn, value) in &self.presented {
            let servers = self.servers(fqdn).map_err(|e| fail(WAIT, e))?;
            pending.push((fqdn.clone(), value.clone(), servers));
        }
        let mut last_error = String::new();
        loop {
            pending.retain_mut(|(fqdn, value, servers)| {
                servers.retain(|s| match dnswire::txt_values(*s, fqdn, QUERY_TIMEOUT) {
                    Ok(v) if v.iter().any(|t| t == value) => false,
                    Ok(_) => {
                        last_error = format!("{s} does not show it yet");
                        true
                    }
                    Err(e) => {
                        last_error = e;
                        true
                    }
                });
                !servers.is_empty()
            });
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() + self.propagation.interval >= until {
                let names: Vec<String> = pending.iter().map(|p| p.0.to_string()).collect();
                return Err(fail(
                    WAIT,
                    format!(
                        "the TXT record {} is not visible after {} s: {last_error}",
                        names.join(", "),
                        self.propagation.timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(self.propagation.interval);
        }
    }

    fn cleanup(&mut self) {
        for (fqdn, value) in std::mem::take(&mut self.presented) {
            match self.provider.cleanup(&fqdn, &value) {
                Ok(()) => tracing::debug!(record = %fqdn, "ACME: DNS-01 TXT record removed"),
                Err(e) => tracing::warn!(record = %fqdn, "ACME: cannot remove the DNS-01 TXT record: {e}"),
            }
        }
    }
}

/// `rfc2136`: dynamic updates at one name server.
pub(crate) struct Rfc2136 {
    server: SocketAddr,
    tsig: Option<TsigKey>,
    ttl: u32,
    timeout: Duration,
}

impl Rfc2136 {
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Rfc2136, String> {
        const P: &str = "rfc2136";
        let server = dnswire::server_addr(&env.required(P, &["RFC2136_NAMESERVER"])?)
            .map_err(|e| format!("RFC2136_NAMESERVER: {e}"))?;
        // RFC2136_TSIG_FILE: a key file as tsig-keygen writes it (lego reads it the same way);
        // the single variables win over it.
        let from_file = match env.get(&["RFC2136_TSIG_FILE"])? {
            Some(path) => {
                Some(read_key_file(&path).map_err(|e| format!("{P}: RFC2136_TSIG_FILE ({path}): {e}"))?)
            }
            None => None,
        };
        let (file_key, file_alg, file_secret) = from_file.unwrap_or_default();
        let key = env
            .get(&["RFC2136_TSIG_KEY"])?
            .or((!file_key.is_empty()).then_some(file_key));
        let secret = env
            .get(&["RFC2136_TSIG_SECRET"])?
            .or((!file_secret.is_empty()).then_some(file_secret));
        let tsig = match (key, secret) {
            (Some(k), Some(s)) => {
                let alg = env
                    .get(&["RFC2136_TSIG_ALGORITHM"])?
                    .or((!file_alg.is_empty()).then_some(file_alg))
                    .unwrap_or_else(|| "hmac-sha1.".into());
                Some(TsigKey::new(&k, &alg, &s).map_err(|e| format!("{P}: {e}"))?)
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(format!(
                    "{P}: RFC2136_TSIG_KEY is set but RFC2136_TSIG_SECRET is not"
                ))
            }
            (None, Some(_)) => {
                return Err(format!(
                    "{P}: RFC2136_TSIG_SECRET is set but RFC2136_TSIG_KEY is not"
                ))
            }
        };
        let ttl = env.secs(&["RFC2136_TTL"], 120)?;
        Ok(Rfc2136 {
            server,
            tsig,
            ttl: u32::try_from(ttl.as_secs()).unwrap_or(120),
            timeout: env
                .secs(&["RFC2136_DNS_TIMEOUT"], 10)?
                .max(Duration::from_secs(1)),
        })
    }

    fn change(&self, fqdn: &Name, value: &str, change: Change) -> Result<(), String> {
        let zone = dnswire::find_zone(self.server, fqdn, false, self.timeout)?;
        dnswire::update_txt(
            self.server,
            &dnswire::TxtUpdate {
                zone: &zone,
                fqdn,
                value,
                ttl: self.ttl,
                change,
            },
            self.tsig.as_ref(),
            self.timeout,
        )
    }
}

/// (name, algorithm, secret) of the first `key "name" { algorithm …; secret "…"; };` in a
/// BIND key file (what `tsig-keygen` prints); at most 64 KiB read.
fn read_key_file(path: &str) -> Result<(String, String, String), String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path.trim())
        .and_then(|f| f.take(MAX_ENV_FILE).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    let after_key = text.split_once("key").map(|x| x.1).ok_or("no key statement")?;
    let name = after_key
        .split('"')
        .nth(1)
        .filter(|n| !n.trim().is_empty())
        .ok_or("the key has no quoted name")?;
    let body = after_key
        .split_once('{')
        .map(|x| x.1)
        .ok_or("the key has no body")?;
    let field = |f: &str| -> Option<String> {
        body.split(';')
            .map(str::trim)
            .find_map(|stmt| stmt.strip_prefix(f))
            .map(|v| v.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    };
    let alg = field("algorithm").ok_or("the key has no algorithm")?;
    let secret = field("secret").ok_or("the key has no secret")?;
    Ok((name.trim().to_string(), alg, secret))
}

impl DnsProvider for Rfc2136 {
    fn present(&mut self, fqdn: &Name, value: &str) -> Result<(), String> {
        self.change(fqdn, value, Change::Add)
    }

    fn cleanup(&mut self, fqdn: &Name, value: &str) -> Result<(), String> {
        self.change(fqdn, value, Change::Delete)
    }

    fn primary(&self) -> Option<SocketAddr> {
        Some(self.server)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn cfg(provider: &str, env: &[(&str, &str)]) -> CertConfig {
        CertConfig {
            provider: provider.into(),
            dns_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..CertConfig::default()
        }
    }

    fn err(c: &CertConfig) -> String {
        match provider(c) {
            Ok(_) => panic!("{:?} accepted", c.provider),
            Err(e) => e,
        }
    }

    #[test]
    fn provider_config_errors_are_clear() {
        assert!(err(&cfg("route53", &[])).contains("not supported"));
        assert!(err(&cfg("", &[])).contains("needs Provider"));
        assert!(err(&cfg("rfc2136", &[])).contains("RFC2136_NAMESERVER"));
        let e = err(&cfg(
            "rfc2136",
            &[("RFC2136_NAMESERVER", "127.0.0.1"), ("RFC2136_TSIG_KEY", "k")],
        ));
        assert!(e.contains("RFC2136_TSIG_SECRET is not"), "{e}");
        let e = err(&cfg(
            "rfc2136",
            &[
                ("RFC2136_NAMESERVER", "127.0.0.1"),
                ("RFC2136_TSIG_KEY", "k"),
                ("RFC2136_TSIG_SECRET", "c2VjcmV0"),
                ("RFC2136_TSIG_ALGORITHM", "hmac-md5.sig-alg.reg.int."),
            ],
        ));
        assert!(e.contains("not supported"), "{e}");
        let e = err(&cfg(
            "rfc2136",
            &[
                ("RFC2136_NAMESERVER", "127.0.0.1"),
                ("RFC2136_PROPAGATION_TIMEOUT", "soon"),
            ],
        ));
        assert!(e.contains("RFC2136_PROPAGATION_TIMEOUT"), "{e}");
        let (_, p) = provider(&cfg(
            "RFC2136",
            &[
                ("RFC2136_NAMESERVER", "127.0.0.1:5300"),
                ("RFC2136_PROPAGATION_TIMEOUT", "7"),
            ],
        ))
        .unwrap();
        assert_eq!(p.timeout, Duration::from_secs(7));
        assert_eq!(p.interval, Duration::from_secs(2));
    }

    #[test]
    fn tsig_key_file_as_tsig_keygen_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.key");
        std::fs::write(
            &f,
            "key \"v2sp-test\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\n",
        )
        .unwrap();
        assert_eq!(
            read_key_file(&f.display().to_string()).unwrap(),
            ("v2sp-test".into(), "hmac-sha256".into(), "c2VjcmV0".into())
        );
        let map: BTreeMap<String, String> = [
            ("RFC2136_NAMESERVER".to_string(), "127.0.0.1".to_string()),
            ("RFC2136_TSIG_FILE".to_string(), f.display().to_string()),
        ]
        .into();
        let r = Rfc2136::from_env(&Env::new(&map)).unwrap();
        let k = r.tsig.unwrap();
        assert_eq!(k.name.to_ascii(), "v2sp-test.");
        assert_eq!(
            k.algorithm,
            hickory_proto::dnssec::rdata::tsig::TsigAlgorithm::HmacSha256
        );
        std::fs::write(&f, "key \"x\" { algorithm hmac-sha256; };").unwrap();
        assert!(read_key_file(&f.display().to_string())
            .unwrap_err()
            .contains("secret"));
    }

    #[test]
    fn env_reads_files_and_names_alternatives() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  from-file\n").unwrap();
        let map: BTreeMap<String, String> = [
            ("A_FILE".to_string(), f.display().to_string()),
            ("B".to_string(), "  ".to_string()),
            ("C".to_string(), "direct".to_string()),
        ]
        .into();
        let env = Env::new(&map);
        assert_eq!(env.get(&["A"]).unwrap().as_deref(), Some("from-file"));
        assert_eq!(env.get(&["B", "C"]).unwrap().as_deref(), Some("direct"));
        assert_eq!(env.get(&["V2SP_TEST_UNSET_X"]).unwrap(), None);
        let e = env.required("cloudflare", &["X_ONE", "X_TWO"]).unwrap_err();
        assert_eq!(e, "cloudflare: DNSEnv needs X_ONE (or X_TWO)");
        let map: BTreeMap<String, String> = [("A_FILE".to_string(), "/nonexistent/x".to_string())].into();
        assert!(Env::new(&map).get(&["A"]).unwrap_err().contains("A_FILE"));
    }

    #[test]
    fn challenge_name_and_value() {
        assert_eq!(
            challenge_name("*.Example.test").unwrap().to_ascii(),
            "_acme-challenge.example.test."
        );
        // RFC 8555 §8.4: base64url(SHA-256(key authorization)), 43 characters.
        let v = txt_value("token.thumbprint");
        assert_eq!(v.len(), 43);
        assert_eq!(v, b64(&Sha256::digest(b"token.thumbprint")));
    }
}
