//! `v2sp config init`: a commented `/etc/v2sp/config.json` for one panel and its nodes, from
//! flags (the Go v2sp asked on a prompt; this one is scriptable). The text is checked with the
//! real config loader before it is written; an existing file is kept as
//! `<file>.bak.<unix time>` only with `--force`.

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// Panel base URL (`ApiHost`), e.g. https://panel.example.com.
    #[arg(long)]
    pub api_host: String,
    /// The panel's server token (`ApiKey`).
    #[arg(long)]
    pub api_key: String,
    /// Node id on the panel; repeat for several nodes (`--node-id 1 --node-id 2`).
    #[arg(long = "node-id", required = true)]
    pub node_ids: Vec<u32>,
    /// vless | vmess | trojan | shadowsocks | hysteria2 | anytls; "" = ask the panel.
    #[arg(long, default_value = "")]
    pub node_type: String,
    /// none | file | self | http (ACME HTTP-01).
    #[arg(long, default_value = "none")]
    pub cert_mode: String,
    /// The node's domain, for the certificate (CertMode file, self, http).
    #[arg(long, default_value = "")]
    pub cert_domain: String,
    /// Address the listeners bind to ("::" for dual-stack).
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_ip: String,
    /// Prometheus /metrics address; "" = off.
    #[arg(long, default_value = "127.0.0.1:9555")]
    pub metrics_listen: String,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// Where to write.
    #[arg(short, long, default_value = v2sp_shared::config::DEFAULT_CONFIG_PATH)]
    pub output: PathBuf,
    /// Replace an existing file (kept as <file>.bak.<unix time>).
    #[arg(long)]
    pub force: bool,
    /// Print the config instead of writing it.
    #[arg(long)]
    pub stdout: bool,
}

/// JSON string literal.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The commented config text.
pub fn render(a: &InitArgs) -> String {
    let mut nodes = Vec::new();
    for id in &a.node_ids {
        let cert = match a.cert_mode.as_str() {
            "file" | "self" | "http" => format!(
                r#"{{
        // none | file | self | http (ACME HTTP-01, port 80 must reach this host)
        "CertMode": {mode},
        "CertDomain": {domain},
        "CertFile": {crt},
        "KeyFile": {key}
      }}"#,
                mode = q(&a.cert_mode),
                domain = q(&a.cert_domain),
                crt = q(&format!("/etc/v2sp/cert/{}.crt", a.cert_domain)),
                key = q(&format!("/etc/v2sp/cert/{}.key", a.cert_domain)),
            ),
            other => format!(
                "{{\n        // none | file | self | http\n        \"CertMode\": {}\n      }}",
                q(other)
            ),
        };
        nodes.push(format!(
            r#"    {{
      "ApiHost": {host},
      "ApiKey": {key},
      "NodeID": {id},
      // vless | vmess | trojan | shadowsocks | hysteria2 | anytls; "" = take it from the panel
      "NodeType": {ty},
      // Seconds per panel request attempt.
      "Timeout": 30,
      "ListenIP": {listen},
      "SendIP": "0.0.0.0",
      // Report a user's IPs online only after this many KB in an interval (0 = always).
      "DeviceOnlineMinTraffic": 200,
      "CertConfig": {cert}
    }}"#,
            host = q(&a.api_host),
            key = q(&a.api_key),
            ty = q(&a.node_type),
            listen = q(&a.listen_ip),
        ));
    }
    format!(
        r#"// v2sp configuration, written by `v2sp config init`. Every key is explained in
// /usr/local/share/doc/v2sp/config.example.json (deploy/config.example.json in the source).
// Check it with `v2sp config check -c <this file>`; v2sp reloads it when it changes.
{{
  "Log": {{
    // debug | info | warn | error
    "Level": "info",
    // text | json (one JSON object per line)
    "Format": {format},
    // "" = stderr, which systemd sends to the journal (`v2sp log`); or a file path
    "Output": ""
  }},
  // Accounting journal: traffic not yet acknowledged by the panel. Must survive reboots.
  "StateDir": "/var/lib/v2sp",
  // Prometheus GET /metrics, no authentication: keep it on loopback. "" = off.
  "Metrics": {{"Listen": {metrics}}},
  "Dataplane": {{
    // Threads, one per CPU; 0 = every CPU the process may run on.
    "Workers": 0,
    // auto | uring | epoll
    "IO": "auto",
    "ShmDir": "/dev/shm/v2sp",
    // false: users cannot reach loopback and private networks through the node.
    "AllowPrivateDestinations": false
  }},
  "Nodes": [
{nodes}
  ]
}}
"#,
        format = q(&a.log_format),
        metrics = q(&a.metrics_listen),
        nodes = nodes.join(",\n"),
    )
}

