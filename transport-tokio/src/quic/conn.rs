//! One QUIC connection as the endpoint task keeps it: the quinn-proto connection, where
//! it stands (handshaking, carrying a session, closing), and the session's stream.

use std::time::Instant as StdInstant;

use protocol_core::frame::FrameDecoder;
use protocol_core::session::{Instant, OwnedJournalOp, Session, SessionError, Transmit};
use quinn_proto::{Connection, StreamId, VarInt};
use tokio::sync::oneshot;

use crate::driver::Application;
use crate::host::{Closed, Peer, Refusal};
use crate::journal::Batch;
use crate::pool::StoragePool;

use crate::pool::Buffers;

/// How long a session that asked to close waits for its last frames to be acknowledged
/// before the connection is closed anyway.
pub(crate) const FINISH_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub(crate) struct Conn<S, A> {
    pub(crate) id: u64,
    pub(crate) quic: Connection,
    pub(crate) stage: Stage<S, A>,
    /// Counts against the connection cap (a connection being refused does not).
    pub(crate) counted: bool,
    /// Accepted over the cap only to be refused: holds one of the refusal slots.
    pub(crate) over_cap: bool,
    pub(crate) handshake_deadline: Option<StdInstant>,
    /// The deadline in the timer heap, and its generation (older heap entries are stale).
    pub(crate) armed: Option<StdInstant>,
    pub(crate) generation: u64,
    /// In the endpoint's send queue.
    pub(crate) queued: bool,
    /// In this pass's list of connections to revisit.
    pub(crate) dirty: bool,
}

pub(crate) enum Stage<S, A> {
    Handshaking {
        /// Refused once the handshake completes (over the cap), so the peer can read why.
        refuse: Option<Refusal>,
        /// A client connect waiting for the handshake.
        reply: Option<oneshot::Sender<Result<u64, String>>>,
    },
    Live(Box<Live<S, A>>),
    /// No client certificate: a pairing run, and nothing else.
    Pairing(Box<super::pairing::PairingConn>),
    /// Closed by us or the peer; waiting for quinn to drain it.
    Closing,
}

/// A connection carrying a session.
pub(crate) struct Live<S, A> {
    pub(crate) peer: Peer,
    pub(crate) session: S,
    pub(crate) app: A,
    pub(crate) journal_key: std::sync::Arc<str>,
    pub(crate) stream: Option<StreamId>,
    /// Assembles a frame split across reads; its buffer is taken from the pool only
    /// while a frame is partly received.
    pub(crate) decoder: Option<FrameDecoder<Box<[u8]>>>,
    /// Frames the stream did not take yet (flow control): written before anything new
    /// is polled from the session.
    pub(crate) pending: Vec<u8>,
    pub(crate) pending_at: usize,
    /// The session asked to close: its stream is finished and the connection closes
    /// when the peer has everything, or at this deadline.
    pub(crate) finishing: Option<StdInstant>,
    /// A journal batch of this session is being committed.
    pub(crate) in_flight: bool,
    /// The connection is gone: how, for the application once the session goes back.
    pub(crate) ended: Option<Closed>,
}

/// The journal batches one pass produced, and whose they are.
#[derive(Default)]
pub(crate) struct Group {
    pub(crate) batches: Vec<Batch>,
    pub(crate) conns: Vec<u64>,
}

/// What reading the stream found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// More may come.
    Open,
    /// The peer finished or reset its side, or the session's framing broke.
    Ended,
}

