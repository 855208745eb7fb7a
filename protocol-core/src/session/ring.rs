//! A ring of variable-length records in caller-provided bytes.
//!
//! Records never wrap: one that does not fit before the end of the region starts again
//! at its beginning, so every record is one contiguous slice and can be decoded in
//! place. The ring is only bookkeeping; the bytes live in the session's storage and are
//! passed to every call, which lets two rings share one caller buffer.

/// Bytes of a record's header: length (u32), seq (u64), kind (u8).
pub const RECORD_HEADER: usize = 13;

/// A record as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'m> {
    pub seq: u64,
    pub kind: u8,
    pub bytes: &'m [u8],
}

/// Bookkeeping of a ring over `mem[base..base + cap]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ring {
    base: usize,
    cap: usize,
    head: usize,
    tail: usize,
    /// While wrapped, the records at the top end here and continue from 0 to `tail`.
    wrap_end: usize,
    wrapped: bool,
    count: usize,
    used: usize,
}

/// The record does not fit now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoRoom;

impl Ring {
    pub(crate) const fn new(base: usize, cap: usize) -> Self {
        Ring {
            base,
            cap,
            head: 0,
            tail: 0,
            wrap_end: 0,
            wrapped: false,
            count: 0,
            used: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held by records (headers included).
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// True if a record of `len` payload bytes could ever fit (into an empty ring).
    pub(crate) fn could_hold(&self, len: usize) -> bool {
        RECORD_HEADER.saturating_add(len) <= self.cap
    }

    /// True if a record of `len` payload bytes fits now.
    pub(crate) fn fits(&self, len: usize) -> bool {
        let need = RECORD_HEADER.saturating_add(len);
        if self.count == 0 {
            need <= self.cap
        } else if !self.wrapped {
            self.cap - self.tail >= need || self.head >= need
        } else {
            self.head - self.tail >= need
        }
    }

    pub(crate) fn clear(&mut self) {
        *self = Ring::new(self.base, self.cap);
    }

    /// Appends a record whose `len` payload bytes `fill` writes in place.
    pub(crate) fn push_with<E>(
        &mut self,
        mem: &mut [u8],
        seq: u64,
        kind: u8,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, NoRoom> {
        if !self.fits(len) {
            return Err(NoRoom);
        }
        let need = RECORD_HEADER + len;
        let Ok(len32) = u32::try_from(len) else {
            return Err(NoRoom);
        };
        let mut next = *self;
        if next.count == 0 {
            next.head = 0;
            next.tail = 0;
            next.wrapped = false;
        }
        let pos = if next.wrapped || next.cap - next.tail >= need {
            next.tail
        } else {
            next.wrap_end = next.tail;
            next.wrapped = true;
            0
        };
        next.tail = pos + need;
        next.count += 1;
        next.used += need;
        let at = self.base + pos;
        let rec = &mut mem[at..at + need];
        let (header, body) = rec.split_at_mut(RECORD_HEADER);
        if let Err(e) = fill(body) {
            return Ok(Err(e));
        }
        header[..4].copy_from_slice(&len32.to_le_bytes());
        header[4..12].copy_from_slice(&seq.to_le_bytes());
        header[12] = kind;
        *self = next;
        Ok(Ok(()))
    }

    pub(crate) fn push(
        &mut self,
        mem: &mut [u8],
        seq: u64,
        kind: u8,
        bytes: &[u8],
    ) -> Result<(), NoRoom> {
        self.push_with(mem, seq, kind, bytes.len(), |dst| {
            dst.copy_from_slice(bytes);
            Ok::<(), core::convert::Infallible>(())
        })
        .map(|_| ())
    }

    /// Where the front record starts, if any.
    pub(crate) fn head_pos(&self) -> Option<usize> {
        (self.count > 0).then_some(self.head)
    }

    /// Where the record after the one at `pos` starts (`pos` must hold a record).
    pub(crate) fn next_pos(&self, mem: &[u8], pos: usize) -> usize {
        let next = pos + RECORD_HEADER + self.read_at(mem, pos).bytes.len();
        // Only the top run of a wrapped ring ends at `wrap_end`: the bottom run ends at
        // the tail, below the head.
        if self.wrapped && next == self.wrap_end {
            0
        } else {
            next
        }
    }

    pub(crate) fn read_at<'m>(&self, mem: &'m [u8], pos: usize) -> Record<'m> {
        let at = self.base + pos;
        let header = &mem[at..at + RECORD_HEADER];
        let mut len = [0u8; 4];
        len.copy_from_slice(&header[..4]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&header[4..12]);
        let len = u32::from_le_bytes(len) as usize;
        Record {
            seq: u64::from_le_bytes(seq),
            kind: header[12],
            bytes: &mem[at + RECORD_HEADER..at + RECORD_HEADER + len],
        }
    }

    /// Where the front record's payload lies in `mem`.
    pub(crate) fn front_body(&self, mem: &[u8]) -> Option<core::ops::Range<usize>> {
        let rec = self.front(mem)?;
        let start = self.base + self.head + RECORD_HEADER;
        Some(start..start + rec.bytes.len())
    }

    pub(crate) fn front<'m>(&self, mem: &'m [u8]) -> Option<Record<'m>> {
        (self.count > 0).then(|| self.read_at(mem, self.head))
    }

    pub(crate) fn pop(&mut self, mem: &[u8]) {
        if self.count == 0 {
            return;
        }
        let size = RECORD_HEADER + self.read_at(mem, self.head).bytes.len();
        self.head += size;
        self.used -= size;
        self.count -= 1;
        if self.count == 0 {
            self.clear();
        } else if self.wrapped && self.head == self.wrap_end {
            self.head = 0;
            self.wrapped = false;
        }
    }

    #[cfg(test)]
    pub(crate) fn iter<'r, 'm>(&'r self, mem: &'m [u8]) -> Iter<'r, 'm> {
        Iter {
            ring: self,
            mem,
            pos: self.head,
            wrapped: self.wrapped,
            left: self.count,
        }
    }
}

