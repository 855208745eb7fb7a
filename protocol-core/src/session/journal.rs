//! The durability hook of a daemon-role session.
//!
//! The session calls the journal synchronously, in this order, and only proceeds when
//! it returns `Ok`:
//!
//! - a message the application sends is appended ([`Journal::append`]) before it can be
//!   transmitted;
//! - an acknowledgement from the peer trims the appended messages ([`Journal::trim`]);
//! - a received message's position is recorded ([`Journal::save_meta`]) when it is
//!   handed to the application and before it is acknowledged, so the adapter can
//!   commit the application's effect and the position in one transaction;
//! - every change of a call is stored ([`Journal::put_call`]) or, once the application
//!   has seen its final state, removed ([`Journal::remove_call`]).
//!
//! [`Session::restore_daemon`](super::Session::restore_daemon) rebuilds a session from
//! what the journal holds.

use super::calls::CallRecord;
use crate::wire::{CallId, Seq, SessionId};

/// Positions of a session, stored as one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalMeta {
    pub session: SessionId,
    /// The peer has connected in this session at least once.
    pub established: bool,
    /// Last seq assigned in our outgoing stream.
    pub last_sent: Seq,
    /// Highest outgoing seq the peer acknowledged.
    pub acked: Seq,
    /// Highest incoming seq handed to the application.
    pub received: Seq,
    /// Next call id to hand out.
    pub next_call_id: CallId,
    /// State of the session-id generator, so a restarted daemon never reuses an id.
    pub id_state: [u64; 2],
}

/// Durable storage of one daemon-role session. Implemented by the daemon's state store.
pub trait Journal {
    type Error: core::fmt::Debug;

    /// Replaces the stored positions.
    fn save_meta(&mut self, meta: &JournalMeta) -> Result<(), Self::Error>;
    /// Stores outgoing message `seq` (postcard-encoded body) before it is sent.
    fn append(&mut self, seq: Seq, body: &[u8]) -> Result<(), Self::Error>;
    /// Drops stored outgoing messages up to and including `through`.
    fn trim(&mut self, through: Seq) -> Result<(), Self::Error>;
    /// Drops every stored outgoing message (the peer's session is gone).
    fn clear_messages(&mut self) -> Result<(), Self::Error>;
    /// Inserts or replaces a call.
    fn put_call(&mut self, call: &CallRecord) -> Result<(), Self::Error>;
    fn remove_call(&mut self, id: CallId) -> Result<(), Self::Error>;

    /// The stored positions, or `None` for a journal never written.
    fn load_meta(&self) -> Result<Option<JournalMeta>, Self::Error>;
    /// Visits the stored outgoing messages in seq order.
    fn for_each_message(&self, visit: &mut dyn FnMut(Seq, &[u8])) -> Result<(), Self::Error>;
    /// Visits the stored calls in the order they were first put.
    fn for_each_call(&self, visit: &mut dyn FnMut(&CallRecord)) -> Result<(), Self::Error>;
}

/// No durability: state lives in RAM only (nodes, tests, a daemon that may forget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoJournal;

impl Journal for NoJournal {
    type Error = core::convert::Infallible;

    fn save_meta(&mut self, _: &JournalMeta) -> Result<(), Self::Error> {
        Ok(())
    }
    fn append(&mut self, _: Seq, _: &[u8]) -> Result<(), Self::Error> {
        Ok(())
    }
    fn trim(&mut self, _: Seq) -> Result<(), Self::Error> {
        Ok(())
    }
    fn clear_messages(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn put_call(&mut self, _: &CallRecord) -> Result<(), Self::Error> {
        Ok(())
    }
    fn remove_call(&mut self, _: CallId) -> Result<(), Self::Error> {
        Ok(())
    }
    fn load_meta(&self) -> Result<Option<JournalMeta>, Self::Error> {
        Ok(None)
    }
    fn for_each_message(&self, _: &mut dyn FnMut(Seq, &[u8])) -> Result<(), Self::Error> {
        Ok(())
    }
    fn for_each_call(&self, _: &mut dyn FnMut(&CallRecord)) -> Result<(), Self::Error> {
        Ok(())
    }
}
