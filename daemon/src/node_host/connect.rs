//! The node host's connection loop.
//!
//! One journaled `NodeSession` lives for the whole run (restored from the journal the
//! store held at start) and is driven over one connection after another: dial (each
//! [`Dialer`] in turn, QUIC first where one is configured, TCP + TLS where allowed; each
//! tries every address of the daemon, see [`super::addrs`]), run the driver until the
//! connection ends, wait an exponential backoff with full jitter (started over once a
//! session came up) after a round in which no address answered, dial again and resume
//! the same session. A refusal that will not heal (the node was revoked, its identity is
//! refused, the daemon is not the pinned one, no common protocol version) ends the loop
//! with a typed [`HostError`] instead.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use node_contract::names::HEALTH_EVENT;
// The node's reconnection delays, shared with the microcontroller transport.
pub use protocol_core::backoff::Backoff;
use protocol_core::session::{CloseReason, Config, MemJournal, NodeSession, SetupError};
use protocol_core::wire::{ErrorCode, GoodbyeReason, VersionRange};
use rustls::AlertDescription;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use transport_tokio::host::TransportKind;
use transport_tokio::tcp::Connector;
use transport_tokio::{Driver, Ended, Journal, JournalStore, StoragePool};

use super::addrs::DaemonAddrs;
use super::capabilities::{Registry, read_health};
use super::identity::{IdentityError, NodeIdentity};
use super::runtime::{HostApp, HostSession, NodeHandle};

/// A byte stream to the daemon, authenticated both ways.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

/// A boxed connection to the daemon.
pub type Stream = Box<dyn AsyncStream>;

/// The future a [`Dialer`] returns.
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send + 'a>>;

/// One way to reach the daemon. The loop tries its dialers in order at every attempt.
pub trait Dialer: Send + Sync {
    fn kind(&self) -> TransportKind;

    /// Opens a connection to the daemon with the node's identity. TLS failures come
    /// back as `io::Error`s carrying the `rustls::Error`.
    fn dial(&self) -> DialFuture<'_>;
}

/// TCP + TLS to the daemon's addresses, resolved at every dial and tried in the order
/// [`DaemonAddrs::round`] gives; the one that answers is tried first from then on.
#[derive(Debug, Clone)]
pub struct TcpDialer {
    connector: Connector,
    /// When set, the TLS configuration is read from here at every dial (it changes
    /// when a renewed certificate is installed).
    source: Option<super::renewal::TlsSource>,
    daemons: Arc<DaemonAddrs>,
}

impl TcpDialer {
    pub fn new(connector: Connector, daemons: Arc<DaemonAddrs>) -> Self {
        Self {
            connector,
            source: None,
            daemons,
        }
    }

    /// Dials with whatever configuration `source` holds at the time.
    pub fn from_source(source: super::renewal::TlsSource, daemons: Arc<DaemonAddrs>) -> Self {
        Self {
            connector: Connector::new(source.get()),
            source: Some(source),
            daemons,
        }
    }

    /// The dialer a paired identity describes: its certificate, the pinned daemon and
    /// its addresses.
    pub fn from_identity(identity: &NodeIdentity) -> Result<Self, IdentityError> {
        let paired = identity.paired().ok_or(IdentityError::NotPaired)?;
        Ok(Self::new(
            Connector::new(identity.client_config()?),
            Arc::new(DaemonAddrs::new(paired.daemons.clone())),
        ))
    }
}

impl Dialer for TcpDialer {
    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    fn dial(&self) -> DialFuture<'_> {
        Box::pin(async move {
            let connector = match &self.source {
                Some(source) => Connector::new(source.get()),
                None => self.connector.clone(),
            };
            let mut last = None;
            for addr in self.daemons.round().await? {
                match connector.connect(addr).await {
                    Ok(stream) => {
                        self.daemons.answered(addr);
                        tracing::info!(%addr, "connected over TCP + TLS");
                        return Ok(Box::new(stream) as Stream);
                    }
                    Err(e) if fatal_io(&e).is_some() => return Err(e),
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "TCP + TLS dial failed");
                        last = Some(e);
                    }
                }
            }
            Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)))
        })
    }
}

