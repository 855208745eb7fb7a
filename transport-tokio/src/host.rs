//! What a transport asks of the application that owns the sessions: a session for each
//! connection that comes up, and the session back when the connection ends.
//!
//! Sessions outlive connections (a node's session resumes on its next connection, over
//! either transport), so the application keeps them — a registry keyed by node id on the
//! daemon, the one session on a node — and lends each to the transport for the life of
//! one connection.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use protocol_core::session::{DaemonSession, NodeSession, Session};
use protocol_core::wire::ErrorCode;
use tokio::sync::mpsc;

use crate::driver::Application;
use crate::tls::Fingerprint;

/// Which transport carries a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Quic,
    Tcp,
}

/// The other end of a connection, as its TLS handshake established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub transport: TransportKind,
    /// On the daemon: the device its client certificate names. On a node: the daemon,
    /// named by the pinned fingerprint of its certificate (`device_id` is empty).
    pub device_id: String,
    pub fingerprint: Fingerprint,
}

/// A connection the application refuses; the peer reads `code` and `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// What the application lends a connection.
pub struct Opened<S, A> {
    pub session: S,
    pub app: A,
    /// Whose journal the session's batches go to (on the daemon, the node id).
    pub journal_key: Arc<str>,
}

impl<S, A> fmt::Debug for Opened<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("journal_key", &self.journal_key)
            .finish_non_exhaustive()
    }
}

/// How a connection ended, as [`Sessions::closed`] hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The session closed it (goodbye or an error it sent).
    BySession,
    /// The peer closed it, or it was lost (idle timeout, reset, network).
    Lost { reason: String },
    /// The peer closed it with an application code: its refusal or its error.
    ByPeer { code: u64, reason: String },
    /// The device or its certificate was revoked.
    Revoked,
    /// The endpoint shut down.
    Shutdown,
    /// TLS refused the handshake with `alert`: the peer sent it (`by_peer`: it refused
    /// us), or our side raised it (we refused the peer's certificate, for one).
    Tls {
        alert: rustls::AlertDescription,
        by_peer: bool,
        reason: String,
    },
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ByPeer { code, reason } => write!(f, "closed by the peer ({code}): {reason}"),
            Self::Lost { reason } => f.write_str(reason),
            Self::BySession => f.write_str("closed"),
            Self::Revoked => f.write_str("revoked"),
            Self::Shutdown => f.write_str("the endpoint shut down"),
            Self::Tls {
                alert,
                by_peer: true,
                ..
            } => write!(f, "refused by the peer with TLS alert {alert:?}"),
            Self::Tls {
                alert,
                by_peer: false,
                reason,
            } => write!(f, "refused the peer (TLS alert {alert:?}): {reason}"),
        }
    }
}

/// The application side of a transport: lends sessions to connections and takes them
/// back.
pub trait Sessions<S: Session>: Send + 'static {
    type App: Application<S, Command: Send> + Send + 'static;

    /// A connection is up and its peer checked (certificate chain, revocation). Lend it
    /// a session and its application, or refuse it. `commands` reaches this connection's
    /// application while it lives.
    #[allow(clippy::type_complexity)]
    fn open(
        &mut self,
        peer: &Peer,
        commands: Commands<<Self::App as Application<S>>::Command>,
    ) -> Result<Opened<S, Self::App>, Refusal>;

    /// The connection ended; the session (with no batch in flight and its storage back
    /// in the pool) and its application come back.
    fn closed(&mut self, peer: &Peer, session: S, app: Self::App, how: Closed);

    /// A command arrived for a connection that had already ended and given its session
    /// back: it is handed here rather than dropped (a node host queues it for the next
    /// connection). Dropped by default.
    fn undelivered(&mut self, command: <Self::App as Application<S>>::Command) {
        drop(command);
    }
}

/// The session a connection may carry must be bound to the peer the certificate names:
/// a daemon session serves exactly one node id.
pub trait Bound {
    /// The node id this session serves (daemon), or `None` (node: its peer is the
    /// daemon, checked by the pin).
    fn bound_node(&self) -> Option<&str>;
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Bound for DaemonSession<B> {
    fn bound_node(&self) -> Option<&str> {
        Some(self.node_id())
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Bound for NodeSession<B> {
    fn bound_node(&self) -> Option<&str> {
        None
    }
}

/// Sends commands to one connection's application.
pub struct Commands<C> {
    pub(crate) conn: u64,
    pub(crate) route: Route<C>,
}

/// Where a connection's commands go: the QUIC endpoint's one queue (tagged with the
/// connection) or a TCP connection's own task.
pub(crate) enum Route<C> {
    Tagged(mpsc::Sender<(u64, C)>),
    Direct(mpsc::Sender<C>),
}

impl<C> Clone for Commands<C> {
    fn clone(&self) -> Self {
        let route = match &self.route {
            Route::Tagged(tx) => Route::Tagged(tx.clone()),
            Route::Direct(tx) => Route::Direct(tx.clone()),
        };
        Self {
            conn: self.conn,
            route,
        }
    }
}

impl<C> fmt::Debug for Commands<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Commands")
            .field("conn", &self.conn)
            .finish()
    }
}

/// The connection's task has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl fmt::Display for Gone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the connection is gone")
    }
}

impl std::error::Error for Gone {}

impl<C> Commands<C> {
    /// Queues `command`, waiting while the queue is full. A command for a connection
    /// that has ended is dropped.
    pub async fn send(&self, command: C) -> Result<(), Gone> {
        match &self.route {
            Route::Tagged(tx) => tx.send((self.conn, command)).await.map_err(|_| Gone),
            Route::Direct(tx) => tx.send(command).await.map_err(|_| Gone),
        }
    }

    /// Queues `command` unless the queue is full or the connection gone.
    pub fn try_send(&self, command: C) -> Result<(), C> {
        use mpsc::error::TrySendError as E;
        match &self.route {
            Route::Tagged(tx) => tx.try_send((self.conn, command)).map_err(|e| match e {
                E::Full((_, c)) | E::Closed((_, c)) => c,
            }),
            Route::Direct(tx) => tx.try_send(command).map_err(|e| match e {
                E::Full(c) | E::Closed(c) => c,
            }),
        }
    }

    /// Which connection this sends to (unique for the life of the process).
    pub fn connection(&self) -> u64 {
        self.conn
    }
}

/// A process-wide connection id, so commands never reach a later connection.
pub(crate) fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The application close code a refusal or error is sent with (QUIC `CONNECTION_CLOSE`):
/// the error's wire tag, so both transports name it the same way.
pub fn close_code(code: &ErrorCode) -> u32 {
    match code {
        ErrorCode::VersionMismatch { .. } => 0,
        ErrorCode::FrameTooLarge { .. } => 1,
        ErrorCode::Malformed => 2,
        ErrorCode::UnknownMessage { .. } => 3,
        ErrorCode::UnexpectedMessage => 4,
        ErrorCode::Unauthorized => 5,
        ErrorCode::Revoked => 6,
        ErrorCode::Overloaded => 7,
        ErrorCode::Internal => 8,
    }
}

/// The close code of a session that ended normally (goodbye or a sent error frame,
/// which carries the detail).
pub const CLOSE_SESSION_ENDED: u32 = 0x100;
