//! `v2sp-panel-sim --listen 127.0.0.1:8080 --state state.json [--token T] [--no-etag]
//! [--single-path /api/v2sp] [--no-uniproxy]`
//!
//! Serves the panel API from a JSON state file shaped like the standalone panel file
//! (`{"nodes":{"26":{…}},"users":{"26":[…]},"alive":{"1":2}}`), re-read when it changes.
//! Accepted pushes are printed to stdout as one JSON line each. Runs until killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use v2sp_testsupport::panel_sim::{PanelSim, SimOptions};

fn main() -> Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut state: Option<PathBuf> = None;
    let mut opts = SimOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--listen" => listen = value("--listen")?.parse().context("--listen must be IP:PORT")?,
            "--state" => state = Some(PathBuf::from(value("--state")?)),
            "--token" => opts.token = value("--token")?,
            "--single-path" => opts.single_path = Some(value("--single-path")?),
            "--no-single" => opts.single_path = None,
            "--no-uniproxy" => opts.uniproxy = false,
            "--no-etag" => opts.etag = false,
            "-h" | "--help" => {
                println!(
                    "usage: v2sp-panel-sim --listen IP:PORT --state FILE [--token T] [--no-etag] \
                     [--single-path PATH | --no-single] [--no-uniproxy]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let state = state.context("--state FILE is required")?;
    let sim = PanelSim::start_on(listen, opts)?;
    let mut loaded: Option<SystemTime> = None;
    eprintln!(
        "v2sp-panel-sim on {} (single endpoint {}, token {:?})",
        sim.addr(),
        sim.single_url(),
        sim.token()
    );
    let mut printed = 0usize;
    loop {
        let mtime = std::fs::metadata(&state).and_then(|m| m.modified()).ok();
        if mtime.is_some() && mtime != loaded {
            let text =
                std::fs::read_to_string(&state).with_context(|| format!("reading {}", state.display()))?;
            match serde_json::from_str(&text)
                .map_err(|e| e.to_string())
                .and_then(|v| sim.load_state(&v))
            {
                Ok(()) => eprintln!("loaded {}", state.display()),
                Err(e) => eprintln!("ignoring {}: {e}", state.display()),
            }
            loaded = mtime;
        }
        let pushes = sim.pushes();
        for p in pushes.iter().skip(printed) {
            let line = serde_json::json!({
                "node_id": p.node_id, "report_id": p.report_id, "duplicate": p.duplicate, "body": p.body,
            });
            println!("{line}");
        }
        printed = pushes.len();
        std::thread::sleep(Duration::from_millis(500));
    }
}
