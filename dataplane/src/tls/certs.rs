//! Certificate store: the node's certificate and key, resolved per handshake.
//!
//! The control plane turns every `CertMode` into a PEM pair on disk (`file`: the operator's
//! files; `self`: a generated self-signed pair; `http`/`dns`: the ACME client's output, later),
//! so the store only ever loads files. It re-checks their mtimes on a new handshake at most
//! once per [`RECHECK`] and swaps the key atomically; a pair that fails to load keeps the last
//! good one (logged). [`CertStore::reload`] forces a reload (the `ReloadCerts` command).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often a handshake may stat the files (the rest use the cached key).
pub const RECHECK: Duration = Duration::from_secs(5);

/// Why a certificate pair could not be used (the operator's fault).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: no PEM certificate in it")]
    NoCert { path: String },
    #[error("{path}: bad PEM: {err}")]
    Pem { path: String, err: String },
    #[error("certificate and key do not fit together or the key type is unsupported: {0}")]
    Key(rustls::Error),
}

struct Loaded {
    key: Arc<CertifiedKey>,
    mtimes: (Option<SystemTime>, Option<SystemTime>),
}

/// Per-node certificate source (shared by all cores' `ServerConfig`s of the node).
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// SNI that must match when `reject_unknown_sni` (lower-case, empty = any).
    server_name: String,
    reject_unknown_sni: bool,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
    /// Unix milliseconds of the last mtime check.
    checked_ms: AtomicU64,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

fn mtime(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Parses a PEM certificate chain and private key into a signing key.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
    names: (&str, &str),
) -> Result<CertifiedKey, CertError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            path: names.0.to_string(),
            err: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCert {
            path: names.0.to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::Pem {
        path: names.1.to_string(),
        err: e.to_string(),
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(CertError::Key)
}

impl CertStore {
    /// Loads the pair now (a node whose certificate cannot load is not served).
    pub fn open(
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
        server_name: &str,
        reject_unknown_sni: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, CertError> {
        let (cert_file, key_file) = (cert_file.into(), key_file.into());
        let loaded = load(&cert_file, &key_file, &provider)?;
        Ok(CertStore {
            cert_file,
            key_file,
            server_name: server_name.trim().to_ascii_lowercase(),
            reject_unknown_sni,
            provider,
            current: RwLock::new(loaded),
            checked_ms: AtomicU64::new(now_ms()),
        })
    }

    /// Reloads the files if they changed; keeps the last good pair on error.
    pub fn reload(&self, force: bool) {
        let m = (mtime(&self.cert_file), mtime(&self.key_file));
        let same = self.current.read().map(|c| c.mtimes == m).unwrap_or(false);
        if same && !force {
            return;
        }
        match load(&self.cert_file, &self.key_file, &self.provider) {
            Ok(l) => {
                if let Ok(mut c) = self.current.write() {
                    *c = l;
                }
                tracing::info!(cert = %self.cert_file.display(), "certificate reloaded");
            }
            Err(e) => tracing::warn!("certificate reload failed, keeping the previous one: {e}"),
        }
    }

    fn maybe_recheck(&self) {
        let now = now_ms();
        let last = self.checked_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= u64::try_from(RECHECK.as_millis()).unwrap_or(5000);
        if due
            && self
                .checked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.reload(false);
        }
    }
}

fn load(cert: &PathBuf, key: &PathBuf, provider: &CryptoProvider) -> Result<Loaded, CertError> {
    // Stat before reading: a write between the two is seen as a change next time.
    let mtimes = (mtime(cert), mtime(key));
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|err| CertError::Read {
            path: p.display().to_string(),
            err,
        })
    };
    let (c, k) = (read(cert)?, read(key)?);
    let ck = certified_key(
        &c,
        &k,
        provider,
        (&cert.display().to_string(), &key.display().to_string()),
    )?;
    Ok(Loaded {
        key: Arc::new(ck),
        mtimes,
    })
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.reject_unknown_sni && !self.server_name.is_empty() {
            let ok = hello
                .server_name()
                .is_some_and(|n| n.eq_ignore_ascii_case(&self.server_name));
            if !ok {
                return None;
            }
        }
        self.maybe_recheck();
        self.current.read().ok().map(|c| c.key.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write_pair(dir: &std::path::Path, name: &str) -> Vec<u8> {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        std::fs::write(dir.join("c.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.join("k.pem"), c.signing_key.serialize_pem()).unwrap();
        c.cert.der().to_vec()
    }

    fn current_cert(s: &CertStore) -> Vec<u8> {
        let c = s.current.read().unwrap();
        c.key.cert.first().unwrap().to_vec()
    }

    #[test]
    fn changed_files_are_reloaded_and_a_broken_pair_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_pair(dir.path(), "a.example");
        let s = CertStore::open(
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
            "",
            false,
            crate::tls::provider(),
        )
        .unwrap();
        assert_eq!(current_cert(&s), first);
        // Unchanged files: nothing reloaded.
        s.reload(false);
        assert_eq!(current_cert(&s), first);
        let second = write_pair(dir.path(), "b.example");
        // mtime granularity may hide a rewrite within the same tick: force, as ReloadCerts does.
        s.reload(true);
        assert_eq!(current_cert(&s), second);
        std::fs::write(dir.path().join("k.pem"), b"not a key").unwrap();
        s.reload(true);
        assert_eq!(current_cert(&s), second);
    }
}
