//! Bytes received and not yet taken. The pump takes what it can; what a refused frame
//! covers stays for the next poll.

/// Received bytes, in order, that the pump takes from the front.
pub trait Input {
    /// The next bytes not yet taken (one contiguous part; more may follow once it is
    /// taken). Empty when there is nothing.
    fn bytes(&self) -> &[u8];
    /// The first `n` bytes of [`bytes`](Self::bytes) were taken.
    fn consume(&mut self, n: usize);

    /// Bytes not yet taken in every part, [`bytes`](Self::bytes) first.
    fn available(&self) -> usize {
        self.bytes().len()
    }

    /// Copies the first bytes not yet taken, across parts, into `dst`; returns how many.
    fn peek(&self, dst: &mut [u8]) -> usize {
        let front = self.bytes();
        let n = front.len().min(dst.len());
        dst[..n].copy_from_slice(&front[..n]);
        n
    }

    /// True when bytes left untaken stay, and the transport keeps appending after them
    /// up to at least a whole frame: the pump then leaves a frame split across parts
    /// here until it has come whole and assembles it at once, instead of borrowing a
    /// frame buffer for as long as the frame takes to arrive. False (the default) for
    /// an input of bounded room, such as a [`ReadBuf`] smaller than a frame, and once
    /// no more will come.
    fn keeps_split_frames(&self) -> bool {
        false
    }
}

impl Input for &[u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn consume(&mut self, n: usize) {
        *self = self.get(n..).unwrap_or_default();
    }
}

/// A read buffer in caller memory: the transport reads into [`space`](Self::space), the
/// pump takes from the front, and what it has not taken waits there.
#[derive(Debug)]
pub struct ReadBuf<B> {
    buf: B,
    start: usize,
    end: usize,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> ReadBuf<B> {
    pub fn new(buf: B) -> Self {
        ReadBuf {
            buf,
            start: 0,
            end: 0,
        }
    }

    /// Where to read into: everything after the bytes waiting (moved to the front
    /// first). Empty only when waiting bytes fill the buffer.
    pub fn space(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.as_mut().copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf.as_mut()[self.end..]
    }

    /// `n` bytes were read into [`space`](Self::space).
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.as_ref().len());
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Input for ReadBuf<B> {
    fn bytes(&self) -> &[u8] {
        &self.buf.as_ref()[self.start..self.end]
    }
    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}
