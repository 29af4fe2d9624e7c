//! Listening sockets: one per (node, core) with `SO_REUSEPORT` so the kernel spreads
//! connections over the cores, plus the PROXY protocol parser for nodes behind a balancer.
//! A socket inherited from the process this one replaced ([`handover`]) is used before a new
//! one is bound, so an upgrade keeps the accept queues.

pub mod handover;
pub mod proxy_protocol;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Parses a node's `listen_ip`/`port` (empty ip = all IPv6+IPv4 addresses).
pub fn listen_addr(ip: &str, port: u16) -> Result<SocketAddr, String> {
    let ip = ip.trim();
    let ip: IpAddr = if ip.is_empty() {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        ip.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("listen_ip {ip:?} is not an IP address"))?
    };
    Ok(SocketAddr::new(ip, port))
}

fn reuse_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // dual stack: `::` also accepts IPv4 (addresses arrive IPv4-mapped and are normalised).
        let _ = s.set_only_v6(false);
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// A listening TCP socket for `addr`: an inherited one, else a new `SO_REUSEPORT` one.
fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    if let Some(s) = handover::take(handover::SockKind::Tcp, addr) {
        return Ok(s);
    }
    let s = reuse_socket(addr, Type::STREAM, Protocol::TCP)?;
    s.listen(4096)?;
    Ok(s)
}

/// A UDP socket for `addr`: an inherited one, else a new `SO_REUSEPORT` one.
fn dgram_socket(addr: SocketAddr) -> io::Result<Socket> {
    match handover::take(handover::SockKind::Udp, addr) {
        Some(s) => Ok(s),
        None => reuse_socket(addr, Type::DGRAM, Protocol::UDP),
    }
}

/// A TCP listener with `SO_REUSEPORT` for this core, registered with the current runtime.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let s = tcp_socket(addr)?;
    s.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(s.into())
}

/// A std TCP listener with `SO_REUSEPORT` (blocking mode when `nonblocking` is false: the
/// io_uring backend accepts on it and wants the kernel to wait, not to return EAGAIN).
pub fn tcp_listener_std(addr: SocketAddr, nonblocking: bool) -> io::Result<std::net::TcpListener> {
    let s = tcp_socket(addr)?;
    s.set_nonblocking(nonblocking)?;
    Ok(s.into())
}

/// A UDP socket with `SO_REUSEPORT` for this core, registered with the current runtime.
pub fn udp_socket(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let s = dgram_socket(addr)?;
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// A std UDP socket with `SO_REUSEPORT` (non-blocking), for quinn, which registers it with
/// the current runtime itself.
pub fn udp_socket_std(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = dgram_socket(addr)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Per-connection socket options for both legs: no Nagle (protocol handshakes are small
/// writes that must not wait) and keepalive so dead peers are found even when idle.
pub fn tune_stream(s: &tokio::net::TcpStream) {
    let _ = s.set_nodelay(true);
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15))
        .with_retries(4);
    let _ = SockRef::from(s).set_tcp_keepalive(&ka);
}

/// Strips the IPv4-mapped IPv6 prefix (`::ffff:a.b.c.d` → `a.b.c.d`).
pub fn normalise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_parses() {
        assert_eq!(listen_addr("127.0.0.1", 5).unwrap().to_string(), "127.0.0.1:5");
        assert_eq!(listen_addr("", 5).unwrap().to_string(), "[::]:5");
        assert_eq!(listen_addr("[::1]", 5).unwrap().to_string(), "[::1]:5");
        assert!(listen_addr("nope", 5).is_err());
    }

    #[test]
    fn mapped_addresses_are_normalised() {
        let m: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(normalise_ip(m), "10.1.2.3".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(normalise_ip(v6), v6);
    }

    #[test]
    fn two_reuseport_listeners_share_a_port() {
        crate::runtime::run_local(async {
            let a = tcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
            let port = a.local_addr().unwrap().port();
            let b = tcp_listener(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
            assert_eq!(b.local_addr().unwrap().port(), port);
            let u1 = udp_socket(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
            let _u2 = udp_socket(u1.local_addr().unwrap()).unwrap();
        });
    }
}
