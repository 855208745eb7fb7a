//! The daemon's durable state: one SQLite file (`tern.db` in the state directory)
//! behind one narrow interface, so another engine can take its place later.
//!
//! Writes go through a single writer thread with group commit: whatever was submitted
//! while the previous transaction committed is applied in the next one transaction (one
//! fsync) and every waiter is completed after it. A submission (`Vec<Write>`) is applied
//! all or nothing; one refused on its own fails alone. Submitting never blocks:
//! [`Store::write`] queues at once and returns a future (awaiting it is optional; the
//! write happens either way), [`Pending::wait`] blocks for non-async callers.
//!
//! Reads run on separate connections beside the writer (WAL) and see every write whose
//! future has completed. They are short, indexed queries and run on the calling thread.
//!
//! The store also keeps session journals: it implements
//! [`JournalStore`], so the batches of many
//! sessions commit in the same group as the application's own writes, and
//! [`Store::load_journal`] gives back what a session restores from. A Linux node host
//! uses the same store in its own state directory for its one journal (key `self`).
//!
//! Timestamps are passed in (Unix milliseconds), never read here.

mod calls;
mod devices;
mod events;
mod identity;
mod journal;
mod nodes;
mod pairings;
mod revocations;
mod schema;
mod writer;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use protocol_core::session::MemJournal;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::oneshot;
use transport_tokio::journal::{Batch, CommitFuture, JournalError, JournalStore};
use transport_tokio::quic::EndpointKeys;

use crate::ca::{Fingerprint, ServerIdentity, StoredCa};
use crate::pairing::PairingRecord;
use crate::revocation::{RevocationRecord, Revoked};

pub use calls::{CallRow, CallUpdate, Payload};
pub use devices::DeviceRow;
pub use events::{EventOrigin, EventRow, NewEvent, RetentionPolicy};
pub use journal::MAX_JOURNAL_KEY_LEN;
pub use nodes::{CapabilityRow, NodeRow};

/// The file name of the store in a state directory.
pub const DB_FILE: &str = "tern.db";

/// Why the store failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database file or its directory could not be created.
    Io(String),
    /// SQLite failed; the text names what was being done.
    Database(String),
    /// Another process held the database longer than the busy timeout.
    Busy(String),
    /// The file was written by a newer binary (its schema version is above ours).
    TooNew { found: u32, supported: u32 },
    /// A stored value does not decode.
    Corrupt(String),
    /// A write names a row that does not exist.
    NotFound { what: &'static str, key: String },
    /// A write was refused before it touched the database.
    Invalid(String),
    /// The writer is gone (the store is shutting down).
    Closed,
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
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// Maps a SQLite error met while doing `what`.
    pub(crate) fn db(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
        move |e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy(format!("{what}: {e}"))
            }
            _ => StoreError::Database(format!("{what}: {e}")),
        }
    }
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
    /// Insert or replace, by device id.
    PutDevice(DeviceRow),
    DeleteDevice(String),
    /// Insert or replace, by what it covers.
    PutRevocation(RevocationRecord),
    DeleteRevocation(Revoked),
    /// Insert or replace, by code id.
    PutPairing(PairingRecord),
    DeletePairing(u16),
    /// Insert or replace (a node's `first_seen` never moves forward).
    PutNode(NodeRow),
    /// Moves a node's `last_seen` forward; `NotFound` for an unknown node.
    TouchNode {
        id: String,
        last_seen_ms: u64,
    },
    /// Insert or replace, by call id.
    PutCall(CallRow),
    /// `NotFound` for an unknown call.
    UpdateCall(CallUpdate),
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
}

/// What a committed submission produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// One entry per [`Write::AppendEvent`], in order: the seq given, or `None` when an
    /// event of the same origin was already stored.
    pub events: Vec<Option<u64>>,
    /// Events removed by [`Write::PruneEvents`].
    pub pruned: u64,
}

/// Applies one write inside the writer's transaction.
fn apply(
    conn: &Connection,
    w: &Write,
    retention: &RetentionPolicy,
    receipt: &mut Receipt,
) -> Result<(), StoreError> {
    match w {
        Write::PutCa(ca) => identity::put_ca(conn, ca),
        Write::PutServerIdentity(id) => identity::put_server(conn, id),
        Write::PutEndpointKeys(keys) => identity::put_endpoint_keys(conn, keys),
        Write::PutDevice(d) => devices::put(conn, d),
        Write::DeleteDevice(id) => devices::delete(conn, id),
        Write::PutRevocation(r) => revocations::put(conn, r),
        Write::DeleteRevocation(what) => revocations::delete(conn, what),
        Write::PutPairing(p) => pairings::put(conn, p),
        Write::DeletePairing(code_id) => pairings::delete(conn, *code_id),
        Write::PutNode(n) => nodes::put(conn, n),
        Write::TouchNode { id, last_seen_ms } => nodes::touch(conn, id, *last_seen_ms),
        Write::PutCall(c) => calls::put(conn, c),
        Write::UpdateCall(u) => calls::update(conn, u),
        Write::AppendEvent(e) => {
            receipt.events.push(events::append(conn, e)?);
            Ok(())
        }
        Write::PruneEvents { now_ms } => {
            receipt.pruned += events::prune(conn, retention, *now_ms)?;
            Ok(())
        }
        Write::Journal(batch) => journal::apply(conn, batch),
        Write::DropJournal(key) => journal::drop_journal(conn, key),
    }
}

/// A submitted write; resolves once it is durable (or failed). Dropping it does not
/// cancel the write.
#[derive(Debug)]
#[must_use = "the write is queued either way; await or wait to learn whether it committed"]
pub struct Pending(PendingState);

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

