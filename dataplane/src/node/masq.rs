//! Hysteria 2 masquerade, the I/O: the web server a node looks like to anyone who is not an
//! authenticated client (issue 12). The request arrives as HTTP/3 on a QUIC stream; the
//! answer goes back the same way, from one of
//!
//! * a directory (`file:///var/www`): GET and HEAD, `index.html` for a directory, content
//!   type by extension, streamed in chunks; the path is resolved sans-IO (no `..`, no NUL,
//!   `proto::hysteria2::masq::resolve_path`) and then by the file system, and must still be
//!   under the directory once symbolic links are followed;
//! * a web server (`http://…`, `https://…`): method, path, headers and body are proxied over
//!   HTTP/1.1 (hyper's client; rustls with the web PKI roots for `https`), `Host` rewritten
//!   to the upstream's, the answer streamed back; a failure before the answer is a 502;
//! * a fixed text (`string:…`).
//!
//! Every request is bounded here: its body ([`MAX_REQUEST_BODY`], 413 over it), the upstream's
//! answer head ([`MAX_UPSTREAM_HEAD`]) and time ([`UPSTREAM_TIMEOUT`] to connect and answer,
//! [`IDLE`] between two pieces of a body either way). How many requests a connection gets,
//! how many at once, and how long an unauthenticated connection may stay for them is the QUIC
//! driver's (`quic.rs`, `serve_web`).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::net::TcpStream;
use v2sp_shared::dpconfig::Masquerade;

use crate::proto::hysteria2::h3;
use crate::proto::hysteria2::masq::{self as wire, text_response};
use crate::proto::quic::WebRequest;

/// Largest request body proxied (a form, a small upload; a probe needs none): the body is
/// collected before the upstream request, so this bounds what a request holds.
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Largest answer head taken from the upstream (hyper's read buffer).
const MAX_UPSTREAM_HEAD: usize = 64 * 1024;
/// Connecting to the upstream and getting its answer's head.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next piece of a body, from the client or the upstream, and for the
/// client to take the next piece of an answer.
const IDLE: Duration = Duration::from_secs(10);
/// One read of a served file.
const FILE_CHUNK: usize = 64 * 1024;

/// H3_INTERNAL_ERROR: an answer broken off after its head went out.
const H3_INTERNAL_ERROR: u32 = 0x102;

/// A node's masquerade, ready to serve.
pub(super) struct Masq {
    kind: Masquerade,
    /// The TLS client of an `https` upstream.
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
}

impl Masq {
    pub(super) fn new(kind: &Masquerade) -> Result<Masq, String> {
        let tls = match kind {
            Masquerade::Proxy { tls: true, host, .. } => {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("masquerade TLS: {e}"))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("masquerade: {host:?} is not a TLS server name: {e}"))?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
            }
            _ => None,
        };
        Ok(Masq {
            kind: kind.clone(),
            tls,
        })
    }

    /// Answers `req` on `send`. `body`: the request body's bytes that came with its head (the
    /// rest is read from `recv` when the answer needs it).
    pub(super) async fn serve(
        &self,
        req: &WebRequest,
        body: Vec<u8>,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) {
        let head_only = req.method == "HEAD";
        let ok = match &self.kind {
            Masquerade::String { content } => {
                let len = content.len().to_string();
                let headers = [
                    ("content-type", "text/plain; charset=utf-8"),
                    ("content-length", &len),
                ];
                let body = if head_only { "" } else { content.as_str() };
                write(send, h3::response(200, &headers, body.as_bytes())).await
            }
            Masquerade::File { dir } => serve_file(Path::new(dir), req, send).await,
            Masquerade::Proxy {
                host,
                port,
                base,
                authority,
                ..
            } => {
                let up = Upstream {
                    host,
                    port: *port,
                    base,
                    authority,
                    tls: self.tls.as_ref(),
                };
                proxy(&up, req, body, send, recv).await
            }
        };
        // The answer is complete: what else the client sends on the stream is not read
        // (RFC 9114 §4.1.2: H3_NO_ERROR asks it to stop sending).
        let _ = recv.stop(quinn::VarInt::from_u32(h3::H3_NO_ERROR));
        if ok {
            let _ = send.finish();
        } else {
            let _ = send.reset(quinn::VarInt::from_u32(H3_INTERNAL_ERROR));
        }
    }
}

