//! Journal batches as the simulated stores hold them: owned copies of the ops a session
//! emitted, with the application's observations that commit in the same transaction.
//! The durable state itself is a `session::MemJournal`, which outlives the session
//! object: a restart rebuilds the session from it.

use protocol_core::session::{BatchId, JournalOp, MemJournal};

/// A journal op copied out of the session (an `Append` borrows the session's storage).
#[derive(Debug, Clone)]
pub struct OwnedOp {
    op: JournalOp<'static>,
    body: Vec<u8>,
}

impl OwnedOp {
    pub fn from(op: &JournalOp<'_>) -> Self {
        match *op {
            JournalOp::Append { seq, body } => OwnedOp {
                op: JournalOp::Append { seq, body: &[] },
                body: body.to_vec(),
            },
            JournalOp::Clear => OwnedOp::plain(JournalOp::Clear),
            JournalOp::Trim { through } => OwnedOp::plain(JournalOp::Trim { through }),
            JournalOp::PutCall(r) => OwnedOp::plain(JournalOp::PutCall(r)),
            JournalOp::RemoveCall(id) => OwnedOp::plain(JournalOp::RemoveCall(id)),
            JournalOp::PutSeen { slot, call } => OwnedOp::plain(JournalOp::PutSeen { slot, call }),
            JournalOp::Meta(m) => OwnedOp::plain(JournalOp::Meta(m)),
        }
    }

    fn plain(op: JournalOp<'static>) -> Self {
        OwnedOp {
            op,
            body: Vec::new(),
        }
    }

    pub fn borrow(&self) -> JournalOp<'_> {
        match self.op {
            JournalOp::Append { seq, .. } => JournalOp::Append {
                seq,
                body: &self.body,
            },
            other => other,
        }
    }

    /// A short digest input: the op's kind, positions and body.
    pub fn digest_bytes(&self) -> Vec<u8> {
        let mut out = format!("{:?}", self.op).into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// One session's batch in a store, the id its confirmation names, and what the
/// application learned before it.
#[derive(Debug)]
pub struct Batch<O> {
    pub id: BatchId,
    pub ops: Vec<OwnedOp>,
    pub obs: Vec<O>,
}

impl<O> Batch<O> {
    /// Writes the ops, in order, as one transaction.
    pub fn apply(&self, journal: &mut MemJournal) {
        for op in &self.ops {
            journal.apply(&op.borrow());
        }
    }
}
