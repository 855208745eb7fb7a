//! What the runtime writes to the state store, and the store it writes through.
//!
//! Writes are submitted, not awaited: they are queued in order and committed with the
//! next group, ahead of the journal batch that acknowledges what they record (the
//! session's batch is polled after the application handled its events), so nothing
//! acknowledged to a node is missing from the store after a crash.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{CallStatus, Capability};

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    /// Connected when written.
    pub online: bool,
    pub last_seen_ms: u64,
    pub platform: Option<String>,
    pub address: Option<String>,
    pub capabilities: Vec<Capability>,
}

/// A call as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    pub id: u64,
    pub node: String,
    pub capability: String,
    pub input_type: String,
    pub input: Vec<u8>,
    pub status: CallStatus,
    pub output_type: String,
    pub output: Vec<u8>,
    pub message: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub deadline_ms: u64,
    /// The call's id in the node's session, once it went into it.
    pub session_call: Option<u64>,
    /// When the daemon gave up on it, if the node answered afterwards.
    pub timed_out_ms: Option<u64>,
}

/// An event a node sent, keyed by where it stood in the node's stream so a replay after
/// a crash is stored once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub node: String,
    /// The node's session and the event's seq in it.
    pub session: [u8; 16],
    pub stream_seq: u64,
    pub name: String,
    pub content_type: String,
    pub body: Vec<u8>,
    pub at_ms: u64,
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Node(NodeRow),
    Call(CallRow),
    Event(EventRow),
}

/// The store the runtime writes through.
pub trait RuntimeStore: Send + Sync + 'static {
    /// Queues `writes`, in order, for the next group commit; returns at once.
    fn submit(&self, writes: Vec<Write>);
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
