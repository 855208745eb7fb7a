//! What a driver needs of either role, so one loop carries both.

use super::config::{Config, SessionError};
use super::daemon::DaemonSession;
use super::event::{DaemonEvent, NodeEvent};
use super::journal::JournalOp;
use super::node::NodeSession;
use crate::frame::FrameError;
use crate::time::Instant;
use crate::transmit::{Transmit, TransmitError};

/// The driver's view of a session (inputs, outputs, storage), implemented by both roles
/// with their inherent methods. Application commands stay on the role types.
pub trait Session {
    /// The storage the driver lends.
    type Storage;
    /// The role's event.
    type Event<'a>
    where
        Self: 'a;

    fn config(&self) -> &Config;
    fn lend(&mut self, buf: Self::Storage) -> Result<(), Self::Storage>;
    fn reclaim(&mut self) -> Option<Self::Storage>;
    fn has_storage(&self) -> bool;

    fn handle_connected(&mut self, now: Instant);
    fn handle_disconnected(&mut self, now: Instant);
    fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), SessionError>;
    fn handle_frame_error(&mut self, now: Instant, e: FrameError);
    fn handle_timeout(&mut self, now: Instant);
    fn handle_journal_committed(&mut self, now: Instant);
    fn handle_journal_failed(&mut self, now: Instant);

    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError>;
    fn poll_event(&mut self) -> Option<Self::Event<'_>>;
    fn poll_journal(&mut self) -> Option<JournalOp<'_>>;
    fn poll_timeout(&self) -> Option<Instant>;
}

macro_rules! driven {
    ($ty:ident, $ev:ident) => {
        impl<B: AsRef<[u8]> + AsMut<[u8]>> Session for $ty<B> {
            type Storage = B;
            type Event<'a>
                = $ev<'a>
            where
                Self: 'a;

            fn config(&self) -> &Config {
                $ty::config(self)
            }
            fn lend(&mut self, buf: B) -> Result<(), B> {
                $ty::lend(self, buf)
            }
            fn reclaim(&mut self) -> Option<B> {
                $ty::reclaim(self)
            }
            fn has_storage(&self) -> bool {
                $ty::has_storage(self)
            }
            fn handle_connected(&mut self, now: Instant) {
                $ty::handle_connected(self, now)
            }
            fn handle_disconnected(&mut self, now: Instant) {
                $ty::handle_disconnected(self, now)
            }
            fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), SessionError> {
                $ty::handle_frame(self, now, frame)
            }
            fn handle_frame_error(&mut self, now: Instant, e: FrameError) {
                $ty::handle_frame_error(self, now, e)
            }
            fn handle_timeout(&mut self, now: Instant) {
                $ty::handle_timeout(self, now)
            }
            fn handle_journal_committed(&mut self, now: Instant) {
                $ty::handle_journal_committed(self, now)
            }
            fn handle_journal_failed(&mut self, now: Instant) {
                $ty::handle_journal_failed(self, now)
            }
            fn poll_transmit(
                &mut self,
                now: Instant,
                buf: &mut [u8],
            ) -> Result<Option<Transmit>, TransmitError> {
                $ty::poll_transmit(self, now, buf)
            }
            fn poll_event(&mut self) -> Option<$ev<'_>> {
                $ty::poll_event(self)
            }
            fn poll_journal(&mut self) -> Option<JournalOp<'_>> {
                $ty::poll_journal(self)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                $ty::poll_timeout(self)
            }
        }
    };
}

driven!(NodeSession, NodeEvent);
driven!(DaemonSession, DaemonEvent);
