//! Trojan request encoder (sans-IO), the client side of `dataplane::proto::trojan`. Trojan
//! always runs inside TLS; this writes the plaintext that goes into the TLS stream. The server
//! sends no response header: everything it returns is payload.
//!
//! ```text
//! +-----------------------+---------+-----+------+----------+----------+---------+---------
//! | hex(SHA224(password)) |  CRLF   | CMD | ATYP | DST.ADDR | DST.PORT |  CRLF   | payload
//! |   56 B, lower case    | 0D 0A   | 01  |  1   | variable |   2 BE   | 0D 0A   |
//! +-----------------------+---------+-----+------+----------+----------+---------+---------
//! ```
//!
//! The password is the user's uuid string (the panels' rule, deploy/README.md).

use anyhow::anyhow;
use sha2::{Digest, Sha224};
use v2sp_dataplane::proto::ss::address;
use v2sp_dataplane::proto::Destination;

/// CMD: TCP CONNECT.
pub const CMD_CONNECT: u8 = 1;

/// The 56 lower-case hex characters of SHA-224(password).
pub fn password_hash(password: &str) -> String {
    hex::encode(Sha224::digest(password.as_bytes()))
}

/// Append a CONNECT request to `dest` followed by the first payload `first` to `out`.
pub fn request(password: &str, dest: &Destination, first: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    out.extend_from_slice(password_hash(password).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.push(CMD_CONNECT);
    address::write(dest, out).map_err(|e| anyhow!("trojan address: {e}"))?;
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(first);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sha224_known_answer() {
        // FIPS 180-4 example "abc".
        assert_eq!(
            password_hash("abc"),
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
        );
    }

    #[test]
    fn request_layout() {
        let d = Destination::Ip("127.0.0.1:8080".parse().unwrap());
        let mut out = Vec::new();
        request("abc", &d, b"hi", &mut out).unwrap();
        let mut want = b"23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7\r\n".to_vec();
        want.extend_from_slice(&[1, 1, 127, 0, 0, 1, 0x1f, 0x90, b'\r', b'\n', b'h', b'i']);
        assert_eq!(out, want);
    }

    #[test]
    fn request_parses_with_the_data_planes_decoder() {
        // Same bytes the data plane's trojan tests feed its server state machine: just check
        // the header length arithmetic here (56 + 2 + 1 + 7 + 2).
        let d = Destination::Ip("127.0.0.1:9".parse().unwrap());
        let mut out = Vec::new();
        request("705d4ada-fc32-48de-951c-2ab9d5765ce0", &d, b"", &mut out).unwrap();
        assert_eq!(out.len(), 68);
        assert!(out[..56]
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
