//! Durability as outputs: the journal operations a session emits, the positions they
//! carry, and the bookkeeping that holds back what is not durable yet.
//!
//! A journaled session ([`Config::durable`](super::Config::durable)) never calls a
//! store. It marks what changed; `poll_journal` turns the marks into [`JournalOp`]s,
//! which the driver writes in one transaction together with the application's own
//! effects (many sessions' batches in one group commit), then confirms with
//! `handle_journal_committed` or `handle_journal_failed`. Until then the session
//! holds back what depends on them:
//!
//! - an outgoing message is transmitted only once its `Append` is committed;
//! - a received position is acknowledged (and announced on resume) only once the
//!   `Meta` carrying it is committed;
//! - a daemon answers a hello only once the `Meta` naming its session is committed;
//! - a journaled node hands a call to its application only once the call-window entry
//!   naming it is committed, so a call is never run twice across a restart.
//!
//! One batch per session is in flight at a time: the `None` that ends a batch closes
//! it and gives it a [`BatchId`] (`closed_batch`), which its confirmation must name;
//! until then `poll_journal` returns `None`. A failed batch is emitted again (from the
//! marks) once its retry deadline passes (`poll_timeout`; the delay doubles with every
//! failure in a row).

use super::calls::{CallRecord, SeenCall};
use crate::time::Instant;
use crate::wire::{CallId, Seq, SessionId};

/// The identity of a closed journal batch: its confirmation or failure names it.
/// Ids grow with every batch of a session and are never reused by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(u64);

impl BatchId {
    /// The id as a number (for logs and stores).
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl core::fmt::Display for BatchId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "batch {}", self.0)
    }
}

/// Why a journal confirmation was refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalError {
    /// No batch is closed and waiting for its confirmation: `poll_journal` has not
    /// returned the `None` that closes one, or it was confirmed already.
    NoClosedBatch,
    /// The batch waiting for its confirmation is another one (a late or duplicate
    /// confirmation).
    WrongBatch { closed: BatchId, named: BatchId },
}

impl core::fmt::Display for JournalError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            JournalError::NoClosedBatch => {
                f.write_str("no journal batch is closed and waiting for its confirmation")
            }
            JournalError::WrongBatch { closed, named } => {
                write!(
                    f,
                    "{named} confirmed while {closed} waits for its confirmation"
                )
            }
        }
    }
}

impl core::error::Error for JournalError {}

/// A session's positions, stored as one row and replaced whole.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct JournalMeta {
    /// The session id (a node has none before its first hello-ack).
    pub session: Option<SessionId>,
    /// Daemon: the node has proved it holds the session id at least once.
    pub established: bool,
    /// Last seq assigned in our outgoing stream.
    pub last_sent: Seq,
    /// Highest outgoing seq the peer acknowledged.
    pub acked: Seq,
    /// Highest incoming seq handed to the application.
    pub received: Seq,
    /// Daemon: the next call id to hand out.
    pub next_call_id: CallId,
    /// Daemon: state of the session-id generator, so a restart never reuses an id.
    pub id_state: [u64; 2],
}

/// One durable write. Ops of a batch are applied in the order polled, in one
/// transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalOp<'a> {
    /// Forget every stored message, call and call-window entry: the peer's session is
    /// gone and a new one starts.
    Clear,
    /// Drop stored outgoing messages up to and including `through`.
    Trim { through: Seq },
    /// Store outgoing message `seq` (its postcard-encoded body).
    Append { seq: Seq, body: &'a [u8] },
    /// Daemon: insert or replace a call (keyed by its id).
    PutCall(CallRecord),
    /// Daemon: drop a call (its final state was reported).
    RemoveCall(CallId),
    /// Node: slot `slot` of the call window holds this call now.
    PutSeen { slot: u8, call: SeenCall },
    /// Replace the positions.
    Meta(JournalMeta),
}

/// Read side of a journal, for restoring a session.
pub trait JournalRead {
    type Error: core::fmt::Debug;

