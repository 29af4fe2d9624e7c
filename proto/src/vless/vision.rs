//! XTLS Vision (`xtls-rprx-vision`) framing, sans-IO: the padding blocks of the first packets
//! and the inner-TLS filter that decides when both sides drop the outer TLS. The relay codec
//! that applies it is `tls::vision::VisionCodec`.
//!
//! ```text
//! padded block (first block in each direction is prefixed by the user's 16-byte UUID):
//! +--------+---------+-------------+-------------+---------+---------+
//! | [uuid] | command | content len | padding len | content | padding |
//! |  [16]  |    1    |   2 (BE)    |   2 (BE)    |    n    |    p    |
//! +--------+---------+-------------+-------------+---------+---------+
//! command: 0 = more padded blocks follow, 1 = padding ends (plain inside the outer TLS),
//!          2 = padding ends and the sender switches to direct (raw socket, no outer TLS)
//! A stream whose first bytes are not the UUID (and at least 21 bytes) is not padded.
//!
//! inner-TLS filter (first 8 packets): ServerHello = 16 03 03 .. .. 02, TLS 1.3 when the
//! hello carries supported_versions 00 2b 00 02 03 04; the switch to direct happens at the
//! first application-data record 17 03 03 once TLS 1.3 was seen.
//! ```

/// The flow name VLESS requests carry.
pub const FLOW: &str = "xtls-rprx-vision";
pub const CMD_CONTINUE: u8 = 0;
pub const CMD_END: u8 = 1;
pub const CMD_DIRECT: u8 = 2;
/// Packets inspected by the inner-TLS filter before giving up.
pub const FILTER_PACKETS: u32 = 8;

/// Appends one padded block to `out` (`uuid` only on a direction's first block).
pub fn pad(uuid: Option<&[u8; 16]>, command: u8, content: &[u8], padding: &[u8], out: &mut Vec<u8>) {
    if let Some(u) = uuid {
        out.extend_from_slice(u);
    }
    let c = u16::try_from(content.len()).unwrap_or(u16::MAX);
    let p = u16::try_from(padding.len()).unwrap_or(u16::MAX);
    out.push(command);
    out.extend_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&p.to_be_bytes());
    out.extend_from_slice(content.get(..usize::from(c)).unwrap_or(content));
    out.extend_from_slice(padding.get(..usize::from(p)).unwrap_or(padding));
}

/// What the unpadder saw in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Still inside padded blocks (or nothing decided yet).
    Padding,
    /// Padding ended (command 1, or the stream was never padded): bytes pass unchanged now.
    Plain,
    /// Command 2: what follows the block comes from the raw socket, without the outer TLS.
    Direct,
}

/// Removes Vision padding from one direction's stream.
#[derive(Debug)]
pub struct Unpadder {
    uuid: [u8; 16],
    started: bool,
    done: Option<Seen>,
    /// Header bytes still to read (5 = expect a header), content and padding left.
    header: Vec<u8>,
    content: usize,
    padding: usize,
    command: u8,
    in_block: bool,
    /// Bytes held while fewer than 21 arrived at the start (UUID + header undecided).
    head: Vec<u8>,
}

impl Unpadder {
    pub fn new(uuid: [u8; 16]) -> Self {
        Unpadder {
            uuid,
            started: false,
            done: None,
            header: Vec::new(),
            content: 0,
            padding: 0,
            command: 0,
            in_block: false,
            head: Vec::new(),
        }
    }

    /// Feeds stream bytes, appending the payload to `out`. After `Plain`/`Direct` everything
    /// fed is payload.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Seen {
        if let Some(d) = self.done {
            out.extend_from_slice(data);
            return d;
        }
        let owned;
        let mut data = data;
        if !self.started {
            self.head.extend_from_slice(data);
            if self.head.len() < 21 && self.uuid.starts_with(&self.head) {
                return Seen::Padding;
            }
            owned = std::mem::take(&mut self.head);
            self.started = true;
            if owned.get(..16) != Some(&self.uuid[..]) {
                self.done = Some(Seen::Plain);
                out.extend_from_slice(&owned);
                return Seen::Plain;
            }
            data = owned.get(16..).unwrap_or_default();
        }
        let mut rest = data;
        while !rest.is_empty() {
            if !self.in_block {
                let need = 5 - self.header.len();
                let take = need.min(rest.len());
                self.header
                    .extend_from_slice(rest.get(..take).unwrap_or_default());
                rest = rest.get(take..).unwrap_or_default();
                if let [cmd, c0, c1, p0, p1] = self.header[..] {
                    self.command = cmd;
                    self.content = usize::from(u16::from_be_bytes([c0, c1]));
                    self.padding = usize::from(u16::from_be_bytes([p0, p1]));
                    self.header.clear();
                    self.in_block = true;
                } else {
                    continue;
                }
            }
            let c = self.content.min(rest.len());
            out.extend_from_slice(rest.get(..c).unwrap_or_default());
            rest = rest.get(c..).unwrap_or_default();
            self.content -= c;
            let p = self.padding.min(rest.len());
            rest = rest.get(p..).unwrap_or_default();
            self.padding -= p;
            if self.content == 0 && self.padding == 0 && self.in_block {
                self.in_block = false;
                match self.command {
                    CMD_CONTINUE => {}
                    cmd => {
                        let seen = if cmd == CMD_DIRECT {
                            Seen::Direct
                        } else {
                            Seen::Plain
                        };
                        self.done = Some(seen);
                        out.extend_from_slice(rest);
                        return seen;
                    }
                }
            }
        }
        Seen::Padding
    }
}

