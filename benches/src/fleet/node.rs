//! The fleet's nodes: one `NodeSession` each, registering `echo` as the Linux node host
//! does, answering calls with their input, sending numbered events on command, and
//! reconnecting with the node host's backoff whenever their connection ends.
//!
//! A node's session and application are lent to a connection and come back when it
//! ends (`Sessions::closed`), as in the node host; the node's task then waits out a
//! jittered backoff and dials again, resuming the same session. QUIC nodes share client
//! endpoints, one per source address in use, which open one connection at a time each
//! so every connection takes the session queued for it; TCP nodes open a connection
//! each from their own source address.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chacha20::ChaCha20Rng;
use protocol_core::backoff::Backoff;
use protocol_core::session::{Config, Instant, NodeEvent, NodeSession, SessionError};
use protocol_core::wire::{
    CallId, Capabilities, CapabilityDescriptor, ErrorCode, Outcome, Payload, Register,
};
use rand_core::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use transport_tokio::host::{Closed, Commands, Opened, Peer, Refusal, Sessions};
use transport_tokio::quic::{QuicEndpoint, QuicHandle, QuicLimits};
use transport_tokio::tcp::{Connector, daemon_peer, serve};
use transport_tokio::tls::Fingerprint;
use transport_tokio::{Application, MemJournals, StoragePool};

use super::Transport;
use super::enrol::Enrolled;
use crate::transports::BenchError;

pub type NSession = NodeSession<Box<[u8]>>;

/// The capability every node registers, as the node host's `echo` (JSON in and out).
pub const CAPABILITY: &str = "echo";
pub const JSON: &str = "application/json";
/// The name of the numbered events.
pub const EVENT_NAME: &str = "fleet.seq";

const ECHO: [CapabilityDescriptor<'static>; 1] = [CapabilityDescriptor {
    name: CAPABILITY,
    version: 1,
    input: JSON,
    output: JSON,
    needs_approval: false,
}];

/// A connection attempt that neither completes nor fails for this long is given up.
const DIAL_TIMEOUT: Duration = Duration::from_secs(20);

/// A node's session: journaled like the node host's would be, but in RAM (the node
/// side is not what is measured), with small frames so 10,000 of them fit in the
/// generator: calls and events here are a few bytes.
pub fn node_config() -> Config {
    let mut c = Config::server(32 * 1024).with_max_frame(16 * 1024);
    c.durable = false;
    c
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values stay consistent if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Commands to a node's application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCommand {
    /// Send this many more numbered events; the node counts as settled once all it
    /// sent are acknowledged (the daemon acknowledges after its store committed them).
    Send(u64),
}

/// What the nodes report, all together.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Connections carrying a session now.
    pub connected: AtomicUsize,
    /// Connections that took a session, ever.
    pub opens: AtomicUsize,
    /// Nodes whose events are all acknowledged.
    pub settled: AtomicUsize,
    /// Connection attempts that failed.
    pub failed_dials: AtomicUsize,
    /// Sessions the daemon lost (a reconnect it could not resume), and the node's
    /// messages those resets declared undeliverable.
    pub resets: AtomicUsize,
    pub reset_unacked: AtomicUsize,
    /// Why the nodes' connections ended, as their sessions saw it, and how often.
    pub disconnects: Mutex<std::collections::HashMap<String, usize>>,
    /// How the nodes' connections ended, as their drivers saw it, and how often.
    pub ends: Mutex<std::collections::HashMap<String, usize>>,
    failure: Mutex<Option<String>>,
}

impl FleetStats {
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    fn fail(&self, what: String) {
        lock(&self.failure).get_or_insert(what);
    }
}

/// The commands of a node's current connection, if it has one.
type Link = Arc<Mutex<Option<Commands<NodeCommand>>>>;

/// A session on its way back to its node's task, and how its connection ended.
type Back = (NSession, NodeApp, Closed);

