//! protocol-core sessions on both transports of `transport-tokio`, as the daemon and a
//! fleet of nodes run them.
//!
//! The daemon keeps one [`DaemonSession`] per device id in a [`Registry`] (the
//! transport's `Sessions`), lent to whichever connection the device's certificate opens,
//! over QUIC ([`QuicEndpoint::server`]) or TCP + TLS ([`Listener`] +
//! [`DeviceConnection::serve_with`](transport_tokio::tcp::DeviceConnection::serve_with)).
//! Each node registers an `echo` capability and answers every call with its input.
//!
//! The round trip is a capability call: the daemon's application calls `echo` with 64 B,
//! the node's application completes it with the same 64 B, the daemon's application sees
//! `Succeeded` and issues the next call from the same event handler, so the measured time
//! holds the transport and both sessions, and no channel hop. Bulk is events: the node
//! sends 64 KiB events until its session says `Full`, and sends more as acknowledgements
//! free its replay buffer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant as StdInstant};

use chacha20::ChaCha20Rng;
use protocol_core::session::{
    CallState, Config, DaemonEvent, DaemonSession, Instant, NodeEvent, NodeSession, SessionError,
};
use protocol_core::wire::{
    CallId, Capabilities, CapabilityDescriptor, ErrorCode, Outcome, Payload, Register,
};
use rand_core::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use transport_tokio::host::{Closed, Commands, Opened, Peer, Refusal, Sessions};
use transport_tokio::quic::{QuicEndpoint, QuicHandle, QuicLimits};
use transport_tokio::tcp::{Connector, Listener, ListenerConfig, Routes, daemon_peer, serve};
use transport_tokio::tls::Fingerprint;
use transport_tokio::{Application, MemJournals, StoragePool};

use super::certs::{DaemonIdentity, Leaf};
use super::{BULK_PAYLOAD, BenchError, Transport};

pub type DSession = DaemonSession<Box<[u8]>>;
pub type NSession = NodeSession<Box<[u8]>>;

/// The capability every node registers.
pub const CAPABILITY: &str = "echo";
/// Content type of every payload.
pub const CONTENT: &str = "application/octet-stream";
const CALL_TIMEOUT_MS: u32 = 5_000;
/// Returned storage buffers a pool keeps for reuse (as the transport tests do).
const POOL_IDLE: usize = 16;
/// TCP + TLS handshakes in flight while a fleet connects.
const TCP_CONNECTS_IN_FLIGHT: usize = 32;

const ECHO: [CapabilityDescriptor<'static>; 1] = [CapabilityDescriptor {
    name: CAPABILITY,
    version: 1,
    input: CONTENT,
    output: CONTENT,
    needs_approval: false,
}];

/// The daemon's sessions: server defaults (512 KiB frames, idle 30 s, keep-alive 5 s),
/// 64 KiB of replay (it sends only calls here), state in RAM: this compares transports,
/// not stores.
pub fn daemon_config() -> Config {
    let mut c = Config::server(64 * 1024);
    c.durable = false;
    c
}

/// A node's session: server defaults with 4 MiB of replay, so a bulk sender keeps about
/// 60 events of 64 KiB in flight; state in RAM.
pub fn node_config() -> Config {
    let mut c = Config::server(4 << 20);
    c.durable = false;
    c
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values stay consistent if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ----- daemon -----

/// A device whose node registered: the commands of its connection's application.
#[derive(Debug)]
pub struct Ready {
    pub device: String,
    pub commands: Commands<DaemonCommand>,
}

/// Commands the bench sends to one connection's daemon application.
#[derive(Debug)]
pub enum DaemonCommand {
    /// Call `echo` `count` times, one after another, with `input`; report each round
    /// trip (or why the run stopped).
    RoundTrips {
        count: usize,
        input: Vec<u8>,
        done: oneshot::Sender<Result<Vec<Duration>, String>>,
    },
}

/// The daemon's registry: one session per device id, kept across connections.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Mutex<RegistryInner>>,
    received: Arc<AtomicU64>,
    live: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("live", &self.live())
            .finish_non_exhaustive()
    }
}

struct RegistryInner {
    config: Config,
    sessions: HashMap<String, DSession>,
    rng: ChaCha20Rng,
    ready: mpsc::UnboundedSender<Ready>,
}

impl Registry {
    pub fn new(config: Config, seed: [u8; 32]) -> (Self, mpsc::UnboundedReceiver<Ready>) {
        let (ready, rx) = mpsc::unbounded_channel();
        let registry = Self {
            inner: Arc::new(Mutex::new(RegistryInner {
                config,
                sessions: HashMap::new(),
                rng: ChaCha20Rng::from_seed(seed),
                ready,
            })),
            received: Arc::new(AtomicU64::new(0)),
            live: Arc::new(AtomicUsize::new(0)),
        };
        (registry, rx)
    }

