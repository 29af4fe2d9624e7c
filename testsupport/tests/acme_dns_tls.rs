//! ACME DNS-01 (`CertMode: dns`) and TLS-ALPN-01 (`CertMode: tls`) against Debian's pebble,
//! with Debian's bind9 as the authoritative DNS server of the test zone (`named` on a loopback
//! port, its own directory, a TSIG key made by `tsig-keygen`), which pebble resolves and
//! validates through (`-dnsserver`).
//!
//! - `rfc2136`: v2sp updates bind9 itself (RFC 2136, TSIG hmac-sha256); the certificate is
//!   issued, served, and accepted by `openssl s_client` verifying against pebble's root. A
//!   renewal while a Trojan connection through the node stays open: new handshakes get the new
//!   certificate, the open connection keeps moving data.
//! - `cloudflare` / `alidns`: against local fakes of their HTTP APIs that check the
//!   credentials (Cloudflare's bearer token, Alibaba Cloud's RPC signature recomputed here),
//!   record the requests and write the TXT record into the same bind9 with `nsupdate`.
//! - TLS-ALPN-01: pebble's `tlsPort` is the node's port; the data plane answers `acme-tls/1`
//!   with the challenge certificate; the issued certificate is then served to normal clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    free_port, payload, peer, sing_box_tls, socks5_connect, Echo, NodeSpec, Proc, V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUID: &str = "705d4ada-fc32-48de-951c-2ab9d5765ce0";
const ZONE: &str = "v2sp.test";
const KEY_NAME: &str = "v2sp-acme-test";

/// bind9's `named`, authoritative for [`ZONE`] (every name in it resolves to 127.0.0.1),
/// accepting TXT updates signed with the TSIG key it returns (hmac-sha256, base64 secret).
struct Named {
    proc: Proc,
    port: u16,
    secret: String,
}

