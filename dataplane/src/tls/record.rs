//! The TLS record layer after the handshake, ours instead of rustls': rustls' own record path
//! copies every byte twice and allocates per record (plaintext into a fresh `Vec`, then the
//! sealed record into the caller's buffer), which made TLS relays cost v2sp more CPU per GB
//! than the AES-GCM itself. Once rustls has finished the handshake we take the traffic keys
//! (`dangerous_into_kernel_connection`, the interface kTLS users get) and seal/open records
//! straight between the relay's buffers with aws-lc-rs. rustls keeps the key schedule
//! ([`KernelConnection`]) for KeyUpdate.
//!
//! ```text
//! TLS 1.3 (RFC 8446 §5.2), every type:
//!   +------+-------+--------+--------------------------------------------+-----+
//!   | 0x17 | 03 03 | len(2) | AEAD( payload | inner type (1) | zeros* )  | tag |
//!   +------+-------+--------+--------------------------------------------+-----+
//!   nonce = iv ^ seq (big-endian, right-aligned); aad = the 5-byte header.
//!
//! TLS 1.2 (RFC 5246 §6.2.3.3, RFC 5288, RFC 7905):
//!   AES-GCM:  | type | 03 03 | len(2) | explicit nonce (8) | AEAD(payload) | tag |
//!             nonce = iv[..4] | explicit (we send iv[4..] ^ seq, as rustls does)
//!   ChaCha20: | type | 03 03 | len(2) | AEAD(payload) | tag |,  nonce = iv ^ seq
//!   aad = seq (8) | type | 03 03 | payload length (2)
//! ```
//!
//! After the handshake a client may only send application data, alerts, and (1.3) KeyUpdate;
//! anything else ends the connection with a [`WireError`]. A KeyUpdate changes the key, so it
//! must end its record (RFC 8446 §5.1): one per record at most. Its update_requested is
//! answered once however many arrive before our answer leaves: what waits for a client that
//! does not read is one KeyUpdate record.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};

use super::deframe;
use crate::proto::WireError;

/// Largest plaintext per record (2^14).
pub const MAX_PLAIN: usize = 1 << 14;
const TAG_LEN: usize = 16;
/// Records sealed under one key before we rotate it ourselves (RFC 8446 §5.5 limits AES-GCM
/// to 2^24.5 full records; rotating far below that costs nothing).
const KEY_UPDATE_AFTER: u64 = 1 << 23;

/// Content types.
const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// Handshake message type of KeyUpdate.
const KEY_UPDATE: u8 = 24;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    Tls12Gcm,
    Tls12Chacha,
    Tls13,
}

