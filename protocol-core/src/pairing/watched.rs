//! A node's pairing run as a driver pumps it, watching for the listener's refusal.

use core::fmt;

use super::{NodePairing, decode_pairing};
use crate::frame::FrameError;
use crate::pump::{Machine, Offer};
use crate::time::Instant;
use crate::transmit::{Transmit, TransmitError};
use crate::wire::{ErrorCode, ErrorFrame, Message, decode_message};

/// What a [`Watched`] run keeps of the listener's refusal: [`ErrorCode`] keeps the code
/// alone; a node with an allocator may keep the reason as well.
pub trait Refusal {
    fn from_frame(frame: &ErrorFrame<'_>) -> Self;
}

impl Refusal for ErrorCode {
    fn from_frame(frame: &ErrorFrame<'_>) -> Self {
        frame.code
    }
}

/// A [`NodePairing`] as the pump drives it, with the listener's refusal noted: a daemon
/// that will not pair on this connection (overloaded, say) sends a node-plane `Error`
/// frame instead of a pairing message, then closes. That frame is taken and kept as an
/// `R` ([`Watched::take_refused`]); every other frame, and every other call, goes to
/// the run.
pub struct Watched<'c, B, R = ErrorCode> {
    /// The run: its events, its error, its timers.
    pub run: NodePairing<'c, B>,
    refused: Option<R>,
}

impl<'c, B, R> Watched<'c, B, R> {
    pub const fn new(run: NodePairing<'c, B>) -> Self {
        Self { run, refused: None }
    }

    /// The listener's refusal, once it came (and only once).
    pub fn take_refused(&mut self) -> Option<R> {
        self.refused.take()
    }
}

impl<B, R: fmt::Debug> fmt::Debug for Watched<'_, B, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("run", &self.run)
            .field("refused", &self.refused)
            .finish()
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, R: Refusal> Machine for Watched<'_, B, R> {
    type Buf = B;

    fn max_frame(&self) -> u32 {
        Machine::max_frame(&self.run)
    }
    fn transmit_len(&self) -> usize {
        self.run.transmit_len()
    }
    fn offer_frame(&mut self, now: Instant, frame: &[u8]) -> Offer {
        // A frame that is a pairing message is the run's, whatever else it could decode as.
        if decode_pairing(frame).is_err()
            && let Ok(Message::Error(e)) = decode_message(frame)
        {
            // The daemon closes the connection after it; the run has nothing to add.
            self.refused = Some(R::from_frame(&e));
            return Offer::Taken;
        }
        // A failure is the run's own state now; its event reports it.
        Machine::offer_frame(&mut self.run, now, frame)
    }
    fn handle_frame_error(&mut self, now: Instant, e: FrameError) {
        self.run.handle_frame_error(now, e);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.run.handle_timeout(now);
    }
    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError> {
        self.run.poll_transmit(now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.run.poll_timeout()
    }
}
