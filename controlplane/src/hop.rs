//! Hysteria 2 port hopping: the firewall rules that redirect a node's `HopPorts` (UDP) to the
//! node's port.
//!
//! The control plane owns them, not the data plane: it is the long-lived process that knows
//! the node's port (from the panel) and the range (from the local config), and the data plane
//! may be restarted or upgraded on its own — the rules must outlive that, or every hopping
//! client would lose the ports it uses during an upgrade. They go when the node does (removed
//! from the config or the panel) and when the control plane stops.
//!
//! Each node gets one nftables table of its own, `inet v2sp_hop_<12 hex digits of the tag's
//! SHA-256>`, with a `nat` chain on `prerouting` (clients on the network) and one on `output`
//! (clients on this host; `fib daddr type local` keeps this host's own traffic to remote
//! ports in the range untouched). Their `counter` counts the flows redirected (NAT rules
//! see the first packet of a flow only): one per client hop. Installing replaces the table in one transaction (`add`,
//! `delete`, create), so a table left over by a crash is replaced, and nothing else is ever
//! touched: no flush, no other table. The tables this process made are listed in
//! `<StateDir>/hop-tables`; at start, those a previous run left behind (it crashed) are
//! deleted, and a node still configured gets its table again when it is served.
//!
//! Failures (no `nft`, no CAP_NET_ADMIN, a kernel without nf_tables NAT) are logged as errors
//! naming the node; the node is served on its own port all the same.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use v2sp_shared::dpconfig::{NodeConfig, PortRange, Protocol};

/// Prefix of every table this module makes (and the only tables it ever deletes).
pub const TABLE_PREFIX: &str = "v2sp_hop_";
/// The state file under `StateDir`.
const STATE_FILE: &str = "hop-tables";
/// Longest `nft` run waited for.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node's rules redirect: the range, to the node's address and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopSpec {
    pub range: PortRange,
    /// The node's `ListenIP` as the data plane binds it (empty: every address, both families).
    pub listen_ip: String,
    pub port: u16,
}

impl HopSpec {
    /// The port hopping a served node wants: Hysteria 2 with `HopPorts`.
    pub fn of(nc: &NodeConfig) -> Option<HopSpec> {
        if nc.protocol != Protocol::Hysteria2 {
            return None;
        }
        Some(HopSpec {
            range: nc.hysteria2.as_ref()?.hop_ports?,
            listen_ip: nc.listen_ip.clone(),
            port: nc.port,
        })
    }
}

/// The table of the node with this tag.
pub fn table_name(tag: &str) -> String {
    let h = Sha256::digest(tag.as_bytes());
    format!("{TABLE_PREFIX}{}", hex::encode(h.get(..6).unwrap_or_default()))
}

/// Whether `name` is a table this module could have made (the state file is read back: a
/// line that is not one of ours is never acted on).
fn is_ours(name: &str) -> bool {
    name.strip_prefix(TABLE_PREFIX)
        .is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The match and the action of a node's rule, from its listen address: every address →
/// `redirect` (to the address the packet came in on), an IPv4-only wildcard → the same for
/// IPv4 only, one address → `dnat` to that address (a `redirect` would pick the interface's
/// primary address, which need not be the node's).
fn match_and_action(spec: &HopSpec) -> Result<(String, String), String> {
    let port = spec.port;
    let ip = spec
        .listen_ip
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if ip.is_empty() {
        return Ok((String::new(), format!("redirect to :{port}")));
    }
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("listen address {:?} is not an IP address", spec.listen_ip))?;
    Ok(match ip {
        // `::` is bound dual-stack by the data plane.
        IpAddr::V6(v6) if v6.is_unspecified() => (String::new(), format!("redirect to :{port}")),
        IpAddr::V4(v4) if v4.is_unspecified() => {
            ("meta nfproto ipv4 ".into(), format!("redirect to :{port}"))
        }
        IpAddr::V4(v4) => (format!("ip daddr {v4} "), format!("dnat ip to {v4}:{port}")),
        IpAddr::V6(v6) => (format!("ip6 daddr {v6} "), format!("dnat ip6 to [{v6}]:{port}")),
    })
}

/// The nft script that (re)creates `table` for `spec` in one transaction.
pub fn install_script(table: &str, tag: &str, spec: &HopSpec) -> Result<String, String> {
    let (m, action) = match_and_action(spec)?;
    let ports = if spec.range.first == spec.range.last {
        spec.range.first.to_string()
    } else {
        spec.range.to_string()
    };
    // For `nft list ruleset` readers: which node this is (quotes and backslashes cannot be
    // escaped in an nft string; comments are at most 128 bytes).
    let mut comment: String = format!("v2sp port hopping: {tag}")
        .chars()
        .filter(|c| !matches!(c, '"' | '\\') && !c.is_control())
        .collect();
    while comment.len() > 120 {
        comment.pop();
    }
    Ok(format!(
        "add table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority -100; policy accept;\n\
         \t\t{m}udp dport {ports} counter {action} comment \"{comment}\"\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\t{m}udp dport {ports} fib daddr type local counter {action} comment \"{comment}\"\n\
         \t}}\n\
         }}\n"
    ))
}

