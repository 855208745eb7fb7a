//! The PostgreSQL engine: one database several daemons share. One writer task per
//! daemon commits its groups (`writer.rs`); reads take a pooled connection each.
//!
//! Selected with `ternd serve --store postgres://USER:PASSWORD@HOST/DB` (also
//! `TERN_STORE` and `store` in the TOML file). The connection is plain TCP or a Unix
//! socket (`?host=/var/run/postgresql`); the password never appears in logs.

mod apply;
mod read;
mod schema;
mod writer;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use protocol_core::session::MemJournal;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};
use tracing::warn;
use transport_tokio::journal::{Batch, CommitFuture, JournalStore};
use transport_tokio::quic::EndpointKeys;

use super::{
    Call, CallFilter, Device, Node, Operator, Pending, StateStore, StoreError, StoreOptions,
    StoredEvent, Write,
};
use crate::ca::{Fingerprint, ServerIdentity, StoredCa};
use crate::pairing::PairingRecord;
use crate::revocation::RevocationRecord;

/// The PostgreSQL store. Dropping it lets the writer finish what is queued.
pub struct PgStore {
    tx: mpsc::UnboundedSender<writer::Job>,
    stats: Arc<writer::Stats>,
    pool: deadpool_postgres::Pool,
    location: String,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Maps a PostgreSQL error met while doing `what`: lock conflicts between daemons and
/// a lost connection are worth a retry (`Busy`, `Unavailable`), the rest is not.
pub(crate) fn pg(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        use tokio_postgres::error::SqlState;
        let transient = [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
        ];
        match e.code() {
            Some(code) if transient.contains(code) => StoreError::Busy(format!("{what}: {e}")),
            Some(code) if code.code().starts_with("08") || code.code().starts_with("57P") => {
                StoreError::Unavailable(format!("{what}: {e}"))
            }
            Some(_) => StoreError::Database(format!("{what}: {}", detail(&e))),
            None => StoreError::Unavailable(format!("{what}: {e}")),
        }
    }
}

/// The server's message, not just "db error".
fn detail(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

/// `url` with its password replaced.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "postgres://(unparsable URL)".into(),
    }
}

/// One connection, its driver spawned on the current runtime.
pub(crate) async fn connect_client(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| StoreError::Unavailable(format!("connect to {}: {e}", redact(url))))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "store connection ended");
        }
    });
    Ok(client)
}

impl PgStore {
    /// Connects, migrates the schema (once, however many daemons start at the same
    /// time) and starts the writer. Must run inside a tokio runtime.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("store URL {}: {e}", redact(url))))?;
        let mut client = connect_client(url).await?;
        schema::migrate(&mut client).await?;
        let stmts = apply::Statements::prepare(&client).await?;
        let manager = deadpool_postgres::Manager::from_config(
            config,
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(options.read_connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Invalid(format!("read pool: {e}")))?;
        let stats = Arc::new(writer::Stats::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = writer::Writer {
            url: url.to_owned(),
            client: Some((client, stmts)),
            stats: stats.clone(),
            retention: options.retention,
            max_group: options.max_group.max(1),
        };
        tokio::spawn(writer.run(rx));
        Ok(Self {
            tx,
            stats,
            pool,
            location: redact(url),
        })
    }

    /// Groups tried again after a transient failure.
    pub fn retries(&self) -> u64 {
        self.stats.retries.load(Ordering::Relaxed)
    }

    async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("read connection: {e}")))
    }
}

impl JournalStore for PgStore {
    fn commit(&self, batches: Vec<Batch>) -> CommitFuture {
        super::commit_journal(self, batches)
    }
}

