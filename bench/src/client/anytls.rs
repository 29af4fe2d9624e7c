//! AnyTLS client (sans-IO), the client side of `dataplane::proto::anytls`, as sing-box's
//! `anytls` outbound uses it: one session (one TLS connection) per busy connection, one stream
//! in it. This is the plaintext inside TLS.
//!
//! ```text
//! client → server, in the first TLS write:
//!   SHA256(password) (32) | padding length u16 BE = 0 | (no padding)
//!   settings frame  cmd 4, sid 0: "v=2\nclient=v2sp-bench/<version>\npadding-md5=<md5 of the default scheme>"
//!   syn frame       cmd 1, sid 1
//!   psh frame       cmd 2, sid 1: SOCKS address (ATYP 1/3/4, address, port BE)
//!   psh frame       cmd 2, sid 1: the first payload (if any)
//! then psh frames (≤ 65 535 B each) for the upload.
//!
//! frame: | cmd 1 | stream id u32 BE | data length u16 BE | data |
//! ```
//!
//! Padding: the reference client (anytls-go, sing-anytls) pads the authentication to the
//! scheme's first packet size minus what it already holds; the default scheme's `0=30-30` is
//! smaller than the 34-byte head, so it sends a padding length of 0 — as we do. It also pads
//! its next few writes (packets 1–7 of the scheme) with waste frames; we do not, which only
//! changes the first few KiB of each connection. We report the default scheme's MD5, so none
//! of the servers (all on the default scheme) sends `updatePaddingScheme`; it is accepted and
//! ignored anyway.
//!
//! Server frames handled: synack (an error text fails the connection), serverSettings,
//! updatePaddingScheme, waste (discarded), heartRequest (answered with heartResponse, queued
//! for the caller to send), alert (fails the connection), psh on our stream (the payload), fin
//! on our stream (end of the stream).

use anyhow::{anyhow, bail};
use sha2::{Digest, Sha256};
use v2sp_dataplane::proto::anytls::PaddingScheme;
use v2sp_dataplane::proto::ss::address;
use v2sp_dataplane::proto::Destination;

pub const ANYTLS: &str = "anytls";

pub const CMD_WASTE: u8 = 0;
pub const CMD_SYN: u8 = 1;
pub const CMD_PSH: u8 = 2;
pub const CMD_FIN: u8 = 3;
pub const CMD_SETTINGS: u8 = 4;
pub const CMD_ALERT: u8 = 5;
pub const CMD_UPDATE_PADDING: u8 = 6;
pub const CMD_SYNACK: u8 = 7;
pub const CMD_HEART_REQUEST: u8 = 8;
pub const CMD_HEART_RESPONSE: u8 = 9;
pub const CMD_SERVER_SETTINGS: u8 = 10;

/// The one stream of the session (the reference client numbers streams from 1).
pub const STREAM_ID: u32 = 1;
const HEADER: usize = 7;
const MAX_DATA: usize = u16::MAX as usize;

