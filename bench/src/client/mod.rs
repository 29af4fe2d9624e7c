//! Our own client side of each protocol v2sp serves: Shadowsocks (`ss`), Trojan over TLS
//! (`trojan`), VLESS over TLS (`vless`), VMess AEAD on TCP or inside TLS (`vmess`), AnyTLS
//! (`anytls`, one session with one stream per connection); Hysteria 2 (`hysteria2`) and the
//! Vision suites go through a real client used as a SOCKS5 front end; `tls` holds
//! the run's certificate and rustls client. A [`Suite`] is one row of the report: a Shadowsocks
//! method, or `trojan-tls` / `vless-tls` / `vmess` / `vmess-tls` / a Vision suite.
pub mod anytls;
pub mod hysteria2;
pub mod ss;
pub mod tls;
pub mod trojan;
pub mod vision;
pub mod vless;
pub mod vmess;

use std::sync::Arc;

use self::ss::SsCredentials;
use self::tls::TlsMaterial;
use self::vision::VisionSuite;

/// The protocol (and credentials) one report row is measured with.
#[derive(Clone)]
pub enum Suite {
    Ss(Arc<SsCredentials>),
    Trojan(Arc<TlsMaterial>),
    Vless(Arc<TlsMaterial>),
    /// VMess AEAD (aes-128-gcm), on plain TCP (`None`) or inside TLS.
    Vmess(Option<Arc<TlsMaterial>>),
    /// AnyTLS: one session (TLS connection) with one stream per bench connection.
    Anytls(Arc<TlsMaterial>),
    /// VLESS + Vision (REALITY or TLS) through the real shoes client; see `client::vision`.
    Vision(Arc<VisionSuite>),
    /// Hysteria 2 (QUIC) through the real sing-box client; see `client::hysteria2`.
    Hysteria2(Arc<TlsMaterial>),
}

impl std::fmt::Debug for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub const TROJAN_TLS: &str = "trojan-tls";
pub const VLESS_TLS: &str = "vless-tls";

impl Suite {
    /// The row name: the Shadowsocks method name, `trojan-tls` or `vless-tls`.
    pub fn name(&self) -> &'static str {
        match self {
            Suite::Ss(c) => c.method.name(),
            Suite::Trojan(_) => TROJAN_TLS,
            Suite::Vless(_) => VLESS_TLS,
            Suite::Vmess(None) => vmess::VMESS,
            Suite::Vmess(Some(_)) => vmess::VMESS_TLS,
            Suite::Anytls(_) => anytls::ANYTLS,
            Suite::Vision(v) => v.name(),
            Suite::Hysteria2(_) => hysteria2::HYSTERIA2,
        }
    }

    pub fn is_ss(&self) -> bool {
        matches!(self, Suite::Ss(_))
    }

    pub fn ss(&self) -> Option<&SsCredentials> {
        match self {
            Suite::Ss(c) => Some(c),
            _ => None,
        }
    }

    pub fn tls(&self) -> Option<&Arc<TlsMaterial>> {
        match self {
            Suite::Ss(_) => None,
            Suite::Vision(v) => v.server_tls(),
            Suite::Trojan(t) | Suite::Vless(t) | Suite::Anytls(t) | Suite::Hysteria2(t) => Some(t),
            Suite::Vmess(t) => t.as_ref(),
        }
    }

    pub fn is_vmess(&self) -> bool {
        matches!(self, Suite::Vmess(_))
    }

    pub fn is_hysteria2(&self) -> bool {
        matches!(self, Suite::Hysteria2(_))
    }

    /// Measured through a real client process as a SOCKS5 front end (Vision, Hysteria 2): bulk
    /// download only, never the headline.
    pub fn through_client(&self) -> bool {
        matches!(self, Suite::Vision(_) | Suite::Hysteria2(_))
    }

    pub fn vision(&self) -> Option<&Arc<VisionSuite>> {
        match self {
            Suite::Vision(v) => Some(v),
            _ => None,
        }
    }

    /// A suite by name; `tls` is the run's certificate (made once, shared by every suite).
    pub fn parse(name: &str, tls: &Arc<TlsMaterial>) -> anyhow::Result<Suite> {
        Ok(match name.trim() {
            TROJAN_TLS => Suite::Trojan(tls.clone()),
            VLESS_TLS => Suite::Vless(tls.clone()),
            vmess::VMESS => Suite::Vmess(None),
            vmess::VMESS_TLS => Suite::Vmess(Some(tls.clone())),
            anytls::ANYTLS => Suite::Anytls(tls.clone()),
            hysteria2::HYSTERIA2 => Suite::Hysteria2(tls.clone()),
            vision::REALITY_VISION | vision::TLS_VISION => {
                Suite::Vision(Arc::new(VisionSuite::new(name.trim(), tls)?))
            }
            n => Suite::Ss(Arc::new(SsCredentials::new(ss::parse_method(n)?)?)),
        })
    }
}
