//! REALITY server (VLESS `tls: 2`): TLS 1.3 whose ClientHello carries an authenticator, and a
//! transparent relay to a real site (`dest`) for everyone else.
//!
//! ```text
//! client ──ClientHello──▶ v2sp ──(same bytes, PROXY header first if xver)──▶ dest
//!   authenticate(hello):
//!     shared   = X25519(node private key, client X25519 share)
//!     auth key = HKDF-SHA256(shared, salt = random[..20], info = "REALITY")       32 B
//!     plain    = AES-256-GCM-open(auth key, nonce = random[20..32],
//!                                 session id (32 B = 16 + tag), aad = hello with zero sid)
//!     plain    = version (3) | reserved (1) | unix time (4, BE) | short id (8)
//!     ok iff TLS 1.3 offered, SNI in server names, short id known, |now - time| <= max diff
//!   ok:   wait for dest's first answer (timing), drop dest, TLS 1.3 handshake with rustls:
//!         certificate = the node's ed25519 certificate with its 64-byte signature replaced by
//!         HMAC-SHA512(auth key, ed25519 public key) (what REALITY clients check)
//!   else: relay client <-> dest unchanged (the client sees dest's real certificate)
//! ```

pub mod hello;

use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{ServerConfig, SignatureAlgorithm, SignatureScheme};
use tokio::net::TcpStream;
use v2sp_shared::dpconfig::RealitySettings;

use crate::outbound::{ConnectOpts, Outbound};
use crate::proto::Destination;
use crate::tls::{AcceptError, Accepted};

/// One node's REALITY state (built per core when the node starts).
pub struct RealityServer {
    private_key: [u8; 32],
    server_names: Vec<String>,
    short_ids: Vec<[u8; 8]>,
    max_time_diff_ms: u64,
    pub dest: Destination,
    pub xver: u8,
    /// DER of the node's ed25519 certificate; the last 64 bytes (the signature) are replaced
    /// per connection.
    cert_der: Vec<u8>,
    ed25519_public: Vec<u8>,
    key: Arc<dyn SigningKey>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for RealityServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealityServer")
            .field("server_names", &self.server_names)
            .field("dest", &self.dest)
            .finish_non_exhaustive()
    }
}

/// `host:port` (IP literals in brackets for IPv6) as a destination.
pub fn parse_dest(s: &str) -> Option<Destination> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(Destination::Ip(a));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some(Destination::Domain(host.to_string(), port))
}

/// Decodes a REALITY key: base64url without padding (as `xray x25519` prints), padding and
/// the standard alphabet tolerated.
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let t = s.trim().trim_end_matches('=');
    let v = URL_SAFE_NO_PAD
        .decode(t)
        .or_else(|_| STANDARD_NO_PAD.decode(t))
        .ok()?;
    <[u8; 32]>::try_from(v.as_slice()).ok()
}

/// A short id as REALITY stores it: up to 16 hex digits, zero-padded on the right to 8 bytes.
pub fn decode_short_id(s: &str) -> Option<[u8; 8]> {
    let s = s.trim();
    if s.len() > 16 || !s.len().is_multiple_of(2) {
        return None;
    }
    let v = hex::decode(s).ok()?;
    let mut out = [0u8; 8];
    out.get_mut(..v.len())?.copy_from_slice(&v);
    Some(out)
}

/// HMAC-SHA512(auth key, ed25519 public key): the temporary certificate's signature field.
pub fn cert_signature(auth_key: &[u8; 32], ed25519_public: &[u8]) -> [u8; 64] {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA512, auth_key);
    let tag = aws_lc_rs::hmac::sign(&k, ed25519_public);
    let mut out = [0u8; 64];
    let t = tag.as_ref();
    if t.len() == out.len() {
        out.copy_from_slice(t);
    }
    out
}

