//! One client connection of the load generator: directly to the target (baseline) or through a
//! server under test, with our own client codecs: Shadowsocks, or Trojan / VLESS / VMess /
//! AnyTLS inside TLS
//! (rustls driven sans-IO over the tokio socket). Reads go through one 256 KiB buffer; decoded
//! plaintext is counted and dropped (bulk) or kept until consumed (echo).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use v2sp_dataplane::proto::Destination;

use crate::client::anytls::AnytlsStream;
use crate::client::ss::{SsStream, USER_UUID};
use crate::client::tls::TlsMaterial;
use crate::client::vless::ResponseHeader;
use crate::client::vmess::VmessStream;
use crate::client::{trojan, vless, Suite};

const READ_BUF: usize = 256 * 1024;

/// How a connection reaches the target.
#[derive(Clone)]
pub enum Via {
    Direct,
    Proxy {
        addr: SocketAddr,
        suite: Suite,
    },
    /// Through a SOCKS5 client (the shoes client of the Vision suites, with TLS 1.3 end to end
    /// to the target (`target::start_tls`), which must be the `target` given to `Conn::open`;
    /// the sing-box client of the QUIC and `@sing-box` suites, plain, `tls: None`).
    Socks {
        socks: SocketAddr,
        tls: Option<Arc<TlsMaterial>>,
    },
}

/// The protocol layer above TLS (or above TCP).
enum Codec {
    Plain,
    Ss(SsStream),
    /// Trojan: no response header.
    Trojan,
    Vless(ResponseHeader),
    /// VMess: its own chunk framing, on TCP or inside TLS.
    Vmess(Box<VmessStream>),
    /// AnyTLS: one session, one stream; psh frames both ways.
    Anytls(Box<AnytlsStream>),
}

pub struct Conn {
    s: TcpStream,
    tls: Option<Box<rustls::ClientConnection>>,
    codec: Codec,
    rbuf: Vec<u8>,
    /// Decrypted TLS plaintext, before the protocol codec.
    tls_plain: Vec<u8>,
    /// Decoded plaintext not yet consumed.
    plain: Vec<u8>,
    wbuf: Vec<u8>,
    /// Sealed protocol bytes on their way into TLS (VMess).
    sbuf: Vec<u8>,
}

impl Conn {
    /// Connect and send the request carrying `first` (target command and maybe data).
    pub async fn open(via: &Via, target: SocketAddr, first: &[u8]) -> anyhow::Result<Conn> {
        let dest = Destination::Ip(target);
        let mut wire = Vec::with_capacity(first.len() + 128);
        let (addr, codec, tls) = match via {
            Via::Direct => {
                wire.extend_from_slice(first);
                (target, Codec::Plain, None)
            }
            Via::Socks { socks, tls } => {
                let s = crate::client::vision::socks5_connect(*socks, target).await?;
                let mut c = Conn {
                    s,
                    tls: match tls {
                        Some(t) => Some(Box::new(t.connect()?)),
                        None => None,
                    },
                    codec: Codec::Plain,
                    rbuf: Vec::new(),
                    tls_plain: Vec::new(),
                    plain: Vec::new(),
                    wbuf: Vec::new(),
                    sbuf: Vec::new(),
                };
                if c.tls.is_some() {
                    c.handshake().await?;
                }
                c.send_wire(first).await?;
                return Ok(c);
            }
            Via::Proxy { addr, suite } => match suite {
                Suite::Ss(creds) => {
                    let c = SsStream::open_request(creds, &dest, first, &mut wire)?;
                    (*addr, Codec::Ss(c), None)
                }
                Suite::Trojan(t) => {
                    trojan::request(USER_UUID, &dest, first, &mut wire)?;
                    (*addr, Codec::Trojan, Some(Box::new(t.connect()?)))
                }
                Suite::Vmess(t) => {
                    let v = VmessStream::open_request(&dest, first, &mut wire)?;
                    let tls = match t {
                        Some(t) => Some(Box::new(t.connect()?)),
                        None => None,
                    };
                    (*addr, Codec::Vmess(Box::new(v)), tls)
                }
                Suite::Anytls(t) => {
                    let a = AnytlsStream::open_request(USER_UUID, &dest, first, &mut wire)?;
                    (*addr, Codec::Anytls(Box::new(a)), Some(Box::new(t.connect()?)))
                }
                Suite::Vision(_) | Suite::Quic(..) | Suite::SingBox(_) | Suite::Xhttp(..) => {
                    bail!("the Vision, QUIC and @sing-box suites go through their SOCKS client (Via::Socks)")
                }
                Suite::Vless(t) => {
                    vless::request(&vless::uuid_bytes(USER_UUID)?, &dest, first, &mut wire)?;
                    (
                        *addr,
                        Codec::Vless(ResponseHeader::default()),
                        Some(Box::new(t.connect()?)),
                    )
                }
            },
        };
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        let mut c = Conn {
            s,
            tls,
            codec,
            rbuf: Vec::new(),
            tls_plain: Vec::new(),
            plain: Vec::new(),
            wbuf: Vec::new(),
            sbuf: Vec::new(),
        };
        if c.tls.is_some() {
            c.handshake().await?;
            c.send_wire(&wire).await?;
        } else {
            c.s.write_all(&wire).await?;
        }
        Ok(c)
    }

    /// Drive the TLS handshake to completion (the request is sent right after, in the same
    /// flight as the client's Finished where the TLS stack allows).
    async fn handshake(&mut self) -> anyhow::Result<()> {
        loop {
            self.flush_tls().await?;
            let handshaking = self.tls.as_ref().is_some_and(|t| t.is_handshaking());
            if !handshaking {
                return Ok(());
            }
            if !self.read_some().await? {
                bail!("EOF during the TLS handshake");
            }
        }
    }

