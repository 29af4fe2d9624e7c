//! The chain a connection runs after TLS (issue 11): each transport (ws, httpupgrade,
//! tcp+http, grpc) in front of a VLESS handshake, fed in hostile chunks, then the relay's
//! codec driven as the relay drives it: open what the client sent, answer its control frames
//! whenever the codec is over its output budget or has control, seal replies. Oracles: no
//! panic, and what a client can make us queue stays bounded: a WebSocket connection never
//! holds more than one pong and one close; any codec the relay drains is back under budget.
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::proto::fixture::StaticAuth;
use v2sp_dataplane::proto::vless::VlessHandshake;
use v2sp_dataplane::proto::{Next, Step};
use v2sp_dataplane::transport::{ws, Chain};
use v2sp_shared::cred::CredKind;
use v2sp_shared::dpconfig::{GrpcSettings, HttpPathSettings, TcpHttpSettings, Transport};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let path = HttpPathSettings {
        path: "/ws".into(),
        host: String::new(),
    };
    let t = match sel % 4 {
        0 => Transport::Ws(path),
        1 => Transport::HttpUpgrade(path),
        2 => Transport::TcpHttp(TcpHttpSettings {
            paths: vec!["/".into()],
            status_line: "HTTP/1.1 200 OK".into(),
            headers: Vec::new(),
        }),
        _ => Transport::Grpc(GrpcSettings {
            service_name: "gun".into(),
            multi_mode: false,
        }),
    };
    let is_ws = sel % 4 == 0;
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
    let mut carry = Vec::new();
    let mut out = Vec::new();
    for (i, part) in parts.enumerate() {
        carry.extend_from_slice(part);
        match codec.open(&carry, &mut out) {
            Ok(used) => {
                carry.drain(..used.min(carry.len()));
            }
            Err(_) => return,
        }
        // The relay's client-bound side: sends control when told (always when over budget;
        // every other time here, as a slow client would let it).
        if codec.output_over_budget() || (codec.has_control() && i % 2 == 0) {
            let mut ctl = Vec::new();
            if codec.take_control(&mut ctl).is_err() {
                return;
            }
            if is_ws {
                assert!(ctl.len() <= ws::MAX_CONTROL_OUT, "{} control bytes queued", ctl.len());
            }
            assert!(!codec.output_over_budget(), "still over budget after draining");
        }
        if i % 3 == 0 {
            let mut wire = Vec::new();
            if codec.seal(&out, &mut wire).is_err() {
                return;
            }
            out.clear();
        }
    }
});