/// The REALITY authenticator check of a ClientHello handshake message. Returns the auth key
/// of a client that authenticated, `None` for anyone else.
pub fn authenticate(
    private_key: &[u8; 32],
    server_names: &[String],
    short_ids: &[[u8; 8]],
    max_time_diff_ms: u64,
    msg: &[u8],
    now_ms: u64,
) -> Option<[u8; 32]> {
    let h = hello::parse(msg).ok()?;
    if !h.tls13 {
        return None;
    }
    let sni = h.server_name.as_deref()?;
    if !server_names.iter().any(|n| n.eq_ignore_ascii_case(sni)) {
        return None;
    }
    let share = h.x25519?;
    let mut sid = h.session_id?;
    let priv_key = agreement::PrivateKey::from_private_key(&X25519, private_key).ok()?;
    let mut auth = [0u8; 32];
    agreement::agree(&priv_key, UnparsedPublicKey::new(&X25519, &share), (), |shared| {
        // All-zero output: a low-order point, never a real client.
        if shared.iter().all(|b| *b == 0) {
            return Err(());
        }
        hkdf::Hkdf::<sha2::Sha256>::new(h.random.get(..20), shared)
            .expand(b"REALITY", &mut auth)
            .map_err(|_| ())
    })
    .ok()?;
    let mut aad = msg.to_vec();
    aad.get_mut(hello::SESSION_ID_AT..hello::SESSION_ID_AT + 32)?
        .fill(0);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &auth).ok()?);
    let nonce = Nonce::try_assume_unique_for_key(h.random.get(20..32)?).ok()?;
    let plain = key.open_in_place(nonce, Aad::from(&aad[..]), &mut sid).ok()?;
    let plain: [u8; 16] = plain.get(..16)?.try_into().ok()?;
    let t = u64::from(u32::from_be_bytes(plain.get(4..8)?.try_into().ok()?));
    if max_time_diff_ms > 0 && (t * 1000).abs_diff(now_ms) > max_time_diff_ms {
        return None;
    }
    let sid8: [u8; 8] = plain.get(8..16)?.try_into().ok()?;
    if !short_ids.contains(&sid8) {
        return None;
    }
    Some(auth)
}

/// Whether an authenticated ClientHello is seen here for the first time (`first_seen` records
/// a key and says whether it was new). A real client's hello, captured and replayed by a
/// prober, authenticates again: nothing in it depends on the connection. Answering it with our
/// certificate would tell the prober what this server is, so each authenticated hello's
/// random is remembered (in the process-wide replay filter the Shadowsocks salts use, which
/// keeps an entry at least its window; the key is domain-separated from salts) and a second
/// sighting is a stranger, relayed to dest. Only authenticated hellos are recorded: strangers
/// cannot fill the filter. A replay older than the filter's memory is caught only by a
/// `max_time_diff`, which the panels do not send (0: off, as in Xray).
pub fn first_sighting(msg: &[u8], first_seen: &dyn Fn(&[u8]) -> bool) -> bool {
    let Ok(h) = hello::parse(msg) else {
        return false;
    };
    let mut key = [0u8; 33];
    key[0] = b'R';
    key[1..].copy_from_slice(&h.random);
    first_seen(&key)
}

impl RealityServer {
    pub fn new(s: &RealitySettings) -> Result<Self, String> {
        let private_key =
            decode_key(&s.private_key).ok_or("REALITY private_key is not a base64url X25519 key")?;
        let short_ids = s
            .short_ids
            .iter()
            .map(|i| {
                decode_short_id(i).ok_or_else(|| format!("REALITY short id {i:?} is not hex (<= 16 digits)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let short_ids = if short_ids.is_empty() {
            vec![[0u8; 8]]
        } else {
            short_ids
        };
        let dest =
            parse_dest(&s.dest).ok_or_else(|| format!("REALITY dest {:?} is not host:port", s.dest))?;
        if s.server_names.is_empty() {
            return Err("REALITY needs at least one server name".into());
        }
        let kp =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| format!("ed25519 key: {e}"))?;
        let params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| format!("certificate: {e}"))?;
        let cert = params.self_signed(&kp).map_err(|e| format!("certificate: {e}"))?;
        let cert_der = cert.der().to_vec();
        if cert_der.len() < 64 {
            return Err("certificate too short".into());
        }
        let provider = super::provider();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
        let key = provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| format!("ed25519 key: {e}"))?;
        Ok(RealityServer {
            private_key,
            server_names: s.server_names.iter().map(|n| n.trim().to_string()).collect(),
            short_ids,
            max_time_diff_ms: s.max_time_diff_ms,
            dest,
            xver: s.xver,
            cert_der,
            ed25519_public: kp.public_key_raw().to_vec(),
            key: Arc::new(AnySchemeEd25519(key)),
            provider,
        })
    }