#[cfg(test)]
pub(crate) struct Iter<'r, 'm> {
    ring: &'r Ring,
    mem: &'m [u8],
    pos: usize,
    wrapped: bool,
    left: usize,
}

#[cfg(test)]
impl<'m> Iterator for Iter<'_, 'm> {
    type Item = Record<'m>;

    fn next(&mut self) -> Option<Record<'m>> {
        if self.left == 0 {
            return None;
        }
        let rec = self.ring.read_at(self.mem, self.pos);
        self.left -= 1;
        self.pos += RECORD_HEADER + rec.bytes.len();
        if self.wrapped && self.pos == self.ring.wrap_end {
            self.pos = 0;
            self.wrapped = false;
        }
        Some(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::vec::Vec;

    proptest! {
        /// The ring behaves like a queue, never loses or corrupts a record, and refuses
        /// only when the bytes do not fit.
        #[test]
        fn behaves_like_a_queue(cap in 13usize..300, ops in proptest::collection::vec((any::<bool>(), 0usize..80), 0..200)) {
            let mut mem = std::vec![0xAAu8; cap + 20];
            let mut ring = Ring::new(7, cap);
            let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
            let mut seq = 0u64;
            for (push, len) in ops {
                if push {
                    seq += 1;
                    let bytes: Vec<u8> = (0..len).map(|i| (seq as usize + i) as u8).collect();
                    match ring.push(&mut mem, seq, (seq % 3) as u8, &bytes) {
                        Ok(()) => model.push_back((seq, bytes)),
                        Err(NoRoom) => {
                            let live: usize = model.iter().map(|(_, b)| b.len() + RECORD_HEADER).sum();
                            // Records never wrap, so up to one record's worth of room can sit
                            // unusable at each end.
                            prop_assert!(live + 2 * (RECORD_HEADER + 80) > cap, "refused with room to spare");
                            prop_assert!(!model.is_empty() || RECORD_HEADER + len > cap);
                        }
                    }
                } else {
                    let want = model.pop_front();
                    let got = ring.front(&mem).map(|r| (r.seq, r.bytes.to_vec()));
                    prop_assert_eq!(got, want);
                    ring.pop(&mem);
                }
                prop_assert_eq!(ring.len(), model.len());
                let all: Vec<(u64, Vec<u8>)> = ring.iter(&mem).map(|r| (r.seq, r.bytes.to_vec())).collect();
                prop_assert_eq!(&all, &model.iter().cloned().collect::<Vec<_>>());
                // Walking by position visits the same records.
                let mut walked = Vec::new();
                if let Some(mut pos) = ring.head_pos() {
                    for i in 0..ring.len() {
                        let r = ring.read_at(&mem, pos);
                        walked.push((r.seq, r.bytes.to_vec()));
                        if i + 1 < ring.len() {
                            pos = ring.next_pos(&mem, pos);
                        }
                    }
                }
                prop_assert_eq!(&walked, &all);
                prop_assert!(mem[..7].iter().all(|b| *b == 0xAA), "wrote below its region");
                prop_assert!(mem[7 + cap..].iter().all(|b| *b == 0xAA), "wrote above its region");
            }
        }
    }
}