    /// Write everything rustls has queued for the socket.
    async fn flush_tls(&mut self) -> anyhow::Result<()> {
        let Some(t) = self.tls.as_mut() else {
            return Ok(());
        };
        if !t.wants_write() {
            return Ok(());
        }
        self.wbuf.clear();
        while t.wants_write() {
            t.write_tls(&mut self.wbuf).context("rustls write_tls")?;
        }
        self.s.write_all(&self.wbuf).await?;
        Ok(())
    }

    /// Protocol bytes (already encoded by the codec) to the server, through TLS if any.
    async fn send_wire(&mut self, wire: &[u8]) -> anyhow::Result<()> {
        match self.tls.as_mut() {
            None => self.s.write_all(wire).await?,
            Some(_) => {
                // rustls buffers at most 64 KiB of plaintext (its default limit): write what
                // fits, send it, repeat (AnyTLS frames a 64 KiB write as 64 KiB + 14 B).
                let mut rest = wire;
                while !rest.is_empty() {
                    let t = self.tls.as_mut().context("TLS session")?;
                    let n = t.writer().write(rest).context("rustls writer")?;
                    rest = rest.get(n..).context("rustls wrote more than given")?;
                    self.flush_tls().await?;
                    if n == 0 && self.tls.as_ref().is_some_and(|t| !t.wants_write()) {
                        bail!("rustls takes no more plaintext");
                    }
                }
            }
        }
        Ok(())
    }

    pub async fn send(&mut self, plain: &[u8]) -> anyhow::Result<()> {
        match &mut self.codec {
            Codec::Ss(c) => {
                let mut w = std::mem::take(&mut self.wbuf);
                w.clear();
                c.seal(plain, &mut w)?;
                self.s.write_all(&w).await?;
                self.wbuf = w;
            }
            Codec::Vmess(c) => {
                let mut w = std::mem::take(&mut self.sbuf);
                w.clear();
                c.seal(plain, &mut w)?;
                let r = self.send_wire(&w).await;
                self.sbuf = w;
                r?;
            }
            Codec::Anytls(c) => {
                let mut w = std::mem::take(&mut self.sbuf);
                w.clear();
                c.seal(plain, &mut w);
                let r = self.send_wire(&w).await;
                self.sbuf = w;
                r?;
            }
            Codec::Plain | Codec::Trojan | Codec::Vless(_) => self.send_wire(plain).await?,
        }
        Ok(())
    }

    /// One read from the socket, decoded into `self.plain`; false at EOF.
    async fn read_some(&mut self) -> anyhow::Result<bool> {
        if matches!(&self.codec, Codec::Anytls(c) if c.finished()) {
            // The server's fin on our stream: its end, whether or not the session stays open.
            return Ok(false);
        }
        if self.rbuf.len() != READ_BUF {
            self.rbuf.resize(READ_BUF, 0);
        }
        let n = self.s.read(&mut self.rbuf).await?;
        if n == 0 {
            return Ok(false);
        }
        let wire = self.rbuf.get(..n).context("read length")?;
        let data: &[u8] = match self.tls.as_mut() {
            None => wire,
            Some(t) => {
                // rustls holds at most 16 KiB of decrypted plaintext: take it after each record
                // batch, before feeding more.
                let mut rest = wire;
                self.tls_plain.clear();
                while !rest.is_empty() {
                    t.read_tls(&mut rest).context("rustls read_tls")?;
                    t.process_new_packets().map_err(|e| anyhow!("TLS: {e}"))?;
                    match t.reader().read_to_end(&mut self.tls_plain) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(anyhow!("TLS read: {e}")),
                    }
                }
                &self.tls_plain
            }
        };
        match &mut self.codec {
            Codec::Plain | Codec::Trojan => self.plain.extend_from_slice(data),
            Codec::Ss(c) => c.open(data, &mut self.plain)?,
            Codec::Vmess(c) => c.open(data, &mut self.plain)?,
            Codec::Anytls(c) => {
                c.open(data, &mut self.plain)?;
                if let Some(reply) = c.take_reply() {
                    // heartResponse
                    self.tls
                        .as_mut()
                        .context("anytls without TLS")?
                        .writer()
                        .write_all(&reply)
                        .context("rustls writer")?;
                }
            }
            Codec::Vless(h) => {
                let p = h.strip(data)?;
                self.plain.extend_from_slice(p);
            }
        }
        // Handshake replies, key updates, alerts.
        self.flush_tls().await?;
        Ok(true)
    }

    /// Receive exactly `n` plaintext bytes and return them.
    pub async fn recv_exact(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        while self.plain.len() < n {
            if !self.read_some().await? {
                bail!("EOF after {} of {n} bytes", self.plain.len());
            }
        }
        Ok(self.plain.drain(..n).collect())
    }

    /// Receive and discard `n` plaintext bytes (bulk download).
    pub async fn drain(&mut self, n: u64) -> anyhow::Result<u64> {
        let mut got = 0u64;
        loop {
            got += self.plain.len() as u64;
            self.plain.clear();
            if got >= n {
                return Ok(got);
            }
            if !self.read_some().await? {
                bail!("EOF after {got} of {n} bytes");
            }
        }
    }

    /// Send `n` bytes of filler in `piece`-sized writes (bulk upload).
    pub async fn send_filler(&mut self, n: u64, piece: usize) -> anyhow::Result<()> {
        let fill = vec![0xa5_u8; piece];
        let mut left = n;
        while left > 0 {
            let k = left.min(piece as u64) as usize;
            self.send(fill.get(..k).context("piece")?).await?;
            left -= k as u64;
        }
        Ok(())
    }
}
