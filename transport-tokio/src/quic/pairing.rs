//! A pairing run on a QUIC connection without a client certificate: its first stream
//! carries pairing frames and nothing else, answered inline by the daemon's
//! [`PairingResponder`] (synchronous, so the endpoint task drives it like a session,
//! with the same pump and the same [`AnsweredRun`] as the TCP listener's pairing).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant as StdInstant;

use protocol_core::frame::{FrameError, HEADER_LEN};
use protocol_core::pairing::{
    DaemonPairing, PAIRING_MAX_FRAME, PairingError, PairingMessage, decode_pairing,
};
use protocol_core::pump::{Machine, Offer, Pump, Step};
use protocol_core::time::Instant;
use protocol_core::transmit::{Transmit, TransmitError};
use quinn_proto::{Connection, StreamId};

use super::conn::FINISH_GRACE;
use super::stream::{self, Received};
use crate::admission::pairing_limit::PairingStarts;
use crate::clock::now;
use crate::pairing::serve::AnsweredRun;
use crate::pairing::{PairingResponder, RunBuffer};
use crate::pool::PoolLender;
use crate::tcp::refuse::abort_frame;

/// One anonymous connection's pairing.
pub(crate) struct PairingConn {
    pub(crate) peer: SocketAddr,
    pub(crate) stream: Option<StreamId>,
    machine: PairingStream,
    pump: Pump<RunBuffer>,
    received: Received,
    /// The stream may hold data not read yet (read once the pump takes input).
    pub(crate) unread: bool,
    reading: bool,
    peer_finished: bool,
    /// The stream is finished; close the connection when the peer has it, or then.
    pub(crate) finishing: Option<StdInstant>,
}

/// Why the connection must close without a pairing answer.
pub(crate) struct NotPairing(pub(crate) &'static str);

impl PairingConn {
    pub(crate) fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            stream: None,
            machine: PairingStream::default(),
            pump: Pump::new(),
            received: Received::default(),
            unread: false,
            reading: true,
            peer_finished: false,
            finishing: None,
        }
    }

    /// Reads the stream while the pump takes input, runs the pump until it waits, and
    /// writes what the stream takes. The first frame must be a pairing `Start` within
    /// the peer address's limit.
    pub(crate) fn drive(
        &mut self,
        quic: &mut Connection,
        at: StdInstant,
        responder: &Arc<dyn PairingResponder>,
        starts: &PairingStarts,
        lender: &mut PoolLender,
    ) -> Result<(), NotPairing> {
        let Some(id) = self.stream else {
            return Ok(());
        };
        self.pump.writable();
        loop {
            if self.unread && self.reading {
                self.unread = false;
                self.peer_finished |= stream::read_into(quic, id, &mut self.received);
            }
            let wait = loop {
                match self
                    .pump
                    .poll(now(), &mut self.machine, lender, &mut self.received)
                {
                    Step::Events(machine) => machine.start(self.peer.ip(), responder, starts),
                    // A pairing run keeps no journal.
                    Step::Journal(_) => {}
                    Step::Transmit(out) => {
                        stream::write(quic, id, out);
                    }
                    Step::Close(out) => {
                        if stream::write(quic, id, out) {
                            let _ = quic.send_stream(id).finish();
                            self.finishing = Some(at + FINISH_GRACE);
                        }
                    }
                    Step::Wait(wait) => break wait,
                }
            };
            self.reading = wait.read;
            if let Some(reason) = self.machine.refused {
                return Err(NotPairing(reason));
            }
            if !(self.unread && self.reading) {
                break;
            }
        }
        let taken = self.reading && self.received.is_empty();
        if self.peer_finished && taken && !self.machine.is_over() {
            return Err(NotPairing("the node closed the pairing stream"));
        }
        Ok(())
    }

    pub(crate) fn on_timeout(&mut self) {
        self.machine.handle_timeout(now());
    }

    pub(crate) fn on_decision(&mut self) {
        if let Some(run) = self.machine.run.as_mut() {
            run.answer();
        }
    }

    /// The run's deadline on the process clock.
    pub(crate) fn deadline(&self) -> Option<StdInstant> {
        let at = self.machine.poll_timeout()?;
        Some(StdInstant::now() + crate::clock::until(at))
    }

    /// The connection is over: the responder hears it, the buffers go back.
    pub(crate) fn closed(&mut self, lender: &mut PoolLender) {
        if let Some(run) = &self.machine.run {
            run.closed();
        }
        self.received.clear();
        self.pump.release(&mut self.machine, lender);
    }
}

