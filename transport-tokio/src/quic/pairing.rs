//! A pairing run on a QUIC connection without a client certificate: its first stream
//! carries pairing frames and nothing else, answered inline by the daemon's
//! [`PairingResponder`] (synchronous, so the endpoint task drives it like a session).

use std::net::SocketAddr;
use std::time::Instant as StdInstant;

use protocol_core::frame::FrameDecoder;
use protocol_core::pairing::{
    DaemonPairing, PAIRING_MAX_FRAME, PairingError, PairingMessage, decode_pairing,
};
use quinn_proto::{Connection, StreamId};

use crate::clock::now;
use crate::pairing::serve::{answer, before_end, feed, transmit};
use crate::pairing::{PairingOutcome, PairingResponder, RunBuffer};
use crate::tcp::pairing_limit::PairingStarts;
use crate::tcp::refuse::abort_frame;

/// One anonymous connection's pairing.
pub(crate) struct PairingConn {
    pub(crate) peer: SocketAddr,
    pub(crate) stream: Option<StreamId>,
    run: Option<DaemonPairing<RunBuffer>>,
    dec: FrameDecoder<Vec<u8>>,
    end: Option<PairingOutcome>,
    tx: Vec<u8>,
    pending: Vec<u8>,
    pending_at: usize,
    /// Everything is written; the stream finishes and the connection closes.
    closing: bool,
    /// The stream is finished; close the connection when the peer has it, or then.
    pub(crate) finishing: Option<StdInstant>,
}

/// Why the connection must close without a pairing answer.
pub(crate) struct NotPairing(pub(crate) &'static str);

impl PairingConn {
    pub(crate) fn new(peer: SocketAddr) -> Option<Self> {
        Some(Self {
            peer,
            stream: None,
            run: None,
            dec: FrameDecoder::new(vec![0u8; PAIRING_MAX_FRAME as usize], PAIRING_MAX_FRAME)
                .ok()?,
            end: None,
            tx: Vec::new(),
            pending: Vec::new(),
            pending_at: 0,
            closing: false,
            finishing: None,
        })
    }

    /// Reads the stream; the first frame must be a pairing `Start` within the peer
    /// address's limit.
    pub(crate) fn read(
        &mut self,
        quic: &mut Connection,
        responder: &dyn PairingResponder,
        starts: &PairingStarts,
    ) -> Result<(), NotPairing> {
        let Some(id) = self.stream else {
            return Ok(());
        };
        let Some(read) = super::stream::read_all(quic, id) else {
            return Err(NotPairing("the pairing stream ended"));
        };
        let (got, ended) = (read.chunks, read.ended);
        for bytes in got {
            let mut input = &bytes[..];
            if self.run.is_none() && !self.closing {
                let first = match self.dec.decode(input) {
                    Ok(p) => {
                        let frame = p.frame.map(<[u8]>::to_vec);
                        input = &input[p.consumed..];
                        frame
                    }
                    Err(_) => return Err(NotPairing("frame too large")),
                };
                let Some(first) = first else { continue };
                if !matches!(decode_pairing(&first), Ok(PairingMessage::Start(_))) {
                    return Err(NotPairing(
                        "without a client certificate only pairing is allowed",
                    ));
                }
                if let Err(error) = starts.try_start(self.peer.ip(), now()) {
                    self.abort(error);
                    return Ok(());
                }
                let buf: RunBuffer = vec![0u8; 2 * PAIRING_MAX_FRAME as usize].into_boxed_slice();
                let Ok(mut run) = DaemonPairing::new(now(), buf, responder.config()) else {
                    self.abort(PairingError::Internal);
                    return Ok(());
                };
                let _ = run.handle_frame(now(), &first);
                answer(responder, &mut run, &mut self.end);
                self.run = Some(run);
            }
            if let Some(run) = self.run.as_mut() {
                feed(run, responder, &mut self.dec, input, &mut self.end);
            }
        }
        if ended && self.run.as_ref().is_some_and(|r| !r.is_finished()) {
            return Err(NotPairing("the node closed the pairing stream"));
        }
        Ok(())
    }

    fn abort(&mut self, error: PairingError) {
        self.pending.extend_from_slice(&abort_frame(error));
        self.closing = true;
    }

    pub(crate) fn on_timeout(&mut self, responder: &dyn PairingResponder) {
        if let Some(run) = self.run.as_mut() {
            let at = now();
            if run.poll_timeout().is_some_and(|d| d <= at) {
                before_end(responder, run);
            }
            run.handle_timeout(at);
            answer(responder, run, &mut self.end);
        }
    }

    pub(crate) fn on_decision(&mut self, responder: &dyn PairingResponder) {
        if let Some(run) = self.run.as_mut() {
            answer(responder, run, &mut self.end);
        }
    }

    /// Writes what the run has; true once everything is written and the run is over.
    pub(crate) fn write(
        &mut self,
        quic: &mut Connection,
        responder: &dyn PairingResponder,
    ) -> bool {
        let Some(id) = self.stream else {
            return false;
        };
        if self.finishing.is_some() {
            return false;
        }
        loop {
            if !super::stream::flush(quic, id, &mut self.pending, &mut self.pending_at) {
                return false;
            }
            if self.closing {
                return true;
            }
            let Some(run) = self.run.as_mut() else {
                return false;
            };
            if self.tx.len() < run.transmit_len() {
                self.tx.resize(run.transmit_len(), 0);
            }
            let (filled, close, full) = transmit(run, responder, &mut self.tx, &mut self.end);
            self.pending.extend_from_slice(&self.tx[..filled]);
            if close {
                self.closing = true;
            } else if !full && self.pending.is_empty() {
                return false;
            }
        }
    }

    /// The run's deadline on the process clock.
    pub(crate) fn deadline(&self) -> Option<StdInstant> {
        let at = self.run.as_ref()?.poll_timeout()?;
        Some(StdInstant::now() + crate::clock::until(at))
    }

    /// The connection is over.
    pub(crate) fn closed(&self, responder: &dyn PairingResponder) {
        if let Some(run) = &self.run {
            responder.closed(run);
        }
    }
}