    /// The stored positions, or `None` for a journal never written.
    fn meta(&self) -> Result<Option<JournalMeta>, Self::Error>;
    /// Visits the stored outgoing messages in seq order.
    fn messages(&self, visit: &mut dyn FnMut(Seq, &[u8])) -> Result<(), Self::Error>;
    /// Daemon: visits the stored calls.
    fn calls(&self, visit: &mut dyn FnMut(&CallRecord)) -> Result<(), Self::Error>;
    /// Node: visits the stored call-window entries with their slots.
    fn seen(&self, visit: &mut dyn FnMut(u8, &SeenCall)) -> Result<(), Self::Error>;
}

/// Where one journaled item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Mark {
    #[default]
    Clean,
    /// Changed; not yet in a batch.
    Dirty,
    /// In the batch in flight.
    InFlight,
}

impl Mark {
    pub(crate) fn polled(&mut self) {
        if *self == Mark::Dirty {
            *self = Mark::InFlight;
        }
    }
    pub(crate) fn committed(&mut self) {
        if *self == Mark::InFlight {
            *self = Mark::Clean;
        }
    }
    pub(crate) fn failed(&mut self) {
        if *self == Mark::InFlight {
            *self = Mark::Dirty;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batch {
    /// No op polled since the last confirmation.
    Idle,
    /// Ops are being polled.
    Open,
    /// `poll_journal` returned `None`: the batch waits for its confirmation.
    Closed,
}

/// Positions a batch carries, applied when it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Carried {
    appended: Seq,
    trimmed: Seq,
    received: Seq,
    session: Option<SessionId>,
    epoch: u32,
}

/// The durability bookkeeping of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Track {
    pub(crate) enabled: bool,
    batch: Batch,
    pub(crate) clear: Mark,
    pub(crate) meta: Mark,
    pub(crate) trim: Mark,
    /// Positions of the batch being polled or in flight.
    carried: Carried,
    /// What is committed.
    durable: Carried,
    /// Bumped when the stream starts over: a batch of the old stream commits nothing of
    /// the new one.
    epoch: u32,
    pub(crate) failed_unreported: bool,
    /// Id of the batch being polled or waiting for its confirmation (the last one when
    /// idle).
    batch_id: u64,
    /// Failures in a row, and when the failed batch may be polled again.
    failures: u32,
    retry_at: Option<Instant>,
}

/// First retry delay after a failed batch, and the longest.
pub(crate) const RETRY_FIRST_MS: u64 = 50;
pub(crate) const RETRY_MAX_MS: u64 = 5_000;

impl Track {
    pub(crate) const fn new(enabled: bool) -> Self {
        let zero = Carried {
            appended: 0,
            trimmed: 0,
            received: 0,
            session: None,
            epoch: 0,
        };
        Track {
            enabled,
            batch: Batch::Idle,
            clear: Mark::Clean,
            meta: Mark::Clean,
            trim: Mark::Clean,
            carried: zero,
            durable: zero,
            epoch: 0,
            failed_unreported: false,
            batch_id: 0,
            failures: 0,
            retry_at: None,
        }
    }

    /// Marks an item changed (nothing to do when not journaled).
    pub(crate) fn touch(&self, mark: &mut Mark) {
        if self.enabled {
            *mark = Mark::Dirty;
        }
    }

    pub(crate) fn touch_meta(&mut self) {
        if self.enabled {
            self.meta = Mark::Dirty;
        }
    }

    /// A restored session: what the journal holds is durable.
    pub(crate) fn restored(
        &mut self,
        appended: Seq,
        trimmed: Seq,
        received: Seq,
        session: Option<SessionId>,
    ) {
        self.durable = Carried {
            appended,
            trimmed,
            received,
            session,
            epoch: self.epoch,
        };
        self.carried = self.durable;
    }

    /// The stream starts over (the peer's session is gone).
    pub(crate) fn start_over(&mut self) {
        if !self.enabled {
            return;
        }
        self.epoch = self.epoch.wrapping_add(1);
        self.clear = Mark::Dirty;
        self.meta = Mark::Dirty;
        let session = self.durable.session;
        self.carried = Carried {
            session: self.carried.session,
            epoch: self.epoch,
            ..Carried::default()
        };
        self.durable = Carried {
            session,
            epoch: self.epoch,
            ..Carried::default()
        };
    }

