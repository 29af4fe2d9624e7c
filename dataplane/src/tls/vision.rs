//! The relay codec of a VLESS Vision connection: TLS (or REALITY) outside, Vision padding on
//! the first packets, then — once the inner connection is TLS 1.3 and a side sends command 2 —
//! that direction's bytes pass raw on the socket without the outer TLS.
//!
//! ```text
//! uplink:   records opened one at a time → unpad; after the record carrying "direct" the
//!           rest of the wire is raw payload
//! downlink: filter (inner ServerHello, TLS 1.3?) → padded block (UUID first, command 0;
//!           1 when the filter gave up; 2 at the first inner application-data record) → TLS;
//!           after command 2 plaintext goes out raw
//! ```

use crate::proto::vless::vision::{
    is_application_data, pad, Seen, TlsFilter, Unpadder, CMD_CONTINUE, CMD_DIRECT, CMD_END,
};
use crate::proto::{StreamCodec, WireError};
use crate::tls::{deframe, TlsSession};

/// Largest content in one padded block (room for the header and padding in a record).
const BLOCK: usize = 8000;

pub struct VisionCodec {
    tls: TlsSession,
    uuid: [u8; 16],
    unpad: Unpadder,
    filter: TlsFilter,
    up_raw: bool,
    down_raw: bool,
    down_padding: bool,
    uuid_sent: bool,
}

impl VisionCodec {
    pub fn new(tls: TlsSession, uuid: [u8; 16]) -> Self {
        VisionCodec {
            tls,
            uuid,
            unpad: Unpadder::new(uuid),
            filter: TlsFilter::default(),
            up_raw: false,
            down_raw: false,
            down_padding: true,
            uuid_sent: false,
        }
    }

    /// Unpads client payload decrypted during the handshake (after the VLESS header).
    pub fn unpad_initial(&mut self, data: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        if data.is_empty() {
            return Ok(out);
        }
        if self.unpad.feed(data, &mut out) == Seen::Direct {
            // Direct needs the record boundary; it cannot come in the first flight.
            return Err(WireError::Malformed("vision: direct in the first packet"));
        }
        self.filter.inspect(&out);
        Ok(out)
    }

    /// Whether both directions dropped the outer TLS.
    pub fn is_raw(&self) -> bool {
        self.up_raw && self.down_raw
    }
}

impl StreamCodec for VisionCodec {
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        if self.up_raw {
            out.extend_from_slice(wire);
            return Ok(wire.len());
        }
        let mut used = 0usize;
        let mut plain = Vec::new();
        // Bounded: each pass consumes one whole record.
        while let Some(len) = deframe::record_len(wire.get(used..).unwrap_or_default())? {
            let rec = wire.get(used..used + len).unwrap_or_default();
            plain.clear();
            let n = self.tls.open(rec, &mut plain)?;
            if n == 0 {
                break;
            }
            used += n;
            let before = out.len();
            let seen = self.unpad.feed(&plain, out);
            if out.len() > before && !self.filter.finished() {
                self.filter.inspect(out.get(before..).unwrap_or_default());
            }
            if seen == Seen::Direct {
                self.up_raw = true;
                out.extend_from_slice(wire.get(used..).unwrap_or_default());
                return Ok(wire.len());
            }
        }
        Ok(used)
    }

    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.down_raw {
            self.tls.pending_output(out);
            out.extend_from_slice(plain);
            return Ok(());
        }
        if !self.down_padding || plain.is_empty() {
            return self.tls.seal(plain, out);
        }
        self.filter.inspect(plain);
        let command = if self.filter.tls13 && is_application_data(plain) {
            CMD_DIRECT
        } else if self.filter.finished() && !self.filter.tls13 {
            CMD_END
        } else {
            CMD_CONTINUE
        };
        let mut framed = Vec::with_capacity(plain.len() + 1024);
        let blocks = plain.len().div_ceil(BLOCK);
        for (i, chunk) in plain.chunks(BLOCK).enumerate() {
            let last = i + 1 == blocks;
            let mut r = [0u8; 2];
            let _ = aws_lc_rs::rand::fill(&mut r);
            let r = usize::from(u16::from_be_bytes(r));
            // As Xray: short content gets 900..1400 bytes in all, longer content 0..256.
            let pad_len = if chunk.len() < 900 {
                r % 500 + 900 - chunk.len()
            } else {
                r % 256
            };
            let uuid = (!self.uuid_sent).then_some(&self.uuid);
            self.uuid_sent = true;
            let cmd = if last { command } else { CMD_CONTINUE };
            pad(uuid, cmd, chunk, &vec![0u8; pad_len], &mut framed);
        }
        self.tls.seal(&framed, out)?;
        match command {
            CMD_DIRECT => {
                self.down_padding = false;
                self.down_raw = true;
            }
            CMD_END => self.down_padding = false,
            _ => {}
        }
        Ok(())
    }
}
