//! Where drivers put the journal operations their sessions emit: a store that commits
//! the batches of many sessions together.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use protocol_core::session::{MemJournal, OwnedJournalOp};

/// A batch could not be made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalError(pub String);

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "journal commit failed: {}", self.0)
    }
}

impl std::error::Error for JournalError {}

/// One session's journal batch, owned, tagged with whose journal it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Whose journal: on the daemon the node id, on a node host its own name.
    pub key: Arc<str>,
    /// In the order the session polled them; applied in that order.
    pub ops: Vec<OwnedJournalOp>,
}

/// The future a [`JournalStore`] commit resolves to.
pub type CommitFuture = Pin<Box<dyn Future<Output = Result<(), JournalError>> + Send + 'static>>;

/// A store that commits the journal batches of many sessions together (`SESSION.md`,
/// "Durability"): the drivers hand it every batch a pass produced, in one call, and
/// confirm each session once the returned future resolves. All batches of one call
/// commit or fail together, and a call's batches are durable before any later call's.
pub trait JournalStore: Send + Sync + 'static {
    /// Starts committing `batches` (one transaction); resolves once they are durable.
    /// The batches are queued when `commit` is called, not when the future is first
    /// polled, so calls commit in the order they were made.
    fn commit(&self, batches: Vec<Batch>) -> CommitFuture;
}

/// The in-memory reference store: one [`MemJournal`] per key.
#[derive(Debug, Default, Clone)]
pub struct MemJournals {
    journals: Arc<Mutex<HashMap<Arc<str>, MemJournal>>>,
    commits: Arc<AtomicU64>,
}

impl MemJournals {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the journal stored under `key` (empty if none).
    pub fn journal(&self, key: &str) -> MemJournal {
        self.lock().get(key).cloned().unwrap_or_default()
    }

    /// Commit calls so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, MemJournal>> {
        self.journals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl JournalStore for MemJournals {
    fn commit(&self, batches: Vec<Batch>) -> CommitFuture {
        {
            let mut journals = self.lock();
            for batch in &batches {
                let journal = journals.entry(batch.key.clone()).or_default();
                for op in &batch.ops {
                    journal.apply_owned(op);
                }
            }
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(())))
    }
}
