//! The daemon's durable state behind one narrow interface, [`StateStore`], with two
//! engines: SQLite in the state directory (the default, [`sqlite`]) and PostgreSQL
//! ([`postgres`]), which several daemons can share. One conformance suite
//! (`daemon/tests/store.rs`) runs against both.
//!
//! Writes go through a single writer per store with group commit: whatever was submitted
//! while the previous transaction committed is applied in the next one transaction (one
//! fsync) and every waiter is completed after it. A submission (`Vec<Write>`) is applied
//! all or nothing; one refused on its own fails alone. Submitting never blocks:
//! [`StateStore::write`] queues at once and returns a future (awaiting it is optional;
//! the write happens either way), [`Pending::wait`] blocks for non-async callers.
//!
//! Reads see every write whose future has completed.
//!
//! The store also keeps session journals (every engine is a [`JournalStore`]), so the
//! batches of many sessions commit in the same group as the application's own writes,
//! and [`StateStore::load_journal`] gives back what a session restores from. A Linux
//! node host uses a SQLite store in its own state directory for its one journal (key
//! `self`).
//!
//! Timestamps are passed in (Unix milliseconds), never read here.

pub mod encode;
pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use protocol_core::session::MemJournal;
use tokio::sync::oneshot;
use transport_tokio::journal::{Batch, CommitFuture, JournalError, JournalStore};
use transport_tokio::quic::EndpointKeys;

use crate::ca::{Fingerprint, ServerIdentity, StoredCa};
use crate::pairing::PairingRecord;
use crate::revocation::{RevocationRecord, Revoked};

pub use crate::model::{
    Call, CallFilter, CallStatus, CallUpdate, Capability, Device, EventOrigin, NewEvent, Node,
    Operator, OperatorRole, Payload, StoredEvent,
};
pub use encode::{MAX_JOURNAL_KEY_LEN, MAX_NODE_ID_LEN};
pub use postgres::PgStore;
pub use sqlite::{DB_FILE, SqliteStore};

/// The store a daemon shares between its parts: `Arc<Store>`.
pub type Store = dyn StateStore;

/// Why the store failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database file or its directory could not be created.
    Io(String),
    /// The engine failed; the text names what was being done.
    Database(String),
    /// Another process held the database longer than the busy timeout.
    Busy(String),
    /// The database was written by a newer binary (its schema version is above ours).
    TooNew { found: u32, supported: u32 },
    /// A stored value does not decode.
    Corrupt(String),
    /// A write names a row that does not exist.
    NotFound { what: &'static str, key: String },
    /// A write was refused before it touched the database.
    Invalid(String),
    /// The writer is gone (the store is shutting down).
    Closed,
    /// A write meant to create `what` found one there already (another daemon's).
    Taken { what: &'static str, key: String },
    /// The database server cannot be reached (or dropped the connection).
    Unavailable(String),
    /// This daemon no longer owns the session it wrote for: another daemon took the
    /// node over (a higher epoch), so the write was refused whole.
    Fenced { node: String, epoch: u64 },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "state store file: {e}"),
            StoreError::Database(e) => write!(f, "state store: {e}"),
            StoreError::Busy(e) => write!(f, "state store is locked by another process: {e}"),
            StoreError::TooNew { found, supported } => write!(
                f,
                "state store has schema version {found}, this binary knows up to {supported}: \
                 it was written by a newer version"
            ),
            StoreError::Corrupt(e) => write!(f, "state store holds an unreadable value: {e}"),
            StoreError::NotFound { what, key } => write!(f, "no {what} {key:?} in the state store"),
            StoreError::Invalid(e) => write!(f, "refused write: {e}"),
            StoreError::Closed => f.write_str("state store is closed"),
            StoreError::Taken { what, key } => write!(f, "{what} {key} is taken already"),
            StoreError::Unavailable(e) => write!(f, "state store unreachable: {e}"),
            StoreError::Fenced { node, epoch } => write!(
                f,
                "node {node:?} is owned by another daemon now (this one held epoch {epoch})"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

/// How many events, and how old, are kept. `None` keeps without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Keep at most this many of the newest events (by seq).
    pub max_events: Option<u64>,
    /// Drop events whose timestamp is more than this many milliseconds before `now`.
    pub max_age_ms: Option<u64>,
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a connection waits for another process's lock before failing `Busy`.
    pub busy_timeout: Duration,
    /// What [`Write::PruneEvents`] applies.
    pub retention: RetentionPolicy,
    /// Most submissions one group commit takes.
    pub max_group: usize,
    /// Read connections kept open between reads.
    pub read_connections: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            retention: RetentionPolicy::default(),
            max_group: 4096,
            read_connections: 4,
        }
    }
}

