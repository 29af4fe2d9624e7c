//! VMess AEAD client side: builds requests and opens responses (for tests, benches and the
//! load generator; the node never dials VMess).

use super::body::{BodyParams, ChunkReader, ChunkWriter, Security, OPT_CHUNK_MASKING, OPT_CHUNK_STREAM};
use super::crypto::{
    auth_id_cipher, create_auth_id, fnv1a32, kdf12, kdf16, sha256_16, Aead, AeadKind, HEADER_IV, HEADER_KEY,
    HEADER_LEN_IV, HEADER_LEN_KEY, RESP_HEADER_IV, RESP_HEADER_KEY, RESP_HEADER_LEN_IV, RESP_HEADER_LEN_KEY,
    TAG_LEN,
};
use super::{CMD_MUX, CMD_TCP, SEC_AES128_GCM, SEC_CHACHA20_POLY1305, SEC_NONE, VERSION};
use crate::{Destination, WireError};

/// Everything a client request is made of (random parts passed in, so tests are repeatable).
pub struct ClientRequest {
    pub cmd_key: [u8; 16],
    pub time: u64,
    pub auth_rand: [u8; 4],
    pub conn_nonce: [u8; 8],
    pub iv: [u8; 16],
    pub key: [u8; 16],
    pub v: u8,
    pub options: u8,
    pub security: u8,
    pub cmd: u8,
    pub padding: Vec<u8>,
    pub dest: Destination,
}

impl ClientRequest {
    /// A TCP request with chunk stream and masking for `security`, random keys.
    pub fn tcp(cmd_key: [u8; 16], time: u64, security: u8, dest: Destination) -> Self {
        let mut r = [0u8; 16 + 16 + 4 + 8 + 1];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut r);
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&r[..16]);
        let mut key = [0u8; 16];
        key.copy_from_slice(&r[16..32]);
        let options = if security == SEC_NONE {
            0
        } else {
            OPT_CHUNK_STREAM | OPT_CHUNK_MASKING
        };
        ClientRequest {
            cmd_key,
            time,
            auth_rand: [r[32], r[33], r[34], r[35]],
            conn_nonce: [r[36], r[37], r[38], r[39], r[40], r[41], r[42], r[43]],
            iv,
            key,
            v: r[44],
            options,
            security,
            cmd: CMD_TCP,
            padding: Vec::new(),
            dest,
        }
    }

    /// Header plaintext (with its FNV checksum).
    pub fn header_plain(&self) -> Vec<u8> {
        let mut h = vec![VERSION];
        h.extend_from_slice(&self.iv);
        h.extend_from_slice(&self.key);
        let plen = (self.padding.len().min(15)) as u8;
        h.extend_from_slice(&[
            self.v,
            self.options,
            (plen << 4) | (self.security & 0x0f),
            0,
            self.cmd,
        ]);
        // Command 3 (mux) carries no address (v2ray's header encoding).
        match &self.dest {
            _ if self.cmd == CMD_MUX => {}
            Destination::Ip(a) => {
                h.extend_from_slice(&a.port().to_be_bytes());
                match a.ip() {
                    std::net::IpAddr::V4(ip) => {
                        h.push(1);
                        h.extend_from_slice(&ip.octets());
                    }
                    std::net::IpAddr::V6(ip) => {
                        h.push(3);
                        h.extend_from_slice(&ip.octets());
                    }
                }
            }
            Destination::Domain(d, port) => {
                h.extend_from_slice(&port.to_be_bytes());
                h.push(2);
                h.push(d.len().min(255) as u8);
                h.extend_from_slice(d.as_bytes().get(..d.len().min(255)).unwrap_or_default());
            }
        }
        h.extend_from_slice(self.padding.get(..usize::from(plen)).unwrap_or_default());
        let sum = fnv1a32(&h);
        h.extend_from_slice(&sum.to_be_bytes());
        h
    }

    /// The request prefix on the wire: auth id, sealed length, nonce, sealed header.
    pub fn seal(&self) -> Result<Vec<u8>, WireError> {
        let plain = self.header_plain();
        let id = create_auth_id(&auth_id_cipher(&self.cmd_key), self.time, self.auth_rand);
        let mut out = id.to_vec();
        let path = |label: &'static [u8]| -> [&[u8]; 3] { [label, &id, &self.conn_nonce] };
        let len = u16::try_from(plain.len()).map_err(|_| WireError::Unsupported("vmess: header too long"))?;
        let at = out.len();
        out.extend_from_slice(&len.to_be_bytes());
        Aead::aes128(&kdf16(&self.cmd_key, &path(HEADER_LEN_KEY)))?.seal_append(
            kdf12(&self.cmd_key, &path(HEADER_LEN_IV)),
            &id,
            &mut out,
            at,
        )?;
        out.extend_from_slice(&self.conn_nonce);
        let at = out.len();
        out.extend_from_slice(&plain);
        Aead::aes128(&kdf16(&self.cmd_key, &path(HEADER_KEY)))?.seal_append(
            kdf12(&self.cmd_key, &path(HEADER_IV)),
            &id,
            &mut out,
            at,
        )?;
        Ok(out)
    }

    fn params(&self) -> Result<BodyParams, WireError> {
        let security = match self.security {
            SEC_AES128_GCM => Security::Aead(AeadKind::Aes128Gcm),
            SEC_CHACHA20_POLY1305 => Security::Aead(AeadKind::ChaCha20Poly1305),
            _ => Security::None,
        };
        Ok(BodyParams {
            security,
            options: self.options,
            request_key: self.key,
            request_iv: self.iv,
        })
    }

    /// The client's body codec (`None` when the body is raw).
    pub fn body(&self) -> Result<Option<ClientBody>, WireError> {
        if self.options & OPT_CHUNK_STREAM == 0 {
            return Ok(None);
        }
        let p = self.params()?;
        Ok(Some(ClientBody {
            writer: ChunkWriter::new(&p, &self.key, &self.iv)?,
            reader: ChunkReader::new(&p, &sha256_16(&self.key), &sha256_16(&self.iv))?,
        }))
    }

    /// Opens the response header at the start of `wire`: `Ok(Some(consumed))` when complete and
    /// its V byte matches.
    pub fn open_response(&self, wire: &[u8]) -> Result<Option<usize>, WireError> {
        let rkey = sha256_16(&self.key);
        let riv = sha256_16(&self.iv);
        let Some(l) = wire.get(..2 + TAG_LEN) else {
            return Ok(None);
        };
        let mut l = l.to_vec();
        Aead::aes128(&kdf16(&rkey, &[RESP_HEADER_LEN_KEY]))?.open_in_place(
            kdf12(&riv, &[RESP_HEADER_LEN_IV]),
            &[],
            &mut l,
        )?;
        let n = usize::from(u16::from_be_bytes([
            *l.first().unwrap_or(&0),
            *l.get(1).unwrap_or(&0),
        ]));
        let end = 2 + TAG_LEN + n + TAG_LEN;
        let Some(h) = wire.get(2 + TAG_LEN..end) else {
            return Ok(None);
        };
        let mut h = h.to_vec();
        let plen = Aead::aes128(&kdf16(&rkey, &[RESP_HEADER_KEY]))?.open_in_place(
            kdf12(&riv, &[RESP_HEADER_IV]),
            &[],
            &mut h,
        )?;
        if h.get(..plen).and_then(|p| p.first()) != Some(&self.v) {
            return Err(WireError::Auth("vmess: response V mismatch"));
        }
        Ok(Some(end))
    }
}

