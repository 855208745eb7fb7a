//! `ternd node ...`: this machine as a node host.

use std::future::Future;
use std::io::{BufRead, IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chacha20::ChaCha20Rng;
use clap::Args;
use protocol_core::pairing::PairingCode;
use rand_core::SeedableRng;
use transport_tokio::JournalStore;
use transport_tokio::pairing::{PairError, PairOptions, PairingBundle, pair_uri, pair_with};

use super::NodeCommand;
use super::exit::{self, Exit};
use crate::node_host::addrs::{DaemonAddrs, check_addr, parse_addrs};
use crate::node_host::capabilities::{
    ApprovalRequest, OpenUrlOptions, Prompter, Registry, UrlPolicy,
};
use crate::node_host::identity::default_state_dir;
use crate::node_host::quic::QuicTarget;
use crate::node_host::renewal::{InstallCertificate, TlsSource, renew_when_due};
use crate::node_host::service::{
    InstallOptions, NodeConfigFile, ServiceAction, install, systemctl,
};
use crate::node_host::{Dialer, HostError, NodeHost, NodeHostConfig, NodeIdentity, TcpDialer};
use crate::store::SqliteStore;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A daemon's address, host:port (`[IPv6]:port`); repeat the flag or separate
    /// addresses with commas for several daemons sharing one store, CA and certificate.
    ///
    /// A name may resolve to several addresses. The node tries them all, from a random
    /// one, stays on the one that answers and moves on to the others when it fails;
    /// after a round in which none answered it waits (500 ms doubling to 30 s, with
    /// jitter). With --code, needed, and tried in turn until one answers; with --uri, the
    /// URI's address pairs and these are kept instead of it. The node keeps the
    /// addresses it was last given in its state directory and uses them when none is
    /// given.
    #[arg(
        long,
        env = "TERN_DAEMON",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub daemon: Vec<String>,
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
    /// Never fall back to TCP + TLS (default: QUIC first, then TCP + TLS).
    #[arg(long)]
    pub quic_only: bool,
    /// Use TCP + TLS only (networks that block UDP).
    #[arg(long, conflicts_with = "quic_only")]
    pub tcp_only: bool,
    /// Send a `health` event this often (seconds; 0 turns it off).
    #[arg(long, default_value_t = 60)]
    pub health_every: u64,
    /// Ask the daemon for a renewed certificate this many days before it expires.
    #[arg(long, default_value_t = 30)]
    pub renew_within_days: u64,
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

/// The node host's database (its outgoing stream's journal) in its state directory.
pub const NODE_DATABASE: &str = "node.db";

/// Runs a `ternd node ...` command other than `show`.
pub async fn run(command: NodeCommand) -> Result<(), Exit> {
    match command {
        NodeCommand::Run(args) => run_host(args).await,
        NodeCommand::Install(args) => install_host(args).await,
        NodeCommand::Start => service(ServiceAction::Start),
        NodeCommand::Stop => service(ServiceAction::Stop),
        NodeCommand::Restart => service(ServiceAction::Restart),
        NodeCommand::Status => service(ServiceAction::Status),
        NodeCommand::Show { .. } => Err(Exit::usage("`node show` talks to the daemon")),
    }
}

fn service(action: ServiceAction) -> Result<(), Exit> {
    let status = systemctl(action).map_err(|e| Exit::failure(e.to_string()))?;
    println!("tern-node: {}", status.state);
    if action == ServiceAction::Status && !status.is_active() {
        return Err(Exit {
            code: exit::FAILURE,
            message: None,
        });
    }
    Ok(())
}

/// Settings of one run, from the config file then the flags.
struct Resolved {
    state_dir: PathBuf,
    /// The daemon's addresses given (flags, else the config file); may be empty.
    daemons: Vec<String>,
    policy: UrlPolicy,
    opener: Option<Vec<String>>,
    heartbeat: Option<Duration>,
}

fn resolve(args: &RunArgs) -> Result<Resolved, Exit> {
    let file = match &args.config {
        Some(path) => Some(NodeConfigFile::load(path).map_err(|e| Exit::usage(e.to_string()))?),
        None => None,
    };
    let state_dir = match (&args.node_state_dir, &file) {
        (Some(d), _) => d.clone(),
        (None, Some(f)) => f.state_dir.clone(),
        (None, None) => default_state_dir().map_err(|e| Exit::failure(e.to_string()))?,
    };
    let policy = if args.allow_open_url {
        UrlPolicy::Allow
    } else if args.deny_open_url {
        UrlPolicy::Deny
    } else if let Some(f) = &file {
        f.url_policy
    } else if std::io::stdin().is_terminal() {
        UrlPolicy::Prompt
    } else {
        UrlPolicy::Deny
    };
    let every = file
        .as_ref()
        .and_then(|f| f.heartbeat_secs)
        .unwrap_or(args.health_every);
    let daemons = parse_addrs(&args.daemon).map_err(|e| Exit::usage(format!("--daemon: {e}")))?;
    let daemons = match &file {
        Some(f) if daemons.is_empty() => f.daemons.clone(),
        _ => daemons,
    };
    Ok(Resolved {
        state_dir,
        daemons,
        policy,
        opener: file.and_then(|f| f.opener),
        heartbeat: (every > 0).then(|| Duration::from_secs(every)),
    })
}

fn rng() -> Result<ChaCha20Rng, Exit> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Exit::failure(e.to_string()))?;
    Ok(ChaCha20Rng::from_seed(seed))
}

