//! A small RFC 8555 client: directory, nonces, account, one order for one domain answered by
//! a [`Solver`] (HTTP-01, DNS-01 or TLS-ALPN-01), finalize with a CSR, download the chain. Blocking (ureq), every request bounded,
//! the whole order bounded by a deadline. Errors name the ACME step and carry the server's
//! problem document.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ureq::Agent;

use super::jws::{b64, jws, key_authorization, AccountKey};
use super::solver::{Presented, Solver};

/// Each HTTP request's own limit (the order's deadline bounds the whole).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest response body read (a certificate chain is a few KiB).
const MAX_BODY: u64 = 1 << 20;
const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

/// What failed: the ACME step and why (for a server error, its problem `type` and `detail`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ACME {step}: {detail}")]
pub struct AcmeError {
    pub step: &'static str,
    pub detail: String,
}

pub(crate) fn fail(step: &'static str, detail: impl std::fmt::Display) -> AcmeError {
    AcmeError {
        step,
        detail: detail.to_string(),
    }
}

/// An RFC 7807 problem document (`type`, `detail`, a few subproblems) as text.
fn problem_doc(p: &Value) -> Option<String> {
    let t = p.get("type")?.as_str()?;
    let mut s = format!(
        "{t} ({})",
        p.get("detail").and_then(Value::as_str).unwrap_or("no detail")
    );
    if let Some(sub) = p.get("subproblems").and_then(Value::as_array) {
        for sp in sub.iter().take(4) {
            s.push_str(&format!(
                "; {}: {}",
                sp.get("type").and_then(Value::as_str).unwrap_or("?"),
                sp.get("detail").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    Some(s)
}

/// An error reply as text: the server's problem document, else the start of the body.
fn problem(status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(problem_doc)
    {
        Some(p) => format!("server said {p} (HTTP {status})"),
        None => format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(body.get(..200.min(body.len())).unwrap_or_default())
        ),
    }
}

pub(crate) struct Reply {
    pub status: u16,
    location: Option<String>,
    retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Reply {
    fn json(&self, step: &'static str) -> Result<Value, AcmeError> {
        serde_json::from_slice(&self.body).map_err(|e| fail(step, format!("bad JSON from the server: {e}")))
    }
}

/// What one order needs.
pub(crate) struct OrderRequest<'a> {
    pub directory: &'a str,
    pub root_ca: Option<&'a Path>,
    pub domain: &'a str,
    pub email: &'a str,
    pub deadline: Instant,
}

/// A new certificate: the PEM chain and the PEM (PKCS#8) private key.
pub(crate) struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

struct Client<'a> {
    agent: Agent,
    key: &'a AccountKey,
    new_nonce: String,
    new_account: String,
    new_order: String,
    nonce: Option<String>,
    kid: Option<String>,
    deadline: Instant,
}

/// The blocking HTTPS client of ACME and of the DNS providers' APIs: rustls on aws-lc-rs,
/// `root_ca` (a PEM file) or Mozilla's roots, every request bounded, no redirects.
pub(crate) fn agent(root_ca: Option<&Path>) -> Result<Agent, AcmeError> {
    let roots = match root_ca {
        None => ureq::tls::RootCerts::WebPki,
        Some(p) => {
            let pem =
                std::fs::read(p).map_err(|e| fail("reading ACMERootCA", format!("{}: {e}", p.display())))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(fail(
                    "reading ACMERootCA",
                    format!("{}: no PEM certificate in it", p.display()),
                ));
            }
            ureq::tls::RootCerts::new_with_certs(&certs)
        }
    };
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("v2sp/", env!("CARGO_PKG_VERSION"), " acme"))
        .timeout_global(Some(REQUEST_TIMEOUT))
        .max_redirects(0)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(roots)
                .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .build(),
        )
        .build();
    Ok(Agent::new_with_config(config))
}

pub(crate) fn read(
    step: &'static str,
    r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Reply, AcmeError> {
    let mut r = r.map_err(|e| fail(step, e))?;
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let location = header("location");
    let retry_after = header("retry-after")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|e| fail(step, format!("reading the reply: {e}")))?;
    Ok(Reply {
        status,
        location,
        retry_after,
        body,
    })
}

fn url_of(v: &Value, field: &str, step: &'static str) -> Result<String, AcmeError> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| fail(step, format!("the server's reply has no {field:?}")))
}

