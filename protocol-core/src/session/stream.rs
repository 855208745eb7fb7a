//! The two halves of a resumable ordered stream: the sender's replay buffer and the
//! receiver's position and inbox.
//!
//! Both keep their records in a [`Ring`] over the session's storage; the storage bytes
//! are passed to every call.

use super::ring::{NoRoom, Record, Ring};
use crate::wire::{Gap, Seq};

/// What the sender does when its replay buffer has no room for a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse the new message with [`Full`](super::SessionError::Full) (backpressure).
    Reject,
    /// Drop the oldest unacknowledged messages; the receiver is told with a `Gap`.
    /// For telemetry on small devices, where the newest readings matter most.
    EvictOldest,
}

/// Result of offering a message to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Stored as `seq`; with `EvictOldest`, messages up to `evicted_through` were dropped.
    Stored {
        seq: Seq,
        evicted_through: Option<Seq>,
    },
    /// No room (and nothing may be evicted, or the message can never fit).
    Full,
}

/// What the sender transmits next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next<'m> {
    Gap(Gap),
    Data(Record<'m>),
}

/// The peer said something about our stream that cannot be true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BeyondSent;

/// Sending half: assigns seqs, keeps what is unacknowledged, replays on resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutStream {
    ring: Ring,
    /// Seq of the ring's front record (meaningful when not empty).
    first: Seq,
    /// Last seq assigned.
    last: Seq,
    /// Highest seq the peer acknowledged.
    acked: Seq,
    /// Next seq to put on the current connection.
    next_send: Seq,
    /// Highest seq ever put on a connection: a peer cannot have received more.
    high_water: Seq,
    overflow: Overflow,
    /// Where two held records lie (seq, ring position): transmission and journaling
    /// each walk the held messages in order, so each finds the next one in O(1).
    cursors: [Cursor; 2],
}

/// A held record's seq and position in the ring (seq 0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Cursor {
    seq: Seq,
    pos: usize,
}

impl OutStream {
    pub(crate) const fn new(ring: Ring, overflow: Overflow) -> Self {
        OutStream {
            ring,
            first: 1,
            last: 0,
            acked: 0,
            next_send: 1,
            high_water: 0,
            overflow,
            cursors: [Cursor { seq: 0, pos: 0 }; 2],
        }
    }

    pub(crate) fn last(&self) -> Seq {
        self.last
    }

    pub(crate) fn acked(&self) -> Seq {
        self.acked
    }

    pub(crate) fn held(&self) -> usize {
        self.ring.len()
    }

    pub(crate) fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Oldest seq still held (`last + 1` when nothing is).
    pub(crate) fn first_held(&self) -> Seq {
        if self.ring.is_empty() {
            self.last + 1
        } else {
            self.first
        }
    }

    /// True if a message of `len` encoded bytes would be accepted now.
    pub(crate) fn would_accept(&self, len: usize) -> bool {
        self.ring.fits(len) || (self.overflow == Overflow::EvictOldest && self.ring.could_hold(len))
    }

    /// Stores a message of `len` bytes written by `fill` as the next seq.
    pub(crate) fn push_with<E>(
        &mut self,
        mem: &mut [u8],
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Pushed, E> {
        if !self.would_accept(len) {
            return Ok(Pushed::Full);
        }
        let mut evicted_through = None;
        while !self.ring.fits(len) {
            // Only reachable with `EvictOldest`: `would_accept` said it can hold `len`.
            self.ring.pop(mem);
            evicted_through = Some(self.first);
            self.first += 1;
        }
        let seq = self.last + 1;
        match self.ring.push_with(mem, seq, 0, len, fill) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(NoRoom) => return Ok(Pushed::Full),
        }
        if self.ring.len() == 1 {
            self.first = seq;
        }
        self.last = seq;
        Ok(Pushed::Stored {
            seq,
            evicted_through,
        })
    }

    /// Restores a journaled message (seqs must come in order).
    pub(crate) fn restore(&mut self, mem: &mut [u8], seq: Seq, bytes: &[u8]) -> Result<(), NoRoom> {
        self.ring.push(mem, seq, 0, bytes)?;
        if self.ring.len() == 1 {
            self.first = seq;
        }
        self.last = self.last.max(seq);
        Ok(())
    }

    /// Sets positions after a restore.
    pub(crate) fn restore_positions(&mut self, last: Seq, acked: Seq) {
        self.last = self.last.max(last);
        self.acked = acked.min(self.last);
        self.next_send = self.acked + 1;
        // What went out before the restart is unknown: at most everything.
        self.high_water = self.last;
    }

