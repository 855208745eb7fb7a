//! The QUIC endpoint task: one task owns the UDP socket, the quinn-proto `Endpoint`, every
//! connection and the session each carries.
//!
//! Each pass of the loop: receive what the socket holds (GRO), run the timers that are
//! due, take the application's commands, revisit only the connections that changed
//! (QUIC events, stream reads, the session's events, journal batches and frames), hand
//! the pass's journal batches to the store as one group, and send a capped batch of
//! datagrams (GSO) before going back to receiving — draining every transmit first
//! starves the receive side and loses packets on loopback. Then it waits for the socket,
//! the earliest deadline (re-armed every pass), a command, a commit, or a revocation; a
//! busy endpoint (datagrams left to send) goes round again at once, taking one of those
//! that is ready on the way, so a bulk transfer does not hold commands back.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant as StdInstant;

use bytes::BytesMut;
use protocol_core::session::{BatchId, Session};
use protocol_core::wire::ErrorCode;
use quinn_proto::{ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, StreamEvent, VarInt};
use quinn_udp::RecvMeta;
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::config::{self, EndpointKeys, QuicLimits, QuicSetupError};
use super::conn::{Conn, Group, Live, ReadEnd, Stage, closed_from};
use super::pairing::{NotPairing, PairingConn};
use super::socket::Socket;
use crate::admission::pairing_limit::PairingStarts;
use crate::clock;
use crate::driver::Application;
use crate::host::{
    Bound, CLOSE_SESSION_ENDED, Closed, Commands, Peer, Refusal, Route, Sessions, TransportKind,
    close_code,
};
use crate::journal::{JournalError, JournalStore};
use crate::pairing::PairingResponder;
use crate::pool::{PoolLender, StoragePool};
use crate::stats::{self, HandshakeFailure};
use crate::tls::{Fingerprint, Revocation};

mod admission;
mod commit;
mod control;
mod drive;
mod pairing_runs;
mod socket_io;
mod timers;

use admission::Admission;
use commit::Commits;
use control::Inbox;
use pairing_runs::PairingRuns;
use socket_io::SocketIo;
use timers::Timers;

/// Commands queued per endpoint.
const COMMAND_QUEUE: usize = 4096;

enum Control {
    Connect {
        addr: SocketAddr,
        server_name: String,
        tls: Arc<rustls::ClientConfig>,
        reply: oneshot::Sender<Result<u64, Closed>>,
    },
    Close {
        conn: u64,
        code: u32,
        reason: String,
    },
    Shutdown,
}

/// The application's handle on a running endpoint. The endpoint shuts down (as with
/// [`shutdown`](Self::shutdown)) once every handle is dropped.
pub struct QuicHandle<C> {
    control: mpsc::Sender<Control>,
    commands: mpsc::Sender<(u64, C)>,
    local_addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

impl<C> Clone for QuicHandle<C> {
    fn clone(&self) -> Self {
        Self {
            control: self.control.clone(),
            commands: self.commands.clone(),
            local_addr: self.local_addr,
            open: self.open.clone(),
        }
    }
}

impl<C> fmt::Debug for QuicHandle<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicHandle")
            .field("local_addr", &self.local_addr)
            .field("open", &self.open_connections())
            .finish()
    }
}

/// A connect that did not come up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The handshake failed (the reason names the TLS or QUIC error, e.g. a pin mismatch).
    Handshake(Closed),
    /// The endpoint has stopped.
    EndpointGone,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handshake(r) => write!(f, "QUIC handshake failed: {r}"),
            Self::EndpointGone => f.write_str("the QUIC endpoint has stopped"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl<C> QuicHandle<C> {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections counted against the cap now (handshaking or carrying a session).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl<C: Send + 'static> QuicHandle<C> {
    /// Connects to `addr` with `tls` (from [`client_config`](crate::tls::client_config));
    /// resolves when the handshake is done, with the connection's id (the one its
    /// [`Commands`] carry). The session is asked of [`Sessions::open`] then.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<u64, ConnectError> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Connect {
                addr,
                server_name: server_name.to_owned(),
                tls,
                reply,
            })
            .await
            .map_err(|_| ConnectError::EndpointGone)?;
        rx.await
            .map_err(|_| ConnectError::EndpointGone)?
            .map_err(ConnectError::Handshake)
    }

    /// Closes connection `conn` with an application code and a reason the peer reads.
    pub async fn close(&self, conn: u64, code: ErrorCode, reason: &str) {
        let _ = self
            .control
            .send(Control::Close {
                conn,
                code: close_code(&code),
                reason: reason.to_owned(),
            })
            .await;
    }

    /// Commands for connection `conn`'s application.
    pub fn commands(&self, conn: u64) -> Commands<C> {
        Commands {
            conn,
            route: Route::Tagged(self.commands.clone()),
        }
    }

    /// Closes every connection (their sessions go back through [`Sessions::closed`])
    /// and stops the task.
    pub async fn shutdown(&self) {
        let _ = self.control.send(Control::Shutdown).await;
    }
}