/// A client's body framing: seals uploads, opens downloads.
pub struct ClientBody {
    pub writer: ChunkWriter,
    pub reader: ChunkReader,
}

/// A VMess client stream over TCP, the destination-side codec of a VMess proxy outbound: the
/// request header (sent at connect by the caller), then body chunks up; the response header,
/// then body chunks down.
pub struct ClientStream {
    req: ClientRequest,
    /// `None`: security `none`, the body is raw.
    body: Option<ClientBody>,
    /// Downlink wire bytes not yet opened (the response header, or a partial chunk).
    carry: Vec<u8>,
    header_done: bool,
}

/// Longest response header we wait for (Xray's is 4 bytes of plaintext plus its framing; a
/// command may add a few dozen).
const MAX_RESPONSE_HEADER: usize = 4096;

impl ClientStream {
    /// A TCP request to `dest` for the user with this `cmd_key` (`crypto::cmd_key` of the
    /// uuid); returns the stream and the request header to send.
    pub fn new(
        cmd_key: [u8; 16],
        security: u8,
        dest: Destination,
        now: u64,
    ) -> Result<(Self, Vec<u8>), WireError> {
        let req = ClientRequest::tcp(cmd_key, now, security, dest);
        let head = req.seal()?;
        let body = req.body()?;
        Ok((
            ClientStream {
                req,
                body,
                carry: Vec::new(),
                header_done: false,
            },
            head,
        ))
    }
}

impl crate::UpstreamCodec for ClientStream {
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        // An empty chunk would end the stream.
        if plain.is_empty() {
            return Ok(());
        }
        match self.body.as_mut() {
            Some(b) => b.writer.seal(plain, out),
            None => {
                out.extend_from_slice(plain);
                Ok(())
            }
        }
    }

    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(wire);
        let mut start = 0;
        if !self.header_done {
            match self.req.open_response(&data)? {
                None if data.len() > MAX_RESPONSE_HEADER => {
                    return Err(WireError::Malformed("vmess: response header too long"))
                }
                None => {
                    self.carry = data;
                    return Ok(());
                }
                Some(n) => {
                    self.header_done = true;
                    start = n;
                }
            }
        }
        let rest = data.get(start..).unwrap_or_default();
        match self.body.as_mut() {
            Some(b) => {
                let used = b.reader.open(rest, out)?;
                self.carry = rest.get(used..).unwrap_or_default().to_vec();
            }
            None => out.extend_from_slice(rest),
        }
        Ok(())
    }
}
