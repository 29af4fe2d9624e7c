//! ACME (`CertMode: http`, HTTP-01) against Debian's `pebble`, the ACME test server: dnsmasq
//! resolves the test domain to 127.0.0.1, pebble (with a listener certificate made here and
//! trusted through `ACMERootCA`) validates the challenge at v2sp's `ACMEHTTPListen`, v2sp writes
//! the issued pair and the Trojan node serves it: the real sing-box client moves data through
//! it, and the certificate a TLS client receives is the one in `CertFile`. An expired
//! certificate in the files is renewed at start; with pebble gone, valid files are reused
//! without an order, and an expired one is still served while its renewal fails. Runs on
//! whichever I/O backend `V2SP_IO` selects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    dnsmasq, free_port, payload, sing_box_tls, tcp_echo_through, Echo, NodeSpec, Proc, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUID: &str = "705d4ada-fc32-48de-951c-2ab9d5765ce0";
const DOMAIN: &str = "acme.v2sp.test";

/// pebble resolving through `dns_port` and validating HTTP-01 at `http_port`; returns it, its
/// directory URL and its listener certificate (the root to trust).
fn pebble(dir: &Path, dns_port: u16, http_port: u16) -> (Proc, String, std::path::PathBuf) {
    let p = v2sp_testsupport::harness::pebble(
        dir,
        &v2sp_testsupport::harness::PebbleOpts {
            dns_port,
            http_port,
            tls_port: free_port(),
            validity_secs: None,
            fresh_authz: false,
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    (p.proc, p.directory, p.listener_cert)
}

fn trojan_node(port: u16) -> NodeSpec {
    NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "trojan", "server_port": port, "network": "tcp",
                     "tls_settings": {"server_name": DOMAIN},
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: users(&[UUID]),
    }
}

/// The PEM blocks of a text, whitespace-normalised.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            cur = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            out.extend(cur.take());
        } else if let Some(c) = cur.as_mut() {
            c.push_str(line);
        }
    }
    out
}

