//! The node host over QUIC: its session and application are lent to a QUIC client
//! endpoint for one connection at a time, and come back when it ends. An attempt tries
//! the daemon's addresses in the order [`DaemonAddrs::round`] gives, each with its own
//! endpoint and [`QUIC_PROBE`] to finish its handshake, until one answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::AlertDescription;
use tokio::sync::{mpsc, watch};
use transport_tokio::host::{Closed, Commands, Opened, Peer, Refusal, Sessions, close_code};
use transport_tokio::quic::{ConnectError, QuicEndpoint, QuicHandle, QuicLimits};
use transport_tokio::{JournalStore, StoragePool};

use super::addrs::DaemonAddrs;
use super::connect::HostError;
use super::runtime::{HostApp, HostCommand, HostSession};
use protocol_core::wire::ErrorCode;

/// How long a QUIC handshake may take before the next address, then TCP, is tried (UDP
/// may be blocked, and a daemon that is down does not answer).
pub const QUIC_PROBE: Duration = Duration::from_secs(3);

/// Where the daemon's QUIC endpoints are, and the node's TLS settings for them.
#[derive(Clone)]
pub struct QuicTarget {
    /// The daemon's addresses, resolved at every attempt; shared with the TCP dialer so
    /// both try the one that answered last first.
    pub daemons: Arc<DaemonAddrs>,
    /// Read at every attempt (a renewed certificate replaces it).
    pub tls: super::renewal::TlsSource,
}

impl std::fmt::Debug for QuicTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTarget")
            .field("daemons", &self.daemons.names())
            .finish_non_exhaustive()
    }
}

type Lent = Arc<Mutex<Option<(HostSession, HostApp)>>>;

/// The node's one session, lent to the endpoint while a connection lives.
struct Lend {
    held: Lent,
    key: Arc<str>,
    closed: mpsc::UnboundedSender<Closed>,
    /// The host's own command queue, for commands that reached a connection too late.
    requeue: mpsc::Sender<HostCommand>,
}

impl Sessions<HostSession> for Lend {
    type App = HostApp;

    fn open(
        &mut self,
        _: &Peer,
        _: Commands<HostCommand>,
    ) -> Result<Opened<HostSession, HostApp>, Refusal> {
        let (session, app) = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| Refusal::new(ErrorCode::Internal, "the session is in use"))?;
        Ok(Opened {
            session,
            app,
            journal_key: self.key.clone(),
        })
    }

    fn closed(&mut self, _: &Peer, session: HostSession, app: HostApp, how: Closed) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some((session, app));
        let _ = self.closed.send(how);
    }

    fn undelivered(&mut self, command: HostCommand) {
        // Answers and events are never dropped: the next connection takes them. The
        // queue is the host's own, which the loop drains into each connection.
        if let Err(e) = self.requeue.try_send(command) {
            let command = e.into_inner();
            let requeue = self.requeue.clone();
            tokio::spawn(async move {
                let _ = requeue.send(command).await;
            });
        }
    }
}

/// The node's QUIC path: a client endpoint per connection attempt (bound to the
/// daemon's address family), carrying the session lent to it.
pub(crate) struct QuicLink {
    target: QuicTarget,
    store: Arc<dyn JournalStore>,
    key: Arc<str>,
    pool: StoragePool,
    requeue: mpsc::Sender<HostCommand>,
}

/// How one QUIC attempt went.
pub(crate) enum Attempt {
    /// No connection came up (UDP blocked, daemon down): try TCP or wait.
    NotConnected,
    /// A connection ran and ended.
    Ended(Closed),
    /// The daemon will keep refusing this node.
    Fatal(HostError),
    /// The host is shutting down.
    Shutdown,
}

impl QuicLink {
    pub(crate) fn new(
        target: QuicTarget,
        store: Arc<dyn JournalStore>,
        key: &str,
        pool: StoragePool,
        requeue: mpsc::Sender<HostCommand>,
    ) -> Self {
        Self {
            target,
            store,
            key: key.into(),
            pool,
            requeue,
        }
    }

