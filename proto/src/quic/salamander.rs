//! Salamander, Hysteria 2's packet obfuscation: every UDP datagram of the QUIC connection is
//! scrambled with a key drawn from a pre-shared password and a fresh per-datagram salt, so
//! that nothing on the wire looks like QUIC (no long-header bits, no version, no connection
//! ids). It hides; it does not protect: QUIC's own TLS still does that.
//!
//! ```text
//! one UDP datagram on the wire:
//! +----------+------------------------------------------+
//! | salt     | obfuscated payload (a whole QUIC packet)  |
//! | 8 bytes  | payload[i] XOR key[i % 32]                |
//! +----------+------------------------------------------+
//! key = BLAKE2b-256(password ‖ salt)   (unkeyed BLAKE2b, 32-byte output)
//! ```
//!
//! A datagram of 8 bytes or fewer carries no payload and is dropped. The salt is random per
//! datagram (the sender's choice; nothing checks it), so each datagram is 8 bytes longer than
//! the QUIC packet inside it.
//!
//! Sans-IO: the caller brings the salt and the buffers; the socket layer that applies this to
//! every datagram of an endpoint is the data plane's (`node/salamander_socket.rs`).

use std::ops::Range;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};

/// Bytes of salt in front of every datagram (and so what Salamander adds to each).
pub const SALT_LEN: usize = 8;
/// Bytes of the XOR key: BLAKE2b-256's output.
pub const KEY_LEN: usize = 32;

type Blake2b256 = Blake2b<U32>;

/// A Salamander obfuscator for one password: seals outgoing datagrams and opens incoming
/// ones. Cloning it is cheap (a hasher state, no allocation).
#[derive(Clone)]
pub struct Salamander {
    /// BLAKE2b-256 with the password already absorbed: each datagram's key only adds its salt
    /// to a copy of this.
    with_password: Blake2b256,
}

impl std::fmt::Debug for Salamander {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hasher state is derived from the password: never printed.
        f.write_str("Salamander")
    }
}

impl Salamander {
    /// The obfuscator for `password` (its bytes as given: no trimming, no encoding).
    pub fn new(password: &[u8]) -> Self {
        let mut with_password = Blake2b256::new();
        with_password.update(password);
        Salamander { with_password }
    }

    /// What tells two passwords apart without keeping either: the key for an all-zero salt
    /// (an endpoint compares it to know whether its obfuscation changed).
    pub fn fingerprint(&self) -> [u8; KEY_LEN] {
        self.key(&[0; SALT_LEN])
    }

    /// The XOR key of a datagram with this salt: BLAKE2b-256(password ‖ salt).
    pub fn key(&self, salt: &[u8; SALT_LEN]) -> [u8; KEY_LEN] {
        let mut h = self.with_password.clone();
        h.update(salt);
        h.finalize().into()
    }

    /// Appends the datagram that carries `payload` under `salt` to `out`: the salt, then the
    /// payload XORed with the key. `out` grows by `payload.len() + SALT_LEN`.
    pub fn seal_into(&self, salt: [u8; SALT_LEN], payload: &[u8], out: &mut Vec<u8>) {
        let key = self.key(&salt);
        out.extend_from_slice(&salt);
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(body) = out.get_mut(start..) {
            xor_with_key(body, &key);
        }
    }

    /// Opens the datagram at `buf[datagram]` in place and moves its payload to start at
    /// `buf[to]`: returns the payload's length, or `None` for a datagram that must be dropped
    /// (8 bytes or fewer) or a request that does not fit (`datagram` outside `buf`, `to` past
    /// `datagram.start`: the payload may only move left, over bytes already read).
    pub fn open_within(&self, buf: &mut [u8], datagram: Range<usize>, to: usize) -> Option<usize> {
        let Range { start, end } = datagram;
        if to > start || end > buf.len() || end <= start.checked_add(SALT_LEN)? {
            return None;
        }
        let salt: [u8; SALT_LEN] = buf.get(start..start + SALT_LEN)?.try_into().ok()?;
        let key = self.key(&salt);
        let n = end - start - SALT_LEN;
        // Move first, then XOR where the payload ends up: both passes are plain loops over
        // contiguous memory (memmove and a 32-byte-wide XOR) that the compiler vectorises.
        buf.copy_within(start + SALT_LEN..end, to);
        xor_with_key(buf.get_mut(to..to + n)?, &key);
        Some(n)
    }

    /// Opens a whole datagram in place: its payload is moved to the front of `datagram`;
    /// returns the payload's length, or `None` for a datagram of 8 bytes or fewer (dropped).
    pub fn open(&self, datagram: &mut [u8]) -> Option<usize> {
        let len = datagram.len();
        self.open_within(datagram, 0..len, 0)
    }
}

