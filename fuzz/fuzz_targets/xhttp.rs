//! XHTTP's request classification and packet-up reorder queue: arbitrary methods, targets,
//! Host and Referer values, and arbitrary sequences of packet numbers and sizes. The queue
//! must keep its bounds (held packets and bytes) whatever order the packets come in, and give
//! back exactly the bytes it took, in order.
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::transport::xhttp::{Push, UploadQueue, Xhttp};
use v2sp_shared::dpconfig::XhttpSettings;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let mode = ["auto", "packet-up", "stream-up", "stream-one"][usize::from(sel & 3)];
    let x = Xhttp::new(&XhttpSettings {
        path: "/p".to_string(),
        host: if sel & 4 != 0 { "h.example".to_string() } else { String::new() },
        mode: mode.to_string(),
        ..XhttpSettings::default()
    });
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(4, '\n');
    let (method, host, target, referer) = (
        parts.next().unwrap_or_default(),
        parts.next(),
        parts.next().unwrap_or_default(),
        parts.next(),
    );
    let _ = x.classify(method, host, target, referer);
    let _ = x.common_headers(|span| u32::from(sel).min(span));

    // The queue: each 3 bytes are (seq offset, size); every packet's bytes are its number.
    const POSTS: usize = 4;
    const BYTES: usize = 64;
    let mut q: UploadQueue<Vec<u8>> = UploadQueue::new(POSTS, BYTES);
    let mut out = Vec::new();
    for c in rest.chunks_exact(3) {
        let seq = q.next_seq() + u64::from(c[0] % 24);
        let size = usize::from(c[1]) % 80;
        let fits = q.fits(seq, size);
        match q.push(seq, vec![seq as u8; size]) {
            Ok(Push::Taken) => assert!(fits || seq == q.next_seq(), "took a packet that did not fit"),
            Ok(Push::Full) => assert!(!fits, "refused a packet that fit"),
            Err(_) => {}
        }
        if c[2] & 1 == 0 {
            while let Some(p) = q.pop() {
                out.push(p);
            }
        }
        assert!(q.held_bytes() <= BYTES + 80, "held {} bytes", q.held_bytes());
    }
    // Popped packets come out in sequence: every packet's bytes name its number.
    for (i, p) in out.iter().enumerate() {
        assert!(p.iter().all(|&b| b == i as u8), "packet {i} out of order");
    }
});
