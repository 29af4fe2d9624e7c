//! One client connection of the load generator: directly to the target (baseline) or through a
//! Shadowsocks server, with our own client codec. Reads go through one 256 KiB buffer; decoded
//! plaintext is counted and dropped (bulk) or kept until consumed (echo).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use v2sp_dataplane::proto::Destination;

use crate::client::ss::{SsCredentials, SsStream};

const READ_BUF: usize = 256 * 1024;

/// How a connection reaches the target.
#[derive(Clone)]
pub enum Via {
    Direct,
    Ss {
        proxy: SocketAddr,
        creds: Arc<SsCredentials>,
    },
}

pub struct Conn {
    s: TcpStream,
    codec: Option<SsStream>,
    rbuf: Vec<u8>,
    /// Decoded plaintext not yet consumed.
    plain: Vec<u8>,
    wbuf: Vec<u8>,
}

impl Conn {
    /// Connect and send the request carrying `first` (target command and maybe data).
    pub async fn open(via: &Via, target: SocketAddr, first: &[u8]) -> anyhow::Result<Conn> {
        let (addr, codec, wire) = match via {
            Via::Direct => (target, None, first.to_vec()),
            Via::Ss { proxy, creds } => {
                let mut wire = Vec::with_capacity(first.len() + 128);
                let c = SsStream::open_request(creds, &Destination::Ip(target), first, &mut wire)?;
                (*proxy, Some(c), wire)
            }
        };
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        s.write_all(&wire).await?;
        Ok(Conn {
            s,
            codec,
            rbuf: Vec::new(),
            plain: Vec::new(),
            wbuf: Vec::new(),
        })
    }

    pub async fn send(&mut self, plain: &[u8]) -> anyhow::Result<()> {
        match self.codec.as_mut() {
            None => self.s.write_all(plain).await?,
            Some(c) => {
                self.wbuf.clear();
                c.seal(plain, &mut self.wbuf)?;
                self.s.write_all(&self.wbuf).await?;
            }
        }
        Ok(())
    }

    /// One read from the socket, decoded into `self.plain`; false at EOF.
    async fn read_some(&mut self) -> anyhow::Result<bool> {
        if self.rbuf.len() != READ_BUF {
            self.rbuf.resize(READ_BUF, 0);
        }
        let n = self.s.read(&mut self.rbuf).await?;
        if n == 0 {
            return Ok(false);
        }
        let wire = self.rbuf.get(..n).context("read length")?;
        match self.codec.as_mut() {
            None => self.plain.extend_from_slice(wire),
            Some(c) => c.open(wire, &mut self.plain)?,
        }
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