/// One write. A submission's writes apply in order, all or nothing.
#[derive(Debug, Clone)]
pub enum Write {
    PutCa(StoredCa),
    PutServerIdentity(ServerIdentity),
    PutEndpointKeys(EndpointKeys),
    /// The first CA, server identity and endpoint keys: each is stored only if none is
    /// (daemons starting together on one store keep the first one written).
    CreateCa(StoredCa),
    CreateServerIdentity(ServerIdentity),
    CreateEndpointKeys(EndpointKeys),
    /// The CA that signs operator identities (not the one that signs devices and the
    /// server): stored only if none is, like `CreateCa`.
    CreateOperatorCa(StoredCa),
    /// A new operator identity. [`StoreError::Taken`] when an operator of that name is
    /// stored and not revoked; a revoked one of that name is replaced (a name is free
    /// again once revoked). The same certificate again (a retried submission) changes
    /// nothing; a revoked certificate never comes back.
    AddOperator(Operator),
    /// Revokes an operator's identity at `at_ms`; one revoked already keeps its first
    /// time. `NotFound` for an unknown name.
    RevokeOperator {
        name: String,
        at_ms: u64,
    },
    /// Takes the next `count` values of the named counter; the first is in
    /// [`Receipt::reserved`]. Values are never handed out twice, to any daemon.
    ReserveIds {
        counter: &'static str,
        count: u64,
    },
    /// Insert or replace, by device id.
    PutDevice(Device),
    DeleteDevice(String),
    /// A renewed certificate: like `PutDevice`, but a stored device keeps its
    /// `paired_at` and name.
    RenewDevice(Device),
    /// Insert or replace, by what it covers.
    PutRevocation(RevocationRecord),
    DeleteRevocation(Revoked),
    /// Insert or replace, by code id.
    PutPairing(PairingRecord),
    /// A new code's record: [`StoreError::Taken`] when the store holds one under its
    /// code id (another daemon minted it).
    CreatePairing(PairingRecord),
    /// Drops the record of code `code_id` if it is the code with this verifier (not a
    /// newer code another daemon minted on the same id).
    DeletePairing {
        code_id: u16,
        verifier: Vec<u8>,
    },
    /// Insert or replace (a node's `first_seen` never moves forward).
    PutNode(Node),
    /// Moves a node's `last_seen` forward; `NotFound` for an unknown node.
    TouchNode {
        id: String,
        last_seen_ms: u64,
    },
    /// Insert or replace, by call id.
    PutCall(Call),
    /// `NotFound` for an unknown call.
    UpdateCall(CallUpdate),
    /// Ends a call no node took: `timed_out` at `at_ms`, only if it is still queued
    /// and in no session (else nothing changes).
    ExpireCall {
        id: u64,
        at_ms: u64,
    },
    /// Its seq (or `None`, a replay of a stored origin) is in [`Receipt::events`].
    AppendEvent(NewEvent),
    /// Applies the store's [`RetentionPolicy`] at `now_ms`; the count is in
    /// [`Receipt::pruned`].
    PruneEvents {
        now_ms: u64,
    },
    /// One session's journal batch.
    Journal(Batch),
    /// Forgets a session journal.
    DropJournal(String),
    /// Makes `owner` the owner of `node`'s session: its epoch becomes one above the
    /// stored one (and at least `epoch`); the new epoch is in [`Receipt::epochs`].
    ClaimSession {
        node: String,
        owner: String,
        epoch: u64,
        at_ms: u64,
    },
    /// Refuses the whole submission with [`StoreError::Fenced`] unless `owner` still
    /// owns `node`'s session at `epoch`. Put it first in a submission that writes for a
    /// session; it holds a claimer back until the submission's group commits.
    Fence {
        node: String,
        owner: String,
        epoch: u64,
    },
}

