//! TUIC v5: the real sing-box client (its `tuic` outbound; uuid and password = the user's
//! uuid, as Xboard's subscriptions hand them out) against v2sp's TUIC node over QUIC,
//! configured through the panel simulator in Xboard's shape (`CertMode: self`).
//!
//! * For each congestion control the panel may set (cubic, new_reno, bbr): TCP echo
//!   transfers of several MiB, sha256-checked both ways, sequential and concurrent (streams
//!   of one QUIC connection), and UDP in both relay modes (`native`: QUIC datagrams, large
//!   packets fragmented both ways; `quic`: one stream per packet); the panel receives exactly
//!   the payload bytes per user, both directions.
//! * A wrong password or an unknown uuid gets nothing through and is never accounted.
//! * A user removed on the panel is cut off within a second or so: the QUIC connection is
//!   closed and its streams' destination connections see EOF.
//! * The user's speed limit holds across the streams of one connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    echo_transfers, expect, free_port, payload, refused_then_works, self_signed_certs, sing_box_outbound,
    tcp_echo_through, udp_echo_through, upload_until, Echo, NodeSpec, Proc, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::{user, users};

const UUIDS: [&str; 3] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];
const STRANGER: &str = "11111111-2222-4333-8444-555555555555";
const DOMAIN: &str = "v2sp.test";

/// Xboard's shape of a TUIC node (`app/Services/ServerService.php`: version 5 and the
/// constants `auth_timeout`, `zero_rtt_handshake`, `heartbeat`).
fn tuic_node(node_id: u32, cc: &str) -> NodeSpec {
    let port = free_port();
    let info = json!({"node_type": "tuic", "protocol": "tuic", "version": 5,
                      "server_port": port, "server_name": DOMAIN, "congestion_control": cc,
                      "auth_timeout": "3s", "zero_rtt_handshake": false, "heartbeat": "3s",
                      "base_config": {"push_interval": 1, "pull_interval": 1}});
    NodeSpec {
        node_id,
        port,
        info,
        users: users(&UUIDS),
    }
}

fn outbound(port: u16, uuid: &str, password: &str, cc: &str, udp_mode: &str) -> Value {
    json!({"type": "tuic", "server": "127.0.0.1", "server_port": port, "uuid": uuid,
           "password": password, "congestion_control": cc, "udp_relay_mode": udp_mode,
           "heartbeat": "3s",
           "tls": {"enabled": true, "server_name": DOMAIN, "insecure": true, "alpn": ["h3"]}})
}

fn sing_box(out: Value, dir: &std::path::Path) -> (Proc, u16) {
    sing_box_outbound(out, dir).unwrap_or_else(|e| panic!("sing-box: {e:#}"))
}

fn start(nodes: Vec<NodeSpec>, certs: &std::path::Path) -> V2sp {
    V2sp::start(nodes, self_signed_certs(certs, DOMAIN)).unwrap()
}

/// Every congestion control and both UDP relay modes, two users, exact totals; strangers get
/// nothing.
#[test]
fn sing_box_tuic_tcp_and_udp_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ccs = ["cubic", "new_reno", "bbr"];
    let nodes = ccs
        .iter()
        .enumerate()
        .map(|(i, cc)| tuic_node(i as u32 + 1, cc))
        .collect();
    let v = start(nodes, certs.path());
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for (i, cc) in ccs.iter().enumerate() {
        let n = &v.nodes[i];
        for uidx in [0usize, 1] {
            // User 1 relays UDP natively (datagrams), user 2 over streams.
            let mode = if uidx == 0 { "native" } else { "quic" };
            let what = format!("sing-box tuic {cc} user {} udp {mode}", uidx + 1);
            let (proc_, socks) = sing_box(outbound(n.port, UUIDS[uidx], UUIDS[uidx], cc, mode), v.dir.path());
            let log = || proc_.log();
            let seq: Vec<usize> = (0..2).map(|k| (2 << 20) + k * 4099 + uidx).collect();
            let conc: Vec<usize> = (0..3).map(|k| (1 << 20) + k * 77_777).collect();
            let seed = uidx as u64 * 100;
            let mut moved = echo_transfers(socks, echo.port, (&seq, &conc), seed, &what, &log, &mut failures);
            moved += refused_then_works(socks, echo.port, &what, &log, &mut failures);
            // 3000-byte packets are fragmented both ways in native mode.
            let (count, size) = if uidx == 0 { (10, 3000) } else { (20, 1200) };
            match udp_echo_through(socks, echo.port, count, size) {
                Ok(b) => moved += b,
                Err(e) => failures.push(format!("{what}: {e:#}\n{}", proc_.log())),
            }
            expect(&mut expected, n.node_id, uidx as u32 + 1, moved, moved);
            drop(proc_);
        }
    }
    // Not a user, and a user with a wrong password: nothing comes back, nothing is accounted.
    let n = &v.nodes[0];
    for (uuid, password) in [(STRANGER, STRANGER), (UUIDS[2], UUIDS[0])] {
        let (proc_, socks) = sing_box(outbound(n.port, uuid, password, "cubic", "native"), v.dir.path());
        if tcp_echo_through(socks, echo.port, &payload(4096, 99)).is_ok() {
            failures.push(format!(
                "tuic: data went through for uuid {uuid} password {password}"
            ));
        }
        drop(proc_);
    }
    v.finish(&failures, &expected);
}

#[test]
fn removed_user_is_cut_off() {
    let certs = tempfile::tempdir().unwrap();
    let v = start(vec![tuic_node(1, "bbr")], certs.path());
    let n = &v.nodes[0];
    let (proc_, socks) = sing_box(
        outbound(n.port, UUIDS[2], UUIDS[2], "bbr", "native"),
        v.dir.path(),
    );
    let remaining = vec![user(1, UUIDS[0]), user(2, UUIDS[1])];
    let expected = v
        .assert_removal_cuts_off(socks, &|| proc_.log(), (n.node_id, 3), remaining)
        .unwrap();
    drop(proc_);
    v.finish(&[], &expected);
}

/// The user's speed limit holds across the streams of one QUIC connection (BBR, which
/// probes beyond any rate), and the upload totals are exact.
#[test]
fn speed_limit_across_streams() {
    use v2sp_testsupport::harness::Sink;
    let sink = Sink::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let mut node = tuic_node(1, "bbr");
    node.users = vec![json!({"id": 1, "uuid": UUIDS[0], "speed_limit": 16, "device_limit": null})];
    let v = start(vec![node], certs.path());
    let (proc_, socks) = sing_box(
        outbound(v.nodes[0].port, UUIDS[0], UUIDS[0], "bbr", "native"),
        v.dir.path(),
    );
    let writers = upload_until(socks, sink.port, 3, Instant::now() + Duration::from_secs(7));
    let rate = sink.rate_after(Duration::from_millis(1500), Duration::from_secs(4));
    eprintln!("tuic upload through a 16 Mbps user, 3 streams in one connection: {rate:.0} B/s");
    for w in writers {
        w.join().unwrap();
    }
    let limit = 16e6 / 8.0;
    assert!(
        (rate - limit).abs() <= 0.15 * limit,
        "measured {rate:.0} B/s, limit {limit} B/s\n{}",
        proc_.log()
    );
    drop(proc_);
    v.wait_upload_settles(&sink, 1, 1, Duration::from_secs(40));
}
