//! What the session targets share: one handle on either role, two drivers, and the
//! checks every output must pass on the way.
//!
//! - `Harness` drives a session directly, the way `SANS_IO.md` describes a driver
//!   without the pump: after every input, events, then the journal batch (which commits,
//!   fails, stays in flight, or is confirmed late, twice or early), then transmit.
//! - `Pumped` drives it through `pump::Pump`, as every real driver does: received bytes
//!   in an input queue the pump cuts frames from, buffers from a lender that can run
//!   dry, journal batches staged with `Batch::stage` and confirmed by their id, writes
//!   the transport takes only in part.
//!
//! Checks made here, for every session and every step:
//! - each of `poll_event`, `poll_journal` and `poll_transmit` returns `None` within a
//!   bounded number of calls when no input arrives, and a drain comes to rest;
//! - every frame's prefix matches its length, its payload decodes, fits our own
//!   `max_frame` and the limit the peer announced on this connection (`MIN_MAX_FRAME`
//!   before the hello exchange), and carries no position above `MAX_SEQ`;
//! - a buffer of `transmit_len()` bytes always holds the next frame; a smaller one that is
//!   refused consumes nothing (the next poll writes exactly the size it asked for);
//! - an error frame is followed by the close;
//! - a deadline at or before `now` stops being one after `handle_timeout(now)` and a
//!   drain, within a bounded number of rounds;
//! - deliveries of the peer's stream are consecutive (gaps included) and agree with
//!   `delivered()`; a call reaches a final state once;
//! - journal ops carry positions within `MAX_SEQ`, only a journaled session emits them,
//!   a batch polled to its end is the closed one and stays closed until it is confirmed,
//!   and its confirmation names it;
//! - a confirmation naming no closed batch (late, twice, early) is refused with the
//!   `JournalError` that says why and changes nothing;
//! - a failed batch comes back only once a `handle_timeout` reached its retry deadline
//!   (50 ms doubling with every failure in a row, at most 5 s), and then it does come
//!   back; until then `poll_timeout` names that deadline or an earlier one;
//! - a frame refused with `InboxFull` delivers nothing (backpressure).

#![allow(dead_code)] // each target uses part of it

use std::collections::{BTreeSet, VecDeque};

use protocol_core::frame::{FrameError, HEADER_LEN, MIN_MAX_FRAME};
use protocol_core::pump::{Input, Lend, Lender, Machine, Offer, Pump, Step, Wait};
use protocol_core::session::{
    BatchId, Config, DaemonSession, Instant, JournalError, JournalOp, JournalRead, MAX_SEQ,
    MemJournal, NodeSession, OwnedDaemonEvent, OwnedNodeEvent, SessionError, SetupError, Transmit,
    TransmitError,
};
use protocol_core::wire::{self, CallId, GoodbyeReason, Message, Seq};

/// Most calls of one poll kind in a row before it counts as repeating forever.
pub const POLL_BOUND: usize = 20_000;
/// Most rounds (events, journal, transmit) of one drain.
pub const DRAIN_ROUNDS: usize = 1_000;
/// Most `handle_timeout` rounds before a deadline at or before `now` must have moved.
pub const TIMER_ROUNDS: usize = 64;
/// First retry delay of a failed batch, and the longest (`SANS_IO.md`).
pub const RETRY_FIRST_MS: u64 = 50;
pub const RETRY_MAX_MS: u64 = 5_000;

pub const NODE_ID: &str = "n";
pub const PLATFORM: &str = "fuzz";

/// `TERN_FUZZ_TRACE=1` prints every step, frame, event and journal op of a run (for
/// replaying one input: `cargo fuzz run TARGET ARTIFACT`).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TERN_FUZZ_TRACE").is_some())
}

#[macro_export]
macro_rules! trace {
    ($($t:tt)*) => {
        if $crate::common::tracing() {
            eprintln!($($t)*);
        }
    };
}

/// What an event means for the checks.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// It names messages `from..=to` of the peer's stream.
    pub stream: Option<(Seq, Seq)>,
    /// The peer's stream starts over.
    pub reset: bool,
    /// Daemon: this call reached a final state.
    pub final_call: Option<CallId>,
    /// Node: this call is handed to the application to run.
    pub run_call: Option<CallId>,
}

/// A journal op copied out of the session.
#[derive(Debug, Clone)]
pub struct OwnedOp(pub JournalOp<'static>, pub Vec<u8>);

impl OwnedOp {
    fn from(op: &JournalOp<'_>) -> Self {
        match *op {
            JournalOp::Append { seq, body } => {
                OwnedOp(JournalOp::Append { seq, body: &[] }, body.to_vec())
            }
            JournalOp::Clear => OwnedOp(JournalOp::Clear, Vec::new()),
            JournalOp::Trim { through } => OwnedOp(JournalOp::Trim { through }, Vec::new()),
            JournalOp::PutCall(r) => OwnedOp(JournalOp::PutCall(r), Vec::new()),
            JournalOp::RemoveCall(id) => OwnedOp(JournalOp::RemoveCall(id), Vec::new()),
            JournalOp::PutSeen { slot, call } => {
                OwnedOp(JournalOp::PutSeen { slot, call }, Vec::new())
            }
            JournalOp::Meta(m) => OwnedOp(JournalOp::Meta(m), Vec::new()),
        }
    }

    fn borrow(&self) -> JournalOp<'_> {
        match self.0 {
            JournalOp::Append { seq, .. } => JournalOp::Append { seq, body: &self.1 },
            other => other,
        }
    }

    fn check(&self) {
        match self.0 {
            JournalOp::Append { seq, .. } => {
                assert!((1..=MAX_SEQ).contains(&seq), "append of seq {seq}")
            }
            JournalOp::Trim { through } => assert!(through <= MAX_SEQ, "trim through {through}"),
            JournalOp::PutCall(r) => assert!(r.seq <= MAX_SEQ, "call record {r:?}"),
            JournalOp::Meta(m) => {
                assert!(
                    m.last_sent <= MAX_SEQ && m.received <= MAX_SEQ,
                    "meta {m:?}"
                );
                assert!(
                    m.acked <= m.last_sent,
                    "meta acknowledges more than was sent: {m:?}"
                );
            }
            _ => {}
        }
    }
}

