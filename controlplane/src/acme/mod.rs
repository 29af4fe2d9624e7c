//! ACME certificates (RFC 8555) for `CertMode: http` (HTTP-01), `dns` (DNS-01) and `tls`
//! (TLS-ALPN-01, RFC 8737): our own small client ([`client`]) with one [`solver::Solver`] per
//! challenge type ([`solver::Http01`] with its [`responder`], [`dns01::Dns01`] with a DNS
//! provider: [`dns01::Rfc2136`], [`cloudflare`], [`alidns`]; [`tlsalpn::TlsAlpn01`]), the
//! account key and JWS ([`jws`]) and what is on disk ([`cert`]).
//!
//! [`ensure`] is called when a node is built and by the node worker's renewal check: it keeps
//! `CertFile`/`KeyFile` when the certificate has more than 30 days left; otherwise it runs one
//! order (at most [`ORDER_TIME`]) and writes the new pair atomically (temp + rename, key 0600).
//! The data plane picks the new files up by their mtime. When an order fails, an existing
//! certificate (even an expiring one) keeps being served, and the next attempt for those files
//! waits (30 s doubling to 1 h) so that a broken setup does not hammer the CA's rate limits.
//! The account key is kept at `<dir of CertFile>/acme/account-<hash of directory + email>.json`
//! and reused.

pub(crate) mod alidns;
pub(crate) mod cert;
pub(crate) mod client;
pub(crate) mod cloudflare;
pub(crate) mod dns01;
pub(crate) mod dnswire;
pub(crate) mod jws;
pub(crate) mod responder;
pub(crate) mod solver;
pub mod tlsalpn;

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use v2sp_shared::config::{CertConfig, CertMode};

use client::fail;
pub use client::AcmeError;
pub use tlsalpn::TlsAlpnTarget;

/// The longest one order may take (DNS-01 adds its propagation timeout).
pub const ORDER_TIME: Duration = Duration::from_secs(120);
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The files hold a certificate with more than 30 days left: nothing to do.
    Current { days_left: i64 },
    /// A new certificate was obtained and written.
    Issued { days_left: i64 },
    /// Renewal was due but failed (or waits after a failure); the existing certificate stays.
    Kept { days_left: i64, error: AcmeError },
}

/// Failed attempts per certificate file: (failures in a row, no new attempt before, last error).
type Failures = HashMap<PathBuf, (u32, Instant, AcmeError)>;

/// Makes sure `cert_file`/`key_file` hold a certificate for `CertDomain` with more than 30 days
/// left, ordering one when needed. `Err` only when there is no usable certificate at all.
///
/// Serialised process-wide: nodes often share one certificate, and every order needs the one
/// HTTP-01 port. `tls_alpn`: where the node serves TLS-ALPN-01 answers (`CertMode: tls`).
pub fn ensure(
    cfg: &CertConfig,
    cert_file: &Path,
    key_file: &Path,
    tls_alpn: Option<&TlsAlpnTarget>,
) -> Result<Outcome, AcmeError> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    static FAILURES: Mutex<Option<Failures>> = Mutex::new(None);
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());

    let now = cert::now_unix();
    let found = cert::on_disk(cert_file, key_file);
    let days = |not_after: i64| not_after.saturating_sub(now) / 86_400;
    if !cert::needs_new(&found, now) {
        if let cert::OnDisk::Usable { not_after } = found {
            return Ok(Outcome::Current {
                days_left: days(not_after),
            });
        }
    }
    let keep_or = |error: AcmeError| match &found {
        cert::OnDisk::Usable { not_after } => Ok(Outcome::Kept {
            days_left: days(*not_after),
            error,
        }),
        _ => Err(error),
    };

    let waiting = FAILURES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(cert_file)
        .filter(|(_, not_before, _)| Instant::now() < *not_before)
        .map(|(_, not_before, e)| {
            let secs = not_before.saturating_duration_since(Instant::now()).as_secs();
            AcmeError {
                step: e.step,
                detail: format!("{} (next attempt in {secs} s)", e.detail),
            }
        });
    if let Some(e) = waiting {
        return keep_or(e);
    }

    if let cert::OnDisk::Unusable(why) = &found {
        tracing::warn!(cert = %cert_file.display(), "ACME: replacing an unusable certificate: {why}");
    }
    match obtain(cfg, cert_file, key_file, tls_alpn) {
        Ok(not_after) => {
            if let Some(m) = FAILURES.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                m.remove(cert_file);
            }
            Ok(Outcome::Issued {
                days_left: days(not_after),
            })
        }
        Err(e) => {
            let mut f = FAILURES.lock().unwrap_or_else(|p| p.into_inner());
            let m = f.get_or_insert_with(HashMap::new);
            let n = m.get(cert_file).map_or(0, |x| x.0).saturating_add(1);
            let wait = RETRY_FIRST.saturating_mul(1u32 << (n - 1).min(7)).min(RETRY_MAX);
            m.insert(cert_file.to_path_buf(), (n, Instant::now() + wait, e.clone()));
            drop(f);
            keep_or(e)
        }
    }
}