    /// The peer received everything through `through`.
    pub(crate) fn ack(&mut self, mem: &[u8], through: Seq) -> Result<bool, BeyondSent> {
        if through > self.high_water {
            return Err(BeyondSent);
        }
        if through <= self.acked {
            return Ok(false);
        }
        self.acked = through;
        while let Some(front) = self.ring.front(mem) {
            if front.seq > through {
                break;
            }
            self.ring.pop(mem);
            self.first = front.seq + 1;
        }
        self.next_send = self.next_send.max(through + 1);
        Ok(true)
    }

    /// A new connection: the peer holds everything through `received`.
    pub(crate) fn resume(&mut self, mem: &[u8], received: Seq) -> Result<(), BeyondSent> {
        self.ack(mem, received)?;
        self.next_send = received + 1;
        Ok(())
    }

    /// Forgets everything: the peer's session is gone. Returns the range that was
    /// accepted but never acknowledged, if any.
    pub(crate) fn reset(&mut self) -> Option<(Seq, Seq)> {
        let lost = (self.acked < self.last).then_some((self.acked + 1, self.last));
        self.ring.clear();
        self.first = 1;
        self.last = 0;
        self.acked = 0;
        self.next_send = 1;
        self.high_water = 0;
        // Seqs start again at 1 in other places of the ring.
        self.cursors = [Cursor::default(); 2];
        lost
    }

    /// The next thing to transmit on the current connection, if any; what lies above
    /// `through` (not yet durable) waits, a gap's end included: a gap tells the peer
    /// those seqs exist, and a restart must not take them back.
    pub(crate) fn next<'m>(&mut self, mem: &'m [u8], through: Seq) -> Option<Next<'m>> {
        if self.next_send > self.last || self.next_send > through {
            return None;
        }
        let first = self.first_held();
        if self.next_send < first {
            return Some(Next::Gap(Gap {
                from: self.next_send,
                to: (first - 1).min(through),
            }));
        }
        self.get(mem, self.next_send).map(Next::Data)
    }

    /// Last seq put on the current connection.
    pub(crate) fn sent_through(&self) -> Seq {
        self.next_send - 1
    }

    /// Marks what [`next`](Self::next) returned as sent.
    pub(crate) fn advance(&mut self, through: Seq) {
        self.next_send = self.next_send.max(through + 1);
        self.high_water = self.high_water.max(through);
    }

    /// Held message `seq`. Starts from the nearest cursor at or below it (records never
    /// move while held), so reading held messages in order costs O(1) each.
    pub(crate) fn get<'m>(&mut self, mem: &'m [u8], seq: Seq) -> Option<Record<'m>> {
        if self.ring.is_empty() || seq < self.first || seq > self.last {
            return None;
        }
        let first = self.first;
        let usable = |c: &Cursor| c.seq >= first && c.seq <= seq;
        let (slot, mut at) = match self
            .cursors
            .iter()
            .enumerate()
            .filter(|(_, c)| usable(c))
            .max_by_key(|(_, c)| c.seq)
        {
            Some((i, c)) => (i, *c),
            // No cursor helps: start at the front and replace the older cursor.
            None => {
                let older = usize::from(self.cursors[1].seq < self.cursors[0].seq);
                (
                    older,
                    Cursor {
                        seq: first,
                        pos: self.ring.head_pos()?,
                    },
                )
            }
        };
        while at.seq < seq {
            at.pos = self.ring.next_pos(mem, at.pos);
            at.seq += 1;
        }
        self.cursors[slot] = at;
        Some(self.ring.read_at(mem, at.pos))
    }
}

/// Record kinds in the inbox.
pub(crate) const KIND_DATA: u8 = 0;
pub(crate) const KIND_GAP: u8 = 1;
/// Bytes of a gap record in the inbox: its end (`to`).
const GAP_RECORD: usize = 8;

/// What the receiver did with an incoming stream message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// Stored for delivery.
    Accepted,
    /// Seen before; dropped.
    Duplicate,
    /// A seq beyond the next one: something before it went missing.
    Hole { expected: Seq, got: Seq },
    /// The inbox has no room; nothing was stored.
    Full,
}

/// Receiving half: accepts the next seq, drops duplicates, holds messages until the
/// application takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InStream {
    inbox: Ring,
    /// Highest seq stored (in order).
    accepted: Seq,
    /// Highest seq handed to the application.
    delivered: Seq,
}

impl InStream {
    pub(crate) const fn new(inbox: Ring) -> Self {
        InStream {
            inbox,
            accepted: 0,
            delivered: 0,
        }
    }

    pub(crate) fn delivered(&self) -> Seq {
        self.delivered
    }

    pub(crate) fn inbox(&self) -> &Ring {
        &self.inbox
    }

    /// A new connection: whatever was stored but not delivered is dropped, since the
    /// peer replays from the delivered position (the only one that survives a restart).
    pub(crate) fn rewind(&mut self) {
        self.inbox.clear();
        self.accepted = self.delivered;
    }