/// Either role, as the drivers see it: the pump's `Machine` (storage, journal polling,
/// timers) and the rest of the session's API.
pub trait Side: Restore + Machine<Buf = Vec<u8>> + core::fmt::Debug {
    const NODE: bool;
    fn frame(&mut self, now: Instant, f: &[u8]) -> Result<(), SessionError>;
    fn frame_error(&mut self, now: Instant, e: FrameError);
    fn connected(&mut self, now: Instant);
    fn disconnected(&mut self, now: Instant);
    fn timeout(&mut self, now: Instant);
    fn close(&mut self, now: Instant, reason: GoodbyeReason);
    fn transmit(&mut self, now: Instant, buf: &mut [u8])
    -> Result<Option<Transmit>, TransmitError>;
    fn event(&mut self) -> Option<(Seen, String)>;
    fn journal(&mut self) -> Option<OwnedOp>;
    fn committed(&mut self, now: Instant, batch: BatchId) -> Result<(), JournalError>;
    fn failed(&mut self, now: Instant, batch: BatchId) -> Result<(), JournalError>;
    fn in_flight(&self) -> bool;
    fn deadline(&self) -> Option<Instant>;
    fn is_connected(&self) -> bool;
    fn has_connection(&self) -> bool;
    fn last_sent(&self) -> Seq;
    fn acked(&self) -> Seq;
    fn delivered(&self) -> Seq;
    fn unacked(&self) -> usize;
    fn config(&self) -> Config;
}

macro_rules! side {
    ($ty:ty, $node:expr, $seen:ident, $owned:ty) => {
        impl Side for $ty {
            const NODE: bool = $node;
            fn frame(&mut self, now: Instant, f: &[u8]) -> Result<(), SessionError> {
                self.handle_frame(now, f)
            }
            fn frame_error(&mut self, now: Instant, e: FrameError) {
                self.handle_frame_error(now, e)
            }
            fn connected(&mut self, now: Instant) {
                self.handle_connected(now)
            }
            fn disconnected(&mut self, now: Instant) {
                self.handle_disconnected(now)
            }
            fn timeout(&mut self, now: Instant) {
                self.handle_timeout(now)
            }
            fn close(&mut self, now: Instant, reason: GoodbyeReason) {
                <$ty>::close(self, now, reason)
            }
            fn transmit(
                &mut self,
                now: Instant,
                buf: &mut [u8],
            ) -> Result<Option<Transmit>, TransmitError> {
                self.poll_transmit(now, buf)
            }
            fn event(&mut self) -> Option<(Seen, String)> {
                let ev: $owned = self.poll_event()?.into();
                Some(($seen(&ev), format!("{ev:?}")))
            }
            fn journal(&mut self) -> Option<OwnedOp> {
                self.poll_journal().map(|op| OwnedOp::from(&op))
            }
            fn committed(&mut self, now: Instant, batch: BatchId) -> Result<(), JournalError> {
                self.handle_journal_committed(now, batch)
            }
            fn failed(&mut self, now: Instant, batch: BatchId) -> Result<(), JournalError> {
                self.handle_journal_failed(now, batch)
            }
            fn in_flight(&self) -> bool {
                <$ty>::journal_in_flight(self)
            }
            fn deadline(&self) -> Option<Instant> {
                self.poll_timeout()
            }
            fn is_connected(&self) -> bool {
                <$ty>::is_connected(self)
            }
            fn has_connection(&self) -> bool {
                <$ty>::has_connection(self)
            }
            fn last_sent(&self) -> Seq {
                <$ty>::last_sent(self)
            }
            fn acked(&self) -> Seq {
                <$ty>::acked(self)
            }
            fn delivered(&self) -> Seq {
                <$ty>::delivered(self)
            }
            fn unacked(&self) -> usize {
                <$ty>::unacked(self)
            }
            fn config(&self) -> Config {
                *<$ty>::config(self)
            }
        }
    };
}

pub type Node = NodeSession<Vec<u8>>;
pub type Daemon = DaemonSession<Vec<u8>>;

side!(Node, true, node_seen, OwnedNodeEvent);
side!(Daemon, false, daemon_seen, OwnedDaemonEvent);

/// Rebuilding a role from its journal.
pub trait Restore: Sized {
    fn restore(
        config: Config,
        storage: Option<Vec<u8>>,
        journal: &MemJournal,
        seed: u64,
    ) -> Result<Self, SetupError>;
}

impl Restore for Node {
    fn restore(
        config: Config,
        storage: Option<Vec<u8>>,
        journal: &MemJournal,
        _: u64,
    ) -> Result<Self, SetupError> {
        NodeSession::restore(config, NODE_ID, PLATFORM, storage, journal)
    }
}

impl Restore for Daemon {
    fn restore(
        config: Config,
        storage: Option<Vec<u8>>,
        journal: &MemJournal,
        seed: u64,
    ) -> Result<Self, SetupError> {
        DaemonSession::restore(config, NODE_ID, storage, journal, &mut Rng(seed))
    }
}

fn node_seen(e: &OwnedNodeEvent) -> Seen {
    let mut s = Seen::default();
    match *e {
        OwnedNodeEvent::Call { seq, call_id, .. } => {
            s.stream = Some((seq, seq));
            s.run_call = Some(call_id);
        }
        OwnedNodeEvent::DuplicateCall { seq, .. }
        | OwnedNodeEvent::CallNotRun { seq, .. }
        | OwnedNodeEvent::Cancel { seq, .. } => s.stream = Some((seq, seq)),
        OwnedNodeEvent::Gap { from, to } => s.stream = Some((from, to)),
        OwnedNodeEvent::SessionReset { .. } => s.reset = true,
        _ => {}
    }
    s
}