/// Writes `bytes` within [`IDLE`]; false when the client did not take them.
async fn write(send: &mut quinn::SendStream, bytes: Vec<u8>) -> bool {
    matches!(
        tokio::time::timeout(IDLE, send.write_chunk(Bytes::from(bytes))).await,
        Ok(Ok(()))
    )
}

/// Writes one DATA frame carrying `chunk` (its payload handed over without a copy).
async fn write_data(send: &mut quinn::SendStream, chunk: Bytes) -> bool {
    if chunk.is_empty() {
        return true;
    }
    let mut head = Vec::with_capacity(16);
    h3::put_data_header(&mut head, chunk.len());
    let mut parts = [Bytes::from(head), chunk];
    let all = async {
        let mut first = 0;
        while first < parts.len() {
            let Some(rest) = parts.get_mut(first..) else { break };
            let w = send.write_chunks(rest).await?;
            first += w.chunks;
        }
        Ok::<(), quinn::WriteError>(())
    };
    matches!(tokio::time::timeout(IDLE, all).await, Ok(Ok(())))
}

async fn serve_file(root: &Path, req: &WebRequest, send: &mut quinn::SendStream) -> bool {
    if req.method != "GET" && req.method != "HEAD" {
        return write(
            send,
            text_response(405, &[("allow", "GET, HEAD")], "405 method not allowed\n"),
        )
        .await;
    }
    let not_found = || text_response(404, &[], "404 page not found\n");
    let Some(path) = wire::resolve_path(&req.path) else {
        return write(send, not_found()).await;
    };
    let Some((file, meta, name)) = open_under(root, &path.relative()).await else {
        return write(send, not_found()).await;
    };
    let (mut file, meta, name) = if meta.is_dir() {
        if !path.trailing_slash {
            // As a web server does: a directory's own links are relative to `dir/`.
            let (p, q) = match req.path.split_once('?') {
                Some((p, q)) => (p, format!("?{q}")),
                None => (req.path.as_str(), String::new()),
            };
            let to = format!("{p}/{q}");
            return write(
                send,
                text_response(301, &[("location", &to)], "301 moved permanently\n"),
            )
            .await;
        }
        let index = match path.relative().as_str() {
            "" => "index.html".to_string(),
            r => format!("{r}/index.html"),
        };
        match open_under(root, &index).await {
            Some((f, m, n)) if m.is_file() => (f, m, n),
            _ => return write(send, not_found()).await,
        }
    } else if meta.is_file() && !path.trailing_slash {
        (file, meta, name)
    } else {
        return write(send, not_found()).await;
    };
    let len = meta.len().to_string();
    let headers = [
        ("content-type", wire::content_type(&name)),
        ("content-length", len.as_str()),
    ];
    if !write(send, h3::response(200, &headers, b"")).await {
        return false;
    }
    if req.method == "HEAD" {
        return true;
    }
    let mut left = meta.len();
    while left > 0 {
        let mut buf = bytes::BytesMut::zeroed(FILE_CHUNK.min(usize::try_from(left).unwrap_or(FILE_CHUNK)));
        let n = match file.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        buf.truncate(n);
        left = left.saturating_sub(n as u64);
        if !write_data(send, buf.freeze()).await {
            return false;
        }
    }
    true
}

/// Opens `relative` under `root` when, with every symbolic link followed, it is still under
/// `root`: the file, its metadata and its name.
async fn open_under(root: &Path, relative: &str) -> Option<(tokio::fs::File, std::fs::Metadata, String)> {
    let root = tokio::fs::canonicalize(root).await.ok()?;
    let real: PathBuf = tokio::fs::canonicalize(root.join(relative)).await.ok()?;
    if !real.starts_with(&root) {
        return None;
    }
    let file = tokio::fs::File::open(&real).await.ok()?;
    // The metadata of what was opened (not of the path again, which may have changed since).
    let meta = file.metadata().await.ok()?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some((file, meta, name))
}

/// The upstream of a proxy masquerade.
struct Upstream<'a> {
    host: &'a str,
    port: u16,
    base: &'a str,
    authority: &'a str,
    tls: Option<&'a (tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
}

