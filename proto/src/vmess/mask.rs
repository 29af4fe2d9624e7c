//! The SHAKE128 stream behind VMess chunk masking and global padding (one per direction,
//! seeded with that direction's body iv): 2 bytes per chunk for the size mask and 2 for the
//! padding length, for the whole life of the connection.
//!
//! A general XOF reader (sha3's) keeps a 168-byte copy of the current output block beside the
//! 200-byte Keccak state. In SHAKE the squeezed block *is* the first 168 bytes of the state,
//! so this reader keeps the state and a position only: 208 bytes instead of 384, twice in
//! every idle VMess connection.

/// SHAKE128's rate: bytes absorbed or squeezed per permutation.
const RATE: usize = 168;

pub(super) struct ShakeStream {
    state: [u64; 25],
    /// Next output byte within the current block (`RATE` = block used up).
    pos: u8,
}

impl ShakeStream {
    /// SHAKE128(`seed`), ready to squeeze.
    pub(super) fn new(seed: &[u8; 16]) -> Self {
        // One block absorbs the 16-byte seed and SHAKE's padding: the domain bits 1111 and
        // pad10*1 (0x1F after the message, 0x80 on the block's last byte).
        let mut block = [0u8; RATE];
        block[..seed.len()].copy_from_slice(seed);
        block[seed.len()] ^= 0x1F;
        block[RATE - 1] ^= 0x80;
        let mut state = [0u64; 25];
        for (lane, bytes) in state.iter_mut().zip(block.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            *lane ^= u64::from_le_bytes(b);
        }
        keccak::f1600(&mut state);
        ShakeStream { state, pos: 0 }
    }

    fn next_byte(&mut self) -> u8 {
        if usize::from(self.pos) == RATE {
            keccak::f1600(&mut self.state);
            self.pos = 0;
        }
        let i = usize::from(self.pos);
        self.pos += 1;
        // Lanes are little-endian; RATE is a multiple of 8, so i / 8 < 21.
        (self.state[i / 8] >> (8 * (i % 8))) as u8
    }

    /// The next two bytes, big-endian (how VMess reads masks and padding lengths).
    pub(super) fn next_u16(&mut self) -> u16 {
        let hi = self.next_byte();
        u16::from_be_bytes([hi, self.next_byte()])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sha3::digest::{ExtendableOutput, Update, XofReader};

    /// The same bytes as the sha3 crate's SHAKE128 reader, across several blocks.
    #[test]
    fn matches_shake128() {
        for seed in [[0u8; 16], [0xa5; 16], *b"0123456789abcdef"] {
            let mut ours = ShakeStream::new(&seed);
            let mut h = sha3::Shake128::default();
            h.update(&seed);
            let mut r = h.finalize_xof();
            for _ in 0..1000 {
                let mut b = [0u8; 2];
                r.read(&mut b);
                assert_eq!(ours.next_u16(), u16::from_be_bytes(b));
            }
        }
    }

    /// Two of these live in every idle VMess connection with masking or padding.
    #[test]
    fn is_small() {
        assert!(size_of::<ShakeStream>() <= 208);
    }
}
