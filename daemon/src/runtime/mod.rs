//! The node runtime: every node's session (kept between connections, lent to whichever
//! transport carries the node now), its capabilities and last sighting, a dispatch
//! queue per node with enforced deadlines, call results, and events.
//!
//! - [`registry`]: the [`Sessions`](transport_tokio::host::Sessions) both transports
//!   ask for a node's session when it connects and give back when it leaves.
//! - [`app`]: what a connected node's session events do (capabilities, events, call
//!   results), and the dispatch of queued calls into the session.
//! - [`calls`]: the runtime's calls, their waiters and deadlines.
//! - [`persist`]: what the runtime writes to the state store.

pub mod app;
pub mod calls;
pub mod ownership;
pub mod persist;
pub mod registry;
pub mod renewal;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chacha20::ChaCha20Rng;
use protocol_core::session::{Config, DaemonSession, JournalRead};
use protocol_core::wire::ErrorCode;
use protocol_core::wire::SessionId;
use tokio::sync::{Notify, oneshot};
use tracing::info;
use transport_tokio::StoragePool;
use transport_tokio::host::{Commands, TransportKind};

use crate::model::Call;
pub use crate::model::Capability;
pub use calls::CallStatus;
pub use persist::RuntimeStore;
pub use registry::Registry;
pub use renewal::Renewer;

/// A daemon-side session as the runtime keeps it.
pub type NodeSessionState = DaemonSession<Box<[u8]>>;

/// What the application asks a connected node's connection to do.
#[derive(Debug)]
pub enum RuntimeCommand {
    /// Calls are queued for this node: put them into the session now.
    Dispatch,
    /// Close the connection (a newer one takes over, or the node was revoked).
    Close(ErrorCode),
}

/// What the runtime knows of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub online: bool,
    pub last_seen_ms: u64,
    pub address: Option<String>,
    pub transport: Option<TransportKind>,
    pub platform: Option<String>,
    pub capabilities: Vec<Capability>,
}

/// A node's entry: its session when no connection holds it, and what it registered.
pub(crate) struct NodeEntry {
    pub(crate) session: Option<NodeSessionState>,
    pub(crate) connection: Option<Commands<RuntimeCommand>>,
    pub(crate) info: NodeInfo,
    pub(crate) session_id: Option<SessionId>,
    /// Daemon call ids waiting to go into the session, oldest first.
    pub(crate) queue: VecDeque<u64>,
    /// Session call id -> daemon call id, for calls in the session.
    pub(crate) in_session: HashMap<u64, u64>,
    /// Calls this daemon gave up on while they were in the session, by session call
    /// id: a late answer from the node is recorded against them.
    pub(crate) timed_out: HashMap<u64, Call>,
}

/// Timed-out calls a node entry remembers for late answers.
const LATE_ANSWERS_KEPT: usize = 256;

impl NodeEntry {
    /// Remembers a call given up on while the node held it.
    pub(crate) fn gave_up(&mut self, row: Call) {
        let Some(sc) = row.session_call else { return };
        if self.timed_out.len() >= LATE_ANSWERS_KEPT
            && let Some(&oldest) = self.timed_out.keys().min()
        {
            self.timed_out.remove(&oldest);
        }
        self.timed_out.insert(sc, row);
    }
}

impl NodeEntry {
    fn new(id: &str) -> Self {
        Self {
            session: None,
            connection: None,
            info: NodeInfo {
                id: id.to_owned(),
                online: false,
                last_seen_ms: 0,
                address: None,
                transport: None,
                platform: None,
                capabilities: Vec::new(),
            },
            session_id: None,
            queue: VecDeque::new(),
            in_session: HashMap::new(),
            timed_out: HashMap::new(),
        }
    }
}

pub(crate) struct State {
    pub(crate) nodes: HashMap<String, NodeEntry>,
    pub(crate) calls: calls::Calls,
    pub(crate) rng: ChaCha20Rng,
    /// When each node last asked for a renewed certificate.
    pub(crate) renewals: HashMap<String, u64>,
}

