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
                tracing::debug!("vision: uplink direct");
                self.up_raw = true;
                out.extend_from_slice(wire.get(used..).unwrap_or_default());
                return Ok(wire.len());
            }
        }
        Ok(used)
    }

    fn passthrough(&self, upload: bool) -> bool {
        if upload {
            self.up_raw
        } else {
            self.down_raw
        }
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
                tracing::debug!("vision: downlink direct");
                self.down_padding = false;
                self.down_raw = true;
            }
            CMD_END => self.down_padding = false,
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::{Read, Write};

    use super::*;
    use crate::proto::vless::vision::{pad, CMD_CONTINUE, CMD_DIRECT};
    use crate::tls::tests::{client, client_out, pair};

    const UUID: [u8; 16] = [7; 16];

    fn connected() -> (TlsSession, rustls::ClientConnection, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::tls::server_config(&pair(dir.path())).unwrap();
        let mut s = TlsSession::new(&cfg).unwrap();
        let mut c = client(&rustls::version::TLS13);
        let mut plain = Vec::new();
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            let mut w = client_out(&mut c);
            if !w.is_empty() {
                s.open_in_place(&mut w, &mut plain).unwrap();
            }
            let mut back = Vec::new();
            s.pending_output(&mut back);
            let mut r = &back[..];
            while !r.is_empty() {
                c.read_tls(&mut r).unwrap();
            }
            c.process_new_packets().unwrap();
        }
        (s, c, dir)
    }

    /// Uplink: padded blocks in TLS, command 2, then raw bytes in the same read; downlink:
    /// padded until the inner TLS 1.3 ServerHello and first application data, then raw.
    #[test]
    fn switches_each_direction_to_raw() {
        let (s, mut c, _dir) = connected();
        let mut codec = VisionCodec::new(s, UUID);
        // Uplink.
        let mut block = Vec::new();
        pad(Some(&UUID), CMD_CONTINUE, b"inner hello", &[0; 30], &mut block);
        c.writer().write_all(&block).unwrap();
        let mut wire = client_out(&mut c);
        block.clear();
        pad(None, CMD_DIRECT, b"last", &[0; 3], &mut block);
        c.writer().write_all(&block).unwrap();
        wire.extend_from_slice(&client_out(&mut c));
        wire.extend_from_slice(b"\x17\x03\x03raw after direct");
        let mut up = Vec::new();
        let used = codec.open(&wire, &mut up).unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(up, b"inner hellolast\x17\x03\x03raw after direct");
        let mut more = Vec::new();
        codec.open(b"raw2", &mut more).unwrap();
        assert_eq!(more, b"raw2");
        // Downlink: an inner TLS 1.3 ServerHello, then application data.
        let mut sh = vec![0x16, 0x03, 0x03, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03, 0x03];
        sh.extend_from_slice(&[0u8; 32]);
        sh.push(0);
        sh.extend_from_slice(&[0x13, 0x01, 0x00, 0x00, 0x06, 0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]);
        let len = (sh.len() - 5) as u16;
        sh[3..5].copy_from_slice(&len.to_be_bytes());
        let mut out = Vec::new();
        codec.seal(&sh, &mut out).unwrap();
        codec.seal(b"\x17\x03\x03appdata", &mut out).unwrap();
        assert!(!codec.is_raw() || out.len() > sh.len());
        let mut r = &out[..];
        while !r.is_empty() {
            c.read_tls(&mut r).unwrap();
        }
        c.process_new_packets().unwrap();
        let mut stream = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = c.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            stream.extend_from_slice(&buf[..n]);
        }
        let mut un = Unpadder::new(UUID);
        let mut down = Vec::new();
        assert_eq!(un.feed(&stream, &mut down), Seen::Direct);
        let mut want = sh.clone();
        want.extend_from_slice(b"\x17\x03\x03appdata");
        assert_eq!(down, want);
        assert!(codec.is_raw() && codec.passthrough(true) && codec.passthrough(false));
        let mut raw = Vec::new();
        codec.seal(b"plain now", &mut raw).unwrap();
        assert_eq!(raw, b"plain now");
    }
}
