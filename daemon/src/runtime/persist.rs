//! What the runtime writes to the state store, and the store it writes through.
//!
//! The runtime writes the daemon's model (`crate::model`) as store writes. They are
//! submitted, not awaited: queued in order and committed with the next group, ahead of
//! the journal batch that acknowledges what they record (the session's batch is polled
//! after the application handled its events), so nothing acknowledged to a node is
//! missing from the store after a crash.

use std::time::{SystemTime, UNIX_EPOCH};

pub use crate::store::Write;

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
