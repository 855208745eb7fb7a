//! The runtime's calls: from the operator's request to a final state, with a deadline
//! the runtime enforces whether or not the node is connected.

use std::collections::HashMap;

use tokio::sync::oneshot;

pub use crate::model::CallStatus;
use crate::model::{Call, Payload};

/// The longest timeout a call may ask for (one day).
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

pub(crate) struct CallEntry {
    pub(crate) row: Call,
    pub(crate) waiters: Vec<oneshot::Sender<Call>>,
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
    ) -> (u64, oneshot::Receiver<Call>, Call) {
        let id = self.next_id();
        let row = Call {
            id,
            node: node.to_owned(),
            capability: capability.to_owned(),
            input: Payload {
                content_type: content_type.to_owned(),
                bytes: input,
            },
            state: CallStatus::Queued,
            output: None,
            error: None,
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
    pub(crate) fn adopt(&mut self, row: Call) {
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

    pub(crate) fn get(&self, id: u64) -> Option<&Call> {
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
    ) -> Option<Call> {
        let e = self.open.get_mut(&id)?;
        e.row.state = status;
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
    ) -> Option<(String, Call)> {
        let mut e = self.open.remove(&id)?;
        e.row.state = status;
        e.row.updated_ms = now_ms;
        if let Some((content_type, bytes)) = output {
            e.row.output = Some(Payload {
                content_type,
                bytes,
            });
        }
        e.row.error = (!message.is_empty()).then_some(message);
        for w in e.waiters.drain(..) {
            let _ = w.send(e.row.clone());
        }
        Some((e.row.node.clone(), e.row))
    }

    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }
}
