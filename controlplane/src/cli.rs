//! Command line of `v2sp` (the Go v2sp's commands where they make sense, spec §H.1).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "v2sp",
    version,
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
    /// Print the version.
    Version,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Check the config file and print the effective configuration with secrets masked.
    #[command(alias = "validate", alias = "show")]
    Check {
        #[command(flatten)]
        cfg: ConfigArg,
    },
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
        Cmd::Status { cfg, shm_dir, json } => {
            let dir = match shm_dir {
                Some(d) => d,
                None => match v2sp_shared::config::load(&cfg.config) {
                    Ok(l) => l.config.dataplane.shm_dir,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 2;
                    }
                },
            };
            match crate::status::print(&dir, json) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#} (is v2sp running?)");
                    1
                }
            }
        }
        Cmd::Version => {
            println!("v2sp {}", env!("CARGO_PKG_VERSION"));
            println!("Rust node agent for Xboard/V2board-family panels (data plane + control plane over shared memory)");
            0
        }
    }
}