/// Builds and starts QUIC endpoints.
#[derive(Debug)]
pub struct QuicEndpoint;

impl QuicEndpoint {
    /// A daemon endpoint on `addr`: accepts nodes whose certificates `tls` accepts
    /// (from [`server_config`](crate::tls::server_config) with the same `revocation`),
    /// lends each a session from `sessions`, and closes a device's connections as soon
    /// as it is revoked. Must be called inside a tokio runtime.
    pub fn server<S, H>(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        revocation: Arc<dyn Revocation>,
        limits: QuicLimits,
        sessions: H,
        journal: Arc<dyn JournalStore>,
        pool: StoragePool,
    ) -> Result<Started<CommandOf<S, H>>, QuicSetupError>
    where
        S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
        H: Sessions<S>,
    {
        Self::server_with_pairing(
            addr, tls, revocation, limits, sessions, journal, pool, None, None,
        )
    }

    /// [`server`](Self::server), and a connection without a client certificate may run
    /// one pairing (and nothing else) on its first stream, answered by `pairing`; starts
    /// are limited per peer address as on TCP. Without `pairing` such a connection is
    /// closed with `Unauthorized` and a reason. A daemon passes the `keys` it keeps, so
    /// that after a restart its nodes' dead connections are reset at their next packet;
    /// without them the endpoint draws fresh ones.
    #[allow(clippy::too_many_arguments)]
    pub fn server_with_pairing<S, H>(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        revocation: Arc<dyn Revocation>,
        limits: QuicLimits,
        sessions: H,
        journal: Arc<dyn JournalStore>,
        pool: StoragePool,
        pairing: Option<Arc<dyn PairingResponder>>,
        keys: Option<&EndpointKeys>,
    ) -> Result<Started<CommandOf<S, H>>, QuicSetupError>
    where
        S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
        H: Sessions<S>,
    {
        let server = config::server(tls, &limits, keys)?;
        let endpoint = Endpoint::new(config::endpoint(keys, &limits), Some(server), true, None);
        Self::start(
            addr,
            endpoint,
            true,
            pairing,
            Some(revocation),
            limits,
            sessions,
            journal,
            pool,
        )
    }