    pub fn authenticate(&self, msg: &[u8], now_ms: u64) -> Option<[u8; 32]> {
        authenticate(
            &self.private_key,
            &self.server_names,
            &self.short_ids,
            self.max_time_diff_ms,
            msg,
            now_ms,
        )
    }

    /// The certificate for a client with `auth_key`.
    pub fn certificate(&self, auth_key: &[u8; 32]) -> Vec<u8> {
        let mut der = self.cert_der.clone();
        let sig = cert_signature(auth_key, &self.ed25519_public);
        let at = der.len().saturating_sub(64);
        if let Some(tail) = der.get_mut(at..) {
            tail.copy_from_slice(&sig);
        }
        der
    }

    /// A TLS 1.3-only server config presenting this connection's certificate.
    pub fn server_config(&self, auth_key: &[u8; 32]) -> Result<Arc<ServerConfig>, String> {
        let ck = CertifiedKey::new(
            vec![CertificateDer::from(self.certificate(auth_key))],
            self.key.clone(),
        );
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(OneCert(Arc::new(ck))));
        cfg.send_tls13_tickets = 0;
        cfg.enable_secret_extraction = true;
        Ok(Arc::new(cfg))
    }
}

/// The node's ed25519 key, used whatever schemes the client lists: REALITY clients (uTLS with
/// browser fingerprints) do not list ed25519 but accept it (Go checks a CertificateVerify
/// against the schemes it implements, not the ones it offered).
#[derive(Debug)]
struct AnySchemeEd25519(Arc<dyn SigningKey>);

impl SigningKey for AnySchemeEd25519 {
    fn choose_scheme(&self, _offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        self.0.choose_scheme(&[SignatureScheme::ED25519])
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A PROXY protocol header (v1 text or v2 binary) for `src` → `dst`.
pub fn proxy_header(version: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V6(d)) => match d.ip().to_ipv4_mapped() {
            Some(ip) => (SocketAddr::V4(s), SocketAddr::new(ip.into(), d.port())),
            None => (
                SocketAddr::new(s.ip().to_ipv6_mapped().into(), s.port()),
                SocketAddr::V6(d),
            ),
        },
        (SocketAddr::V6(s), SocketAddr::V4(d)) => match s.ip().to_ipv4_mapped() {
            Some(ip) => (SocketAddr::new(ip.into(), s.port()), SocketAddr::V4(d)),
            None => (
                SocketAddr::V6(s),
                SocketAddr::new(d.ip().to_ipv6_mapped().into(), d.port()),
            ),
        },
        p => p,
    };
    if version == 1 {
        let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        return format!(
            "PROXY {fam} {} {} {} {}\r\n",
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        )
        .into_bytes();
    }
    let mut v = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21,
    ];
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            v.push(0x11);
            v.extend_from_slice(&12u16.to_be_bytes());
            v.extend_from_slice(&s.ip().octets());
            v.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            v.push(0x21);
            v.extend_from_slice(&36u16.to_be_bytes());
            v.extend_from_slice(&s.ip().octets());
            v.extend_from_slice(&d.ip().octets());
        }
        _ => unreachable_family(&mut v),
    }
    v.extend_from_slice(&src.port().to_be_bytes());
    v.extend_from_slice(&dst.port().to_be_bytes());
    v
}