fn pair_exit(e: &PairError) -> Exit {
    let code = match e {
        PairError::Unreachable(_) => exit::NOT_RUNNING,
        PairError::Rejected => exit::REJECTED,
        PairError::WrongCode
        | PairError::UnknownCode
        | PairError::AlreadyUsed
        | PairError::Expired => exit::NOT_FOUND,
        PairError::TimedOut | PairError::ApprovalTimedOut => exit::TIMEOUT,
        PairError::BadUri(_) => exit::USAGE,
        _ => exit::FAILURE,
    };
    Exit::new(code, format!("pairing failed: {e}"))
}

/// Longest wait for the daemon's pairing limit before trying again.
const MAX_PAIRING_WAIT: Duration = Duration::from_secs(600);

/// Waits out the daemon's pairing limit before the next try: a fleet pairing behind one
/// address meets the limit without failing. The code's lifetime still bounds the tries
/// (an expired code is final).
async fn wait_out_limit(retry_after: Duration) {
    let wait = retry_after.clamp(Duration::from_secs(1), MAX_PAIRING_WAIT);
    eprintln!(
        "the daemon limits pairing starts; trying again in {} s",
        wait.as_secs()
    );
    tokio::time::sleep(wait).await;
}

/// Pairs with `code` at the first of `daemons` that answers (a name's addresses in
/// turn); says which.
async fn pair_code(
    options: &PairOptions,
    daemons: &[String],
    code: &PairingCode,
    csr: &[u8],
    rng: &mut ChaCha20Rng,
) -> Result<(PairingBundle, String), Exit> {
    let mut unreachable = Vec::new();
    for daemon in daemons {
        let addrs = match tokio::net::lookup_host(daemon.as_str()).await {
            Ok(addrs) => addrs,
            Err(e) => {
                unreachable.push(format!("cannot resolve {daemon}: {e}"));
                continue;
            }
        };
        for addr in addrs {
            loop {
                match pair_with(options, addr, code, csr, None, rng).await {
                    Err(PairError::RateLimited { retry_after }) => {
                        wait_out_limit(retry_after).await
                    }
                    // Nothing reached the daemon: the code is not spent, try the next.
                    Err(PairError::Unreachable(e)) => {
                        unreachable.push(format!("{daemon} ({addr}): {e}"));
                        break;
                    }
                    Err(e) => return Err(pair_exit(&e)),
                    Ok(bundle) => return Ok((bundle, daemon.clone())),
                }
            }
        }
    }
    Err(Exit::new(
        exit::NOT_RUNNING,
        format!(
            "pairing failed: no daemon answered: {}",
            unreachable.join("; ")
        ),
    ))
}