fn daemon_seen(e: &OwnedDaemonEvent) -> Seen {
    let mut s = Seen::default();
    match *e {
        OwnedDaemonEvent::Register { seq, .. }
        | OwnedDaemonEvent::Event { seq, .. }
        | OwnedDaemonEvent::LateAnswer { seq, .. } => s.stream = Some((seq, seq)),
        OwnedDaemonEvent::CallUpdate {
            call_id,
            state,
            seq,
            ..
        } => {
            s.stream = seq.map(|q| (q, q));
            s.final_call = state.is_final().then_some(call_id);
        }
        OwnedDaemonEvent::Gap { from, to } => s.stream = Some((from, to)),
        OwnedDaemonEvent::SessionReset { .. } => s.reset = true,
        _ => {}
    }
    s
}

/// What the application saw, as far as the checks need it.
#[derive(Debug, Clone, Default)]
pub struct App {
    /// Last seq of the peer's stream handed out.
    pub delivered: Seq,
    /// Daemon: calls reported final.
    pub finals: BTreeSet<CallId>,
    /// Node: calls handed out to run, most recent last.
    pub calls: Vec<CallId>,
    /// `SessionReset`s seen.
    pub resets: u32,
}

impl App {
    fn on(&mut self, seen: &Seen, text: &str, session_delivered: Seq) {
        if seen.reset {
            self.delivered = 0;
            self.resets += 1;
            assert_eq!(session_delivered, 0, "after {text}");
        }
        if let Some((from, to)) = seen.stream {
            assert_eq!(from, self.delivered + 1, "delivery out of order: {text}");
            assert!(from <= to && to <= MAX_SEQ, "bad range: {text}");
            self.delivered = to;
            assert_eq!(session_delivered, to, "delivered() disagrees with {text}");
        }
        if let Some(id) = seen.final_call {
            assert!(self.finals.insert(id), "call {id} final twice: {text}");
        }
        if let Some(id) = seen.run_call {
            self.calls.push(id);
        }
    }
}

/// One frame or the close, as handed out by `poll_transmit`.
#[derive(Debug, Clone)]
pub enum Out {
    /// A frame's payload (prefix stripped).
    Frame(Vec<u8>),
    Close,
}

struct Batch {
    id: BatchId,
    ops: Vec<OwnedOp>,
    /// What the application had seen when the batch was polled: it commits with it.
    app: App,
}

/// Everything a confirmation could change: a refused one must leave all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Look {
    closed: Option<BatchId>,
    pending: bool,
    in_flight: bool,
    deadline: Option<Instant>,
    positions: (Seq, Seq, Seq, usize),
    storage: bool,
    connected: bool,
    debug: String,
}

fn look<S: Side>(s: &S) -> Look {
    Look {
        closed: s.closed_batch(),
        pending: s.journal_pending(),
        in_flight: s.in_flight(),
        deadline: s.deadline(),
        positions: (s.last_sent(), s.acked(), s.delivered(), s.unacked()),
        storage: s.has_storage(),
        connected: s.is_connected(),
        debug: format!("{s:?}"),
    }
}

/// A session with its journal and its application, driven like a driver does.
pub struct Harness<S: Side> {
    pub s: S,
    pub journal: MemJournal,
    batch: Option<Batch>,
    /// Ops polled of a batch not closed yet (an early look into it).
    open: Vec<OwnedOp>,
    /// Leave polled batches in flight.
    pub hold: bool,
    /// Fail this many of the next batches.
    pub fail_next: u32,
    /// The store is down until then: every batch confirmed before fails.
    pub outage_until: Option<u64>,
    pub app: App,
    committed_app: App,
    /// Largest payload the peer accepts on this connection, as it announced.
    pub peer_max: u32,
    /// Offer `poll_transmit` a buffer this short first.
    pub short_buf: Option<usize>,
    /// Restarts so far.
    pub restores: u32,
    /// Batches confirmed so far (the last few), for late and duplicate confirmations.
    confirmed: VecDeque<BatchId>,
    /// Failures in a row, the failed batch's retry deadline, and the latest
    /// `handle_timeout` since the failure.
    fails: u32,
    retry_due: Option<u64>,
    timeout_high: Option<u64>,
    /// Frames the inbox refused (`InboxFull`), with those received after them: offered
    /// again, in order, after the events or a commit.
    pub backlog: VecDeque<Vec<u8>>,
    pub refusals: u64,
}

impl<S: Side> Harness<S> {
    pub fn new(s: S) -> Self {
        Harness {
            s,
            journal: MemJournal::new(),
            batch: None,
            open: Vec::new(),
            hold: false,
            fail_next: 0,
            outage_until: None,
            app: App::default(),
            committed_app: App::default(),
            peer_max: MIN_MAX_FRAME,
            short_buf: None,
            restores: 0,
            confirmed: VecDeque::new(),
            fails: 0,
            retry_due: None,
            timeout_high: None,
            backlog: VecDeque::new(),
            refusals: 0,
        }
    }

    pub fn storage(&self) -> Vec<u8> {
        vec![0u8; self.s.config().storage_len()]
    }

    pub fn batch_in_flight(&self) -> bool {
        self.batch.is_some()
    }

    /// Feeds one frame payload the way a driver whose decoder uses our own `max_frame`
    /// does: behind frames the inbox refused, if any. Lends storage and retries when
    /// the session asks for it.
    pub fn feed(&mut self, now: Instant, payload: &[u8]) {
        let max = self.s.config().max_frame;
        if payload.len() > max as usize {
            let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
            self.s.frame_error(now, FrameError::TooLarge { len, max });
            return;
        }
        if !self.backlog.is_empty() {
            self.backlog.push_back(payload.to_vec());
            return;
        }
        if !self.offer(now, payload) {
            self.backlog.push_back(payload.to_vec());
        }
    }

