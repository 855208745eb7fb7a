//! The pump: the one drive order every driver uses, over any transport.
//!
//! A driver keeps its I/O, its timers and its store; the pump keeps the order between
//! them and the state machine ([`Machine`]: a session of either role, or a pairing run):
//! frames are cut from the bytes received and offered one at a time, storage is lent
//! before the machine needs it and taken back when it holds nothing, the application
//! takes its events after every input, journal batches are staged and named, frames are
//! batched into the transmit buffer, and a frame the machine cannot take yet
//! (backpressure) stays unconsumed until it can.
//!
//! ```text
//! loop {
//!     match pump.poll(now, &mut session, &mut lender, &mut input) {
//!         Step::Events(s) => app.handle(s),           // poll_event until None; commands
//!         Step::Journal(b) => store.stage(b),          // b.stage(..) gives the BatchId
//!         Step::Transmit(out) => io.write(out.bytes()),
//!         Step::Close(out) => { io.write(out.bytes()); io.close(); break }
//!         Step::Wait(w) => /* input if w.read, w.deadline, a command, a confirmation */,
//!     }
//! }
//! ```
//!
//! Every step borrows the pump and the machine, so nothing else happens until it is
//! done; each is `#[must_use]`. `SANS_IO.md` ("The pump") states the order and the
//! backpressure rule.

mod input;
mod lender;
mod machine;

pub use input::{Input, ReadBuf};
#[cfg(feature = "alloc")]
pub use lender::Alloc;
pub use lender::{Lend, Lender, Slots};
pub use machine::{Machine, Offer};

use crate::frame::{FrameDecoder, FrameError};
use crate::session::{BatchId, JournalOp, Transmit, TransmitError};
use crate::time::Instant;

/// The next thing a driver does. Borrows the pump and the machine until it is done.
#[must_use = "each step is a thing to do before the next poll"]
pub enum Step<'a, M: Machine> {
    /// The application's turn: take every event (`poll_event` until `None`) and give
    /// commands (`call`, `send_event`, ...). Storage is lent.
    Events(&'a mut M),
    /// A journal batch to write: [`Batch::stage`] hands over its ops and names it.
    Journal(Batch<'a, M>),
    /// Frames to write to the transport.
    Transmit(Out<'a>),
    /// The last frames to write; then close the transport.
    Close(Out<'a>),
    /// Nothing to do until one of these, then poll again.
    Wait(Wait),
}

impl<M: Machine> core::fmt::Debug for Step<'_, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Step::Events(_) => f.write_str("Events"),
            Step::Journal(_) => f.write_str("Journal"),
            Step::Transmit(o) => write!(f, "Transmit({} bytes)", o.bytes.len()),
            Step::Close(o) => write!(f, "Close({} bytes)", o.bytes.len()),
            Step::Wait(w) => write!(f, "{w:?}"),
        }
    }
}

/// What a [`Step::Wait`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Call the machine's `handle_timeout` at this instant.
    pub deadline: Option<Instant>,
    /// The pump takes input now. False while stream data waits behind a frame the
    /// machine refused (backpressure: leave the transport's data where it is), after
    /// the close or a framing failure, and while the lender has no buffer.
    pub read: bool,
    /// A frame the machine refused waits in the pump (it takes only acknowledgements,
    /// pings and pongs until the machine takes it).
    pub held: bool,
    /// Frames wait for the transport to take them: call [`Pump::writable`] when it can.
    pub write_blocked: bool,
}

/// Bytes for the transport: whole frames, in order.
#[must_use = "write these bytes whole, or say with `sent` how many were written"]
pub struct Out<'a> {
    bytes: &'a [u8],
    report: &'a mut Option<usize>,
}

impl core::fmt::Debug for Out<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Out({} bytes)", self.bytes.len())
    }
}

impl Out<'_> {
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }

    /// Only the first `n` bytes were written (the transport took no more): the rest is
    /// offered again after [`Pump::writable`]. Without this, the next poll takes every
    /// byte as written.
    pub fn sent(self, n: usize) {
        *self.report = Some(n.min(self.bytes.len()));
    }
}

/// A journal batch to write.
#[must_use = "stage the batch: `stage` hands over its ops and gives the id to confirm"]
pub struct Batch<'a, M> {
    m: &'a mut M,
    awaiting: &'a mut Option<BatchId>,
}