/// The nft script that deletes these tables, whether or not they exist.
fn delete_script<'a>(tables: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = String::new();
    for t in tables {
        s.push_str(&format!("add table inet {t}\ndelete table inet {t}\n"));
    }
    s
}

/// One node's installed rules.
struct Installed {
    table: String,
    tag: String,
    spec: HopSpec,
}

/// The port-hopping rules of this control plane ([module docs](self)).
pub struct HopRules {
    state_file: PathBuf,
    nft: PathBuf,
    installed: Mutex<BTreeMap<u16, Installed>>,
}

impl HopRules {
    /// Rules kept in `state_dir`, applied with the `nft` on the PATH. Tables a previous run
    /// left behind are deleted now.
    pub fn open(state_dir: &Path) -> HopRules {
        Self::with_nft(state_dir, PathBuf::from("nft"))
    }

    /// As [`HopRules::open`] with another `nft` program.
    pub fn with_nft(state_dir: &Path, nft: PathBuf) -> HopRules {
        let me = HopRules {
            state_file: state_dir.join(STATE_FILE),
            nft,
            installed: Mutex::new(BTreeMap::new()),
        };
        let left: Vec<String> = std::fs::read_to_string(&me.state_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split('\t').next())
            .filter(|t| is_ours(t))
            .map(str::to_string)
            .collect();
        if !left.is_empty() {
            match me.nft(&delete_script(left.iter().map(String::as_str))) {
                Ok(()) => {
                    tracing::info!(tables = %left.join(" "), "removed the port-hopping rules a previous run left behind");
                    me.save(&BTreeMap::new());
                }
                // Kept in the file: the next start tries again.
                Err(e) => {
                    tracing::error!(tables = %left.join(" "), "cannot remove the port-hopping rules a previous run left behind: {e}")
                }
            }
        }
        me
    }

    /// Brings node `slot`'s rules in line with `spec` (none: removed). Unchanged rules are not
    /// touched.
    pub fn apply(&self, slot: u16, tag: &str, spec: Option<HopSpec>) -> Result<(), String> {
        let mut installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        let current = installed.get(&slot);
        if current.map(|i| (&i.spec, i.tag.as_str())) == spec.as_ref().map(|s| (s, tag)) {
            return Ok(());
        }
        let table = table_name(tag);
        let mut script = String::new();
        // The node's tag changed (or the slot went to another node): its old table goes in
        // the same transaction.
        if let Some(old) = current.filter(|i| i.table != table || spec.is_none()) {
            script.push_str(&delete_script([old.table.as_str()]));
        }
        if let Some(s) = &spec {
            script.push_str(&install_script(&table, tag, s)?);
        }
        let result = self.nft(&script);
        match (&result, spec) {
            (Ok(()), Some(spec)) => {
                tracing::info!(node = %tag, table, ports = %spec.range, port = spec.port, "port hopping: UDP ports redirected to the node's port");
                installed.insert(
                    slot,
                    Installed {
                        table,
                        tag: tag.to_string(),
                        spec,
                    },
                );
            }
            (Ok(()), None) => {
                if let Some(old) = installed.remove(&slot) {
                    tracing::info!(node = %old.tag, table = old.table, "port hopping rules removed");
                }
            }
            // A failed install leaves what was there (the transaction is all or nothing).
            (Err(_), _) => {}
        }
        self.save(&installed);
        result
    }

    /// Removes every table this process installed (the control plane stops).
    pub fn remove_all(&self) {
        let mut installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        if installed.is_empty() {
            return;
        }
        match self.nft(&delete_script(installed.values().map(|i| i.table.as_str()))) {
            Ok(()) => {
                tracing::info!(tables = installed.len(), "port hopping rules removed");
                installed.clear();
            }
            Err(e) => {
                tracing::error!("cannot remove the port hopping rules (the next start removes them): {e}")
            }
        }
        self.save(&installed);
    }

    /// Tables installed now, by slot (for tests and status).
    pub fn tables(&self) -> Vec<(u16, String)> {
        let installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        installed.iter().map(|(s, i)| (*s, i.table.clone())).collect()
    }