    /// Offers one frame; false if the inbox refused it.
    fn offer(&mut self, now: Instant, payload: &[u8]) -> bool {
        let was_up = self.s.is_connected();
        crate::trace!("  {} gets {:?}", role::<S>(), wire::decode_message(payload));
        let delivered = self.s.delivered();
        let mut r = self.s.frame(now, payload);
        if r == Err(SessionError::NoStorage) {
            assert!(!self.s.has_storage(), "NoStorage while holding storage");
            let buf = self.storage();
            assert!(self.s.lend(buf).is_ok(), "lending the configured size");
            r = self.s.frame(now, payload);
            assert_ne!(r, Err(SessionError::NoStorage), "storage was lent");
        }
        match r {
            Ok(()) => {}
            Err(SessionError::InboxFull) => {
                assert_eq!(self.s.delivered(), delivered, "a refused frame delivered");
                self.refusals += 1;
                crate::trace!("  {} inbox full", role::<S>());
                return false;
            }
            Err(e) => panic!("handle_frame refused with {e}"),
        }
        self.came_up(was_up, payload);
        true
    }

    /// The hello exchange finished on this frame: it announced the peer's limit.
    fn came_up(&mut self, was_up: bool, payload: &[u8]) {
        if was_up || !self.s.is_connected() {
            return;
        }
        match wire::decode_message(payload) {
            Ok(Message::Hello(h)) if !S::NODE => self.peer_max = h.max_frame,
            Ok(Message::HelloAck(a)) if S::NODE => self.peer_max = a.max_frame,
            other => panic!("connection came up on {other:?}"),
        }
        assert!(
            self.peer_max >= MIN_MAX_FRAME,
            "accepted a peer limit below the minimum"
        );
    }

    /// Offers the frames the inbox refused, in order; true if one was taken.
    fn offer_backlog(&mut self, now: Instant) -> bool {
        let mut took = false;
        while let Some(f) = self.backlog.pop_front() {
            if !self.offer(now, &f) {
                self.backlog.push_front(f);
                break;
            }
            took = true;
        }
        took
    }

    pub fn connected(&mut self, now: Instant) {
        self.s.connected(now);
        self.peer_max = MIN_MAX_FRAME;
        self.backlog.clear();
    }

    pub fn disconnected(&mut self, now: Instant) {
        self.s.disconnected(now);
        self.peer_max = MIN_MAX_FRAME;
        self.backlog.clear();
        assert!(!self.s.has_connection());
    }

    /// `handle_timeout`, remembered for the retry checks.
    pub fn timeout(&mut self, now: Instant) {
        self.s.timeout(now);
        let t = now.as_millis();
        self.timeout_high = Some(self.timeout_high.map_or(t, |h| h.max(t)));
    }

    /// A failed batch may come back once a `handle_timeout` reached its deadline.
    fn retry_ready(&self) -> bool {
        self.retry_due
            .is_some_and(|due| self.timeout_high.is_some_and(|t| t >= due))
    }

    /// Takes a batch polled to its end (`id` is what names it) into the store: checks
    /// it, and confirms it unless batches are held.
    fn stage(&mut self, now: Instant, id: Option<BatchId>, ops: Vec<OwnedOp>) {
        assert!(
            self.s.config().durable,
            "a session without a journal emitted ops"
        );
        assert!(
            self.batch.is_none(),
            "a second batch while one is in flight"
        );
        let id = id.expect("a batch polled to its end is closed and named");
        assert_eq!(
            self.s.closed_batch(),
            Some(id),
            "the closed batch is another"
        );
        assert!(!ops.is_empty(), "{id} closed without ops");
        assert!(
            self.confirmed.iter().all(|c| *c != id),
            "{id} names a batch confirmed before"
        );
        if let Some(due) = self.retry_due {
            assert!(
                self.retry_ready(),
                "a failed batch came back before its retry deadline {due} (timeouts handled through {:?})",
                self.timeout_high
            );
            self.retry_due = None;
        }
        crate::trace!("  {} {id}: {} ops", role::<S>(), ops.len());
        self.batch = Some(Batch {
            id,
            ops,
            app: self.app.clone(),
        });
        if !self.hold {
            self.confirm(now);
        }
    }

    /// Polls a journal batch if none is in flight; confirms it unless held.
    fn pump_journal(&mut self, now: Instant) -> bool {
        if self.batch.is_some() {
            assert!(
                self.s.journal().is_none(),
                "a second batch while one is in flight"
            );
            if !self.hold {
                self.confirm(now);
                return true;
            }
            return false;
        }
        while let Some(op) = self.s.journal() {
            op.check();
            crate::trace!("  {} journal {:?}", role::<S>(), op.0);
            self.open.push(op);
            assert!(
                self.open.len() <= POLL_BOUND,
                "poll_journal keeps returning ops"
            );
        }
        if self.open.is_empty() {
            assert_eq!(self.s.closed_batch(), None, "a batch closed without ops");
            assert!(
                !self.retry_ready(),
                "a failed batch did not come back after its retry deadline {:?}",
                self.retry_due
            );
            return false;
        }
        assert!(self.s.journal().is_none(), "a closed batch grew");
        let ops = std::mem::take(&mut self.open);
        let id = self.s.closed_batch();
        self.stage(now, id, ops);
        true
    }

    /// Polls up to `n` ops of the next batch without closing it (a store that reads a
    /// batch in parts); the next drain polls the rest.
    pub fn open_batch(&mut self, n: usize) {
        if self.batch.is_some() {
            return;
        }
        for _ in 0..n {
            let Some(op) = self.s.journal() else {
                return;
            };
            op.check();
            self.open.push(op);
        }
    }

    /// Commits (or fails, if asked to or in an outage) the batch in flight.
    pub fn confirm(&mut self, now: Instant) {
        let Some(batch) = self.batch.take() else {
            return;
        };
        let outage = self.outage_until.is_some_and(|t| now.as_millis() < t);
        let fail = outage || self.fail_next > 0;
        crate::trace!(
            "  {} {} {}",
            role::<S>(),
            batch.id,
            if fail { "fails" } else { "commits" }
        );
        if fail {
            if !outage {
                self.fail_next -= 1;
            }
            self.s
                .failed(now, batch.id)
                .expect("the failure names the closed batch");
            self.fails += 1;
            let delay = RETRY_FIRST_MS
                .saturating_mul(1 << (self.fails - 1).min(16))
                .min(RETRY_MAX_MS);
            self.retry_due = Some(now.as_millis().saturating_add(delay));
            self.timeout_high = None;
        } else {
            for op in &batch.ops {
                self.journal.apply(&op.borrow());
            }
            self.committed_app = batch.app;
            self.s
                .committed(now, batch.id)
                .expect("the commit names the closed batch");
            self.fails = 0;
        }
        if self.confirmed.len() == 8 {
            self.confirmed.pop_front();
        }
        self.confirmed.push_back(batch.id);
    }

