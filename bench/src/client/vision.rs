//! VLESS + XTLS Vision (`flow: xtls-rprx-vision`), over REALITY (`vless-reality-vision`) or over
//! TLS (`vless-tls-vision`).
//!
//! Vision only leaves the proxy's own TLS layer (and splices) when the tunnel carries TLS 1.3,
//! so these suites are measured end to end like a real user: the load generator speaks TLS 1.3
//! (rustls, the run's certificate) to the bench's TLS target (`target::start_tls`), through the
//! real shoes client (SOCKS5 inbound, REALITY/TLS + Vision + VLESS outbound), which runs on the
//! load generator's CPUs (it inherits the bench's pinning). Only the server's CPU is measured.
//!
//! ```text
//! bench (rustls TLS 1.3) ─SOCKS5─▶ shoes client ─VLESS+Vision over REALITY/TLS─▶ server ─▶ TLS target
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::front_process::{spawn_front, FrontProcess};
use super::ss::USER_UUID;
use super::tls::{TlsMaterial, SERVER_NAME};

pub const REALITY_VISION: &str = "vless-reality-vision";
pub const TLS_VISION: &str = "vless-tls-vision";
/// The REALITY short id every server and the client use.
pub const SHORT_ID: &str = "0123abcd";

/// One Vision suite: the run's certificate (TLS servers and the end-to-end TLS to the target)
/// and, for REALITY, a fresh X25519 key pair.
pub struct VisionSuite {
    pub reality: bool,
    pub tls: Arc<TlsMaterial>,
    /// base64url (no padding), as Xray, sing-box and shoes write them.
    pub private_key: String,
    pub public_key: String,
    /// The bench's TLS target (set once it runs): the tunnel's destination and REALITY's `dest`.
    target: OnceLock<SocketAddr>,
}

impl VisionSuite {
    pub fn new(name: &str, tls: &Arc<TlsMaterial>) -> anyhow::Result<VisionSuite> {
        let mut sk = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut sk))
            .context("/dev/urandom")?;
        let (private_key, public_key) = reality_keys(sk);
        Ok(VisionSuite {
            reality: name == REALITY_VISION,
            tls: tls.clone(),
            private_key,
            public_key,
            target: OnceLock::new(),
        })
    }

    /// Record where the TLS target listens (first call wins).
    pub fn set_target(&self, a: SocketAddr) {
        let _ = self.target.set(a);
    }

    pub fn target(&self) -> anyhow::Result<SocketAddr> {
        self.target
            .get()
            .copied()
            .context("the TLS target of the Vision suites is not running")
    }

    pub fn name(&self) -> &'static str {
        if self.reality {
            REALITY_VISION
        } else {
            TLS_VISION
        }
    }

    /// The certificate the server presents (TLS only; REALITY makes its own).
    pub fn server_tls(&self) -> Option<&Arc<TlsMaterial>> {
        (!self.reality).then_some(&self.tls)
    }

    /// The shoes client's outbound `protocol:` block around VLESS, one line per entry.
    fn client_outer(&self) -> Vec<String> {
        if self.reality {
            vec![
                "type: reality".into(),
                format!("public_key: \"{}\"", self.public_key),
                format!("short_id: \"{SHORT_ID}\""),
                format!("sni_hostname: \"{SERVER_NAME}\""),
                "vision: true".into(),
            ]
        } else {
            vec![
                "type: tls".into(),
                "verify: false".into(),
                format!("sni_hostname: \"{SERVER_NAME}\""),
                "vision: true".into(),
            ]
        }
    }

    /// The shoes *server* config (VLESS + Vision behind REALITY or TLS on `port`); REALITY's
    /// `dest` is `dest` (the bench's TLS target, which has the certificate for the SNI), named
    /// `localhost:<port>` because shoes wants a host name there.
    pub fn shoes_server_yaml(&self, port: u16, dest: SocketAddr) -> String {
        let inner = format!(
            "        vision: true\n        protocol:\n          type: vless\n          user_id: \"{USER_UUID}\"\n          udp_enabled: false\n"
        );
        if self.reality {
            format!(
                "- address: \"127.0.0.1:{port}\"\n  protocol:\n    type: tls\n    reality_targets:\n      \"{SERVER_NAME}\":\n        private_key: \"{}\"\n        short_ids: [\"{SHORT_ID}\"]\n        dest: \"localhost:{}\"\n{inner}",
                self.private_key,
                dest.port()
            )
        } else {
            format!(
                "- address: \"127.0.0.1:{port}\"\n  protocol:\n    type: tls\n    tls_targets:\n      \"{SERVER_NAME}\":\n        cert: \"{}\"\n        key: \"{}\"\n{inner}",
                self.tls.cert_file.display(),
                self.tls.key_file.display()
            )
        }
    }
}