impl<'a> Client<'a> {
    fn new(
        directory: &str,
        root_ca: Option<&Path>,
        key: &'a AccountKey,
        deadline: Instant,
    ) -> Result<Self, AcmeError> {
        const STEP: &str = "directory";
        let agent = agent(root_ca)?;
        let r = read(STEP, agent.get(directory).call())?;
        if r.status != 200 {
            return Err(fail(STEP, format!("{directory}: {}", problem(r.status, &r.body))));
        }
        let d = r.json(STEP)?;
        Ok(Client {
            new_nonce: url_of(&d, "newNonce", STEP)?,
            new_account: url_of(&d, "newAccount", STEP)?,
            new_order: url_of(&d, "newOrder", STEP)?,
            agent,
            key,
            nonce: None,
            kid: None,
            deadline,
        })
    }

    fn check_deadline(&self, step: &'static str) -> Result<(), AcmeError> {
        if Instant::now() >= self.deadline {
            return Err(fail(step, "gave up: the order took too long"));
        }
        Ok(())
    }

    fn fresh_nonce(&mut self, step: &'static str) -> Result<String, AcmeError> {
        if let Some(n) = self.nonce.take() {
            return Ok(n);
        }
        let r = self
            .agent
            .head(&self.new_nonce)
            .call()
            .map_err(|e| fail(step, format!("newNonce: {e}")))?;
        r.headers()
            .get("replay-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| fail(step, "newNonce gave no Replay-Nonce"))
    }

    /// A signed POST (`payload: None` = POST-as-GET); retried once on `badNonce`. Any status
    /// ≥ 400 is an error carrying the problem document.
    fn post(
        &mut self,
        step: &'static str,
        url: &str,
        payload: Option<&Value>,
        accept: Option<&str>,
    ) -> Result<Reply, AcmeError> {
        self.check_deadline(step)?;
        let mut attempt = 0;
        loop {
            let nonce = self.fresh_nonce(step)?;
            let body = jws(self.key, self.kid.as_deref(), &nonce, url, payload).map_err(|e| fail(step, e))?;
            let mut req = self
                .agent
                .post(url)
                .header("content-type", "application/jose+json");
            if let Some(a) = accept {
                req = req.header("accept", a);
            }
            let resp = req.send(body.as_bytes());
            let resp = resp.inspect(|r| {
                if let Some(n) = r.headers().get("replay-nonce").and_then(|v| v.to_str().ok()) {
                    self.nonce = Some(n.to_string());
                }
            });
            let r = read(step, resp)?;
            if r.status < 400 {
                return Ok(r);
            }
            let is_bad_nonce = serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|p| p.get("type").and_then(Value::as_str).map(|t| t == BAD_NONCE))
                .unwrap_or(false);
            if is_bad_nonce && attempt == 0 {
                attempt += 1;
                continue;
            }
            return Err(fail(step, problem(r.status, &r.body)));
        }
    }

    fn account(&mut self, email: &str) -> Result<(), AcmeError> {
        const STEP: &str = "newAccount";
        let mut p = json!({"termsOfServiceAgreed": true});
        if !email.is_empty() {
            p["contact"] = json!([format!("mailto:{email}")]);
        }
        let url = self.new_account.clone();
        let r = self.post(STEP, &url, Some(&p), None)?;
        let kid = r
            .location
            .ok_or_else(|| fail(STEP, "no account URL (Location) in the reply"))?;
        self.kid = Some(kid);
        Ok(())
    }

    /// Polls `url` (POST-as-GET) until `status` leaves `pending`/`processing`, with bounded
    /// backoff (0.5 s doubling to 4 s, or the server's Retry-After up to 10 s).
    fn poll(&mut self, step: &'static str, url: &str) -> Result<Value, AcmeError> {
        let mut wait = Duration::from_millis(500);
        loop {
            let r = self.post(step, url, None, None)?;
            let v = r.json(step)?;
            match v.get("status").and_then(Value::as_str) {
                Some("pending" | "processing") => {}
                _ => return Ok(v),
            }
            let sleep = r.retry_after.unwrap_or(wait).min(Duration::from_secs(10));
            if Instant::now() + sleep >= self.deadline {
                return Err(fail(
                    step,
                    "gave up waiting: still pending when the order's time ran out",
                ));
            }
            std::thread::sleep(sleep);
            wait = (wait * 2).min(Duration::from_secs(4));
        }
    }
}