/// What a committed submission produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// One entry per [`Write::AppendEvent`], in order: the seq given, or `None` when an
    /// event of the same origin was already stored.
    pub events: Vec<Option<u64>>,
    /// Events removed by [`Write::PruneEvents`].
    pub pruned: u64,
    /// One entry per [`Write::ClaimSession`], in order: the epoch now owned.
    pub epochs: Vec<u64>,
    /// One entry per [`Write::ReserveIds`], in order: the first value reserved.
    pub reserved: Vec<u64>,
}

/// A submitted write; resolves once it is durable (or failed). Dropping it does not
/// cancel the write.
#[derive(Debug)]
#[must_use = "the write is queued either way; await or wait to learn whether it committed"]
pub struct Pending(PendingState);

impl Pending {
    /// A write queued for a writer that answers on `rx`.
    pub(crate) fn queued(rx: oneshot::Receiver<Result<Receipt, StoreError>>) -> Self {
        Self(PendingState::Queued(rx))
    }

    /// A write that failed before it was queued.
    pub(crate) fn failed(e: StoreError) -> Self {
        Self(PendingState::Failed(Some(e)))
    }
}

#[derive(Debug)]
enum PendingState {
    Queued(oneshot::Receiver<Result<Receipt, StoreError>>),
    Failed(Option<StoreError>),
}

impl Pending {
    /// Blocks the calling thread until the write commits. Not from inside an async
    /// runtime (await the `Pending` there).
    pub fn wait(self) -> Result<Receipt, StoreError> {
        match self.0 {
            PendingState::Queued(rx) => rx.blocking_recv().unwrap_or(Err(StoreError::Closed)),
            PendingState::Failed(e) => Err(e.unwrap_or(StoreError::Closed)),
        }
    }
}

impl Future for Pending {
    type Output = Result<Receipt, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            PendingState::Queued(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(StoreError::Closed))),
            PendingState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(StoreError::Closed))),
        }
    }
}

/// The one interface every engine implements; what the daemon, its tests and the
/// conformance suite use. Reads are async (a network round trip on PostgreSQL).
#[async_trait::async_trait]
pub trait StateStore: JournalStore + Send + Sync + 'static {
    /// Where the store is, for logs (a path, or a URL without its password).
    fn location(&self) -> String;

    /// Queues `writes` for the next group commit, at once; the returned future
    /// resolves when they are durable. Never blocks.
    fn write(&self, writes: Vec<Write>) -> Pending;

    /// Transactions committed since the store was opened.
    fn commits(&self) -> u64;

    /// Group transactions that failed as a whole since the store was opened.
    fn failed_groups(&self) -> u64;

    async fn ca(&self) -> Result<Option<StoredCa>, StoreError>;

    async fn server_identity(&self) -> Result<Option<ServerIdentity>, StoreError>;

    /// The QUIC endpoint's stateless-reset and token keys.
    async fn endpoint_keys(&self) -> Result<Option<EndpointKeys>, StoreError>;

    /// Paired devices, by device id.
    async fn devices(&self) -> Result<Vec<Device>, StoreError>;

    async fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError>;

    async fn device_by_fingerprint(
        &self,
        fingerprint: &Fingerprint,
    ) -> Result<Option<Device>, StoreError>;

    /// Every revocation, oldest first.
    async fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError>;

    /// Pairing records, by code id.
    async fn pairing_records(&self) -> Result<Vec<PairingRecord>, StoreError>;

    /// Nodes, by id.
    async fn nodes(&self) -> Result<Vec<Node>, StoreError>;

    async fn node(&self, id: &str) -> Result<Option<Node>, StoreError>;

    async fn call(&self, id: u64) -> Result<Option<Call>, StoreError>;

    /// A node's calls, by call id.
    async fn calls_for(&self, node: &str) -> Result<Vec<Call>, StoreError>;

    /// Up to `limit` events with a seq above `after` (0: from the start), oldest first,
    /// of one node or of all.
    async fn events_after(
        &self,
        after: u64,
        node: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The journal stored under `key` (empty if none), to restore a session from.
    async fn load_journal(&self, key: &str) -> Result<MemJournal, StoreError>;

    /// Keys of every stored journal, sorted.
    async fn journal_keys(&self) -> Result<Vec<String>, StoreError>;

    /// Makes `owner` the owner of `node`'s session (its epoch goes up; durable when this
    /// returns) and reads what rebuilds the session: the journal, the node's calls not
    /// yet final. A writer that held the session before cannot commit for it after this.
    async fn take_session(
        &self,
        node: &str,
        owner: &str,
        at_ms: u64,
    ) -> Result<TakenSession, StoreError> {
        let receipt = self
            .write(vec![Write::ClaimSession {
                node: node.to_owned(),
                owner: owner.to_owned(),
                epoch: 0,
                at_ms,
            }])
            .await?;
        Ok(TakenSession {
            epoch: receipt.epochs.first().copied().unwrap_or(0),
            journal: self.load_journal(node).await?,
            calls: self
                .calls_for(node)
                .await?
                .into_iter()
                .filter(|c| !c.state.is_final())
                .collect(),
        })
    }

    /// The sessions `owner` owns, with their epochs, by node.
    async fn owned_by(&self, owner: &str) -> Result<Vec<(String, u64)>, StoreError>;

    /// Session claims made at or after `since_ms` (by any daemon): node, owner, epoch.
    async fn claims_since(&self, since_ms: u64) -> Result<Vec<(String, String, u64)>, StoreError>;

    /// Nodes last seen at or after `since_ms`, by id.
    async fn nodes_since(&self, since_ms: u64) -> Result<Vec<Node>, StoreError>;

    /// Calls still queued and in no session, for whichever daemon holds their node.
    async fn queued_calls(&self) -> Result<Vec<Call>, StoreError>;

    /// The CA that signs operator identities.
    async fn operator_ca(&self) -> Result<Option<StoredCa>, StoreError>;

    /// Operators, by name, revoked ones included.
    async fn operators(&self) -> Result<Vec<Operator>, StoreError>;

    /// The operator whose certificate has this SHA-256 fingerprint (revoked or not).
    async fn operator_by_fingerprint(
        &self,
        fingerprint: &[u8; 32],
    ) -> Result<Option<Operator>, StoreError>;

    /// The calls `filter` wants, newest (highest id) first.
    async fn calls(&self, filter: &CallFilter) -> Result<Vec<Call>, StoreError>;
}