    pub(crate) fn restore(&mut self, delivered: Seq) {
        self.inbox.clear();
        self.accepted = delivered;
        self.delivered = delivered;
    }

    /// True if data message `seq` of `len` bytes is the next one and the inbox has no
    /// room for it now (it would fit once the inbox is drained).
    pub(crate) fn lacks_room(&self, seq: Seq, len: usize) -> bool {
        seq == self.accepted.saturating_add(1)
            && !self.inbox.fits(len)
            && self.inbox.could_hold(len)
    }

    /// True if `gap` brings news and the inbox has no room for its record now.
    pub(crate) fn lacks_room_for_gap(&self, gap: Gap) -> bool {
        gap.from <= gap.to
            && gap.to > self.accepted
            && gap.from <= self.accepted.saturating_add(1)
            && !self.inbox.fits(GAP_RECORD)
    }

    /// A data message whose `len` body bytes `fill` writes (false: it could not).
    pub(crate) fn data_with(
        &mut self,
        mem: &mut [u8],
        seq: Seq,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> bool,
    ) -> Received {
        if seq <= self.accepted {
            return Received::Duplicate;
        }
        if seq != self.accepted + 1 {
            return Received::Hole {
                expected: self.accepted + 1,
                got: seq,
            };
        }
        let stored = self.inbox.push_with(mem, seq, KIND_DATA, len, |dst| {
            if fill(dst) { Ok(()) } else { Err(()) }
        });
        match stored {
            Ok(Ok(())) => {
                self.accepted = seq;
                Received::Accepted
            }
            Ok(Err(())) | Err(NoRoom) => Received::Full,
        }
    }

    /// Test shorthand: the same path as `data_with`, from a ready body.
    #[cfg(test)]
    pub(crate) fn data(&mut self, mem: &mut [u8], seq: Seq, body: &[u8]) -> Received {
        self.data_with(mem, seq, body.len(), |dst| {
            dst.copy_from_slice(body);
            true
        })
    }

    pub(crate) fn gap(&mut self, mem: &mut [u8], gap: Gap) -> Received {
        if gap.to < gap.from || gap.to <= self.accepted {
            return Received::Duplicate;
        }
        if gap.from > self.accepted + 1 {
            return Received::Hole {
                expected: self.accepted + 1,
                got: gap.from,
            };
        }
        // Only the part not yet seen is news.
        let from = self.accepted + 1;
        let to: [u8; GAP_RECORD] = gap.to.to_le_bytes();
        match self.inbox.push(mem, from, KIND_GAP, &to) {
            Ok(()) => {
                self.accepted = gap.to;
                Received::Accepted
            }
            Err(NoRoom) => Received::Full,
        }
    }

    pub(crate) fn front<'m>(&self, mem: &'m [u8]) -> Option<Record<'m>> {
        self.inbox.front(mem)
    }

    /// Where the front record's bytes lie in `mem`.
    pub(crate) fn front_body(&self, mem: &[u8]) -> Option<core::ops::Range<usize>> {
        self.inbox.front_body(mem)
    }

    /// The front record was handed out; `through` is the last seq it covered.
    pub(crate) fn pop_delivered(&mut self, mem: &[u8], through: Seq) {
        self.inbox.pop(mem);
        self.delivered = through;
    }

    /// The peer's session is gone: start over from nothing.
    pub(crate) fn reset(&mut self) -> Option<Seq> {
        let undelivered = (self.accepted > self.delivered).then_some(self.delivered + 1);
        self.inbox.clear();
        self.accepted = 0;
        self.delivered = 0;
        undelivered
    }
}