/// A node's application.
pub struct NodeApp {
    key: Arc<str>,
    stats: Arc<FleetStats>,
    /// The next event's sequence number (from 0) and how many to reach.
    next_seq: u64,
    target_seq: u64,
    awaiting_acks: bool,
    answers: Vec<(CallId, Vec<u8>)>,
    link: Link,
    back: mpsc::UnboundedSender<Back>,
}

impl std::fmt::Debug for NodeApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeApp")
            .field("key", &self.key)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl NodeApp {
    fn fill(&mut self, s: &mut NSession) {
        while self.next_seq < self.target_seq {
            let body = format!("{{\"seq\":{}}}", self.next_seq);
            let payload = Payload {
                content_type: JSON,
                data: body.as_bytes(),
            };
            match s.send_event(EVENT_NAME, payload) {
                Ok(_) => self.next_seq += 1,
                Err(SessionError::Full) => break,
                Err(e) => {
                    self.stats.fail(format!("{}: send_event: {e}", self.key));
                    self.target_seq = self.next_seq;
                }
            }
        }
        if self.awaiting_acks && self.next_seq == self.target_seq && s.replay_usage().0 == 0 {
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
                // A resumed session keeps its registration on the daemon's side.
                NodeEvent::Connected { resumed: false, .. } => register = true,
                NodeEvent::Call { call, .. } => {
                    self.answers.push((call.call_id, call.input.data.to_vec()));
                }
                NodeEvent::Disconnected(reason) => {
                    *lock(&self.stats.disconnects)
                        .entry(format!("{reason:?}"))
                        .or_default() += 1;
                }
                NodeEvent::SessionReset { unacked, .. } => {
                    self.stats.resets.fetch_add(1, Ordering::Relaxed);
                    if let Some((from, to)) = unacked {
                        let lost = to.saturating_sub(from).saturating_add(1);
                        self.stats.reset_unacked.fetch_add(
                            usize::try_from(lost).unwrap_or(usize::MAX),
                            Ordering::Relaxed,
                        );
                    }
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
                self.stats.fail(format!("{}: register: {e}", self.key));
            }
        }
        for (call_id, data) in self.answers.drain(..) {
            let out = Payload {
                content_type: JSON,
                data: &data,
            };
            if let Err(e) = s.complete(call_id, Outcome::Success(out)) {
                self.stats.fail(format!("{}: complete: {e}", self.key));
            }
        }
        self.fill(s);
    }

    fn handle_command(&mut self, s: &mut NSession, _: Instant, command: NodeCommand) {
        match command {
            NodeCommand::Send(n) => {
                self.target_seq += n;
                self.awaiting_acks = true;
            }
        }
        self.fill(s);
    }
}

/// Lends the session waiting in `pending` to the next connection, and sends it back to
/// its node when the connection ends.
struct Lend {
    pending: Arc<Mutex<Option<(NSession, NodeApp)>>>,
    opened: mpsc::UnboundedSender<()>,
}

impl Sessions<NSession> for Lend {
    type App = NodeApp;

    fn open(
        &mut self,
        _: &Peer,
        commands: Commands<NodeCommand>,
    ) -> Result<Opened<NSession, NodeApp>, Refusal> {
        let (session, app) = lock(&self.pending).take().ok_or_else(|| {
            Refusal::new(ErrorCode::Overloaded, "no node waits for this connection")
        })?;
        *lock(&app.link) = Some(commands);
        app.stats.connected.fetch_add(1, Ordering::Relaxed);
        app.stats.opens.fetch_add(1, Ordering::Relaxed);
        let _ = self.opened.send(());
        let journal_key = app.key.clone();
        Ok(Opened {
            session,
            app,
            journal_key,
        })
    }

    fn closed(&mut self, _: &Peer, session: NSession, app: NodeApp, how: Closed) {
        app.stats.connected.fetch_sub(1, Ordering::Relaxed);
        *lock(&app.link) = None;
        let back = app.back.clone();
        let _ = back.send((session, app, how));
    }
}