    /// A store confirms (or fails) a batch confirmed before: late, twice, or while the
    /// next batch is still open (early). Refused, with the error that says why, and
    /// nothing changes.
    pub fn stale_confirmation(&mut self, now: Instant, pick: usize, failed: bool) {
        let Some(&named) = self.confirmed.get(pick % self.confirmed.len().max(1)) else {
            return;
        };
        let before = look(&self.s);
        let want = match before.closed {
            None => JournalError::NoClosedBatch,
            Some(closed) => {
                assert_ne!(closed, named, "a batch id used twice");
                JournalError::WrongBatch { closed, named }
            }
        };
        let got = if failed {
            self.s.failed(now, named)
        } else {
            self.s.committed(now, named)
        };
        assert_eq!(got, Err(want), "a stale confirmation of {named}");
        crate::trace!("  {} stale confirmation of {named}: {want}", role::<S>());
        assert_eq!(
            look(&self.s),
            before,
            "a refused confirmation of {named} changed the session"
        );
    }

    /// Takes every event the session has for the application.
    fn events(&mut self) -> bool {
        let mut n = 0;
        while let Some((seen, text)) = self.s.event() {
            n += 1;
            assert!(n <= POLL_BOUND, "poll_event repeats forever: {text}");
            crate::trace!("  {} event {text}", role::<S>());
            self.app.on(&seen, &text, self.s.delivered());
        }
        n > 0
    }

    /// Polls everything until the session is quiet; returns what it transmitted.
    pub fn drain(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        let config = self.s.config();
        let full = config.transmit_len();
        let mut buf = vec![0u8; full];
        for _ in 0..DRAIN_ROUNDS {
            let mut progress = self.events();
            progress |= self.pump_journal(now);
            progress |= self.offer_backlog(now);
            let mut after_error = false;
            for n in 0.. {
                assert!(n <= POLL_BOUND, "poll_transmit repeats forever");
                let first = self.short_buf.map_or(full, |l| l.min(full));
                let r = match self.s.transmit(now, &mut buf[..first]) {
                    Err(TransmitError::BufferTooSmall { needed }) if first < full => {
                        assert!(
                            needed > first,
                            "refused a buffer of {first} bytes that holds {needed}"
                        );
                        assert!(
                            needed <= full,
                            "frame of {needed} bytes above transmit_len {full}"
                        );
                        let r = self.s.transmit(now, &mut buf);
                        assert_eq!(
                            r,
                            Ok(Some(Transmit::Frame(needed))),
                            "a refused poll consumed something"
                        );
                        r
                    }
                    r => r,
                };
                match r {
                    Ok(Some(Transmit::Frame(n))) => {
                        assert!(!after_error, "a frame after an error frame");
                        let payload = check_frame(&buf[..n], config.max_frame, self.peer_max);
                        crate::trace!(
                            "  {} sends {:?}",
                            role::<S>(),
                            wire::decode_message(&payload)
                        );
                        after_error =
                            matches!(wire::decode_message(&payload), Ok(Message::Error(_)));
                        out.push(Out::Frame(payload));
                        progress = true;
                    }
                    Ok(Some(Transmit::Close)) => {
                        assert!(!self.s.has_connection(), "still connected after the close");
                        self.peer_max = MIN_MAX_FRAME;
                        self.backlog.clear();
                        crate::trace!("  {} closes", role::<S>());
                        out.push(Out::Close);
                        after_error = false;
                        progress = true;
                    }
                    Ok(None) => break,
                    Err(e) => panic!("a buffer of transmit_len() bytes was refused: {e}"),
                }
            }
            assert!(!after_error, "an error frame without the close");
            if !progress {
                self.check_positions();
                return out;
            }
        }
        panic!("the session never came to rest");
    }

    /// Runs `handle_timeout(now)` while the deadline is at or before `now`; it must move.
    pub fn settle_timers(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        for _ in 0..TIMER_ROUNDS {
            match self.s.deadline() {
                Some(at) if at <= now => {
                    self.timeout(now);
                    out.extend(self.drain(now));
                }
                _ => return out,
            }
        }
        panic!(
            "deadline {:?} at or before now {now:?} keeps firing without progress",
            self.s.deadline()
        );
    }

    pub fn check_positions(&self) {
        let (last, acked, delivered) = (self.s.last_sent(), self.s.acked(), self.s.delivered());
        assert!(
            last <= MAX_SEQ && delivered <= MAX_SEQ,
            "position past MAX_SEQ: {last} {delivered}"
        );
        assert!(acked <= last, "acked {acked} above last sent {last}");
        assert_eq!(
            self.app.delivered, delivered,
            "delivered() without an event"
        );
        if let Some(due) = self.retry_due
            && self.batch.is_none()
        {
            // A driver waits for `poll_timeout`: it must name the retry, or an earlier
            // deadline, so the failed batch is not forgotten.
            assert!(
                self.s.deadline().is_some_and(|d| d.as_millis() <= due),
                "a failed batch waits for {due}, the deadline is {:?}",
                self.s.deadline()
            );
        }
    }

