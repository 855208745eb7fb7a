//! The SQLite engine: one file (`tern.db` in the state directory), a writer thread
//! with group commit, reads on pooled connections beside it (WAL), run on the calling
//! thread: short, indexed queries.

mod calls;
mod devices;
mod events;
mod identity;
mod journal;
mod nodes;
mod operators;
mod owners;
mod pairings;
mod revocations;
mod schema;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

use protocol_core::session::MemJournal;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::oneshot;
use transport_tokio::journal::{Batch, CommitFuture, JournalStore};
use transport_tokio::quic::EndpointKeys;

use super::{
    Call, CallFilter, Device, Node, Operator, Pending, Receipt, RetentionPolicy, StateStore,
    StoreError, StoreOptions, StoredEvent, Write,
};
use crate::ca::{Fingerprint, ServerIdentity, StoredCa};
use crate::pairing::PairingRecord;
use crate::revocation::RevocationRecord;

pub(crate) use schema::get_u64;

/// The file name of the store in a state directory.
pub const DB_FILE: &str = "tern.db";

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

/// Applies one write inside the writer's transaction.
fn apply(
    conn: &Connection,
    w: &Write,
    retention: &RetentionPolicy,
    receipt: &mut Receipt,
) -> Result<(), StoreError> {
    match w {
        Write::PutCa(ca) => identity::put_ca(conn, identity::CA, ca, true),
        Write::PutServerIdentity(id) => identity::put_server(conn, id, true),
        Write::PutEndpointKeys(keys) => identity::put_endpoint_keys(conn, keys, true),
        Write::CreateCa(ca) => identity::put_ca(conn, identity::CA, ca, false),
        Write::CreateOperatorCa(ca) => identity::put_ca(conn, identity::OPERATOR_CA, ca, false),
        Write::AddOperator(o) => operators::add(conn, o),
        Write::RevokeOperator { name, at_ms } => operators::revoke(conn, name, *at_ms),
        Write::CreateServerIdentity(id) => identity::put_server(conn, id, false),
        Write::CreateEndpointKeys(keys) => identity::put_endpoint_keys(conn, keys, false),
        Write::ReserveIds { counter, count } => {
            receipt
                .reserved
                .push(owners::reserve(conn, counter, *count)?);
            Ok(())
        }
        Write::PutDevice(d) => devices::put(conn, d, false),
        Write::DeleteDevice(id) => devices::delete(conn, id),
        Write::RenewDevice(d) => devices::put(conn, d, true),
        Write::PutRevocation(r) => revocations::put(conn, r),
        Write::DeleteRevocation(what) => revocations::delete(conn, what),
        Write::PutPairing(p) => pairings::put(conn, p),
        Write::DeletePairing { code_id, verifier } => pairings::delete(conn, *code_id, verifier),
        Write::CreatePairing(p) => pairings::create(conn, p),
        Write::PutNode(n) => nodes::put(conn, n),
        Write::TouchNode { id, last_seen_ms } => nodes::touch(conn, id, *last_seen_ms),
        Write::PutCall(c) => calls::put(conn, c),
        Write::UpdateCall(u) => calls::update(conn, u),
        Write::ExpireCall { id, at_ms } => calls::expire(conn, *id, *at_ms),
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
        Write::ClaimSession {
            node,
            owner,
            epoch,
            at_ms,
        } => {
            receipt
                .epochs
                .push(owners::claim(conn, node, owner, *epoch, *at_ms)?);
            Ok(())
        }
        Write::Fence { node, owner, epoch } => owners::fence(conn, node, owner, *epoch),
    }
}