/// The problem document of a failed authorization's challenge, as text.
fn challenge_error(authz: &Value) -> String {
    let errs: Vec<String> = authz
        .get("challenges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("error").and_then(problem_doc))
        .collect();
    if errs.is_empty() {
        "no error given".into()
    } else {
        errs.join("; ")
    }
}

/// One complete order for `req.domain` with the account `key`, its authorizations answered by
/// `solver` (cleaned up afterwards, whatever the outcome).
pub(crate) fn order(
    req: &OrderRequest<'_>,
    key: &AccountKey,
    solver: &mut dyn Solver,
) -> Result<Issued, AcmeError> {
    let r = order_inner(req, key, solver);
    solver.cleanup();
    r
}

fn order_inner(
    req: &OrderRequest<'_>,
    key: &AccountKey,
    solver: &mut dyn Solver,
) -> Result<Issued, AcmeError> {
    let mut c = Client::new(req.directory, req.root_ca, key, req.deadline)?;
    c.account(req.email)?;

    const ORDER: &str = "newOrder";
    let new_order = c.new_order.clone();
    let r = c.post(
        ORDER,
        &new_order,
        Some(&json!({"identifiers": [{"type": "dns", "value": req.domain}]})),
        None,
    )?;
    let order_url = r
        .location
        .clone()
        .ok_or_else(|| fail(ORDER, "no order URL (Location) in the reply"))?;
    let order = r.json(ORDER)?;
    let finalize = url_of(&order, "finalize", ORDER)?;
    let authzs: Vec<String> = order
        .get("authorizations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();

    // Every authorization is presented first, then (once the solver says the CA can see them
    // all: one DNS propagation wait, not one per name) each challenge is validated.
    let kind = solver.challenge_type();
    let mut to_validate: Vec<(String, String, String)> = Vec::new();
    for authz_url in &authzs {
        const AUTHZ: &str = "authorization";
        let authz = c.post(AUTHZ, authz_url, None, None)?.json(AUTHZ)?;
        match authz.get("status").and_then(Value::as_str) {
            Some("valid") => continue,
            Some("pending") => {}
            other => {
                return Err(fail(
                    AUTHZ,
                    format!("{authz_url} is {}", other.unwrap_or("without a status")),
                ))
            }
        }
        let ch = authz
            .get("challenges")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
            .ok_or_else(|| fail(AUTHZ, format!("the server offers no {kind} challenge")))?;
        let token = ch
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| {
                !t.is_empty()
                    && t.len() <= 256
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .ok_or_else(|| fail(AUTHZ, format!("{kind} challenge without a usable token")))?;
        let ch_url = url_of(ch, "url", AUTHZ)?;
        let domain = authz
            .get("identifier")
            .and_then(|i| i.get("value"))
            .and_then(Value::as_str)
            .unwrap_or(req.domain)
            .to_string();
        let key_authorization = key_authorization(token, &key.thumbprint());
        solver.present(&Presented {
            domain: &domain,
            token,
            key_authorization: &key_authorization,
        })?;
        to_validate.push((authz_url.clone(), ch_url, domain));
    }
    if !to_validate.is_empty() {
        solver.wait_ready(req.deadline)?;
    }
    for (authz_url, ch_url, domain) in &to_validate {
        let step: &'static str = match kind {
            "dns-01" => "dns-01 challenge",
            "tls-alpn-01" => "tls-alpn-01 challenge",
            _ => "http-01 challenge",
        };
        c.post(step, ch_url, Some(&json!({})), None)?;
        let done = c.poll(step, authz_url)?;
        match done.get("status").and_then(Value::as_str) {
            Some("valid") => {}
            s => {
                return Err(fail(
                    step,
                    format!(
                        "{} for {domain}: {}",
                        s.unwrap_or("no status"),
                        challenge_error(&done)
                    ),
                ))
            }
        }
    }

    const FINALIZE: &str = "finalize";
    let cert_key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| fail(FINALIZE, e))?;
    let csr = rcgen::CertificateParams::new(vec![req.domain.to_string()])
        .and_then(|p| p.serialize_request(&cert_key))
        .map_err(|e| fail(FINALIZE, format!("cannot make the CSR: {e}")))?;
    let r = c.post(FINALIZE, &finalize, Some(&json!({"csr": b64(csr.der())})), None)?;
    let mut order = r.json(FINALIZE)?;
    if order.get("status").and_then(Value::as_str) != Some("valid") {
        order = c.poll(FINALIZE, &order_url)?;
    }
    if order.get("status").and_then(Value::as_str) != Some("valid") {
        let why = order
            .get("error")
            .and_then(problem_doc)
            .unwrap_or_else(|| "no error given".to_string());
        return Err(fail(
            FINALIZE,
            format!(
                "order is {}: {why}",
                order
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("without a status")
            ),
        ));
    }
    const DOWNLOAD: &str = "certificate download";
    let cert_url = url_of(&order, "certificate", DOWNLOAD)?;
    let r = c.post(
        DOWNLOAD,
        &cert_url,
        None,
        Some("application/pem-certificate-chain"),
    )?;
    let chain_pem = String::from_utf8(r.body).map_err(|_| fail(DOWNLOAD, "the chain is not text"))?;
    if !chain_pem.trim_start().starts_with("-----BEGIN CERTIFICATE-----") {
        return Err(fail(DOWNLOAD, "the reply is not a PEM certificate chain"));
    }
    Ok(Issued {
        chain_pem,
        key_pem: cert_key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    use base64::Engine as _;
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::sync::Mutex;

    /// A scripted ACME server on loopback: the directory, newNonce (`Replay-Nonce: n0`) and
    /// newAccount, which answers `badNonce` `rejects` times before creating the account. Every
    /// reply carries a fresh nonce; the protected headers of the POSTs are recorded.
    fn fake_ca(rejects: usize) -> (String, Arc<Mutex<Vec<Value>>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (b, s) = (base.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut nonce = 0;
            let mut left = rejects;
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                nonce += 1;
                let (status, extra, reply) = if line.starts_with("GET /dir") {
                    let d = json!({"newNonce": format!("{b}/nonce"), "newAccount": format!("{b}/acct"), "newOrder": format!("{b}/order")});
                    ("200 OK", String::new(), d.to_string())
                } else if line.starts_with("HEAD /nonce") {
                    nonce = 0;
                    ("200 OK", String::new(), String::new())
                } else {
                    let jws: Value = serde_json::from_slice(&body).unwrap();
                    let p = jws["protected"].as_str().unwrap();
                    let p = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(p)
                        .unwrap();
                    s.lock().unwrap().push(serde_json::from_slice(&p).unwrap());
                    if left > 0 {
                        left -= 1;
                        let p = json!({"type": BAD_NONCE, "detail": "stale"});
                        ("400 Bad Request", String::new(), p.to_string())
                    } else {
                        (
                            "201 Created",
                            format!("Location: {b}/acct/7\r\n"),
                            "{}".to_string(),
                        )
                    }
                };
                let mut c = r.into_inner();
                let _ = write!(
                    c,
                    "HTTP/1.1 {status}\r\nReplay-Nonce: n{nonce}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                    if line.starts_with("HEAD") { 0 } else { reply.len() },
                    if line.starts_with("HEAD") { "" } else { reply.as_str() },
                );
            }
        });
        (format!("{base}/dir"), seen)
    }

    fn nonces(seen: &Mutex<Vec<Value>>) -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|p| p["nonce"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn bad_nonce_is_retried_once_with_the_nonce_from_the_error() {
        let key = AccountKey::generate().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);

        let (dir, seen) = fake_ca(1);
        let mut c = Client::new(&dir, None, &key, deadline).unwrap();
        c.account("a@b.test").unwrap();
        assert_eq!(c.kid.as_deref(), Some(&*dir.replace("/dir", "/acct/7")));
        // n0 from newNonce was refused; the retry used the error reply's nonce.
        assert_eq!(nonces(&seen), ["n0", "n1"]);

        let (dir, seen) = fake_ca(2);
        let mut c = Client::new(&dir, None, &key, deadline).unwrap();
        let e = c.account("").unwrap_err();
        assert_eq!(e.step, "newAccount");
        assert!(e.detail.contains("badNonce") && e.detail.contains("stale"), "{e}");
        assert_eq!(nonces(&seen).len(), 2, "retried once only");
    }

    #[test]
    fn problems_are_readable() {
        let p = br#"{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"no such TLD","status":400}"#;
        assert_eq!(
            problem(400, p),
            "server said urn:ietf:params:acme:error:rejectedIdentifier (no such TLD) (HTTP 400)"
        );
        assert_eq!(
            problem(502, b"<html>bad gateway</html>"),
            "HTTP 502: <html>bad gateway</html>"
        );
        let authz = json!({"status": "invalid", "challenges": [{"type": "http-01",
            "error": {"type": "urn:ietf:params:acme:error:connection", "detail": "refused"}}]});
        assert_eq!(
            challenge_error(&authz),
            "urn:ietf:params:acme:error:connection (refused)"
        );
    }
}