/// One direction's key, IV and sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new(seq: u64, s: ConnectionTrafficSecrets) -> Result<Self, WireError> {
        let (alg, key, iv) = match s {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return Err(WireError::Unsupported("TLS cipher suite")),
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| WireError::Unsupported("TLS key"))?;
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| WireError::Unsupported("TLS IV length"))?;
        Ok(Keys {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// iv ^ seq, and advances seq.
    fn next_nonce(&mut self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n.iter_mut().skip(4).zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq = self.seq.wrapping_add(1);
        n
    }
}

/// What opening found besides application data.
#[derive(Default)]
pub struct Opened {
    /// The peer sent close_notify.
    pub closed: bool,
}

/// Traffic keys of an established connection and the key schedule behind them.
pub struct RecordLayer {
    version: Version,
    tx: Keys,
    rx: Keys,
    schedule: KernelConnection<ServerConnectionData>,
    /// Handshake records (our KeyUpdate) to send before the next sealed data.
    pending: Vec<u8>,
    /// `pending` holds our answer to an update_requested (a later request shares it).
    answer_pending: bool,
    /// Records per key before we send a KeyUpdate of our own (TLS 1.3).
    rotate_after: u64,
}

impl RecordLayer {
    pub fn new(
        secrets: ExtractedSecrets,
        schedule: KernelConnection<ServerConnectionData>,
    ) -> Result<Self, WireError> {
        let tls13 = schedule.protocol_version() == ProtocolVersion::TLSv1_3;
        let version = match (&secrets.tx.1, tls13) {
            (_, true) => Version::Tls13,
            (ConnectionTrafficSecrets::Chacha20Poly1305 { .. }, false) => Version::Tls12Chacha,
            (_, false) => Version::Tls12Gcm,
        };
        Ok(RecordLayer {
            version,
            tx: Keys::new(secrets.tx.0, secrets.tx.1)?,
            rx: Keys::new(secrets.rx.0, secrets.rx.1)?,
            schedule,
            pending: Vec::new(),
            answer_pending: false,
            rotate_after: KEY_UPDATE_AFTER,
        })
    }

    #[cfg(test)]
    pub(crate) fn set_rotate_after(&mut self, n: u64) {
        self.rotate_after = n;
    }

    /// Whether records are waiting to be sent on their own (a KeyUpdate answer).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes of records waiting to be sent on their own.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Appends records queued by the record layer itself.
    pub fn take_pending(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.pending);
        self.pending = Vec::new();
        self.answer_pending = false;
    }

    /// The geometry of our application data records, while the next ones can be sealed in
    /// place (no queued KeyUpdate, no rotation due within a buffer's worth of records).
    pub fn seal_layout(&self) -> Option<crate::proto::SealLayout> {
        if self.has_pending() || self.tx.seq.saturating_add(64) >= self.rotate_after {
            return None;
        }
        let (head, tail) = match self.version {
            Version::Tls13 => (5, 1 + TAG_LEN),
            Version::Tls12Gcm => (5 + 8, TAG_LEN),
            Version::Tls12Chacha => (5, TAG_LEN),
        };
        Some(crate::proto::SealLayout {
            head,
            max: MAX_PLAIN,
            tail,
        })
    }

    /// Seals the application data a vectored read left in `buf`'s slots (see
    /// [`crate::proto::StreamCodec::seal_in_place`]): header before each payload, content
    /// type and tag after it, AEAD in place. Returns the wire length.
    pub fn seal_in_place(
        &mut self,
        buf: &mut [u8],
        n: usize,
        l: crate::proto::SealLayout,
    ) -> Result<usize, WireError> {
        let mut end = 0usize;
        let mut left = n;
        let stride = l.stride();
        let mut at = 0usize;
        while left > 0 {
            let len = left.min(l.max);
            left -= len;
            let nonce = self.tx.next_nonce();
            let seq = self.tx.seq.wrapping_sub(1);
            let inner = usize::from(self.version == Version::Tls13);
            let explicit = l.head - deframe::HEADER_LEN;
            let body = explicit + len + inner + TAG_LEN;
            let rec = buf
                .get_mut(at..at + l.head + len + inner + TAG_LEN)
                .ok_or(WireError::Unsupported("in-place sealing: buffer too short"))?;
            let (header, rest) = rec.split_at_mut(l.head);
            let wire_len = u16::try_from(body).map_err(|_| WireError::Malformed("TLS record too long"))?;
            let [h0, h1, h2, h3, h4, nonce_out @ ..] = header else {
                return Err(WireError::Unsupported("in-place sealing: header room"));
            };
            *h0 = APPLICATION_DATA;
            (*h1, *h2) = (3, 3);
            [*h3, *h4] = wire_len.to_be_bytes();
            nonce_out.copy_from_slice(nonce.get(12 - explicit..).unwrap_or_default());
            let aad13: [u8; 5] = [*h0, *h1, *h2, *h3, *h4];
            let aad12 = tls12_aad(seq, APPLICATION_DATA, len);
            let aad: &[u8] = if inner == 1 { &aad13 } else { &aad12 };
            let (data, tag_room) = rest.split_at_mut(len + inner);
            if let Some(t) = data.last_mut().filter(|_| inner == 1) {
                *t = APPLICATION_DATA;
            }
            let tag = self
                .tx
                .key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), data)
                .map_err(|_| WireError::Unsupported("TLS: cannot encrypt"))?;
            tag_room.copy_from_slice(tag.as_ref());
            end = at + l.head + len + inner + TAG_LEN;
            at += stride;
        }
        Ok(end)
    }

    /// Encrypts `plain` as application data records appended to `out` (one copy: plaintext
    /// into `out`, then AEAD in place).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        self.take_pending(out);
        let records = plain.len().div_ceil(MAX_PLAIN);
        out.reserve(plain.len() + records * (deframe::HEADER_LEN + 8 + 1 + TAG_LEN));
        for chunk in plain.chunks(MAX_PLAIN) {
            self.seal_record(APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    fn seal_record(&mut self, typ: u8, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.version == Version::Tls13 && self.tx.seq >= self.rotate_after {
            self.rotate_tx(out)?;
        }
        self.seal_one(typ, chunk, out)
    }

    /// One record under the current key.
    fn seal_one(&mut self, typ: u8, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        let nonce = self.tx.next_nonce();
        let seq = self.tx.seq.wrapping_sub(1);
        let (outer_type, explicit, inner) = match self.version {
            Version::Tls13 => (APPLICATION_DATA, 0, 1),
            Version::Tls12Gcm => (typ, 8, 0),
            Version::Tls12Chacha => (typ, 0, 0),
        };
        let body = explicit + chunk.len() + inner + TAG_LEN;
        let len = u16::try_from(body).map_err(|_| WireError::Malformed("TLS record too long"))?;
        out.push(outer_type);
        out.extend_from_slice(&[3, 3]);
        out.extend_from_slice(&len.to_be_bytes());
        if explicit > 0 {
            out.extend_from_slice(nonce.get(4..).unwrap_or_default());
        }
        let data_at = out.len();
        out.extend_from_slice(chunk);
        if inner > 0 {
            out.push(typ);
        }
        let header: [u8; 5] = out
            .get(start..start + 5)
            .and_then(|h| h.try_into().ok())
            .ok_or(WireError::Malformed("TLS record header"))?;
        let aad12 = tls12_aad(seq, typ, chunk.len());
        let aad: &[u8] = if self.version == Version::Tls13 {
            &header
        } else {
            &aad12
        };
        let region = out.get_mut(data_at..).unwrap_or_default();
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), region)
            .map_err(|_| WireError::Unsupported("TLS: cannot encrypt"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Appends a close_notify alert (after anything queued): our side of the stream is done.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.take_pending(out);
        // Level warning (1), description close_notify (0); TLS 1.3 ignores the level.
        self.seal_record(ALERT, &[1, 0], out)
    }

    /// Sends our KeyUpdate (update_not_requested) under the current key, then switches to
    /// the next one.
    fn rotate_tx(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.seal_one(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
        let (seq, s) = self
            .schedule
            .update_tx_secret()
            .map_err(|_| WireError::Unsupported("TLS key update"))?;
        self.tx = Keys::new(seq, s)?;
        Ok(())
    }

    /// Opens the complete records at the front of `wire`, appending application data to
    /// `out`; returns the bytes consumed (a partial record stays with the caller).
    pub fn open(&mut self, wire: &[u8], out: &mut Vec<u8>, seen: &mut Opened) -> Result<usize, WireError> {
        let mut at = 0usize;
        while let Some(len) = deframe::record_len(wire.get(at..).unwrap_or_default())? {
            let rec = wire.get(at..at + len).unwrap_or_default();
            at += len;
            if seen.closed {
                // Nothing after close_notify counts.
                continue;
            }
            self.open_record(rec, out, seen)?;
        }
        Ok(at)
    }

    fn open_record(&mut self, rec: &[u8], out: &mut Vec<u8>, seen: &mut Opened) -> Result<(), WireError> {
        let outer = rec.first().copied().unwrap_or(0);
        if outer == CHANGE_CIPHER_SPEC && self.version == Version::Tls13 {
            // Middlebox-compatibility CCS is only legal before the handshake ends; a stray one
            // carries nothing, so it is skipped rather than fatal.
            return Ok(());
        }
        if self.version == Version::Tls13 && outer != APPLICATION_DATA {
            return Err(WireError::Malformed(
                "TLS 1.3: unprotected record after handshake",
            ));
        }
        let header: [u8; 5] = rec
            .get(..5)
            .and_then(|h| h.try_into().ok())
            .ok_or(WireError::Malformed("TLS record header"))?;
        let mut body = rec.get(5..).unwrap_or_default();
        let explicit = if self.version == Version::Tls12Gcm { 8 } else { 0 };
        if body.len() < explicit + TAG_LEN {
            return Err(WireError::Malformed("TLS record shorter than its tag"));
        }
        let mut nonce = self.rx.next_nonce();
        let seq = self.rx.seq.wrapping_sub(1);
        if explicit > 0 {
            let (e, rest) = body.split_at(explicit);
            for (n, b) in nonce.iter_mut().skip(4).zip(e) {
                *n = *b;
            }
            body = rest;
        }
        let start = out.len();
        out.extend_from_slice(body);
        let plain_len = body.len() - TAG_LEN;
        let aad12 = tls12_aad(seq, outer, plain_len);
        let aad: &[u8] = if self.version == Version::Tls13 {
            &header
        } else {
            &aad12
        };
        let region = out.get_mut(start..).unwrap_or_default();
        let opened = self
            .rx
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), region)
            .map(|p| p.len());
        let Ok(mut n) = opened else {
            out.truncate(start);
            return Err(WireError::BadTag);
        };
        let typ = if self.version == Version::Tls13 {
            // Strip zero padding, then the inner content type.
            let inner = out.get(start..start + n).unwrap_or_default();
            let Some(pos) = inner.iter().rposition(|&b| b != 0) else {
                out.truncate(start);
                return Err(WireError::Malformed("TLS 1.3 record without content type"));
            };
            let t = inner.get(pos).copied().unwrap_or(0);
            n = pos;
            t
        } else {
            outer
        };
        out.truncate(start + n);
        match typ {
            APPLICATION_DATA => Ok(()),
            ALERT => {
                let alert = out.get(start..).unwrap_or_default().to_vec();
                out.truncate(start);
                match alert.as_slice() {
                    // close_notify; user_canceled (a warning that precedes it)
                    [_, 0] => {
                        seen.closed = true;
                        Ok(())
                    }
                    [1, 90] => Ok(()),
                    _ => Err(WireError::Malformed("TLS alert from client")),
                }
            }
            HANDSHAKE if self.version == Version::Tls13 => {
                let msg = out.get(start..).unwrap_or_default().to_vec();
                out.truncate(start);
                self.handshake_message(&msg)
            }
            HANDSHAKE => Err(WireError::Unsupported("TLS 1.2 renegotiation")),
            _ => {
                out.truncate(start);
                Err(WireError::Malformed("TLS: unexpected content type"))
            }
        }
    }

    /// Post-handshake messages from a TLS 1.3 client: only KeyUpdate is allowed.
    fn handshake_message(&mut self, mut msgs: &[u8]) -> Result<(), WireError> {
        while !msgs.is_empty() {
            let (typ, len) = match msgs {
                [t, a, b, c, ..] => (*t, usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c)),
                _ => return Err(WireError::Unsupported("TLS: fragmented post-handshake message")),
            };
            let Some(body) = msgs.get(4..4 + len) else {
                return Err(WireError::Unsupported("TLS: fragmented post-handshake message"));
            };
            msgs = msgs.get(4 + len..).unwrap_or_default();
            match (typ, body) {
                (KEY_UPDATE, [req @ (0 | 1)]) => {
                    // The rest of this record was sealed under the old key: a KeyUpdate that
                    // does not end its record is the peer's error (RFC 8446 §5.1).
                    if !msgs.is_empty() {
                        return Err(WireError::Malformed(
                            "TLS: KeyUpdate not at the end of its record",
                        ));
                    }
                    let (seq, s) = self
                        .schedule
                        .update_rx_secret()
                        .map_err(|_| WireError::Unsupported("TLS key update"))?;
                    self.rx = Keys::new(seq, s)?;
                    if *req == 1 && !self.answer_pending {
                        // update_requested: answer with our own KeyUpdate, then switch. Until
                        // that answer has left, it answers later requests too (RFC 8446 §4.6.3
                        // asks for one KeyUpdate before our next application data).
                        let mut out = std::mem::take(&mut self.pending);
                        self.rotate_tx(&mut out)?;
                        self.pending = out;
                        self.answer_pending = true;
                    }
                }
                _ => return Err(WireError::Malformed("TLS: unexpected post-handshake message")),
            }
        }
        Ok(())
    }
}

fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9] = 3;
    a[10] = 3;
    // Records hold at most 2^14 + 2048 bytes, so the length fits 16 bits.
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    a
}
