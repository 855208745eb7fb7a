//! `ternd node ...`: this machine as a node host.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The daemon's address (host:port). Needed to pair; afterwards the paired address
    /// is used unless this is given.
    #[arg(long, env = "TERN_DAEMON")]
    pub daemon: Option<String>,
    /// A pairing code (IIII-SSSS-SSSS), for the first run.
    #[arg(long, env = "TERN_CODE", conflicts_with = "uri")]
    pub code: Option<String>,
    /// A pairing URI (tern://pair?...), for the first run.
    #[arg(long, env = "TERN_URI")]
    pub uri: Option<String>,
    /// The node host's state directory (key, certificates, pin, journal).
    #[arg(long, env = "TERN_NODE_STATE_DIR")]
    pub node_state_dir: Option<PathBuf>,
    /// A TOML configuration file (written by `ternd node install`).
    #[arg(long, env = "TERN_NODE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Let `desktop.open_url` open URLs without asking (default: ask on a terminal,
    /// refuse without one).
    #[arg(long)]
    pub allow_open_url: bool,
    /// Refuse `desktop.open_url` without asking.
    #[arg(long, conflicts_with = "allow_open_url")]
    pub deny_open_url: bool,
    /// Never fall back to TCP + TLS.
    #[arg(long)]
    pub quic_only: bool,
    /// Use TCP + TLS only (networks that block UDP).
    #[arg(long, conflicts_with = "quic_only")]
    pub tcp_only: bool,
    /// Send a `health` event this often (seconds; 0 turns it off).
    #[arg(long, default_value_t = 60)]
    pub health_every: u64,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Where the systemd unit goes.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// Where the node host's configuration goes.
    #[arg(long, default_value = "/etc/tern/node.toml")]
    pub config_path: PathBuf,
}

/// Runs a `ternd node ...` command other than `show`.
pub async fn run(command: super::NodeCommand) -> Result<(), super::exit::Exit> {
    let _ = command;
    Err(super::exit::Exit::failure(
        "the node host is not wired in yet",
    ))
}
