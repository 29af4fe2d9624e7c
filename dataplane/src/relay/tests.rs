//! The download side's backpressure hook: a codec that holds sealed bytes
//! ([`StreamCodec::send_blocked`]) stops the relay reading the destination until the client
//! side's control path releases them.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::cell::Cell;
use std::io::{Read, Write};
use std::time::Duration;

use super::*;
use crate::proto::WireError;

/// A toy flow-controlled framing: the client grants 1000 bytes per `W` it sends; sealed bytes
/// beyond the grant are held.
struct Gate {
    window: usize,
    held: Vec<u8>,
    release: bool,
}

impl Gate {
    fn flush(&mut self, out: &mut Vec<u8>) {
        let n = self.window.min(self.held.len());
        out.extend(self.held.drain(..n));
        self.window -= n;
    }
}

impl StreamCodec for Gate {
    fn open(&mut self, wire: &[u8], _out: &mut Vec<u8>) -> Result<usize, WireError> {
        let grants = wire.iter().filter(|&&b| b == b'W').count();
        self.window += 1000 * grants;
        self.release |= grants > 0;
        Ok(wire.len())
    }
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        self.held.extend_from_slice(plain);
        self.flush(out);
        Ok(())
    }
    fn has_control(&self) -> bool {
        self.release
    }
    fn take_control(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.release = false;
        self.flush(out);
        Ok(())
    }
    fn send_blocked(&self) -> bool {
        !self.held.is_empty()
    }
}

#[derive(Default)]
struct Count {
    up: Cell<u64>,
    down: Cell<u64>,
}

impl Meter for Count {
    fn up(&self, n: u64) {
        self.up.set(self.up.get() + n);
    }
    fn down(&self, n: u64) {
        self.down.set(self.down.get() + n);
    }
}

fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

#[test]
fn download_waits_while_the_codec_holds_bytes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut client_app, client_relay) = pair();
    let (mut dest_app, dest_relay) = pair();
    let data: Vec<u8> = (0..30_000u32).map(|i| (i * 7) as u8).collect();
    let first = data[..10_000].to_vec();
    let later = data[10_000..].to_vec();
    let meter = Count::default();
    let bufs = BufPool::new(64 * 1024);
    let pipes = PipePool::new(64 * 1024);
    let bucket = Bucket::new(0);
    let ctl = ConnCtl::default();
    let env = RelayEnv {
        bufs: &bufs,
        pipes: &pipes,
        meter: &meter,
        bucket: &bucket,
        timeouts: RelayTimeouts {
            idle: Duration::from_secs(10),
            uplink_only: Duration::from_secs(10),
            downlink_only: Duration::from_secs(10),
        },
        ctl: &ctl,
        splice: false,
        uring: None,
    };
    let got = rt.block_on(async {
        let client = TcpStream::from_std(client_relay).unwrap();
        let dest = TcpStream::from_std(dest_relay).unwrap();
        let codec: Box<dyn StreamCodec> = Box::new(Gate {
            window: 1000,
            held: Vec::new(),
            release: false,
        });
        let relay = relay(&env, &client, &dest, Vec::new(), Some(codec));
        let script = async {
            dest_app.write_all(&first).unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            // The rest is there to read, but 9000 bytes are held: the relay must not read it.
            dest_app.write_all(&later).unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(meter.down.get(), 10_000, "read past a blocked codec");
            client_app.set_nonblocking(true).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            if let Ok(n) = client_app.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got.len(), 1000);
            // Grant the rest, 1000 bytes per 'W'.
            client_app.write_all(&[b'W'; 29]).unwrap();
            for _ in 0..200 {
                if got.len() >= data.len() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                while let Ok(n) = client_app.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            }
            ctl.cancel();
            got
        };
        let (_, got) = tokio::join!(relay, script);
        got
    });
    assert_eq!(got, data);
    assert_eq!(meter.down.get(), 30_000);
}

/// A toy framing whose client says `E` to end its side (like gRPC END_STREAM) and which ends
/// ours with `BYE` (like trailers or close_notify).
#[derive(Default)]
struct Ending {
    ended: bool,
}

impl StreamCodec for Ending {
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        for &b in wire {
            if b == b'E' {
                self.ended = true;
            } else if !self.ended {
                out.push(b);
            }
        }
        Ok(wire.len())
    }
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        out.extend_from_slice(plain);
        Ok(())
    }
    fn input_ended(&self) -> bool {
        self.ended
    }
    fn close_output(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.extend_from_slice(b"BYE");
        Ok(())
    }
}

