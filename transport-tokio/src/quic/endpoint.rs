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
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, StreamEvent, VarInt,
};
use quinn_udp::RecvMeta;
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::config::{self, QuicLimits, QuicSetupError};
use super::conn::{Conn, Group, Live, ReadEnd, Stage, closed_from};
use super::pairing::{NotPairing, PairingConn};
use super::socket::Socket;
use crate::clock;
use crate::driver::Application;
use crate::host::{
    Bound, CLOSE_SESSION_ENDED, Closed, Commands, Peer, Refusal, Route, Sessions, TransportKind,
    close_code, next_connection_id,
};
use crate::journal::{JournalError, JournalStore};
use crate::pairing::PairingResponder;
use crate::pool::{PoolLender, StoragePool};
use crate::stats::{self, HandshakeFailure};
use crate::tcp::pairing_limit::PairingStarts;
use crate::tcp::{DEFAULT_PAIRING_BURST, DEFAULT_PAIRING_REFILL};
use crate::tls::{Fingerprint, Revocation, device_id_of};

/// Datagrams one connection may put in one send call (one GSO batch).
const MAX_DATAGRAMS_PER_CALL: usize = 10;
/// Datagrams sent per pass before going back to receiving.
const MAX_DATAGRAMS_PER_PASS: usize = 20;
/// Receive calls per pass.
const MAX_RECV_CALLS: usize = 8;
/// Connections over the cap being refused at once (each costs a handshake); beyond
/// this they are refused during the handshake with `CONNECTION_REFUSED`.
const MAX_REFUSING: usize = 64;
/// Commands queued per endpoint.
const COMMAND_QUEUE: usize = 4096;
/// How long a shutting-down endpoint waits for journal batches in flight.
const SHUTDOWN_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

enum Control {
    Connect {
        addr: SocketAddr,
        server_name: String,
        tls: Arc<rustls::ClientConfig>,
        reply: oneshot::Sender<Result<u64, String>>,
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
    Handshake(String),
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
        Self::server_with_pairing(addr, tls, revocation, limits, sessions, journal, pool, None)
    }

