//! Standalone `file://` panel: node config and users from one JSON file, re-read on change;
//! pushes into an atomically written ledger with report-id de-duplication.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use v2sp_control::panel::{open, Fetch, FilePanel, NodeApi, Panel, PanelError, PushBody, PushOutcome};

const U1: &str = "2b4f9e9c-1b5e-4d1c-9d6a-1f0c6b7a8e01";
const U2: &str = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f";

fn write(path: &Path, v: &serde_json::Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn doc(port: u16) -> serde_json::Value {
    json!({
        "nodes": {"26": {"node_type": "shadowsocks", "server_port": port, "cipher": "aes-128-gcm"},
                  "27": {"node_type": "vless", "server_port": 443}},
        "users": {"26": [{"id": 1, "uuid": U1}, {"id": 2, "uuid": U2, "speed_limit": 10}]},
        "alive": {"1": 2}
    })
}

fn api(path: &Path, node: u32) -> NodeApi {
    NodeApi::new(format!("file://{}", path.display()), "", node)
}

#[test]
fn config_and_users_reload_on_change_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("panel.json");
    write(&path, &doc(8388));
    let mut p = FilePanel::new(&api(&path, 26)).unwrap();
    let n = p.config().unwrap().changed().unwrap();
    assert_eq!(
        (n.node_type.as_deref(), n.server_port),
        (Some("shadowsocks"), 8388)
    );
    assert_eq!(p.users().unwrap().changed().unwrap().users.len(), 2);
    assert_eq!(p.config().unwrap(), Fetch::Unchanged);
    assert_eq!(p.users().unwrap(), Fetch::Unchanged);
    assert_eq!(p.alivelist().unwrap().counts, BTreeMap::from([(1, 2)]));

    // Rewrite with another node changed only: this node stays Unchanged even though mtime moved.
    std::thread::sleep(Duration::from_millis(20));
    let mut d = doc(8388);
    d["nodes"]["27"]["server_port"] = json!(444);
    write(&path, &d);
    assert_eq!(p.config().unwrap(), Fetch::Unchanged);
    assert_eq!(p.users().unwrap(), Fetch::Unchanged);

    std::thread::sleep(Duration::from_millis(20));
    write(&path, &doc(9000));
    assert_eq!(p.config().unwrap().changed().unwrap().server_port, 9000);
    assert_eq!(p.users().unwrap(), Fetch::Unchanged);

    // Node without users: empty list, not an error.
    let mut other = FilePanel::new(&api(&path, 27)).unwrap();
    assert_eq!(other.users().unwrap().changed().unwrap().users.len(), 0);
}

#[test]
fn file_errors_name_whose_fault() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("panel.json");
    assert!(matches!(
        FilePanel::new(&NodeApi::new("file://relative/p.json", "", 1)),
        Err(PanelError::Config(_))
    ));
    let mut p = FilePanel::new(&api(&path, 26)).unwrap();
    assert!(matches!(p.config(), Err(PanelError::Config(m)) if m.contains("cannot stat")));
    std::fs::write(&path, b"{not json").unwrap();
    assert!(matches!(p.config(), Err(PanelError::Decode { .. })));
    write(&path, &json!({"nodes": {"26": {"server_port": "x"}}}));
    match p.config() {
        Err(PanelError::Decode { source, .. }) => assert_eq!(source.path, "server_port"),
        other => panic!("{other:?}"),
    }
    let mut missing = FilePanel::new(&api(&path, 99)).unwrap();
    assert!(matches!(missing.config(), Err(PanelError::Config(m)) if m.contains("\"99\"")));
}

#[test]
fn ledger_accumulates_and_deduplicates_report_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("panel.json");
    write(&path, &doc(8388));
    let mut p = open(api(&path, 26)).unwrap();
    let b1 = PushBody::from([(1, [100, 200]), (2, [1, 0])]);
    assert_eq!(p.push(&b1, "r1"), PushOutcome::Accepted);
    assert_eq!(
        p.push(&b1, "r1"),
        PushOutcome::Accepted,
        "a retried batch is acknowledged"
    );
    assert_eq!(
        p.push(&PushBody::from([(1, [1, 1])]), "r2"),
        PushOutcome::Accepted
    );

    let fp = FilePanel::new(&api(&path, 26)).unwrap();
    assert_eq!(
        fp.ledger_totals().unwrap(),
        BTreeMap::from([(1, [101, 201]), (2, [1, 0])])
    );
    let ledger: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fp.ledger_path()).unwrap()).unwrap();
    assert_eq!(ledger["26"]["1"], json!([101, 201]));
    assert_eq!(ledger["_applied_reports"]["26"], json!(["r1", "r2"]));
    // Atomic write leaves no temp file behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");

    // Another node's ids are separate: the same id there is new traffic.
    let mut p27 = FilePanel::new(&api(&path, 27)).unwrap();
    assert_eq!(
        p27.push(&PushBody::from([(5, [7, 7])]), "r1"),
        PushOutcome::Accepted
    );
    assert_eq!(p27.ledger_totals().unwrap(), BTreeMap::from([(5, [7, 7])]));
    assert_eq!(fp.ledger_totals().unwrap()[&1], [101, 201]);
    p27.alive(&BTreeMap::from([(5, vec!["192.0.2.1".into()])]))
        .unwrap();
}

#[test]
fn corrupt_ledger_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("panel.json");
    write(&path, &doc(8388));
    let mut p = FilePanel::new(&api(&path, 26)).unwrap();
    std::fs::write(p.ledger_path(), b"{truncated").unwrap();
    match p.push(&PushBody::from([(1, [1, 1])]), "r1") {
        PushOutcome::NotDelivered { detail } => assert!(detail.contains("corrupt"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(p.ledger_path()).unwrap(), b"{truncated".to_vec());
}

#[test]
fn concurrent_nodes_share_one_ledger_without_losing_updates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("panel.json");
    write(&path, &doc(8388));
    let threads: Vec<_> = [26u32, 27]
        .into_iter()
        .map(|node| {
            let a = api(&path, node);
            std::thread::spawn(move || {
                let mut p = FilePanel::new(&a).unwrap();
                for i in 0..20 {
                    assert_eq!(
                        p.push(&PushBody::from([(1, [1, 2])]), &format!("n{node}-{i}")),
                        PushOutcome::Accepted
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for node in [26, 27] {
        let p = FilePanel::new(&api(&path, node)).unwrap();
        assert_eq!(p.ledger_totals().unwrap(), BTreeMap::from([(1, [20, 40])]));
    }
}