#[test]
fn end_of_stream_inside_the_protocol_half_closes_and_ends_with_the_codec_bytes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut client_app, client_relay) = pair();
    let (mut dest_app, dest_relay) = pair();
    let meter = Count::default();
    let bufs = BufPool::new(64 * 1024);
    let pipes = PipePool::new(64 * 1024);
    let bucket = Bucket::new(0);
    let ctl = ConnCtl::default();
    let env = RelayEnv {
        bufs: &bufs,
        pipes: &pipes,
        meter: &meter,
        bucket: &bucket,
        timeouts: RelayTimeouts {
            idle: Duration::from_secs(10),
            uplink_only: Duration::from_secs(10),
            downlink_only: Duration::from_secs(10),
        },
        ctl: &ctl,
        splice: false,
        uring: None,
    };
    let (at_dest, at_client) = rt.block_on(async {
        let client = TcpStream::from_std(client_relay).unwrap();
        let dest = TcpStream::from_std(dest_relay).unwrap();
        let relay = relay(
            &env,
            &client,
            &dest,
            Vec::new(),
            Some(Box::new(Ending::default())),
        );
        let script = async {
            // The client ends its side in-band but keeps its TCP connection open.
            client_app.write_all(b"requestE").unwrap();
            dest_app.set_nonblocking(true).unwrap();
            let mut at_dest = Vec::new();
            let mut buf = [0u8; 1024];
            let mut eof = false;
            for _ in 0..200 {
                match dest_app.read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => at_dest.extend_from_slice(&buf[..n]),
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            assert!(eof, "the destination never saw the client's end of stream");
            // The destination answers and closes: the client gets the answer, then BYE, then FIN.
            dest_app.write_all(b"response").unwrap();
            dest_app.shutdown(Shutdown::Write).unwrap();
            client_app.set_nonblocking(true).unwrap();
            let mut at_client = Vec::new();
            for _ in 0..200 {
                match client_app.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => at_client.extend_from_slice(&buf[..n]),
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            client_app.shutdown(Shutdown::Write).unwrap();
            (at_dest, at_client)
        };
        let (end, got) = tokio::join!(relay, script);
        assert!(matches!(end, RelayEnd::Done), "{end:?}");
        got
    });
    assert_eq!(at_dest, b"request");
    assert_eq!(at_client, b"responseBYE");
    assert_eq!((meter.up.get(), meter.down.get()), (7, 8));
}

/// A toy control protocol: every byte the client sends asks for a one-byte answer (like a
/// WebSocket ping or an HTTP/2 PING), queued until the download side sends it.
struct Answering {
    queued: Vec<u8>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const ANSWER_BUDGET: usize = 4096;

impl StreamCodec for Answering {
    fn open(&mut self, wire: &[u8], _out: &mut Vec<u8>) -> Result<usize, WireError> {
        self.queued.extend_from_slice(wire);
        self.most
            .fetch_max(self.queued.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(wire.len())
    }
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        out.extend_from_slice(plain);
        Ok(())
    }
    fn has_control(&self) -> bool {
        !self.queued.is_empty()
    }
    fn take_control(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.append(&mut self.queued);
        Ok(())
    }
    fn output_over_budget(&self) -> bool {
        self.queued.len() > ANSWER_BUDGET
    }
}

/// A client that asks for answers and never reads them: once the codec's output is over
/// budget the relay stops reading from it (TCP backpressure reaches the client) instead of
/// queueing answers without bound, as today's main did.
#[test]
fn upload_stops_while_the_codec_output_is_over_budget() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client_app, client_relay) = pair();
    let (_dest_app, dest_relay) = pair();
    // Small socket buffers: the client's unread answers fill them quickly.
    SockRef::from(&client_app)
        .set_recv_buffer_size(16 * 1024)
        .unwrap();
    SockRef::from(&client_relay)
        .set_send_buffer_size(16 * 1024)
        .unwrap();
    let meter = Count::default();
    let read_size = 64 * 1024;
    let bufs = BufPool::new(read_size);
    let pipes = PipePool::new(64 * 1024);
    let bucket = Bucket::new(0);
    let ctl = ConnCtl::default();
    let env = RelayEnv {
        bufs: &bufs,
        pipes: &pipes,
        meter: &meter,
        bucket: &bucket,
        timeouts: RelayTimeouts {
            idle: Duration::from_secs(10),
            uplink_only: Duration::from_secs(10),
            downlink_only: Duration::from_secs(10),
        },
        ctl: &ctl,
        splice: false,
        uring: None,
    };
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The flooding client, on its own thread: writes for a second, never reads.
    let writer = {
        let sent = sent.clone();
        let mut c = client_app.try_clone().unwrap();
        std::thread::spawn(move || {
            c.set_write_timeout(Some(Duration::from_millis(50))).unwrap();
            let chunk = [b'?'; 16 * 1024];
            let until = std::time::Instant::now() + Duration::from_secs(1);
            while std::time::Instant::now() < until {
                match c.write(&chunk) {
                    Ok(n) => {
                        sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    };
    rt.block_on(async {
        let client = TcpStream::from_std(client_relay).unwrap();
        let dest = TcpStream::from_std(dest_relay).unwrap();
        let codec: Box<dyn StreamCodec> = Box::new(Answering {
            queued: Vec::new(),
            most: most.clone(),
        });
        let relay = relay(&env, &client, &dest, Vec::new(), Some(codec));
        let stop = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            ctl.cancel();
        };
        tokio::join!(relay, stop);
    });
    writer.join().unwrap();
    let most = most.load(std::sync::atomic::Ordering::Relaxed);
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        most <= ANSWER_BUDGET + read_size,
        "queued {most} answers (client sent {sent})"
    );
    // The client was held back: it could not send much more than the buffers hold.
    assert!(sent < 16 << 20, "client sent {sent} bytes");
}

/// A toy destination-side framing: each sealed piece is `len (2 B) | bytes ^ 0x5a`.
#[derive(Default)]
struct Framed {
    carry: Vec<u8>,
}

fn frame(plain: &[u8], out: &mut Vec<u8>) {
    for piece in plain.chunks(1000) {
        out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        out.extend(piece.iter().map(|b| b ^ 0x5a));
    }
}

fn unframe(carry: &mut Vec<u8>, wire: &[u8], out: &mut Vec<u8>) {
    carry.extend_from_slice(wire);
    loop {
        let Some(&[a, b]) = carry.get(..2).map(|h| <&[u8; 2]>::try_from(h).unwrap()) else {
            return;
        };
        let n = usize::from(u16::from_be_bytes([a, b]));
        let Some(body) = carry.get(2..2 + n) else {
            return;
        };
        out.extend(body.iter().map(|b| b ^ 0x5a));
        carry.drain(..2 + n);
    }
}

impl UpstreamCodec for Framed {
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        frame(plain, out);
        Ok(())
    }
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        unframe(&mut self.carry, wire, out);
        Ok(())
    }
}

/// A proxy outbound's framing between the relay and the destination: the destination sees
/// framed bytes both ways, the client plaintext, and each byte is counted once as plaintext.
#[test]
fn upstream_codec_frames_the_destination_side_and_counts_plaintext() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut client_app, client_relay) = pair();
    let (mut dest_app, dest_relay) = pair();
    let up: Vec<u8> = (0..50_000u32).map(|i| (i * 13) as u8).collect();
    let down: Vec<u8> = (0..40_000u32).map(|i| (i * 7 + 1) as u8).collect();
    let meter = Count::default();
    let bufs = BufPool::new(16 * 1024);
    let pipes = PipePool::new(64 * 1024);
    let bucket = Bucket::new(0);
    let ctl = ConnCtl::default();
    let env = RelayEnv {
        bufs: &bufs,
        pipes: &pipes,
        meter: &meter,
        bucket: &bucket,
        timeouts: RelayTimeouts {
            idle: Duration::from_secs(10),
            uplink_only: Duration::from_secs(10),
            downlink_only: Duration::from_secs(10),
        },
        ctl: &ctl,
        splice: true,
        uring: None,
    };
    // The applications on both ends run on threads (blocking sockets).
    let (up2, down2) = (up.clone(), down.clone());
    let client_side = std::thread::spawn(move || {
        client_app.write_all(&up2).unwrap();
        client_app.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        client_app.read_to_end(&mut got).unwrap();
        got
    });
    let dest_side = std::thread::spawn(move || {
        let mut wire = Vec::new();
        dest_app.read_to_end(&mut wire).unwrap();
        let mut plain = Vec::new();
        unframe(&mut Vec::new(), &wire, &mut plain);
        let mut framed = Vec::new();
        frame(&down2, &mut framed);
        dest_app.write_all(&framed).unwrap();
        dest_app.shutdown(Shutdown::Write).unwrap();
        (wire.len(), plain)
    });
    let end = rt.block_on(async {
        let client = TcpStream::from_std(client_relay).unwrap();
        let dest = TcpStream::from_std(dest_relay).unwrap();
        relay_upstream(
            &env,
            &client,
            &dest,
            Vec::new(),
            None,
            Some(Box::new(Framed::default())),
        )
        .await
    });
    assert!(matches!(end, RelayEnd::Done), "{end:?}");
    let (wire_len, plain_up) = dest_side.join().unwrap();
    assert_eq!(plain_up, up, "the destination got the framed upload");
    assert!(wire_len > up.len(), "framing went over the wire");
    assert_eq!(
        client_side.join().unwrap(),
        down,
        "the client got the plaintext download"
    );
    assert_eq!(
        (meter.up.get(), meter.down.get()),
        (50_000, 40_000),
        "counted once, as plaintext"
    );
}