/// Decodes the `to` of a gap record.
pub(crate) fn gap_end(rec: &Record<'_>) -> Seq {
    let mut to = [0u8; 8];
    if let Some(bytes) = rec.bytes.get(..8) {
        to.copy_from_slice(bytes);
    }
    u64::from_le_bytes(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        /// Transmit up to this many frames; `Some(k)`: the k-th is lost on the wire.
        Send(usize, Option<usize>),
        Deliver(usize),
        Ack,
        Reconnect,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0usize..60).prop_map(Op::Push),
            3 => (1usize..6, proptest::option::weighted(0.2, 0usize..6)).prop_map(|(n, l)| Op::Send(n, l)),
            2 => (1usize..6).prop_map(Op::Deliver),
            1 => Just(Op::Ack),
            1 => Just(Op::Reconnect),
        ]
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Msg(Seq, Vec<u8>),
        Gap(Seq, Seq),
    }

    struct Pair {
        out: OutStream,
        inp: InStream,
        mem: Vec<u8>,
        /// The connection lost a frame: everything after it is refused as a hole.
        broken: bool,
        got: Vec<Got>,
    }

    impl Pair {
        fn send(&mut self, n: usize, lose: Option<usize>) {
            for k in 0..n {
                let Some(next) = self.out.next(&self.mem, Seq::MAX) else {
                    return;
                };
                let (through, frame) = match next {
                    Next::Gap(g) => (g.to, Err(g)),
                    Next::Data(r) => (r.seq, Ok((r.seq, r.bytes.to_vec()))),
                };
                self.out.advance(through);
                if lose == Some(k) || self.broken {
                    self.broken = true;
                    continue;
                }
                let got = match frame {
                    Ok((seq, bytes)) => self.inp.data(&mut self.mem, seq, &bytes),
                    Err(g) => self.inp.gap(&mut self.mem, g),
                };
                assert!(
                    matches!(got, Received::Accepted),
                    "in-order frame refused: {got:?}"
                );
            }
        }

        fn deliver(&mut self, n: usize) {
            for _ in 0..n {
                let Some(rec) = self.inp.front(&self.mem) else {
                    return;
                };
                let (item, through) = if rec.kind == KIND_GAP {
                    let to = gap_end(&rec);
                    (Got::Gap(rec.seq, to), to)
                } else {
                    (Got::Msg(rec.seq, rec.bytes.to_vec()), rec.seq)
                };
                self.got.push(item);
                self.inp.pop_delivered(&self.mem, through);
            }
        }

        fn reconnect(&mut self) {
            self.inp.rewind();
            self.out
                .resume(&self.mem, self.inp.delivered())
                .expect("resume within what was sent");
            self.broken = false;
        }
    }

    proptest! {
        /// Over a connection that loses frames and is re-established, the receiver gets
        /// every accepted message exactly once and in order, or (only when the sender
        /// evicts) inside an explicit gap; a refusal happens only when the replay
        /// buffer is truly out of room.
        #[test]
        fn exactly_once_in_order_or_explicit_gap(
            cap in 40usize..600,
            evict in any::<bool>(),
            ops in proptest::collection::vec(op(), 0..150),
        ) {
            let overflow = if evict { Overflow::EvictOldest } else { Overflow::Reject };
            let inbox = 4096;
            let mut p = Pair {
                out: OutStream::new(Ring::new(0, cap), overflow),
                inp: InStream::new(Ring::new(cap, inbox)),
                mem: std::vec![0; cap + inbox],
                broken: false,
                got: Vec::new(),
            };
            let mut accepted: Vec<(Seq, Vec<u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(len) => {
                        let seq = p.out.last() + 1;
                        let bytes: Vec<u8> = (0..len).map(|i| (seq as usize * 7 + i) as u8).collect();
                        let fits_now = p.out.ring().fits(len);
                        match p.out.push_with(&mut p.mem, len, |dst| {
                            dst.copy_from_slice(&bytes);
                            Ok::<(), ()>(())
                        }) {
                            Ok(Pushed::Stored { seq: s, evicted_through }) => {
                                prop_assert_eq!(s, seq);
                                prop_assert!(evict || evicted_through.is_none());
                                accepted.push((seq, bytes));
                            }
                            Ok(Pushed::Full) => prop_assert!(
                                !fits_now && (!evict || !p.out.ring().could_hold(len)),
                                "refused a message that fits"
                            ),
                            Err(()) => prop_assert!(false, "fill cannot fail"),
                        }
                    }
                    Op::Send(n, lose) => p.send(n, lose),
                    Op::Deliver(n) => p.deliver(n),
                    Op::Ack => {
                        let d = p.inp.delivered();
                        p.out.ack(&p.mem, d).expect("ack within what was sent");
                    }
                    Op::Reconnect => p.reconnect(),
                }
            }
            // A calm connection drains everything.
            p.reconnect();
            for _ in 0..10_000 {
                p.send(8, None);
                p.deliver(8);
                if p.out.next(&p.mem, Seq::MAX).is_none() && p.inp.front(&p.mem).is_none() {
                    break;
                }
            }
            let mut expected = 1;
            let mut it = accepted.iter().peekable();
            for item in &p.got {
                match item {
                    Got::Msg(seq, bytes) => {
                        prop_assert_eq!(*seq, expected);
                        while it.peek().is_some_and(|(s, _)| *s < *seq) {
                            it.next();
                        }
                        let sent = it.next();
                        prop_assert_eq!(sent.map(|(s, b)| (*s, b.clone())), Some((*seq, bytes.clone())));
                        expected += 1;
                    }
                    Got::Gap(from, to) => {
                        prop_assert!(evict, "gap without eviction");
                        prop_assert_eq!(*from, expected);
                        prop_assert!(to >= from);
                        expected = to + 1;
                    }
                }
            }
            prop_assert_eq!(expected, p.out.last() + 1, "not everything reached the receiver");
        }
    }
}