    /// [`server`](Self::server), and a connection without a client certificate may run
    /// one pairing (and nothing else) on its first stream, answered by `pairing`; starts
    /// are limited per peer address as on TCP. Without `pairing` such a connection is
    /// closed with `Unauthorized` and a reason.
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
    ) -> Result<Started<CommandOf<S, H>>, QuicSetupError>
    where
        S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
        H: Sessions<S>,
    {
        let server = config::server(tls, &limits)?;
        let endpoint = Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(server),
            true,
            None,
        );
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
        let endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
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
        let (commit_tx, commits) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let notices = revocation.as_ref().map(|r| r.subscribe());
        let task = Task {
            socket,
            endpoint,
            server,
            limits,
            conns: HashMap::new(),
            ids: HashMap::new(),
            zombies: HashMap::new(),
            sessions,
            journal,
            lender: PoolLender::new(pool),
            send_buf: Vec::new(),
            stalled: None,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            sendq: VecDeque::new(),
            group: Group::default(),
            commit_tx,
            commits,
            commands_tx: commands_tx.clone(),
            commands,
            control,
            revocation,
            notices,
            refusing: 0,
            open: open.clone(),
            decisions: pairing.as_ref().map(|p| {
                let mut d = p.decisions();
                d.borrow_and_update();
                d
            }),
            pairing,
            starts: PairingStarts::new(DEFAULT_PAIRING_BURST, DEFAULT_PAIRING_REFILL),
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

/// A datagram polled from quinn that the socket would not take yet.
struct Stalled {
    destination: SocketAddr,
    ecn: Option<quinn_udp::EcnCodepoint>,
    segment_size: Option<usize>,
    src_ip: Option<std::net::IpAddr>,
    contents: Vec<u8>,
}

struct Task<S: Session, H: Sessions<S>> {
    socket: Socket,
    endpoint: Endpoint,
    server: bool,
    limits: QuicLimits,
    conns: HashMap<ConnectionHandle, Conn<S, H::App>>,
    ids: HashMap<u64, ConnectionHandle>,
    /// Sessions whose connection is gone but whose journal batch is still in flight;
    /// they go back to the application once it is confirmed.
    zombies: HashMap<u64, Box<Live<S, H::App>>>,
    sessions: H,
    journal: Arc<dyn JournalStore>,
    /// Session storage and the pumps' frame buffers.
    lender: PoolLender,
    /// Datagrams polled from quinn.
    send_buf: Vec<u8>,
    stalled: Option<Stalled>,
    timers: BinaryHeap<Reverse<(StdInstant, ConnectionHandle, u64)>>,
    dirty: Vec<ConnectionHandle>,
    sendq: VecDeque<ConnectionHandle>,
    group: Group,
    commit_tx: mpsc::UnboundedSender<Committed>,
    commits: mpsc::UnboundedReceiver<Committed>,
    commands_tx: mpsc::Sender<(u64, CommandOf<S, H>)>,
    commands: mpsc::Receiver<(u64, CommandOf<S, H>)>,
    control: mpsc::Receiver<Control>,
    revocation: Option<Arc<dyn Revocation>>,
    notices: Option<watch::Receiver<u64>>,
    refusing: usize,
    open: Arc<AtomicUsize>,
    pairing: Option<Arc<dyn PairingResponder>>,
    starts: PairingStarts,
    decisions: Option<watch::Receiver<u64>>,
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
        let gro = self.socket.gro_segments().max(1);
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
                        self.decisions = None;
                    }
                }
                Wake::Revocation(live) => {
                    if live {
                        self.check_revocations();
                    } else {
                        self.notices = None;
                    }
                }
            }
        }
    }

    /// What woke the task; `busy`: what is ready, without waiting.
    async fn wait(&mut self, busy: bool) -> Wake<CommandOf<S, H>> {
        let deadline = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let stalled = self.stalled.is_some();
        let notices = async {
            match self.notices.as_mut() {
                Some(n) => n.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let decisions = async {
            match self.decisions.as_mut() {
                Some(d) => d.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        // In this order: every pass receives and runs the timers anyway, so the socket
        // and the timer only wake an idle task.
        tokio::select! {
            biased;
            c = self.control.recv() => Wake::Control(c),
            c = self.commits.recv() => Wake::Commit(c),
            c = self.commands.recv() => Wake::Command(c),
            live = notices => Wake::Revocation(live),
            live = decisions => Wake::Decision(live),
            r = self.socket.writable(), if stalled => { let _ = r; Wake::Writable }
            r = self.socket.readable() => { let _ = r; Wake::Socket }
            () = timer => Wake::Timer,
            () = std::future::ready(()), if busy => Wake::Busy,
        }
    }

    /// Receives what the socket holds; true if every call filled its batch (more may be
    /// waiting).
    fn receive(&mut self, now: StdInstant, bufs: &mut [Vec<u8>]) -> bool {
        let mut meta = vec![RecvMeta::default(); bufs.len()];
        for _ in 0..MAX_RECV_CALLS {
            let mut slices: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let n = match self.socket.try_recv(&mut slices, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // An ICMP error for an earlier send, and the like: nothing to do.
                Err(_) => continue,
            };
            drop(slices);
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                // One allocation and copy per received batch, not per datagram: the
                // datagrams are views of it, decrypted in place, and the stream data
                // quinn hands over are views too.
                let mut data = BytesMut::from(&buf[..m.len]);
                let stride = m.stride.max(1);
                while !data.is_empty() {
                    let datagram = data.split_to(stride.min(data.len()));
                    self.datagram(now, m, datagram);
                }
            }
            if n < bufs.len() {
                return false;
            }
        }
        true
    }

    fn datagram(&mut self, now: StdInstant, meta: &RecvMeta, datagram: BytesMut) {
        let ecn = meta
            .ecn
            .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
        let mut buf = Vec::new();
        let event = self
            .endpoint
            .handle(now, meta.addr, meta.dst_ip, ecn, datagram, &mut buf);
        match event {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(conn) = self.conns.get_mut(&ch) {
                    conn.quic.handle_event(event);
                    mark(&mut self.dirty, ch, conn);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.incoming(now, incoming),
            Some(DatagramEvent::Response(t)) => self.send_now(&t, &buf),
            None => {}
        }
    }

    fn incoming(&mut self, now: StdInstant, incoming: quinn_proto::Incoming) {
        let mut buf = Vec::new();
        let over = self.open.load(Ordering::Relaxed) >= self.limits.max_connections;
        if over && self.refusing >= MAX_REFUSING {
            let t = self.endpoint.refuse(incoming, &mut buf);
            self.send_now(&t, &buf);
            return;
        }
        match self.endpoint.accept(incoming, now, &mut buf, None) {
            Ok((ch, quic)) => {
                let refuse =
                    over.then(|| Refusal::new(ErrorCode::Overloaded, "connection limit reached"));
                if over {
                    self.refusing = self.refusing.saturating_add(1);
                } else {
                    self.open.fetch_add(1, Ordering::Relaxed);
                }
                let id = next_connection_id();
                let conn = Conn {
                    id,
                    quic,
                    stage: Stage::Handshaking {
                        refuse,
                        reply: None,
                    },
                    counted: !over,
                    over_cap: over,
                    handshake_deadline: Some(now + self.limits.handshake_timeout),
                    armed: None,
                    generation: 0,
                    queued: false,
                    dirty: false,
                };
                self.ids.insert(id, ch);
                self.conns.insert(ch, conn);
                if let Some(conn) = self.conns.get_mut(&ch) {
                    mark(&mut self.dirty, ch, conn);
                }
            }
            Err(e) => {
                if let Some(t) = e.response {
                    self.send_now(&t, &buf);
                }
            }
        }
    }

    fn expire_timers(&mut self, now: StdInstant) {
        while let Some(Reverse((at, ch, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(&ch) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            conn.armed = None;
            conn.quic.handle_timeout(now);
            if conn
                .handshake_deadline
                .is_some_and(|d| d <= now && conn.quic.is_handshaking())
            {
                conn.handshake_deadline = None;
                stats::failed(TransportKind::Quic, HandshakeFailure::Timeout);
                conn.close(
                    now,
                    close_code(&ErrorCode::Unauthorized),
                    "handshake timed out",
                );
            }
            let session_now = clock::now();
            let mut finish_due = false;
            if let Stage::Live(live) = &mut conn.stage {
                live.session.handle_timeout(session_now);
                finish_due = live.finishing.is_some_and(|d| d <= now);
            }
            if let Stage::Pairing(p) = &mut conn.stage {
                p.on_timeout();
                finish_due = p.finishing.is_some_and(|d| d <= now);
            }
            if finish_due {
                conn.close(now, CLOSE_SESSION_ENDED, "session closed");
            }
            mark(&mut self.dirty, ch, conn);
        }
    }

    /// Revisits every connection marked this pass.
    fn revisit(&mut self, now: StdInstant) {
        while let Some(ch) = self.dirty.pop() {
            self.drive(now, ch);
        }
    }

    fn drive(&mut self, now: StdInstant, ch: ConnectionHandle) {
        let Some(mut conn) = self.conns.remove(&ch) else {
            return;
        };
        conn.dirty = false;
        while let Some(event) = conn.quic.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(ch, event) {
                conn.quic.handle_event(event);
            }
        }
        let mut lost = None;
        let mut timed_out = false;
        // The connection's one stream has data (or opened with some: no `Readable`
        // follows for data that came with the opening).
        let mut input = false;
        while let Some(event) = conn.quic.poll() {
            match event {
                Event::Connected => self.connected(now, &mut conn),
                Event::ConnectionLost { reason } => {
                    timed_out = matches!(reason, quinn_proto::ConnectionError::TimedOut);
                    lost = Some(closed_from(&reason));
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    input |= accept_streams(&mut conn);
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    input |= conn.stage.stream() == Some(id);
                }
                // All we wrote is acknowledged: a closing stage can close now.
                Event::Stream(StreamEvent::Finished { id }) if conn.stage.stream() == Some(id) => {
                    match &conn.stage {
                        Stage::Pairing(p) if p.finishing.is_some() => {
                            conn.close(now, CLOSE_SESSION_ENDED, "pairing done");
                        }
                        Stage::Live(live) if live.finishing.is_some() => {
                            conn.close(now, CLOSE_SESSION_ENDED, "session closed");
                            lost.get_or_insert(Closed::BySession);
                        }
                        _ => {}
                    }
                }
                Event::Stream(StreamEvent::Stopped { id, .. })
                    if matches!(conn.stage, Stage::Live(_)) && conn.stage.stream() == Some(id) =>
                {
                    conn.close(now, CLOSE_SESSION_ENDED, "stream stopped");
                    lost.get_or_insert(Closed::Lost {
                        reason: "the peer stopped the stream".into(),
                    });
                }
                _ => {}
            }
        }
        if let Stage::Handshaking { reply, .. } = &mut conn.stage
            && let Some(reason) = &lost
        {
            let why = if timed_out {
                HandshakeFailure::Timeout
            } else {
                HandshakeFailure::Tls
            };
            stats::failed(TransportKind::Quic, why);
            if let Some(reply) = reply.take() {
                let _ = reply.send(Err(describe(reason)));
            }
            conn.stage = Stage::Closing;
        }
        if let Stage::Live(live) = &mut conn.stage {
            live.unread |= input;
            let end = live.drive(
                conn.id,
                &mut conn.quic,
                now,
                &mut self.lender,
                &mut self.group,
            );
            if end == ReadEnd::Ended && live.finishing.is_none() {
                conn.close(now, CLOSE_SESSION_ENDED, "stream ended");
                lost.get_or_insert(Closed::Lost {
                    reason: "the peer ended its stream".into(),
                });
            }
        }
        if matches!(conn.stage, Stage::Pairing(_)) {
            self.pairing_io(now, &mut conn, input, lost.is_some());
        }
        if let Some(mut how) = lost {
            if matches!(&conn.stage, Stage::Live(live) if live.finishing.is_some()) {
                // The session had said goodbye: however the peer closes now, it was ours.
                how = Closed::BySession;
            }
            self.end(&mut conn, how);
        }
        if conn.quic.is_drained() {
            self.remove(conn);
            return;
        }
        self.arm(now, ch, &mut conn);
        if !conn.queued {
            conn.queued = true;
            self.sendq.push_back(ch);
        }
        self.conns.insert(ch, conn);
    }

    fn connected(&mut self, now: StdInstant, conn: &mut Conn<S, H::App>) {
        conn.handshake_deadline = None;
        let Stage::Handshaking { refuse, reply } = &mut conn.stage else {
            return;
        };
        let (refuse, reply) = (refuse.take(), reply.take());
        if let Some(r) = refuse {
            conn.refuse(now, HandshakeFailure::Overloaded, &r.code, &r.reason);
            return;
        }
        let certs = conn
            .quic
            .crypto_session()
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok());
        let first = certs.as_ref().and_then(|c| c.first());
        let addr = conn.quic.remote_address();
        let peer = if self.server {
            let Some(cert) = first else {
                // Pairing only, when this endpoint pairs; the node plane needs a
                // certificate.
                match self.pairing.as_ref().map(|_| PairingConn::new(addr)) {
                    Some(p) => conn.stage = Stage::Pairing(Box::new(p)),
                    None => conn.refuse(
                        now,
                        HandshakeFailure::Identity,
                        &ErrorCode::Unauthorized,
                        "a client certificate is required",
                    ),
                }
                return;
            };
            let Some(device_id) = device_id_of(cert) else {
                let why = "certificate names no device";
                conn.refuse(
                    now,
                    HandshakeFailure::Identity,
                    &ErrorCode::Unauthorized,
                    why,
                );
                return;
            };
            let fingerprint = Fingerprint::of(cert);
            if self
                .revocation
                .as_ref()
                .is_some_and(|r| r.is_revoked(&fingerprint, &device_id))
            {
                conn.refuse(
                    now,
                    HandshakeFailure::Revoked,
                    &ErrorCode::Revoked,
                    "revoked",
                );
                return;
            }
            Peer {
                addr,
                transport: TransportKind::Quic,
                device_id,
                fingerprint,
            }
        } else {
            let fingerprint = first.map_or(Fingerprint([0; 32]), |c| Fingerprint::of(c));
            Peer {
                addr,
                transport: TransportKind::Quic,
                device_id: String::new(),
                fingerprint,
            }
        };
        let commands = Commands {
            conn: conn.id,
            route: Route::Tagged(self.commands_tx.clone()),
        };
        let opened = match self.sessions.open(&peer, commands) {
            Ok(opened) => opened,
            Err(r) => {
                let why = if r.code == ErrorCode::Overloaded {
                    HandshakeFailure::Overloaded
                } else {
                    HandshakeFailure::Identity
                };
                conn.refuse(now, why, &r.code, &r.reason);
                if let Some(reply) = reply {
                    let _ = reply.send(Err(format!("refused: {}", r.reason)));
                }
                return;
            }
        };
        if self.server && opened.session.bound_node() != Some(peer.device_id.as_str()) {
            // A session for another node than the certificate names: never let it speak.
            let why = HandshakeFailure::Identity;
            conn.refuse(now, why, &ErrorCode::Unauthorized, "wrong node");
            self.sessions.closed(
                &peer,
                opened.session,
                opened.app,
                Closed::Lost {
                    reason: "session bound to another node than the certificate".into(),
                },
            );
            return;
        }
        let mut live = Box::new(Live::new(peer, opened));
        if !self.server {
            // The node opens the one stream its session rides on.
            if let Some(id) = conn.quic.streams().open(Dir::Bi) {
                live.stream = Some(id);
                live.session.handle_connected(clock::now());
            }
        }
        conn.stage = Stage::Live(live);
        stats::opened(TransportKind::Quic);
        if let Some(reply) = reply {
            let _ = reply.send(Ok(conn.id));
        }
    }

    /// A pairing connection's reads and writes; closes it when the run is over or the
    /// peer is not pairing.
    fn pairing_io(&mut self, now: StdInstant, conn: &mut Conn<S, H::App>, input: bool, lost: bool) {
        let Some(responder) = self.pairing.as_ref() else {
            return;
        };
        let Stage::Pairing(p) = &mut conn.stage else {
            return;
        };
        if lost {
            p.closed(&mut self.lender);
            conn.stage = Stage::Closing;
            return;
        }
        p.unread |= input;
        let driven = p.drive(
            &mut conn.quic,
            now,
            responder,
            &self.starts,
            &mut self.lender,
        );
        if let Err(NotPairing(reason)) = driven {
            p.closed(&mut self.lender);
            conn.refuse(
                now,
                HandshakeFailure::Identity,
                &ErrorCode::Unauthorized,
                reason,
            );
        }
    }

    /// An operator decided: every pairing run waiting for it moves on.
    fn decided(&mut self) {
        let waiting: Vec<ConnectionHandle> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.stage, Stage::Pairing(_)))
            .map(|(ch, _)| *ch)
            .collect();
        for ch in waiting {
            if let Some(conn) = self.conns.get_mut(&ch) {
                if let Stage::Pairing(p) = &mut conn.stage {
                    p.on_decision();
                }
                mark(&mut self.dirty, ch, conn);
            }
        }
    }

    /// The connection ended: the session is told, and goes back to the application
    /// once no journal batch of it is in flight.
    fn end(&mut self, conn: &mut Conn<S, H::App>, how: Closed) {
        match std::mem::replace(&mut conn.stage, Stage::Closing) {
            Stage::Pairing(mut p) => p.closed(&mut self.lender),
            Stage::Live(mut live) => {
                stats::closed(TransportKind::Quic);
                self.finish_live(conn.id, &mut live, how);
                if live.in_flight.is_some() {
                    self.zombies.insert(conn.id, live);
                } else {
                    self.give_back(*live, None);
                }
            }
            Stage::Handshaking { .. } | Stage::Closing => {}
        }
        if conn.counted {
            conn.counted = false;
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn finish_live(&mut self, id: u64, live: &mut Live<S, H::App>, how: Closed) {
        live.session.handle_disconnected(clock::now());
        live.settle(id, &mut self.lender, &mut self.group);
        live.release(&mut self.lender);
        live.ended = Some(how);
    }

    /// A session with no batch in flight goes back to the application; `how` overrides
    /// how its connection ended.
    fn give_back(&mut self, mut live: Live<S, H::App>, how: Option<Closed>) {
        live.release(&mut self.lender);
        let how = how.or(live.ended).unwrap_or(Closed::BySession);
        self.sessions
            .closed(&live.peer, live.session, live.app, how);
    }

    fn remove(&mut self, mut conn: Conn<S, H::App>) {
        if matches!(conn.stage, Stage::Live(_) | Stage::Pairing(_)) {
            self.end(
                &mut conn,
                Closed::Lost {
                    reason: "connection drained".into(),
                },
            );
        }
        if conn.counted {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
        if conn.over_cap {
            // Its refusal is done: the slot is free for the next one.
            self.refusing = self.refusing.saturating_sub(1);
        }
        self.ids.remove(&conn.id);
    }

    fn arm(&mut self, now: StdInstant, ch: ConnectionHandle, conn: &mut Conn<S, H::App>) {
        let mut at = conn.quic.poll_timeout();
        let mut consider = |d: Option<StdInstant>| {
            if let Some(d) = d {
                at = Some(at.map_or(d, |a| a.min(d)));
            }
        };
        consider(conn.handshake_deadline);
        if let Stage::Live(live) = &conn.stage {
            consider(live.deadline());
            consider(live.finishing);
        }
        if let Stage::Pairing(p) = &conn.stage {
            consider(p.deadline());
            consider(p.finishing);
        }
        let at = at.map(|a| a.max(now));
        if at != conn.armed {
            conn.armed = at;
            conn.generation += 1;
            if let Some(at) = at {
                self.timers.push(Reverse((at, ch, conn.generation)));
            }
        }
    }

    fn commit_group(&mut self) {
        if self.group.batches.is_empty() {
            return;
        }
        let group = std::mem::take(&mut self.group);
        let commit = self.journal.commit(group.batches);
        let tx = self.commit_tx.clone();
        let conns = group.conns;
        tokio::spawn(async move {
            let result = commit.await;
            let _ = tx.send((conns, result));
        });
    }

    fn committed(&mut self, conns: Vec<(u64, BatchId)>, result: Result<(), JournalError>) {
        let committed = result.is_ok();
        for (id, batch) in conns {
            if let Some(mut live) = self.zombies.remove(&id) {
                live.confirm(batch, committed);
                live.settle(id, &mut self.lender, &mut self.group);
                if live.in_flight.is_some() {
                    self.zombies.insert(id, live);
                } else {
                    self.give_back(*live, None);
                }
                continue;
            }
            let Some(&ch) = self.ids.get(&id) else {
                continue;
            };
            if let Some(conn) = self.conns.get_mut(&ch) {
                if let Stage::Live(live) = &mut conn.stage {
                    live.confirm(batch, committed);
                }
                mark(&mut self.dirty, ch, conn);
            }
        }
        self.revisit(StdInstant::now());
        self.commit_group();
    }

    fn command(&mut self, id: u64, command: CommandOf<S, H>) {
        if let Some(&ch) = self.ids.get(&id)
            && let Some(conn) = self.conns.get_mut(&ch)
            && let Stage::Live(live) = &mut conn.stage
        {
            live.commands.push_back(command);
            mark(&mut self.dirty, ch, conn);
            return;
        }
        if let Some(live) = self.zombies.get_mut(&id) {
            // Gone, its session not back yet: its application still takes commands.
            live.commands.push_back(command);
            live.settle(id, &mut self.lender, &mut self.group);
            return;
        }
        self.sessions.undelivered(command);
    }

    fn control(&mut self, control: Control) {
        let now = StdInstant::now();
        match control {
            Control::Connect {
                addr,
                server_name,
                tls,
                reply,
            } => {
                let config = match config::client(tls, &self.limits) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                        return;
                    }
                };
                match self.endpoint.connect(now, config, addr, &server_name) {
                    Ok((ch, quic)) => {
                        let id = next_connection_id();
                        self.open.fetch_add(1, Ordering::Relaxed);
                        let mut conn = Conn {
                            id,
                            quic,
                            stage: Stage::Handshaking {
                                refuse: None,
                                reply: Some(reply),
                            },
                            counted: true,
                            over_cap: false,
                            handshake_deadline: Some(now + self.limits.handshake_timeout),
                            armed: None,
                            generation: 0,
                            queued: false,
                            dirty: false,
                        };
                        self.ids.insert(id, ch);
                        mark(&mut self.dirty, ch, &mut conn);
                        self.conns.insert(ch, conn);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Control::Close { conn, code, reason } => {
                let Some(&ch) = self.ids.get(&conn) else {
                    return;
                };
                if let Some(mut c) = self.conns.remove(&ch) {
                    c.close(now, code, &reason);
                    self.end(&mut c, Closed::BySession);
                    mark(&mut self.dirty, ch, &mut c);
                    self.conns.insert(ch, c);
                }
            }
            Control::Shutdown => {}
        }
    }

    fn check_revocations(&mut self) {
        let Some(revocation) = self.revocation.clone() else {
            return;
        };
        let now = StdInstant::now();
        let revoked: Vec<ConnectionHandle> = self
            .conns
            .iter()
            .filter_map(|(ch, c)| match &c.stage {
                Stage::Live(live)
                    if revocation.is_revoked(&live.peer.fingerprint, &live.peer.device_id) =>
                {
                    Some(*ch)
                }
                _ => None,
            })
            .collect();
        for ch in revoked {
            if let Some(mut conn) = self.conns.remove(&ch) {
                conn.close(now, close_code(&ErrorCode::Revoked), "revoked");
                self.end(&mut conn, Closed::Revoked);
                mark(&mut self.dirty, ch, &mut conn);
                self.conns.insert(ch, conn);
            }
        }
    }

    async fn shutdown(&mut self) {
        let now = StdInstant::now();
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            if let Some(mut conn) = self.conns.remove(&ch) {
                conn.close(now, CLOSE_SESSION_ENDED, "shutting down");
                self.end(&mut conn, Closed::Shutdown);
                mark(&mut self.dirty, ch, &mut conn);
                self.conns.insert(ch, conn);
            }
        }
        // Commands still queued reach their application (or `Sessions::undelivered`),
        // never the floor.
        while let Ok((id, command)) = self.commands.try_recv() {
            self.command(id, command);
        }
        self.revisit(now);
        self.commit_group();
        // Say goodbye on the wire.
        while self.transmit(now) {}
        // A session goes back with no batch in flight: wait for the store, within reason;
        // a batch still unconfirmed then counts as failed, and the session emits it again
        // wherever it is driven next (its operations are idempotent).
        let deadline = tokio::time::Instant::now() + SHUTDOWN_COMMIT_WAIT;
        while !self.zombies.is_empty() {
            match tokio::time::timeout_at(deadline, self.commits.recv()).await {
                Ok(Some((conns, result))) => self.committed(conns, result),
                Ok(None) | Err(_) => break,
            }
        }
        let zombies: Vec<_> = self.zombies.drain().map(|(_, live)| live).collect();
        for mut live in zombies {
            if let Some(batch) = live.in_flight {
                live.confirm(batch, false);
            }
            self.give_back(*live, Some(Closed::Shutdown));
        }
    }

    /// Sends a capped batch of datagrams, round-robin over connections that may have
    /// some; true if some are left for the next pass.
    fn transmit(&mut self, now: StdInstant) -> bool {
        if self.stalled.is_some() {
            return false;
        }
        let per_call = self
            .socket
            .max_gso_segments()
            .clamp(1, MAX_DATAGRAMS_PER_CALL);
        let mut budget = MAX_DATAGRAMS_PER_PASS;
        let rounds = self.sendq.len();
        for _ in 0..rounds {
            if budget == 0 {
                break;
            }
            let Some(ch) = self.sendq.pop_front() else {
                break;
            };
            let Some(mut conn) = self.conns.remove(&ch) else {
                continue;
            };
            self.send_buf.clear();
            match conn
                .quic
                .poll_transmit(now, per_call.min(budget), &mut self.send_buf)
            {
                Some(t) => {
                    let segments = t.segment_size.map_or(1, |s| t.size.div_ceil(s.max(1)));
                    budget = budget.saturating_sub(segments);
                    let buf = std::mem::take(&mut self.send_buf);
                    self.send_now(&t, &buf);
                    self.send_buf = buf;
                    self.sendq.push_back(ch);
                    self.arm(now, ch, &mut conn);
                    self.conns.insert(ch, conn);
                    if self.stalled.is_some() {
                        return false;
                    }
                }
                None => {
                    conn.queued = false;
                    self.arm(now, ch, &mut conn);
                    if conn.quic.is_drained() {
                        self.remove(conn);
                    } else {
                        self.conns.insert(ch, conn);
                    }
                }
            }
        }
        !self.sendq.is_empty()
    }

    fn send_now(&mut self, t: &quinn_proto::Transmit, buf: &[u8]) {
        let contents = &buf[..t.size];
        let ecn = t
            .ecn
            .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8));
        let transmit = quinn_udp::Transmit {
            destination: t.destination,
            ecn,
            contents,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        match self.socket.try_send(&transmit) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.stalled = Some(Stalled {
                    destination: t.destination,
                    ecn,
                    segment_size: t.segment_size,
                    src_ip: t.src_ip,
                    contents: contents.to_vec(),
                });
            }
            // Anything else is a lost datagram; QUIC recovers.
            Err(_) => {}
        }
    }

    fn retry_stalled(&mut self) {
        let Some(s) = self.stalled.take() else {
            return;
        };
        let transmit = quinn_udp::Transmit {
            destination: s.destination,
            ecn: s.ecn,
            contents: &s.contents,
            segment_size: s.segment_size,
            src_ip: s.src_ip,
        };
        match self.socket.try_send(&transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stalled = Some(s),
            _ => {}
        }
    }
}

/// Takes the node's stream: the first one carries the session or the pairing run;
/// others are refused. True if the connection's stream was just taken (read it now).
fn accept_streams<S: Session, A: Application<S>>(conn: &mut Conn<S, A>) -> bool {
    let mut taken = false;
    while let Some(id) = conn.quic.streams().accept(Dir::Bi) {
        let slot = match &mut conn.stage {
            Stage::Live(live) if live.stream.is_none() => Some(&mut live.stream),
            Stage::Pairing(p) if p.stream.is_none() => Some(&mut p.stream),
            _ => None,
        };
        match slot {
            Some(slot) => {
                *slot = Some(id);
                if let Stage::Live(live) = &mut conn.stage {
                    live.session.handle_connected(clock::now());
                }
                taken = true;
            }
            None => {
                let code = VarInt::from_u32(CLOSE_SESSION_ENDED);
                let _ = conn.quic.recv_stream(id).stop(code);
                let _ = conn.quic.send_stream(id).reset(code);
            }
        }
    }
    taken
}

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

fn describe(how: &Closed) -> String {
    match how {
        Closed::ByPeer { code, reason } => format!("closed by the peer ({code}): {reason}"),
        Closed::Lost { reason } => reason.clone(),
        Closed::BySession => "closed".into(),
        Closed::Revoked => "revoked".into(),
        Closed::Shutdown => "the endpoint shut down".into(),
    }
}
