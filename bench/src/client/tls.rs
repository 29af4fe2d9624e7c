//! The bench's TLS: one self-signed certificate per run (rcgen), written to a temporary
//! directory and given to every server; our client (rustls, aws-lc-rs provider) trusts exactly
//! that certificate, so the handshake is verified, not skipped.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::pki_types::ServerName;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The name in the certificate and the SNI our client sends.
pub const SERVER_NAME: &str = "v2sp.bench";

/// Certificate and key files for the servers, and the client configuration that trusts them.
pub struct TlsMaterial {
    _dir: tempfile::TempDir,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client: Arc<ClientConfig>,
    /// TLS 1.3 only, same certificate: the bench's TLS target (`target::start_tls`).
    pub server: Arc<ServerConfig>,
}

impl TlsMaterial {
    pub fn generate() -> anyhow::Result<TlsMaterial> {
        let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| anyhow!("rcgen: {e}"))?;
        let dir = tempfile::Builder::new().prefix("v2sp-bench-tls-").tempdir()?;
        let cert_file = dir.path().join("bench.crt");
        let key_file = dir.path().join("bench.key");
        std::fs::write(&cert_file, ck.cert.pem())?;
        std::fs::write(&key_file, ck.signing_key.serialize_pem())?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ck.cert.der().clone())
            .map_err(|e| anyhow!("trust the bench certificate: {e}"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("rustls TLS 1.3")?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(ck.cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
            )
            .map_err(|e| anyhow!("rustls server config: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("rustls protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsMaterial {
            _dir: dir,
            cert_file,
            key_file,
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// A fresh client session (resumption tickets are shared through the config).
    pub fn connect(&self) -> anyhow::Result<rustls::ClientConnection> {
        let name = ServerName::try_from(SERVER_NAME).map_err(|e| anyhow!("server name: {e}"))?;
        rustls::ClientConnection::new(self.client.clone(), name).map_err(|e| anyhow!("rustls client: {e}"))
    }
}
