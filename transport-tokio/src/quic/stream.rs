//! Reading and writing one QUIC stream from the endpoint task: what both a session's
//! stream and a pairing run's stream need.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};
use protocol_core::pump::{Input, Out};
use quinn_proto::{Connection, ReadError, StreamId};

/// Chunks received on the stream that the pump has not taken yet, as quinn handed them
/// over: frames are cut from them without a copy.
#[derive(Debug, Default)]
pub(crate) struct Received {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    len: usize,
    /// A frame split across chunks waits here until it has come whole (see
    /// [`Input::keeps_split_frames`]): every byte of the stream is read into here as it
    /// comes, so the stream's flow control never holds the rest of a frame back. Off
    /// once the peer finished: what is left will not grow.
    keeps_split_frames: bool,
}

impl Received {
    /// Chunks in which a split frame waits until it has come whole.
    pub(crate) fn keeping_split_frames() -> Self {
        Self {
            keeps_split_frames: true,
            ..Self::default()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// No more will come: what is left is taken as it is.
    pub(crate) fn ended(&mut self) {
        self.keeps_split_frames = false;
    }

    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }
}

impl Input for Received {
    fn bytes(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[..])
    }

    fn consume(&mut self, n: usize) {
        if let Some(front) = self.chunks.front_mut() {
            if n < front.len() {
                front.advance(n);
                self.len -= n;
            } else {
                self.len -= front.len();
                self.chunks.pop_front();
            }
        }
    }

    fn available(&self) -> usize {
        self.len
    }

    fn peek(&self, dst: &mut [u8]) -> usize {
        let mut n = 0;
        for chunk in &self.chunks {
            let take = chunk.len().min(dst.len() - n);
            dst[n..n + take].copy_from_slice(&chunk[..take]);
            n += take;
            if n == dst.len() {
                break;
            }
        }
        n
    }

    fn keeps_split_frames(&self) -> bool {
        // Each chunk keeps its whole datagram (or received batch) alive: a peer sending a
        // frame a few bytes per datagram would pin far more than the frame. Past a few
        // such chunks the frame is assembled as it comes instead, which frees them.
        self.keeps_split_frames
            && (self.chunks.len() <= FEW_CHUNKS || self.len >= self.chunks.len() * MIN_KEPT_CHUNK)
    }
}

/// Chunks kept whatever their size.
const FEW_CHUNKS: usize = 16;
/// Past that, the average chunk size below which a split frame is no longer kept.
const MIN_KEPT_CHUNK: usize = 256;

/// Moves everything the stream holds now into `into`; true when the peer finished or
/// reset its side, or the stream is gone.
pub(crate) fn read_into(quic: &mut Connection, id: StreamId, into: &mut Received) -> bool {
    let mut recv = quic.recv_stream(id);
    let Ok(mut chunks) = recv.read(true) else {
        return true;
    };
    let ended = loop {
        match chunks.next(usize::MAX) {
            // An empty chunk would read as no input while more follows.
            Ok(Some(chunk)) if chunk.bytes.is_empty() => {}
            Ok(Some(chunk)) => into.push(chunk.bytes),
            Ok(None) => break true,
            Err(ReadError::Blocked) => break false,
            Err(_) => break true,
        }
    };
    // Freed flow-control credit goes out with the connection's next transmit; every
    // revisited connection is queued for one.
    let _ = chunks.finalize();
    ended
}

/// Writes what the stream takes of `out`, telling the pump when it took less; true when
/// it took all. A stream that is gone takes nothing (its end is reported as an event).
pub(crate) fn write(quic: &mut Connection, id: StreamId, out: Out<'_>) -> bool {
    let len = out.bytes().len();
    let written = quic.send_stream(id).write(out.bytes()).unwrap_or(0);
    if written < len {
        out.sent(written);
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_chunks_are_not_kept_for_long() {
        let mut r = Received::keeping_split_frames();
        for _ in 0..FEW_CHUNKS {
            r.push(Bytes::from_static(&[0]));
        }
        assert!(r.keeps_split_frames());
        r.push(Bytes::from_static(&[0]));
        assert!(!r.keeps_split_frames());
        r.push(Bytes::from(vec![0; 100 * MIN_KEPT_CHUNK]));
        assert!(r.keeps_split_frames());
        assert_eq!(r.available(), FEW_CHUNKS + 1 + 100 * MIN_KEPT_CHUNK);
        let mut head = [9; 20];
        assert_eq!(r.peek(&mut head), 20);
        assert_eq!(head, [0; 20]);
        r.consume(1);
        assert_eq!(r.available(), FEW_CHUNKS + 100 * MIN_KEPT_CHUNK);
        r.ended();
        assert!(!r.keeps_split_frames());
        assert!(!Received::default().keeps_split_frames());
    }
}
