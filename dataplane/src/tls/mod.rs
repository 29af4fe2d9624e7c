//! TLS termination for the TLS-family protocols (Trojan, VLESS over TLS).
//!
//! Design: a stage in front of the protocol handshake, then a [`StreamCodec`] for the relay.
//!
//! ```text
//! client ──TLS records──▶ deframe (complete records only) ──▶ rustls (unbuffered, in place)
//!                                                               │ plaintext
//!        handshake stage: protocol StreamHandshake::feed ◀──────┤
//!        relay:           TlsCodec::open → (inner codec) ───────┘──▶ destination
//! destination ──plaintext──▶ TlsCodec::seal ──TLS records──▶ client
//! ```
//!
//! rustls' unbuffered API is fed whole records cut by [`deframe`] out of the core's buffers and
//! writes into ours, so a session holds no record buffer between reads; the partial tail stays
//! in the relay's `carry` (empty on an idle connection). [`TlsSession`] is sans-IO; [`accept`]
//! drives the handshake on a socket.

pub mod acme_alpn;
pub mod certs;
pub mod deframe;
pub mod reality;
pub mod record;
pub mod sni;
// Vision is VLESS's flow: without VLESS there is nothing to run it.
#[cfg(feature = "vless")]
// Vision is VLESS's flow: without VLESS there is nothing to run it.
#[cfg(feature = "vless")]
pub mod vision;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use v2sp_shared::dpconfig::TlsSettings;

use crate::proto::{SealLayout, StreamCodec, WireError};
pub use certs::{CertError, CertStore};

/// The aws-lc-rs provider (the control plane's panel client uses the same stack).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Stateless session tickets (AES-256 + HMAC-SHA256, RFC 5077 §4, key rotated by rustls),
/// one ticket key for the whole process: every core builds its own config per node, and a
/// resuming client usually lands on another core (SO_REUSEPORT hashes the new 4-tuple).
/// Resumption then costs no per-session server memory.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    static TICKETER: std::sync::OnceLock<Arc<dyn rustls::server::ProducesTickets>> =
        std::sync::OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    Ok(TICKETER.get_or_init(|| t).clone())
}

/// Builds a node's server config: TLS 1.3 and 1.2, ALPN from settings, certificates from the
/// node's [`CertStore`].
pub fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let mut cfg = base_config(s, &[&rustls::version::TLS13, &rustls::version::TLS12])?;
    // After the handshake the relay seals and opens records itself (`record`).
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}

/// A QUIC node's server config (QUIC carries TLS 1.3 only): certificates from the node's
/// [`CertStore`], ALPN from settings; quinn runs the handshake and the packet protection.
pub fn quic_server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    Ok(Arc::new(base_config(s, &[&rustls::version::TLS13])?))
}

fn base_config(
    s: &TlsSettings,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<ServerConfig, String> {
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
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(store));
    cfg.alpn_protocols = s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    cfg.ticketer = ticketer()?;
    Ok(cfg)
}

/// One server-side TLS connection, sans-IO, on rustls' unbuffered API: rustls decrypts in
/// the caller's buffer and encrypts into the caller's `out`, so between calls a session holds
/// no record buffer of its own (an idle connection costs the session state only).
pub struct TlsSession {
    /// rustls, until the handshake is over and the keys move to `records`.
    conn: Option<Box<UnbufferedServerConnection>>,
    /// Our record layer once the connection is established (see [`record`]).
    records: Option<Box<record::RecordLayer>>,
    /// The config allows taking the keys out of rustls.
    extractable: bool,
    /// Negotiated ALPN, kept when rustls is dropped.
    alpn: Option<Box<[u8]>>,
    /// Set once the peer sent close_notify.
    closed: bool,
    /// Handshake records produced while opening (flushed by `pending_output`/`seal`).
    pending: Vec<u8>,
    /// Bytes at the front of the caller's buffer that rustls keeps (a handshake message split
    /// across records, already processed in place): passed again, never re-deframed.
    retained: usize,
    /// Server name from the ClientHello (for fallback selection), when it could be read.
    sni: Option<Box<str>>,
}

/// Room for one encrypted record's overhead (header, tag, content type, padding).
const RECORD_OVERHEAD: usize = 64;
/// Records of our own (post-handshake messages) that may wait for a client that does not
/// read before the relay stops reading from it (see `StreamCodec::output_over_budget`).
pub const MAX_PENDING: usize = 16 * 1024;