/// Why the node host stopped for good.
#[derive(Debug)]
pub enum HostError {
    /// The daemon revoked this node: pair again.
    Revoked,
    /// The daemon refuses this node's identity.
    Unauthorized(String),
    /// The daemon's certificate is not the one pinned at pairing.
    PinMismatch,
    /// The daemon speaks no protocol version this node does.
    VersionMismatch {
        node: VersionRange,
        daemon: VersionRange,
    },
    /// No dialer is configured.
    NoTransport,
    /// The session could not be built or restored from the journal.
    Session(SetupError),
    /// The node's identity is not usable.
    Identity(IdentityError),
    /// The session was lost inside the process (a transport task ended abnormally).
    Lost(&'static str),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Revoked => f.write_str("the daemon revoked this node; pair it again"),
            HostError::Unauthorized(why) => {
                write!(f, "the daemon refuses this node's identity: {why}")
            }
            HostError::PinMismatch => f.write_str(
                "the daemon's certificate is not the one pinned at pairing; pair again if it changed",
            ),
            HostError::VersionMismatch { node, daemon } => write!(
                f,
                "no common protocol version: node speaks {}-{}, daemon {}-{}",
                node.min, node.max, daemon.min, daemon.max
            ),
            HostError::NoTransport => f.write_str("no transport configured"),
            HostError::Session(e) => write!(f, "session setup: {e:?}"),
            HostError::Identity(e) => write!(f, "{e}"),
            HostError::Lost(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for HostError {}

impl From<IdentityError> for HostError {
    fn from(e: IdentityError) -> Self {
        HostError::Identity(e)
    }
}

/// An I/O error that says the daemon will keep refusing us.
pub fn fatal_io(e: &io::Error) -> Option<HostError> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::AlertReceived(alert) => refused_by_daemon(*alert),
        // Our own verifier refused the daemon's certificate: not the pinned one.
        rustls::Error::InvalidCertificate(_) => Some(HostError::PinMismatch),
        _ => None,
    }
}

/// A TLS alert from the daemon that says it will keep refusing this node's certificate.
pub(crate) fn refused_by_daemon(alert: AlertDescription) -> Option<HostError> {
    match alert {
        AlertDescription::CertificateRevoked => Some(HostError::Revoked),
        AlertDescription::BadCertificate
        | AlertDescription::UnknownCA
        | AlertDescription::CertificateUnknown
        | AlertDescription::CertificateExpired
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::AccessDenied => {
            Some(HostError::Unauthorized(format!("TLS alert {alert:?}")))
        }
        _ => None,
    }
}

/// A connection's end that says the daemon will keep refusing us.
pub fn fatal_close(reason: CloseReason) -> Option<HostError> {
    match reason {
        CloseReason::PeerError(ErrorCode::Revoked) | CloseReason::Peer(GoodbyeReason::Revoked) => {
            Some(HostError::Revoked)
        }
        CloseReason::PeerError(ErrorCode::Unauthorized) => Some(HostError::Unauthorized(
            "the daemon answered Unauthorized".to_owned(),
        )),
        CloseReason::PeerError(ErrorCode::VersionMismatch { client, server }) => {
            Some(HostError::VersionMismatch {
                node: client,
                daemon: server,
            })
        }
        _ => None,
    }
}

/// Settings of a node host.
#[derive(Debug, Clone)]
pub struct NodeHostConfig {
    /// The device id (the certificate's subject).
    pub node_id: String,
    /// What the node runs on, e.g. `linux-x86_64`.
    pub platform: String,
    /// The session's configuration; must be journaled (`Config::server`).
    pub session: Config,
    pub backoff: Backoff,
    /// A `health` event this often; none with `None`.
    pub heartbeat: Option<Duration>,
    /// The filesystem the heartbeat reports on.
    pub health_path: PathBuf,
    /// Whose journal in the store.
    pub journal_key: String,
    /// Commands (handler answers, host events) queued for the connection at once.
    pub command_queue: usize,
    /// Host events waiting for room in the session at once.
    pub event_queue: usize,
    /// Tried first at every attempt when set; the dialers (TCP + TLS) after it.
    pub quic: Option<super::quic::QuicTarget>,
}

impl NodeHostConfig {
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            platform: format!("linux-{}", std::env::consts::ARCH),
            session: Config::server(64 * 1024),
            backoff: Backoff::default(),
            heartbeat: Some(Duration::from_secs(60)),
            health_path: PathBuf::from("/"),
            journal_key: node_id.to_owned(),
            command_queue: 64,
            event_queue: 64,
            quic: None,
        }
    }
}