/// Pairs the identity in `state_dir` if it is not paired yet; keeps the daemon addresses
/// given, if any, in a paired one.
async fn ensure_paired(args: &RunArgs, resolved: &Resolved) -> Result<NodeIdentity, Exit> {
    let mut identity = NodeIdentity::load_or_create(&resolved.state_dir, None).map_err(|e| {
        Exit::failure(format!(
            "node identity in {}: {e}",
            resolved.state_dir.display()
        ))
    })?;
    if identity.paired().is_some() {
        if !resolved.daemons.is_empty()
            && identity
                .set_daemons(&resolved.daemons)
                .map_err(|e| Exit::failure(format!("saving the daemon addresses: {e}")))?
        {
            eprintln!("daemon addresses now {}", resolved.daemons.join(", "));
        }
        return Ok(identity);
    }
    let csr = identity
        .csr_der()
        .map_err(|e| Exit::failure(e.to_string()))?;
    let mut rng = rng()?;
    let options = PairOptions {
        on_awaiting_approval: Some(Arc::new(|| {
            eprintln!("waiting for the operator to approve this pairing (ternd pair approve)...");
        })),
        ..PairOptions::default()
    };
    let (bundle, paired_at, daemons) = match (&args.uri, &args.code) {
        (Some(uri), _) => {
            let parsed = protocol_core::pairing::PairingUri::parse(uri)
                .map_err(|e| Exit::usage(format!("bad pairing URI: {e:?}")))?;
            let daemons = if resolved.daemons.is_empty() {
                // Checked before the code is spent on a pairing that could not be kept.
                check_addr(parsed.addr)
                    .map_err(|e| Exit::usage(format!("the pairing URI's address: {e}")))?;
                vec![parsed.addr.to_owned()]
            } else {
                resolved.daemons.clone()
            };
            let bundle = loop {
                match pair_uri(&options, uri, &csr, &mut rng).await {
                    Err(PairError::RateLimited { retry_after }) => {
                        wait_out_limit(retry_after).await
                    }
                    other => break other.map_err(|e| pair_exit(&e))?,
                }
            };
            (bundle, parsed.addr.to_owned(), daemons)
        }
        (None, Some(code)) => {
            if resolved.daemons.is_empty() {
                return Err(Exit::usage("--code needs --daemon ADDR"));
            }
            let code = PairingCode::parse(code)
                .map_err(|e| Exit::usage(format!("bad pairing code: {e:?}")))?;
            let (bundle, at) =
                pair_code(&options, &resolved.daemons, &code, &csr, &mut rng).await?;
            (bundle, at, resolved.daemons.clone())
        }
        (None, None) => {
            return Err(Exit::usage(
                "this node is not paired: give --uri tern://... or --code CODE --daemon ADDR",
            ));
        }
    };
    identity
        .install_pairing(&bundle, &daemons)
        .map_err(|e| Exit::failure(format!("saving the pairing: {e}")))?;
    eprintln!(
        "paired as {} with the daemon at {paired_at}; daemon addresses {}",
        identity.device_id(),
        daemons.join(", ")
    );
    Ok(identity)
}

/// Asks on the terminal.
struct TerminalPrompter;

impl Prompter for TerminalPrompter {
    fn confirm(&self, request: ApprovalRequest) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                eprint!("{} [y/N] ", request.question);
                let _ = std::io::stderr().flush();
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).is_ok()
                    && matches!(line.trim(), "y" | "Y" | "yes")
            })
            .await
            .unwrap_or(false)
        })
    }
}

fn host_exit(e: &HostError) -> Exit {
    let code = match e {
        HostError::Revoked => exit::REJECTED,
        HostError::Unauthorized(_) => exit::PERMISSION_DENIED,
        HostError::VersionMismatch { .. } => exit::CONTRACT_MISMATCH,
        _ => exit::FAILURE,
    };
    Exit::new(code, e.to_string())
}

async fn run_host(args: RunArgs) -> Result<(), Exit> {
    let resolved = resolve(&args)?;
    let identity = ensure_paired(&args, &resolved).await?;
    let store = Arc::new(
        SqliteStore::open(&resolved.state_dir.join(NODE_DATABASE))
            .map_err(|e| Exit::failure(format!("node journal: {e}")))?,
    );
    let mut config = NodeHostConfig::new(identity.device_id());
    config.heartbeat = resolved.heartbeat;
    let restored = store
        .load_journal(&config.journal_key)
        .map_err(|e| Exit::failure(format!("node journal: {e}")))?;
    let mut options = OpenUrlOptions {
        policy: resolved.policy,
        prompter: (resolved.policy == UrlPolicy::Prompt)
            .then(|| Arc::new(TerminalPrompter) as Arc<dyn Prompter>),
        ..OpenUrlOptions::default()
    };
    if let Some(opener) = resolved.opener {
        options.opener = opener;
    }
    let names = identity
        .paired()
        .map(|p| p.daemons.clone())
        .unwrap_or_default();
    let shown = names.join(",");
    // One list for both transports: the address that answered over one is tried first
    // over the other too.
    let daemons = Arc::new(DaemonAddrs::new(names));
    let device_id = identity.device_id().to_owned();
    let tls = TlsSource::new(
        identity
            .client_config()
            .map_err(|e| Exit::failure(e.to_string()))?,
    );
    let identity = Arc::new(std::sync::Mutex::new(identity));
    let mut registry = Registry::builtin(options);
    registry
        .add(InstallCertificate::new(identity.clone(), tls.clone()))
        .map_err(|e| Exit::failure(e.to_string()))?;
    let registry = Arc::new(registry);
    // QUIC first, at the daemon's addresses (UDP, same port); TCP + TLS where allowed.
    if !args.tcp_only {
        config.quic = Some(QuicTarget {
            daemons: daemons.clone(),
            tls: tls.clone(),
        });
    }
    let mut dialers: Vec<Arc<dyn Dialer>> = Vec::new();
    if !args.quic_only {
        dialers.push(Arc::new(TcpDialer::from_source(tls, daemons)));
    }
    let journal: Arc<dyn JournalStore> = store;
    let (host, handle) = NodeHost::new(config, registry, dialers, journal, restored);
    tracing::info!(node = %device_id, daemons = %shown, "node host running");
    tokio::spawn(renew_when_due(
        identity,
        handle.clone(),
        Duration::from_secs(args.renew_within_days.saturating_mul(86_400)),
    ));
    let stop = handle.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.shutdown();
    });
    host.run().await.map_err(|e| host_exit(&e))
}