    /// Restarts the session from what its journal committed; the batch in flight is lost.
    pub fn restore(&mut self, seed: u64, lend: bool) {
        let config = self.s.config();
        let storage = lend.then(|| self.storage());
        let s = match S::restore(config, storage, &self.journal, seed) {
            Ok(s) => s,
            Err(SetupError::StorageNeeded) if !lend => {
                S::restore(config, Some(self.storage()), &self.journal, seed)
                    .expect("restore with storage")
            }
            Err(e) => {
                let mut seqs = Vec::new();
                let _ = self
                    .journal
                    .messages(&mut |seq, body| seqs.push((seq, body.len())));
                panic!(
                    "restore from the session's own journal failed: {e}; meta {:?}, \
                     messages (seq, bytes) {seqs:?}, {} calls",
                    self.journal.stored_meta(),
                    self.journal.call_count()
                )
            }
        };
        crate::trace!("  {} restarts", role::<S>());
        self.replace(s);
        self.app = if config.durable {
            self.committed_app.clone()
        } else {
            App::default()
        };
        self.app.calls.clear();
        if !config.durable {
            self.committed_app = App::default();
        }
        assert_eq!(
            self.s.delivered(),
            self.app.delivered,
            "restored delivery position"
        );
    }

    /// A new session object in place of the old one (a restart): nothing in flight,
    /// nothing of the old connection.
    pub fn replace(&mut self, s: S) {
        self.s = s;
        self.batch = None;
        self.open.clear();
        self.peer_max = MIN_MAX_FRAME;
        self.backlog.clear();
        self.restores += 1;
        self.confirmed.clear();
        self.fails = 0;
        self.retry_due = None;
        self.timeout_high = None;
    }

    /// After a restore from a journal built elsewhere: the application knows what the
    /// journal says was delivered.
    pub fn adopt(&mut self, journal: MemJournal) {
        self.journal = journal;
        self.app = App {
            delivered: self.s.delivered(),
            ..App::default()
        };
        self.committed_app = self.app.clone();
    }
}

fn role<S: Side>() -> &'static str {
    if S::NODE { "node" } else { "daemon" }
}

/// Checks one frame as `poll_transmit` wrote it; returns its payload.
pub fn check_frame(frame: &[u8], own_max: u32, peer_max: u32) -> Vec<u8> {
    assert!(frame.len() >= HEADER_LEN, "frame shorter than its prefix");
    let mut prefix = [0u8; HEADER_LEN];
    prefix.copy_from_slice(&frame[..HEADER_LEN]);
    let payload = &frame[HEADER_LEN..];
    assert_eq!(
        u32::from_be_bytes(prefix) as usize,
        payload.len(),
        "prefix disagrees with length"
    );
    assert!(
        payload.len() <= own_max as usize,
        "frame of {} above our max_frame {own_max}",
        payload.len()
    );
    assert!(
        payload.len() <= peer_max as usize,
        "frame of {} above the peer's limit {peer_max}",
        payload.len()
    );
    let msg = wire::decode_message(payload).expect("a session only sends valid messages");
    let positions: &[Seq] = match &msg {
        Message::Hello(h) => &[h.resume.map_or(0, |r| r.received)],
        Message::HelloAck(a) => &[a.received],
        Message::Data(d) => &[d.seq, d.ack],
        Message::Ack(a) => &[a.received],
        Message::Gap(g) => &[g.from, g.to],
        _ => &[],
    };
    assert!(
        positions.iter().all(|p| *p <= MAX_SEQ),
        "position past MAX_SEQ in {msg:?}"
    );
    if let Message::Gap(g) = msg {
        assert!(1 <= g.from && g.from <= g.to, "bad gap {g:?}");
    }
    if let Message::Data(d) = &msg {
        assert!(d.seq >= 1, "data with seq 0");
    }
    payload.to_vec()
}

/// A frame as the network carries it: length prefix, then the payload.
pub fn framed(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut f = len.to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

// ----- the pump -----

/// Bytes the transport received and the pump has not taken, in the chunks reads
/// returned.
#[derive(Debug, Default)]
pub struct Received {
    chunks: VecDeque<Vec<u8>>,
    at: usize,
}

impl Received {
    /// `bytes` as reads of at most `chunk` bytes.
    pub fn push(&mut self, bytes: &[u8], chunk: usize) {
        for c in bytes.chunks(chunk.max(1)) {
            self.chunks.push_back(c.to_vec());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

impl Input for Received {
    fn bytes(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[self.at..])
    }

    fn consume(&mut self, n: usize) {
        let Some(front) = self.chunks.front() else {
            return;
        };
        assert!(self.at + n <= front.len(), "consumed more than offered");
        self.at += n;
        if self.at == front.len() {
            self.chunks.pop_front();
            self.at = 0;
        }
    }
}

/// A lender of fresh buffers that can run dry (for one purpose), and counts the
/// pump's own buffers (frame assembly, transmit) out and back.
#[derive(Debug, Default)]
pub struct Buffers {
    pub dry: Option<Lend>,
    pub frames_out: i64,
    pub transmits_out: i64,
}

impl Lender for Buffers {
    type Buf = Vec<u8>;

    fn take(&mut self, what: Lend, len: usize) -> Option<Vec<u8>> {
        if self.dry == Some(what) {
            return None;
        }
        match what {
            Lend::Frame => self.frames_out += 1,
            Lend::Transmit => self.transmits_out += 1,
            Lend::Storage => {}
        }
        Some(vec![0; len])
    }

    fn put(&mut self, what: Lend, _: Vec<u8>) {
        match what {
            Lend::Frame => self.frames_out -= 1,
            Lend::Transmit => self.transmits_out -= 1,
            Lend::Storage => {}
        }
    }
}

/// The session as the pump sees it, with the checks of a direct driver on every
/// offer and every transmit poll.
struct Watched<'a, S> {
    s: &'a mut S,
    peer_max: &'a mut u32,
    refusals: &'a mut u64,
    polls: usize,
}

impl<S: Side> Machine for Watched<'_, S> {
    type Buf = Vec<u8>;

    fn max_frame(&self) -> u32 {
        Machine::max_frame(self.s)
    }
    fn transmit_len(&self) -> usize {
        Machine::transmit_len(self.s)
    }
    fn offer_frame(&mut self, now: Instant, frame: &[u8]) -> Offer {
        let was_up = self.s.is_connected();
        let delivered = self.s.delivered();
        crate::trace!("  {} gets {:?}", role::<S>(), wire::decode_message(frame));
        match self.s.frame(now, frame) {
            Ok(()) => {
                if !was_up && self.s.is_connected() {
                    *self.peer_max = match wire::decode_message(frame) {
                        Ok(Message::Hello(h)) if !S::NODE => h.max_frame,
                        Ok(Message::HelloAck(a)) if S::NODE => a.max_frame,
                        other => panic!("connection came up on {other:?}"),
                    };
                    assert!(
                        *self.peer_max >= MIN_MAX_FRAME,
                        "accepted a peer limit below the minimum"
                    );
                }
                Offer::Taken
            }
            Err(SessionError::InboxFull) => {
                assert_eq!(self.s.delivered(), delivered, "a refused frame delivered");
                *self.refusals += 1;
                crate::trace!("  {} inbox full", role::<S>());
                Offer::Later
            }
            Err(SessionError::NoStorage) => {
                assert!(!self.s.has_storage(), "NoStorage while holding storage");
                Offer::Later
            }
            Err(e) => panic!("handle_frame refused with {e}"),
        }
    }
    fn handle_frame_error(&mut self, now: Instant, e: FrameError) {
        self.s.frame_error(now, e);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.s.timeout(now);
    }
    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError> {
        self.polls += 1;
        assert!(self.polls <= POLL_BOUND, "poll_transmit repeats forever");
        let full = self.s.config().transmit_len();
        let r = self.s.transmit(now, buf);
        if let Err(TransmitError::BufferTooSmall { needed }) = r {
            assert!(
                buf.len() < full,
                "a buffer of {} bytes (transmit_len {full}) was refused",
                buf.len()
            );
            assert!(needed > buf.len() && needed <= full, "needed {needed}");
        }
        r
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.s.deadline()
    }
    fn storage_len(&self) -> usize {
        Machine::storage_len(self.s)
    }
    fn has_storage(&self) -> bool {
        Machine::has_storage(self.s)
    }
    fn lend(&mut self, buf: Vec<u8>) -> Result<(), Vec<u8>> {
        Machine::lend(self.s, buf)
    }
    fn reclaim(&mut self) -> Option<Vec<u8>> {
        Machine::reclaim(self.s)
    }
    fn journal_pending(&self) -> bool {
        Machine::journal_pending(self.s)
    }
    fn poll_journal(&mut self) -> Option<JournalOp<'_>> {
        Machine::poll_journal(self.s)
    }
    fn closed_batch(&self) -> Option<BatchId> {
        Machine::closed_batch(self.s)
    }
}

