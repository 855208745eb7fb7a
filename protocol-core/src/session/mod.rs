//! Sessions: the hello exchange, resumable ordered streams in both directions,
//! keep-alive and idle timeout, and capability calls, as sans-IO state machines, one
//! per role: [`NodeSession`] and [`DaemonSession`], over a shared link layer.
//!
//! A session outlives connections. The driver reports a connection with
//! `handle_connected`, feeds its frames to `handle_frame`, and reports its end with
//! `handle_disconnected`; application commands are methods returning a typed result
//! (nothing is queued on error). Outputs are polled apart (`SANS_IO.md`):
//! `poll_transmit`, `poll_event`, `poll_journal`, `poll_timeout`.
//!
//! Memory is lent: a session holds its storage (replay buffer and inbox) only while it
//! holds messages; the driver lends it with `lend` and takes it back with `reclaim`.
//! Durability is an output: a journaled session emits [`JournalOp`]s and waits for their
//! commit before transmitting or acknowledging what they carry.
//!
//! `SESSION.md` next to this crate's manifest specifies the state machine, the
//! resumption rules, the journal contract and the memory model.

mod calls;
mod config;
mod daemon;
mod driven;
mod event;
mod journal;
mod link;
mod node;
#[cfg(feature = "alloc")]
mod owned;
mod restore;
mod ring;
mod stream;

pub use calls::{CALL_WINDOW, CallRecord, CallState, MAX_OPEN_CALLS, SeenCall, Slot};
pub use config::{
    Config, MAX_NODE_ID, MAX_PLATFORM, MAX_SEQ, MIN_IDLE_TIMEOUT_MS, SessionError, SetupError,
    inbox_for,
};
pub use daemon::DaemonSession;
pub use driven::Session;
pub use event::{CloseReason, DaemonEvent, NodeEvent, NotRun};
pub use journal::{BatchId, JournalError, JournalMeta, JournalOp, JournalRead};
#[cfg(feature = "alloc")]
pub use journal::{MemJournal, OwnedJournalOp};
pub use node::{INTERRUPTED, NodeSession};
#[cfg(feature = "alloc")]
pub use owned::{
    OwnedCapability, OwnedDaemonEvent, OwnedLateAnswer, OwnedNodeEvent, OwnedOutcome, OwnedPayload,
};
pub use ring::RECORD_HEADER;
pub use stream::Overflow;

pub use crate::time::Instant;
pub use crate::transmit::{Transmit, TransmitError};
