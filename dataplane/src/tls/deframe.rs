//! TLS record deframer: finds the complete records at the front of the client's bytes, so
//! rustls is only ever fed whole records (it then holds no partial-record buffer between reads;
//! the partial tail stays in the relay's carry).
//!
//! ```text
//! +--------------+-----------------+----------------+---------------------+
//! | content type | legacy version  | length (BE)    | fragment            |
//! |  1 (20..=24) |  2 (0x03 0x0X)  |  2 (<= 18432)  | length bytes        |
//! +--------------+-----------------+----------------+---------------------+
//! ```

use crate::proto::WireError;

pub const HEADER_LEN: usize = 5;
/// TLSCiphertext may carry up to 2^14 + 2048 bytes (RFC 8446 §5.2; RFC 5246 §6.2.3).
pub const MAX_FRAGMENT: usize = (1 << 14) + 2048;

/// Length of the first complete record in `buf` (header included), `None` while incomplete.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        // Reject garbage as early as the first byte shows it.
        if let Some(&t) = buf.first() {
            check_type(t)?;
        }
        return Ok(None);
    };
    check_type(h[0])?;
    if h[1] != 0x03 {
        return Err(WireError::Malformed("TLS record version is not 3.x"));
    }
    let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
    if len > MAX_FRAGMENT {
        return Err(WireError::Malformed("TLS record longer than 2^14 + 2048"));
    }
    let total = HEADER_LEN + len;
    Ok((buf.len() >= total).then_some(total))
}

fn check_type(t: u8) -> Result<(), WireError> {
    if (20..=24).contains(&t) {
        Ok(())
    } else {
        Err(WireError::Malformed("not a TLS record (content type)"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn complete_partial_and_bad_records() {
        let rec = [0x16, 0x03, 0x01, 0x00, 0x02, 0xaa, 0xbb, 0x17];
        assert_eq!(record_len(&rec).unwrap(), Some(7));
        assert_eq!(record_len(&rec[..6]).unwrap(), None);
        assert_eq!(record_len(&rec[..3]).unwrap(), None);
        assert_eq!(record_len(&[]).unwrap(), None);
        assert!(record_len(b"GET / HTTP/1.1").is_err());
        assert!(record_len(&[0x16, 0x02, 0x01, 0, 0]).is_err());
        assert!(record_len(&[0x17, 0x03, 0x03, 0xff, 0xff]).is_err());
    }
}