/// Reads the request body after `first` (what came with the head): `Ok(None)` when it is
/// over [`MAX_REQUEST_BODY`], `Err` when the client broke it off or went quiet.
async fn read_body(first: Vec<u8>, recv: &mut quinn::RecvStream) -> Result<Option<Bytes>, ()> {
    let mut dec = h3::BodyDecoder::default();
    let mut body = Vec::new();
    let mut carry = first;
    loop {
        let used = dec.decode(&carry, &mut body).map_err(|_| ())?;
        carry.drain(..used.min(carry.len()));
        if body.len() > MAX_REQUEST_BODY {
            return Ok(None);
        }
        // An incomplete frame head is a few bytes; more is not a frame.
        if carry.len() > 16 {
            return Err(());
        }
        match tokio::time::timeout(IDLE, recv.read_chunk(16 * 1024, true)).await {
            Ok(Ok(Some(c))) => carry.extend_from_slice(&c.bytes),
            Ok(Ok(None)) if carry.is_empty() && dec.at_frame_boundary() => return Ok(Some(body.into())),
            _ => return Err(()),
        }
    }
}

/// Proxies the request to the upstream and streams its answer back; false when the answer
/// was broken off.
async fn proxy(
    up: &Upstream<'_>,
    req: &WebRequest,
    first: Vec<u8>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> bool {
    let bad_gateway = || text_response(502, &[], "502 bad gateway\n");
    let Some(target) = wire::upstream_path(up.base, &req.path) else {
        return write(send, text_response(400, &[], "400 bad request\n")).await;
    };
    let Ok(method) = hyper::Method::from_bytes(req.method.as_bytes()) else {
        return write(send, text_response(400, &[], "400 bad request\n")).await;
    };
    let body = match read_body(first, recv).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return write(send, text_response(413, &[], "413 request entity too large\n")).await;
        }
        Err(()) => return false,
    };
    let mut builder = hyper::Request::builder().method(method).uri(target.as_str());
    for (name, value) in &req.headers {
        if wire::forward_request_header(name) {
            builder = builder.header(name.as_str(), value.as_str());
        }
    }
    builder = builder.header("host", up.authority);
    let Ok(request) = builder.body(http_body_util::Full::new(body)) else {
        return write(send, text_response(400, &[], "400 bad request\n")).await;
    };
    let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let tcp = TcpStream::connect((up.host, up.port))
            .await
            .map_err(|e| e.to_string())?;
        crate::net::tune_stream(&tcp);
        let io: Box<dyn Stream> = match up.tls {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?,
            ),
            None => Box::new(tcp),
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_UPSTREAM_HEAD)
            .handshake::<_, http_body_util::Full<Bytes>>(Io(io))
            .await
            .map_err(|e| e.to_string())?;
        // The connection's driver ends with the answer (or with this task's stream, when
        // the client goes: the sender and the body are dropped then).
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        sender.send_request(request).await.map_err(|e| e.to_string())
    })
    .await;
    let resp = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(upstream = up.authority, "masquerade upstream failed: {e}");
            return write(send, bad_gateway()).await;
        }
        Err(_) => {
            tracing::debug!(upstream = up.authority, "masquerade upstream timed out");
            return write(send, bad_gateway()).await;
        }
    };
    let (parts, mut body) = resp.into_parts();
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter(|(n, _)| wire::forward_response_header(n.as_str()))
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect();
    if !write(send, h3::response(parts.status.as_u16(), &headers, b"")).await {
        return false;
    }
    loop {
        match tokio::time::timeout(IDLE, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(f))) => {
                // Trailers are not passed on (nothing a browser needs from them).
                if let Ok(data) = f.into_data() {
                    if !write_data(send, data).await {
                        return false;
                    }
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// A byte stream to the upstream: TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

/// A tokio stream as hyper's I/O.
struct Io(Box<dyn Stream>);

impl hyper::rt::Read for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut tmp = [0u8; 16 * 1024];
        let room = buf.remaining().min(tmp.len());
        let mut rb = tokio::io::ReadBuf::new(tmp.get_mut(..room).unwrap_or_default());
        match Pin::new(&mut self.0).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(rb.filled());
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