/// A QUIC client endpoint shared by the nodes of one source address.
struct QuicDialer {
    handle: QuicHandle<NodeCommand>,
    pending: Arc<Mutex<Option<(NSession, NodeApp)>>>,
    /// Held for a whole connect, so connections take sessions in order.
    opened: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

impl QuicDialer {
    async fn dial(
        &self,
        node: (NSession, NodeApp),
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<(), (NSession, NodeApp)> {
        let mut opened = self.opened.lock().await;
        while opened.try_recv().is_ok() {}
        *lock(&self.pending) = Some(node);
        let connected = matches!(
            tokio::time::timeout(DIAL_TIMEOUT, self.handle.connect(addr, "127.0.0.1", tls)).await,
            Ok(Ok(_))
        );
        if connected {
            let _ = tokio::time::timeout(DIAL_TIMEOUT, opened.recv()).await;
        }
        // Still here: no connection took it.
        match lock(&self.pending).take() {
            Some(node) => Err(node),
            None => Ok(()),
        }
    }
}

enum Dial {
    Quic(Arc<QuicDialer>),
    Tcp(Ipv4Addr),
}

/// The nodes, running.
pub struct Fleet {
    pub stats: Arc<FleetStats>,
    links: Vec<Link>,
    endpoints: Vec<QuicHandle<NodeCommand>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("nodes", &self.links.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Fleet {
    /// Starts one task per enrolled node; each dials `daemon` over `transport` from its
    /// source address (at most `in_flight` dials at once across the fleet), and
    /// reconnects for as long as the fleet lives.
    pub fn start(
        transport: Transport,
        daemon: SocketAddr,
        nodes: Vec<Enrolled>,
        in_flight: usize,
    ) -> Result<Self, BenchError> {
        let stats = Arc::new(FleetStats::default());
        let pool = StoragePool::new(node_config().storage_len(), 64);
        let journal = Arc::new(MemJournals::new());
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let mut fleet = Fleet {
            stats: stats.clone(),
            links: Vec::with_capacity(nodes.len()),
            endpoints: Vec::new(),
            tasks: Vec::with_capacity(nodes.len()),
        };
        let mut dialers: std::collections::HashMap<Ipv4Addr, Arc<QuicDialer>> =
            std::collections::HashMap::new();
        for (i, node) in nodes.into_iter().enumerate() {
            let dial = match transport {
                Transport::Quic => {
                    let dialer = match dialers.get(&node.source) {
                        Some(d) => d.clone(),
                        None => {
                            let pending = Arc::new(Mutex::new(None));
                            let (opened_tx, opened_rx) = mpsc::unbounded_channel();
                            let lend = Lend {
                                pending: pending.clone(),
                                opened: opened_tx,
                            };
                            let (handle, task) = QuicEndpoint::client(
                                SocketAddr::from((node.source, 0)),
                                QuicLimits::default(),
                                lend,
                                journal.clone(),
                                pool.clone(),
                            )
                            .map_err(BenchError::context("QUIC node endpoint"))?;
                            fleet.tasks.push(task);
                            fleet.endpoints.push(handle.clone());
                            let d = Arc::new(QuicDialer {
                                handle,
                                pending,
                                opened: tokio::sync::Mutex::new(opened_rx),
                            });
                            dialers.insert(node.source, d.clone());
                            d
                        }
                    };
                    Dial::Quic(dialer)
                }
                Transport::Tcp => Dial::Tcp(node.source),
            };
            let (back, back_rx) = mpsc::unbounded_channel();
            let link: Link = Arc::new(Mutex::new(None));
            let key: Arc<str> = node.device_id.as_str().into();
            let session = NodeSession::new(node_config(), &node.device_id, "linux-fleet", None)
                .map_err(BenchError::context("node session"))?;
            let app = NodeApp {
                key,
                stats: stats.clone(),
                next_seq: 0,
                target_seq: 0,
                awaiting_acks: false,
                answers: Vec::new(),
                link: link.clone(),
                back,
            };
            fleet.links.push(link);
            let run = NodeRun {
                daemon,
                pin: node.pin,
                tls: node.tls,
                dial,
                back: back_rx,
                slots: slots.clone(),
                stats: stats.clone(),
                pool: pool.clone(),
                journal: journal.clone(),
                rng: ChaCha20Rng::seed_from_u64(i as u64),
            };
            fleet.tasks.push(tokio::spawn(run.run((session, app))));
        }
        Ok(fleet)
    }

    /// Nodes connected now.
    pub fn connected(&self) -> usize {
        self.stats.connected.load(Ordering::Relaxed)
    }

    /// Sends `command` to every connected node; returns how many it reached.
    pub async fn broadcast(&self, command: NodeCommand) -> usize {
        let mut reached = 0;
        for link in &self.links {
            let commands = lock(link).clone();
            if let Some(c) = commands
                && c.send(command).await.is_ok()
            {
                reached += 1;
            }
        }
        reached
    }

    /// Closes the QUIC endpoints (their connections close) and stops the nodes.
    pub async fn shutdown(self) {
        for h in &self.endpoints {
            h.shutdown().await;
        }
    }
}

/// One node's dial loop.
struct NodeRun {
    daemon: SocketAddr,
    pin: Fingerprint,
    tls: Arc<rustls::ClientConfig>,
    dial: Dial,
    back: mpsc::UnboundedReceiver<Back>,
    slots: Arc<Semaphore>,
    stats: Arc<FleetStats>,
    pool: StoragePool,
    journal: Arc<MemJournals>,
    rng: ChaCha20Rng,
}

impl NodeRun {
    async fn run(mut self, mut node: (NSession, NodeApp)) {
        let backoff = Backoff::default();
        let mut attempt = 0u32;
        loop {
            let dialed = {
                let slots = self.slots.clone();
                let Ok(_slot) = slots.acquire().await else {
                    return;
                };
                self.dial_once(node).await
            };
            node = match dialed {
                Ok(()) => {
                    // The session comes back when the connection ends.
                    let Some((session, app, how)) = self.back.recv().await else {
                        return;
                    };
                    *lock(&self.stats.ends).entry(how.to_string()).or_default() += 1;
                    attempt = 0;
                    (session, app)
                }
                Err(node) => {
                    self.stats.failed_dials.fetch_add(1, Ordering::Relaxed);
                    node
                }
            };
            let delay = backoff.delay_ms(attempt, self.rng.next_u64());
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }

    async fn dial_once(&self, node: (NSession, NodeApp)) -> Result<(), (NSession, NodeApp)> {
        match &self.dial {
            Dial::Quic(d) => d.dial(node, self.daemon, self.tls.clone()).await,
            Dial::Tcp(source) => {
                let connector = Connector::new(self.tls.clone());
                let connect = connector.connect_from(SocketAddr::from((*source, 0)), self.daemon);
                let stream = match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
                    Ok(Ok(s)) => s,
                    _ => return Err(node),
                };
                let pending = Arc::new(Mutex::new(Some(node)));
                let (opened_tx, mut opened) = mpsc::unbounded_channel();
                let lend = Lend {
                    pending: pending.clone(),
                    opened: opened_tx,
                };
                let peer = daemon_peer(self.daemon, self.pin);
                let (journal, pool) = (self.journal.clone(), self.pool.clone());
                let held = pending.clone();
                tokio::spawn(async move {
                    let how = serve(stream, peer, lend, journal, pool, None).await;
                    // A connection that ended before it took the session gives it back
                    // here.
                    if let Some((session, app)) = lock(&held).take() {
                        let back = app.back.clone();
                        let _ = back.send((session, app, how));
                    }
                });
                let _ = tokio::time::timeout(DIAL_TIMEOUT, opened.recv()).await;
                // Taken by the connection, or given back through `back` when it ended
                // first: either way the node waits on `back` now.
                Ok(())
            }
        }
    }
}
