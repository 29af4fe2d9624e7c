//! Command line of `v2sp` (the Go v2sp's commands where they make sense, spec §H.1).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The version `v2sp version` prints: the release tag `scripts/release.sh` builds with
/// (`V2SP_BUILD_VERSION=1.2.3`), else the crate version.
pub const VERSION: &str = match option_env!("V2SP_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Where `v2sp update` downloads a release from when neither `--from` nor `V2SP_RELEASE_URL`
/// says: baked in by `scripts/release.sh` (`V2SP_BUILD_RELEASE_URL`), else none.
pub const DEFAULT_RELEASE_URL: Option<&str> = option_env!("V2SP_BUILD_RELEASE_URL");

#[derive(Parser, Debug)]
#[command(
    name = "v2sp",
    version = VERSION,
    about = "v2sp node agent: panel sync, limits and lossless traffic accounting for proxy nodes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
pub struct ConfigArg {
    /// Config file.
    #[arg(short, long, default_value = "/etc/v2sp/config.json")]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the control plane (and the data plane unless --no-dataplane).
    #[command(alias = "server")]
    Run {
        #[command(flatten)]
        cfg: ConfigArg,
        /// The data plane runs as its own systemd unit.
        #[arg(long)]
        no_dataplane: bool,
        /// Path of the v2sp-dataplane binary (default: next to this one, then $PATH).
        #[arg(long, env = "V2SP_DATAPLANE_BIN")]
        dataplane_bin: Option<PathBuf>,
        /// Accepted for compatibility with the Go v2sp (watching is always on).
        #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set, hide = true)]
        watch: bool,
    },
    /// Configuration file tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Print a REALITY X25519 key pair (random, or the public key of --private).
    X25519 {
        #[arg(long)]
        private: Option<String>,
    },
    /// Print the REALITY key pair derived from node settings.
    Reality {
        #[arg(long)]
        node_id: i64,
        #[arg(long)]
        node_type: String,
        #[arg(long)]
        token: String,
    },
    /// Show nodes, users, connections and throughput from shared memory.
    Status {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Shared-memory directory (instead of reading it from the config file).
        #[arg(long)]
        shm_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Upgrade the data plane without dropping a connection: the running data plane starts
    /// the `v2sp-dataplane` binary now installed at its path, hands it every listening
    /// socket, then stops accepting and drains its open connections for
    /// `Dataplane.DrainSeconds` (default 600). If the new binary fails to start, the old one
    /// goes on serving and this exits 1. `systemctl reload v2sp-dataplane` runs this.
    Upgrade {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Shared-memory directory (instead of reading it from the config file).
        #[arg(long)]
        shm_dir: Option<PathBuf>,
        /// Seconds to wait for the outcome.
        #[arg(long, default_value_t = 90)]
        timeout: u64,
    },
    /// Print the version.
    Version,
    /// Start both services: runs `systemctl start v2sp v2sp-dataplane`, then shows
    /// `systemctl is-active` of both.
    Start,
    /// Stop both services: runs `systemctl stop v2sp-dataplane v2sp` (open connections drop;
    /// traffic counted so far is pushed or kept in the journal).
    Stop,
    /// Restart the control plane: runs `systemctl restart v2sp` (picks up a new binary or
    /// config; no proxied connection is dropped). With --dataplane also
    /// `systemctl restart v2sp-dataplane` (drops open connections).
    Restart {
        /// Also restart the data plane (drops every open connection).
        #[arg(long)]
        dataplane: bool,
    },
    /// Show the logs of both services: runs
    /// `journalctl -u v2sp -u v2sp-dataplane -n LINES -f --no-pager`.
    Log {
        /// Lines of history to show first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
        /// Print and exit instead of following.
        #[arg(long)]
        no_follow: bool,
    },
    /// Install the newest release: downloads URL/install.sh and runs
    /// `bash install.sh --from URL` (checks SHA256SUMS, replaces the binaries and units,
    /// restarts the control plane; the data plane keeps its connections and the old binary
    /// until restarted, or restarts now with --restart-dataplane).
    Update {
        /// Release URL (the directory with SHA256SUMS and the tarballs); default
        /// $V2SP_RELEASE_URL, else the URL this binary was released with.
        #[arg(long, env = "V2SP_RELEASE_URL")]
        from: Option<String>,
        /// Restart the data plane too (drops open connections).
        #[arg(long)]
        restart_dataplane: bool,
    },
    /// Remove v2sp: runs `bash /usr/local/share/v2sp/install.sh --uninstall` (stops and
    /// disables both units, removes units, binaries and the sysctl file; keeps /etc/v2sp, the
    /// journal in /var/lib/v2sp and the user). For the Debian package: `apt remove v2sp`.
    Uninstall {
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
}

// `Init` carries every flag of `config init`; parsed once per process, so its size is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Check the config file and print the effective configuration with secrets masked.
    #[command(alias = "validate", alias = "show")]
    Check {
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Write a commented config for one panel and its nodes (checked before it is written).
    Init(crate::config_init::InitArgs),
}

/// Execute a parsed command line; returns the process exit code.
pub fn execute(cli: Cli) -> i32 {
    match cli.cmd {
        Cmd::Run {
            cfg,
            no_dataplane,
            dataplane_bin,
            ..
        } => {
            let opts = crate::agent::RunOptions {
                config: cfg.config,
                no_dataplane,
                dataplane_bin,
            };
            match crate::agent::run(&opts) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("v2sp: {e:#}");
                    1
                }
            }
        }
        Cmd::Config {
            cmd: ConfigCmd::Check { cfg },
        } => match v2sp_shared::config::load(&cfg.config) {
            Ok(l) => {
                for w in &l.warnings {
                    eprintln!("warning: {w}");
                }
                println!("{}", l.config.masked_json());
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
        Cmd::X25519 { private } => match crate::keys::from_private_or_random(private.as_deref()) {
            Ok(k) => {
                print!("{}", k.print());
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
        Cmd::Reality {
            node_id,
            node_type,
            token,
        } => {
            print!("{}", crate::keys::derive(node_id, &node_type, &token).print());
            0
        }
        Cmd::Upgrade {
            cfg,
            shm_dir,
            timeout,
        } => {
            let Some(dir) = shm_dir_from(shm_dir, &cfg) else {
                return 2;
            };
            crate::upgrade::run(&dir, std::time::Duration::from_secs(timeout))
        }
        Cmd::Status { cfg, shm_dir, json } => {
            let Some(dir) = shm_dir_from(shm_dir, &cfg) else {
                return 2;
            };
            match crate::status::print(&dir, json) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#} (is v2sp running?)");
                    1
                }
            }
        }
        Cmd::Config {
            cmd: ConfigCmd::Init(args),
        } => crate::config_init::run(&args),
        cmd @ (Cmd::Start | Cmd::Stop | Cmd::Restart { .. } | Cmd::Log { .. }) => {
            crate::ops::run_plan(&crate::ops::plan(&cmd))
        }
        Cmd::Update {
            from,
            restart_dataplane,
        } => crate::ops::update(from.as_deref().or(DEFAULT_RELEASE_URL), restart_dataplane),
        Cmd::Uninstall { yes } => crate::ops::uninstall(yes),
        Cmd::Version => {
            println!("v2sp {VERSION}");
            println!("Rust node agent for Xboard/V2board-family panels (data plane + control plane over shared memory)");
            0
        }
    }
}

/// `--shm-dir`, else the config file's `Dataplane.ShmDir` (`None`, with the error printed,
/// when the config cannot be read).
fn shm_dir_from(explicit: Option<PathBuf>, cfg: &ConfigArg) -> Option<PathBuf> {
    if explicit.is_some() {
        return explicit;
    }
    match v2sp_shared::config::load(&cfg.config) {
        Ok(l) => Some(l.config.dataplane.shm_dir),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}