/// The certificates a TLS client gets from 127.0.0.1:`port` with SNI = the domain.
fn served_chain(port: u16) -> Vec<String> {
    let out = Command::new("openssl")
        .args(["s_client", "-showcerts", "-servername", DOMAIN, "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    pem_blocks(&String::from_utf8_lossy(&out.stdout))
}

fn issuer(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-issuer", "-in"])
        .arg(cert)
        .output()
        .expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Moves 256 KiB through the node with sing-box (Trojan over TLS, SNI = the domain); the
/// bytes moved each way.
fn move_data(v: &V2sp, port: u16, echo: &Echo, seed: u64, failures: &mut Vec<String>) -> u64 {
    let tls = json!({"enabled": true, "server_name": DOMAIN, "insecure": true});
    let (client, socks) = sing_box_tls(port, "trojan", UUID, Some(tls), v.dir.path()).unwrap();
    match tcp_echo_through(socks, echo.port, &payload(256 << 10, seed)) {
        Ok(n) => n,
        Err(e) => {
            failures.push(format!(
                "sing-box over the ACME certificate: {e:#}\n{}",
                client.log()
            ));
            0
        }
    }
}

#[test]
fn http01_certificate_from_pebble_is_served_and_reused() {
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    let (dns, dns_port) = dnsmasq(DOMAIN, work.path()).unwrap();
    let http_port = free_port();
    let (mut ca, directory, root) = pebble(work.path(), dns_port, http_port);
    let echo = Echo::start().unwrap();
    let cert_file = certs.join(format!("{DOMAIN}.crt"));
    let key_file = certs.join(format!("{DOMAIN}.key"));
    let extra: Value = json!({"CertConfig": {
        "CertMode": "http",
        "CertDomain": DOMAIN,
        "CertFile": certs.join("{domain}.crt"),
        "KeyFile": certs.join("{domain}.key"),
        "Email": "ops@v2sp.example",
        "ACMEDirectory": directory,
        "ACMERootCA": root,
        "ACMEHTTPListen": format!("127.0.0.1:{http_port}"),
    }});

    // First start: no files, so v2sp orders a certificate before the node is served.
    let port = free_port();
    let v = V2sp::start(vec![trojan_node(port)], extra.clone()).unwrap_or_else(|e| {
        panic!(
            "{e:#}\n--- pebble ---\n{}\n--- dnsmasq ---\n{}",
            ca.log(),
            dns.log()
        )
    });
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    assert!(
        cert_file.exists() && key_file.exists(),
        "certificate files not written\n{}",
        v.agent.log()
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600,
        "the key is private"
    );
    // The backend asked for is the one serving (uring falls back to epoll when unavailable).
    let want = std::env::var("V2SP_IO").unwrap_or_default();
    let said = match want.as_str() {
        "uring" => "io_uring probe passed",
        "epoll" => "forced epoll",
        _ => "",
    };
    if !v.agent.log().contains(said) {
        failures.push(format!("V2SP_IO={want} but the data plane did not say {said:?}"));
    }
    let iss = issuer(&cert_file);
    if !iss.contains("Pebble") {
        failures.push(format!("certificate not issued by pebble: {iss}"));
    }
    if !dns.log().contains(DOMAIN) {
        failures.push(format!(
            "pebble never resolved {DOMAIN} through dnsmasq:\n{}",
            dns.log()
        ));
    }
    let pem = std::fs::read_to_string(&cert_file).unwrap();
    let on_disk = pem_blocks(&pem);
    let served = served_chain(port);
    if served.first() != on_disk.first() || on_disk.is_empty() {
        failures.push(format!(
            "served leaf differs from {}: served {} certificate(s)",
            cert_file.display(),
            served.len()
        ));
    }
    let n = move_data(&v, port, &echo, 1, &mut failures);
    expected.entry(1).or_default().insert(1, (n, n));
    v.finish(&failures, &expected);
    assert!(
        v.agent.log().contains("ACME: certificate issued and saved"),
        "{}",
        v.agent.log()
    );
    drop(v);

    // An expired certificate in the files (≤ 30 days left): renewed at start, before serving.
    let old = write_expired(&cert_file, &key_file);
    let port = free_port();
    let v = V2sp::start(vec![trojan_node(port)], extra.clone()).unwrap();
    let mut failures = Vec::new();
    let renewed = std::fs::read_to_string(&cert_file).unwrap();
    if renewed == old || !issuer(&cert_file).contains("Pebble") {
        failures.push("the expired certificate was not renewed by pebble".into());
    }
    if served_chain(port).first() != pem_blocks(&renewed).first() {
        failures.push("renewal: the served leaf differs from the file".into());
    }
    move_data(&v, port, &echo, 2, &mut failures);
    v.finish(&failures, &BTreeMap::new());
    drop(v);

    // pebble gone from here on. Files valid for far more than 30 days: reused, no order.
    ca.terminate(Duration::from_secs(5));
    let port = free_port();
    let v = V2sp::start(vec![trojan_node(port)], extra.clone()).unwrap();
    let mut failures = Vec::new();
    if std::fs::read_to_string(&cert_file).unwrap() != renewed {
        failures.push("the certificate was replaced on a start with valid files".into());
    }
    if v.agent.log().contains("ACME: ordering") {
        failures.push("a new order was made on a start with valid files".into());
    }
    if served_chain(port).first() != pem_blocks(&renewed).first() {
        failures.push("reuse: the served leaf differs from the file".into());
    }
    move_data(&v, port, &echo, 3, &mut failures);
    v.finish(&failures, &BTreeMap::new());
    drop(v);

    // An expired certificate and no ACME server: the renewal fails, the old certificate is
    // served anyway (and the node is not left unserved).
    let old = write_expired(&cert_file, &key_file);
    let port = free_port();
    let v = V2sp::start(vec![trojan_node(port)], extra).unwrap();
    let mut failures = Vec::new();
    if !v.agent.log().contains("ACME renewal failed") {
        failures.push("no warning about the failed renewal".into());
    }
    if served_chain(port).first() != pem_blocks(&old).first() {
        failures.push("failed renewal: the existing certificate is not the one served".into());
    }
    move_data(&v, port, &echo, 4, &mut failures);
    v.finish(&failures, &BTreeMap::new());
}

/// Replaces the pair with a self-signed certificate for the domain that expired in 2021;
/// returns its PEM.
fn write_expired(cert_file: &Path, key_file: &Path) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![DOMAIN.to_string()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let pem = p.self_signed(&key).unwrap().pem();
    std::fs::write(key_file, key.serialize_pem()).unwrap();
    std::fs::write(cert_file, &pem).unwrap();
    pem
}
