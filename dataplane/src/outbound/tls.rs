//! TLS towards a proxy outbound's server (Trojan, VLESS, VMess with `security: "tls"`): the
//! handshake runs on the connected stream within the outbound's deadline, then the session is
//! an [`UpstreamCodec`] around the protocol's own codec (if any): upload plaintext → protocol
//! framing → TLS records; download records → protocol → plaintext. rustls bounds what it
//! buffers; we drain its plaintext after every record batch.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::{UpstreamCodec, WireError};

/// A compiled `tlsSettings`: the client config and the name to send.
#[derive(Debug)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsClient {
    pub fn new(t: &v2sp_shared::route::OutboundTls) -> Result<TlsClient, String> {
        let name = ServerName::try_from(t.server_name.clone())
            .map_err(|_| format!("serverName {:?} is not a DNS name or an IP", t.server_name))?;
        let builder = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = if t.allow_insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification))
                .with_no_client_auth()
        } else {
            let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Ok(TlsClient {
            config: Arc::new(config),
            name,
        })
    }

    /// Runs the handshake on `s` (the caller bounds it with its deadline).
    pub async fn handshake(&self, s: &mut TcpStream) -> io::Result<TlsUpstream> {
        let mut conn =
            ClientConnection::new(self.config.clone(), self.name.clone()).map_err(io::Error::other)?;
        let mut buf = vec![0u8; 16 * 1024];
        while conn.is_handshaking() {
            while conn.wants_write() {
                let mut out = Vec::new();
                conn.write_tls(&mut out)?;
                s.write_all(&out).await?;
            }
            if !conn.is_handshaking() {
                break;
            }
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut wire = buf.get(..n).unwrap_or_default();
            while !wire.is_empty() {
                conn.read_tls(&mut wire)?;
                conn.process_new_packets().map_err(io::Error::other)?;
            }
        }
        // TLS 1.3 may leave the Finished to send.
        while conn.wants_write() {
            let mut out = Vec::new();
            conn.write_tls(&mut out)?;
            s.write_all(&out).await?;
        }
        Ok(TlsUpstream { conn, inner: None })
    }
}

/// An established TLS session to the upstream, around the protocol's codec.
pub struct TlsUpstream {
    conn: ClientConnection,
    inner: Option<Box<dyn UpstreamCodec>>,
}

impl TlsUpstream {
    /// Puts the protocol's codec inside.
    pub fn with_inner(mut self, inner: Option<Box<dyn UpstreamCodec>>) -> Self {
        self.inner = inner;
        self
    }

    /// Seals protocol bytes that are already framed (a request header) into records.
    pub fn seal_raw(&mut self, framed: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let tls = |_| WireError::Malformed("tls: cannot seal");
        self.conn.writer().write_all(framed).map_err(tls)?;
        while self.conn.wants_write() {
            self.conn.write_tls(out).map_err(tls)?;
        }
        Ok(())
    }
}

impl UpstreamCodec for TlsUpstream {
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        match self.inner.as_mut() {
            Some(i) => {
                let mut framed = Vec::with_capacity(plain.len() + 64);
                i.seal(plain, &mut framed)?;
                self.seal_raw(&framed, out)
            }
            None => self.seal_raw(plain, out),
        }
    }

    fn open(&mut self, mut wire: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let bad = |_| WireError::Malformed("tls: bad records from the upstream");
        let mut plain = Vec::new();
        while !wire.is_empty() {
            if self.conn.read_tls(&mut wire).map_err(bad)? == 0 {
                return Err(WireError::Malformed("tls: the upstream's records overflow"));
            }
            self.conn
                .process_new_packets()
                .map_err(|_| WireError::Malformed("tls: bad records from the upstream"))?;
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match self.conn.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => plain.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return Err(WireError::Malformed("tls: upstream closed uncleanly")),
                }
            }
        }
        match self.inner.as_mut() {
            Some(i) => i.open(&plain, out),
            None => {
                out.extend_from_slice(&plain);
                Ok(())
            }
        }
    }
}

/// `allowInsecure`: every certificate is taken (signatures are still checked against it).
#[derive(Debug)]
pub(crate) struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &crate::tls::provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &crate::tls::provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