    /// Lends the session and application for one QUIC connection, forwarding the
    /// host's commands to it, and takes them back when it ends.
    pub(crate) async fn attempt(
        &mut self,
        session: HostSession,
        app: HostApp,
        commands: &mut mpsc::Receiver<HostCommand>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(HostSession, HostApp, Attempt), HostError> {
        let held: Lent = Arc::new(Mutex::new(Some((session, app))));
        let outcome = self.run(&held, commands, shutdown).await;
        // The endpoint gives the pair back when its connection ends, shutdown included.
        let back = held.lock().unwrap_or_else(PoisonError::into_inner).take();
        back.map(|(session, app)| (session, app, outcome))
            .ok_or(HostError::Lost(
                "the QUIC endpoint did not give the session back",
            ))
    }

    /// Tries the addresses in turn until a connection comes up (and then runs it).
    async fn run(
        &mut self,
        held: &Lent,
        commands: &mut mpsc::Receiver<HostCommand>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Attempt {
        let round = match self.target.daemons.round().await {
            Ok(round) => round,
            Err(e) => {
                tracing::debug!(error = %e, "no daemon address resolves");
                return Attempt::NotConnected;
            }
        };
        for addr in round {
            if *shutdown.borrow() {
                return Attempt::Shutdown;
            }
            match self.run_at(addr, held, commands, shutdown).await {
                Attempt::NotConnected => {
                    tracing::debug!(%addr, "no QUIC connection");
                }
                other => return other,
            }
        }
        Attempt::NotConnected
    }

    /// One connection attempt to `addr`, from an endpoint of its address family.
    async fn run_at(
        &mut self,
        addr: SocketAddr,
        held: &Lent,
        commands: &mut mpsc::Receiver<HostCommand>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Attempt {
        let bind: SocketAddr = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let (closed_tx, mut closed) = mpsc::unbounded_channel();
        let lend = Lend {
            held: held.clone(),
            key: self.key.clone(),
            closed: closed_tx,
            requeue: self.requeue.clone(),
        };
        let limits = QuicLimits {
            handshake_timeout: QUIC_PROBE,
            ..QuicLimits::default()
        };
        let Ok((handle, task)) =
            QuicEndpoint::client(bind, limits, lend, self.store.clone(), self.pool.clone())
        else {
            return Attempt::NotConnected;
        };
        let outcome = drive(&handle, addr, &self.target, &mut closed, commands, shutdown).await;
        // Sessions go back through `closed` before the task ends; wait for it.
        handle.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        outcome
    }
}

async fn drive(
    handle: &QuicHandle<HostCommand>,
    addr: SocketAddr,
    target: &QuicTarget,
    closed: &mut mpsc::UnboundedReceiver<Closed>,
    commands: &mut mpsc::Receiver<HostCommand>,
    shutdown: &mut watch::Receiver<bool>,
) -> Attempt {
    // The endpoint closes a handshake at its deadline but answers only once the closed
    // connection has drained, seconds later: move on at the deadline. A connection that
    // came up meanwhile is closed by the shutdown that follows, its session given back.
    let connect = tokio::time::timeout(QUIC_PROBE, handle.connect(addr, "tern", target.tls.get()));
    let conn = match connect.await {
        Err(_) => return Attempt::NotConnected,
        Ok(Ok(c)) => c,
        Ok(Err(ConnectError::Handshake(how))) => {
            return fatal_handshake(&how).map_or(Attempt::NotConnected, Attempt::Fatal);
        }
        Ok(Err(ConnectError::EndpointGone)) => return Attempt::NotConnected,
    };
    target.daemons.answered(addr);
    tracing::info!(%addr, "connected over QUIC");
    let to = handle.commands(conn);
    loop {
        tokio::select! {
            how = closed.recv() => {
                return match how {
                    Some(how) => fatal_close_code(&how).map_or(Attempt::Ended(how), Attempt::Fatal),
                    None => Attempt::Shutdown,
                };
            }
            command = commands.recv() => match command {
                Some(c) => {
                    if to.send(c).await.is_err() {
                        return Attempt::Shutdown;
                    }
                }
                None => return Attempt::Shutdown,
            },
            () = stopped(shutdown) => {
                // The shutdown command went ahead of this; give the goodbye a moment.
                while let Ok(c) = commands.try_recv() {
                    let _ = to.send(c).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), closed.recv()).await;
                return Attempt::Shutdown;
            }
        }
    }
}

/// A handshake failure that will not heal, by the TLS alert and who raised it.
fn fatal_handshake(how: &Closed) -> Option<HostError> {
    match how {
        Closed::Tls {
            alert,
            by_peer: true,
            ..
        } => super::connect::refused_by_daemon(*alert),
        // Our verifier refused the daemon's certificate: not the pinned one.
        Closed::Tls {
            alert:
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::DecryptError,
            by_peer: false,
            ..
        } => Some(HostError::PinMismatch),
        _ => None,
    }
}

/// A close from the daemon that will not heal.
fn fatal_close_code(how: &Closed) -> Option<HostError> {
    match how {
        Closed::ByPeer { code, .. } if *code == u64::from(close_code(&ErrorCode::Revoked)) => {
            Some(HostError::Revoked)
        }
        Closed::ByPeer { code, reason }
            if *code == u64::from(close_code(&ErrorCode::Unauthorized)) =>
        {
            Some(HostError::Unauthorized(reason.clone()))
        }
        // Under TLS 1.3 the client's side of the handshake ends first: the daemon's
        // refusal of the node's certificate arrives as the connection's loss.
        how @ Closed::Tls { .. } => fatal_handshake(how),
        _ => None,
    }
}

/// Resolves when the host is told to stop (holding no borrow of the flag).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}
