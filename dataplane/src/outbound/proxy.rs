//! Client handshakes of the proxy outbounds whose bytes pass unchanged afterwards (so the
//! relay may splice them): SOCKS5 CONNECT and HTTP CONNECT. The request bytes and the reply
//! checks are pure functions (known-answer tests below); [`socks5`] and [`http_connect`] drive
//! them on a connected stream, reading no byte past the reply.
//!
//! ```text
//! SOCKS5 (RFC 1928, RFC 1929)
//!   → 05 | n | methods…            (00 no auth, 02 username/password)
//!   ← 05 | method                  (ff: none acceptable)
//!   → 01 | ulen | user | plen | pass   ← 01 | status (00 = ok)      [method 02 only]
//!   → 05 01 00 | atyp | addr | port    (atyp 01 IPv4, 03 name, 04 IPv6)
//!   ← 05 | rep | 00 | atyp | bound addr | bound port                (rep 00 = ok)
//!
//! HTTP CONNECT
//!   → CONNECT host:port HTTP/1.1 CRLF Host: host:port CRLF
//!     [Proxy-Authorization: Basic base64(user:pass) CRLF] CRLF
//!   ← HTTP/1.x 2xx … CRLF … CRLF CRLF                               (at most 8 KiB)
//! ```

use std::io;
use std::net::IpAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::Destination;

/// Longest HTTP CONNECT response header we read.
const HTTP_REPLY_MAX: usize = 8 * 1024;

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The SOCKS5 greeting: no auth, plus username/password when we have credentials.
pub fn socks5_greeting(auth: bool) -> &'static [u8] {
    if auth {
        &[5, 2, 0, 2]
    } else {
        &[5, 1, 0]
    }
}

/// The RFC 1929 sub-negotiation (user and pass at most 255 bytes: checked by the config).
pub fn socks5_auth(user: &str, pass: &str) -> io::Result<Vec<u8>> {
    let (u, p) = (user.as_bytes(), pass.as_bytes());
    let ul = u8::try_from(u.len()).map_err(|_| bad("socks user too long"))?;
    let pl = u8::try_from(p.len()).map_err(|_| bad("socks pass too long"))?;
    let mut out = Vec::with_capacity(3 + u.len() + p.len());
    out.extend_from_slice(&[1, ul]);
    out.extend_from_slice(u);
    out.push(pl);
    out.extend_from_slice(p);
    Ok(out)
}

/// The CONNECT request for `dest` (a name that is an IP literal goes as that address).
pub fn socks5_connect(dest: &Destination) -> io::Result<Vec<u8>> {
    let mut out = vec![5, 1, 0];
    let (ip, name, port) = match dest {
        Destination::Ip(a) => (Some(a.ip()), "", a.port()),
        Destination::Domain(d, p) => (d.parse::<IpAddr>().ok(), d.as_str(), *p),
    };
    match ip {
        Some(IpAddr::V4(v4)) => {
            out.push(1);
            out.extend_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            out.push(4);
            out.extend_from_slice(&v6.octets());
        }
        None => {
            let len = u8::try_from(name.len()).map_err(|_| bad("destination name too long"))?;
            out.extend_from_slice(&[3, len]);
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(&port.to_be_bytes());
    Ok(out)
}

/// How many bytes of bound address (and port) follow a CONNECT reply's first 5 bytes
/// (`05 rep 00 atyp x`: `x` is the first address byte, the name length for atyp 03).
pub fn socks5_reply_rest(head: [u8; 5]) -> io::Result<usize> {
    let [ver, rep, _, atyp, first] = head;
    if ver != 5 {
        return Err(bad("not a SOCKS5 reply"));
    }
    if rep != 0 {
        return Err(bad(format!("SOCKS5 server refused the connection (reply {rep})")));
    }
    match atyp {
        1 => Ok(4 - 1 + 2),
        4 => Ok(16 - 1 + 2),
        3 => Ok(usize::from(first) + 2),
        _ => Err(bad("SOCKS5 reply: bad address type")),
    }
}

/// Runs the SOCKS5 CONNECT handshake on `s` (the caller bounds it with its timeout).
pub async fn socks5(s: &mut TcpStream, dest: &Destination, auth: Option<(&str, &str)>) -> io::Result<()> {
    s.write_all(socks5_greeting(auth.is_some())).await?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await?;
    match (choice, auth) {
        ([5, 0], _) => {}
        ([5, 2], Some((u, p))) => {
            s.write_all(&socks5_auth(u, p)?).await?;
            let mut st = [0u8; 2];
            s.read_exact(&mut st).await?;
            if st[1] != 0 {
                return Err(bad("SOCKS5 server refused the username/password"));
            }
        }
        ([5, 0xff], _) | ([5, 2], None) => return Err(bad("SOCKS5 server accepts none of our methods")),
        _ => return Err(bad("not a SOCKS5 server")),
    }
    s.write_all(&socks5_connect(dest)?).await?;
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await?;
    let rest = socks5_reply_rest(head)?;
    let mut skip = [0u8; 257];
    s.read_exact(skip.get_mut(..rest).ok_or_else(|| bad("SOCKS5 reply too long"))?)
        .await?;
    Ok(())
}

/// The CONNECT request (`auth`: `user:pass`, sent as Basic).
pub fn http_connect_request(dest: &Destination, auth: Option<(&str, &str)>) -> Vec<u8> {
    use base64::Engine as _;
    let authority = match dest {
        Destination::Ip(a) => a.to_string(),
        Destination::Domain(d, p) => match d.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{p}"),
            _ => format!("{d}:{p}"),
        },
    };
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((u, p)) = auth {
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Proxy-Authorization: Basic {cred}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Checks a complete CONNECT response header: a 2xx status.
pub fn http_connect_reply(head: &[u8]) -> io::Result<()> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| bad("HTTP proxy reply is not text"))?;
    let mut parts = line.trim_end().splitn(3, ' ');
    let (Some(ver), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad("not an HTTP reply"));
    };
    if !ver.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1 reply"));
    }
    match code.parse::<u16>() {
        Ok(200..=299) => Ok(()),
        Ok(c) => Err(bad(format!("HTTP proxy refused CONNECT with status {c}"))),
        Err(_) => Err(bad("HTTP reply without a status")),
    }
}

