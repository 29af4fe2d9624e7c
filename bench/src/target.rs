//! The destination of every proxied connection: a small command server that the bench runs
//! itself on 127.0.0.1, in the load generator's runtime (so on the client CPUs). It sees
//! plaintext, after the proxy has decoded it.
//!
//! ```text
//! request (first 9 plaintext bytes of a connection):
//! +-------+-------------+
//! | cmd   | arg u64 BE  |
//! +-------+-------------+
//! 'D' n : the target sends n bytes, then shuts down its write side   (bulk download)
//! 'U' n : the target reads n bytes, then sends n back as u64 BE (8 B) (bulk upload)
//! 'P' m : echo of m-byte messages until EOF                           (rate, latency)
//! 'I' _ : the target sends 1 byte, then waits for EOF                 (idle connections)
//! ```

use std::net::SocketAddr;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const REQ_LEN: usize = 9;
pub const CMD_DOWNLOAD: u8 = b'D';
pub const CMD_UPLOAD: u8 = b'U';
pub const CMD_PING: u8 = b'P';
pub const CMD_IDLE: u8 = b'I';
/// Write/read size of the target for bulk transfers.
const BULK_IO: usize = 256 * 1024;

pub fn request(cmd: u8, arg: u64) -> [u8; REQ_LEN] {
    let mut r = [0u8; REQ_LEN];
    r[0] = cmd;
    r[1..].copy_from_slice(&arg.to_be_bytes());
    r
}

/// Bind the target on 127.0.0.1 (ephemeral port) and serve it on the current runtime.
pub async fn start() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(async move {
                        // A connection the proxy or client dropped is normal here.
                        let _ = handle_tcp(s).await;
                    });
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    });
    Ok(addr)
}

/// The same target behind TLS 1.3 (the run's certificate, `TlsMaterial::server`): the
/// destination of the Vision suites, whose tunnel must carry TLS 1.3 for Vision to splice.
/// TLS runs in the bench's runtime, on the load generator's CPUs.
pub async fn start_tls(cfg: Arc<rustls::ServerConfig>) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if s.set_nodelay(true).is_err() {
                            return;
                        }
                        // REALITY probes and dropped connections fail here; that is normal.
                        if let Ok(t) = acceptor.accept(s).await {
                            let _ = handle(t).await;
                        }
                    });
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    });
    Ok(addr)
}

async fn handle_tcp(s: TcpStream) -> anyhow::Result<()> {
    s.set_nodelay(true)?;
    handle(s).await
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> anyhow::Result<()> {
    let mut req = [0u8; REQ_LEN];
    s.read_exact(&mut req).await?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&req[1..]);
    let arg = u64::from_be_bytes(a);
    match req[0] {
        CMD_DOWNLOAD => {
            let fill = vec![0x5a_u8; BULK_IO];
            let mut left = arg;
            while left > 0 {
                let n = left.min(BULK_IO as u64) as usize;
                s.write_all(&fill[..n]).await?;
                left -= n as u64;
            }
            s.shutdown().await?;
            // Wait for the client's close so the proxy sees an orderly end.
            let mut b = [0u8; 64];
            while s.read(&mut b).await? > 0 {}
        }
        CMD_UPLOAD => {
            let mut buf = vec![0u8; BULK_IO];
            let mut got = 0u64;
            while got < arg {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            s.write_all(&got.to_be_bytes()).await?;
            let mut b = [0u8; 64];
            while s.read(&mut b).await? > 0 {}
        }
        CMD_PING => {
            let m = usize::try_from(arg).unwrap_or(1).clamp(1, 65536);
            let mut buf = vec![0u8; m];
            loop {
                if s.read_exact(&mut buf).await.is_err() {
                    break;
                }
                s.write_all(&buf).await?;
            }
        }
        CMD_IDLE => {
            s.write_all(b"k").await?;
            let mut b = [0u8; 64];
            while s.read(&mut b).await? > 0 {}
        }
        _ => {}
    }
    Ok(())
}