impl<M> core::fmt::Debug for Batch<'_, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Batch")
    }
}

impl<M: Machine> Batch<'_, M> {
    /// Hands every op of the batch to `stage`, in order, and closes the batch. Returns
    /// the id its confirmation names (`handle_journal_committed` or
    /// `handle_journal_failed` on the machine); `None` if there was nothing to write.
    #[must_use = "the batch waits until a confirmation names this id"]
    pub fn stage(self, mut stage: impl FnMut(JournalOp<'_>)) -> Option<BatchId> {
        while let Some(op) = self.m.poll_journal() {
            stage(op);
        }
        let id = self.m.closed_batch();
        *self.awaiting = id;
        id
    }

    /// [`stage`](Self::stage) into owned ops, for a store that commits away from the
    /// machine.
    #[cfg(feature = "alloc")]
    #[must_use = "the batch waits until a confirmation names this id"]
    pub fn into_owned(self) -> Option<(BatchId, alloc::vec::Vec<crate::session::OwnedJournalOp>)> {
        let mut ops = alloc::vec::Vec::new();
        let id = self.stage(|op| ops.push((&op).into()))?;
        Some((id, ops))
    }
}

/// Frames and bytes that went through a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
}

/// What offering the next frame did.
enum Fed {
    /// No frame: the input is used up.
    Nothing,
    Taken,
    /// The machine cannot take it yet; it stays unconsumed.
    Later,
    /// No buffer to assemble a frame in.
    Starved,
}

/// One connection's drive order; see the [module documentation](self). Build one per
/// connection and [`release`](Pump::release) it when the connection is over.
pub struct Pump<B> {
    decoder: Option<FrameDecoder<B>>,
    tx: Option<B>,
    /// Bytes of `tx` holding frames, and how many of them the transport took.
    filled: usize,
    written: usize,
    /// An `Out` was handed out; what it reported, if anything.
    handed: bool,
    reported: Option<usize>,
    /// The transport took only part of the last `Out`.
    blocked: bool,
    /// The machine asked to close; the bytes in `tx` are the last.
    closing: bool,
    closed: bool,
    /// A frame the machine refused waits; it was offered again this cycle.
    held: bool,
    held_tried: bool,
    /// While a frame is held: more input could bring a frame to take ahead of it.
    ahead_open: bool,
    starved: bool,
    /// The decoder failed: the stream is out of step, input is dropped.
    failed: bool,
    events_due: bool,
    /// The batch staged last, until its confirmation reached the machine.
    awaiting: Option<BatchId>,
    counts: Counts,
}

impl<B> core::fmt::Debug for Pump<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pump")
            .field("pending_out", &(self.filled - self.written))
            .field("blocked", &self.blocked)
            .field("held", &self.held)
            .field("closed", &self.closed)
            .field("awaiting", &self.awaiting)
            .finish_non_exhaustive()
    }
}

impl<B> Default for Pump<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> Pump<B> {
    /// A pump for a new connection. Its first step is [`Step::Events`].
    pub const fn new() -> Self {
        Pump {
            decoder: None,
            tx: None,
            filled: 0,
            written: 0,
            handed: false,
            reported: None,
            blocked: false,
            closing: false,
            closed: false,
            held: false,
            held_tried: false,
            ahead_open: false,
            starved: false,
            failed: false,
            events_due: true,
            awaiting: None,
            counts: Counts {
                frames_in: 0,
                bytes_in: 0,
                frames_out: 0,
                bytes_out: 0,
            },
        }
    }

    /// The transport can take bytes again (after a partial write).
    pub fn writable(&mut self) {
        self.blocked = false;
    }