impl<S, A> Live<S, A>
where
    S: Session<Storage = Box<[u8]>>,
    A: Application<S>,
{
    pub(crate) fn lend(&mut self, pool: &StoragePool) {
        if !self.session.has_storage() {
            if let Err(buf) = self.session.lend(pool.take()) {
                pool.put(buf);
            }
        }
    }

    /// Events to the application, a journal batch into the pass's group (one in flight
    /// per session), storage back to the pool when the session holds no data.
    pub(crate) fn pump(&mut self, id: u64, now: Instant, pool: &StoragePool, group: &mut Group) {
        self.lend(pool);
        self.app.handle_events(&mut self.session, now);
        if !self.in_flight {
            let mut ops = Vec::new();
            while let Some(op) = self.session.poll_journal() {
                ops.push(OwnedJournalOp::from(&op));
            }
            if !ops.is_empty() {
                group.batches.push(Batch {
                    key: self.journal_key.clone(),
                    ops,
                });
                group.conns.push(id);
                self.in_flight = true;
            }
        }
        if let Some(buf) = self.session.reclaim() {
            pool.put(buf);
            // The session holds nothing: a quiet connection keeps no write buffer.
            if self.pending.is_empty() {
                self.pending = Vec::new();
            }
        }
    }

    /// Reads what the stream holds and feeds it frame by frame, the application
    /// draining events after each (the inbox holds one frame).
    pub(crate) fn read(
        &mut self,
        quic: &mut Connection,
        now: Instant,
        pool: &StoragePool,
        buffers: &Buffers,
    ) -> ReadEnd {
        let Some(id) = self.stream else {
            return ReadEnd::Open;
        };
        let Some(read) = super::stream::read_all(quic, id) else {
            return ReadEnd::Ended;
        };
        let got = read.chunks;
        let end = if read.ended {
            ReadEnd::Ended
        } else {
            ReadEnd::Open
        };
        let max = self.session.config().max_frame;
        for bytes in got {
            let mut input = &bytes[..];
            while !input.is_empty() {
                let decoder = match &mut self.decoder {
                    Some(d) => d,
                    None => match FrameDecoder::new(buffers.take(max as usize), max) {
                        Ok(d) => self.decoder.insert(d),
                        Err(_) => return ReadEnd::Ended,
                    },
                };
                match decoder.decode(input) {
                    Ok(p) => {
                        if let Some(frame) = p.frame {
                            if !self.session.has_storage() {
                                if let Err(buf) = self.session.lend(pool.take()) {
                                    pool.put(buf);
                                }
                            }
                            crate::stats::frame_in(crate::host::TransportKind::Quic, frame.len());
                            if self.session.handle_frame(now, frame) == Err(SessionError::NoStorage)
                            {
                                return ReadEnd::Ended;
                            }
                            self.app.handle_events(&mut self.session, now);
                        }
                        input = &input[p.consumed..];
                    }
                    Err(e) => {
                        self.session.handle_frame_error(now, e);
                        self.drop_decoder(buffers);
                        // The session answers with an error frame and a close.
                        return ReadEnd::Open;
                    }
                }
            }
        }
        if self.decoder.as_ref().is_some_and(|d| d.buffered() == 0) {
            self.drop_decoder(buffers);
        }
        end
    }

    pub(crate) fn drop_decoder(&mut self, buffers: &Buffers) {
        if let Some(d) = self.decoder.take() {
            buffers.put(d.into_buffer());
        }
    }

    /// Writes what the stream will take: the frames left over first, then new frames
    /// polled from the session into `tx`. Returns true when the session asked to close
    /// (its last frames are written, or queued in `pending`).
    pub(crate) fn write(&mut self, quic: &mut Connection, now: Instant, tx: &mut Vec<u8>) -> bool {
        let Some(id) = self.stream else {
            return false;
        };
        if self.finishing.is_some() {
            return false;
        }
        // The buffer keeps its capacity while the connection is busy (reallocating it
        // for every batch cost page faults under bulk); `pump` frees it once quiet.
        if !super::stream::flush(quic, id, &mut self.pending, &mut self.pending_at) {
            return false;
        }
        let need = self.session.config().transmit_len();
        if tx.len() < need {
            tx.resize(need, 0);
        }
        loop {
            let mut filled = 0;
            let mut close = false;
            let full = loop {
                match self.session.poll_transmit(now, &mut tx[filled..]) {
                    Ok(Some(Transmit::Frame(n))) => {
                        crate::stats::frame_out(crate::host::TransportKind::Quic, n);
                        filled += n;
                    }
                    Ok(Some(Transmit::Close)) => {
                        close = true;
                        break false;
                    }
                    Ok(None) => break false,
                    Err(_) => break true,
                }
            };
            if filled > 0 {
                let written = quic.send_stream(id).write(&tx[..filled]).unwrap_or(0);
                if written < filled {
                    self.pending.extend_from_slice(&tx[written..filled]);
                    self.pending_at = 0;
                }
            }
            if close {
                return true;
            }
            if !full || !self.pending.is_empty() {
                return false;
            }
        }
    }

    /// The session's deadline on the process clock.
    pub(crate) fn deadline(&self) -> Option<StdInstant> {
        let at = self.session.poll_timeout()?;
        Some(StdInstant::now() + crate::clock::until(at))
    }
}

impl<S, A> Stage<S, A> {
    /// The stream the connection's session or pairing run rides on, once open.
    pub(crate) fn stream(&self) -> Option<StreamId> {
        match self {
            Stage::Live(live) => live.stream,
            Stage::Pairing(p) => p.stream,
            Stage::Handshaking { .. } | Stage::Closing => None,
        }
    }
}

impl<S, A> Conn<S, A> {
    /// Refuses the connection before it carries anything: counted, closed with the
    /// error's code and a reason the peer reads.
    pub(crate) fn refuse(
        &mut self,
        now: StdInstant,
        why: crate::stats::HandshakeFailure,
        code: &protocol_core::wire::ErrorCode,
        reason: &str,
    ) {
        crate::stats::failed(crate::host::TransportKind::Quic, why);
        self.close(now, crate::host::close_code(code), reason);
        self.stage = Stage::Closing;
    }

    pub(crate) fn close(&mut self, now: StdInstant, code: u32, reason: &str) {
        self.quic.close(
            now,
            VarInt::from_u32(code),
            reason.as_bytes().to_vec().into(),
        );
    }
}

/// How quinn's report of a lost connection reads to the application.
pub(crate) fn closed_from(error: &quinn_proto::ConnectionError) -> Closed {
    use quinn_proto::ConnectionError as E;
    match error {
        E::ApplicationClosed(close) => Closed::ByPeer {
            code: close.error_code.into_inner(),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        E::LocallyClosed => Closed::BySession,
        other => Closed::Lost {
            reason: other.to_string(),
        },
    }
}
