//! The runtime's calls: from the operator's request to a final state, with a deadline
//! the runtime enforces whether or not the node is connected.

use std::collections::HashMap;

use protocol_core::session::CallState;
use tokio::sync::oneshot;

use super::persist::CallRow;

/// The longest timeout a call may ask for (one day).
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallStatus {
    /// Waiting for the node (queued in the runtime or in the session's stream).
    Queued,
    /// The node holds it.
    Dispatched,
    AwaitingApproval,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Rejected,
    Cancelled,
    /// The node restarted without its memory before answering.
    Lost,
    /// Larger than the node accepts.
    Undeliverable,
}

impl CallStatus {
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            Self::Queued | Self::Dispatched | Self::AwaitingApproval | Self::Running
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Dispatched => "dispatched",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::Lost => "lost",
            Self::Undeliverable => "undeliverable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Dispatched,
            Self::AwaitingApproval,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::TimedOut,
            Self::Rejected,
            Self::Cancelled,
            Self::Lost,
            Self::Undeliverable,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl From<CallState> for CallStatus {
    fn from(s: CallState) -> Self {
        match s {
            CallState::Queued => Self::Queued,
            CallState::Dispatched => Self::Dispatched,
            CallState::AwaitingApproval => Self::AwaitingApproval,
            CallState::Running => Self::Running,
            CallState::Succeeded => Self::Succeeded,
            CallState::Failed => Self::Failed,
            CallState::TimedOut => Self::TimedOut,
            CallState::Rejected(_) => Self::Rejected,
            CallState::Cancelled => Self::Cancelled,
            CallState::Lost => Self::Lost,
            CallState::Undeliverable => Self::Undeliverable,
        }
    }
}

/// How a call ended, for whoever waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    pub id: u64,
    pub status: CallStatus,
    pub content_type: String,
    pub output: Vec<u8>,
    pub message: String,
}

pub(crate) struct CallEntry {
    pub(crate) row: CallRow,
    pub(crate) waiters: Vec<oneshot::Sender<CallOutcome>>,
}

/// The calls not yet final.
#[derive(Default)]
pub(crate) struct Calls {
    open: HashMap<u64, CallEntry>,
    next: u64,
}

impl Calls {
    /// Call ids continue after `last` (the highest the store holds).
    pub(crate) fn continue_after(&mut self, last: u64) {
        self.next = self.next.max(last);
    }

    pub(crate) fn create(
        &mut self,
        now_ms: u64,
        node: &str,
        capability: &str,
        content_type: &str,
        input: Vec<u8>,
        timeout_ms: u64,
    ) -> (u64, oneshot::Receiver<CallOutcome>, CallRow) {
        let id = self.next_id();
        let row = CallRow {
            id,
            node: node.to_owned(),
            capability: capability.to_owned(),
            input_type: content_type.to_owned(),
            input,
            status: CallStatus::Queued,
            output_type: String::new(),
            output: Vec::new(),
            message: String::new(),
            created_ms: now_ms,
            updated_ms: now_ms,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            session_call: None,
            timed_out_ms: None,
        };
        let (tx, rx) = oneshot::channel();
        self.open.insert(
            id,
            CallEntry {
                row: row.clone(),
                waiters: vec![tx],
            },
        );
        (id, rx, row)
    }

    /// Takes back a call restored from the store (no one waits for it any more; its
    /// outcome is still recorded).
    pub(crate) fn adopt(&mut self, row: CallRow) {
        self.open.insert(
            row.id,
            CallEntry {
                row,
                waiters: Vec::new(),
            },
        );
    }

    /// Drops call `id` without an outcome: its waiters see the channel close.
    pub(crate) fn forget(&mut self, id: u64) {
        self.open.remove(&id);
    }

    /// Takes the next call id.
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next = self.next.saturating_add(1);
        self.next
    }

    pub(crate) fn get(&self, id: u64) -> Option<&CallRow> {
        self.open.get(&id).map(|e| &e.row)
    }

    /// The time left of call `id` (0 when due), as the session's timeout.
    pub(crate) fn time_left(&self, id: u64, now_ms: u64) -> Option<u64> {
        self.get(id).map(|r| r.deadline_ms.saturating_sub(now_ms))
    }

    /// A non-final change; returns the row to store.
    pub(crate) fn update(
        &mut self,
        id: u64,
        now_ms: u64,
        status: CallStatus,
        session_call: Option<u64>,
    ) -> Option<CallRow> {
        let e = self.open.get_mut(&id)?;
        e.row.status = status;
        e.row.updated_ms = now_ms;
        if session_call.is_some() {
            e.row.session_call = session_call;
        }
        Some(e.row.clone())
    }

    /// Open calls whose deadline passed.
    pub(crate) fn expired(&self, now_ms: u64) -> Vec<u64> {
        self.open
            .values()
            .filter(|e| e.row.deadline_ms <= now_ms)
            .map(|e| e.row.id)
            .collect()
    }

    /// Ends call `id`: its waiters hear the outcome, it leaves the table; returns its
    /// node and the row to store. `None` if it was not open.
    pub(crate) fn finish(
        &mut self,
        id: u64,
        now_ms: u64,
        status: CallStatus,
        output: Option<(String, Vec<u8>)>,
        message: String,
    ) -> Option<(String, CallRow)> {
        let mut e = self.open.remove(&id)?;
        e.row.status = status;
        e.row.updated_ms = now_ms;
        if let Some((content_type, data)) = output {
            e.row.output_type = content_type;
            e.row.output = data;
        }
        e.row.message = message;
        let outcome = CallOutcome {
            id,
            status,
            content_type: e.row.output_type.clone(),
            output: e.row.output.clone(),
            message: e.row.message.clone(),
        };
        for w in e.waiters.drain(..) {
            let _ = w.send(outcome.clone());
        }
        Some((e.row.node.clone(), e.row))
    }

    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }
}