impl TlsSession {
    pub fn new(cfg: &Arc<ServerConfig>) -> Result<Self, WireError> {
        let conn = UnbufferedServerConnection::new(cfg.clone())
            .map_err(|_| WireError::Unsupported("TLS server config"))?;
        Ok(TlsSession {
            conn: Some(Box::new(conn)),
            records: None,
            extractable: cfg.enable_secret_extraction,
            alpn: None,
            closed: false,
            pending: Vec::new(),
            retained: 0,
            sni: None,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.is_handshaking())
    }

    /// Moves the traffic keys from rustls to our record layer, once that is safe: handshake
    /// over, nothing of rustls' left to send or half-read. Until then (and for configs that
    /// do not allow it) rustls' own record path serves.
    fn switch_to_records(&mut self) {
        if self.records.is_some()
            || !self.extractable
            || self.is_handshaking()
            || self.retained > 0
            || !self.pending.is_empty()
        {
            return;
        }
        let Some(conn) = self.conn.take() else {
            return;
        };
        self.alpn = conn.alpn_protocol().map(Box::from);
        // An error here leaves the session without either layer: every later call fails and
        // the connection closes (rustls refuses only on states excluded above).
        if let Ok((secrets, schedule)) = conn.dangerous_into_kernel_connection() {
            self.records = record::RecordLayer::new(secrets, schedule).ok().map(Box::new);
        }
    }

    /// Our record layer, once the keys moved there (tests).
    #[cfg(test)]
    pub(crate) fn records_mut(&mut self) -> Option<&mut record::RecordLayer> {
        self.records.as_deref_mut()
    }

    fn conn(&mut self) -> Result<&mut UnbufferedServerConnection, WireError> {
        self.conn
            .as_deref_mut()
            .ok_or(WireError::Unsupported("TLS: session lost its keys"))
    }

    /// The client's SNI (lower case), when the ClientHello came in one record.
    pub fn server_name(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The negotiated ALPN protocol.
    pub fn alpn(&self) -> Option<&[u8]> {
        match &self.conn {
            Some(c) => c.alpn_protocol(),
            None => self.alpn.as_deref(),
        }
    }

    /// Whether the peer ended the TLS stream (close_notify).
    pub fn peer_closed(&self) -> bool {
        self.closed
    }

    /// Processes the complete records at the front of `buf` in place, appending plaintext to
    /// `out` and handshake output to `self.pending`. Returns how many bytes to drop from the
    /// front of `buf`; bytes after that which rustls retained must be passed again unchanged.
    pub fn open_in_place(&mut self, buf: &mut [u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let mut end = self.retained.min(buf.len());
        loop {
            match deframe::record_len(buf.get(end..).unwrap_or_default()) {
                Ok(Some(len)) => end += len,
                Ok(None) => break,
                Err(e) => {
                    // Not a record: rustls still sees the records before it and then the bad
                    // header, so that it queues the alert it would send for it (decode_error,
                    // record_overflow; see `failure_alert`). The connection is over either way.
                    let _ = self.process_records(buf, out);
                    return Err(e);
                }
            }
        }
        self.process_records(buf.get_mut(..end).unwrap_or_default(), out)
    }

    /// The records in `buf` (complete ones, or a bad one last) through rustls; see
    /// [`TlsSession::open_in_place`].
    fn process_records(&mut self, buf: &mut [u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let mut rest = buf;
        let mut dropped = 0usize;
        // Bounded: each pass either consumes input, emits output or stops.
        let conn = self
            .conn
            .as_deref_mut()
            .ok_or(WireError::Unsupported("TLS: handshake already handed over"))?;
        for _ in 0..10_000 {
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(rest);
            let state = state.map_err(|_| WireError::Malformed("TLS: bad handshake or record"))?;
            let stop = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec.map_err(|_| WireError::BadTag)?;
                        discard += rec.discard;
                        out.extend_from_slice(rec.payload);
                    }
                    false
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    let mut need = 4096;
                    for _ in 0..8 {
                        let start = self.pending.len();
                        self.pending.resize(start + need, 0);
                        let r = e.encode(self.pending.get_mut(start..).unwrap_or_default());
                        match r {
                            Ok(n) => {
                                self.pending.truncate(start + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                                self.pending.truncate(start);
                                need = required_size;
                            }
                            Err(_) => {
                                self.pending.truncate(start);
                                break;
                            }
                        }
                    }
                    false
                }
                // The caller sends `pending` right after this call.
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    false
                }
                ConnectionState::PeerClosed => {
                    self.closed = true;
                    false
                }
                ConnectionState::ReadEarlyData(_) => {
                    return Err(WireError::Unsupported("TLS early data"));
                }
                // BlockedHandshake, WriteTraffic (all input handled), Closed.
                _ => true,
            };
            let d = discard.min(rest.len());
            dropped += d;
            rest = rest.get_mut(d..).unwrap_or_default();
            if stop {
                self.retained = rest.len();
                return Ok(dropped);
            }
        }
        Err(WireError::Malformed("TLS: too many records in one read"))
    }

    /// After a failed handshake: the fatal alert rustls queued for the failure (handshake_failure,
    /// decode_error, bad_record_mac, …, encrypted when the handshake already was), appended to
    /// `out`. Nothing when rustls had no alert to send (e.g. a few bytes of garbage).
    pub fn failure_alert(&mut self, out: &mut Vec<u8>) {
        let Some(conn) = self.conn.as_deref_mut() else {
            return;
        };
        // Bounded: rustls queues one alert (a few records at most) after an error.
        for _ in 0..8 {
            match conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let start = out.len();
                    out.resize(start + 4096, 0);
                    let n = e.encode(out.get_mut(start..).unwrap_or_default()).unwrap_or(0);
                    out.truncate(start + n);
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
    }

    /// Feeds the complete records at the front of `wire` (a copy is decrypted), appending
    /// plaintext to `out`; returns how many bytes were consumed (a partial record stays with
    /// the caller). For the relay, after the handshake.
    pub fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        self.switch_to_records();
        if let Some(r) = self.records.as_deref_mut() {
            let mut seen = record::Opened { closed: self.closed };
            let used = r.open(wire, out, &mut seen)?;
            self.closed = seen.closed;
            return Ok(used);
        }
        if self.retained > 0 {
            return Err(WireError::Unsupported("TLS: fragmented post-handshake message"));
        }
        let mut end = 0;
        while let Some(len) = deframe::record_len(wire.get(end..).unwrap_or_default())? {
            end += len;
        }
        if end == 0 {
            return Ok(0);
        }
        let mut scratch = wire.get(..end).unwrap_or_default().to_vec();
        let used = self.open_in_place(&mut scratch, out)?;
        if self.retained > 0 {
            return Err(WireError::Unsupported("TLS: fragmented post-handshake message"));
        }
        Ok(used)
    }

    /// Ends our side with close_notify (our record layer only: before it takes over, the
    /// connection simply closes, as it always did).
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.pending_output(out);
        match self.records.as_deref_mut() {
            Some(r) => r.close_notify(out),
            None => Ok(()),
        }
    }

