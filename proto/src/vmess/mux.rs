//! VMess command 3 (Mux.Cool): the request header has no destination; the body (the TCP
//! body's chunk stream, [`super::body`]) carries Mux.Cool frames, the same frames as VLESS
//! command 3 ([`crate::vless::udp::Xudp`]: TCP sub-streams and UDP sub-sessions). What
//! Debian's v2ray 4.34 (and Xray) send when `mux` is enabled on a VMess outbound, and sing-box
//! with `packet_encoding: "xudp"`.

use std::net::SocketAddr;

use super::body::{ChunkReader, ChunkWriter};
use crate::vless::udp::Xudp;
use crate::{DatagramStreamCodec, StreamDatagram, WireError};

/// Mux plaintext a client may leave incomplete (a frame: ≤ 2 + 512 + 2 + 65535 bytes).
const MAX_PARTIAL: usize = 2 * 65536 + 1024;

/// Chunk stream outside, Mux.Cool frames inside.
pub struct VmessMux {
    reader: ChunkReader,
    writer: ChunkWriter,
    mux: Xudp,
    /// Opened plaintext not yet a whole frame.
    plain: Vec<u8>,
}

impl VmessMux {
    pub fn new(reader: ChunkReader, writer: ChunkWriter) -> Self {
        VmessMux {
            reader,
            writer,
            mux: Xudp::default(),
            plain: Vec::new(),
        }
    }
}

impl DatagramStreamCodec for VmessMux {
    fn open(
        &mut self,
        wire: &[u8],
        out: &mut Vec<StreamDatagram>,
        reply: &mut Vec<u8>,
    ) -> Result<usize, WireError> {
        let used = self.reader.open(wire, &mut self.plain)?;
        let mut frames = Vec::new();
        let n = self.mux.open(&self.plain, out, &mut frames)?;
        self.plain.drain(..n.min(self.plain.len()));
        if self.plain.len() > MAX_PARTIAL {
            return Err(WireError::Malformed("vmess mux: frame too long"));
        }
        if !frames.is_empty() {
            self.writer.seal(&frames, reply)?;
        }
        Ok(used)
    }

    fn seal(
        &mut self,
        flow: u16,
        from: SocketAddr,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let mut frame = Vec::with_capacity(payload.len() + 32);
        self.mux.seal(flow, from, payload, &mut frame)?;
        self.writer.seal(&frame, out)
    }

    fn seal_stream(&mut self, flow: u16, data: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let mut frames = Vec::with_capacity(data.len() + 32);
        self.mux.seal_stream(flow, data, &mut frames)?;
        self.writer.seal(&frames, out)
    }

    fn seal_end(&mut self, flow: u16, error: bool, out: &mut Vec<u8>) -> Result<(), WireError> {
        let mut frame = Vec::new();
        self.mux.seal_end(flow, error, &mut frame)?;
        self.writer.seal(&frame, out)
    }
}
