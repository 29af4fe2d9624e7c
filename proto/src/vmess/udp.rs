//! VMess UDP (command 2): the request header's destination is the association's one UDP
//! destination; after the header every body chunk is one datagram for it, and every response
//! chunk one reply datagram (Xray's `TransferTypePacket`, sing-vmess with `packet_encoding`
//! ""). The chunk framing is the TCP body's ([`super::body`]): same security, masking,
//! padding and authenticated length; only the unit changes (a chunk is never split or merged).
//!
//! ```text
//! client → server: [response header ←]  chunk(datagram 1) chunk(datagram 2) ... [end chunk]
//! server → client: response header, chunk(reply 1) chunk(reply 2) ...
//! ```
//! Replies carry no source address: the client attributes them to the header's destination.
//! The response header is the handshake's `reply`, sent before any reply chunk.

use std::net::SocketAddr;

use super::body::{ChunkReader, ChunkWriter};
use crate::{DatagramStreamCodec, Destination, StreamDatagram, WireError};

/// One VMess UDP association (flow 0).
pub struct VmessUdp {
    dest: Destination,
    reader: ChunkReader,
    writer: ChunkWriter,
    /// The end-of-stream chunk was reported.
    ended: bool,
}

impl VmessUdp {
    pub fn new(dest: Destination, reader: ChunkReader, writer: ChunkWriter) -> Self {
        VmessUdp {
            dest,
            reader,
            writer,
            ended: false,
        }
    }
}

impl DatagramStreamCodec for VmessUdp {
    fn open(
        &mut self,
        plain: &[u8],
        out: &mut Vec<StreamDatagram>,
        _reply: &mut Vec<u8>,
    ) -> Result<usize, WireError> {
        let mut at = 0usize;
        // Bounded by the input: each pass opens a whole chunk (at least one byte) or stops.
        loop {
            if self.reader.finished() {
                if !self.ended {
                    self.ended = true;
                    out.push(StreamDatagram::End { flow: 0 });
                }
                return Ok(plain.len());
            }
            let rest = plain.get(at..).unwrap_or_default();
            let mut payload = Vec::new();
            let (n, whole) = self.reader.open_chunk(rest, &mut payload)?;
            at = at.saturating_add(n).min(plain.len());
            if whole {
                out.push(StreamDatagram::Packet {
                    flow: 0,
                    dest: self.dest.clone(),
                    payload,
                });
            } else if !self.reader.finished() {
                return Ok(at);
            }
        }
    }

    fn seal(
        &mut self,
        _flow: u16,
        _from: SocketAddr,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        self.writer.seal_chunk(payload, out)
    }
}