/// `CertMode: tls` before its first certificate: the node must listen for the CA to reach
/// it, so when the files hold no usable pair a self-signed one for `domain` is written, valid
/// for 7 days (so it is always due for renewal: the order that follows replaces it). Returns
/// whether it wrote one.
pub fn placeholder_if_unusable(cert_file: &Path, key_file: &Path, domain: &str) -> Result<bool, String> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(cert::on_disk(cert_file, key_file), cert::OnDisk::Usable { .. }) {
        return Ok(false);
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut p = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    let today = cert::now_unix().div_euclid(86_400);
    let ymd = |days: i64| {
        let (y, m, d) = cert::civil_from_days(days);
        rcgen::date_time_ymd(i32::try_from(y).unwrap_or(2000), m, d)
    };
    p.not_before = ymd(today - 1);
    p.not_after = ymd(today + 7);
    let c = p.self_signed(&key).map_err(|e| e.to_string())?;
    crate::certfiles::write_pair(cert_file, &c.pem(), key_file, &key.serialize_pem())?;
    tracing::info!(cert = %cert_file.display(), "ACME TLS-ALPN-01: a short-lived self-signed certificate serves until the first order");
    Ok(true)
}

/// Whether the pair at these paths is missing, unusable or has 30 days or less left.
pub fn renewal_due(cert_file: &Path, key_file: &Path) -> bool {
    cert::needs_new(&cert::on_disk(cert_file, key_file), cert::now_unix())
}

/// One order; writes the pair and returns the new certificate's `notAfter`.
fn obtain(
    cfg: &CertConfig,
    cert_file: &Path,
    key_file: &Path,
    tls_alpn: Option<&TlsAlpnTarget>,
) -> Result<i64, AcmeError> {
    let directory = cfg.acme_directory();
    let domain = cfg.cert_domain.trim();
    let email = cfg.email.trim();
    let key = account_key(cert_file, directory, email)?;
    let root_ca = Some(cfg.acme_root_ca.trim())
        .filter(|s| !s.is_empty())
        .map(Path::new);
    let started = Instant::now();
    // The solver first: a provider's configuration error needs no CA to be reported.
    let mut order_time = ORDER_TIME;
    let mut solver: Box<dyn solver::Solver> = match cfg.cert_mode {
        CertMode::Dns => {
            let d = dns01::Dns01::new(cfg)?;
            order_time += d.propagation().timeout;
            Box::new(d)
        }
        CertMode::Tls => {
            Box::new(tlsalpn::TlsAlpn01::new(tls_alpn.cloned().ok_or_else(|| {
                fail("tls-alpn-01 certificate", "the node's port is not known")
            })?))
        }
        _ => Box::new(solver::Http01::new(cfg.acme_http_listen())),
    };
    let kind = solver.challenge_type();
    tracing::info!(%domain, %directory, challenge = kind, "ACME: ordering a certificate");
    let issued = client::order(
        &client::OrderRequest {
            directory,
            root_ca,
            domain,
            email,
            deadline: started + order_time,
        },
        &key,
        solver.as_mut(),
    )?;
    const SAVE: &str = "saving the certificate";
    let leaf = {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| fail(SAVE, "the chain has no readable certificate"))?
    };
    let not_after =
        cert::not_after(&leaf).ok_or_else(|| fail(SAVE, "the certificate has no readable expiry"))?;
    crate::certfiles::write_pair(cert_file, &issued.chain_pem, key_file, &issued.key_pem)
        .map_err(|e| fail(SAVE, e))?;
    tracing::info!(%domain, cert = %cert_file.display(), secs = started.elapsed().as_secs(), "ACME: certificate issued and saved");
    Ok(not_after)
}

/// `<dir of CertFile>/acme/account-<hash>.json`.
fn account_path(cert_file: &Path, directory: &str, email: &str) -> PathBuf {
    let h = Sha256::digest(format!("{directory}\n{email}").as_bytes());
    let dir = cert_file.parent().unwrap_or(Path::new("."));
    dir.join("acme").join(format!(
        "account-{}.json",
        hex::encode(h.get(..8).unwrap_or_default())
    ))
}

