//! VMess AEAD: the request handshake (auth id, sealed header) in hostile chunks for the
//! fixture's users, the header parser, and the body chunk codec (TCP stream and UDP datagram
//! forms) under every security and option (the fuzzer's choice).
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::proto::fixture::StaticAuth;
use v2sp_dataplane::proto::vmess::body::{BodyParams, ChunkReader, ChunkWriter, Security, ServerBody};
use v2sp_dataplane::proto::vmess::crypto::AeadKind;
use v2sp_dataplane::proto::vmess::udp::VmessUdp;
use v2sp_dataplane::proto::vmess::{parse_header, VmessInbound};
use v2sp_dataplane::proto::{DatagramStreamCodec, Destination, StreamCodec};
use v2sp_shared::cred::CredKind;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => {
            let ctx = StaticAuth::new(CredKind::VmessUuid, &v2sp_fuzz::UUIDS, v2sp_fuzz::NOW)
                .without_replay_memory();
            let inbound = VmessInbound::new();
            v2sp_fuzz::drive(Box::new(inbound.handshake()), rest, &ctx);
        }
        1 => {
            let _ = parse_header(rest);
        }
        _ => {
            let security = match (sel >> 2) % 3 {
                0 => Security::Aead(AeadKind::Aes128Gcm),
                1 => Security::Aead(AeadKind::ChaCha20Poly1305),
                _ => Security::None,
            };
            // Bit 0 (chunk stream) is always set when a body is chunked.
            let options = (sel >> 4) << 1 | 1;
            let p = BodyParams {
                security,
                options,
                request_key: [1; 16],
                request_iv: [2; 16],
            };
            let mut out = Vec::new();
            if sel % 4 == 2 {
                let Ok(mut c) = ServerBody::new(&p, &[3; 16], &[4; 16]) else {
                    return;
                };
                let mut pending = Vec::new();
                for part in v2sp_fuzz::chunks(rest) {
                    pending.extend_from_slice(part);
                    match c.open(&pending, &mut out) {
                        Ok(n) => {
                            pending.drain(..n.min(pending.len()));
                        }
                        Err(_) => return,
                    }
                }
                let mut wire = Vec::new();
                let _ = c.seal(&out, &mut wire);
            } else {
                let (Ok(r), Ok(w)) = (
                    ChunkReader::new(&p, &[1; 16], &[2; 16]),
                    ChunkWriter::new(&p, &[3; 16], &[4; 16]),
                ) else {
                    return;
                };
                let dest = Destination::Ip(std::net::SocketAddr::from(([127, 0, 0, 1], 53)));
                let mut c = VmessUdp::new(dest, r, w);
                let mut pending = Vec::new();
                let mut events = Vec::new();
                let mut reply = Vec::new();
                for part in v2sp_fuzz::chunks(rest) {
                    pending.extend_from_slice(part);
                    match c.open(&pending, &mut events, &mut reply) {
                        Ok(n) => {
                            pending.drain(..n.min(pending.len()));
                        }
                        Err(_) => return,
                    }
                }
                let from = std::net::SocketAddr::from(([127, 0, 0, 1], 53));
                let _ = c.seal(0, from, rest, &mut out);
            }
        }
    }
});