    /// True once the close was handed over whole.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Frames and bytes since the last call (for a driver's statistics).
    pub fn take_counts(&mut self) -> Counts {
        core::mem::take(&mut self.counts)
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Pump<B> {
    /// The next step; see [`Step`]. `input` holds the bytes received and not yet taken:
    /// the pump takes whole frames from its front as the machine accepts them.
    pub fn poll<'a, M, L, I>(
        &'a mut self,
        now: Instant,
        m: &'a mut M,
        lender: &mut L,
        input: &mut I,
    ) -> Step<'a, M>
    where
        M: Machine<Buf = B>,
        L: Lender<Buf = B>,
        I: Input + ?Sized,
    {
        self.settle_out();
        if let Some(id) = self.awaiting
            && m.closed_batch() != Some(id)
        {
            // Confirmed: what waited for it (a call, an ack, a refused frame) may go.
            self.awaiting = None;
            self.events_due = true;
            self.held_tried = false;
        }
        loop {
            if self.events_due {
                self.events_due = false;
                lend_storage(m, lender);
                return Step::Events(m);
            }
            if self.awaiting.is_none() && m.journal_pending() {
                return Step::Journal(Batch {
                    m,
                    awaiting: &mut self.awaiting,
                });
            }
            if self.held && self.held_tried && self.live_input() {
                // The refused frame may wait for the peer's acknowledgement, which
                // can only come after it: take what has no place in the stream's order.
                if self.take_ahead(now, m, input) {
                    self.events_due = true;
                    self.held_tried = false;
                    continue;
                }
            } else if self.may_take_input() {
                match self.next_frame(now, m, lender, input) {
                    Fed::Taken => {
                        self.held = false;
                        self.events_due = true;
                        continue;
                    }
                    Fed::Later if !self.held => {
                        // The application may free the inbox: its turn, then once more.
                        self.held = true;
                        self.held_tried = false;
                        self.events_due = true;
                        continue;
                    }
                    Fed::Later => self.held_tried = true,
                    Fed::Starved => self.starved = true,
                    Fed::Nothing => {}
                }
            }
            break;
        }
        match self.fill(now, m, lender) {
            Filled::Frames => {
                self.handed = true;
                return Step::Transmit(self.out());
            }
            Filled::Close => {
                self.handed = true;
                return Step::Close(self.out());
            }
            Filled::Nothing => {}
        }
        let read = self.live_input() && !self.starved && (!self.held || self.ahead_open);
        self.rest(m, lender);
        Step::Wait(Wait {
            deadline: m.poll_timeout(),
            read,
            held: self.held,
            write_blocked: self.blocked,
        })
    }

    /// Lends the machine its storage now, for a command given between polls (one that
    /// arrived while the pump waited) rather than in [`Step::Events`]. The next poll
    /// takes it back once the machine holds nothing.
    pub fn lend<M, L>(&mut self, m: &mut M, lender: &mut L)
    where
        M: Machine<Buf = B>,
        L: Lender<Buf = B>,
    {
        lend_storage(m, lender);
        self.events_due = true;
    }

    /// Gives the pump's buffers back to the lender, and the machine's storage if it
    /// holds no data. Call when the connection is over.
    pub fn release<M, L>(&mut self, m: &mut M, lender: &mut L)
    where
        M: Machine<Buf = B>,
        L: Lender<Buf = B>,
    {
        if let Some(buf) = self.decoder.take().and_then(FrameDecoder::into_buffer) {
            lender.put(Lend::Frame, buf);
        }
        if let Some(tx) = self.tx.take() {
            lender.put(Lend::Transmit, tx);
        }
        self.filled = 0;
        self.written = 0;
        if let Some(buf) = m.reclaim() {
            lender.put(Lend::Storage, buf);
        }
    }

    fn may_take_input(&self) -> bool {
        self.live_input() && !(self.held && self.held_tried)
    }

    /// Input is taken at all: not after the close or a framing failure.
    fn live_input(&self) -> bool {
        !(self.closed || self.closing || self.failed)
    }

    /// Offers the whole frames behind a refused one, each only if it has no place in
    /// the stream's order ([`Machine::offer_ahead`]). True if one was taken. Leaves
    /// `ahead_open` set when more input could bring another such frame.
    fn take_ahead<M, I>(&mut self, now: Instant, m: &mut M, input: &mut I) -> bool
    where
        M: Machine<Buf = B>,
        I: Input + ?Sized,
    {
        let mut took = false;
        loop {
            let (n, offer) = match crate::frame::whole_frame(input.bytes(), m.max_frame()) {
                Ok(Some((frame, n))) => (n, m.offer_ahead(now, frame)),
                Ok(None) => {
                    self.ahead_open = true;
                    return took;
                }
                // Left in place: the error is the stream's, in its turn.
                Err(_) => break,
            };
            if offer == Offer::Later {
                break;
            }
            input.consume(n);
            self.counts.frames_in += 1;
            self.counts.bytes_in += (n - crate::frame::HEADER_LEN) as u64;
            took = true;
        }
        self.ahead_open = false;
        took
    }

    /// What the transport did with the last `Out`: unreported means all of it.
    fn settle_out(&mut self) {
        if core::mem::take(&mut self.handed) {
            let pending = self.filled - self.written;
            let n = self.reported.take().unwrap_or(pending).min(pending);
            self.written += n;
            self.blocked = self.written < self.filled;
        }
        if self.written == self.filled {
            self.filled = 0;
            self.written = 0;
            if self.closing {
                self.closing = false;
                self.closed = true;
            }
        }
    }

    fn out(&mut self) -> Out<'_> {
        let bytes = match &self.tx {
            Some(tx) => &tx.as_ref()[self.written..self.filled],
            None => &[],
        };
        Out {
            bytes,
            report: &mut self.reported,
        }
    }