/// The account key for this directory and email: loaded, or generated and saved (0600).
fn account_key(cert_file: &Path, directory: &str, email: &str) -> Result<jws::AccountKey, AcmeError> {
    const STEP: &str = "account key";
    let path = account_path(cert_file, directory, email);
    if let Ok(text) = std::fs::read(&path) {
        let parsed = serde_json::from_slice::<Value>(&text)
            .ok()
            .and_then(|v| v.get("Key").and_then(Value::as_str).map(str::to_string))
            .and_then(|k| STANDARD.decode(k).ok())
            .ok_or_else(|| "not an account file".to_string())
            .and_then(|der| jws::AccountKey::from_pkcs8(&der));
        return parsed.map_err(|e| {
            fail(
                STEP,
                format!("{}: {e} (remove it to register anew)", path.display()),
            )
        });
    }
    let key = jws::AccountKey::generate().map_err(|e| fail(STEP, e))?;
    let body = json!({"Directory": directory, "Email": email, "Key": STANDARD.encode(key.pkcs8())});
    let text = serde_json::to_string_pretty(&body).map_err(|e| fail(STEP, e))?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(STEP, format!("{}: {e}", dir.display())))?;
    }
    let tmp = crate::certfiles::write_tmp(&path, text.as_bytes(), 0o600).map_err(|e| fail(STEP, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| fail(STEP, format!("{}: {e}", path.display())))?;
    tracing::info!(account = %path.display(), "ACME: new account key saved");
    Ok(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn account_key_is_persisted_per_directory_and_email() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("a.crt");
        let k1 = account_key(&cert, "https://ca/dir", "a@b.test").unwrap();
        let k2 = account_key(&cert, "https://ca/dir", "a@b.test").unwrap();
        assert_eq!(k1.thumbprint(), k2.thumbprint(), "reused");
        let other = account_key(&cert, "https://ca/dir", "").unwrap();
        assert_ne!(
            k1.thumbprint(),
            other.thumbprint(),
            "another email, another account"
        );
        let p = account_path(&cert, "https://ca/dir", "a@b.test");
        assert!(p.starts_with(dir.path().join("acme")));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&p, "{}").unwrap();
        let e = account_key(&cert, "https://ca/dir", "a@b.test").unwrap_err();
        assert!(e.to_string().contains("remove it"), "{e}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(cert::civil_from_days(0), (1970, 1, 1));
        assert_eq!(cert::civil_from_days(16_854), (2016, 2, 23));
        assert_eq!(cert::civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(cert::civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn tls_placeholder_is_written_once_and_always_due() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("a.crt"), dir.path().join("a.key"));
        assert!(placeholder_if_unusable(&c, &k, "a.test").unwrap());
        assert!(renewal_due(&c, &k), "the placeholder is always due");
        assert!(
            matches!(cert::on_disk(&c, &k), cert::OnDisk::Usable { not_after } if not_after > cert::now_unix())
        );
        assert!(!placeholder_if_unusable(&c, &k, "a.test").unwrap(), "kept");
    }

    #[test]
    fn pair_written_atomically_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("sub/a.crt"), dir.path().join("sub/a.key"));
        crate::certfiles::write_pair(&c, "CHAIN", &k, "KEY").unwrap();
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "CHAIN");
        assert_eq!(std::fs::read_to_string(&k).unwrap(), "KEY");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            2,
            "no temporaries left"
        );
    }

    #[test]
    fn failure_without_a_certificate_is_an_error_and_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("a.crt"), dir.path().join("a.key"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = CertConfig {
            cert_domain: "a.test".into(),
            acme_directory: format!("http://127.0.0.1:{port}/dir"),
            ..CertConfig::default()
        };
        let e = ensure(&cfg, &c, &k, None).unwrap_err();
        assert_eq!(e.step, "directory", "{e}");
        let again = ensure(&cfg, &c, &k, None).unwrap_err();
        assert!(again.detail.contains("next attempt in"), "{again}");
        // An existing certificate, even an expired one, is kept.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        std::fs::write(&c, p.self_signed(&key).unwrap().pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        assert!(matches!(ensure(&cfg, &c, &k, None), Ok(Outcome::Kept { days_left, .. }) if days_left < 0));
        // One with more than 30 days left is simply used.
        p.not_after = rcgen::date_time_ymd(2049, 1, 1);
        std::fs::write(&c, p.self_signed(&key).unwrap().pem()).unwrap();
        assert!(matches!(ensure(&cfg, &c, &k, None), Ok(Outcome::Current { .. })));
    }
}
