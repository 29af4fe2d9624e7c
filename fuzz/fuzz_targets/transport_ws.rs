//! The stream transports (WebSocket with early data, HTTP upgrade) in front of a VLESS
//! handshake, through the same [`Chain`] the connection loop feeds, in hostile chunks; the
//! framed codec that results then opens the rest and seals a reply.
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::proto::fixture::StaticAuth;
use v2sp_dataplane::proto::vless::VlessHandshake;
use v2sp_dataplane::proto::{Next, Step};
use v2sp_dataplane::transport::Chain;
use v2sp_shared::cred::CredKind;
use v2sp_shared::dpconfig::{HttpPathSettings, Transport};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let settings = HttpPathSettings {
        path: "/ws".into(),
        host: if sel & 2 != 0 {
            "v2sp.test".into()
        } else {
            String::new()
        },
    };
    let t = if sel & 1 == 0 {
        Transport::Ws(settings)
    } else {
        Transport::HttpUpgrade(settings)
    };
    let ctx = StaticAuth::new(CredKind::VlessUuid, &v2sp_fuzz::UUIDS, v2sp_fuzz::NOW);
    let mut chain = Chain::new(&t, Box::new(VlessHandshake::default()));
    let mut parts = v2sp_fuzz::chunks(rest);
    let mut send = Vec::new();
    let mut codec = None;
    for part in parts.by_ref() {
        match chain.feed(part, &ctx, &mut send) {
            Ok(Step::NeedMore(_)) => continue,
            Ok(Step::Done(Next::Forward { codec: c, .. })) => {
                codec = c;
                break;
            }
            Ok(Step::Done(_)) | Err(_) => return,
        }
    }
    let Some(mut codec) = codec else { return };
    let mut pending = Vec::new();
    let mut out = Vec::new();
    for part in parts {
        pending.extend_from_slice(part);
        match codec.open(&pending, &mut out) {
            Ok(used) => {
                pending.drain(..used.min(pending.len()));
            }
            Err(_) => return,
        }
        if codec.has_control() {
            let mut ctl = Vec::new();
            let _ = codec.take_control(&mut ctl);
        }
    }
    let mut wire = Vec::new();
    let _ = codec.seal(&out, &mut wire);
});