/// The node host: build it with [`NodeHost::new`], keep the [`NodeHandle`], and
/// [`run`](NodeHost::run) it.
pub struct NodeHost {
    config: NodeHostConfig,
    dialers: Vec<Arc<dyn Dialer>>,
    journal: Journal,
    restored: MemJournal,
    app: HostApp,
    commands: tokio::sync::mpsc::Receiver<super::runtime::HostCommand>,
    handle: NodeHandle,
}

impl fmt::Debug for NodeHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeHost")
            .field("config", &self.config)
            .field("dialers", &self.dialers.len())
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl NodeHost {
    /// A node host answering with `registry`, reaching the daemon through `dialers` (in
    /// order), committing its journal to `store` and resuming from `restored` (what the
    /// store held for `config.journal_key` at start; empty for a first run).
    pub fn new(
        config: NodeHostConfig,
        registry: Arc<Registry>,
        dialers: Vec<Arc<dyn Dialer>>,
        store: Arc<dyn JournalStore>,
        restored: MemJournal,
    ) -> (Self, NodeHandle) {
        let (app, commands, handle) =
            HostApp::new(registry, config.command_queue, config.event_queue);
        let journal = Journal::new(store, config.journal_key.as_str());
        let host = Self {
            config,
            dialers,
            journal,
            restored,
            app,
            commands,
            handle: handle.clone(),
        };
        (host, handle)
    }

    /// Runs until [`NodeHandle::shutdown`] (`Ok`) or a refusal that will not heal.
    pub async fn run(self) -> Result<(), HostError> {
        let NodeHost {
            config,
            dialers,
            journal,
            restored,
            mut app,
            mut commands,
            handle,
        } = self;
        if dialers.is_empty() && config.quic.is_none() {
            return Err(HostError::NoTransport);
        }
        let pool = StoragePool::new(config.session.storage_len(), 1);
        let mut session: HostSession = NodeSession::restore(
            config.session,
            &config.node_id,
            &config.platform,
            Some(pool.take()),
            &restored,
        )
        .map_err(HostError::Session)?;
        drop(restored);
        let mut shutdown = handle.shutdown_watch();
        let heartbeat = config.heartbeat.map(|every| {
            tokio::spawn(heartbeat(handle.clone(), every, config.health_path.clone()))
        });
        let _stop_heartbeat = AbortOnDrop(heartbeat);

        let mut quic = config.quic.clone().map(|target| {
            super::quic::QuicLink::new(
                target,
                journal.store.clone(),
                &config.journal_key,
                pool.clone(),
                handle.command_sender(),
            )
        });
        let mut attempt = 0u32;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let started = tokio::time::Instant::now();
            if let Some(link) = quic.as_mut() {
                let (s, a, outcome) = link
                    .attempt(session, app, &mut commands, &mut shutdown)
                    .await?;
                (session, app) = (s, a);
                match outcome {
                    super::quic::Attempt::Shutdown => return Ok(()),
                    super::quic::Attempt::Fatal(e) => return Err(e),
                    super::quic::Attempt::Ended(how) => {
                        tracing::info!(?how, "QUIC connection ended");
                        if *shutdown.borrow() {
                            return Ok(());
                        }
                        if let Some(e) = app.take_close_reason().and_then(fatal_close) {
                            return Err(e);
                        }
                        // A session that came up says the daemon is back: start over,
                        // or a node that was cut off for long waits its longest delay
                        // after the daemon's next restart.
                        if app.take_came_up()
                            || config.backoff.starts_over(millis(started.elapsed()))
                        {
                            attempt = 0;
                        }
                        // A node that restarted finds its previous connection still
                        // holding the session until the daemon closes it: retry soon.
                        let taking_over = matches!(&how, transport_tokio::host::Closed::ByPeer { code, .. }
                            if *code == u64::from(transport_tokio::host::close_code(&ErrorCode::Overloaded)));
                        let delay = next_delay(
                            config.backoff,
                            if taking_over { attempt.min(1) } else { attempt },
                        );
                        attempt = attempt.saturating_add(1);
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            _ = wait_true(&mut shutdown) => return Ok(()),
                        }
                        continue;
                    }
                    super::quic::Attempt::NotConnected => {}
                }
            }
            if dialers.is_empty() {
                let delay = next_delay(config.backoff, attempt);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = wait_true(&mut shutdown) => return Ok(()),
                }
                continue;
            }
            let stream = tokio::select! {
                r = dial(&dialers) => r,
                _ = wait_true(&mut shutdown) => return Ok(()),
            };
            match stream {
                Err(DialError::Fatal(e)) => return Err(e),
                Err(DialError::Transient) => {}
                Ok(stream) => {
                    let ended = {
                        let driver = Driver::new(&mut session, &pool, journal.clone(), &mut app)
                            .with_commands(&mut commands);
                        let run = driver.run(stream);
                        tokio::pin!(run);
                        tokio::select! {
                            r = &mut run => Some(r),
                            _ = wait_true(&mut shutdown) => {
                                // The shutdown command closes the session with a goodbye;
                                // give it a moment to go out.
                                tokio::time::timeout(Duration::from_secs(2), &mut run).await.ok()
                            }
                        }
                    };
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                    if let Some(e) = app.take_close_reason().and_then(fatal_close) {
                        return Err(e);
                    }
                    match ended {
                        Some(Err(e)) => {
                            if let Some(fatal) = fatal_io(&e) {
                                return Err(fatal);
                            }
                        }
                        Some(Ok(Ended::Closed | Ended::PeerClosed | Ended::Revoked)) | None => {}
                    }
                    if app.take_came_up() || config.backoff.starts_over(millis(started.elapsed())) {
                        attempt = 0;
                    }
                }
            }
            let delay = next_delay(config.backoff, attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = wait_true(&mut shutdown) => return Ok(()),
            }
        }
    }
}