#[async_trait::async_trait]
impl StateStore for PgStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn write(&self, writes: Vec<Write>) -> Pending {
        let (reply, rx) = oneshot::channel();
        match self.tx.send(writer::Job { writes, reply }) {
            Ok(()) => Pending::queued(rx),
            Err(_) => Pending::failed(StoreError::Closed),
        }
    }

    fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    fn failed_groups(&self) -> u64 {
        self.stats.failed_groups.load(Ordering::Relaxed)
    }

    async fn ca(&self) -> Result<Option<StoredCa>, StoreError> {
        read::ca(&self.reader().await?, read::CA).await
    }

    async fn server_identity(&self) -> Result<Option<ServerIdentity>, StoreError> {
        read::server(&self.reader().await?).await
    }

    async fn endpoint_keys(&self) -> Result<Option<EndpointKeys>, StoreError> {
        read::endpoint_keys(&self.reader().await?).await
    }

    async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        read::devices(&self.reader().await?, read::DeviceKey::All).await
    }

    async fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        Ok(
            read::devices(&self.reader().await?, read::DeviceKey::Id(device_id))
                .await?
                .pop(),
        )
    }

    async fn device_by_fingerprint(
        &self,
        fingerprint: &Fingerprint,
    ) -> Result<Option<Device>, StoreError> {
        Ok(read::devices(
            &self.reader().await?,
            read::DeviceKey::Fingerprint(fingerprint),
        )
        .await?
        .pop())
    }

    async fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        read::revocations(&self.reader().await?).await
    }

    async fn pairing_records(&self) -> Result<Vec<PairingRecord>, StoreError> {
        read::pairings(&self.reader().await?).await
    }

    async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        read::nodes(&self.reader().await?, read::NodeKey::All).await
    }

    async fn node(&self, id: &str) -> Result<Option<Node>, StoreError> {
        Ok(read::nodes(&self.reader().await?, read::NodeKey::Id(id))
            .await?
            .pop())
    }

    async fn call(&self, id: u64) -> Result<Option<Call>, StoreError> {
        Ok(read::calls(&self.reader().await?, read::CallKey::Id(id))
            .await?
            .pop())
    }

    async fn calls_for(&self, node: &str) -> Result<Vec<Call>, StoreError> {
        read::calls(&self.reader().await?, read::CallKey::Node(node)).await
    }

    async fn events_after(
        &self,
        after: u64,
        node: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        read::events_after(&self.reader().await?, after, node, limit).await
    }

    async fn load_journal(&self, key: &str) -> Result<MemJournal, StoreError> {
        read::journal(&mut self.reader().await?, key).await
    }

    async fn journal_keys(&self) -> Result<Vec<String>, StoreError> {
        read::journal_keys(&self.reader().await?).await
    }

    /// The claim runs on a connection of its own, not through the writer: a node
    /// waiting to connect does not wait behind a group commit.
    async fn take_session(
        &self,
        node: &str,
        owner: &str,
        at_ms: u64,
    ) -> Result<crate::store::TakenSession, StoreError> {
        crate::store::encode::check_id(node)?;
        let mut c = self.reader().await?;
        let epoch = read::claim(&c, node, owner, at_ms).await?;
        let journal = read::journal(&mut c, node).await?;
        let calls = read::calls(&c, read::CallKey::Node(node))
            .await?
            .into_iter()
            .filter(|c| !c.state.is_final())
            .collect();
        Ok(crate::store::TakenSession {
            epoch,
            journal,
            calls,
        })
    }

    async fn owned_by(&self, owner: &str) -> Result<Vec<(String, u64)>, StoreError> {
        read::owned_by(&self.reader().await?, owner).await
    }

    async fn claims_since(&self, since_ms: u64) -> Result<Vec<(String, String, u64)>, StoreError> {
        read::claims_since(&self.reader().await?, since_ms).await
    }

    async fn nodes_since(&self, since_ms: u64) -> Result<Vec<Node>, StoreError> {
        read::nodes_since(&self.reader().await?, since_ms).await
    }

    async fn queued_calls(&self) -> Result<Vec<Call>, StoreError> {
        read::calls(&self.reader().await?, read::CallKey::Queued).await
    }

    async fn operator_ca(&self) -> Result<Option<StoredCa>, StoreError> {
        read::ca(&self.reader().await?, read::OPERATOR_CA).await
    }

    async fn operators(&self) -> Result<Vec<Operator>, StoreError> {
        read::operators(&self.reader().await?, read::OperatorKey::All).await
    }

    async fn operator_by_fingerprint(
        &self,
        fingerprint: &[u8; 32],
    ) -> Result<Option<Operator>, StoreError> {
        Ok(read::operators(
            &self.reader().await?,
            read::OperatorKey::Fingerprint(fingerprint),
        )
        .await?
        .pop())
    }

    async fn calls(&self, filter: &CallFilter) -> Result<Vec<Call>, StoreError> {
        read::calls(&self.reader().await?, read::CallKey::Filter(filter)).await
    }
}