/// What one poll asked for, owned.
enum Got {
    Events,
    Journal(Option<BatchId>, Vec<OwnedOp>),
    /// Bytes the transport took; `whole`: all of the step's bytes.
    Out {
        bytes: Vec<u8>,
        close: bool,
        whole: bool,
    },
    Wait(Wait),
}

/// What a transport that takes at most `limit` bytes a write takes of `out`; true if
/// all of it.
fn take_out(out: protocol_core::pump::Out<'_>, limit: Option<usize>) -> (Vec<u8>, bool) {
    let all = out.bytes().len();
    let n = limit.map_or(all, |l| l.clamp(1, all.max(1)).min(all));
    let bytes = out.bytes()[..n].to_vec();
    if n < all {
        out.sent(n);
    }
    (bytes, n == all)
}

/// A session driven through the pump, with its harness (journal, application, checks).
pub struct Pumped<S: Side> {
    pub h: Harness<S>,
    pump: Pump<Vec<u8>>,
    pub input: Received,
    pub lender: Buffers,
    /// Bytes written and not yet a whole frame.
    wire: Vec<u8>,
    /// The transport takes at most this many bytes a write.
    pub write_limit: Option<usize>,
    after_error: bool,
    /// The last step was a `Wait` with nothing waiting to be written.
    idle: bool,
}

impl<S: Side> Pumped<S> {
    pub fn new(s: S) -> Self {
        Pumped {
            h: Harness::new(s),
            pump: Pump::new(),
            input: Received::default(),
            lender: Buffers::default(),
            wire: Vec::new(),
            write_limit: None,
            after_error: false,
            idle: true,
        }
    }

    /// The connection's pump is released: its buffers come back.
    fn release(&mut self) {
        let mut old = std::mem::take(&mut self.pump);
        old.release(&mut self.h.s, &mut self.lender);
        assert_eq!(
            (self.lender.frames_out, self.lender.transmits_out),
            (0, 0),
            "a released pump kept buffers"
        );
        self.input = Received::default();
        self.wire.clear();
        self.after_error = false;
        self.idle = true;
    }

    pub fn connected(&mut self, now: Instant) {
        self.release();
        self.h.connected(now);
    }

    pub fn disconnected(&mut self, now: Instant) {
        self.h.disconnected(now);
        self.release();
    }

    /// A restart: the pump and everything it held are gone with the process.
    pub fn restore(&mut self, seed: u64, lend: bool) {
        self.pump = Pump::new();
        self.lender.frames_out = 0;
        self.lender.transmits_out = 0;
        self.input = Received::default();
        self.wire.clear();
        self.after_error = false;
        self.idle = true;
        self.h.restore(seed, lend);
    }

    /// Bytes the transport received, read in chunks of at most `chunk` bytes.
    pub fn receive(&mut self, bytes: &[u8], chunk: usize) {
        self.input.push(bytes, chunk);
    }

    /// With nothing waiting in the pump, asks the session directly for its next frame
    /// with the short buffer: refused, nothing may be consumed (a full buffer right
    /// after gets exactly the size asked for); either way the frame goes out as the
    /// pump's would.
    fn probe(&mut self, now: Instant, outs: &mut Vec<Out>) {
        let Some(short) = self.h.short_buf else {
            return;
        };
        if !self.idle {
            return;
        }
        let full = self.h.s.config().transmit_len();
        let mut buf = vec![0u8; full];
        let first = short.min(full);
        let r = match self.h.s.transmit(now, &mut buf[..first]) {
            Err(TransmitError::BufferTooSmall { needed }) => {
                assert!(needed > first, "refused {first} bytes that hold {needed}");
                assert!(
                    needed <= full,
                    "frame of {needed} above transmit_len {full}"
                );
                let r = self.h.s.transmit(now, &mut buf);
                assert_eq!(
                    r,
                    Ok(Some(Transmit::Frame(needed))),
                    "a refused poll consumed something"
                );
                r
            }
            r => r,
        };
        match r {
            Ok(Some(Transmit::Frame(n))) => self.wrote(&buf[..n], false, outs),
            Ok(Some(Transmit::Close)) => self.wrote(&[], true, outs),
            Ok(None) => {}
            Err(e) => panic!("a buffer of transmit_len() bytes was refused: {e}"),
        }
    }