/// Append one frame.
pub fn frame(cmd: u8, sid: u32, data: &[u8], out: &mut Vec<u8>) {
    debug_assert!(data.len() <= MAX_DATA);
    out.push(cmd);
    out.extend_from_slice(&sid.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// Append `data` as psh frames on our stream, ≤ 65 535 bytes each.
pub fn psh(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(MAX_DATA) {
        frame(CMD_PSH, STREAM_ID, chunk, out);
    }
}

/// What the frame being read is doing with its data.
enum State {
    /// Collecting a frame header (bytes so far in `head`).
    Header,
    /// `left` bytes of psh data on our stream: straight to the caller.
    Payload { left: usize },
    /// `left` bytes of a frame whose data is kept (synack, alert) or dropped.
    Data { cmd: u8, left: usize, keep: bool },
}

/// One AnyTLS session with one stream: the decoder for what the server sends.
pub struct AnytlsStream {
    state: State,
    head: Vec<u8>,
    data: Vec<u8>,
    /// Bytes to send back (heartResponse), for the caller to take and send.
    reply: Vec<u8>,
    fin: bool,
    synack: bool,
}

impl AnytlsStream {
    /// Append the session opening (auth, settings, syn, psh destination, psh `first`) for
    /// `password` to `out`.
    pub fn open_request(
        password: &str,
        dest: &Destination,
        first: &[u8],
        out: &mut Vec<u8>,
    ) -> anyhow::Result<AnytlsStream> {
        out.extend_from_slice(&Sha256::digest(password.as_bytes()));
        out.extend_from_slice(&0u16.to_be_bytes());
        let settings = format!(
            "v=2\nclient=v2sp-bench/{}\npadding-md5={}",
            env!("CARGO_PKG_VERSION"),
            PaddingScheme::default().md5_hex
        );
        frame(CMD_SETTINGS, 0, settings.as_bytes(), out);
        frame(CMD_SYN, STREAM_ID, &[], out);
        let mut addr = Vec::with_capacity(19);
        address::write(dest, &mut addr).map_err(|e| anyhow!("anytls address: {e}"))?;
        frame(CMD_PSH, STREAM_ID, &addr, out);
        psh(first, out);
        Ok(AnytlsStream {
            state: State::Header,
            head: Vec::with_capacity(HEADER),
            data: Vec::new(),
            reply: Vec::new(),
            fin: false,
            synack: false,
        })
    }

    /// Frame `plain` for the upload.
    pub fn seal(&self, plain: &[u8], out: &mut Vec<u8>) {
        psh(plain, out);
    }

    /// The server closed our stream (fin) or the session (after its data).
    pub fn finished(&self) -> bool {
        self.fin
    }

    /// Whether the server's synack arrived (protocol v2).
    pub fn synack_seen(&self) -> bool {
        self.synack
    }

    /// Frames to send back (heartResponse), taken.
    pub fn take_reply(&mut self) -> Option<Vec<u8>> {
        (!self.reply.is_empty()).then(|| std::mem::take(&mut self.reply))
    }

    /// Decode what the server sent (any split); our stream's payload goes to `plain`.
    pub fn open(&mut self, mut wire: &[u8], plain: &mut Vec<u8>) -> anyhow::Result<()> {
        while !wire.is_empty() {
            match &mut self.state {
                State::Header => {
                    let take = (HEADER - self.head.len()).min(wire.len());
                    let (h, rest) = wire.split_at(take);
                    self.head.extend_from_slice(h);
                    wire = rest;
                    if self.head.len() == HEADER {
                        self.header()?;
                    }
                }
                State::Payload { left } => {
                    let take = (*left).min(wire.len());
                    let (d, rest) = wire.split_at(take);
                    if !self.fin {
                        plain.extend_from_slice(d);
                    }
                    wire = rest;
                    *left -= take;
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::Data { cmd, left, keep } => {
                    let take = (*left).min(wire.len());
                    let (d, rest) = wire.split_at(take);
                    if *keep {
                        self.data.extend_from_slice(d);
                    }
                    wire = rest;
                    *left -= take;
                    if *left == 0 {
                        let cmd = *cmd;
                        self.state = State::Header;
                        self.frame_done(cmd)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn header(&mut self) -> anyhow::Result<()> {
        let h = std::mem::take(&mut self.head);
        let (cmd, sid, len) = match h.as_slice() {
            [c, a, b, d, e, l0, l1] => (
                *c,
                u32::from_be_bytes([*a, *b, *d, *e]),
                usize::from(u16::from_be_bytes([*l0, *l1])),
            ),
            _ => bail!("anytls: short frame header"),
        };
        self.head = h;
        self.head.clear();
        self.data.clear();
        // Frames without data (syn, fin, heartbeats): the length is ignored, as the reference does.
        self.state = match cmd {
            CMD_PSH if sid == STREAM_ID && len > 0 => State::Payload { left: len },
            CMD_PSH | CMD_WASTE | CMD_SETTINGS | CMD_UPDATE_PADDING | CMD_SERVER_SETTINGS if len > 0 => {
                State::Data {
                    cmd,
                    left: len,
                    keep: false,
                }
            }
            CMD_SYNACK | CMD_ALERT if len > 0 => State::Data {
                cmd,
                left: len,
                keep: true,
            },
            CMD_FIN if sid == STREAM_ID => {
                self.fin = true;
                State::Header
            }
            CMD_HEART_REQUEST => {
                frame(CMD_HEART_RESPONSE, sid, &[], &mut self.reply);
                State::Header
            }
            CMD_SYNACK => {
                self.synack = sid == STREAM_ID || self.synack;
                State::Header
            }
            CMD_PSH | CMD_WASTE | CMD_SETTINGS | CMD_UPDATE_PADDING | CMD_SERVER_SETTINGS | CMD_FIN
            | CMD_HEART_RESPONSE | CMD_SYN => State::Header,
            CMD_ALERT => bail!("anytls: server alert"),
            c => bail!("anytls: unknown command {c} from the server"),
        };
        Ok(())
    }

    fn frame_done(&mut self, cmd: u8) -> anyhow::Result<()> {
        match cmd {
            CMD_SYNACK => Err(anyhow!(
                "anytls: stream refused: {}",
                String::from_utf8_lossy(&self.data)
            )),
            CMD_ALERT => Err(anyhow!(
                "anytls: server alert: {}",
                String::from_utf8_lossy(&self.data)
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn open(dest: &str, first: &[u8]) -> (AnytlsStream, Vec<u8>) {
        let d = Destination::Ip(dest.parse().unwrap());
        let mut out = Vec::new();
        let s = AnytlsStream::open_request("abc", &d, first, &mut out).unwrap();
        (s, out)
    }

    #[test]
    fn opening_layout() {
        let (_, out) = open("127.0.0.1:8080", b"hi");
        // SHA-256("abc"), FIPS 180-4.
        assert_eq!(
            hex::encode(&out[..32]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(&out[32..34], &[0, 0]);
        let rest = &out[34..];
        assert_eq!(rest[0], CMD_SETTINGS);
        let len = usize::from(u16::from_be_bytes([rest[5], rest[6]]));
        let settings = std::str::from_utf8(&rest[7..7 + len]).unwrap();
        assert!(settings.starts_with("v=2\nclient=v2sp-bench/"), "{settings}");
        assert!(settings.ends_with(&format!("\npadding-md5={}", PaddingScheme::default().md5_hex)));
        let rest = &rest[7 + len..];
        let mut want = vec![CMD_SYN, 0, 0, 0, 1, 0, 0];
        want.extend_from_slice(&[CMD_PSH, 0, 0, 0, 1, 0, 7, 1, 127, 0, 0, 1, 0x1f, 0x90]);
        want.extend_from_slice(&[CMD_PSH, 0, 0, 0, 1, 0, 2, b'h', b'i']);
        assert_eq!(rest, &want[..]);
    }

    #[test]
    fn big_writes_are_split() {
        let s = open("127.0.0.1:1", b"").0;
        let mut out = Vec::new();
        s.seal(&vec![7u8; 70_000], &mut out);
        assert_eq!(out.len(), 70_000 + 2 * HEADER);
        assert_eq!(&out[..7], &[CMD_PSH, 0, 0, 0, 1, 0xff, 0xff]);
        assert_eq!(
            &out[7 + 65_535..7 + 65_535 + 7],
            &[CMD_PSH, 0, 0, 0, 1, 0x11, 0x71]
        );
    }

    #[test]
    fn server_frames_any_split() {
        let mut wire = Vec::new();
        frame(CMD_UPDATE_PADDING, 0, b"stop=1\n0=1-1", &mut wire);
        frame(CMD_SERVER_SETTINGS, 0, b"v=2", &mut wire);
        frame(CMD_SYNACK, STREAM_ID, b"", &mut wire);
        frame(CMD_WASTE, 0, &[0; 40], &mut wire);
        frame(CMD_PSH, STREAM_ID, b"hello ", &mut wire);
        frame(CMD_HEART_REQUEST, 0, b"", &mut wire);
        frame(CMD_PSH, 9, b"not ours", &mut wire);
        frame(CMD_PSH, STREAM_ID, b"world", &mut wire);
        frame(CMD_FIN, STREAM_ID, b"", &mut wire);
        for step in [1usize, 3, 7, 1000] {
            let mut s = open("127.0.0.1:1", b"").0;
            let mut plain = Vec::new();
            for piece in wire.chunks(step) {
                s.open(piece, &mut plain).unwrap();
            }
            assert_eq!(plain, b"hello world");
            assert!(s.finished() && s.synack_seen());
            assert_eq!(
                s.take_reply().unwrap(),
                vec![CMD_HEART_RESPONSE, 0, 0, 0, 0, 0, 0]
            );
            assert!(s.take_reply().is_none());
        }
    }

    #[test]
    fn refused_stream_and_alert_fail() {
        let mut wire = Vec::new();
        frame(CMD_SYNACK, STREAM_ID, b"connection refused", &mut wire);
        let mut s = open("127.0.0.1:1", b"").0;
        let e = s.open(&wire, &mut Vec::new()).unwrap_err();
        assert!(format!("{e}").contains("connection refused"));
        let mut wire = Vec::new();
        frame(CMD_ALERT, 0, b"bad", &mut wire);
        let mut s = open("127.0.0.1:1", b"").0;
        assert!(s.open(&wire, &mut Vec::new()).is_err());
    }
}