    /// Cuts the next frame from `input` and offers it to the machine.
    fn next_frame<M, L, I>(&mut self, now: Instant, m: &mut M, lender: &mut L, input: &mut I) -> Fed
    where
        M: Machine<Buf = B>,
        L: Lender<Buf = B>,
        I: Input + ?Sized,
    {
        loop {
            // A refused frame assembled in the decoder comes back without input.
            if input.bytes().is_empty() && !self.held {
                return Fed::Nothing;
            }
            let dec = self
                .decoder
                .get_or_insert_with(|| FrameDecoder::without_buffer(m.max_frame()));
            if !self.held && dec.buffered() == 0 && input.keeps_split_frames() {
                // A frame that has not come whole stays in the input: many connections
                // each in the middle of a frame then hold no frame buffer each.
                let max = dec.max_frame();
                if let Ok(None) = crate::frame::whole_frame(input.bytes(), max) {
                    let mut prefix = [0; crate::frame::HEADER_LEN];
                    if input.peek(&mut prefix) < prefix.len() {
                        return Fed::Nothing;
                    }
                    let len = u32::from_be_bytes(prefix);
                    // An oversize length goes on to the decoder, which fails it.
                    if len <= max && input.available() < prefix.len() + len as usize {
                        return Fed::Nothing;
                    }
                }
            }
            if let Some(len) = dec.needs_buffer() {
                // The prefix is read and within the limit: a buffer of this frame's
                // length, not of the largest one allowed.
                if let Some(old) = dec.take_buffer() {
                    lender.put(Lend::Frame, old);
                }
                let Some(buf) = lender.take(Lend::Frame, len) else {
                    return Fed::Starved;
                };
                if let Err(buf) = dec.provide(buf) {
                    lender.put(Lend::Frame, buf);
                    return Fed::Starved;
                }
                if dec.needs_buffer().is_some() {
                    // The lender broke its word: the frame cannot be assembled.
                    let available = dec.take_buffer().map_or(0, |b| {
                        let n = b.as_ref().len();
                        lender.put(Lend::Frame, b);
                        n
                    });
                    m.handle_frame_error(
                        now,
                        FrameError::BufferTooSmall {
                            needed: len,
                            available,
                        },
                    );
                    self.failed = true;
                    drop_all(input);
                    return Fed::Taken;
                }
            }
            let (consumed, offered) = match dec.decode(input.bytes()) {
                Err(e) => {
                    m.handle_frame_error(now, e);
                    self.failed = true;
                    drop_all(input);
                    return Fed::Taken;
                }
                Ok(p) => match p.frame {
                    None => (p.consumed, None),
                    Some(frame) => {
                        lend_storage(m, lender);
                        (p.consumed, Some((m.offer_frame(now, frame), frame.len())))
                    }
                },
            };
            match offered {
                None if consumed == 0 && dec.needs_buffer().is_none() => return Fed::Nothing,
                None => input.consume(consumed),
                Some((Offer::Taken, len)) => {
                    input.consume(consumed);
                    self.counts.frames_in += 1;
                    self.counts.bytes_in += len as u64;
                    return Fed::Taken;
                }
                Some((Offer::Later, len)) => {
                    // Kept in the decoder, so what follows it can be looked at. A frame
                    // lent out of the input needs a buffer of its length for that.
                    if !dec.has_room(len) {
                        if let Some(old) = dec.take_buffer() {
                            lender.put(Lend::Frame, old);
                        }
                        let Some(buf) = lender.take(Lend::Frame, len) else {
                            // Left in the input, untaken: offered again later.
                            return Fed::Starved;
                        };
                        if let Err(buf) = dec.provide(buf) {
                            lender.put(Lend::Frame, buf);
                        }
                    }
                    if !dec.unread(input.bytes()) {
                        return Fed::Starved;
                    }
                    input.consume(consumed);
                    return Fed::Later;
                }
            }
        }
    }