/// Mixed families were mapped above; kept total for the type checker.
fn unreachable_family(v: &mut Vec<u8>) {
    v.push(0x00);
    v.extend_from_slice(&4u16.to_be_bytes());
}

/// How a REALITY accept ended.
pub enum Outcome {
    /// Authenticated; the TLS handshake's result.
    Authed(Box<Result<Accepted, AcceptError>>),
    /// Not ours: every byte read so far went to `dest`; relay the two sockets unchanged.
    Fallback(TcpStream),
    /// Socket closed, or dest unreachable.
    Drop,
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Accepts one REALITY connection on `s` (`first`: bytes already read after a PROXY header).
/// Bounded by the caller's handshake deadline; a client whose ClientHello is still incomplete
/// at `give_up` is handed to dest.
#[allow(clippy::too_many_arguments)]
pub async fn accept(
    srv: &RealityServer,
    outbound: &Outbound,
    opts: &ConnectOpts,
    s: &TcpStream,
    peer: SocketAddr,
    first: Vec<u8>,
    buf: &mut [u8],
    give_up: tokio::time::Instant,
    first_seen: &dyn Fn(&[u8]) -> bool,
) -> Outcome {
    // Contact dest before looking at the hello: a probe sees the same delay either way.
    let mut opts = opts.clone();
    opts.allow_private = true;
    // The node's own camouflage site, not a user's destination.
    opts.audit = None;
    let dest = match outbound.connect(&srv.dest, &opts).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(dest = %srv.dest, "REALITY dest unreachable: {e}");
            return Outcome::Drop;
        }
    };
    crate::net::tune_stream(&dest);
    if srv.xver == 1 || srv.xver == 2 {
        let local = s.local_addr().unwrap_or(peer);
        if crate::tls::write_all(&dest, &proxy_header(srv.xver, peer, local))
            .await
            .is_err()
        {
            return Outcome::Drop;
        }
    }
    let mut carry = first;
    let mut sent = 0usize;
    let msg = loop {
        // Mirror what the client sent to dest as it comes (as REALITY does).
        if carry.len() > sent {
            if crate::tls::write_all(&dest, carry.get(sent..).unwrap_or_default())
                .await
                .is_err()
            {
                return Outcome::Drop;
            }
            sent = carry.len();
        }
        match hello::reassemble(&carry) {
            Ok(Some(m)) => break Some(m),
            Ok(None) if carry.len() <= hello::MAX_HELLO + 64 * crate::tls::deframe::HEADER_LEN => {}
            _ => break None,
        }
        let n = match tokio::time::timeout_at(give_up, read_some(s, buf)).await {
            Err(_) => return Outcome::Fallback(dest),
            Ok(Ok(0) | Err(_)) => return Outcome::Drop,
            Ok(Ok(n)) => n,
        };
        carry.extend_from_slice(buf.get(..n).unwrap_or_default());
    };
    let auth = msg.as_deref().and_then(|m| {
        let auth = srv.authenticate(m, now_ms())?;
        if !first_sighting(m, first_seen) {
            tracing::debug!(%peer, "REALITY: a replayed ClientHello; relayed to dest");
            return None;
        }
        Some(auth)
    });
    let Some(auth) = auth else {
        tracing::trace!(%peer, hello = msg.is_some(), "REALITY: not authenticated");
        return Outcome::Fallback(dest);
    };
    tracing::trace!(%peer, "REALITY: authenticated; waiting for dest's answer");
    // Answer no sooner than dest would: wait for its first bytes (its ServerHello).
    if dest.readable().await.is_err() {
        return Outcome::Drop;
    }
    tracing::trace!(%peer, "REALITY: dest answered; TLS handshake with the client");
    drop(dest);
    let cfg = match srv.server_config(&auth) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("REALITY server config: {e}");
            return Outcome::Drop;
        }
    };
    Outcome::Authed(Box::new(crate::tls::accept(s, &cfg, carry, buf).await))
}

#[cfg(test)]
pub(crate) mod tests;