    /// Writes the list of installed tables (table, tab, tag) so that a crash leaves a record.
    fn save(&self, installed: &BTreeMap<u16, Installed>) {
        let text: String = installed
            .values()
            .map(|i| format!("{}\t{}\n", i.table, i.tag.replace(['\n', '\t'], " ")))
            .collect();
        let tmp = self.state_file.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.state_file));
        if let Err(e) = written {
            tracing::warn!(file = %self.state_file.display(), "cannot record the port hopping tables: {e}");
        }
    }

    /// Runs `nft -f -` with `script`, bounded by [`NFT_TIMEOUT`].
    fn nft(&self, script: &str) -> Result<(), String> {
        let mut child = Command::new(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "{} not found: install the nftables package (port hopping needs nft)",
                    self.nft.display()
                ),
                _ => format!("cannot run {}: {e}", self.nft.display()),
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("writing to nft: {e}"))?;
        }
        let deadline = Instant::now() + NFT_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("nft did not finish within {NFT_TIMEOUT:?}"));
                }
                Err(e) => return Err(format!("waiting for nft: {e}")),
            }
        };
        if status.success() {
            return Ok(());
        }
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let err = err.trim();
        let hint = if err.contains("Operation not permitted") {
            " (the control plane needs CAP_NET_ADMIN for port hopping: see deploy/README.md)"
        } else {
            ""
        };
        Err(format!("nft failed ({status}): {err}{hint}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(listen: &str, first: u16, last: u16, port: u16) -> HopSpec {
        HopSpec {
            range: PortRange { first, last },
            listen_ip: listen.to_string(),
            port,
        }
    }

    #[test]
    fn table_names_are_ours_and_stable() {
        let t = table_name("[http://panel]-hysteria2:1");
        assert_eq!(t, table_name("[http://panel]-hysteria2:1"));
        assert_ne!(t, table_name("[http://panel]-hysteria2:2"));
        assert!(is_ours(&t), "{t}");
        for other in [
            "filter",
            "v2sp_hop_",
            "v2sp_hop_zzzzzzzzzzzz",
            "v2sp_hop_0123456789ab; flush ruleset",
        ] {
            assert!(!is_ours(other), "{other}");
        }
    }

    #[test]
    fn rules_follow_the_listen_address() {
        let s = install_script("v2sp_hop_x", "n", &spec("127.0.0.1", 20000, 20010, 4433)).unwrap();
        assert!(
            s.starts_with("add table inet v2sp_hop_x\ndelete table inet v2sp_hop_x\n"),
            "{s}"
        );
        assert!(
            s.contains("ip daddr 127.0.0.1 udp dport 20000-20010 counter dnat ip to 127.0.0.1:4433"),
            "{s}"
        );
        assert!(s.contains("type nat hook output"), "{s}");
        assert!(
            s.contains("fib daddr type local counter dnat ip to 127.0.0.1:4433"),
            "{s}"
        );
        let s = install_script("t", "n", &spec("0.0.0.0", 20000, 50000, 443)).unwrap();
        assert!(
            s.contains("meta nfproto ipv4 udp dport 20000-50000 counter redirect to :443"),
            "{s}"
        );
        let s = install_script("t", "n", &spec("", 443, 443, 443)).unwrap();
        assert!(s.contains("\tudp dport 443 counter redirect to :443"), "{s}");
        let s = install_script("t", "n", &spec("::", 1, 2, 3)).unwrap();
        assert!(s.contains("\tudp dport 1-2 counter redirect to :3"), "{s}");
        let s = install_script("t", "n", &spec("[2001:db8::1]", 1, 2, 3)).unwrap();
        assert!(
            s.contains("ip6 daddr 2001:db8::1 udp dport 1-2 counter dnat ip6 to [2001:db8::1]:3"),
            "{s}"
        );
        assert!(install_script("t", "n", &spec("nope", 1, 2, 3)).is_err());
        // A tag cannot break out of the comment.
        let s = install_script("t", "a\"; flush ruleset; \"\\", &spec("", 1, 2, 3)).unwrap();
        assert!(
            s.contains("comment \"v2sp port hopping: a; flush ruleset; \""),
            "{s}"
        );
    }

    #[test]
    fn only_hysteria2_nodes_with_a_range_hop() {
        let mut nc: NodeConfig = serde_json::from_value(serde_json::json!({
            "slot": 1, "tag": "n", "listen_ip": "0.0.0.0", "port": 443, "protocol": "hysteria2",
            "cred_kind": "Sha256Password", "hysteria2": {"hop_ports": {"first": 5, "last": 6}}
        }))
        .unwrap();
        assert_eq!(HopSpec::of(&nc), Some(spec("0.0.0.0", 5, 6, 443)));
        nc.protocol = Protocol::Tuic;
        assert_eq!(HopSpec::of(&nc), None);
        nc.protocol = Protocol::Hysteria2;
        nc.hysteria2 = Some(Default::default());
        assert_eq!(HopSpec::of(&nc), None);
    }
}