/// Watches one direction's first packets for the inner TLS handshake.
#[derive(Debug, Default)]
pub struct TlsFilter {
    pub packets: u32,
    pub is_tls: bool,
    /// The inner server chose TLS 1.3 (with a cipher other than TLS_AES_128_CCM_8_SHA256).
    pub tls13: bool,
}

impl TlsFilter {
    /// Looks at one packet (the start of a read).
    pub fn inspect(&mut self, b: &[u8]) {
        if self.packets >= FILTER_PACKETS || self.tls13 {
            return;
        }
        self.packets += 1;
        if b.len() < 6 {
            return;
        }
        if b.starts_with(&[0x16, 0x03]) && b.get(5) == Some(&0x01) {
            self.is_tls = true;
        }
        if b.starts_with(&[0x16, 0x03, 0x03]) && b.get(5) == Some(&0x02) {
            self.is_tls = true;
            let rec = usize::from(u16::from_be_bytes([b[3], b[4]])) + 5;
            let hello = b.get(..rec.min(b.len())).unwrap_or_default();
            let sid = usize::from(b.get(43).copied().unwrap_or(0));
            let suite = b.get(44 + sid..46 + sid);
            let v13 = hello
                .windows(6)
                .any(|w| w == [0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]);
            self.tls13 = v13 && suite.is_some() && suite != Some(&[0x13, 0x05]);
        }
    }

    /// Whether the filter stopped looking (decided, or out of packets).
    pub fn finished(&self) -> bool {
        self.tls13 || self.packets >= FILTER_PACKETS
    }
}

/// The inner application data record that triggers the switch to direct.
pub fn is_application_data(b: &[u8]) -> bool {
    b.starts_with(&[0x17, 0x03, 0x03])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const UUID: [u8; 16] = [
        0x70, 0x5d, 0x4a, 0xda, 0xfc, 0x32, 0x48, 0xde, 0x95, 0x1c, 0x2a, 0xb9, 0xd5, 0x76, 0x5c, 0xe0,
    ];

    /// Vector written out by hand from the block layout (not by `pad`): uuid, command 0,
    /// content "hello" (5), padding 3 zeros; then command 2, content "xy", padding 1; then raw.
    fn vector() -> Vec<u8> {
        let mut v = UUID.to_vec();
        v.extend_from_slice(&[0, 0, 5, 0, 3]);
        v.extend_from_slice(b"hello");
        v.extend_from_slice(&[0, 0, 0]);
        v.extend_from_slice(&[2, 0, 2, 0, 1]);
        v.extend_from_slice(b"xy");
        v.push(0xee);
        v.extend_from_slice(b"RAW");
        v
    }

    #[test]
    fn pad_matches_the_layout() {
        let mut out = Vec::new();
        pad(Some(&UUID), CMD_CONTINUE, b"hello", &[0, 0, 0], &mut out);
        pad(None, CMD_DIRECT, b"xy", &[0xee], &mut out);
        out.extend_from_slice(b"RAW");
        assert_eq!(out, vector());
    }

    #[test]
    fn unpad_whole_and_byte_by_byte() {
        let v = vector();
        let mut u = Unpadder::new(UUID);
        let mut out = Vec::new();
        assert_eq!(u.feed(&v, &mut out), Seen::Direct);
        assert_eq!(out, b"helloxyRAW");
        let mut u = Unpadder::new(UUID);
        let mut out = Vec::new();
        let mut last = Seen::Padding;
        for b in &v {
            last = u.feed(std::slice::from_ref(b), &mut out);
        }
        assert_eq!(last, Seen::Direct);
        assert_eq!(out, b"helloxyRAW");
    }

    #[test]
    fn unpadded_stream_passes_unchanged() {
        let mut u = Unpadder::new(UUID);
        let mut out = Vec::new();
        let data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(u.feed(data, &mut out), Seen::Plain);
        assert_eq!(out, data);
    }

    #[test]
    fn filter_sees_tls13_server_hello() {
        // ServerHello record: header, type 2, len, version, random(32), sid len 0,
        // suite 13 01, compression 0, extensions with supported_versions 0304.
        let mut h = vec![0x16, 0x03, 0x03, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03, 0x03];
        h.extend_from_slice(&[0u8; 32]);
        h.push(0);
        h.extend_from_slice(&[0x13, 0x01, 0x00, 0x00, 0x06, 0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]);
        let len = (h.len() - 5) as u16;
        h[3..5].copy_from_slice(&len.to_be_bytes());
        let mut f = TlsFilter::default();
        f.inspect(&h);
        assert!(f.is_tls && f.tls13 && f.finished());
        assert!(is_application_data(&[0x17, 0x03, 0x03, 0, 1, 0]));
        let mut f = TlsFilter::default();
        for _ in 0..10 {
            f.inspect(b"plain bytes, not TLS");
        }
        assert!(!f.is_tls && !f.tls13 && f.finished());
    }
}