/// What the pump drives on a pairing stream: nothing but the first frame until the
/// application's turn checks it (a pairing `Start`, within the address's limit), then
/// the run with its responder.
#[derive(Default)]
struct PairingStream {
    /// The first frame, until its turn comes.
    first: Option<Vec<u8>>,
    run: Option<AnsweredRun<Arc<dyn PairingResponder>>>,
    /// No run: the start was over the limit, or the run could not be built. The node
    /// is sent an `Abort` (this frame, until handed over), then the close.
    aborted: bool,
    abort: Option<Vec<u8>>,
    close_due: bool,
    /// Not a pairing stream: the connection closes without an answer.
    refused: Option<&'static str>,
}

impl PairingStream {
    /// The application's turn: a first frame starts the run, refuses the stream, or is
    /// answered with an `Abort`.
    fn start(
        &mut self,
        peer: IpAddr,
        responder: &Arc<dyn PairingResponder>,
        starts: &PairingStarts,
    ) {
        let Some(first) = self.first.take() else {
            return;
        };
        if !matches!(decode_pairing(&first), Ok(PairingMessage::Start(_))) {
            self.refused = Some("without a client certificate only pairing is allowed");
            return;
        }
        if let Err(error) = starts.try_start(peer, now()) {
            return self.abort(error);
        }
        let buf: RunBuffer = vec![0u8; 2 * PAIRING_MAX_FRAME as usize].into_boxed_slice();
        let Ok(run) = DaemonPairing::new(now(), buf, responder.config()) else {
            return self.abort(PairingError::Internal);
        };
        let mut run = AnsweredRun::new(run, responder.clone());
        let _ = run.offer_frame(now(), &first);
        self.run = Some(run);
    }

    fn abort(&mut self, error: PairingError) {
        self.aborted = true;
        self.abort = Some(abort_frame(error));
        self.close_due = true;
    }

    /// Nothing more is expected of the node: the run finished, or an abort ends it.
    fn is_over(&self) -> bool {
        self.aborted || self.run.as_ref().is_some_and(AnsweredRun::is_finished)
    }

    /// Before the run or without one: whatever the node sends is not for anyone.
    fn is_settled(&self) -> bool {
        self.refused.is_some() || self.aborted
    }
}

impl Machine for PairingStream {
    type Buf = RunBuffer;

    fn max_frame(&self) -> u32 {
        PAIRING_MAX_FRAME
    }

    fn transmit_len(&self) -> usize {
        self.run.as_ref().map_or(
            HEADER_LEN + PAIRING_MAX_FRAME as usize,
            Machine::transmit_len,
        )
    }

    fn offer_frame(&mut self, now: Instant, frame: &[u8]) -> Offer {
        if let Some(run) = &mut self.run {
            return run.offer_frame(now, frame);
        }
        if self.is_settled() {
            return Offer::Taken;
        }
        if self.first.is_some() {
            // The first frame waits for its turn; this one waits behind it.
            return Offer::Later;
        }
        self.first = Some(frame.to_vec());
        Offer::Taken
    }

    fn handle_frame_error(&mut self, now: Instant, e: FrameError) {
        match &mut self.run {
            Some(run) => run.handle_frame_error(now, e),
            None => {
                self.refused.get_or_insert("frame too large");
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(run) = &mut self.run {
            run.handle_timeout(now);
        }
    }

    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError> {
        if let Some(run) = &mut self.run {
            return run.poll_transmit(now, buf);
        }
        if let Some(frame) = self.abort.take() {
            let Some(to) = buf.get_mut(..frame.len()) else {
                let needed = frame.len();
                self.abort = Some(frame);
                return Err(TransmitError::BufferTooSmall { needed });
            };
            to.copy_from_slice(&frame);
            return Ok(Some(Transmit::Frame(frame.len())));
        }
        if std::mem::take(&mut self.close_due) {
            return Ok(Some(Transmit::Close));
        }
        Ok(None)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.run.as_ref().and_then(Machine::poll_timeout)
    }
}