/// The runtime, shared by the transports (through [`Registry`]) and the operator API.
pub struct Runtime {
    pub(crate) config: Config,
    pub(crate) state: Mutex<State>,
    pub(crate) store: Arc<dyn RuntimeStore>,
    pub(crate) pool: StoragePool,
    /// Woken when events were stored (followers re-read the store).
    pub events_stored: Arc<Notify>,
    pub(crate) renewer: std::sync::OnceLock<Arc<dyn renewal::Renewer>>,
    pub(crate) ownership: std::sync::OnceLock<Arc<dyn ownership::Ownership>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A call could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchError {
    UnknownNode(String),
    /// The timeout is zero or above the limit.
    BadTimeout(u64),
}

impl std::fmt::Display for DispatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownNode(id) => write!(f, "unknown node {id:?}"),
            Self::BadTimeout(ms) => write!(
                f,
                "timeout {ms} ms out of range (1 ms ..= {} ms)",
                calls::MAX_TIMEOUT_MS
            ),
        }
    }
}

impl std::error::Error for DispatchError {}

impl Runtime {
    /// A runtime whose sessions use `config` and lend storage from `pool`. `seed`
    /// seeds session ids (from the OS at start).
    pub fn new(
        config: Config,
        store: Arc<dyn RuntimeStore>,
        pool: StoragePool,
        seed: [u8; 32],
    ) -> Arc<Self> {
        use rand_core::SeedableRng;
        Arc::new(Self {
            config,
            state: Mutex::new(State {
                nodes: HashMap::new(),
                calls: calls::Calls::default(),
                rng: ChaCha20Rng::from_seed(seed),
                renewals: HashMap::new(),
            }),
            store,
            pool,
            events_stored: Arc::new(Notify::new()),
            renewer: std::sync::OnceLock::new(),
            ownership: std::sync::OnceLock::new(),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Restores node `id`'s session from its journal (at start, before any connection)
    /// with what the store knows of the node.
    pub fn restore_node<J: JournalRead>(&self, info: NodeInfo, journal: &J) -> Result<(), String> {
        let mut state = self.lock();
        let state = &mut *state;
        let mut session = DaemonSession::restore(
            self.config,
            &info.id,
            Some(self.pool.take()),
            journal,
            &mut state.rng,
        )
        .map_err(|e| format!("restoring the session of {}: {e:?}", info.id))?;
        // Storage stays only if the journal held messages.
        if let Some(buf) = session.reclaim() {
            self.pool.put(buf);
        }
        let entry = state
            .nodes
            .entry(info.id.clone())
            .or_insert_with(|| NodeEntry::new(&info.id));
        entry.session = Some(session);
        entry.info = NodeInfo {
            online: false,
            ..info
        };
        Ok(())
    }

    /// Adds a node the store knows of but has no journal (never connected), or updates
    /// one that is not connected here from what the store says.
    pub fn know_node(&self, info: NodeInfo) {
        let mut state = self.lock();
        let entry = state
            .nodes
            .entry(info.id.clone())
            .or_insert_with(|| NodeEntry::new(&info.id));
        // Connected here: this daemon knows best. Else the store's word (another
        // daemon may hold the node).
        let online = if entry.connection.is_some() {
            entry.info.online
        } else {
            info.online
        };
        entry.info = NodeInfo { online, ..info };
    }

    /// Every node, sorted by id.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let state = self.lock();
        let mut nodes: Vec<NodeInfo> = state.nodes.values().map(|e| e.info.clone()).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    /// At most `limit` nodes whose ids sort after `after` (every node when it is empty),
    /// sorted by id, and whether more follow them.
    pub fn nodes_after(&self, after: &str, limit: usize) -> (Vec<NodeInfo>, bool) {
        let state = self.lock();
        let mut page: Vec<&NodeInfo> = state
            .nodes
            .values()
            .map(|e| &e.info)
            .filter(|info| info.id.as_str() > after)
            .collect();
        let more = page.len() > limit;
        if more {
            page.select_nth_unstable_by(limit, |a, b| a.id.cmp(&b.id));
            page.truncate(limit);
        }
        page.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        (page.into_iter().cloned().collect(), more)
    }

    pub fn node(&self, id: &str) -> Option<NodeInfo> {
        self.lock().nodes.get(id).map(|e| e.info.clone())
    }

    /// Places a call for `node`: queued, and pushed into the node's session at once if
    /// it is connected. Resolves with the call's final state; a call whose deadline
    /// passes before the node answers ends `TimedOut` and is never dispatched later.
    pub fn call(
        self: &Arc<Self>,
        now_ms: u64,
        node: &str,
        capability: &str,
        content_type: &str,
        input: Vec<u8>,
        timeout_ms: u64,
    ) -> Result<(u64, oneshot::Receiver<Call>), DispatchError> {
        if timeout_ms == 0 || timeout_ms > calls::MAX_TIMEOUT_MS {
            return Err(DispatchError::BadTimeout(timeout_ms));
        }
        let mut state = self.lock();
        let state = &mut *state;
        let Some(entry) = state.nodes.get_mut(node) else {
            return Err(DispatchError::UnknownNode(node.to_owned()));
        };
        let (id, rx, row) =
            state
                .calls
                .create(now_ms, node, capability, content_type, input, timeout_ms);
        entry.queue.push_back(id);
        if let Some(conn) = &entry.connection {
            // Pushed to the connected node now, never on a heartbeat.
            let _ = conn.try_send(RuntimeCommand::Dispatch);
        }
        self.store.submit(vec![persist::Write::PutCall(row)]);
        Ok((id, rx))
    }

    /// Ends calls whose deadline passed while they waited in a queue or in the session
    /// of a node that is away: `TimedOut`, nothing left queued. Run it periodically
    /// ([`spawn_deadlines`](Self::spawn_deadlines)).
    pub fn expire(&self, now_ms: u64) {
        let mut state = self.lock();
        let state = &mut *state;
        let expired = state.calls.expired(now_ms);
        let mut writes = Vec::new();
        for id in expired {
            if let Some((node, row)) = state.calls.finish(
                id,
                now_ms,
                CallStatus::TimedOut,
                None,
                "deadline passed".into(),
            ) {
                info!(%node, call = id, capability = %row.capability, "call expired before the node answered");
                if let Some(entry) = state.nodes.get_mut(&node) {
                    entry.queue.retain(|q| *q != id);
                    entry.in_session.retain(|_, d| *d != id);
                    entry.gave_up(row.clone());
                }
                writes.push(persist::Write::PutCall(row));
            }
        }
        if !writes.is_empty() {
            self.store.submit(writes);
        }
    }

    /// Runs [`expire`](Self::expire) every 100 ms until the runtime is dropped.
    pub fn spawn_deadlines(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(rt) = weak.upgrade() else { return };
                rt.expire(persist::now_ms());
            }
        })
    }

    /// Closes node `id`'s connection (after revocation: the transports refuse its next
    /// handshakes themselves).
    pub fn disconnect(&self, id: &str, code: ErrorCode) {
        let state = self.lock();
        if let Some(conn) = state.nodes.get(id).and_then(|e| e.connection.as_ref()) {
            let _ = conn.try_send(RuntimeCommand::Close(code));
        }
    }

    /// A call restored from the store that is in node `row.node`'s session as
    /// `session_call`: its answer is recorded when it comes.
    pub fn adopt_call(&self, row: Call, session_call: u64) {
        let mut state = self.lock();
        let (id, node) = (row.id, row.node.clone());
        state.calls.adopt(row);
        if let Some(entry) = state.nodes.get_mut(&node) {
            entry.in_session.insert(session_call, id);
        }
    }

    /// Call ids continue after `last`, the highest the store holds.
    pub fn continue_call_ids(&self, last: u64) {
        self.lock().calls.continue_after(last);
    }

    /// Calls not yet final.
    pub fn open_calls(&self) -> usize {
        self.lock().calls.open_count()
    }

    /// Counts of nodes: (known, online).
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        let online = state.nodes.values().filter(|e| e.info.online).count();
        (state.nodes.len(), online)
    }
}
