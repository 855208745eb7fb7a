//! The fleet's nodes: one `NodeSession` each, registering `echo` as the Linux node host
//! does, answering calls with their input, sending numbered events on command, and
//! reconnecting with the node host's backoff whenever their connection ends.
//!
//! A node's session and application are lent to a connection and come back when it
//! ends (`Sessions::closed`), as in the node host; the node's task then waits out a
//! jittered backoff and dials again, resuming the same session. QUIC nodes share client
//! endpoints, one per source address in use, which open one connection at a time to each
//! daemon address so every connection takes the session queued for it; TCP nodes open a
//! connection each from their own source address.
//!
//! Each node knows a list of daemon addresses (several daemons sharing one store),
//! starting with the one it paired with. It keeps dialing the address that last worked;
//! a dial that fails moves it on to the next address at once, and a backoff follows
//! only once every address failed in a row. A dial that waited in this process (for a
//! dial slot, or behind another node's dial on the same QUIC endpoint) while a dial to
//! the same address failed fails with it instead of dialing: the node it stands for,
//! on a host of its own, would have dialed at the same time and failed at the same time.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant as StdInstant};

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
    /// The same, by daemon address (in the order `Fleet::start` was given them).
    pub on_daemon: Vec<AtomicUsize>,
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
    fn new(daemons: usize) -> Self {
        Self {
            on_daemon: (0..daemons).map(|_| AtomicUsize::new(0)).collect(),
            ..Self::default()
        }
    }

    /// Nodes connected to daemon address `d` now.
    pub fn connected_to(&self, d: usize) -> usize {
        self.on_daemon
            .get(d)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

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
    /// The daemon address (its index) this node dials now.
    daemon: usize,
    /// The daemon address its last connection went to.
    placed: Arc<AtomicUsize>,
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

/// A session waiting for the connection being opened to one daemon address, and the
/// signal that a connection took it.
struct Slot {
    pending: Option<(NSession, NodeApp)>,
    opened: mpsc::UnboundedSender<()>,
}

/// The slots of one endpoint (QUIC) or connection (TCP), by daemon address.
type Slots = Arc<Mutex<HashMap<SocketAddr, Slot>>>;

/// Lends the session waiting in the slot of the daemon's address to the next connection
/// to it, and sends it back to its node when the connection ends.
struct Lend {
    slots: Slots,
}

impl Sessions<NSession> for Lend {
    type App = NodeApp;

    fn open(
        &mut self,
        peer: &Peer,
        commands: Commands<NodeCommand>,
    ) -> Result<Opened<NSession, NodeApp>, Refusal> {
        let refused = || Refusal::new(ErrorCode::Overloaded, "no node waits for this connection");
        let mut slots = lock(&self.slots);
        let slot = slots.get_mut(&peer.addr).ok_or_else(refused)?;
        let (session, app) = slot.pending.take().ok_or_else(refused)?;
        let _ = slot.opened.send(());
        drop(slots);
        *lock(&app.link) = Some(commands);
        app.stats.connected.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = app.stats.on_daemon.get(app.daemon) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        app.placed.store(app.daemon, Ordering::Relaxed);
        app.stats.opens.fetch_add(1, Ordering::Relaxed);
        let journal_key = app.key.clone();
        Ok(Opened {
            session,
            app,
            journal_key,
        })
    }

    fn closed(&mut self, _: &Peer, session: NSession, app: NodeApp, how: Closed) {
        app.stats.connected.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = app.stats.on_daemon.get(app.daemon) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
        *lock(&app.link) = None;
        let back = app.back.clone();
        let _ = back.send((session, app, how));
    }
}

/// When a dial to each daemon address last failed. With a single address nothing is
/// recorded: a node then keeps dialing it, whatever the others' dials did.
struct Outages {
    failed: Vec<Mutex<Option<StdInstant>>>,
}

impl Outages {
    fn new(daemons: usize) -> Self {
        Self {
            failed: if daemons > 1 {
                (0..daemons).map(|_| Mutex::new(None)).collect()
            } else {
                Vec::new()
            },
        }
    }

    fn failed(&self, d: usize) {
        if let Some(f) = self.failed.get(d) {
            *lock(f) = Some(StdInstant::now());
        }
    }

    /// A dial to `d` failed after `since`.
    fn failed_since(&self, d: usize, since: StdInstant) -> bool {
        self.failed
            .get(d)
            .is_some_and(|f| lock(f).is_some_and(|at| at > since))
    }
}

/// A QUIC client endpoint shared by the nodes of one source address.
struct QuicDialer {
    handle: QuicHandle<NodeCommand>,
    slots: Slots,
    /// One per daemon address, held for a whole connect to it, so connections take
    /// sessions in order.
    lanes: Vec<tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>>,
}

impl QuicDialer {
    fn new(
        source: Ipv4Addr,
        daemons: &[SocketAddr],
        journal: Arc<MemJournals>,
        pool: StoragePool,
    ) -> Result<(Self, JoinHandle<()>), BenchError> {
        let mut slots = HashMap::new();
        let mut lanes = Vec::with_capacity(daemons.len());
        for addr in daemons {
            let (opened, rx) = mpsc::unbounded_channel();
            slots.insert(
                *addr,
                Slot {
                    pending: None,
                    opened,
                },
            );
            lanes.push(tokio::sync::Mutex::new(rx));
        }
        let slots: Slots = Arc::new(Mutex::new(slots));
        let lend = Lend {
            slots: slots.clone(),
        };
        let (handle, task) = QuicEndpoint::client(
            SocketAddr::from((source, 0)),
            QuicLimits::default(),
            lend,
            journal,
            pool,
        )
        .map_err(BenchError::context("QUIC node endpoint"))?;
        Ok((
            Self {
                handle,
                slots,
                lanes,
            },
            task,
        ))
    }

    async fn dial(
        &self,
        node: (NSession, NodeApp),
        (d, addr): (usize, SocketAddr),
        tls: Arc<rustls::ClientConfig>,
        outages: &Outages,
        queued: StdInstant,
    ) -> Result<(), (NSession, NodeApp)> {
        let Some(lane) = self.lanes.get(d) else {
            return Err(node);
        };
        let mut opened = lane.lock().await;
        if outages.failed_since(d, queued) {
            return Err(node);
        }
        while opened.try_recv().is_ok() {}
        if let Some(slot) = lock(&self.slots).get_mut(&addr) {
            slot.pending = Some(node);
        }
        let connected = matches!(
            tokio::time::timeout(DIAL_TIMEOUT, self.handle.connect(addr, "127.0.0.1", tls)).await,
            Ok(Ok(_))
        );
        if connected {
            let _ = tokio::time::timeout(DIAL_TIMEOUT, opened.recv()).await;
        }
        // Still here: no connection took it.
        match lock(&self.slots)
            .get_mut(&addr)
            .and_then(|s| s.pending.take())
        {
            Some(node) => {
                outages.failed(d);
                Err(node)
            }
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
    placed: Vec<Arc<AtomicUsize>>,
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
    /// Starts one task per enrolled node; each dials its daemon among `daemons` (the
    /// others after it in turn when it fails) over `transport` from its source address
    /// (at most `in_flight` dials at once across the fleet), and reconnects for as long
    /// as the fleet lives.
    pub fn start(
        transport: Transport,
        daemons: &[SocketAddr],
        nodes: Vec<Enrolled>,
        in_flight: usize,
    ) -> Result<Self, BenchError> {
        if daemons.is_empty() {
            return Err(BenchError("no daemon address to dial".into()));
        }
        let stats = Arc::new(FleetStats::new(daemons.len()));
        let pool = StoragePool::new(node_config().storage_len(), 64);
        let journal = Arc::new(MemJournals::new());
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let outages = Arc::new(Outages::new(daemons.len()));
        let addresses: Arc<[SocketAddr]> = daemons.into();
        let mut fleet = Fleet {
            stats: stats.clone(),
            links: Vec::with_capacity(nodes.len()),
            placed: Vec::with_capacity(nodes.len()),
            endpoints: Vec::new(),
            tasks: Vec::with_capacity(nodes.len()),
        };
        let mut dialers: HashMap<Ipv4Addr, Arc<QuicDialer>> = HashMap::new();
        for (i, node) in nodes.into_iter().enumerate() {
            let dial = match transport {
                Transport::Quic => {
                    let dialer = match dialers.get(&node.source) {
                        Some(d) => d.clone(),
                        None => {
                            let (d, task) = QuicDialer::new(
                                node.source,
                                daemons,
                                journal.clone(),
                                pool.clone(),
                            )?;
                            fleet.tasks.push(task);
                            fleet.endpoints.push(d.handle.clone());
                            let d = Arc::new(d);
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
            let home = node.home % daemons.len();
            let placed = Arc::new(AtomicUsize::new(home));
            fleet.placed.push(placed.clone());
            let app = NodeApp {
                key,
                stats: stats.clone(),
                daemon: home,
                placed,
                next_seq: 0,
                target_seq: 0,
                awaiting_acks: false,
                answers: Vec::new(),
                link: link.clone(),
                back,
            };
            fleet.links.push(link);
            let run = NodeRun {
                daemons: addresses.clone(),
                at: home,
                outages: outages.clone(),
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

    /// The daemon address (its index) node `i`'s last connection went to (its own
    /// before it connected).
    pub fn daemon_of(&self, i: usize) -> usize {
        self.placed.get(i).map_or(0, |p| p.load(Ordering::Relaxed))
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
    daemons: Arc<[SocketAddr]>,
    /// The address dialed next (an index into `daemons`).
    at: usize,
    outages: Arc<Outages>,
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
        // Addresses that failed in a row since the last connection or backoff.
        let mut failed_in_row = 0usize;
        loop {
            let d = self.at;
            node.1.daemon = d;
            let dialed = {
                let queued = StdInstant::now();
                let slots = self.slots.clone();
                let Ok(_slot) = slots.acquire().await else {
                    return;
                };
                if self.outages.failed_since(d, queued) {
                    Err(node)
                } else {
                    self.dial_once(node, d, queued).await
                }
            };
            match dialed {
                Ok(()) => {
                    // The session comes back when the connection ends.
                    let Some((session, app, how)) = self.back.recv().await else {
                        return;
                    };
                    *lock(&self.stats.ends).entry(how.to_string()).or_default() += 1;
                    attempt = 0;
                    failed_in_row = 0;
                    node = (session, app);
                }
                Err(given_back) => {
                    node = given_back;
                    self.stats.failed_dials.fetch_add(1, Ordering::Relaxed);
                    self.at = (d + 1) % self.daemons.len();
                    failed_in_row += 1;
                    if failed_in_row < self.daemons.len() {
                        // The next address at once.
                        continue;
                    }
                    failed_in_row = 0;
                }
            }
            let delay = backoff.delay_ms(attempt, self.rng.next_u64());
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }

    async fn dial_once(
        &self,
        node: (NSession, NodeApp),
        d: usize,
        queued: StdInstant,
    ) -> Result<(), (NSession, NodeApp)> {
        let addr = self.daemons[d];
        match &self.dial {
            Dial::Quic(dialer) => {
                dialer
                    .dial(node, (d, addr), self.tls.clone(), &self.outages, queued)
                    .await
            }
            Dial::Tcp(source) => {
                let connector = Connector::new(self.tls.clone());
                let connect = connector.connect_from(SocketAddr::from((*source, 0)), addr);
                let stream = match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        self.outages.failed(d);
                        return Err(node);
                    }
                };
                let (opened_tx, mut opened) = mpsc::unbounded_channel();
                let slot = Slot {
                    pending: Some(node),
                    opened: opened_tx,
                };
                let slots: Slots = Arc::new(Mutex::new(HashMap::from([(addr, slot)])));
                let lend = Lend {
                    slots: slots.clone(),
                };
                let peer = daemon_peer(addr, self.pin);
                let (journal, pool) = (self.journal.clone(), self.pool.clone());
                tokio::spawn(async move {
                    let how = serve(stream, peer, lend, journal, pool, None).await;
                    // A connection that ended before it took the session gives it back
                    // here.
                    let left = lock(&slots).get_mut(&addr).and_then(|s| s.pending.take());
                    if let Some((session, app)) = left {
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