    /// In-place sealing geometry, once our record layer serves and nothing is queued.
    pub fn seal_layout(&self) -> Option<SealLayout> {
        if !self.pending.is_empty() {
            return None;
        }
        self.records.as_ref()?.seal_layout()
    }

    /// See [`StreamCodec::seal_in_place`].
    pub fn seal_in_place(&mut self, buf: &mut [u8], n: usize, l: SealLayout) -> Result<usize, WireError> {
        self.records
            .as_deref_mut()
            .ok_or(WireError::Unsupported("in-place sealing before the record layer"))?
            .seal_in_place(buf, n, l)
    }

    /// Bytes of records waiting to be sent without new data.
    pub fn pending_len(&self) -> usize {
        self.pending.len() + self.records.as_ref().map_or(0, |r| r.pending_len())
    }

    /// Whether records wait to be sent without new data (our KeyUpdate answer).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.records.as_ref().is_some_and(|r| r.has_pending())
    }

    /// Appends the TLS records produced while opening (handshake messages, tickets, KeyUpdate).
    pub fn pending_output(&mut self, out: &mut Vec<u8>) {
        if let Some(r) = self.records.as_deref_mut() {
            r.take_pending(&mut self.pending);
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.pending);
        } else {
            out.append(&mut self.pending);
        }
        self.pending = Vec::new();
    }

    /// Encrypts `plain`, appending records (after anything pending) to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        self.pending_output(out);
        self.switch_to_records();
        if let Some(r) = self.records.as_deref_mut() {
            return r.seal(plain, out);
        }
        if plain.is_empty() {
            return Ok(());
        }
        let conn = self.conn()?;
        // Anything rustls still wants to send first (e.g. a key update) is encoded into `out`.
        for _ in 0..16 {
            match conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::WriteTraffic(mut w)) => return encrypt(&mut w, plain, out),
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let start = out.len();
                    out.resize(start + 4096, 0);
                    let n = e.encode(out.get_mut(start..).unwrap_or_default()).unwrap_or(0);
                    out.truncate(start + n);
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
        Err(WireError::Unsupported("TLS: cannot encrypt now"))
    }
}