/// The state store. Share it with an `Arc`; dropping the last handle waits for the
/// writer to finish what is queued, then closes the file. The queue is unbounded:
/// callers that await their writes are what keeps it short.
pub struct Store {
    tx: Option<mpsc::Sender<writer::Job>>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<writer::Stats>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    options: StoreOptions,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating and migrating as needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens `DB_FILE` in `dir`, creating the directory.
    pub fn open_in(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("create {}: {e}", dir.display())))?;
        Self::open_with(&dir.join(DB_FILE), options)
    }

    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        create_private(path)?;
        let mut conn = open_conn(path, &options)?;
        schema::migrate(&mut conn)?;
        let stats = Arc::new(writer::Stats::default());
        let (tx, rx) = mpsc::channel();
        let (w_stats, retention, max_group) =
            (stats.clone(), options.retention, options.max_group.max(1));
        let writer = std::thread::Builder::new()
            .name("tern-store-writer".into())
            .spawn(move || writer::run(conn, rx, w_stats, retention, max_group))
            .map_err(|e| StoreError::Io(format!("start the writer thread: {e}")))?;
        Ok(Store {
            tx: Some(tx),
            writer: Some(writer),
            stats,
            readers: Mutex::new(Vec::new()),
            path: path.to_owned(),
            options,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `writes` for the next group commit, at once; the returned future
    /// resolves when they are durable. Never blocks.
    pub fn write(&self, writes: Vec<Write>) -> Pending {
        let (reply, rx) = oneshot::channel();
        let job = writer::Job { writes, reply };
        match self.tx.as_ref().map(|tx| tx.send(job)) {
            Some(Ok(())) => Pending(PendingState::Queued(rx)),
            _ => Pending(PendingState::Failed(Some(StoreError::Closed))),
        }
    }

    /// [`write`](Self::write) and wait, for threads outside an async runtime.
    pub fn write_blocking(&self, writes: Vec<Write>) -> Result<Receipt, StoreError> {
        self.write(writes).wait()
    }

    /// Transactions committed since the store was opened.
    pub fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// Group transactions that failed as a whole since the store was opened.
    pub fn failed_groups(&self) -> u64 {
        self.stats.failed_groups.load(Ordering::Relaxed)
    }

    /// Runs `f` in one read transaction on a pooled read connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let c = open_conn(&self.path, &self.options)?;
                c.pragma_update(None, "query_only", true)
                    .map_err(StoreError::db("open a read connection"))?;
                c
            }
        };
        let out = {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(StoreError::db("begin a read"))?;
            let out = f(&tx);
            tx.finish().map_err(StoreError::db("end a read"))?;
            out
        };
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < self.options.read_connections {
            pool.push(conn);
        }
        out
    }

    pub fn ca(&self) -> Result<Option<StoredCa>, StoreError> {
        self.read(identity::ca)
    }

    pub fn server_identity(&self) -> Result<Option<ServerIdentity>, StoreError> {
        self.read(identity::server)
    }

    /// The QUIC endpoint's stateless-reset and token keys.
    pub fn endpoint_keys(&self) -> Result<Option<EndpointKeys>, StoreError> {
        self.read(identity::endpoint_keys)
    }

    /// Paired devices, by device id.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        self.read(devices::list)
    }

    pub fn device(&self, device_id: &str) -> Result<Option<DeviceRow>, StoreError> {
        self.read(|c| devices::get(c, device_id))
    }

    pub fn device_by_fingerprint(
        &self,
        fingerprint: &Fingerprint,
    ) -> Result<Option<DeviceRow>, StoreError> {
        self.read(|c| devices::by_fingerprint(c, fingerprint))
    }

    /// Every revocation, oldest first.
    pub fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        self.read(revocations::list)
    }

    /// Pairing records, by code id.
    pub fn pairing_records(&self) -> Result<Vec<PairingRecord>, StoreError> {
        self.read(pairings::list)
    }

    /// Nodes, by id.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        self.read(nodes::list)
    }

    pub fn node(&self, id: &str) -> Result<Option<NodeRow>, StoreError> {
        self.read(|c| nodes::get(c, id))
    }

    pub fn call(&self, id: u64) -> Result<Option<CallRow>, StoreError> {
        self.read(|c| calls::get(c, id))
    }

    /// A node's calls, by call id.
    pub fn calls_for(&self, node: &str) -> Result<Vec<CallRow>, StoreError> {
        self.read(|c| calls::for_node(c, node))
    }

    /// Up to `limit` events with a seq above `after` (0: from the start), oldest first,
    /// of one node or of all.
    pub fn events_after(
        &self,
        after: u64,
        node: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        self.read(|c| events::after(c, after, node, limit))
    }

    /// The journal stored under `key` (empty if none), to restore a session from.
    pub fn load_journal(&self, key: &str) -> Result<MemJournal, StoreError> {
        self.read(|c| journal::load(c, key))
    }

    /// Keys of every stored journal, sorted.
    pub fn journal_keys(&self) -> Result<Vec<String>, StoreError> {
        self.read(journal::keys)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain it and stop.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl JournalStore for Store {
    fn commit(&self, batches: Vec<Batch>) -> CommitFuture {
        let pending = self.write(batches.into_iter().map(Write::Journal).collect());
        Box::pin(async move {
            pending
                .await
                .map(drop)
                .map_err(|e| JournalError(e.to_string()))
        })
    }
}

fn open_conn(path: &Path, options: &StoreOptions) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::db("open the database")(e))?;
    schema::configure(&conn, options.busy_timeout)?;
    Ok(conn)
}

/// Creates the file readable by its owner only: it holds the CA's private key. SQLite
/// gives the WAL and shared-memory files the same permissions.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    open.open(path)
        .map(drop)
        .map_err(|e| StoreError::Io(format!("create {}: {e}", path.display())))
}