    /// Writes the machine's frames into the transmit buffer, unless frames wait there.
    fn fill<M, L>(&mut self, now: Instant, m: &mut M, lender: &mut L) -> Filled
    where
        M: Machine<Buf = B>,
        L: Lender<Buf = B>,
    {
        if self.closed || self.blocked {
            return Filled::Nothing;
        }
        if self.filled > self.written {
            return if self.closing {
                Filled::Close
            } else {
                Filled::Frames
            };
        }
        if self.tx.is_none() {
            self.tx = lender.take(Lend::Transmit, m.transmit_len().min(TRANSMIT_BATCH));
        }
        let mut filled = 0;
        let mut grown = false;
        while let Some(tx) = self.tx.as_mut() {
            let tx = tx.as_mut();
            let room = tx.len();
            match m.poll_transmit(now, &mut tx[filled..]) {
                Ok(Some(Transmit::Frame(n))) => {
                    filled += n;
                    self.counts.frames_out += 1;
                    self.counts.bytes_out += n as u64;
                }
                Ok(Some(Transmit::Close)) => {
                    self.closing = true;
                    break;
                }
                // A frame longer than the batch: a buffer of its own length (never more
                // than `transmit_len`, which holds any frame).
                Err(TransmitError::BufferTooSmall { needed })
                    if filled == 0 && !grown && needed > room && needed <= m.transmit_len() =>
                {
                    grown = true;
                    if let Some(old) = self.tx.take() {
                        lender.put(Lend::Transmit, old);
                    }
                    self.tx = lender.take(Lend::Transmit, needed);
                }
                // Full: these go first, the next frame after them.
                Ok(None) | Err(TransmitError::BufferTooSmall { .. }) => break,
            }
        }
        self.filled = filled;
        self.written = 0;
        if self.closing {
            Filled::Close
        } else if filled > 0 {
            Filled::Frames
        } else {
            Filled::Nothing
        }
    }

    /// Before waiting: buffers nobody needs go back, and the next cycle starts with the
    /// application's turn (a command, a timer or a confirmation may come first).
    fn rest<M, L>(&mut self, m: &mut M, lender: &mut L)
    where
        M: Machine<Buf = B>,
        L: Lender<Buf = B>,
    {
        if let Some(buf) = m.reclaim() {
            lender.put(Lend::Storage, buf);
        }
        // Also while a split frame's body is still due and none of it has come: a peer
        // that sends a prefix and stalls pins no buffer.
        if let Some(buf) = self.decoder.as_mut().and_then(FrameDecoder::take_buffer) {
            lender.put(Lend::Frame, buf);
        }
        if self.filled == self.written
            && let Some(tx) = self.tx.take()
        {
            lender.put(Lend::Transmit, tx);
        }
        self.events_due = true;
        self.held_tried = false;
        self.starved = false;
    }
}

/// Bytes of frames batched into one transmit buffer (a frame longer than this gets a
/// buffer of its own length): a connection sending acknowledgements and small messages
/// borrows a small buffer, not one for the largest frame.
const TRANSMIT_BATCH: usize = 64 * 1024;

enum Filled {
    Nothing,
    Frames,
    Close,
}

fn lend_storage<M: Machine, L: Lender<Buf = M::Buf>>(m: &mut M, lender: &mut L) {
    let len = m.storage_len();
    if len > 0
        && !m.has_storage()
        && let Some(buf) = lender.take(Lend::Storage, len)
        && let Err(buf) = m.lend(buf)
    {
        lender.put(Lend::Storage, buf);
    }
}

fn drop_all<I: Input + ?Sized>(input: &mut I) {
    loop {
        let n = input.bytes().len();
        if n == 0 {
            return;
        }
        input.consume(n);
    }
}