    /// May an op be polled now? Not while a batch waits for its confirmation, nor
    /// before a failed batch's retry deadline.
    pub(crate) fn can_poll(&self) -> bool {
        self.enabled && self.batch != Batch::Closed && self.retry_at.is_none()
    }

    /// An op was polled.
    pub(crate) fn opened(&mut self) {
        if self.batch == Batch::Idle {
            self.batch_id = self.batch_id.wrapping_add(1);
        }
        self.batch = Batch::Open;
    }

    /// `poll_journal` found nothing more: an open batch waits for its confirmation.
    pub(crate) fn close_batch(&mut self) {
        if self.batch == Batch::Open {
            self.batch = Batch::Closed;
        }
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.batch != Batch::Idle
    }

    /// The batch that waits for its confirmation.
    pub(crate) fn closed_batch(&self) -> Option<BatchId> {
        (self.batch == Batch::Closed).then_some(BatchId(self.batch_id))
    }

    /// Checks that a confirmation names the closed batch.
    pub(crate) fn check_confirmation(&self, named: BatchId) -> Result<(), JournalError> {
        match self.closed_batch() {
            None => Err(JournalError::NoClosedBatch),
            Some(closed) if closed != named => Err(JournalError::WrongBatch { closed, named }),
            Some(_) => Ok(()),
        }
    }

    /// When a failed batch may be polled again.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Timers: a failed batch may be polled again once its retry deadline passed.
    pub(crate) fn on_timeout(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
        }
    }

    /// Appends polled through `seq`.
    pub(crate) fn carry_append(&mut self, seq: Seq) {
        self.carried.appended = seq;
    }

    pub(crate) fn carried_append(&self) -> Seq {
        self.carried.appended
    }

    pub(crate) fn carry_trim(&mut self, through: Seq) {
        self.carried.trimmed = through;
    }

    pub(crate) fn carry_meta(&mut self, received: Seq, session: Option<SessionId>) {
        self.carried.received = received;
        self.carried.session = session;
        self.carried.epoch = self.epoch;
    }

    /// The closed batch is durable (its id was checked).
    pub(crate) fn committed(&mut self) {
        if self.batch == Batch::Idle {
            return;
        }
        self.batch = Batch::Idle;
        self.failures = 0;
        self.clear.committed();
        self.meta.committed();
        self.trim.committed();
        if self.carried.epoch == self.epoch {
            self.durable = self.carried;
        }
    }

    /// The closed batch failed (its id was checked): what it carried is emitted again,
    /// after a delay that doubles with every failure in a row.
    pub(crate) fn failed(&mut self, now: Instant) {
        if self.batch == Batch::Idle {
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let delay = RETRY_FIRST_MS
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(RETRY_MAX_MS);
        self.retry_at = Some(now.plus_ms(delay));
        self.batch = Batch::Idle;
        self.clear.failed();
        self.meta.failed();
        self.trim.failed();
        self.carried = self.durable;
        self.carried.epoch = self.epoch;
        self.failed_unreported = true;
    }

    pub(crate) fn durable_append(&self) -> Seq {
        self.durable.appended
    }

    pub(crate) fn durable_received(&self) -> Seq {
        self.durable.received
    }

    pub(crate) fn durable_session(&self) -> Option<SessionId> {
        self.durable.session
    }

    pub(crate) fn trimmed_carried(&self) -> Seq {
        self.carried.trimmed
    }
}

#[cfg(feature = "alloc")]
mod mem {
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;

    use super::super::calls::{CALL_WINDOW, CallRecord, SeenCall};
    use super::{JournalMeta, JournalOp, JournalRead};
    use crate::wire::{CallId, Seq};

    /// A journal in memory: applies ops, reads back. For tests, simulations, and as the
    /// reference a store's behaviour is checked against.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct MemJournal {
        meta: Option<JournalMeta>,
        messages: BTreeMap<Seq, Vec<u8>>,
        calls: BTreeMap<CallId, CallRecord>,
        seen: [Option<SeenCall>; CALL_WINDOW],
    }

    impl MemJournal {
        pub fn new() -> Self {
            Self::default()
        }