/// Encrypts `plain` into records appended to `out`.
fn encrypt(
    w: &mut WriteTraffic<'_, ServerConnectionData>,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let mut need = plain.len() + RECORD_OVERHEAD * (plain.len() / 16384 + 1);
    for _ in 0..4 {
        let start = out.len();
        out.resize(start + need, 0);
        let r = w.encrypt(plain, out.get_mut(start..).unwrap_or_default());
        match r {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.truncate(start);
                need = required_size;
            }
            Err(_) => {
                out.truncate(start);
                return Err(WireError::Unsupported("TLS: cannot encrypt"));
            }
        }
    }
    Err(WireError::Unsupported("TLS: cannot encrypt"))
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
        if self.inner_carry.is_empty() {
            // An idle connection holds no decrypted bytes.
            self.inner_carry = Vec::new();
        }
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

    fn seal_layout(&self) -> Option<SealLayout> {
        match self.inner {
            None => self.tls.seal_layout(),
            Some(_) => None,
        }
    }

    fn seal_in_place(&mut self, buf: &mut [u8], n: usize, l: SealLayout) -> Result<usize, WireError> {
        match self.inner {
            None => self.tls.seal_in_place(buf, n, l),
            Some(_) => Err(WireError::Unsupported("in-place sealing under an inner codec")),
        }
    }

    fn input_ended(&self) -> bool {
        self.tls.peer_closed() || self.inner.as_ref().is_some_and(|i| i.input_ended())
    }

    fn close_output(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if let Some(inner) = self.inner.as_mut() {
            let mut plain = Vec::new();
            inner.close_output(&mut plain)?;
            if !plain.is_empty() {
                self.tls.seal(&plain, out)?;
            }
        }
        self.tls.close_notify(out)
    }

    fn has_control(&self) -> bool {
        self.tls.has_pending() || self.inner.as_ref().is_some_and(|i| i.has_control())
    }

    fn send_blocked(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.send_blocked())
    }

    fn output_over_budget(&self) -> bool {
        self.tls.pending_len() > MAX_PENDING || self.inner.as_ref().is_some_and(|i| i.output_over_budget())
    }

    fn take_control(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.tls.pending_output(out);
        let Some(inner) = self.inner.as_mut() else {
            return Ok(());
        };
        let mut plain = Vec::new();
        inner.take_control(&mut plain)?;
        if plain.is_empty() {
            return Ok(());
        }
        self.tls.seal(&plain, out)
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
    let mut sni_tried = false;
    loop {
        // Once the first record is complete (before rustls consumes it).
        if !sni_tried && !matches!(deframe::record_len(&carry), Ok(None)) {
            sni_tried = true;
            session.sni = sni::client_hello_sni(&carry).map(String::into_boxed_str);
        }
        if !carry.is_empty() {
            // In place: rustls may keep a handshake message split across records in `carry`.
            let used = match session.open_in_place(&mut carry, &mut plaintext) {
                Ok(u) => u,
                Err(e) => {
                    // A TLS server ends a failed handshake with its fatal alert, then closes
                    // (the caller drains what the client still sends until the deadline).
                    let mut alert = std::mem::take(&mut out);
                    alert.clear();
                    session.pending_output(&mut alert);
                    session.failure_alert(&mut alert);
                    if !alert.is_empty() && write_all(s, &alert).await.is_ok() {
                        let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
                    }
                    return Err(AcceptError::Wire(e));
                }
            };
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
