//! The driver around each simulated session: a `pump::Pump` per link side, the bytes its
//! transport received (`Received`, a `pump::Input`), the buffers its process lends
//! (`Pools` over one pool per purpose, or `pump::Slots` on a microcontroller), and a
//! look at the frames the session refused (`Offered`), which the pump itself hides.

use std::collections::VecDeque;

use protocol_core::frame::{FrameError, HEADER_LEN};
use protocol_core::pump::{Input, Lend, Lender, Machine, Offer, Pump, Slots, Step, Wait};
use protocol_core::session::{
    BatchId, DaemonSession, Instant, JournalError, JournalOp, NodeSession, Session, SessionError,
    Transmit, TransmitError,
};
use protocol_core::wire::{self, Message, Seq};

use super::journal::OwnedOp;

/// Bytes one side's transport received and its pump has not taken, in the chunks the
/// reads returned. A frame the session refuses stays here, with everything after it.
#[derive(Debug, Default)]
pub struct Received {
    chunks: VecDeque<Vec<u8>>,
    at: usize,
    len: usize,
}

impl Received {
    pub fn push(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.chunks.push_back(bytes);
        }
    }

    pub fn len(&self) -> usize {
        self.len
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
        let n = n.min(front.len() - self.at);
        self.at += n;
        self.len -= n;
        if self.at == front.len() {
            self.chunks.pop_front();
            self.at = 0;
        }
    }
}

/// Buffers of one purpose, handed out and taken back.
#[derive(Debug, Default)]
pub struct Pool {
    free: Vec<Vec<u8>>,
    /// Lent and not back.
    pub out: usize,
    pub taken: u64,
    pub returned: u64,
    /// Buffers that came back without having been lent.
    pub strays: u64,
}

impl Pool {
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        self.out += 1;
        self.taken += 1;
        match self.free.pop() {
            Some(b) if b.len() >= len => b,
            _ => vec![0; len],
        }
    }

    pub fn put(&mut self, buf: Vec<u8>) {
        match self.out.checked_sub(1) {
            Some(out) => self.out = out,
            None => self.strays += 1,
        }
        self.returned += 1;
        self.free.push(buf);
    }
}

/// One server process's buffers: session storage, frame assembly, transmit.
#[derive(Debug, Default)]
pub struct Pools {
    pub storage: Pool,
    pub frame: Pool,
    pub transmit: Pool,
}

impl Pools {
    fn pool(&mut self, what: Lend) -> &mut Pool {
        match what {
            Lend::Storage => &mut self.storage,
            Lend::Frame => &mut self.frame,
            Lend::Transmit => &mut self.transmit,
        }
    }

    /// Buffers lent and not back, and buffers that came back twice.
    pub fn outstanding(&self) -> (usize, u64) {
        (
            self.storage.out + self.frame.out + self.transmit.out,
            self.storage.strays + self.frame.strays + self.transmit.strays,
        )
    }
}

impl Lender for Pools {
    type Buf = Vec<u8>;

    fn take(&mut self, what: Lend, len: usize) -> Option<Vec<u8>> {
        Some(self.pool(what).take(len))
    }

    fn put(&mut self, what: Lend, buf: Vec<u8>) {
        self.pool(what).put(buf);
    }
}

/// A node's buffers: pooled on Linux, the same static ones on a microcontroller.
#[derive(Debug)]
pub enum NodeBufs {
    Pooled(Pools),
    Static(Slots<Vec<u8>>),
}

impl Lender for NodeBufs {
    type Buf = Vec<u8>;

    fn take(&mut self, what: Lend, len: usize) -> Option<Vec<u8>> {
        match self {
            NodeBufs::Pooled(p) => p.take(what, len),
            NodeBufs::Static(s) => s.take(what, len),
        }
    }

    fn put(&mut self, what: Lend, buf: Vec<u8>) {
        match self {
            NodeBufs::Pooled(p) => p.put(what, buf),
            NodeBufs::Static(s) => s.put(what, buf),
        }
    }
}

/// What a driver reads off either role beyond `Session`.
pub trait Role: Session<Buf = Vec<u8>> + core::fmt::Debug {
    fn delivered(&self) -> Seq;
    fn last_sent(&self) -> Seq;
    fn acked(&self) -> Seq;
    fn unacked(&self) -> usize;
    fn in_flight(&self) -> bool;
}

