//! What a driver needs of either role beyond the pump's [`Machine`], so one loop
//! carries both.

use super::config::{Config, SessionError};
use super::daemon::DaemonSession;
use super::event::{DaemonEvent, NodeEvent};
use super::journal::{BatchId, JournalError};
use super::node::NodeSession;
use crate::pump::Machine;
use crate::time::Instant;

/// The driver's view of a session: the pump's [`Machine`] (frames, storage, journal,
/// timers), the connection's start and end, events, and journal confirmations.
/// Application commands stay on the role types.
pub trait Session: Machine {
    /// The role's event.
    type Event<'a>
    where
        Self: 'a;

    fn config(&self) -> &Config;
    fn handle_connected(&mut self, now: Instant);
    fn handle_disconnected(&mut self, now: Instant);
    /// One frame's payload; see the role's `handle_frame` (the pump offers frames
    /// through [`Machine::offer_frame`]).
    fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), SessionError>;
    fn handle_journal_committed(
        &mut self,
        now: Instant,
        batch: BatchId,
    ) -> Result<(), JournalError>;
    fn handle_journal_failed(&mut self, now: Instant, batch: BatchId) -> Result<(), JournalError>;
    fn poll_event(&mut self) -> Option<Self::Event<'_>>;
}

macro_rules! driven {
    ($ty:ident, $ev:ident) => {
        impl<B: AsRef<[u8]> + AsMut<[u8]>> Session for $ty<B> {
            type Event<'a>
                = $ev<'a>
            where
                Self: 'a;

            fn config(&self) -> &Config {
                $ty::config(self)
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
            fn handle_journal_committed(
                &mut self,
                now: Instant,
                batch: BatchId,
            ) -> Result<(), JournalError> {
                $ty::handle_journal_committed(self, now, batch)
            }
            fn handle_journal_failed(
                &mut self,
                now: Instant,
                batch: BatchId,
            ) -> Result<(), JournalError> {
                $ty::handle_journal_failed(self, now, batch)
            }
            fn poll_event(&mut self) -> Option<$ev<'_>> {
                $ty::poll_event(self)
            }
        }
    };
}

driven!(NodeSession, NodeEvent);
driven!(DaemonSession, DaemonEvent);