    /// Payload bytes of every event the daemon's applications received.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Connections carrying a session now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

impl Sessions<DSession> for Registry {
    type App = DaemonApp;

    fn open(
        &mut self,
        peer: &Peer,
        commands: Commands<DaemonCommand>,
    ) -> Result<Opened<DSession, DaemonApp>, Refusal> {
        let mut r = lock(&self.inner);
        let r = &mut *r;
        let id = peer.device_id.clone();
        let session = match r.sessions.remove(&id) {
            Some(s) => s,
            None => DaemonSession::new(r.config, &id, &mut r.rng)
                .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?,
        };
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(Opened {
            session,
            app: DaemonApp {
                device: id.clone(),
                ready: r.ready.clone(),
                commands,
                received: self.received.clone(),
                run: None,
            },
            journal_key: id.into(),
        })
    }

    fn closed(&mut self, _: &Peer, session: DSession, _: DaemonApp, _: Closed) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        lock(&self.inner)
            .sessions
            .insert(session.node_id().to_owned(), session);
    }
}

/// The daemon's application on one connection.
pub struct DaemonApp {
    device: String,
    ready: mpsc::UnboundedSender<Ready>,
    commands: Commands<DaemonCommand>,
    received: Arc<AtomicU64>,
    run: Option<RoundTrips>,
}

impl std::fmt::Debug for DaemonApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonApp")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

struct RoundTrips {
    left: usize,
    input: Vec<u8>,
    sent_at: StdInstant,
    samples: Vec<Duration>,
    done: oneshot::Sender<Result<Vec<Duration>, String>>,
}

impl DaemonApp {
    fn stop(&mut self, result: Result<(), String>) {
        if let Some(run) = self.run.take() {
            let _ = run.done.send(result.map(|()| run.samples));
        }
    }

    fn next_call(&mut self, s: &mut DSession, now: Instant) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if run.left == 0 {
            return self.stop(Ok(()));
        }
        run.sent_at = StdInstant::now();
        let input = Payload {
            content_type: CONTENT,
            data: &run.input,
        };
        match s.call(now, CAPABILITY, input, CALL_TIMEOUT_MS) {
            Ok(_) => run.left -= 1,
            Err(e) => self.stop(Err(format!("the session refused a call: {e}"))),
        }
    }
}

impl Application<DSession> for DaemonApp {
    type Command = DaemonCommand;

    fn handle_events(&mut self, s: &mut DSession, now: Instant) {
        // (state, whether the answer is the input) of the call that ended, if one did.
        let mut ended: Option<(CallState, bool)> = None;
        while let Some(ev) = s.poll_event() {
            match ev {
                DaemonEvent::Register { .. } => {
                    let _ = self.ready.send(Ready {
                        device: self.device.clone(),
                        commands: self.commands.clone(),
                    });
                }
                DaemonEvent::Event { event, .. } => {
                    self.received
                        .fetch_add(event.payload.data.len() as u64, Ordering::Relaxed);
                }
                DaemonEvent::CallUpdate { state, outcome, .. } if state.is_final() => {
                    let echoed = match (&outcome, &self.run) {
                        (Some(Outcome::Success(p)), Some(run)) => p.data == run.input.as_slice(),
                        _ => false,
                    };
                    ended = Some((state, echoed));
                }
                _ => {}
            }
        }
        let Some((state, echoed)) = ended else {
            return;
        };
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if state != CallState::Succeeded || !echoed {
            return self.stop(Err(format!(
                "call ended {state:?} (answer equal to the input: {echoed})"
            )));
        }
        run.samples.push(run.sent_at.elapsed());
        self.next_call(s, now);
    }

    fn handle_command(&mut self, s: &mut DSession, now: Instant, command: DaemonCommand) {
        match command {
            DaemonCommand::RoundTrips { count, input, done } => {
                self.stop(Err("superseded by another run".into()));
                self.run = Some(RoundTrips {
                    left: count,
                    input,
                    sent_at: StdInstant::now(),
                    samples: Vec::with_capacity(count),
                    done,
                });
                self.next_call(s, now);
            }
        }
    }
}