/// Check, then write (or print). Exit code.
pub fn run(a: &InitArgs) -> i32 {
    let text = render(a);
    // Check with the real loader, through a temporary file next to the target.
    let dir = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let check = if a.stdout {
        std::env::temp_dir().join(format!("v2sp-config-init-{}.json", std::process::id()))
    } else {
        dir.join(format!(".config-init-{}.json", std::process::id()))
    };
    if let Err(e) = write_private(&check, &text) {
        eprintln!("error: cannot write {}: {e}", check.display());
        return 1;
    }
    let loaded = v2sp_shared::config::load(&check);
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&check);
            eprintln!("error: the generated config does not load: {e}");
            return 2;
        }
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    if a.stdout {
        let _ = std::fs::remove_file(&check);
        print!("{text}");
        return 0;
    }
    if a.output.exists() {
        if !a.force {
            let _ = std::fs::remove_file(&check);
            eprintln!(
                "error: {} exists; --force replaces it (keeping a .bak copy)",
                a.output.display()
            );
            return 1;
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let bak = PathBuf::from(format!("{}.bak.{secs}", a.output.display()));
        if let Err(e) = std::fs::copy(&a.output, &bak) {
            let _ = std::fs::remove_file(&check);
            eprintln!("error: cannot back up {}: {e}", a.output.display());
            return 1;
        }
        eprintln!("kept the old config as {}", bak.display());
    }
    if let Err(e) = std::fs::rename(&check, &a.output) {
        let _ = std::fs::remove_file(&check);
        eprintln!("error: cannot write {}: {e}", a.output.display());
        return 1;
    }
    eprintln!("wrote {}", a.output.display());
    0
}

/// Create `path` with mode 0600 (the config holds the panel token).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(dir: &std::path::Path) -> InitArgs {
        InitArgs {
            api_host: "https://panel.example.com".into(),
            api_key: "tok\"en".into(),
            node_ids: vec![3, 4],
            node_type: "trojan".into(),
            cert_mode: "http".into(),
            cert_domain: "n.example.com".into(),
            listen_ip: "::".into(),
            metrics_listen: "127.0.0.1:9555".into(),
            log_format: "json".into(),
            output: dir.join("config.json"),
            force: false,
            stdout: false,
        }
    }

    #[test]
    fn writes_a_config_that_loads_and_keeps_an_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path());
        assert_eq!(run(&a), 0);
        let l = v2sp_shared::config::load(&a.output).unwrap();
        assert_eq!(l.config.nodes.len(), 2);
        assert_eq!(l.config.log.format, v2sp_shared::config::LogFormat::Json);
        let text = std::fs::read_to_string(&a.output).unwrap();
        assert!(text.contains("\"ApiKey\": \"tok\\\"en\""), "{text}");
        assert!(text.contains("/etc/v2sp/cert/n.example.com.crt"));
        // Exists: refused without --force, replaced (with a backup) with it.
        assert_eq!(run(&a), 1);
        assert_eq!(
            run(&InitArgs {
                force: true,
                ..a.clone()
            }),
            0
        );
        let baks = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".bak.")
            })
            .count();
        assert_eq!(baks, 1);
    }
}