    /// A node's endpoint bound to `addr` (port 0 for any), connecting out with
    /// [`QuicHandle::connect`].
    pub fn client<S, H>(
        addr: SocketAddr,
        limits: QuicLimits,
        sessions: H,
        journal: Arc<dyn JournalStore>,
        pool: StoragePool,
    ) -> Result<Started<CommandOf<S, H>>, QuicSetupError>
    where
        S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
        H: Sessions<S>,
    {
        let endpoint = Endpoint::new(config::endpoint(None, &limits), None, true, None);
        Self::start(
            addr, endpoint, false, None, None, limits, sessions, journal, pool,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start<S, H>(
        addr: SocketAddr,
        endpoint: Endpoint,
        server: bool,
        pairing: Option<Arc<dyn PairingResponder>>,
        revocation: Option<Arc<dyn Revocation>>,
        limits: QuicLimits,
        sessions: H,
        journal: Arc<dyn JournalStore>,
        pool: StoragePool,
    ) -> Result<Started<CommandOf<S, H>>, QuicSetupError>
    where
        S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
        H: Sessions<S>,
    {
        let socket = Socket::bind(addr).map_err(|e| QuicSetupError(format!("bind {addr}: {e}")))?;
        let local_addr = socket
            .local_addr()
            .map_err(|e| QuicSetupError(e.to_string()))?;
        let (control_tx, control) = mpsc::channel(64);
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let open = Arc::new(AtomicUsize::new(0));
        let notices = revocation.as_ref().map(|r| r.subscribe());
        let task = Task {
            endpoint,
            limits,
            conns: HashMap::new(),
            ids: HashMap::new(),
            dirty: Vec::new(),
            sessions,
            journal,
            lender: PoolLender::new(pool),
            io: SocketIo::new(socket),
            timers: Timers::default(),
            admission: Admission {
                server,
                revocation,
                notices,
                refusing: 0,
                open: open.clone(),
            },
            pairing: PairingRuns::new(
                pairing,
                PairingStarts::new(limits.pairing_burst, limits.pairing_refill),
            ),
            commit: Commits::new(),
            inbox: Inbox {
                commands_tx: commands_tx.clone(),
                commands,
                control,
            },
        };
        let handle = QuicHandle {
            control: control_tx,
            commands: commands_tx,
            local_addr,
            open,
        };
        Ok((handle, tokio::spawn(task.run())))
    }
}

/// A started endpoint: the handle and the task (it ends after
/// [`QuicHandle::shutdown`]).
pub type Started<C> = (QuicHandle<C>, JoinHandle<()>);

/// The command type of the application a [`Sessions`] lends.
pub type CommandOf<S, H> = <<H as Sessions<S>>::App as Application<S>>::Command;

struct Task<S: Session, H: Sessions<S>> {
    endpoint: Endpoint,
    limits: QuicLimits,
    conns: HashMap<ConnectionHandle, Conn<S, H::App>>,
    ids: HashMap<u64, ConnectionHandle>,
    /// Connections to revisit this pass.
    dirty: Vec<ConnectionHandle>,
    sessions: H,
    journal: Arc<dyn JournalStore>,
    /// Session storage and the pumps' frame buffers.
    lender: PoolLender,
    io: SocketIo,
    timers: Timers,
    admission: Admission,
    pairing: PairingRuns,
    commit: Commits<S, H::App>,
    inbox: Inbox<CommandOf<S, H>>,
}

/// A group commit's result, for each connection and batch in it.
type Committed = (Vec<(u64, BatchId)>, Result<(), JournalError>);

/// What woke the task.
enum Wake<C> {
    /// Nothing: the task was busy and did not wait.
    Busy,
    Socket,
    Writable,
    Timer,
    Control(Option<Control>),
    Command(Option<(u64, C)>),
    Commit(Option<Committed>),
    Revocation(bool),
    Decision(bool),
}

impl<S, H> Task<S, H>
where
    S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
    H: Sessions<S>,
{
    async fn run(mut self) {
        let gro = self.io.socket.gro_segments().max(1);
        let chunk = 1500 * gro;
        let mut recv_bufs: Vec<Vec<u8>> = (0..quinn_udp::BATCH_SIZE.min(16))
            .map(|_| vec![0u8; chunk])
            .collect();
        loop {
            let now = StdInstant::now();
            let full_batches = self.receive(now, &mut recv_bufs);
            self.expire_timers(now);
            self.revisit(now);
            self.commit_group();
            let busy = self.transmit(now) || full_batches;
            if busy {
                // Go round again, receiving first, without waiting.
                tokio::task::yield_now().await;
            }
            let wake = self.wait(busy).await;
            match wake {
                Wake::Busy | Wake::Socket | Wake::Timer => {}
                Wake::Writable => self.retry_stalled(),
                Wake::Control(None) | Wake::Control(Some(Control::Shutdown)) => {
                    self.shutdown().await;
                    return;
                }
                Wake::Control(Some(c)) => self.control(c),
                Wake::Command(Some((conn, c))) => self.command(conn, c),
                Wake::Command(None) => {}
                Wake::Commit(Some((conns, result))) => self.committed(conns, result),
                Wake::Commit(None) => {}
                Wake::Decision(live) => {
                    if live {
                        self.decided();
                    } else {
                        self.pairing.decisions = None;
                    }
                }
                Wake::Revocation(live) => {
                    if live {
                        self.check_revocations();
                    } else {
                        self.admission.notices = None;
                    }
                }
            }
        }
    }

    /// What woke the task; `busy`: what is ready, without waiting.
    async fn wait(&mut self, busy: bool) -> Wake<CommandOf<S, H>> {
        let deadline = self.timers.next();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let stalled = self.io.stalled.is_some();
        let notices = async {
            match self.admission.notices.as_mut() {
                Some(n) => n.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let decisions = async {
            match self.pairing.decisions.as_mut() {
                Some(d) => d.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        // In this order: every pass receives and runs the timers anyway, so the socket
        // and the timer only wake an idle task.
        tokio::select! {
            biased;
            c = self.inbox.control.recv() => Wake::Control(c),
            c = self.commit.rx.recv() => Wake::Commit(c),
            c = self.inbox.commands.recv() => Wake::Command(c),
            live = notices => Wake::Revocation(live),
            live = decisions => Wake::Decision(live),
            r = self.io.socket.writable(), if stalled => { let _ = r; Wake::Writable }
            r = self.io.socket.readable() => { let _ = r; Wake::Socket }
            () = timer => Wake::Timer,
            () = std::future::ready(()), if busy => Wake::Busy,
        }
    }
}

/// Puts `conn` on this pass's list of connections to revisit, once.
fn mark<S: Session, A: Application<S>>(
    dirty: &mut Vec<ConnectionHandle>,
    ch: ConnectionHandle,
    conn: &mut Conn<S, A>,
) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(ch);
    }
}