macro_rules! role {
    ($ty:ty) => {
        impl Role for $ty {
            fn delivered(&self) -> Seq {
                <$ty>::delivered(self)
            }
            fn last_sent(&self) -> Seq {
                <$ty>::last_sent(self)
            }
            fn acked(&self) -> Seq {
                <$ty>::acked(self)
            }
            fn unacked(&self) -> usize {
                <$ty>::unacked(self)
            }
            fn in_flight(&self) -> bool {
                <$ty>::journal_in_flight(self)
            }
        }
    };
}

role!(NodeSession<Vec<u8>>);
role!(DaemonSession<Vec<u8>>);

/// Everything a confirmation could change, to show that a refused one changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    closed: Option<BatchId>,
    pending: bool,
    in_flight: bool,
    deadline: Option<Instant>,
    positions: (Seq, Seq, Seq, usize),
    storage: bool,
    debug: String,
}

pub fn look<S: Role>(s: &S) -> Look {
    Look {
        closed: s.closed_batch(),
        pending: s.journal_pending(),
        in_flight: s.in_flight(),
        deadline: s.poll_timeout(),
        positions: (s.last_sent(), s.acked(), s.delivered(), s.unacked()),
        storage: s.has_storage(),
        debug: format!("{s:?}"),
    }
}

/// Confirms (or fails) batch `named`, which is not the closed one: the session must
/// refuse with the error that says why, and change nothing.
pub fn bogus_confirmation<S: Role>(
    s: &mut S,
    now: Instant,
    named: BatchId,
    failed: bool,
) -> Result<(), String> {
    let before = look(s);
    let want = match before.closed {
        None => JournalError::NoClosedBatch,
        Some(closed) if closed == named => {
            return Err(format!("{named}, confirmed before, names a batch again"));
        }
        Some(closed) => JournalError::WrongBatch { closed, named },
    };
    let got = if failed {
        s.handle_journal_failed(now, named)
    } else {
        s.handle_journal_committed(now, named)
    };
    if got != Err(want) {
        return Err(format!(
            "a stale confirmation of {named} was answered {got:?}, not {want:?}"
        ));
    }
    let after = look(s);
    if after != before {
        return Err(format!(
            "a refused confirmation of {named} changed the session: {before:?} -> {after:?}"
        ));
    }
    Ok(())
}

/// What the pump hides: frames the session refused (backpressure), and what it made of
/// the data it took.
#[derive(Debug, Default)]
pub struct Offers {
    pub inbox_full: u64,
    pub no_storage: u64,
    /// Frames taken ahead of a refused one (acknowledgements, pings, pongs).
    pub ahead: u64,
    /// A refused frame moved what only a stored message may move.
    pub moved: Vec<String>,
    /// Record data frames taken as the next message (`next_data`).
    pub watch_data: bool,
    pub next_data: Vec<Seq>,
}

/// The session as the pump sees it, with a look at every offer.
struct Offered<'a, S> {
    s: &'a mut S,
    offers: &'a mut Offers,
}

