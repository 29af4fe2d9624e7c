//! VMess AEAD: the cost of authenticating a new connection (auth id match + header open +
//! response header) over 10 / 1k / 10k users. "hinted": the user last seen from the client's
//! IP is tried first (a client opening one more connection); "cold": a new IP whose user is
//! the last one tried (worst case, one AES block per user). The per-core key cache is built
//! once outside the timing (it is rebuilt only when the user table changes; its cost is
//! `rebuild`; `rebuild_same_users` is a new table generation whose users kept their uuids).
//! `V2SP_BENCH_ITERS=N` runs each case exactly N times without criterion (for
//! `scripts/instr-count.sh`; see `bench/benches/support/instr.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../../bench/benches/support/instr.rs"]
mod instr;

use std::cell::Cell;
use std::hint::black_box;
use std::net::IpAddr;

use instr::Runner;
use v2sp_dataplane::proto::vmess::client::ClientRequest;
use v2sp_dataplane::proto::vmess::crypto::cmd_key;
use v2sp_dataplane::proto::vmess::users::UserKeys;
use v2sp_dataplane::proto::vmess::{VmessInbound, SEC_AES128_GCM};
use v2sp_dataplane::proto::{AuthContext, Destination, Next, Step, StreamHandshake};
use v2sp_shared::shm::UserRef;

const NOW: u64 = 1_760_000_000;

struct Ctx {
    users: Vec<UserRef>,
    peer: Cell<Option<IpAddr>>,
    gen: Cell<u64>,
}

fn uuid(i: usize) -> [u8; 16] {
    let mut u = [0x5au8; 16];
    u[..8].copy_from_slice(&(i as u64).to_be_bytes());
    u
}

impl Ctx {
    fn new(n: usize) -> Self {
        let users = (0..n)
            .map(|i| {
                let mut secret = [0u8; 32];
                secret[..16].copy_from_slice(&uuid(i));
                UserRef {
                    node: 1,
                    slot: i as u32,
                    user_id: i as u32,
                    gen: 1,
                    secret,
                    secret_len: 16,
                    speed_limit_mbps: 0,
                    device_limit: 0,
                }
            })
            .collect();
        Ctx {
            users,
            peer: Cell::new(None),
            gen: Cell::new(1),
        }
    }
}

impl AuthContext for Ctx {
    fn lookup(&self, _: &[u8]) -> Option<UserRef> {
        None
    }
    fn for_each_user(&self, f: &mut dyn FnMut(&UserRef) -> bool) {
        for u in &self.users {
            if !f(u) {
                break;
            }
        }
    }
    fn check_replay(&self, _: &[u8]) -> bool {
        true
    }
    fn now_unix(&self) -> u64 {
        NOW
    }
    fn users_gen(&self) -> Option<u64> {
        Some(self.gen.get())
    }
    fn peer_ip(&self) -> Option<IpAddr> {
        self.peer.get()
    }
}

fn request(n: usize) -> Vec<u8> {
    let mut r = ClientRequest::tcp(
        cmd_key(&uuid(n - 1)),
        NOW,
        SEC_AES128_GCM,
        Destination::Domain("example.com".into(), 443),
    );
    r.padding = vec![0; 5];
    r.seal().unwrap()
}

fn accept(inbound: &VmessInbound, ctx: &Ctx, wire: &[u8]) {
    match inbound.handshake().feed(wire, ctx).unwrap() {
        Step::Done(Next::Forward { user, reply, .. }) => {
            black_box((user, reply));
        }
        _ => panic!("not accepted"),
    }
}

fn bench(r: &mut Runner) {
    let g = "vmess_new_connection";
    r.tune(
        20,
        std::time::Duration::from_millis(500),
        std::time::Duration::from_secs(2),
    );
    for n in [10usize, 1_000, 10_000] {
        let ctx = Ctx::new(n);
        let inbound = VmessInbound::new();
        let wire = request(n);
        // Warm the key cache and the hint for 10.0.0.1.
        ctx.peer.set(Some("10.0.0.1".parse().unwrap()));
        accept(&inbound, &ctx, &wire);
        r.case(g, &format!("hinted/{n}"), None, || {
            ctx.peer.set(Some("10.0.0.1".parse().unwrap()));
            accept(&inbound, &ctx, &wire)
        });
        // Cold: a peer never seen, so every user is tried (the matching one last).
        r.case(g, &format!("cold/{n}"), None, || {
            ctx.peer.set(None);
            accept(&inbound, &ctx, &wire)
        });
        r.case(g, &format!("rebuild/{n}"), None, || {
            let mut k = UserKeys::default();
            k.refresh(&ctx);
            black_box(k.len());
        });
        // A new table generation with the same users: keys are reused.
        let mut k = UserKeys::default();
        k.refresh(&ctx);
        r.case(g, &format!("rebuild_same_users/{n}"), None, || {
            ctx.gen.set(ctx.gen.get() + 1);
            k.refresh(&ctx);
            black_box(k.len());
        });
    }
}

fn main() {
    instr::main(&[bench]);
}