    /// Bytes the transport took: whole frames are checked and go to the peer; with
    /// `close`, the connection ends after them.
    fn wrote(&mut self, bytes: &[u8], close: bool, outs: &mut Vec<Out>) {
        self.wire.extend_from_slice(bytes);
        let config = self.h.s.config();
        while let Some(prefix) = self.wire.first_chunk::<HEADER_LEN>() {
            let len = HEADER_LEN + u32::from_be_bytes(*prefix) as usize;
            if self.wire.len() < len {
                break;
            }
            let frame: Vec<u8> = self.wire.drain(..len).collect();
            assert!(!self.after_error, "a frame after an error frame");
            let payload = check_frame(&frame, config.max_frame, self.h.peer_max);
            crate::trace!(
                "  {} sends {:?}",
                role::<S>(),
                wire::decode_message(&payload)
            );
            self.after_error = matches!(wire::decode_message(&payload), Ok(Message::Error(_)));
            outs.push(Out::Frame(payload));
        }
        if close {
            assert!(
                self.wire.is_empty(),
                "closed with part of a frame unwritten"
            );
            assert!(
                !self.h.s.has_connection(),
                "still connected after the close"
            );
            self.h.peer_max = MIN_MAX_FRAME;
            crate::trace!("  {} closes", role::<S>());
            outs.push(Out::Close);
            self.after_error = false;
        }
    }

    /// Runs the pump until it waits; returns what went out.
    pub fn run(&mut self, now: Instant) -> Vec<Out> {
        let mut outs = Vec::new();
        self.probe(now, &mut outs);
        // The transport drains between steps: a few writes' worth per run.
        let mut writable = 4;
        self.pump.writable();
        for _ in 0..DRAIN_ROUNDS * 4 {
            let got = {
                let Pumped {
                    h,
                    pump,
                    input,
                    lender,
                    write_limit,
                    ..
                } = self;
                let mut m = Watched {
                    s: &mut h.s,
                    peer_max: &mut h.peer_max,
                    refusals: &mut h.refusals,
                    polls: 0,
                };
                match pump.poll(now, &mut m, lender, input) {
                    Step::Events(_) => Got::Events,
                    Step::Journal(batch) => {
                        let mut ops = Vec::new();
                        let id = batch.stage(|op| {
                            let op = OwnedOp::from(&op);
                            op.check();
                            ops.push(op);
                            assert!(ops.len() <= POLL_BOUND, "poll_journal keeps returning ops");
                        });
                        Got::Journal(id, ops)
                    }
                    Step::Transmit(out) => {
                        let (bytes, whole) = take_out(out, *write_limit);
                        Got::Out {
                            bytes,
                            close: false,
                            whole,
                        }
                    }
                    Step::Close(out) => {
                        let (bytes, whole) = take_out(out, *write_limit);
                        Got::Out {
                            bytes,
                            close: true,
                            whole,
                        }
                    }
                    Step::Wait(w) => Got::Wait(w),
                }
            };
            match got {
                Got::Events => {
                    self.h.events();
                }
                Got::Journal(id, ops) => self.h.stage(now, id, ops),
                Got::Out {
                    bytes,
                    close,
                    whole,
                } => {
                    self.idle = false;
                    self.wrote(&bytes, close && whole, &mut outs);
                }
                Got::Wait(w) => {
                    if w.write_blocked && writable > 0 {
                        writable -= 1;
                        self.pump.writable();
                        continue;
                    }
                    self.idle = !w.write_blocked;
                    if !w.write_blocked {
                        // Even the close needs a transmit buffer from the lender.
                        assert!(
                            !self.after_error || self.lender.dry == Some(Lend::Transmit),
                            "an error frame without the close"
                        );
                        assert!(self.wire.is_empty(), "part of a frame left unwritten");
                    }
                    if self.h.batch_in_flight() {
                        assert!(self.h.s.journal().is_none(), "a closed batch grew");
                    }
                    assert!(
                        !self.h.retry_ready() || self.h.batch_in_flight(),
                        "a failed batch did not come back after its retry deadline {:?}",
                        self.h.retry_due
                    );
                    self.h.check_positions();
                    return outs;
                }
            }
        }
        panic!("the pump never came to rest");
    }

    /// Runs `handle_timeout(now)` while the deadline is at or before `now`; it must move
    /// (unless the lender ran dry: then what would move it may wait for a buffer).
    pub fn settle_timers(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        for _ in 0..TIMER_ROUNDS {
            match self.h.s.deadline() {
                Some(at) if at <= now => {
                    self.h.timeout(now);
                    out.extend(self.run(now));
                    if self.lender.dry.is_some() {
                        return out;
                    }
                }
                _ => return out,
            }
        }
        panic!(
            "deadline {:?} at or before now {now:?} keeps firing without progress",
            self.h.s.deadline()
        );
    }
}

/// A small deterministic generator for the daemon's session-id seed.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    fn step(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
}

impl rand_core::TryRng for Rng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((self.step() >> 32) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.step())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for b in dst {
            *b = (self.step() >> 56) as u8;
        }
        Ok(())
    }
}

/// Fails the run if the build has no overflow checks: the targets rely on them to catch
/// arithmetic on a hostile position.
pub fn require_overflow_checks() {
    if !cfg!(debug_assertions) {
        panic!(
            "build the session targets with debug assertions (cargo fuzz's default; with -O add -a)"
        );
    }
}
