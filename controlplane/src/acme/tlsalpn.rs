//! TLS-ALPN-01 (RFC 8737) on the node's own port. The control plane and the data plane are
//! separate processes, so the answer goes through a file: the control plane writes the
//! challenge certificate (self-signed for the domain, with the critical acmeIdentifier
//! extension holding SHA-256 of the key authorization) and its key to the node's
//! `acme_tls_alpn_file`; the data plane serves it to ClientHellos that offer ALPN `acme-tls/1`
//! alone (the CA's validator; no normal client does) and closes them after the handshake.
//!
//! Before the CA is asked to validate, the control plane checks through the node's port that
//! the data plane serves exactly this certificate (the node may have just started, the data
//! plane re-reads the file when it changes); the file is removed after the order.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};

use super::client::{fail, AcmeError};
use super::solver::{Presented, Solver};

/// The ALPN protocol of the validation (RFC 8737 §6.2).
pub const ACME_TLS_1: &str = "acme-tls/1";
/// The longest wait for the data plane to serve the challenge.
const SERVE_WITHIN: Duration = Duration::from_secs(30);

/// Where a TLS-ALPN-01 answer goes: the file the data plane serves it from, and where the
/// node's port is reached from this host (for the self-check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsAlpnTarget {
    pub challenge_file: PathBuf,
    pub connect: SocketAddr,
}

/// `<dir of CertFile>/acme/<CertFile's name>.tls-alpn-01.pem`: one per certificate, next to
/// the account keys (the directory is 0700).
pub fn challenge_file(cert_file: &Path) -> PathBuf {
    let dir = cert_file.parent().unwrap_or(Path::new("."));
    let name = cert_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cert".into());
    dir.join("acme").join(format!("{name}.tls-alpn-01.pem"))
}

/// The challenge certificate and key (PEM) for `domain`, and the certificate's DER.
pub(crate) fn challenge_cert(domain: &str, key_authorization: &str) -> Result<(String, Vec<u8>), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut p = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&Sha256::digest(
        key_authorization.as_bytes(),
    ))];
    let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((
        format!("{}{}", cert.pem(), key.serialize_pem()),
        cert.der().to_vec(),
    ))
}

pub(crate) struct TlsAlpn01 {
    target: TlsAlpnTarget,
    /// (domain, challenge certificate DER) being served.
    presented: Option<(String, Vec<u8>)>,
}

impl TlsAlpn01 {
    pub(crate) fn new(target: TlsAlpnTarget) -> TlsAlpn01 {
        TlsAlpn01 {
            target,
            presented: None,
        }
    }
}

const STEP: &str = "tls-alpn-01 certificate";

impl Solver for TlsAlpn01 {
    fn challenge_type(&self) -> &'static str {
        "tls-alpn-01"
    }

    fn present(&mut self, p: &Presented<'_>) -> Result<(), AcmeError> {
        if self.presented.is_some() {
            // One file per node: v2sp orders one name per certificate (`CertDomain`).
            return Err(fail(STEP, "TLS-ALPN-01 answers one name per order"));
        }
        let (pem, der) = challenge_cert(p.domain, p.key_authorization).map_err(|e| fail(STEP, e))?;
        let path = &self.target.challenge_file;
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail(STEP, format!("{}: {e}", dir.display())))?;
        }
        let tmp = crate::certfiles::write_tmp(path, pem.as_bytes(), 0o600).map_err(|e| fail(STEP, e))?;
        std::fs::rename(&tmp, path).map_err(|e| fail(STEP, format!("{}: {e}", path.display())))?;
        self.presented = Some((p.domain.to_string(), der));
        Ok(())
    }

    fn wait_ready(&mut self, deadline: Instant) -> Result<(), AcmeError> {
        let Some((domain, der)) = &self.presented else {
            return Ok(());
        };
        let until = deadline.min(Instant::now() + SERVE_WITHIN);
        let mut last;
        loop {
            match served_certificate(self.target.connect, domain, Duration::from_secs(3)) {
                Ok(got) if got == *der => return Ok(()),
                Ok(_) => last = "another certificate is served".to_string(),
                Err(e) => last = e,
            }
            if Instant::now() + Duration::from_millis(200) >= until {
                return Err(fail(
                    "tls-alpn-01 self-check",
                    format!(
                        "the node's port {} does not serve the challenge certificate to acme-tls/1: {last}",
                        self.target.connect
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn cleanup(&mut self) {
        if self.presented.take().is_some() {
            if let Err(e) = std::fs::remove_file(&self.target.challenge_file) {
                tracing::warn!(file = %self.target.challenge_file.display(), "ACME: cannot remove the TLS-ALPN-01 certificate: {e}");
            }
        }
    }
}

/// The end-entity certificate `addr` presents to an `acme-tls/1` ClientHello for `domain`.
pub(crate) fn served_certificate(
    addr: SocketAddr,
    domain: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ACME_TLS_1.as_bytes().to_vec()];
    let name = ServerName::try_from(domain.to_string()).map_err(|e| format!("{domain:?}: {e}"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    // Bounded: each round moves bytes or fails; a handshake is a few round trips.
    for _ in 0..16 {
        if !conn.is_handshaking() {
            break;
        }
        conn.complete_io(&mut sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    if conn.alpn_protocol() != Some(ACME_TLS_1.as_bytes()) {
        return Err("acme-tls/1 was not negotiated".into());
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| "no certificate".to_string())
}

/// Accepts any certificate and handshake signature: the self-check only compares the
/// certificate with ours byte for byte (it asks "does the data plane serve it?", on this
/// host). The signatures cannot be checked with rustls' helpers anyway: they parse the
/// certificate with webpki, which refuses the critical acmeIdentifier extension.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// RFC 8737 §3: the acmeIdentifier extension (1.3.6.1.5.5.7.1.31), critical, holding an
    /// OCTET STRING of the SHA-256 of the key authorization.
    #[test]
    fn challenge_certificate_carries_the_critical_acme_identifier() {
        let (pem, der) = challenge_cert("a.example", "tok.thumb").unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"));
        let digest = Sha256::digest(b"tok.thumb");
        // Extension: SEQUENCE { OID 1.3.6.1.5.5.7.1.31, BOOLEAN TRUE, OCTET STRING { OCTET STRING(32) } }
        let mut ext = vec![
            0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f, 0x01, 0x01, 0xff,
        ];
        ext.extend_from_slice(&[0x04, 0x22, 0x04, 0x20]);
        ext.extend_from_slice(&digest);
        assert!(
            der.windows(ext.len()).any(|w| w == ext.as_slice()),
            "extension not found"
        );
    }

    #[test]
    fn challenge_file_sits_in_the_acme_directory() {
        assert_eq!(
            challenge_file(Path::new("/etc/v2sp/a.example.crt")),
            Path::new("/etc/v2sp/acme/a.example.crt.tls-alpn-01.pem")
        );
    }
}
