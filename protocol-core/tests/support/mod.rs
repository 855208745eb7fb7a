//! Drives sessions in tests the way a driver does: events, journal batches committed
//! to an in-memory journal, frames out; and pipes two sessions together.
#![allow(dead_code)]

use protocol_core::frame::HEADER_LEN;
use protocol_core::session::{
    DaemonSession, Instant, JournalOp, MemJournal, NodeSession, OwnedDaemonEvent, OwnedNodeEvent,
    SessionError, Transmit, TransmitError,
};

/// What a test needs of either role.
pub trait Role {
    type Event: core::fmt::Debug + Clone + PartialEq;
    fn frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), SessionError>;
    fn connected(&mut self, now: Instant);
    fn disconnected(&mut self, now: Instant);
    fn timeout(&mut self, now: Instant);
    fn transmit(&mut self, now: Instant, buf: &mut [u8])
    -> Result<Option<Transmit>, TransmitError>;
    fn event(&mut self) -> Option<Self::Event>;
    /// Applies the next batch to `journal` (or drops it when `fail`); false if none.
    fn journal_batch(&mut self, now: Instant, journal: &mut MemJournal, fail: bool) -> bool;
    fn deadline(&self) -> Option<Instant>;
}

macro_rules! role {
    ($ty:ty, $ev:ty) => {
        impl Role for $ty {
            type Event = $ev;
            fn frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), SessionError> {
                self.handle_frame(now, frame)
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
            fn transmit(
                &mut self,
                now: Instant,
                buf: &mut [u8],
            ) -> Result<Option<Transmit>, TransmitError> {
                self.poll_transmit(now, buf)
            }
            fn event(&mut self) -> Option<$ev> {
                self.poll_event().map(Into::into)
            }
            fn journal_batch(
                &mut self,
                now: Instant,
                journal: &mut MemJournal,
                fail: bool,
            ) -> bool {
                let mut ops: Vec<JournalOpOwned> = Vec::new();
                while let Some(op) = self.poll_journal() {
                    ops.push(JournalOpOwned::from(&op));
                }
                if ops.is_empty() {
                    return false;
                }
                let batch = self.closed_batch().expect("the batch closed");
                if fail {
                    self.handle_journal_failed(now, batch)
                        .expect("names the batch");
                } else {
                    for op in &ops {
                        journal.apply(&op.borrow());
                    }
                    self.handle_journal_committed(now, batch)
                        .expect("names the batch");
                }
                true
            }
            fn deadline(&self) -> Option<Instant> {
                self.poll_timeout()
            }
        }
    };
}

pub type Node = NodeSession<Vec<u8>>;
pub type Daemon = DaemonSession<Vec<u8>>;
role!(Node, OwnedNodeEvent);
role!(Daemon, OwnedDaemonEvent);

/// A journal op copied out of the session.
#[derive(Debug, Clone)]
pub struct JournalOpOwned(pub JournalOp<'static>, pub Vec<u8>);

impl JournalOpOwned {
    pub fn from(op: &JournalOp<'_>) -> Self {
        match *op {
            JournalOp::Append { seq, body } => {
                JournalOpOwned(JournalOp::Append { seq, body: &[] }, body.to_vec())
            }
            JournalOp::Clear => JournalOpOwned(JournalOp::Clear, Vec::new()),
            JournalOp::Trim { through } => JournalOpOwned(JournalOp::Trim { through }, Vec::new()),
            JournalOp::PutCall(r) => JournalOpOwned(JournalOp::PutCall(r), Vec::new()),
            JournalOp::RemoveCall(id) => JournalOpOwned(JournalOp::RemoveCall(id), Vec::new()),
            JournalOp::PutSeen { slot, call } => {
                JournalOpOwned(JournalOp::PutSeen { slot, call }, Vec::new())
            }
            JournalOp::Meta(m) => JournalOpOwned(JournalOp::Meta(m), Vec::new()),
        }
    }

    pub fn borrow(&self) -> JournalOp<'_> {
        match self.0 {
            JournalOp::Append { seq, .. } => JournalOp::Append { seq, body: &self.1 },
            other => other,
        }
    }
}

