//! The port-hopping rules (`v2sp_control::hop`) against the real `nft`, in a network namespace
//! the test creates: a table left by a crashed run is removed at the next start, a node's
//! stale table is replaced, the redirect works, changes replace the table, and stopping
//! removes exactly this process's tables (another firewall's table survives). A missing `nft`
//! is a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use v2sp_control::hop::{table_name, HopRules, HopSpec};
use v2sp_shared::dpconfig::PortRange;
use v2sp_testsupport::harness::run_in_loopback_netns;

fn nft(args: &[&str], stdin: &str) -> String {
    v2sp_testsupport::harness::nft(args, stdin).unwrap()
}

fn tables() -> String {
    nft(&["list", "tables"], "")
}

fn spec(first: u16, last: u16, port: u16) -> Option<HopSpec> {
    Some(HopSpec {
        range: PortRange { first, last },
        listen_ip: "127.0.0.1".into(),
        port,
    })
}

/// A datagram to `hop` arrives at the socket on `port`, and its answer comes back from `hop`.
fn redirected(hop: u16, port: u16) -> bool {
    let server = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    client.send_to(b"hop", ("127.0.0.1", hop)).unwrap();
    let mut b = [0u8; 16];
    let Ok((n, from)) = server.recv_from(&mut b) else {
        return false;
    };
    server.send_to(&b[..n], from).unwrap();
    matches!(client.recv_from(&mut b), Ok((3, f)) if f.port() == hop)
}

#[test]
fn hop_rules_are_ours_alone() {
    if !run_in_loopback_netns("hop_rules_are_ours_alone", Duration::from_secs(60)) {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    // Another firewall's table, and what a crashed run left: the table of a node that is gone
    // (in the state file) and a stale table of a node still configured (not in the file: the
    // crash came between the rules and the record).
    nft(
        &["-f", "-"],
        "table inet keep_me {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tudp dport 9 counter\n\t}\n}\n",
    );
    let gone = table_name("gone-node");
    let n1 = table_name("node-1");
    for (t, port) in [(&gone, 1), (&n1, 2)] {
        nft(
            &["-f", "-"],
            &format!("table inet {t} {{\n\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\tudp dport 20000-20010 redirect to :{port}\n\t}}\n}}\n"),
        );
    }
    std::fs::write(
        state.path().join("hop-tables"),
        format!("{gone}\tgone-node\nfilter\tnot ours, never touched\n"),
    )
    .unwrap();
    let rules = HopRules::open(state.path());
    let t = tables();
    assert!(!t.contains(&gone), "left-over table removed at start:\n{t}");
    assert!(t.contains("keep_me") && t.contains(&n1), "{t}");

    // Node 1's stale table is replaced by its real rules.
    rules.apply(1, "node-1", spec(20000, 20010, 24433)).unwrap();
    let r = nft(&["list", "table", "inet", &n1], "");
    assert!(r.contains(":24433") && !r.contains("to :2\n"), "{r}");
    assert!(redirected(20005, 24433));
    assert!(std::fs::read_to_string(state.path().join("hop-tables"))
        .unwrap()
        .contains(&n1));
    // Unchanged: nothing happens; changed port: replaced.
    rules.apply(1, "node-1", spec(20000, 20010, 24433)).unwrap();
    rules.apply(1, "node-1", spec(20000, 20010, 24434)).unwrap();
    assert!(redirected(20001, 24434));
    assert!(!nft(&["list", "table", "inet", &n1], "").contains(":24433"));

    // A second node, then gone again.
    let n2 = table_name("node-2");
    rules.apply(2, "node-2", spec(30000, 30000, 24435)).unwrap();
    assert!(redirected(30000, 24435));
    rules.apply(2, "node-2", None).unwrap();
    assert!(!tables().contains(&n2));
    assert!(!redirected(30000, 24435));

    // Stop: ours go, the other table stays with its rule.
    rules.remove_all();
    let t = tables();
    assert!(!t.contains("v2sp_hop_"), "{t}");
    assert!(nft(&["list", "table", "inet", "keep_me"], "").contains("udp dport 9 counter"));
    assert_eq!(
        std::fs::read_to_string(state.path().join("hop-tables")).unwrap(),
        ""
    );

    // No nft: a clear error, nothing recorded.
    let none = HopRules::with_nft(state.path(), PathBuf::from("/nonexistent/nft"));
    let e = none.apply(3, "node-3", spec(1000, 1001, 1002)).unwrap_err();
    assert!(e.contains("install the nftables package"), "{e}");
    assert!(none.tables().is_empty());
}