enum DialError {
    Fatal(HostError),
    Transient,
}

/// Tries each dialer in order; a refusal that will not heal stops at once.
async fn dial(dialers: &[Arc<dyn Dialer>]) -> Result<Stream, DialError> {
    for dialer in dialers {
        match dialer.dial().await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                if let Some(fatal) = fatal_io(&e) {
                    return Err(DialError::Fatal(fatal));
                }
            }
        }
    }
    Err(DialError::Transient)
}

async fn wait_true(flag: &mut watch::Receiver<bool>) {
    // A dropped sender leaves the flag as it is: wait forever then.
    if flag.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The delay before attempt `attempt`, jittered with the OS's randomness.
fn next_delay(backoff: Backoff, attempt: u32) -> Duration {
    // Without OS randomness the delays lose their jitter, not their bound.
    let random = getrandom::u64().unwrap_or(0);
    Duration::from_millis(backoff.delay_ms(attempt, random))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sends a `health` event every `every`.
async fn heartbeat(handle: NodeHandle, every: Duration, path: PathBuf) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let path = path.clone();
        let Ok(Ok(health)) = tokio::task::spawn_blocking(move || read_health(&path)).await else {
            continue;
        };
        // Waits while the session is full or disconnected: one heartbeat at a time.
        if handle
            .send_event(HEALTH_EVENT, &health.health())
            .await
            .is_err()
        {
            return;
        }
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}