/// The state store. Share it with an `Arc`; dropping the last handle waits for the
/// writer to finish what is queued, then closes the file. The queue is unbounded:
/// callers that await their writes are what keeps it short.
pub struct SqliteStore {
    tx: Option<mpsc::Sender<writer::Job>>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<writer::Stats>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    options: StoreOptions,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens `DB_FILE` in `dir`, creating the directory.
    pub fn open_in(dir: &Path, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("create {}: {e}", dir.display())))?;
        Self::open_with(&dir.join(DB_FILE), options)
    }

    pub fn open_with(path: &Path, options: StoreOptions) -> Result<SqliteStore, StoreError> {
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
        Ok(SqliteStore {
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
            Some(Ok(())) => Pending::queued(rx),
            _ => Pending::failed(StoreError::Closed),
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
        self.read(|c| identity::ca(c, identity::CA))
    }

    pub fn server_identity(&self) -> Result<Option<ServerIdentity>, StoreError> {
        self.read(identity::server)
    }

    /// The QUIC endpoint's stateless-reset and token keys.
    pub fn endpoint_keys(&self) -> Result<Option<EndpointKeys>, StoreError> {
        self.read(identity::endpoint_keys)
    }

    /// Paired devices, by device id.
    pub fn devices(&self) -> Result<Vec<Device>, StoreError> {
        self.read(devices::list)
    }

    pub fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        self.read(|c| devices::get(c, device_id))
    }

    pub fn device_by_fingerprint(
        &self,
        fingerprint: &Fingerprint,
    ) -> Result<Option<Device>, StoreError> {
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
    pub fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        self.read(nodes::list)
    }

    pub fn node(&self, id: &str) -> Result<Option<Node>, StoreError> {
        self.read(|c| nodes::get(c, id))
    }

    pub fn call(&self, id: u64) -> Result<Option<Call>, StoreError> {
        self.read(|c| calls::get(c, id))
    }

    /// A node's calls, by call id.
    pub fn calls_for(&self, node: &str) -> Result<Vec<Call>, StoreError> {
        self.read(|c| calls::for_node(c, node))
    }

    /// Up to `limit` events with a seq above `after` (0: from the start), oldest first,
    /// of one node or of all.
    pub fn events_after(
        &self,
        after: u64,
        node: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
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

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain it and stop.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl JournalStore for SqliteStore {
    fn commit(&self, batches: Vec<Batch>) -> CommitFuture {
        super::commit_journal(self, batches)
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

/// Reads run inline: a SQLite read is a short local query, like the blocking reads
/// before the trait existed.
#[async_trait::async_trait]
impl StateStore for SqliteStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn write(&self, writes: Vec<Write>) -> Pending {
        SqliteStore::write(self, writes)
    }

    fn commits(&self) -> u64 {
        SqliteStore::commits(self)
    }

    fn failed_groups(&self) -> u64 {
        SqliteStore::failed_groups(self)
    }

    async fn ca(&self) -> Result<Option<StoredCa>, StoreError> {
        SqliteStore::ca(self)
    }

    async fn server_identity(&self) -> Result<Option<ServerIdentity>, StoreError> {
        SqliteStore::server_identity(self)
    }

    async fn endpoint_keys(&self) -> Result<Option<EndpointKeys>, StoreError> {
        SqliteStore::endpoint_keys(self)
    }

    async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        SqliteStore::devices(self)
    }

    async fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        SqliteStore::device(self, device_id)
    }

    async fn device_by_fingerprint(
        &self,
        fingerprint: &Fingerprint,
    ) -> Result<Option<Device>, StoreError> {
        SqliteStore::device_by_fingerprint(self, fingerprint)
    }

    async fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        SqliteStore::revocations(self)
    }

    async fn pairing_records(&self) -> Result<Vec<PairingRecord>, StoreError> {
        SqliteStore::pairing_records(self)
    }

    async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        SqliteStore::nodes(self)
    }

    async fn node(&self, id: &str) -> Result<Option<Node>, StoreError> {
        SqliteStore::node(self, id)
    }

    async fn call(&self, id: u64) -> Result<Option<Call>, StoreError> {
        SqliteStore::call(self, id)
    }

    async fn calls_for(&self, node: &str) -> Result<Vec<Call>, StoreError> {
        SqliteStore::calls_for(self, node)
    }

    async fn events_after(
        &self,
        after: u64,
        node: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        SqliteStore::events_after(self, after, node, limit)
    }

    async fn load_journal(&self, key: &str) -> Result<MemJournal, StoreError> {
        SqliteStore::load_journal(self, key)
    }

    async fn journal_keys(&self) -> Result<Vec<String>, StoreError> {
        SqliteStore::journal_keys(self)
    }

    async fn owned_by(&self, owner: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|c| owners::owned_by(c, owner))
    }

    async fn claims_since(&self, since_ms: u64) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.read(|c| owners::claims_since(c, since_ms))
    }

    async fn nodes_since(&self, since_ms: u64) -> Result<Vec<Node>, StoreError> {
        self.read(|c| nodes::since(c, since_ms))
    }

    async fn queued_calls(&self) -> Result<Vec<Call>, StoreError> {
        self.read(calls::queued)
    }

    async fn operator_ca(&self) -> Result<Option<StoredCa>, StoreError> {
        self.read(|c| identity::ca(c, identity::OPERATOR_CA))
    }

    async fn operators(&self) -> Result<Vec<Operator>, StoreError> {
        self.read(operators::list)
    }

    async fn operator_by_fingerprint(
        &self,
        fingerprint: &[u8; 32],
    ) -> Result<Option<Operator>, StoreError> {
        self.read(|c| operators::by_fingerprint(c, fingerprint))
    }

    async fn calls(&self, filter: &CallFilter) -> Result<Vec<Call>, StoreError> {
        self.read(|c| calls::list(c, filter))
    }
}
