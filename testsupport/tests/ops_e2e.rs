//! What an operator sees first: the log lines of both binaries (no ANSI escapes off a
//! terminal, JSON lines on request, journald priorities, `Log.Output`) and the connection
//! counter on `/metrics`. Real `v2sp` + `v2sp-dataplane` against the panel simulator; no
//! third-party peer needed (a plain TCP connect is an accepted connection).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use v2sp_testsupport::harness::{bin_dir, free_port, Proc};
use v2sp_testsupport::panel_sim::{users, PanelSim, SimOptions};

const UUID: &str = "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37";

/// `GET /metrics`, or `None` while the endpoint is not up.
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    Some(s)
}

/// Sum over all cores of a per-core series.
fn per_core_sum(text: &str, name: &str) -> Option<u64> {
    let mut seen = false;
    let mut sum = 0;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix(name).and_then(|r| r.strip_prefix("{core=")) {
            let v: u64 = rest.rsplit(' ').next()?.parse().ok()?;
            sum += v;
            seen = true;
        }
    }
    seen.then_some(sum)
}

fn dataplane_pid(shm: &Path) -> u32 {
    v2sp_shared::shm::ControlShm::open_existing(shm).map_or(0, |s| s.status().dataplane_pid)
}

/// `v2sp run` (which spawns the data plane) with one Shadowsocks node, `/metrics` and
/// `Log` = `log`; stdout and stderr go to `v2sp.log` (a file: not a terminal).
#[test]
fn accepted_connections_show_on_metrics_and_logs_are_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let sim = PanelSim::start(SimOptions {
        token: "ops-token".into(),
        ..SimOptions::default()
    })
    .unwrap();
    let port = free_port();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    sim.set_node(
        1,
        json!({"node_type": "shadowsocks", "server_port": port, "cipher": "aes-128-gcm",
               "base_config": {"push_interval": 1, "pull_interval": 1}}),
    );
    sim.set_users(1, users(&[UUID]));
    let cfg = json!({
        "Log": {"Level": "info", "Format": "json"},
        "StateDir": dir.path().join("state"),
        "Dataplane": {"ShmDir": dir.path().join("shm"), "AllowPrivateDestinations": true, "Workers": 2},
        "Metrics": {"Listen": metrics.to_string()},
        "Nodes": [{"ApiHost": sim.single_url(), "ApiKey": "ops-token", "NodeID": 1,
                   "NodeType": "shadowsocks", "ListenIP": "127.0.0.1", "Timeout": 3}],
    });
    let cfg_path = dir.path().join("config.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let mut cmd = Command::new(bin_dir().join("v2sp"));
    cmd.arg("run")
        .arg("-c")
        .arg(&cfg_path)
        .env("V2SP_DATAPLANE_BIN", bin_dir().join("v2sp-dataplane"))
        .env_remove("V2SP_LOG")
        .env_remove("V2SP_LOG_FORMAT")
        .env_remove("V2SP_LOG_OUTPUT")
        .env_remove("V2SP_LOG_PRIORITY")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM");
    let mut agent = Proc::spawn("v2sp", cmd, dir.path().join("v2sp.log")).unwrap();

    // Registered = every core listens. No probe connection before that: each one is counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    while dataplane_pid(&dir.path().join("shm")) == 0 {
        assert!(
            Instant::now() < deadline,
            "data plane never registered\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let base = loop {
        if let Some(n) = scrape(metrics).and_then(|t| per_core_sum(&t, "v2sp_connections_accepted_total")) {
            break n;
        }
        assert!(Instant::now() < deadline, "no /metrics\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(base, 0, "nothing connected yet");
    for _ in 0..3 {
        // Not a valid Shadowsocks handshake: the node closes it, but it was accepted.
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = c.write_all(b"x");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = scrape(metrics).unwrap_or_default();
        if per_core_sum(&t, "v2sp_connections_accepted_total") == Some(3) || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        per_core_sum(&text, "v2sp_connections_accepted_total"),
        Some(3),
        "{text}"
    );
    let dp = dataplane_pid(&dir.path().join("shm"));
    agent.terminate(Duration::from_secs(15));
    // The agent stops its data plane; make sure none is left if it did not.
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(dp.to_string())
        .stderr(Stdio::null())
        .status();

    let log = std::fs::read(dir.path().join("v2sp.log")).unwrap();
    assert!(!log.contains(&0x1b), "ANSI escape in a log that is a file");
    let log = String::from_utf8(log).unwrap();
    let mut targets = std::collections::BTreeSet::new();
    for l in log.lines() {
        let v: Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{log}"));
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
        assert!(
            matches!(
                v["level"].as_str(),
                Some("ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE")
            ),
            "{l}"
        );
        assert!(v["fields"]["message"].is_string(), "{l}");
        let target = v["target"].as_str().unwrap();
        targets.insert(target.split("::").next().unwrap().to_string());
    }
    // The data plane the control plane started logs the same way.
    assert!(targets.contains("v2sp_control"), "{targets:?}\n{log}");
    assert!(targets.contains("v2sp_dataplane"), "{targets:?}\n{log}");
}

/// The first log line of `v2sp-dataplane` waiting for shared memory that never appears
/// (stderr piped), then the process is killed.
fn first_dataplane_line(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut cmd = Command::new(bin_dir().join("v2sp-dataplane"));
    cmd.arg("--shm-dir")
        .arg(dir.join("no-shm-here"))
        .args(args)
        .env_remove("V2SP_LOG")
        .env_remove("V2SP_LOG_FORMAT")
        .env_remove("V2SP_LOG_OUTPUT")
        .env_remove("V2SP_LOG_PRIORITY")
        .env_remove("V2SP_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    // Bounded: the first "waiting for the control plane's shm" comes at once.
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut l = String::new();
        let _ = BufReader::new(stderr).read_line(&mut l);
        l
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    if reader.is_finished() {
        line = reader.join().unwrap();
    }
    line
}

#[test]
fn dataplane_logs_plain_text_with_priorities_or_to_log_output() {
    let dir = tempfile::tempdir().unwrap();

    // Piped stderr: plain text, RFC 3339 time, level, target, message.
    let l = first_dataplane_line(dir.path(), &[], &[]);
    assert!(!l.contains('\x1b'), "ANSI escape on a pipe: {l:?}");
    let (ts, rest) = l.split_once(' ').unwrap();
    assert!(
        ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{l:?}"
    );
    assert!(
        rest.trim_start()
            .starts_with("INFO v2sp_dataplane: waiting for the control plane's shm"),
        "{l:?}"
    );

    // Under systemd (or V2SP_LOG_PRIORITY=on): a syslog priority prefix, no timestamp.
    let l = first_dataplane_line(dir.path(), &[("V2SP_LOG_PRIORITY", "on")], &[]);
    assert!(l.starts_with("<6>INFO v2sp_dataplane: waiting"), "{l:?}");

    // Under systemd: stderr is the stream JOURNAL_STREAM names (device:inode), so the prefixes
    // come on their own. A file stands in for journald's socket.
    let journal = dir.path().join("journal");
    let f = std::fs::File::create(&journal).unwrap();
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt as _;
        let m = f.metadata().unwrap();
        (m.dev(), m.ino())
    };
    let mut child = Command::new(bin_dir().join("v2sp-dataplane"))
        .arg("--shm-dir")
        .arg(dir.path().join("no-shm-here"))
        .env_remove("V2SP_LOG_PRIORITY")
        .env_remove("V2SP_LOG_OUTPUT")
        .env_remove("V2SP_LOG_FORMAT")
        .env_remove("V2SP_CONFIG")
        .env_remove("V2SP_LOG")
        .env_remove("RUST_LOG")
        .env("JOURNAL_STREAM", format!("{dev}:{ino}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&journal).unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(text.starts_with("<6>INFO v2sp_dataplane: waiting"), "{text:?}");

    // The config's Log section: Output to a file, JSON; nothing on stderr.
    let out = dir.path().join("dp.log");
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({"Log": {"Level": "info", "Output": out, "Format": "json"}})).unwrap(),
    )
    .unwrap();
    let l = first_dataplane_line(dir.path(), &[], &["--config", cfg.to_str().unwrap()]);
    assert_eq!(l, "", "stderr should be empty with Log.Output set");
    let text = std::fs::read_to_string(&out).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["target"], "v2sp_dataplane");
    assert!(first["fields"]["message"]
        .as_str()
        .unwrap()
        .starts_with("waiting for the control plane's shm"));
}
