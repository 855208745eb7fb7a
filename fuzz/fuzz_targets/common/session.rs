//! What the session targets share: one handle on either role, a driver that polls a
//! session until it is quiet the way `SANS_IO.md` describes (events, a journal batch
//! that commits, fails or stays in flight, frames out), and the checks every output must
//! pass on the way.
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
//!   and a batch, once polled to `None`, stays closed until it is confirmed.

#![allow(dead_code)] // each target uses part of it

use std::collections::BTreeSet;

use protocol_core::frame::{FrameError, HEADER_LEN, MIN_MAX_FRAME};
use protocol_core::session::{
    Config, DaemonSession, Instant, JournalOp, JournalRead, MAX_SEQ, MemJournal, NodeSession,
    OwnedDaemonEvent, OwnedNodeEvent, SessionError, SetupError, Transmit, TransmitError,
};
use protocol_core::wire::{self, CallId, GoodbyeReason, Message, Seq};

/// Most calls of one poll kind in a row before it counts as repeating forever.
pub const POLL_BOUND: usize = 20_000;
/// Most rounds (events, journal, transmit) of one drain.
pub const DRAIN_ROUNDS: usize = 1_000;
/// Most `handle_timeout` rounds before a deadline at or before `now` must have moved.
pub const TIMER_ROUNDS: usize = 64;

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

/// Either role, as the driver sees it.
pub trait Side: Restore {
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
    fn committed(&mut self, now: Instant);
    fn failed(&mut self, now: Instant);
    fn deadline(&self) -> Option<Instant>;
    fn lend(&mut self, b: Vec<u8>) -> Result<(), Vec<u8>>;
    fn reclaim(&mut self) -> Option<Vec<u8>>;
    fn has_storage(&self) -> bool;
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
            fn committed(&mut self, now: Instant) {
                self.handle_journal_committed(now)
            }
            fn failed(&mut self, now: Instant) {
                self.handle_journal_failed(now)
            }
            fn deadline(&self) -> Option<Instant> {
                self.poll_timeout()
            }
            fn lend(&mut self, b: Vec<u8>) -> Result<(), Vec<u8>> {
                <$ty>::lend(self, b)
            }
            fn reclaim(&mut self) -> Option<Vec<u8>> {
                <$ty>::reclaim(self)
            }
            fn has_storage(&self) -> bool {
                <$ty>::has_storage(self)
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
    ops: Vec<OwnedOp>,
    /// What the application had seen when the batch was polled: it commits with it.
    app: App,
}

/// A session with its journal and its application, driven like a driver does.
pub struct Harness<S: Side> {
    pub s: S,
    pub journal: MemJournal,
    batch: Option<Batch>,
    /// Leave polled batches in flight.
    pub hold: bool,
    /// Fail this many of the next batches.
    pub fail_next: u32,
    pub app: App,
    committed_app: App,
    /// Largest payload the peer accepts on this connection, as it announced.
    pub peer_max: u32,
    /// Offer `poll_transmit` a buffer this short first.
    pub short_buf: Option<usize>,
    /// Restarts so far.
    pub restores: u32,
}

impl<S: Side> Harness<S> {
    pub fn new(s: S) -> Self {
        Harness {
            s,
            journal: MemJournal::new(),
            batch: None,
            hold: false,
            fail_next: 0,
            app: App::default(),
            committed_app: App::default(),
            peer_max: MIN_MAX_FRAME,
            short_buf: None,
            restores: 0,
        }
    }

    pub fn storage(&self) -> Vec<u8> {
        vec![0u8; self.s.config().storage_len()]
    }

    pub fn batch_in_flight(&self) -> bool {
        self.batch.is_some()
    }

    /// Feeds one frame payload the way a driver whose decoder uses our own `max_frame`
    /// does. Lends storage and retries when the session asks for it.
    pub fn feed(&mut self, now: Instant, payload: &[u8]) {
        let max = self.s.config().max_frame;
        if payload.len() > max as usize {
            let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
            self.s.frame_error(now, FrameError::TooLarge { len, max });
            return;
        }
        let was_up = self.s.is_connected();
        crate::trace!("  {} gets {:?}", role::<S>(), wire::decode_message(payload));
        match self.s.frame(now, payload) {
            Ok(()) => {}
            Err(SessionError::NoStorage) => {
                assert!(!self.s.has_storage(), "NoStorage while holding storage");
                let buf = self.storage();
                assert!(self.s.lend(buf).is_ok(), "lending the configured size");
                assert_eq!(self.s.frame(now, payload), Ok(()), "storage was lent");
            }
            Err(e) => panic!("handle_frame refused with {e}"),
        }
        if !was_up && self.s.is_connected() {
            // The hello exchange finished on this frame: it announced the peer's limit.
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
    }

    pub fn connected(&mut self, now: Instant) {
        self.s.connected(now);
        self.peer_max = MIN_MAX_FRAME;
    }

    pub fn disconnected(&mut self, now: Instant) {
        self.s.disconnected(now);
        self.peer_max = MIN_MAX_FRAME;
        assert!(!self.s.has_connection());
    }

    /// Polls a journal batch if none is in flight; confirms it unless held.
    fn pump_journal(&mut self, now: Instant) -> bool {
        let mut progress = false;
        if self.batch.is_none() {
            let mut ops = Vec::new();
            while let Some(op) = self.s.journal() {
                op.check();
                crate::trace!("  {} journal {:?}", role::<S>(), op.0);
                ops.push(op);
                assert!(ops.len() <= POLL_BOUND, "poll_journal keeps returning ops");
            }
            if !ops.is_empty() {
                assert!(
                    self.s.config().durable,
                    "a session without a journal emitted ops"
                );
                assert!(self.s.journal().is_none(), "a closed batch grew");
                self.batch = Some(Batch {
                    ops,
                    app: self.app.clone(),
                });
                progress = true;
            }
        } else {
            assert!(
                self.s.journal().is_none(),
                "a second batch while one is in flight"
            );
        }
        if self.batch.is_some() && !self.hold {
            self.confirm(now);
            progress = true;
        }
        progress
    }

    /// Commits (or fails, if asked to) the batch in flight.
    pub fn confirm(&mut self, now: Instant) {
        let Some(batch) = self.batch.take() else {
            return;
        };
        crate::trace!(
            "  {} batch {}",
            role::<S>(),
            if self.fail_next > 0 {
                "fails"
            } else {
                "commits"
            }
        );
        if self.fail_next > 0 {
            self.fail_next -= 1;
            self.s.failed(now);
        } else {
            for op in &batch.ops {
                self.journal.apply(&op.borrow());
            }
            self.committed_app = batch.app;
            self.s.committed(now);
        }
    }

    /// Polls everything until the session is quiet; returns what it transmitted.
    pub fn drain(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        let config = self.s.config();
        let full = config.transmit_len();
        let mut buf = vec![0u8; full];
        for _ in 0..DRAIN_ROUNDS {
            let mut progress = false;
            let mut n = 0;
            while let Some((seen, text)) = self.s.event() {
                n += 1;
                assert!(n <= POLL_BOUND, "poll_event repeats forever: {text}");
                crate::trace!("  {} event {text}", role::<S>());
                self.app.on(&seen, &text, self.s.delivered());
                progress = true;
            }
            progress |= self.pump_journal(now);
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
                    self.s.timeout(now);
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
        self.s = s;
        self.batch = None;
        self.peer_max = MIN_MAX_FRAME;
        self.restores += 1;
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