/// One side of a test: the session, its journal, and what came out of it.
#[derive(Debug)]
pub struct Peer<S: Role> {
    pub s: S,
    pub journal: MemJournal,
    /// Batches committed at once (else they wait for `commit`).
    pub auto_commit: bool,
    /// The next this many batches fail.
    pub fail_batches: u32,
    pub events: Vec<S::Event>,
    pub closed: bool,
    /// Frames the inbox could not take yet.
    pub backlog: Vec<Vec<u8>>,
}

/// Everything one drain produced.
#[derive(Debug, Default)]
pub struct Drained<E> {
    /// Frame payloads (prefix stripped).
    pub frames: Vec<Vec<u8>>,
    pub events: Vec<E>,
    pub closed: bool,
}

impl<S: Role> Peer<S> {
    pub fn new(s: S) -> Self {
        Peer {
            s,
            journal: MemJournal::new(),
            auto_commit: true,
            fail_batches: 0,
            events: Vec::new(),
            closed: false,
            backlog: Vec::new(),
        }
    }

    /// Commits (or fails) the journal batches; true if there was one.
    pub fn commit(&mut self, now: u64) -> bool {
        let fail = self.fail_batches > 0;
        let did = self
            .s
            .journal_batch(Instant::from_millis(now), &mut self.journal, fail);
        if did && fail {
            self.fail_batches -= 1;
        }
        did
    }

    /// Polls everything until the session is quiet.
    pub fn drain(&mut self, now: u64) -> Drained<S::Event> {
        let now_i = Instant::from_millis(now);
        let mut d = Drained {
            frames: Vec::new(),
            events: Vec::new(),
            closed: false,
        };
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..10_000 {
            let mut progress = false;
            while let Some(e) = self.s.event() {
                d.events.push(e);
                progress = true;
            }
            if self.auto_commit && self.commit(now) {
                progress = true;
            }
            if self.offer(now) {
                progress = true;
            }
            loop {
                match self.s.transmit(now_i, &mut buf) {
                    Ok(Some(Transmit::Frame(n))) => {
                        assert!(n >= HEADER_LEN);
                        d.frames.push(buf[HEADER_LEN..n].to_vec());
                        progress = true;
                    }
                    Ok(Some(Transmit::Close)) => {
                        d.closed = true;
                        progress = true;
                    }
                    Ok(None) => break,
                    Err(e) => panic!("transmit: {e}"),
                }
            }
            if !progress {
                break;
            }
        }
        self.events.extend(d.events.iter().cloned());
        self.closed |= d.closed;
        d
    }

    /// Offers frames in order; one the inbox cannot take yet waits (with those after
    /// it) for the next drain, as a driver holds it back.
    pub fn feed(&mut self, now: u64, frames: &[Vec<u8>]) {
        self.backlog.extend(frames.iter().cloned());
        self.offer(now);
    }

    /// Offers the frames waiting; true if one was taken.
    fn offer(&mut self, now: u64) -> bool {
        let mut took = false;
        while let Some(f) = self.backlog.first() {
            match self.s.frame(Instant::from_millis(now), f) {
                Err(SessionError::InboxFull) => break,
                r => r.expect("storage is lent"),
            }
            self.backlog.remove(0);
            took = true;
        }
        took
    }

    pub fn take_events(&mut self) -> Vec<S::Event> {
        core::mem::take(&mut self.events)
    }
}

/// Pipes frames both ways until both sides are quiet.
pub fn pump<A: Role, B: Role>(a: &mut Peer<A>, b: &mut Peer<B>, now: u64) {
    for _ in 0..1000 {
        let da = a.drain(now);
        let db = b.drain(now);
        if da.frames.is_empty() && db.frames.is_empty() {
            return;
        }
        b.feed(now, &da.frames);
        a.feed(now, &db.frames);
    }
    panic!("pump did not settle");
}

/// Connects both sides and runs the hello exchange.
pub fn connect<A: Role, B: Role>(a: &mut Peer<A>, b: &mut Peer<B>, now: u64) {
    a.s.connected(Instant::from_millis(now));
    b.s.connected(Instant::from_millis(now));
    pump(a, b, now);
}

/// Runs timers at `now` on both sides, then pumps.
pub fn tick<A: Role, B: Role>(a: &mut Peer<A>, b: &mut Peer<B>, now: u64) {
    a.s.timeout(Instant::from_millis(now));
    b.s.timeout(Instant::from_millis(now));
    pump(a, b, now);
}