/// `data[i] ^= key[i % 32]`, a key-sized chunk at a time.
fn xor_with_key(data: &mut [u8], key: &[u8; KEY_LEN]) {
    for chunk in data.chunks_mut(KEY_LEN) {
        for (b, k) in chunk.iter_mut().zip(key) {
            *b ^= k;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Known answers computed independently with Python's hashlib:
    //   key = hashlib.blake2b(password + salt, digest_size=32).digest()
    //   sealed = salt + bytes(b ^ key[i % 32] for i, b in enumerate(payload))

    #[test]
    fn key_known_answer() {
        let s = Salamander::new(b"cry_me_a_r1ver");
        assert_eq!(
            hex::encode(s.key(&[1, 2, 3, 4, 5, 6, 7, 8])),
            "64a18be8d790fe1e186a52b817c15c5dda9476820d1f829b859f7b3f9bf809e9"
        );
        let s = Salamander::new(b"p");
        let salt: [u8; 8] = hex::decode("f0e1d2c3b4a59687").unwrap().try_into().unwrap();
        assert_eq!(
            hex::encode(s.key(&salt)),
            "5e3cd9c08c2a4c8e035f723dda6332141c175f5a87891e826679af4c6511062d"
        );
    }

    #[test]
    fn seal_known_answer() {
        // 40 bytes: the key wraps around after 32.
        let s = Salamander::new(b"cry_me_a_r1ver");
        let payload: Vec<u8> = (0..40).collect();
        let mut out = b"kept".to_vec();
        s.seal_into([1, 2, 3, 4, 5, 6, 7, 8], &payload, &mut out);
        assert_eq!(&out[..4], b"kept", "seal_into appends");
        assert_eq!(
            hex::encode(&out[4..]),
            "010203040506070864a089ebd395f819106358b31bcc5252ca856491190a948c9d86612487e517f64480a9cbf3b5d839"
        );
        let s = Salamander::new(b"p");
        let salt: [u8; 8] = hex::decode("f0e1d2c3b4a59687").unwrap().try_into().unwrap();
        let mut out = Vec::new();
        s.seal_into(salt, b"hello, salamander", &mut out);
        assert_eq!(
            hex::encode(&out),
            "f0e1d2c3b4a596873659b5ace3066cfd62331350bb0d56716e"
        );
    }

    #[test]
    fn open_known_answer() {
        let s = Salamander::new(b"p");
        let mut d = hex::decode("f0e1d2c3b4a596873659b5ace3066cfd62331350bb0d56716e").unwrap();
        let n = s.open(&mut d).unwrap();
        assert_eq!(&d[..n], b"hello, salamander");
        // The wrong password opens to something else (nothing authenticates: QUIC then finds
        // no packet it knows).
        let mut d = hex::decode("f0e1d2c3b4a596873659b5ace3066cfd62331350bb0d56716e").unwrap();
        let n = Salamander::new(b"q").open(&mut d).unwrap();
        assert_ne!(&d[..n], b"hello, salamander");
    }

    #[test]
    fn datagrams_without_payload_are_dropped() {
        let s = Salamander::new(b"pw");
        for len in 0..=SALT_LEN {
            let mut d = vec![7u8; len];
            assert_eq!(s.open(&mut d), None, "{len} bytes");
        }
        let mut d = vec![7u8; SALT_LEN + 1];
        assert_eq!(s.open(&mut d), Some(1));
    }

    #[test]
    fn open_within_moves_left_only_and_checks_bounds() {
        let s = Salamander::new(b"pw");
        let mut sealed = Vec::new();
        s.seal_into([9; 8], b"abcdefgh-payload", &mut sealed);
        // Behind 100 bytes of something else, moved to offset 30 (as when segments of one
        // GRO buffer are compacted).
        let mut buf = vec![0xeeu8; 100];
        buf.extend_from_slice(&sealed);
        let end = buf.len();
        assert_eq!(s.open_within(&mut buf, 100..end, 30), Some(16));
        assert_eq!(&buf[30..46], b"abcdefgh-payload");
        assert!(
            buf[..30].iter().all(|&b| b == 0xee),
            "nothing before `to` is touched"
        );
        // Right is refused, as are ranges outside the buffer.
        let mut buf = sealed.clone();
        let end = buf.len();
        assert_eq!(s.open_within(&mut buf, 0..end, 1), None);
        assert_eq!(s.open_within(&mut buf, 0..end + 1, 0), None);
        assert_eq!(s.open_within(&mut buf, usize::MAX - 2..usize::MAX, 0), None);
        assert_eq!(buf, sealed, "a refused request changes nothing");
    }

    proptest! {
        #[test]
        fn seal_then_open_round_trips(
            password in proptest::collection::vec(any::<u8>(), 0..200),
            salt in any::<[u8; 8]>(),
            payload in proptest::collection::vec(any::<u8>(), 1..1600),
        ) {
            let s = Salamander::new(&password);
            let mut d = Vec::new();
            s.seal_into(salt, &payload, &mut d);
            prop_assert_eq!(d.len(), payload.len() + SALT_LEN);
            prop_assert_eq!(&d[..SALT_LEN], &salt[..]);
            let n = s.open(&mut d).unwrap();
            prop_assert_eq!(&d[..n], &payload[..]);
        }
    }
}