impl<S: Role> Machine for Offered<'_, S> {
    type Buf = Vec<u8>;

    fn max_frame(&self) -> u32 {
        self.s.max_frame()
    }
    fn transmit_len(&self) -> usize {
        self.s.transmit_len()
    }
    fn offer_frame(&mut self, now: Instant, frame: &[u8]) -> Offer {
        // A refused frame's acknowledgement is applied (answers owed for want of room
        // may go out then), but nothing of its message reaches the application.
        let before = self.s.delivered();
        let next = before + 1;
        match self.s.handle_frame(now, frame) {
            Err(e @ (SessionError::InboxFull | SessionError::NoStorage)) => {
                if e == SessionError::InboxFull {
                    self.offers.inbox_full += 1;
                } else {
                    self.offers.no_storage += 1;
                }
                let after = self.s.delivered();
                if after != before {
                    self.offers.moved.push(format!(
                        "a frame refused with {e:?} moved delivery from {before} to {after}"
                    ));
                }
                Offer::Later
            }
            _ => {
                if self.offers.watch_data
                    && let Ok(Message::Data(d)) = wire::decode_message(frame)
                    && d.seq == next
                {
                    self.offers.next_data.push(d.seq);
                }
                Offer::Taken
            }
        }
    }
    fn offer_ahead(&mut self, now: Instant, frame: &[u8]) -> Offer {
        let before = self.s.delivered();
        let offer = self.s.offer_ahead(now, frame);
        if offer == Offer::Taken {
            self.offers.ahead += 1;
        }
        if self.s.delivered() != before {
            self.offers
                .moved
                .push("a frame taken ahead of a refused one delivered a message".into());
        }
        offer
    }
    fn handle_frame_error(&mut self, now: Instant, e: FrameError) {
        self.s.handle_frame_error(now, e);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.s.handle_timeout(now);
    }
    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError> {
        self.s.poll_transmit(now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.s.poll_timeout()
    }
    fn storage_len(&self) -> usize {
        self.s.storage_len()
    }
    fn has_storage(&self) -> bool {
        self.s.has_storage()
    }
    fn lend(&mut self, buf: Vec<u8>) -> Result<(), Vec<u8>> {
        self.s.lend(buf)
    }
    fn reclaim(&mut self) -> Option<Vec<u8>> {
        self.s.reclaim()
    }
    fn journal_pending(&self) -> bool {
        self.s.journal_pending()
    }
    fn poll_journal(&mut self) -> Option<JournalOp<'_>> {
        self.s.poll_journal()
    }
    fn closed_batch(&self) -> Option<BatchId> {
        self.s.closed_batch()
    }
}

/// One side of a link: its pump, and the bytes its transport received. Between links
/// a pump of its own drives events, journal batches and timers.
pub struct End {
    pub pump: Pump<Vec<u8>>,
    pub input: Received,
    /// Since when the pump has not read although bytes wait (a refused frame).
    pub held_since: Option<u64>,
}

impl End {
    pub fn new() -> Self {
        End {
            pump: Pump::new(),
            input: Received::default(),
            held_since: None,
        }
    }

    /// The pump waits: notes when it starts holding received bytes back, and returns
    /// for how long it held them when it reads again.
    pub fn waits(&mut self, now: u64, w: &Wait) -> Option<u64> {
        if !w.read && self.input.len() > 0 {
            self.held_since.get_or_insert(now);
            None
        } else {
            self.held_since.take().map(|since| now - since)
        }
    }
}

/// What one `Pump::poll` asked of the driver, owned, so the world can act on it.
#[derive(Debug)]
pub enum Did {
    /// The application's turn.
    Events,
    /// A batch staged: its id and ops.
    Journal(Option<BatchId>, Vec<OwnedOp>),
    /// Bytes to write; with `close`, the last ones.
    Out {
        bytes: Vec<u8>,
        close: bool,
    },
    Wait(Wait),
}

pub fn poll<S: Role, L: Lender<Buf = Vec<u8>>>(
    now: Instant,
    end: &mut End,
    s: &mut S,
    lender: &mut L,
    offers: &mut Offers,
) -> Did {
    let mut m = Offered { s, offers };
    match end.pump.poll(now, &mut m, lender, &mut end.input) {
        Step::Events(_) => Did::Events,
        Step::Journal(batch) => {
            let mut ops = Vec::new();
            let id = batch.stage(|op| ops.push(OwnedOp::from(&op)));
            Did::Journal(id, ops)
        }
        Step::Transmit(out) => Did::Out {
            bytes: out.bytes().to_vec(),
            close: false,
        },
        Step::Close(out) => Did::Out {
            bytes: out.bytes().to_vec(),
            close: true,
        },
        Step::Wait(w) => Did::Wait(w),
    }
}

/// Cuts what the pump wrote into frames (prefix included) by their length prefixes.
pub fn split_frames(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let Some(prefix) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(format!("{} bytes after the last whole frame", bytes.len()));
        };
        let len = HEADER_LEN + u32::from_be_bytes(*prefix) as usize;
        if len > bytes.len() {
            return Err(format!(
                "a frame of {len} bytes cut off at {} bytes",
                bytes.len()
            ));
        }
        frames.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    Ok(frames)
}
