//! ureq connector for panel connections: binds the local address (`ApiSendIP`) and counts
//! transmissions, so a failed request can be classed as "certainly never sent" or "may have
//! reached the panel" — the distinction exactly-once traffic accounting needs.
//!
//! The counter sits on top of the whole connector chain (above TLS when TLS is compiled in),
//! so TLS handshake bytes do not count as "request sent"; only bytes ureq writes for the HTTP
//! request do.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};
use ureq::Error;

/// Opens TCP connections, optionally from a fixed local address.
#[derive(Debug, Clone)]
pub(super) struct BindTcpConnector {
    pub(super) bind: Option<IpAddr>,
}

impl Connector<()> for BindTcpConnector {
    type Out = TcpTransport;

    fn connect(&self, details: &ConnectionDetails, _chained: Option<()>) -> Result<Option<Self::Out>, Error> {
        let per_addr = details.timeout.not_zero().map(|d| *d);
        let mut last: Option<Error> = None;
        for addr in details.addrs.iter() {
            match connect_one(*addr, self.bind, per_addr) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let config = details.config;
                    let buffers = LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size());
                    return Ok(Some(TcpTransport { stream, buffers }));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::ConnectionFailed))
    }
}

fn connect_one(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Option<std::time::Duration>,
) -> Result<TcpStream, Error> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = bind {
        if ip.is_ipv4() != addr.is_ipv4() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("ApiSendIP {ip} cannot reach panel address {addr} (different IP family)"),
            )));
        }
        socket.bind(&SocketAddr::new(ip, 0).into()).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot bind ApiSendIP {ip}: {e}"),
            ))
        })?;
    }
    let result = match timeout {
        Some(t) => socket.connect_timeout(&addr.into(), t),
        None => socket.connect(&addr.into()),
    };
    match result {
        Ok(()) => Ok(socket.into()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock => {
            Err(Error::Timeout(ureq::Timeout::Connect))
        }
        Err(e) => Err(Error::Io(e)),
    }
}

/// A plain TCP transport (ureq does not export its own).
#[derive(Debug)]
pub(super) struct TcpTransport {
    stream: TcpStream,
    buffers: LazyBuffers,
}

/// The time left for one read or write; an exhausted budget is ureq's timeout error.
fn io_budget(timeout: NextTimeout) -> Result<Option<std::time::Duration>, Error> {
    if !timeout.after.is_not_happening() && timeout.after.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    }
    Ok(timeout.not_zero().map(|d| *d))
}

fn io_err(e: std::io::Error, timeout: NextTimeout) -> Error {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Error::Timeout(timeout.reason),
        _ => Error::Io(e),
    }
}

impl Transport for TcpTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        self.stream.set_write_timeout(io_budget(timeout)?)?;
        let output = self.buffers.output();
        let data = output.get(..amount).unwrap_or(output);
        self.stream.write_all(data).map_err(|e| io_err(e, timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = timeout.for_read();
        self.stream.set_read_timeout(io_budget(timeout)?)?;
        let input = self.buffers.input_append_buf();
        let n = loop {
            match self.stream.read(input) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e, timeout)),
            }
        };
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        // Open = no pending bytes and no EOF/error right now (a pooled connection the panel
        // closed must not be reused for a push).
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut probe = [0u8; 1];
        let open =
            matches!(self.stream.peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        self.stream.set_nonblocking(false).is_ok() && open
    }
}

/// Wraps the chain's transport so every transmission bumps `sent`.
#[derive(Debug)]
pub(super) struct CountingConnector<C> {
    pub(super) inner: C,
    pub(super) sent: Arc<AtomicU64>,
}

impl<C: Connector<()>> Connector<()> for CountingConnector<C> {
    type Out = CountingTransport<C::Out>;

    fn connect(&self, details: &ConnectionDetails, chained: Option<()>) -> Result<Option<Self::Out>, Error> {
        Ok(self
            .inner
            .connect(details, chained)?
            .map(|inner| CountingTransport {
                inner,
                sent: self.sent.clone(),
            }))
    }
}

#[derive(Debug)]
pub(super) struct CountingTransport<T> {
    inner: T,
    sent: Arc<AtomicU64>,
}

impl<T: Transport> Transport for CountingTransport<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        // Counted before writing: a write that fails half-way may still have delivered the
        // request, so it must read as "sent".
        if amount > 0 {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}
