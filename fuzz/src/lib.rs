//! Shared drivers for the fuzz targets: feed input to a sans-IO handshake in the chunk sizes a
//! hostile client would choose, then push whatever follows through the connection's codec.
//! Any panic, overflow or hang here is a bug in the parser under test.

use v2sp_dataplane::proto::{AuthContext, DatagramStreamCodec, Next, Step, StreamHandshake};

/// Uuids of the fuzzing node's users (fixed, so crashes reproduce).
pub const UUIDS: [&str; 2] = [
    "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37",
    "0f0e0d0c-0b0a-0908-0706-050403020100",
];

/// Unix time the fuzzing context reports.
pub const NOW: u64 = 1_700_000_000;

/// Splits `data` into chunks whose sizes come from its first byte, so the fuzzer explores
/// headers cut at every position (clients that split a header across reads must work).
pub fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (step, rest) = match data.split_first() {
        Some((s, r)) => (usize::from(*s % 31) + 1, r),
        None => (1, data),
    };
    rest.chunks(step)
}

/// Feeds `data` to `hs`; once it is done, the remaining chunks go to the codec, and a reply is
/// sealed, exercising both directions.
pub fn drive(mut hs: Box<dyn StreamHandshake + '_>, data: &[u8], ctx: &dyn AuthContext) {
    let mut parts = chunks(data);
    let mut codec = None;
    for part in parts.by_ref() {
        match hs.feed(part, ctx) {
            Ok(Step::NeedMore(_)) => continue,
            Ok(Step::Done(Next::Forward { codec: c, .. })) => {
                codec = c;
                break;
            }
            Ok(Step::Done(Next::UdpOverStream { codec, initial, .. })) => {
                drive_datagrams(codec, initial, parts);
                return;
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
    }
    let mut wire = Vec::new();
    let _ = codec.seal(&out, &mut wire);
}

/// A datagram-carrying stream (UDP over Trojan/VLESS/VMess): what the handshake left over,
/// then the remaining chunks, decoded as the core does; then a reply datagram is sealed.
fn drive_datagrams<'a>(
    mut codec: Box<dyn DatagramStreamCodec>,
    initial: Vec<u8>,
    parts: impl Iterator<Item = &'a [u8]>,
) {
    let mut pending = initial;
    let mut events = Vec::new();
    let mut reply = Vec::new();
    for part in std::iter::once(&[][..]).chain(parts) {
        pending.extend_from_slice(part);
        match codec.open(&pending, &mut events, &mut reply) {
            Ok(used) => {
                pending.drain(..used.min(pending.len()));
            }
            Err(_) => return,
        }
    }
    let from = std::net::SocketAddr::from(([127, 0, 0, 1], 53));
    let mut out = Vec::new();
    let _ = codec.seal(0, from, &pending, &mut out);
    // Sub-stream replies (codecs with TCP sub-streams; the others refuse).
    let _ = codec.seal_connected(0, &mut out);
    let _ = codec.seal_stream(0, &pending, &mut out);
    let _ = codec.seal_end(0, true, &mut out);
}