/// Runs the HTTP CONNECT handshake on `s`. The response header is read a byte at a time so
/// that nothing the destination sends after it is taken from the stream (it is short).
pub async fn http_connect(
    s: &mut TcpStream,
    dest: &Destination,
    auth: Option<(&str, &str)>,
) -> io::Result<()> {
    s.write_all(&http_connect_request(dest, auth)).await?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= HTTP_REPLY_MAX {
            return Err(bad("HTTP proxy reply header too long"));
        }
        s.read_exact(&mut byte).await?;
        head.push(byte[0]);
    }
    http_connect_reply(&head)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn socks5_known_answers() {
        assert_eq!(socks5_greeting(false), [5, 1, 0]);
        assert_eq!(socks5_greeting(true), [5, 2, 0, 2]);
        assert_eq!(socks5_auth("ab", "c").unwrap(), [1, 2, b'a', b'b', 1, b'c']);
        assert!(socks5_auth(&"x".repeat(256), "").is_err());
        let d = Destination::Domain("a.test".into(), 443);
        assert_eq!(
            socks5_connect(&d).unwrap(),
            [5, 1, 0, 3, 6, b'a', b'.', b't', b'e', b's', b't', 1, 187]
        );
        let d = Destination::Ip("192.0.2.1:80".parse().unwrap());
        assert_eq!(socks5_connect(&d).unwrap(), [5, 1, 0, 1, 192, 0, 2, 1, 0, 80]);
        let d = Destination::Domain("::1".into(), 1);
        let r = socks5_connect(&d).unwrap();
        assert_eq!((r[3], r.len()), (4, 3 + 1 + 16 + 2));
        assert_eq!(socks5_reply_rest([5, 0, 0, 1, 127]).unwrap(), 5);
        assert_eq!(socks5_reply_rest([5, 0, 0, 4, 0]).unwrap(), 17);
        assert_eq!(socks5_reply_rest([5, 0, 0, 3, 9]).unwrap(), 11);
        assert!(socks5_reply_rest([5, 5, 0, 1, 0])
            .unwrap_err()
            .to_string()
            .contains("reply 5"));
        assert!(socks5_reply_rest([4, 0, 0, 1, 0]).is_err());
        assert!(socks5_reply_rest([5, 0, 0, 9, 0]).is_err());
    }

    #[test]
    fn http_connect_known_answers() {
        let d = Destination::Domain("a.test".into(), 443);
        assert_eq!(
            http_connect_request(&d, None),
            b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n"
        );
        assert_eq!(
            http_connect_request(&Destination::Domain("::1".into(), 80), Some(("u", "p"))),
            b"CONNECT [::1]:80 HTTP/1.1\r\nHost: [::1]:80\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
        );
        assert!(http_connect_reply(b"HTTP/1.1 200 Connection established\r\n\r\n").is_ok());
        assert!(http_connect_reply(b"HTTP/1.0 200\r\n\r\n").is_ok());
        let e = http_connect_reply(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").unwrap_err();
        assert!(e.to_string().contains("407"));
        assert!(http_connect_reply(b"SSH-2.0-x\r\n\r\n").is_err());
    }
}
