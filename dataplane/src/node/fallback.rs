//! Fallbacks (xray semantics) for Trojan and VLESS: a connection whose first bytes are not the
//! protocol — an unknown password or uuid, an HTTP probe — is handed, with every plaintext
//! byte already read, to a local destination chosen by SNI, ALPN and HTTP path, so the port
//! looks like the web server behind it. TLS stays terminated here: the relay moves the
//! decrypted stream between the client's TLS session and the fallback in plaintext. Nothing
//! is counted as user traffic and no speed limit applies.
//!
//! Selection, level by level like xray's nested maps: among the entries, those whose `sni`
//! equals the client's SNI, else those with `sni == ""`; among those, the ones whose `alpn`
//! equals the negotiated ALPN, else `alpn == ""`; then the same with the HTTP/1 request path
//! (from the request line, up to `?` or space). The first entry left wins; none left means
//! no fallback (hold and close).
//!
//! `xver` 1/2 sends a PROXY protocol header (client address → the address it connected to)
//! before the bytes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use v2sp_shared::dpconfig::FallbackTarget;

use super::{Core, NodeRt};
use crate::limits::gcra::Bucket;
use crate::outbound::{ConnectOpts, DnsStrategy};
use crate::proto::Destination;
use crate::relay::{self, ConnCtl, Meter, RelayEnv};
use crate::tls::TlsSession;

/// The path of an HTTP/1 request line at the start of `first` (xray looks at most 64 bytes in).
pub(super) fn http_path(first: &[u8]) -> Option<&str> {
    // "GET /", "POST /", "OPTIONS /": the path starts at index 4..=8 after a space.
    let head = first.get(..first.len().min(64))?;
    let start = (4..=8).find(|&i| head.get(i) == Some(&b'/') && head.get(i - 1) == Some(&b' '))?;
    let rest = head.get(start..)?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'?' | b' ' | b'\r' | b'\n'))?;
    if rest.get(end).is_some_and(|&b| b == b'\r' || b == b'\n') {
        return None;
    }
    std::str::from_utf8(rest.get(..end)?).ok()
}

/// The fallback for a connection (see the module comment).
pub(super) fn select<'a>(
    fbs: &'a [FallbackTarget],
    sni: Option<&str>,
    alpn: Option<&[u8]>,
    first: &[u8],
) -> Option<&'a FallbackTarget> {
    fn level<'a>(
        c: Vec<&'a FallbackTarget>,
        value: Option<&str>,
        key: fn(&FallbackTarget) -> &str,
    ) -> Vec<&'a FallbackTarget> {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            let exact: Vec<_> = c.iter().copied().filter(|f| key(f) == v).collect();
            if !exact.is_empty() {
                return exact;
            }
        }
        c.into_iter().filter(|f| key(f).is_empty()).collect()
    }
    let c = fbs.iter().collect();
    let c = level(c, sni, |f| &f.sni);
    let alpn = alpn.and_then(|a| std::str::from_utf8(a).ok());
    let c = level(c, alpn, |f| &f.alpn);
    let c = level(c, http_path(first), |f| &f.path);
    c.first().copied()
}

/// `port` (loopback), `host:port`, `[v6]:port`.
pub(super) fn dest_of(dest: &str) -> Option<Destination> {
    let d = dest.trim();
    if let Ok(port) = d.parse::<u16>() {
        return Some(Destination::Ip(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)));
    }
    if let Ok(a) = d.parse::<SocketAddr>() {
        return Some(Destination::Ip(a));
    }
    let (host, port) = d.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    (!host.is_empty() && !host.contains(':')).then(|| Destination::Domain(host.to_string(), port))
}

