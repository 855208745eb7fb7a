//! `ternd`'s command line: the daemon (`serve`), the operator's commands, and the Linux
//! node host (`node run|install|start|stop|restart|status`).

pub mod exit;
pub mod node;
pub mod operator;
pub mod qr;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Parses `30s`, `5m`, `2h`, `1d` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 5m, 2h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    Ok(Duration::from_secs(secs))
}

#[derive(Debug, Parser)]
#[command(
    name = "ternd",
    version,
    about = "Tern: a secure link between a control daemon and a fleet of nodes"
)]
pub struct Cli {
    /// The daemon's state directory (database, CA, operator socket).
    #[arg(long, env = "TERN_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Talk to a daemon elsewhere: its operator listener (`serve --operator-listen`),
    /// HOST:PORT. Needs --identity.
    #[arg(long, env = "TERN_REMOTE", global = true)]
    pub remote: Option<String>,
    /// The operator identity file for --remote (`ternd operator add` writes it).
    #[arg(long, env = "TERN_IDENTITY", global = true)]
    pub identity: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: QUIC and TCP + TLS listeners, the operator socket.
    Serve(ServeArgs),
    /// Pairing codes and requests.
    #[command(subcommand)]
    Pair(PairCommand),
    /// List the nodes.
    Nodes,
    /// One node (show), or this machine as a node (run, install, start, stop, ...).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Call a node's capability and wait for the result (the exit code tells the outcome).
    Call {
        node: String,
        capability: String,
        /// The input, as JSON.
        #[arg(long)]
        input: Option<String>,
        /// How long the call may take (30s, 2m, ...).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Past calls, newest first (by node, state, age); `calls show ID` for one.
    Calls(CallsArgs),
    /// Operator identities for remote operators and the web console.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Show events; `--follow` keeps streaming new ones.
    Events {
        #[arg(long)]
        node: Option<String>,
        /// Start at this event seq (0: from the oldest kept).
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, short)]
        follow: bool,
    },
    /// Revoke a node: its connections close now and it cannot connect again.
    Revoke {
        node: String,
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
    },
    /// The deployment's posture: listeners, mTLS, CA, pairing policy, node counts.
    Status,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CallsArgs {
    #[command(subcommand)]
    pub show: Option<CallsCommand>,
    /// Only this node's calls.
    #[arg(long)]
    pub node: Option<String>,
    /// Only calls in this state (succeeded, failed, timed_out, rejected, ...).
    #[arg(long)]
    pub state: Option<String>,
    /// Only calls made within this long (30m, 2h, 1d).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Most calls listed.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Issue an operator identity and write it to a file.
    Add {
        name: String,
        /// viewer (reads) or admin (also calls, pairs, approves, revokes).
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Where to write the identity (default: NAME.tern-operator.pem).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The operator identities, revoked ones included.
    List,
    /// Revoke an operator identity: its next request is refused.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum CallsCommand {
    /// One call's record: its state, its times, and when it timed out if the node
    /// answered afterwards.
    Show { id: u64 },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML settings file (default: ternd.toml in the state directory, if present).
    #[arg(long, env = "TERN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the state is kept: a postgres://USER:PASSWORD@HOST/DB URL shares it with
    /// other daemons; without one, SQLite in the state directory.
    #[arg(long, env = "TERN_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// This daemon's name among those sharing one store (default: host name and port).
    #[arg(long, env = "TERN_DAEMON_ID")]
    pub daemon_id: Option<String>,
    /// QUIC listen address (UDP), or "off".
    #[arg(long, env = "TERN_LISTEN_QUIC")]
    pub listen_quic: Option<String>,
    /// TCP + TLS listen address, or "off".
    #[arg(long, env = "TERN_LISTEN_TCP")]
    pub listen_tcp: Option<String>,
    /// Names and addresses nodes reach the daemon by (the server certificate's names);
    /// the first is put in pairing URIs. Comma-separated.
    #[arg(long, env = "TERN_PUBLIC_NAMES", value_delimiter = ',')]
    pub public_names: Option<Vec<String>>,
    /// Serve Prometheus metrics on this address (off by default).
    #[arg(long, env = "TERN_METRICS")]
    pub metrics: Option<SocketAddr>,
    /// Serve the operator API and the web console over TLS on this address, for
    /// operators elsewhere (`ternd operator add`); off by default.
    #[arg(long, env = "TERN_OPERATOR_LISTEN")]
    pub operator_listen: Option<SocketAddr>,
    /// Every pairing waits for an operator's approval.
    #[arg(long, env = "TERN_PAIRING_APPROVAL")]
    pub pairing_approval: Option<bool>,
    /// Cap on concurrent node connections per transport.
    #[arg(long, env = "TERN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Pairing starts one source address (an IPv6 /64) may make at once on each
    /// listener (default 5)...
    #[arg(long, env = "TERN_PAIRING_ADDRESS_BURST")]
    pub pairing_address_burst: Option<u32>,
    /// ...then one per this long (default 12s; 500ms, 12s, 1m, ...).
    #[arg(long, env = "TERN_PAIRING_ADDRESS_REFILL", value_parser = parse_duration)]
    pub pairing_address_refill: Option<Duration>,
    /// Pairing starts the whole daemon accepts at once, from all addresses (default 10)...
    #[arg(long, env = "TERN_PAIRING_BURST")]
    pub pairing_burst: Option<u32>,
    /// ...then one per this long (default 6s).
    #[arg(long, env = "TERN_PAIRING_REFILL", value_parser = parse_duration)]
    pub pairing_refill: Option<Duration>,
    /// How long a node connection may take to finish its TLS or QUIC handshake before it
    /// is cut (default 10s), e.g. 500ms, 10s.
    #[arg(long, env = "TERN_HANDSHAKE_TIMEOUT", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
}

#[derive(Debug, Subcommand)]
pub enum PairCommand {
    /// Mint a pairing code; prints the code and its tern:// URI.
    Code {
        /// How long the code lives (30s to 24h; default 10m).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// The pairing waits for `ternd pair approve`.
        #[arg(long)]
        approval: bool,
        /// Draw the URI as a QR code.
        #[arg(long)]
        qr: bool,
        /// The device id the node gets (default: chosen by the daemon).
        #[arg(long)]
        device_id: Option<String>,
    },
    /// Codes and pairing requests.
    List,
    /// Let a waiting pairing complete.
    Approve { code_id: u32 },
    /// Refuse a waiting pairing.
    Reject { code_id: u32 },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Show one node.
    Show { id: String },
    /// Run this machine as a node host.
    Run(node::RunArgs),
    /// Write the node host's configuration and systemd unit, and pair.
    Install(node::InstallArgs),
    /// Start the node host service.
    Start,
    /// Stop the node host service.
    Stop,
    /// Restart the node host service.
    Restart,
    /// The node host service's status.
    Status,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
