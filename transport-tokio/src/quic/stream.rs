//! Reading and writing one QUIC stream from the endpoint task: what both a session's
//! stream and a pairing run's stream need.

use bytes::Bytes;
use quinn_proto::{Connection, ReadError, StreamId};

/// What a read of the stream found.
pub(crate) struct Read {
    pub(crate) chunks: Vec<Bytes>,
    /// The peer finished or reset its side.
    pub(crate) ended: bool,
}

/// Takes everything the stream holds now; `None` if the stream is gone.
pub(crate) fn read_all(quic: &mut Connection, id: StreamId) -> Option<Read> {
    let mut recv = quic.recv_stream(id);
    let mut chunks = recv.read(true).ok()?;
    let mut got = Vec::new();
    let mut ended = false;
    loop {
        match chunks.next(usize::MAX) {
            Ok(Some(chunk)) => got.push(chunk.bytes),
            Ok(None) => {
                ended = true;
                break;
            }
            Err(ReadError::Blocked) => break,
            Err(_) => {
                ended = true;
                break;
            }
        }
    }
    // Freed flow-control credit goes out with the connection's next transmit; every
    // revisited connection is queued for one.
    let _ = chunks.finalize();
    Some(Read { chunks: got, ended })
}

/// Writes what is left of `pending` (from `*at`); true once all of it is written (the
/// buffer is then cleared, its capacity kept), false while flow control holds it back
/// or the stream is gone.
pub(crate) fn flush(
    quic: &mut Connection,
    id: StreamId,
    pending: &mut Vec<u8>,
    at: &mut usize,
) -> bool {
    if *at < pending.len() {
        match quic.send_stream(id).write(&pending[*at..]) {
            Ok(n) => *at += n,
            Err(_) => return false,
        }
        if *at < pending.len() {
            return false;
        }
    }
    pending.clear();
    *at = 0;
    true
}