/// REALITY's key pair from an X25519 private key: (private, public), base64url without padding.
pub fn reality_keys(sk: [u8; 32]) -> (String, String) {
    let secret = x25519_dalek::StaticSecret::from(sk);
    let public = x25519_dalek::PublicKey::from(&secret);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    (b64.encode(secret.to_bytes()), b64.encode(public.as_bytes()))
}

/// Starts the shoes client with a SOCKS5 inbound on a free port forwarding everything to
/// `server_port`.
pub fn start_shoes_client(
    bin: &Path,
    suite: &VisionSuite,
    server_port: u16,
    dir: &Path,
    threads: usize,
) -> anyhow::Result<FrontProcess> {
    spawn_front("shoes", dir, |port, stem| {
        let outer = suite.client_outer().join("\n          ");
        let yaml = format!(
            "- address: \"127.0.0.1:{port}\"\n  protocol:\n    type: socks\n  rules:\n    - masks: \"0.0.0.0/0\"\n      action: allow\n      client_proxy:\n        address: \"127.0.0.1:{server_port}\"\n        protocol:\n          {outer}\n          protocol:\n            type: vless\n            user_id: \"{USER_UUID}\"\n"
        );
        let cfg = dir.join(format!("{stem}.yaml"));
        std::fs::write(&cfg, yaml)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--threads")
            .arg(threads.max(1).to_string())
            .arg("--no-reload")
            .arg(&cfg)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "error");
        Ok(cmd)
    })
}

/// SOCKS5 CONNECT to `target` (IPv4, no authentication) on a fresh connection to `socks`.
pub async fn socks5_connect(socks: SocketAddr, target: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(socks)
        .await
        .with_context(|| format!("connect SOCKS {socks}"))?;
    s.set_nodelay(true)?;
    let std::net::IpAddr::V4(ip) = target.ip() else {
        bail!("SOCKS target must be IPv4");
    };
    s.write_all(&[5, 1, 0]).await?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.context("SOCKS method reply")?;
    if m != [5, 0] {
        bail!("SOCKS method reply {m:?}");
    }
    let mut req = vec![5u8, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut r = [0u8; 10];
    s.read_exact(&mut r).await.context("SOCKS connect reply")?;
    if r[..4] != [5, 0, 0, 1] {
        bail!("SOCKS connect reply {:?}", &r[..4]);
    }
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 7748 §6.1 (Alice's key pair); base64url forms computed with Python's
    /// `base64.urlsafe_b64encode` (padding stripped).
    #[test]
    fn reality_keys_rfc7748_alice() {
        let sk: [u8; 32] = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap()
            .try_into()
            .unwrap();
        let (private, public) = reality_keys(sk);
        assert_eq!(private, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo");
        assert_eq!(public, "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo");
    }

    #[test]
    fn shoes_server_yaml_names_dest_by_host() {
        let tls = Arc::new(TlsMaterial::generate().unwrap());
        let v = VisionSuite::new(REALITY_VISION, &tls).unwrap();
        let y = v.shoes_server_yaml(1000, "127.0.0.1:2000".parse().unwrap());
        assert!(y.contains("dest: \"localhost:2000\""), "{y}");
        assert!(y.contains(&v.private_key) && y.contains("vision: true"), "{y}");
        let v = VisionSuite::new(TLS_VISION, &tls).unwrap();
        assert!(
            v.server_tls().is_some()
                && v.shoes_server_yaml(1, "127.0.0.1:2".parse().unwrap())
                    .contains("tls_targets")
        );
    }
}
