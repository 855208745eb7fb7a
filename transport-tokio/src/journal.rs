//! Where a driver puts the journal operations its session emits.

use std::fmt;

use protocol_core::session::{JournalOp, MemJournal};

/// A store for one session's journal batches (`SESSION.md`, "Durability").
///
/// The driver stages every operation of a batch with [`stage`](Self::stage), then calls
/// [`commit`](Self::commit) once; on success it confirms the batch to the session
/// (`handle_journal_committed`), on failure it reports it (`handle_journal_failed`) and
/// the session emits the batch again.
pub trait JournalSink {
    /// Stages one operation of the current batch.
    fn stage(&mut self, op: &JournalOp<'_>);
    /// Makes the staged batch durable.
    fn commit(&mut self) -> Result<(), JournalError>;
}

/// A batch could not be made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalError(pub String);

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "journal commit failed: {}", self.0)
    }
}

impl std::error::Error for JournalError {}

/// The in-memory reference journal: every staged operation is applied at once.
impl JournalSink for MemJournal {
    fn stage(&mut self, op: &JournalOp<'_>) {
        self.apply(op);
    }

    fn commit(&mut self) -> Result<(), JournalError> {
        Ok(())
    }
}
