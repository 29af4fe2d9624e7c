//! TLS-ALPN-01 (RFC 8737) answers on a node's own port, for `CertMode: tls`.
//!
//! The control plane writes the challenge certificate and key (one PEM file) to the node's
//! `acme_tls_alpn_file` while a validation runs and removes it afterwards. A ClientHello whose
//! ALPN offers `acme-tls/1` and nothing else (the CA's validator; RFC 8737 §3, no normal client
//! does) is handed to [`challenge_config`] instead of the node's config: ALPN `acme-tls/1`, the
//! certificate from that file, and the connection is closed after the handshake. Everyone else
//! never sees it.
//!
//! Reading is bounded: the file is stat'ed per such handshake and read (at most
//! [`MAX_FILE`]) only when its mtime, length or inode changed, so what an outsider sends never makes
//! the data plane read more than the control plane wrote. No file (no validation running) =
//! no certificate = the handshake fails.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The ALPN protocol of the validation.
pub const ACME_TLS_1: &[u8] = b"acme-tls/1";
/// The largest challenge file read (a certificate and a P-256 key are ~1 KiB).
pub const MAX_FILE: u64 = 16 * 1024;

/// (mtime, length, inode) of the file last read, and what it held.
type Cached = Option<((SystemTime, u64, u64), Arc<CertifiedKey>)>;

/// The challenge certificate, re-read when the file changes.
#[derive(Debug)]
pub struct ChallengeResolver {
    file: PathBuf,
    provider: Arc<CryptoProvider>,
    cached: RwLock<Cached>,
}

impl ChallengeResolver {
    pub fn new(file: impl Into<PathBuf>, provider: Arc<CryptoProvider>) -> Self {
        ChallengeResolver {
            file: file.into(),
            provider,
            cached: RwLock::new(None),
        }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let meta = std::fs::metadata(&self.file).ok()?;
        if !meta.is_file() || meta.len() > MAX_FILE {
            return None;
        }
        use std::os::unix::fs::MetadataExt as _;
        // The control plane replaces the file by rename: a new inode even within one mtime tick.
        let stamp = (meta.modified().ok()?, meta.len(), meta.ino());
        if let Ok(c) = self.cached.read() {
            if let Some((s, k)) = c.as_ref() {
                if *s == stamp {
                    return Some(k.clone());
                }
            }
        }
        use std::io::Read as _;
        let mut pem = Vec::new();
        std::fs::File::open(&self.file)
            .and_then(|f| f.take(MAX_FILE).read_to_end(&mut pem))
            .ok()?;
        match challenge_key(&pem, &self.provider) {
            Ok(k) => {
                let k = Arc::new(k);
                if let Ok(mut c) = self.cached.write() {
                    *c = Some((stamp, k.clone()));
                }
                Some(k)
            }
            Err(e) => {
                tracing::warn!("TLS-ALPN-01 challenge file unusable: {e}");
                None
            }
        }
    }
}

/// The challenge certificate and its signing key from one PEM text. Not through
/// `CertifiedKey::from_der`: its key/certificate consistency check parses the certificate
/// with webpki, which refuses the critical acmeIdentifier extension every challenge
/// certificate carries.
fn challenge_key(pem: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("no PEM certificate")?
        .map_err(|e| format!("bad PEM certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("bad PEM key: {e}"))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable key: {e}"))?;
    Ok(CertifiedKey::new(vec![cert], signer))
}

impl ResolvesServerCert for ChallengeResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// The config for `acme-tls/1` handshakes of a node whose challenge file is `file`.
pub fn challenge_config(file: &str) -> Result<Arc<ServerConfig>, String> {
    let provider = super::provider();
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ChallengeResolver::new(file, provider)));
    cfg.alpn_protocols = vec![ACME_TLS_1.to_vec()];
    // A validation is one handshake: no tickets, nothing to resume.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_certificate_with_the_critical_acme_identifier_loads() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[7u8; 32])];
        let c = p.self_signed(&key).unwrap();
        let pem = format!("{}{}", c.pem(), key.serialize_pem());
        let k = challenge_key(pem.as_bytes(), &super::super::provider()).unwrap();
        assert_eq!(k.cert[0].as_ref(), c.der().as_ref());
    }

    #[test]
    fn serves_the_file_while_it_exists_and_rereads_it_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.pem");
        let r = ChallengeResolver::new(&file, super::super::provider());
        assert!(r.current().is_none(), "no file, no certificate");
        let write = |name: &str| {
            let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            std::fs::write(
                &file,
                format!("{}{}", c.cert.pem(), c.signing_key.serialize_pem()),
            )
            .unwrap();
            c.cert.der().to_vec()
        };
        let first = write("a.example");
        assert_eq!(r.current().unwrap().cert[0].as_ref(), first.as_slice());
        let second = write("b.example.longer-name");
        assert_eq!(r.current().unwrap().cert[0].as_ref(), second.as_slice());
        std::fs::write(&file, vec![b'x'; MAX_FILE as usize + 1]).unwrap();
        assert!(r.current().is_none(), "too large: not read");
        std::fs::remove_file(&file).unwrap();
        assert!(r.current().is_none());
    }
}