/// A daemon serving on loopback over one transport of `transport-tokio`.
pub struct Daemon {
    pub addr: SocketAddr,
    pub registry: Registry,
    /// Devices whose node registered, in order.
    pub ready: mpsc::UnboundedReceiver<Ready>,
    quic: Option<QuicHandle<DaemonCommand>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("addr", &self.addr)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Daemon {
    /// Starts a daemon on `127.0.0.1:0` over `transport` (`QuicDriver` or `TcpTls`).
    /// Must be called inside a tokio runtime.
    pub async fn start(
        transport: Transport,
        identity: &DaemonIdentity,
    ) -> Result<Self, BenchError> {
        let (tls, revocation) = identity.server_tls()?;
        let config = daemon_config();
        let (registry, ready) = Registry::new(config, [7; 32]);
        let journal = Arc::new(MemJournals::new());
        let pool = StoragePool::new(config.storage_len(), POOL_IDLE);
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        match transport {
            Transport::QuicDriver => {
                let (handle, task) = QuicEndpoint::server(
                    any,
                    tls,
                    revocation,
                    QuicLimits::default(),
                    registry.clone(),
                    journal,
                    pool,
                )
                .map_err(BenchError::context("QUIC daemon endpoint"))?;
                Ok(Self {
                    addr: handle.local_addr(),
                    registry,
                    ready,
                    quic: Some(handle),
                    tasks: vec![task],
                })
            }
            Transport::TcpTls => {
                let listener = Listener::bind(any, tls, revocation, ListenerConfig::default())
                    .await
                    .map_err(BenchError::context("TCP listener"))?;
                let addr = listener.local_addr()?;
                let (nodes, mut accepted) = mpsc::channel(256);
                let listen = tokio::spawn(async move {
                    let _ = listener
                        .run(Routes {
                            nodes,
                            pairing: None,
                        })
                        .await;
                });
                let sessions = registry.clone();
                let serve = tokio::spawn(async move {
                    while let Some(conn) = accepted.recv().await {
                        let (sessions, journal, pool) =
                            (sessions.clone(), journal.clone(), pool.clone());
                        tokio::spawn(async move {
                            conn.serve_with(sessions, journal, pool).await;
                        });
                    }
                });
                Ok(Self {
                    addr,
                    registry,
                    ready,
                    quic: None,
                    tasks: vec![listen, serve],
                })
            }
            Transport::Quinn => Err(BenchError(
                "the quinn baseline carries raw frames, not sessions".into(),
            )),
        }
    }

    /// The next device whose node registered.
    pub async fn next_ready(&mut self, wait: Duration) -> Result<Ready, BenchError> {
        tokio::time::timeout(wait, self.ready.recv())
            .await
            .map_err(|_| BenchError("no node registered in time".into()))?
            .ok_or_else(|| BenchError("the daemon stopped".into()))
    }

    /// Closes every connection (QUIC) and stops the daemon's tasks.
    pub async fn shutdown(self) {
        if let Some(handle) = &self.quic {
            handle.shutdown().await;
        }
    }
}

// ----- nodes -----

/// Commands the bench sends to a node's application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCommand {
    /// Send 64 KiB events for as long as this is on, as fast as the session takes them.
    Bulk(bool),
    /// Send this many 64 KiB events; the fleet's `settled` count goes up once they are
    /// all acknowledged.
    Send(usize),
}

/// What a fleet's nodes report.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Nodes whose `Send` events were all acknowledged.
    settled: AtomicUsize,
    /// The first command a session refused (other than `Full`), if any.
    failure: Mutex<Option<String>>,
}

impl FleetStats {
    pub fn settled(&self) -> usize {
        self.settled.load(Ordering::Relaxed)
    }

    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    fn fail(&self, what: String) {
        lock(&self.failure).get_or_insert(what);
    }
}

/// A node's application: registers `echo`, answers calls with their input, sends
/// 64 KiB events on command.
pub struct NodeApp {
    payload: Arc<[u8]>,
    stats: Arc<FleetStats>,
    bulk: bool,
    to_send: usize,
    awaiting_acks: bool,
    answers: Vec<(CallId, Vec<u8>)>,
}

impl std::fmt::Debug for NodeApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeApp")
            .field("bulk", &self.bulk)
            .field("to_send", &self.to_send)
            .finish_non_exhaustive()
    }
}

impl NodeApp {
    fn new(payload: Arc<[u8]>, stats: Arc<FleetStats>) -> Self {
        Self {
            payload,
            stats,
            bulk: false,
            to_send: 0,
            awaiting_acks: false,
            answers: Vec::new(),
        }
    }

