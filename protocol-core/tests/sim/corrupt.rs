//! Journals a restart may find instead of the one the session wrote: positions out of
//! range, messages missing, a body that does not decode, a message of the other
//! direction, another role's journal. Each is built so that `restore` can tell, and must
//! refuse it with `SetupError::JournalInconsistent`: a journal is checked like a peer.

use protocol_core::session::{
    CallRecord, CallState, Instant, JournalOp, MAX_SEQ, MemJournal, SetupError,
};
use protocol_core::wire::{Body, Call, Event, Payload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Corruption {
    /// `last_sent = u64::MAX`.
    SentAboveMax,
    /// `acked = last_sent + 1`.
    AckedBeyondSent,
    /// `received = MAX_SEQ + 1`.
    ReceivedAboveMax,
    /// `last_sent` one above the last stored message.
    MessagesMissing,
    /// The next message's body is empty: no body decodes from it.
    UndecodableBody,
    /// The next message flows the other way.
    OtherDirection,
    /// The other role's journal of this link (with one message of its own direction on
    /// top, so that it holds one even when everything was acknowledged).
    ForeignRole,
    /// Daemon: positions without the session id they belong to.
    NoSessionId,
    /// Daemon: a call whose message lies beyond the stream.
    CallNeverSent,
}

pub const NODE: &[Corruption] = &[
    Corruption::SentAboveMax,
    Corruption::AckedBeyondSent,
    Corruption::ReceivedAboveMax,
    Corruption::MessagesMissing,
    Corruption::UndecodableBody,
    Corruption::OtherDirection,
    Corruption::ForeignRole,
];

pub const DAEMON: &[Corruption] = &[
    Corruption::SentAboveMax,
    Corruption::AckedBeyondSent,
    Corruption::ReceivedAboveMax,
    Corruption::MessagesMissing,
    Corruption::UndecodableBody,
    Corruption::OtherDirection,
    Corruption::ForeignRole,
    Corruption::NoSessionId,
    Corruption::CallNeverSent,
];

fn body(from_daemon: bool) -> Vec<u8> {
    let payload = Payload {
        content_type: "application/json",
        data: b"{}",
    };
    let body = if from_daemon {
        Body::Call(Call {
            call_id: 1,
            capability: "sys.health",
            timeout_ms: 1_000,
            input: payload,
        })
    } else {
        Body::Event(Event {
            name: "reading",
            payload,
        })
    };
    postcard::to_allocvec(&body).expect("a body encodes")
}

/// `own` as `what` corrupts it, for the role that wrote it (`node`); `other` is the
/// other role's journal of the same link.
pub fn corrupted(own: &MemJournal, other: &MemJournal, node: bool, what: Corruption) -> MemJournal {
    let mut j = if what == Corruption::ForeignRole {
        other.clone()
    } else {
        own.clone()
    };
    let mut meta = j.stored_meta().unwrap_or_default();
    let next = meta.last_sent + 1;
    let mut append = |j: &mut MemJournal, body: &[u8]| {
        j.apply(&JournalOp::Append { seq: next, body });
        meta.last_sent = next;
    };
    match what {
        Corruption::SentAboveMax => meta.last_sent = u64::MAX,
        Corruption::AckedBeyondSent => meta.acked = meta.last_sent + 1,
        Corruption::ReceivedAboveMax => meta.received = MAX_SEQ + 1,
        Corruption::MessagesMissing => meta.last_sent = next,
        Corruption::UndecodableBody => append(&mut j, &[]),
        // A node's journal with a call in it, a daemon's with an event.
        Corruption::OtherDirection => append(&mut j, &body(node)),
        // The other role's own direction: the wrong one for this role.
        Corruption::ForeignRole => append(&mut j, &body(node)),
        Corruption::NoSessionId => meta.session = None,
        Corruption::CallNeverSent => j.apply(&JournalOp::PutCall(CallRecord {
            id: meta.next_call_id.max(1),
            seq: next,
            deadline: Instant::from_millis(0),
            timeout_ms: 1_000,
            state: CallState::Queued,
            unreported: false,
            cancel_requested: false,
        })),
    }
    j.apply(&JournalOp::Meta(meta));
    j
}

/// A restore from a corrupted journal must fail with `JournalInconsistent`.
pub fn judge<T>(what: Corruption, r: Result<T, SetupError>) -> Result<&'static str, String> {
    match r {
        Err(SetupError::JournalInconsistent { why }) => Ok(why),
        Err(e) => Err(format!("a journal with {what:?} was refused with {e:?}")),
        Ok(_) => Err(format!("a journal with {what:?} was restored")),
    }
}
