//! Our own client side of each protocol v2sp serves: Shadowsocks (`ss`), Trojan over TLS
//! (`trojan`), VLESS over TLS (`vless`), VMess AEAD on TCP or inside TLS (`vmess`), AnyTLS
//! (`anytls`, one session with one stream per connection); the QUIC suites (`quic`: Hysteria 2, TUIC v5)
//! and the Vision suites go through a real client used as a SOCKS5 front end (`sing_box`, the
//! shoes client in `vision`), and the XHTTP suites through the real Xray client (`xhttp`, run
//! in a loopback-only network namespace); `tls` holds
//! the run's certificate and rustls client. A [`Suite`] is one row of the report: a Shadowsocks
//! method, or `trojan-tls` / `vless-tls` / `vmess` / `vmess-tls` / a Vision suite; `X@sing-box`
//! is suite X measured through the real sing-box client instead of ours (`front`).
pub mod anytls;
pub mod front;
pub mod front_process;
pub mod hysteria2;
pub mod quic;
pub mod sing_box;
pub mod ss;
pub mod tls;
pub mod trojan;
pub mod tuic;
pub mod vision;
pub mod vless;
pub mod vmess;
pub mod xhttp;

use std::sync::Arc;

use self::quic::Quic;
use self::ss::SsCredentials;
use self::tls::TlsMaterial;
use self::vision::VisionSuite;
use self::xhttp::XhttpMode;

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
    /// A QUIC protocol through the real sing-box client; see `client::quic`.
    Quic(Quic, Arc<TlsMaterial>),
    /// A TCP suite through the real sing-box client as a SOCKS5 front end; see `client::front`.
    SingBox(Arc<front::Fronted>),
    /// VLESS over XHTTP over TLS through the real Xray client; see `client::xhttp`.
    Xhttp(XhttpMode, Arc<TlsMaterial>),
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
            Suite::Quic(q, _) => q.name(),
            Suite::SingBox(f) => f.name,
            Suite::Xhttp(m, _) => m.name(),
        }
    }

    /// The suite the server is configured for: the inner one of a front-end suite.
    pub fn base(&self) -> &Suite {
        match self {
            Suite::SingBox(f) => &f.inner,
            s => s,
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
            Suite::Trojan(t)
            | Suite::Vless(t)
            | Suite::Anytls(t)
            | Suite::Quic(_, t)
            | Suite::Xhttp(_, t) => Some(t),
            Suite::Vmess(t) => t.as_ref(),
            Suite::SingBox(f) => f.inner.tls(),
        }
    }

    pub fn is_vmess(&self) -> bool {
        matches!(self, Suite::Vmess(_))
    }

    /// The QUIC protocol of a QUIC suite.
    pub fn quic(&self) -> Option<Quic> {
        match self {
            Suite::Quic(q, _) => Some(*q),
            _ => None,
        }
    }

    /// Measured through a real client process as a SOCKS5 front end (Vision, the QUIC suites,
    /// the `@sing-box` suites, XHTTP): bulk transfers both ways (and latency for `@sing-box`,
    /// idle sessions for XHTTP), never the headline.
    pub fn through_client(&self) -> bool {
        matches!(
            self,
            Suite::Vision(_) | Suite::Quic(..) | Suite::SingBox(_) | Suite::Xhttp(..)
        )
    }

    /// The XHTTP mode of an XHTTP suite.
    pub fn xhttp(&self) -> Option<XhttpMode> {
        match self {
            Suite::Xhttp(m, _) => Some(*m),
            _ => None,
        }
    }

    pub fn vision(&self) -> Option<&Arc<VisionSuite>> {
        match self {
            Suite::Vision(v) => Some(v),
            _ => None,
        }
    }

    /// A suite by name; `tls` is the run's certificate (made once, shared by every suite).
    pub fn parse(name: &str, tls: &Arc<TlsMaterial>) -> anyhow::Result<Suite> {
        if let Some(inner) = name.trim().strip_suffix(front::SUFFIX) {
            return Ok(Suite::SingBox(Arc::new(front::Fronted::new(Suite::parse(
                inner, tls,
            )?)?)));
        }
        if let Some(q) = Quic::parse(name) {
            return Ok(Suite::Quic(q, tls.clone()));
        }
        if let Some(m) = XhttpMode::parse(name) {
            return Ok(Suite::Xhttp(m, tls.clone()));
        }
        Ok(match name.trim() {
            TROJAN_TLS => Suite::Trojan(tls.clone()),
            VLESS_TLS => Suite::Vless(tls.clone()),
            vmess::VMESS => Suite::Vmess(None),
            vmess::VMESS_TLS => Suite::Vmess(Some(tls.clone())),
            anytls::ANYTLS => Suite::Anytls(tls.clone()),
            vision::REALITY_VISION | vision::TLS_VISION => {
                Suite::Vision(Arc::new(VisionSuite::new(name.trim(), tls)?))
            }
            n => Suite::Ss(Arc::new(SsCredentials::new(ss::parse_method(n)?)?)),
        })
    }
}
