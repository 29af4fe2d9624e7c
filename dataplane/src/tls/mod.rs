//! TLS termination for the TLS-family protocols (Trojan, VLESS over TLS).
//!
//! Design: a stage in front of the protocol handshake, then a [`StreamCodec`] for the relay.
//!
//! ```text
//! client ──TLS records──▶ deframe (complete records only) ──▶ rustls ServerConnection
//!                                                               │ plaintext
//!        handshake stage: protocol StreamHandshake::feed ◀──────┤
//!        relay:           TlsCodec::open → (inner codec) ───────┘──▶ destination
//! destination ──plaintext──▶ TlsCodec::seal ──TLS records──▶ client
//! ```
//!
//! rustls is fed whole records cut by [`deframe`] out of the core's buffers, so between reads
//! it holds no partial record; the partial tail stays in the relay's `carry` (empty on an idle
//! connection). [`TlsSession`] is sans-IO; [`accept`] drives the handshake on a socket.

pub mod certs;
pub mod deframe;

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ServerConfig, ServerConnection};
use tokio::net::TcpStream;
use v2sp_shared::dpconfig::TlsSettings;

use crate::proto::{StreamCodec, WireError};
pub use certs::{CertError, CertStore};

/// The aws-lc-rs provider (the control plane's panel client uses the same stack).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds a node's server config: TLS 1.3 and 1.2, ALPN from settings, certificates from the
/// node's [`CertStore`].
pub fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let store = CertStore::open(
        &s.cert_file,
        &s.key_file,
        &s.server_name,
        s.reject_unknown_sni,
        provider.clone(),
    )
    .map_err(|e| format!("TLS certificate: {e}"))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(store));
    cfg.alpn_protocols = s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// One server-side TLS connection, sans-IO.
pub struct TlsSession {
    conn: ServerConnection,
    /// Set once the peer sent close_notify.
    closed: bool,
}

impl TlsSession {
    pub fn new(cfg: &Arc<ServerConfig>) -> Result<Self, WireError> {
        let mut conn =
            ServerConnection::new(cfg.clone()).map_err(|_| WireError::Unsupported("TLS server config"))?;
        // Everything written is drained into the caller's buffer right away.
        conn.set_buffer_limit(None);
        Ok(TlsSession { conn, closed: false })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the peer ended the TLS stream (close_notify).
    pub fn peer_closed(&self) -> bool {
        self.closed
    }

    /// Feeds the complete records at the front of `wire`, appending decrypted plaintext to
    /// `out`; returns how many bytes were consumed (a partial record stays with the caller).
    pub fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let mut used = 0;
        while let Some(len) = deframe::record_len(wire.get(used..).unwrap_or_default())? {
            let mut rec = wire.get(used..used + len).unwrap_or_default();
            used += len;
            while !rec.is_empty() {
                match self.conn.read_tls(&mut rec) {
                    Ok(0) => return Err(WireError::Malformed("TLS: rustls took no bytes")),
                    Ok(_) => {}
                    Err(_) => return Err(WireError::Malformed("TLS: record not accepted")),
                }
            }
            let state = self
                .conn
                .process_new_packets()
                .map_err(|_| WireError::Malformed("TLS: bad handshake or record"))?;
            let mut avail = state.plaintext_bytes_to_read();
            if state.peer_has_closed() {
                self.closed = true;
            }
            while avail > 0 {
                let start = out.len();
                out.resize(start + avail, 0);
                let n = match self.conn.reader().read(out.get_mut(start..).unwrap_or_default()) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                    Err(_) => 0,
                };
                out.truncate(start + n);
                if n == 0 {
                    break;
                }
                avail = avail.saturating_sub(n);
            }
        }
        Ok(used)
    }

    /// Appends the TLS records rustls wants to send (handshake messages, tickets, alerts).
    pub fn pending_output(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Encrypts `plain`, appending records (and anything else pending) to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if !plain.is_empty() {
            self.conn
                .writer()
                .write_all(plain)
                .map_err(|_| WireError::Unsupported("TLS: cannot encrypt"))?;
        }
        self.pending_output(out);
        Ok(())
    }
}

/// The relay's codec for a TLS connection: TLS outside, the protocol's own codec (if any)
/// inside.
pub struct TlsCodec {
    tls: TlsSession,
    inner: Option<Box<dyn StreamCodec>>,
    /// Decrypted bytes not yet consumed by `inner` (partial inner frame).
    inner_carry: Vec<u8>,
}

impl TlsCodec {
    pub fn new(tls: TlsSession, inner: Option<Box<dyn StreamCodec>>) -> Self {
        TlsCodec {
            tls,
            inner,
            inner_carry: Vec::new(),
        }
    }
}

impl StreamCodec for TlsCodec {
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let Some(inner) = self.inner.as_mut() else {
            return self.tls.open(wire, out);
        };
        let used = self.tls.open(wire, &mut self.inner_carry)?;
        let n = inner.open(&self.inner_carry, out)?;
        self.inner_carry.drain(..n.min(self.inner_carry.len()));
        Ok(used)
    }

    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        match self.inner.as_mut() {
            None => self.tls.seal(plain, out),
            Some(inner) => {
                let mut framed = Vec::with_capacity(plain.len() + 64);
                inner.seal(plain, &mut framed)?;
                self.tls.seal(&framed, out)
            }
        }
    }
}

/// Why the TLS handshake stage ended without a session.
#[derive(Debug)]
pub enum AcceptError {
    /// Not TLS or a failed handshake (client's fault).
    Wire(WireError),
    /// Socket closed or failed.
    Io,
}

/// A finished TLS handshake: the session, plaintext the client already sent after it, and
/// the partial record that followed.
pub struct Accepted {
    pub session: TlsSession,
    pub plaintext: Vec<u8>,
    pub carry: Vec<u8>,
}

/// Writes all of `data` to a shared socket reference.
pub async fn write_all(s: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        s.writable().await?;
        match s.try_write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = data.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read_some(s: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Runs the server handshake on `s` (`first`: bytes already read, e.g. after a PROXY header).
/// Bounded by the caller's handshake deadline.
pub async fn accept(
    s: &TcpStream,
    cfg: &Arc<ServerConfig>,
    first: Vec<u8>,
    buf: &mut [u8],
) -> Result<Accepted, AcceptError> {
    let mut session = TlsSession::new(cfg).map_err(AcceptError::Wire)?;
    let mut carry = first;
    let mut plaintext = Vec::new();
    let mut out = Vec::new();
    loop {
        if !carry.is_empty() {
            let used = session.open(&carry, &mut plaintext).map_err(AcceptError::Wire)?;
            carry.drain(..used.min(carry.len()));
            // A handshake never needs more than a few records buffered.
            if carry.len() > deframe::HEADER_LEN + deframe::MAX_FRAGMENT {
                return Err(AcceptError::Wire(WireError::Malformed("TLS record too long")));
            }
        }
        out.clear();
        session.pending_output(&mut out);
        if !out.is_empty() {
            write_all(s, &out).await.map_err(|_| AcceptError::Io)?;
        }
        if !session.is_handshaking() {
            return Ok(Accepted {
                session,
                plaintext,
                carry,
            });
        }
        let n = match read_some(s, buf).await {
            Ok(0) | Err(_) => return Err(AcceptError::Io),
            Ok(n) => n,
        };
        carry.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests;