async fn install_host(args: InstallArgs) -> Result<(), Exit> {
    let resolved = resolve(&args.run)?;
    let identity = ensure_paired(&args.run, &resolved).await?;
    let daemons = identity
        .paired()
        .map(|p| p.daemons.clone())
        .ok_or_else(|| Exit::failure("the node is not paired"))?;
    let config = NodeConfigFile {
        daemons,
        state_dir: absolute(&resolved.state_dir)?,
        url_policy: if resolved.policy == UrlPolicy::Prompt {
            // A service has no terminal to ask on.
            UrlPolicy::Deny
        } else {
            resolved.policy
        },
        opener: resolved.opener,
        heartbeat_secs: Some(resolved.heartbeat.map_or(0, |d| d.as_secs())),
    };
    let mut options = InstallOptions::new().map_err(|e| Exit::failure(e.to_string()))?;
    options.unit_dir = args.unit_dir;
    options.config_path = absolute(&args.config_path)?;
    let installed = install(&config, &options).map_err(|e| Exit::failure(e.to_string()))?;
    println!("wrote {}", installed.config_path.display());
    println!("wrote {}", installed.unit_path.display());
    println!("start it with: systemctl daemon-reload && systemctl enable --now tern-node");
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, Exit> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    std::env::current_dir()
        .map(|d| d.join(path))
        .map_err(|e| Exit::failure(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Run {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(given: &[&str]) -> RunArgs {
        let all = ["run", "--node-state-dir", "/nonexistent/state"]
            .iter()
            .chain(given)
            .copied();
        Run::try_parse_from(all).unwrap().run
    }

    #[test]
    fn daemon_addresses_repeat_split_on_commas_and_are_checked() {
        let run = args(&[
            "--daemon",
            "a.example:7443,b.example:7443",
            "--daemon",
            "[::1]:7443",
            "--daemon",
            "a.example:7443",
        ]);
        let resolved = resolve(&run).map_err(|e| e.message).unwrap();
        assert_eq!(
            resolved.daemons,
            ["a.example:7443", "b.example:7443", "[::1]:7443"]
        );
        assert!(resolve(&args(&[])).is_ok_and(|r| r.daemons.is_empty()));
        for bad in ["a.example", "a.example:7443,", "::1:7443", "a.example:0"] {
            let e = resolve(&args(&["--daemon", bad])).err();
            assert_eq!(e.map(|e| e.code), Some(exit::USAGE), "{bad}");
        }
    }

    #[test]
    fn the_config_files_addresses_unless_flags_name_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let text = "daemons = [\"a.example:7443\", \"b.example:7443\"]\nstate_dir = \"/s\"\n";
        std::fs::write(&path, text).unwrap();
        let config = path.to_str().unwrap();
        let daemons = |given: &[&str]| {
            resolve(&args(given))
                .map(|r| r.daemons)
                .map_err(|e| e.message)
        };
        assert_eq!(
            daemons(&["--config", config]),
            Ok(vec![
                "a.example:7443".to_owned(),
                "b.example:7443".to_owned()
            ])
        );
        assert_eq!(
            daemons(&["--config", config, "--daemon", "c.example:7443"]),
            Ok(vec!["c.example:7443".to_owned()])
        );
    }
}
