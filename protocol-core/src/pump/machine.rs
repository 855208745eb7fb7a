//! What the pump drives: every state machine of this crate that takes frames and gives
//! frames. Sessions add lent storage and a journal; pairing runs have neither.

use crate::frame::FrameError;
use crate::pairing::{DaemonPairing, NodePairing};
use crate::session::{
    BatchId, DaemonSession, JournalOp, NodeSession, SessionError, Transmit, TransmitError,
};
use crate::time::Instant;

/// What a state machine did with a frame offered to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Taken (handled, refused with an error frame, or ignored).
    Taken,
    /// Not taken, nothing of it kept: backpressure. Offer the same frame again once the
    /// application took its events, a journal batch committed, or storage was lent.
    Later,
}

/// A sans-IO state machine the [`Pump`](super::Pump) drives. Implemented by
/// [`NodeSession`], [`DaemonSession`], [`NodePairing`] and [`DaemonPairing`]; a driver
/// may wrap one to add what it must do around it (a pairing responder, say, or a node's
/// pairing run [`Watched`](crate::pairing::Watched) for the listener's refusal).
///
/// The storage and journal methods have defaults for machines without either.
pub trait Machine {
    /// The buffers the driver's lender hands out (session storage, frame buffers).
    type Buf: AsRef<[u8]> + AsMut<[u8]>;

    /// Largest frame payload the machine accepts: the frame decoder's limit.
    fn max_frame(&self) -> u32;
    /// Bytes of a transmit buffer that always holds the next frame.
    fn transmit_len(&self) -> usize;
    /// One frame's payload.
    fn offer_frame(&mut self, now: Instant, frame: &[u8]) -> Offer;
    /// A frame that arrived after one the machine refused, offered before it: take it
    /// only if it has no place in the order of what the machine holds back (an
    /// acknowledgement the refused frame may wait for). `Later` leaves it for its turn.
    fn offer_ahead(&mut self, now: Instant, frame: &[u8]) -> Offer {
        let _ = (now, frame);
        Offer::Later
    }
    /// The frame decoder failed: the byte stream is out of step.
    fn handle_frame_error(&mut self, now: Instant, e: FrameError);
    /// A deadline from `poll_timeout` was reached (cheap at any time).
    fn handle_timeout(&mut self, now: Instant);
    /// See [`crate::transmit`].
    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError>;
    fn poll_timeout(&self) -> Option<Instant>;

    /// Bytes of storage the machine borrows while it holds data; 0: none.
    fn storage_len(&self) -> usize {
        0
    }
    fn has_storage(&self) -> bool {
        true
    }
    fn lend(&mut self, buf: Self::Buf) -> Result<(), Self::Buf> {
        Err(buf)
    }
    fn reclaim(&mut self) -> Option<Self::Buf> {
        None
    }

    /// True if `poll_journal` has an op now.
    fn journal_pending(&self) -> bool {
        false
    }
    fn poll_journal(&mut self) -> Option<JournalOp<'_>> {
        None
    }
    /// The batch waiting for its confirmation.
    fn closed_batch(&self) -> Option<BatchId> {
        None
    }
}

fn offer(r: Result<(), SessionError>) -> Offer {
    match r {
        Err(SessionError::NoStorage | SessionError::InboxFull) => Offer::Later,
        _ => Offer::Taken,
    }
}

macro_rules! session_machine {
    ($ty:ident) => {
        impl<B: AsRef<[u8]> + AsMut<[u8]>> Machine for $ty<B> {
            type Buf = B;

            fn max_frame(&self) -> u32 {
                self.config().max_frame
            }
            fn transmit_len(&self) -> usize {
                self.config().transmit_len()
            }
            fn offer_frame(&mut self, now: Instant, frame: &[u8]) -> Offer {
                offer(self.handle_frame(now, frame))
            }
            fn offer_ahead(&mut self, now: Instant, frame: &[u8]) -> Offer {
                offer(self.handle_frame_ahead(now, frame))
            }
            fn handle_frame_error(&mut self, now: Instant, e: FrameError) {
                $ty::handle_frame_error(self, now, e)
            }
            fn handle_timeout(&mut self, now: Instant) {
                $ty::handle_timeout(self, now)
            }
            fn poll_transmit(
                &mut self,
                now: Instant,
                buf: &mut [u8],
            ) -> Result<Option<Transmit>, TransmitError> {
                $ty::poll_transmit(self, now, buf)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                $ty::poll_timeout(self)
            }
            fn storage_len(&self) -> usize {
                self.config().storage_len()
            }
            fn has_storage(&self) -> bool {
                $ty::has_storage(self)
            }
            fn lend(&mut self, buf: B) -> Result<(), B> {
                $ty::lend(self, buf)
            }
            fn reclaim(&mut self) -> Option<B> {
                $ty::reclaim(self)
            }
            fn journal_pending(&self) -> bool {
                $ty::journal_pending(self)
            }
            fn poll_journal(&mut self) -> Option<JournalOp<'_>> {
                $ty::poll_journal(self)
            }
            fn closed_batch(&self) -> Option<BatchId> {
                $ty::closed_batch(self)
            }
        }
    };
}

session_machine!(NodeSession);
session_machine!(DaemonSession);

/// A pairing run reports its failures itself (an `Abort` to send, an event): every
/// frame is taken.
macro_rules! pairing_machine {
    ($($ty:tt)*) => {
        fn max_frame(&self) -> u32 {
            crate::pairing::PAIRING_MAX_FRAME
        }
        fn transmit_len(&self) -> usize {
            $($ty)*::transmit_len(self)
        }
        fn offer_frame(&mut self, now: Instant, frame: &[u8]) -> Offer {
            let _ = self.handle_frame(now, frame);
            Offer::Taken
        }
        fn handle_frame_error(&mut self, now: Instant, e: FrameError) {
            $($ty)*::handle_frame_error(self, now, e)
        }
        fn handle_timeout(&mut self, now: Instant) {
            $($ty)*::handle_timeout(self, now)
        }
        fn poll_transmit(
            &mut self,
            now: Instant,
            buf: &mut [u8],
        ) -> Result<Option<Transmit>, TransmitError> {
            $($ty)*::poll_transmit(self, now, buf)
        }
        fn poll_timeout(&self) -> Option<Instant> {
            $($ty)*::poll_timeout(self)
        }
    };
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Machine for NodePairing<'_, B> {
    type Buf = B;
    pairing_machine!(NodePairing);
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Machine for DaemonPairing<B> {
    type Buf = B;
    pairing_machine!(DaemonPairing);
}