    /// Queues events while asked to and while the replay buffer has room; acks free it
    /// and bring the session back here.
    fn fill(&mut self, s: &mut NSession) {
        while self.bulk || self.to_send > 0 {
            let payload = Payload {
                content_type: CONTENT,
                data: &self.payload,
            };
            match s.send_event("bulk", payload) {
                Ok(_) => self.to_send = self.to_send.saturating_sub(1),
                Err(SessionError::Full) => break,
                Err(e) => {
                    self.stats.fail(format!("send_event: {e}"));
                    (self.bulk, self.to_send) = (false, 0);
                }
            }
        }
        if self.awaiting_acks && self.to_send == 0 && s.replay_usage().0 == 0 {
            self.awaiting_acks = false;
            self.stats.settled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Application<NSession> for NodeApp {
    type Command = NodeCommand;

    fn handle_events(&mut self, s: &mut NSession, _: Instant) {
        let mut register = false;
        while let Some(ev) = s.poll_event() {
            match ev {
                NodeEvent::Connected { resumed: false, .. } => register = true,
                NodeEvent::Call { call, .. } => {
                    self.answers.push((call.call_id, call.input.data.to_vec()));
                }
                _ => {}
            }
        }
        if register {
            let registered = Capabilities::new(&ECHO)
                .map_err(|e| format!("{e:?}"))
                .and_then(|capabilities| {
                    s.register(Register { capabilities })
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = registered {
                self.stats.fail(format!("register: {e}"));
            }
        }
        for (call_id, data) in self.answers.drain(..) {
            let out = Payload {
                content_type: CONTENT,
                data: &data,
            };
            if let Err(e) = s.complete(call_id, Outcome::Success(out)) {
                self.stats.fail(format!("complete: {e}"));
            }
        }
        self.fill(s);
    }

    fn handle_command(&mut self, s: &mut NSession, _: Instant, command: NodeCommand) {
        match command {
            NodeCommand::Bulk(on) => self.bulk = on,
            NodeCommand::Send(n) => {
                self.to_send += n;
                self.awaiting_acks = true;
            }
        }
        self.fill(s);
    }
}

/// The node side of a transport: lends each connection the next waiting session, and
/// hands out the connection's commands.
struct NodeHost {
    waiting: Arc<Mutex<VecDeque<(NSession, NodeApp)>>>,
    opened: mpsc::UnboundedSender<Commands<NodeCommand>>,
}

impl Sessions<NSession> for NodeHost {
    type App = NodeApp;

    fn open(
        &mut self,
        _: &Peer,
        commands: Commands<NodeCommand>,
    ) -> Result<Opened<NSession, NodeApp>, Refusal> {
        let (session, app) = lock(&self.waiting).pop_front().ok_or_else(|| {
            Refusal::new(ErrorCode::Overloaded, "no node waits for this connection")
        })?;
        let _ = self.opened.send(commands);
        Ok(Opened {
            session,
            app,
            journal_key: "node".into(),
        })
    }

    // A bench node does not reconnect: its session ends with the connection.
    fn closed(&mut self, _: &Peer, _: NSession, _: NodeApp, _: Closed) {}
}

/// Nodes connected to a daemon, each with its own certificate and session.
pub struct Fleet {
    /// One per node, in the order of the certificates.
    pub commands: Vec<Commands<NodeCommand>>,
    pub stats: Arc<FleetStats>,
    quic: Vec<QuicHandle<NodeCommand>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("nodes", &self.commands.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

fn new_node(
    i: usize,
    stats: &Arc<FleetStats>,
    payload: &Arc<[u8]>,
) -> Result<(NSession, NodeApp), BenchError> {
    let session = NodeSession::new(node_config(), &super::certs::node_id(i), "bench", None)
        .map_err(BenchError::context("node session"))?;
    Ok((session, NodeApp::new(payload.clone(), stats.clone())))
}

impl Fleet {
    /// Connects one node per certificate in `leaves` (`leaves[i]` is `node-<i>`) to the
    /// daemon at `addr` over `transport`. QUIC nodes share `endpoints` client endpoints
    /// (one connection per node).
    pub async fn connect(
        transport: Transport,
        addr: SocketAddr,
        pin: Fingerprint,
        leaves: &[Leaf],
        endpoints: usize,
    ) -> Result<Self, BenchError> {
        let stats = Arc::new(FleetStats::default());
        let payload: Arc<[u8]> = (0..BULK_PAYLOAD).map(|i| i as u8).collect();
        let pool = StoragePool::new(node_config().storage_len(), POOL_IDLE);
        let journal = Arc::new(MemJournals::new());
        let mut fleet = Fleet {
            commands: Vec::with_capacity(leaves.len()),
            stats: stats.clone(),
            quic: Vec::new(),
            tasks: Vec::new(),
        };
        match transport {
            Transport::QuicDriver => {
                let endpoints = endpoints.clamp(1, leaves.len().max(1));
                let mut dialers = Vec::new();
                for e in 0..endpoints {
                    let waiting = Arc::new(Mutex::new(VecDeque::new()));
                    let (opened, mut opened_rx) = mpsc::unbounded_channel();
                    let host = NodeHost {
                        waiting: waiting.clone(),
                        opened,
                    };
                    let (handle, task) = QuicEndpoint::client(
                        ([127, 0, 0, 1], 0).into(),
                        QuicLimits::default(),
                        host,
                        journal.clone(),
                        pool.clone(),
                    )
                    .map_err(BenchError::context("QUIC node endpoint"))?;
                    fleet.tasks.push(task);
                    fleet.quic.push(handle.clone());
                    let mine: Vec<(usize, Arc<rustls::ClientConfig>, (NSession, NodeApp))> = (e
                        ..leaves.len())
                        .step_by(endpoints)
                        .map(|i| Ok((i, leaves[i].client(pin)?, new_node(i, &stats, &payload)?)))
                        .collect::<Result<_, BenchError>>()?;
                    // One connect at a time per endpoint, so each connection takes the
                    // session queued for it.
                    dialers.push(tokio::spawn(async move {
                        let mut got = Vec::with_capacity(mine.len());
                        for (i, tls, node) in mine {
                            lock(&waiting).push_back(node);
                            handle
                                .connect(addr, "127.0.0.1", tls)
                                .await
                                .map_err(BenchError::context("QUIC connect"))?;
                            let commands = opened_rx
                                .recv()
                                .await
                                .ok_or_else(|| BenchError("the node endpoint stopped".into()))?;
                            got.push((i, commands));
                        }
                        Ok::<_, BenchError>(got)
                    }));
                }
                let mut all = Vec::with_capacity(leaves.len());
                for d in dialers {
                    all.extend(d.await.map_err(BenchError::context("dialer task"))??);
                }
                all.sort_by_key(|(i, _)| *i);
                fleet.commands = all.into_iter().map(|(_, c)| c).collect();
            }
            Transport::TcpTls => {
                for (chunk_start, chunk) in leaves.chunks(TCP_CONNECTS_IN_FLIGHT).enumerate() {
                    let mut dials = Vec::with_capacity(chunk.len());
                    for (k, leaf) in chunk.iter().enumerate() {
                        let i = chunk_start * TCP_CONNECTS_IN_FLIGHT + k;
                        let connector = Connector::new(leaf.client(pin)?);
                        let node = new_node(i, &stats, &payload)?;
                        let (pool, journal) = (pool.clone(), journal.clone());
                        dials.push(tokio::spawn(async move {
                            let stream = connector
                                .connect(addr)
                                .await
                                .map_err(BenchError::context("TCP + TLS connect"))?;
                            let (opened, mut opened_rx) = mpsc::unbounded_channel();
                            let host = NodeHost {
                                waiting: Arc::new(Mutex::new(VecDeque::from([node]))),
                                opened,
                            };
                            let peer = daemon_peer(addr, pin);
                            let task = tokio::spawn(async move {
                                serve(stream, peer, host, journal, pool, None).await;
                            });
                            let commands = opened_rx.recv().await.ok_or_else(|| {
                                BenchError("the node connection ended at once".into())
                            })?;
                            Ok::<_, BenchError>((commands, task))
                        }));
                    }
                    for d in dials {
                        let (commands, task) =
                            d.await.map_err(BenchError::context("dial task"))??;
                        fleet.commands.push(commands);
                        fleet.tasks.push(task);
                    }
                }
            }
            Transport::Quinn => {
                return Err(BenchError(
                    "the quinn baseline carries raw frames, not sessions".into(),
                ));
            }
        }
        Ok(fleet)
    }

    /// Sends `command` to every node.
    pub async fn broadcast(&self, command: NodeCommand) -> Result<(), BenchError> {
        for c in &self.commands {
            c.send(command)
                .await
                .map_err(BenchError::context("node command"))?;
        }
        Ok(())
    }

    /// Waits until `n` nodes have had their `Send` events acknowledged.
    pub async fn settled(&self, n: usize, wait: Duration) -> Result<(), BenchError> {
        let deadline = StdInstant::now() + wait;
        while self.stats.settled() < n {
            if let Some(f) = self.stats.failure() {
                return Err(BenchError(format!("a node failed: {f}")));
            }
            if StdInstant::now() > deadline {
                return Err(BenchError(format!(
                    "{} of {n} nodes had their frames acknowledged in {wait:?}",
                    self.stats.settled()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Closes every QUIC connection and stops the nodes.
    pub async fn shutdown(self) {
        for h in &self.quic {
            h.shutdown().await;
        }
    }
}
