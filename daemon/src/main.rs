//! `ternd`: the daemon, the operator's CLI and the Linux node host, in one binary.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use daemon::cli::exit::Exit;
use daemon::cli::operator::{self, Style};
use daemon::cli::{Cli, Command, NodeCommand, PairCommand, ServeArgs};
use daemon::serve::settings::{CONFIG_NAME, Settings, default_state_dir, parse_listen};

// glibc's malloc kept the peak of a handshake burst resident (an idle fleet of 3,000
// measured 267 KiB per node, 40 of them live); jemalloc, configured in
// `.cargo/config.toml` to purge freed pages after a second, returns to what is held.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ternd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            if let Some(message) = exit.message {
                eprintln!("ternd: {message}");
            }
            ExitCode::from(u8::try_from(exit.code).unwrap_or(1))
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), Exit> {
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let socket = match (&cli.remote, &cli.identity) {
        (Some(addr), Some(file)) => daemon::api::Endpoint::Remote {
            addr: addr.clone(),
            identity: daemon::api::identity::IdentityFile::read(file)
                .map_err(|e| Exit::usage(e.to_string()))?,
        },
        (Some(_), None) => {
            return Err(Exit::usage(
                "--remote needs --identity FILE (an identity from `ternd operator add`)",
            ));
        }
        (None, _) => daemon::api::Endpoint::Unix(state_dir.join(daemon::api::SOCKET_NAME)),
    };
    let style = if cli.json { Style::Json } else { Style::Table };
    match cli.command {
        Command::Serve(args) => serve(state_dir, args).await,
        Command::Status => operator::status(&socket, style).await,
        Command::Pair(PairCommand::Code {
            ttl,
            approval,
            qr,
            device_id,
        }) => operator::pair_code(&socket, style, ttl, approval, qr, device_id).await,
        Command::Pair(PairCommand::List) => operator::pair_list(&socket, style).await,
        Command::Pair(PairCommand::Approve { code_id }) => {
            operator::pair_decide(&socket, style, code_id, true).await
        }
        Command::Pair(PairCommand::Reject { code_id }) => {
            operator::pair_decide(&socket, style, code_id, false).await
        }
        Command::Nodes => operator::nodes(&socket, style).await,
        Command::Node(NodeCommand::Show { id }) => operator::node_show(&socket, style, &id).await,
        Command::Node(cmd) => daemon::cli::node::run(cmd).await,
        Command::Calls(daemon::cli::CallsArgs {
            show: Some(daemon::cli::CallsCommand::Show { id }),
            ..
        }) => operator::call_show(&socket, style, id).await,
        Command::Calls(args) => {
            operator::calls_list(
                &socket, style, args.node, args.state, args.since, args.limit,
            )
            .await
        }
        Command::Operator(daemon::cli::OperatorCommand::Add { name, role, out }) => {
            operator::operator_add(&socket, style, &name, &role, out.as_deref()).await
        }
        Command::Operator(daemon::cli::OperatorCommand::List) => {
            operator::operator_list(&socket, style).await
        }
        Command::Operator(daemon::cli::OperatorCommand::Revoke { name }) => {
            operator::operator_revoke(&socket, style, &name).await
        }
        Command::Call {
            node,
            capability,
            input,
            timeout,
        } => {
            operator::call(
                &socket,
                style,
                &node,
                &capability,
                input.as_deref(),
                timeout,
            )
            .await
        }
        Command::Events { node, from, follow } => {
            operator::events(&socket, style, node, from, follow).await
        }
        Command::Revoke { node, reason } => operator::revoke(&socket, style, &node, &reason).await,
    }
}

async fn serve(state_dir: std::path::PathBuf, args: ServeArgs) -> Result<(), Exit> {
    let mut settings = Settings::defaults(state_dir.clone());
    let file = args.config.clone().or_else(|| {
        let p = state_dir.join(CONFIG_NAME);
        p.exists().then_some(p)
    });
    if let Some(file) = file {
        settings.apply_file(&file).map_err(Exit::usage)?;
    }
    if let Some(v) = &args.store {
        settings.store = Some(daemon::store::StoreLocation::parse(v).map_err(Exit::usage)?);
    }
    if let Some(v) = args.daemon_id.clone() {
        settings.daemon_id = Some(v);
    }
    if let Some(v) = &args.listen_quic {
        settings.listen_quic = parse_listen(v).map_err(Exit::usage)?;
    }
    if let Some(v) = &args.listen_tcp {
        settings.listen_tcp = parse_listen(v).map_err(Exit::usage)?;
    }
    if let Some(v) = args.public_names {
        settings.public_names = v;
    }
    if let Some(v) = args.operator_listen {
        settings.operator_listen = Some(v);
    }
    if let Some(v) = args.metrics {
        settings.metrics = Some(v);
    }
    if let Some(v) = args.pairing_approval {
        settings.pairing.approval_required = v;
    }
    if let Some(v) = args.max_connections {
        settings.max_connections = v;
    }
    if let Some(v) = args.pairing_address_burst {
        settings.pairing.address_burst = v;
    }
    if let Some(v) = args.pairing_address_refill {
        settings.pairing.address_refill = v;
    }
    if let Some(v) = args.pairing_burst {
        settings.pairing.starts_burst = v;
    }
    if let Some(v) = args.pairing_refill {
        settings.pairing.starts_refill = v;
    }
    settings.pairing.check().map_err(Exit::usage)?;
    if let Some(v) = args.handshake_timeout {
        settings.handshake_timeout = v;
    }
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    daemon::serve::run(settings, shutdown)
        .await
        .map_err(|e| Exit::failure(e.to_string()))
}