/// A session taken over: see [`StateStore::take_session`].
#[derive(Debug)]
pub struct TakenSession {
    pub epoch: u64,
    pub journal: MemJournal,
    pub calls: Vec<Call>,
}

/// Journal batches go in as one submission, committed with the next group.
pub(crate) fn commit_journal(store: &dyn StateStore, batches: Vec<Batch>) -> CommitFuture {
    let pending = store.write(batches.into_iter().map(Write::Journal).collect());
    Box::pin(async move {
        pending
            .await
            .map(drop)
            .map_err(|e| JournalError(e.to_string()))
    })
}

/// Which engine, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// SQLite, `DB_FILE` in this directory.
    Sqlite(std::path::PathBuf),
    /// PostgreSQL, a `postgres://` URL.
    Postgres(String),
}

impl StoreLocation {
    /// Reads `--store` / `TERN_STORE`: a `postgres://` or `postgresql://` URL selects
    /// PostgreSQL, `sqlite://DIR` SQLite in another directory.
    pub fn parse(v: &str) -> Result<Self, String> {
        if v.starts_with("postgres://") || v.starts_with("postgresql://") {
            return Ok(Self::Postgres(v.to_owned()));
        }
        if let Some(path) = v.strip_prefix("sqlite://").filter(|p| !p.is_empty()) {
            return Ok(Self::Sqlite(path.into()));
        }
        Err(format!(
            "store {v:?}: expected postgres://USER@HOST/DB or sqlite://DIR (without one the \
             daemon keeps SQLite in its state directory)"
        ))
    }

    /// The location with any password removed, for logs and status.
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(dir) => dir.join(DB_FILE).display().to_string(),
            Self::Postgres(url) => postgres::redact(url),
        }
    }
}

/// Opens the store at `location`, creating and migrating it as needed.
pub async fn open(
    location: &StoreLocation,
    options: StoreOptions,
) -> Result<Arc<Store>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(dir) => Arc::new(SqliteStore::open_in(dir, options)?),
        StoreLocation::Postgres(url) => Arc::new(PgStore::connect(url, options).await?),
    })
}