        /// Applies one op.
        pub fn apply(&mut self, op: &JournalOp<'_>) {
            match *op {
                JournalOp::Clear => {
                    self.messages.clear();
                    self.calls.clear();
                    self.seen = [None; CALL_WINDOW];
                }
                JournalOp::Trim { through } => {
                    self.messages = self.messages.split_off(&through.saturating_add(1));
                }
                JournalOp::Append { seq, body } => {
                    self.messages.insert(seq, body.to_vec());
                }
                JournalOp::PutCall(rec) => {
                    self.calls.insert(rec.id, rec);
                }
                JournalOp::RemoveCall(id) => {
                    self.calls.remove(&id);
                }
                JournalOp::PutSeen { slot, call } => {
                    if let Some(s) = self.seen.get_mut(usize::from(slot)) {
                        *s = Some(call);
                    }
                }
                JournalOp::Meta(meta) => self.meta = Some(meta),
            }
        }

        /// Applies one owned op.
        pub fn apply_owned(&mut self, op: &OwnedJournalOp) {
            self.apply(&op.as_op());
        }

        /// Stored outgoing messages.
        pub fn message_count(&self) -> usize {
            self.messages.len()
        }

        /// Stored calls.
        pub fn call_count(&self) -> usize {
            self.calls.len()
        }

        pub fn stored_meta(&self) -> Option<JournalMeta> {
            self.meta
        }
    }

    /// A [`JournalOp`] that owns its message body, for a store that commits batches
    /// away from the session (another thread, a group commit).
    #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    pub enum OwnedJournalOp {
        Clear,
        Trim { through: Seq },
        Append { seq: Seq, body: Vec<u8> },
        PutCall(CallRecord),
        RemoveCall(CallId),
        PutSeen { slot: u8, call: SeenCall },
        Meta(JournalMeta),
    }

    impl OwnedJournalOp {
        /// The borrowed op this one owns.
        pub fn as_op(&self) -> JournalOp<'_> {
            match self {
                Self::Clear => JournalOp::Clear,
                Self::Trim { through } => JournalOp::Trim { through: *through },
                Self::Append { seq, body } => JournalOp::Append { seq: *seq, body },
                Self::PutCall(rec) => JournalOp::PutCall(*rec),
                Self::RemoveCall(id) => JournalOp::RemoveCall(*id),
                Self::PutSeen { slot, call } => JournalOp::PutSeen {
                    slot: *slot,
                    call: *call,
                },
                Self::Meta(meta) => JournalOp::Meta(*meta),
            }
        }
    }

    impl From<&JournalOp<'_>> for OwnedJournalOp {
        fn from(op: &JournalOp<'_>) -> Self {
            match *op {
                JournalOp::Clear => Self::Clear,
                JournalOp::Trim { through } => Self::Trim { through },
                JournalOp::Append { seq, body } => Self::Append {
                    seq,
                    body: body.to_vec(),
                },
                JournalOp::PutCall(rec) => Self::PutCall(rec),
                JournalOp::RemoveCall(id) => Self::RemoveCall(id),
                JournalOp::PutSeen { slot, call } => Self::PutSeen { slot, call },
                JournalOp::Meta(meta) => Self::Meta(meta),
            }
        }
    }

    impl JournalRead for MemJournal {
        type Error = core::convert::Infallible;

        fn meta(&self) -> Result<Option<JournalMeta>, Self::Error> {
            Ok(self.meta)
        }

        fn messages(&self, visit: &mut dyn FnMut(Seq, &[u8])) -> Result<(), Self::Error> {
            for (seq, body) in &self.messages {
                visit(*seq, body);
            }
            Ok(())
        }

        fn calls(&self, visit: &mut dyn FnMut(&CallRecord)) -> Result<(), Self::Error> {
            for rec in self.calls.values() {
                visit(rec);
            }
            Ok(())
        }

        fn seen(&self, visit: &mut dyn FnMut(u8, &SeenCall)) -> Result<(), Self::Error> {
            for (slot, call) in self.seen.iter().enumerate() {
                if let (Some(call), Ok(slot)) = (call, u8::try_from(slot)) {
                    visit(slot, call);
                }
            }
            Ok(())
        }
    }
}

#[cfg(feature = "alloc")]
pub use mem::{MemJournal, OwnedJournalOp};