/// PROXY protocol header, version 1 (text) or 2 (binary), for a TCP connection `src → dst`.
pub(super) fn proxy_header(ver: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let norm = |a: SocketAddr| SocketAddr::new(crate::net::normalise_ip(a.ip()), a.port());
    let (src, dst) = (norm(src), norm(dst));
    // Mixed families: send both as IPv6 (v4-mapped).
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    match ver {
        1 => match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                format!("PROXY TCP4 {s} {d} {} {}\r\n", src.port(), dst.port()).into_bytes()
            }
            (s, d) => {
                format!("PROXY TCP6 {} {} {} {}\r\n", v6(s), v6(d), src.port(), dst.port()).into_bytes()
            }
        },
        2 => {
            let mut h = vec![
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21,
            ];
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    h.push(0x11);
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    h.push(0x21);
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&v6(s).octets());
                    h.extend_from_slice(&v6(d).octets());
                }
            }
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
        _ => Vec::new(),
    }
}

struct NoMeter;
impl Meter for NoMeter {
    fn up(&self, _: u64) {}
    fn down(&self, _: u64) {}
}

/// Hands the connection to the node's matching fallback, or (none configured or matching,
/// or it cannot be reached) drains it until `deadline` like a server waiting for a request.
pub(super) async fn serve(
    core: &Rc<Core>,
    node: &NodeRt,
    client: TcpStream,
    peer: SocketAddr,
    consumed: Vec<u8>,
    tls: Option<Box<(TlsSession, Vec<u8>)>>,
    deadline: tokio::time::Instant,
) {
    let (sni, alpn) = match tls.as_deref() {
        Some((s, _)) => (s.server_name(), s.alpn()),
        None => (None, None),
    };
    let target = select(&node.cfg.fallbacks, sni, alpn, &consumed).and_then(|f| Some((f, dest_of(&f.dest)?)));
    let Some((fb, dest)) = target else {
        let _ = tokio::time::timeout_at(deadline, super::drain(&core.bufs, &client, usize::MAX)).await;
        return;
    };
    // The operator's own (usually loopback) server: no private-range refusal, no SendIP.
    let opts = ConnectOpts {
        strategy: DnsStrategy::parse(""),
        send_ip: None,
        timeout: node.connect.timeout,
        allow_private: true,
        // The node's own fallback site, not a user's destination.
        audit: None,
        dns_routes: std::sync::Arc::from([]),
        routing: std::sync::Arc::default(),
    };
    let mut upstream = match core.outbound.connect(&dest, &opts).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(node = node.cfg.slot, %dest, "fallback unreachable: {e}");
            return;
        }
    };
    let mut head = match client.local_addr() {
        Ok(local) => proxy_header(fb.xver, peer, local),
        Err(_) => Vec::new(),
    };
    head.extend_from_slice(&consumed);
    drop(consumed);
    if upstream.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    let (codec, pending_up) = match tls.map(|b| *b) {
        Some((session, carry)) => (
            Some(Box::new(crate::tls::TlsCodec::new(session, None)) as Box<dyn crate::proto::StreamCodec>),
            carry,
        ),
        None => (None, Vec::new()),
    };
    let end = relay_unowned(core, node, &client, &upstream, pending_up, codec).await;
    tracing::trace!(node = node.cfg.slot, ?end, "fallback connection ended");
}