fn named(dir: &Path) -> Named {
    let dir = dir.join("named");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(peer("tsig-keygen").unwrap())
        .args(["-a", "hmac-sha256", KEY_NAME])
        .output()
        .expect("tsig-keygen");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let secret = text
        .split("secret \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no secret in tsig-keygen output: {text}"))
        .to_string();
    let port = free_port();
    std::fs::write(
        dir.join("zone.db"),
        format!(
            "$TTL 30\n@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 60 60 600 5\n@ IN NS ns.{ZONE}.\n\
             @ IN A 127.0.0.1\n* IN A 127.0.0.1\n"
        ),
    )
    .unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("named.conf"),
        format!(
            "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; session-keyfile \"{d}/session.key\";\n\
               listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n\
               recursion no; dnssec-validation no; notify no; }};\n\
             controls {{ }};\n\
             {text}\n\
             zone \"{ZONE}\" {{ type primary; file \"{d}/zone.db\"; journal \"{d}/zone.jnl\";\n\
               update-policy {{ grant {KEY_NAME} zonesub TXT; }}; }};\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(peer("named").unwrap());
    cmd.arg("-g")
        .arg("-n")
        .arg("1")
        .arg("-c")
        .arg(dir.join("named.conf"));
    let proc = Proc::spawn("named", cmd, dir.join("named.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proc.log().contains("running") {
        assert!(Instant::now() < deadline, "named did not start:\n{}", proc.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    Named { proc, port, secret }
}

impl Named {
    fn updater(&self) -> Updater {
        Updater {
            port: self.port,
            secret: self.secret.clone(),
        }
    }
}

/// What the fake APIs change bind9 with.
struct Updater {
    port: u16,
    secret: String,
}

impl Updater {
    /// `nsupdate` (bind9's own client) adds or deletes a TXT record: what the fake APIs do.
    fn nsupdate(&self, line: &str) -> Result<(), String> {
        let mut c = Command::new(peer("nsupdate").unwrap())
            .arg("-y")
            .arg(format!("hmac-sha256:{KEY_NAME}:{}", self.secret))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let script = format!("server 127.0.0.1 {}\nzone {ZONE}\n{line}\nsend\n", self.port);
        c.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = c.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// pebble resolving through `dns_port`, validating TLS-ALPN-01 at `tls_port`, issuing
/// certificates valid for 30 days (so a renewal is always due: a panel config change makes
/// v2sp renew). Returns it, its directory URL, its listener certificate (the ACME root to
/// trust) and its management port.
fn pebble(dir: &Path, dns_port: u16, tls_port: u16) -> (Proc, String, PathBuf, u16) {
    let p = v2sp_testsupport::harness::pebble(
        dir,
        &v2sp_testsupport::harness::PebbleOpts {
            dns_port,
            http_port: free_port(),
            tls_port,
            validity_secs: Some(30 * 86_400),
            fresh_authz: true,
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    (p.proc, p.directory, p.listener_cert, p.mgmt)
}

/// pebble's issuing root (management API `/roots/0`), written to `dir/root.pem`.
fn pebble_root(dir: &Path, listener_cert: &Path, mgmt: u16) -> PathBuf {
    let out = Command::new("curl")
        .args(["-sSf", "--max-time", "10", "--cacert"])
        .arg(listener_cert)
        .arg(format!("https://127.0.0.1:{mgmt}/roots/0"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "pebble root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = dir.join("root.pem");
    std::fs::write(&p, &out.stdout).unwrap();
    p
}

fn trojan_node(port: u16, domain: &str, pull: u64) -> NodeSpec {
    NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "trojan", "server_port": port, "network": "tcp",
                     "tls_settings": {"server_name": domain},
                     "base_config": {"push_interval": 1, "pull_interval": pull}}),
        users: users(&[UUID]),
    }
}

/// `openssl s_client` verifying the node's chain against `root` for `domain` (hostname
/// checked); the leaf it got (PEM body), or the failure with its output.
fn verified_leaf(port: u16, domain: &str, root: &Path) -> Result<String, String> {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-showcerts",
            "-verify_return_error",
            "-servername",
            domain,
        ])
        .args(["-verify_hostname", domain, "-CAfile"])
        .arg(root)
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !text.contains("Verify return code: 0 (ok)") {
        return Err(format!("{text}\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    first_pem(&text).ok_or_else(|| "no certificate".into())
}

/// The body of the first PEM certificate in `text`, whitespace removed.
fn first_pem(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")? + start;
    Some(
        text[start + 27..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect(),
    )
}

fn file_leaf(cert_file: &Path) -> Option<String> {
    first_pem(&std::fs::read_to_string(cert_file).ok()?)
}

fn issuer(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-issuer", "-in"])
        .arg(cert)
        .output()
        .expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + within;
    while !ok() {
        if Instant::now() > deadline {
            panic!("{what} within {within:?}\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `CertConfig` for a DNS-01 node.
fn dns_cert(dir: &Path, domain: &str, provider: &str, env: Value, directory: &str, root: &Path) -> Value {
    json!({"CertConfig": {
        "CertMode": "dns",
        "CertDomain": domain,
        "CertFile": dir.join("{domain}.crt"),
        "KeyFile": dir.join("{domain}.key"),
        "Email": "ops@v2sp.example",
        "Provider": provider,
        "DNSEnv": env,
        "ACMEDirectory": directory,
        "ACMERootCA": root,
    }})
}

/// A fake provider API started against bind9: its port, and a check of what it saw (empty =
/// fine) run after the order.
type Fake = dyn Fn(&Named) -> (u16, Box<dyn FnOnce() -> String>);

/// Issues through `provider` (its API faked by `fake`, `DNSEnv` from `env(bind9, API port)`)
/// for `domain` and checks the result: pebble's certificate in the files, served, accepted by
/// openssl against pebble's root; the TXT record added to bind9 and removed.
fn issue_and_verify(domain: &str, provider: &str, env: &dyn Fn(&Named, u16) -> Value, fake: &Fake) {
    let work = tempfile::tempdir().unwrap();
    let dns = named(work.path());
    let (ca, directory, listener, mgmt) = pebble(work.path(), dns.port, free_port());
    let root = pebble_root(work.path(), &listener, mgmt);
    let (api, check_fake) = fake(&dns);
    let certs = work.path().join("certs");
    let port = free_port();
    let extra = dns_cert(&certs, domain, provider, env(&dns, api), &directory, &listener);
    let v = V2sp::start(vec![trojan_node(port, domain, 60)], extra).unwrap_or_else(|e| {
        panic!(
            "{e:#}\n--- pebble ---\n{}\n--- named ---\n{}",
            ca.log(),
            dns.proc.log()
        )
    });
    let cert_file = certs.join(format!("{domain}.crt"));
    let mut failures = Vec::new();
    if !issuer(&cert_file).contains("Pebble") {
        failures.push(format!(
            "certificate not issued by pebble: {}",
            issuer(&cert_file)
        ));
    }
    match verified_leaf(port, domain, &root) {
        Ok(leaf) if Some(&leaf) == file_leaf(&cert_file).as_ref() => {}
        Ok(_) => failures.push("the served leaf is not the one in CertFile".into()),
        Err(e) => failures.push(format!("openssl did not accept the node's certificate: {e}")),
    }
    let nlog = dns.proc.log();
    if !nlog.contains(&format!("adding an RR at '_acme-challenge.{domain}' TXT")) {
        failures.push(format!("bind9 never got the TXT record:\n{nlog}"));
    }
    if !nlog.contains(&format!("deleting an RR at _acme-challenge.{domain} TXT")) {
        failures.push(format!("the TXT record was not removed:\n{nlog}"));
    }
    let problems = check_fake();
    if !problems.is_empty() {
        failures.push(problems);
    }
    if !failures.is_empty() {
        failures.push(format!("--- pebble ---\n{}", ca.log()));
    }
    v.finish(&failures, &BTreeMap::new());
}

#[test]
fn dns01_rfc2136_updates_bind9_renews_under_an_open_connection() {
    let work = tempfile::tempdir().unwrap();
    let dns = named(work.path());
    let (ca, directory, listener, mgmt) = pebble(work.path(), dns.port, free_port());
    let root = pebble_root(work.path(), &listener, mgmt);
    let echo = Echo::start().unwrap();
    let domain = "node.rfc.v2sp.test";
    let certs = work.path().join("certs");
    let env = json!({
        "RFC2136_NAMESERVER": format!("127.0.0.1:{}", dns.port),
        "RFC2136_TSIG_KEY": KEY_NAME,
        "RFC2136_TSIG_SECRET": dns.secret,
        "RFC2136_TSIG_ALGORITHM": "hmac-sha256.",
        "RFC2136_POLLING_INTERVAL": "1",
        "RFC2136_PROPAGATION_TIMEOUT": "20",
    });
    let port = free_port();
    let node = trojan_node(port, domain, 1);
    let v = V2sp::start(
        vec![node.clone()],
        dns_cert(&certs, domain, "rfc2136", env, &directory, &listener),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\n--- pebble ---\n{}\n--- named ---\n{}",
            ca.log(),
            dns.proc.log()
        )
    });
    let cert_file = certs.join(format!("{domain}.crt"));
    let mut failures = Vec::new();
    let first = file_leaf(&cert_file).unwrap_or_default();
    match verified_leaf(port, domain, &root) {
        Ok(leaf) if leaf == first => {}
        Ok(_) => failures.push("the served leaf is not the one in CertFile".into()),
        Err(e) => failures.push(format!("openssl did not accept the node's certificate: {e}")),
    }
    let nlog = dns.proc.log();
    if !nlog.contains(&format!("adding an RR at '_acme-challenge.{domain}' TXT")) {
        failures.push(format!("bind9 never got the TXT record:\n{nlog}"));
    }
    if !failures.is_empty() {
        v.finish(&failures, &BTreeMap::new());
    }

    // A Trojan connection (sing-box, over the first certificate) stays open across a renewal.
    let tls = json!({"enabled": true, "server_name": domain, "insecure": true});
    let (client, socks) = sing_box_tls(port, "trojan", UUID, Some(tls), v.dir.path()).unwrap();
    let mut open = socks5_connect(socks, echo.port).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let echo_once = |s: &mut std::net::TcpStream, seed: u64| -> Result<(), String> {
        let data = payload(16 << 10, seed);
        s.write_all(&data).map_err(|e| e.to_string())?;
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).map_err(|e| e.to_string())?;
        if back == data {
            Ok(())
        } else {
            Err("echo differs".into())
        }
    };
    echo_once(&mut open, 1).unwrap_or_else(|e| panic!("before renewal: {e}\n{}", client.log()));

    // The panel's config changes: the node is rebuilt and its (30-day, so due) certificate
    // renewed while the data plane keeps serving.
    let mut info = node.info.clone();
    info["base_config"]["pull_interval"] = json!(2);
    v.sim.set_node(1, info);
    wait_for(
        "the certificate renewed",
        Duration::from_secs(40),
        || file_leaf(&cert_file).is_some_and(|l| l != first),
        &|| format!("{}\n--- pebble ---\n{}", v.agent.log(), ca.log()),
    );
    let second = file_leaf(&cert_file).unwrap();
    // New handshakes get the new certificate once the data plane has re-read the files.
    wait_for(
        "the renewed certificate served to new handshakes",
        Duration::from_secs(15),
        || verified_leaf(port, domain, &root).is_ok_and(|l| l == second),
        &|| v.agent.log(),
    );
    if let Err(e) = echo_once(&mut open, 2) {
        failures.push(format!(
            "the connection opened before the renewal broke: {e}\n{}",
            client.log()
        ));
    }
    if dns
        .proc
        .log()
        .matches(&format!("adding an RR at '_acme-challenge.{domain}' TXT"))
        .count()
        < 2
    {
        failures.push("the renewal did not go through DNS-01 again".into());
    }
    v.finish(&failures, &BTreeMap::new());
}

/// A recorded request of a fake API: method, path with query, headers (lower-case names), body.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A one-request-per-connection HTTP/1.1 server on loopback answering with `handle`
/// (status, JSON body); every request is recorded.
fn fake_api(handle: impl Fn(&Req) -> (u16, Value) + Send + 'static) -> (u16, Arc<Mutex<Vec<Req>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { return };
            let mut r = BufReader::new(conn);
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, target) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut headers = BTreeMap::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let req = Req {
                method,
                target,
                headers,
                body,
            };
            let (status, reply) = handle(&req);
            s.lock().unwrap().push(req);
            let text = reply.to_string();
            let mut c = r.into_inner();
            let _ = write!(
                c,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (port, seen)
}

#[test]
fn dns01_cloudflare_fake_api_writes_into_bind9() {
    const TOKEN: &str = "cf-dns-token-7f3a";
    let domain = "node.cf.v2sp.test";
    let fake: &Fake = &|dns: &Named| {
        let ns = dns.updater();
        let records: Arc<Mutex<BTreeMap<String, (String, String)>>> = Arc::default();
        let (port, seen) = fake_api(move |r| {
            if r.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
                return (
                    403,
                    json!({"success": false, "errors": [{"code": 10000, "message": "Authentication error"}]}),
                );
            }
            let path = r.target.strip_prefix("/client/v4").unwrap_or("");
            match (r.method.as_str(), path) {
                ("GET", p) if p.starts_with("/zones?") => {
                    let hit = p.contains(&format!("name={ZONE}")) && !p.contains(&format!(".{ZONE}"));
                    let result = if hit {
                        json!([{"id": "0123abcd", "name": ZONE}])
                    } else {
                        json!([])
                    };
                    (200, json!({"success": true, "result": result}))
                }
                ("POST", "/zones/0123abcd/dns_records") => {
                    let b: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    let (name, content) = (
                        b["name"].as_str().unwrap_or(""),
                        b["content"].as_str().unwrap_or(""),
                    );
                    if b["type"] != "TXT" || content.is_empty() {
                        return (
                            400,
                            json!({"success": false, "errors": [{"code": 9000, "message": "bad record"}]}),
                        );
                    }
                    match ns.nsupdate(&format!("update add {name}. 30 TXT \"{content}\"")) {
                        Ok(()) => {
                            let id = format!("rec{}", records.lock().unwrap().len() + 1);
                            records
                                .lock()
                                .unwrap()
                                .insert(id.clone(), (name.to_string(), content.to_string()));
                            (200, json!({"success": true, "result": {"id": id}}))
                        }
                        Err(e) => (
                            500,
                            json!({"success": false, "errors": [{"code": 1, "message": e}]}),
                        ),
                    }
                }
                ("DELETE", p) if p.starts_with("/zones/0123abcd/dns_records/") => {
                    let id = p.rsplit('/').next().unwrap_or("");
                    let Some((name, content)) = records.lock().unwrap().remove(id) else {
                        return (
                            404,
                            json!({"success": false, "errors": [{"code": 81044, "message": "no record"}]}),
                        );
                    };
                    let _ = ns.nsupdate(&format!("update delete {name}. TXT \"{content}\""));
                    (200, json!({"success": true, "result": {"id": id}}))
                }
                _ => (
                    404,
                    json!({"success": false, "errors": [{"code": 7003, "message": "no route"}]}),
                ),
            }
        });
        (
            port,
            Box::new(move || {
                let seen = seen.lock().unwrap();
                let methods: Vec<&str> = seen.iter().map(|r| r.method.as_str()).collect();
                if methods.contains(&"POST")
                    && methods.contains(&"DELETE")
                    && seen.iter().all(|r| r.headers.contains_key("authorization"))
                {
                    String::new()
                } else {
                    format!("the fake Cloudflare API saw: {seen:?}")
                }
            }),
        )
    };
    issue_and_verify(
        domain,
        "cloudflare",
        &|dns, api| {
            json!({"CF_DNS_API_TOKEN": TOKEN,
                   "CLOUDFLARE_BASE_URL": format!("http://127.0.0.1:{api}/client/v4"),
                   "V2SP_DNS_RESOLVER": format!("127.0.0.1:{}", dns.port),
                   "CLOUDFLARE_POLLING_INTERVAL": "1", "CLOUDFLARE_PROPAGATION_TIMEOUT": "20"})
        },
        fake,
    );
}

/// Alibaba Cloud's RPC percent-encoding, written again here (not v2sp's) to check signatures.
fn ali_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or("zz"), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn dns01_alidns_fake_api_writes_into_bind9() {
    use base64::Engine as _;
    const KEY: &str = "LTAI-v2sp-test";
    const SECRET: &str = "ali-secret-9c1e";
    let domain = "node.ali.v2sp.test";
    let fake: &Fake = &|dns: &Named| {
        let ns = dns.updater();
        let records: Arc<Mutex<BTreeMap<String, (String, String)>>> = Arc::default();
        let (port, seen) = fake_api(move |r| {
            let err = |code: &str, msg: &str| (400, json!({"Code": code, "Message": msg, "RequestId": "r"}));
            let query = r.target.split_once('?').map(|x| x.1).unwrap_or("");
            let mut p: BTreeMap<String, String> = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (percent_decode(k), percent_decode(v)))
                .collect();
            let Some(sig) = p.remove("Signature") else {
                return err("MissingSignature", "no signature");
            };
            let canonical: Vec<String> = p
                .iter()
                .map(|(k, v)| format!("{}={}", ali_encode(k), ali_encode(v)))
                .collect();
            let to_sign = format!("GET&%2F&{}", ali_encode(&canonical.join("&")));
            let key = aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                format!("{SECRET}&").as_bytes(),
            );
            let want = base64::engine::general_purpose::STANDARD
                .encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
            if r.method != "GET" || sig != want || p.get("AccessKeyId").map(String::as_str) != Some(KEY) {
                return err(
                    "SignatureDoesNotMatch",
                    "Specified signature is not matched with our calculation.",
                );
            }
            let common_ok = p.get("Version").map(String::as_str) == Some("2015-01-09")
                && p.get("SignatureMethod").map(String::as_str) == Some("HMAC-SHA1")
                && p.get("SignatureVersion").map(String::as_str) == Some("1.0")
                && p.get("Format").map(String::as_str) == Some("JSON")
                && p.get("SignatureNonce").is_some_and(|n| !n.is_empty())
                && p.get("Timestamp")
                    .is_some_and(|t| t.len() == 20 && t.ends_with('Z'));
            if !common_ok {
                return err("MissingParameter", "common parameters");
            }
            match p.get("Action").map(String::as_str) {
                Some("DescribeDomains") => (
                    200,
                    json!({"TotalCount": 2, "PageNumber": 1, "PageSize": 100, "RequestId": "r",
                    "Domains": {"Domain": [{"DomainName": "example.org"}, {"DomainName": ZONE}]}}),
                ),
                Some("AddDomainRecord") => {
                    if p.get("DomainName").map(String::as_str) != Some(ZONE)
                        || p.get("Type").map(String::as_str) != Some("TXT")
                    {
                        return err("InvalidDomainName", "bad domain or type");
                    }
                    let name = format!("{}.{ZONE}", p.get("RR").cloned().unwrap_or_default());
                    let value = p.get("Value").cloned().unwrap_or_default();
                    match ns.nsupdate(&format!("update add {name}. 30 TXT \"{value}\"")) {
                        Ok(()) => {
                            let id = format!("{}", 1000 + records.lock().unwrap().len());
                            records.lock().unwrap().insert(id.clone(), (name, value));
                            (200, json!({"RecordId": id, "RequestId": "r"}))
                        }
                        Err(e) => (500, json!({"Code": "InternalError", "Message": e})),
                    }
                }
                Some("DeleteDomainRecord") => {
                    let id = p.get("RecordId").cloned().unwrap_or_default();
                    let Some((name, value)) = records.lock().unwrap().remove(&id) else {
                        return err("DomainRecordNotBelongToUser", "no such record");
                    };
                    let _ = ns.nsupdate(&format!("update delete {name}. TXT \"{value}\""));
                    (200, json!({"RecordId": id, "RequestId": "r"}))
                }
                _ => err("InvalidAction.NotFound", "no such action"),
            }
        });
        (
            port,
            Box::new(move || {
                let seen = seen.lock().unwrap();
                let actions: Vec<String> = seen
                    .iter()
                    .filter_map(|r| {
                        r.target
                            .split("Action=")
                            .nth(1)
                            .and_then(|a| a.split('&').next())
                            .map(str::to_string)
                    })
                    .collect();
                if actions.iter().any(|a| a == "AddDomainRecord")
                    && actions.iter().any(|a| a == "DeleteDomainRecord")
                {
                    String::new()
                } else {
                    format!("the fake Alidns API saw actions {actions:?}: {seen:?}")
                }
            }),
        )
    };
    issue_and_verify(
        domain,
        "alidns",
        &|dns, api| {
            json!({"ALICLOUD_ACCESS_KEY": KEY, "ALICLOUD_SECRET_KEY": SECRET,
                   "V2SP_DNS_API_URL": format!("http://127.0.0.1:{api}/"),
                   "V2SP_DNS_RESOLVER": format!("127.0.0.1:{}", dns.port),
                   "ALICLOUD_POLLING_INTERVAL": "1", "ALICLOUD_PROPAGATION_TIMEOUT": "20"})
        },
        fake,
    );
}

#[test]
fn tls_alpn01_is_answered_on_the_node_port() {
    let work = tempfile::tempdir().unwrap();
    let dns = named(work.path());
    let port = free_port();
    let (ca, directory, listener, mgmt) = pebble(work.path(), dns.port, port);
    let root = pebble_root(work.path(), &listener, mgmt);
    let domain = "node.tls.v2sp.test";
    let certs = work.path().join("certs");
    let extra = json!({"CertConfig": {
        "CertMode": "tls",
        "CertDomain": domain,
        "CertFile": certs.join("{domain}.crt"),
        "KeyFile": certs.join("{domain}.key"),
        "Email": "ops@v2sp.example",
        "ACMEDirectory": directory,
        "ACMERootCA": listener,
    }});
    let v = V2sp::start(vec![trojan_node(port, domain, 60)], extra)
        .unwrap_or_else(|e| panic!("{e:#}\n--- pebble ---\n{}", ca.log()));
    let cert_file = certs.join(format!("{domain}.crt"));
    // The node listens with a short-lived placeholder; the order runs once it does.
    wait_for(
        "pebble's certificate in CertFile",
        Duration::from_secs(40),
        || issuer(&cert_file).contains("Pebble"),
        &|| format!("{}\n--- pebble ---\n{}", v.agent.log(), ca.log()),
    );
    let issued = file_leaf(&cert_file).unwrap();
    let mut failures = Vec::new();
    wait_for(
        "the issued certificate served to a normal client",
        Duration::from_secs(15),
        || verified_leaf(port, domain, &root).is_ok_and(|l| l == issued),
        &|| format!("{}\n{:?}", v.agent.log(), verified_leaf(port, domain, &root)),
    );
    // The challenge file is gone, and acme-tls/1 alone gets no certificate now.
    let challenge = certs.join("acme").join(format!("{domain}.crt.tls-alpn-01.pem"));
    if challenge.exists() {
        failures.push(format!("{} left behind", challenge.display()));
    }
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-alpn",
            "acme-tls/1",
            "-servername",
            domain,
            "-connect",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    if first_pem(&String::from_utf8_lossy(&out.stdout)).is_some() {
        failures.push("an acme-tls/1 handshake got a certificate outside a validation".into());
    }
    if !ca.log().contains("tls-alpn-01") && !v.agent.log().contains("tls-alpn-01") {
        failures.push("no tls-alpn-01 validation seen".into());
    }
    v.finish(&failures, &BTreeMap::new());
}