/// Relays a connection that belongs to no user (a fallback, a REALITY probe passed to dest):
/// counted for nobody, unlimited, but registered, so the idle sweep, node removal and shutdown
/// reach it like any connection.
pub(super) async fn relay_unowned(
    core: &Rc<Core>,
    node: &NodeRt,
    client: &TcpStream,
    upstream: &TcpStream,
    pending_up: Vec<u8>,
    codec: Option<Box<dyn crate::proto::StreamCodec>>,
) -> relay::RelayEnd {
    let ctl = Rc::new(ConnCtl::default());
    let _reg = super::Unowned::register(core, node.cfg.slot, ctl.clone());
    let bucket = Bucket::new(0);
    let env = RelayEnv {
        bufs: &core.bufs,
        pipes: &core.pipes,
        meter: &NoMeter,
        bucket: &bucket,
        timeouts: node.relay,
        ctl: &ctl,
        splice: core.shared.splice,
        uring: core.uring.as_ref(),
    };
    relay::relay(&env, client, upstream, pending_up, codec).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn fb(sni: &str, alpn: &str, path: &str, dest: &str) -> FallbackTarget {
        FallbackTarget {
            sni: sni.into(),
            alpn: alpn.into(),
            path: path.into(),
            dest: dest.into(),
            xver: 0,
        }
    }

    #[test]
    fn http_paths() {
        assert_eq!(http_path(b"GET /ws?x=1 HTTP/1.1\r\n"), Some("/ws"));
        assert_eq!(http_path(b"OPTIONS /a/b HTTP/1.1\r\n"), Some("/a/b"));
        assert_eq!(http_path(b"GET / HTTP/1.1\r\n"), Some("/"));
        assert_eq!(http_path(b"GET /x\r\n"), None);
        assert_eq!(http_path(b"\x16\x03\x01"), None);
        assert_eq!(http_path(b""), None);
    }

    #[test]
    fn selection_by_sni_alpn_path_with_defaults() {
        let fbs = [
            fb("", "", "", "80"),
            fb("", "", "/ws", "81"),
            fb("b.example", "", "", "82"),
            fb("", "h2", "", "83"),
        ];
        let pick =
            |sni, alpn: Option<&[u8]>, first: &[u8]| select(&fbs, sni, alpn, first).map(|f| f.dest.as_str());
        assert_eq!(pick(None, None, b"GET / HTTP/1.1\r\n"), Some("80"));
        assert_eq!(pick(None, None, b"GET /ws HTTP/1.1\r\n"), Some("81"));
        assert_eq!(pick(Some("a.example"), None, b"GET /ws HTTP/1.1\r\n"), Some("81"));
        assert_eq!(pick(Some("b.example"), None, b"GET /ws HTTP/1.1\r\n"), Some("82"));
        assert_eq!(pick(None, Some(b"h2"), b"PRI * HTTP/2.0\r\n"), Some("83"));
        assert_eq!(pick(None, None, b"garbage"), Some("80"));
        // No default entry: an unmatched SNI has no fallback.
        let only = [fb("c.example", "", "", "84")];
        assert!(select(&only, Some("d.example"), None, b"").is_none());
        assert!(select(&[], None, None, b"").is_none());
    }

    #[test]
    fn destinations() {
        assert_eq!(
            dest_of("80"),
            Some(Destination::Ip("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            dest_of("[::1]:8443"),
            Some(Destination::Ip("[::1]:8443".parse().unwrap()))
        );
        assert_eq!(dest_of("web:8080"), Some(Destination::Domain("web".into(), 8080)));
        assert_eq!(dest_of("/dev/shm/h1.sock"), None);
        assert_eq!(dest_of("x:99999"), None);
    }

    /// Layouts from the HAProxy PROXY protocol spec (§2.1 text, §2.2 binary).
    #[test]
    fn proxy_headers_known_answer() {
        let s: SocketAddr = "192.0.2.1:51000".parse().unwrap();
        let d: SocketAddr = "198.51.100.2:443".parse().unwrap();
        assert_eq!(
            proxy_header(1, s, d),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\n"
        );
        let v2 = proxy_header(2, s, d);
        let want: Vec<u8> = [
            &b"\r\n\r\n\x00\r\nQUIT\n"[..],
            &[0x21, 0x11, 0x00, 0x0c],
            &[192, 0, 2, 1, 198, 51, 100, 2],
            &[0xc7, 0x38, 0x01, 0xbb],
        ]
        .concat();
        assert_eq!(v2, want);
        // Our own parser agrees on the source.
        match crate::net::proxy_protocol::parse(&v2).unwrap() {
            crate::net::proxy_protocol::Parsed::Done { consumed, source } => {
                assert_eq!((consumed, source), (v2.len(), Some(s)));
            }
            _ => panic!("incomplete"),
        }
        assert!(proxy_header(0, s, d).is_empty());
        let s6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        assert_eq!(proxy_header(2, s6, d).len(), 16 + 36);
    }
}
