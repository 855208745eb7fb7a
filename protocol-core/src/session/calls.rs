//! Capability calls: the daemon's table of open calls and the node's window of recent
//! call ids.

use heapless::Vec;

use super::timers::Instant;
use crate::wire::{CallId, RejectCode, Seq, Stage};

/// Most calls a daemon-role session keeps open at once.
pub const MAX_OPEN_CALLS: usize = 32;
/// Call ids a node remembers (with their outcome) to answer replays without running
/// them again.
pub const CALL_WINDOW: usize = 32;

/// Where a call stands, as the daemon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallState {
    /// Accepted into the outgoing stream, not yet acknowledged by the node.
    Queued,
    /// The node acknowledged the call message: it holds the call.
    Dispatched,
    /// The node waits for a local person to allow it.
    AwaitingApproval,
    Running,
    Succeeded,
    /// Ran and failed.
    Failed,
    /// The deadline passed (on the daemon, or the node said so).
    TimedOut,
    /// The node refused to run it.
    Rejected(RejectCode),
    Cancelled,
    /// The node restarted without its memory before answering: whether the call ran is
    /// unknown, and it will not be sent again.
    Lost,
}

impl CallState {
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            CallState::Queued
                | CallState::Dispatched
                | CallState::AwaitingApproval
                | CallState::Running
        )
    }
}

/// A daemon-side call, as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRecord {
    pub id: CallId,
    /// Seq of the call message in the daemon->node stream.
    pub seq: Seq,
    pub deadline: Instant,
    pub state: CallState,
    /// The application has not yet been told of `state`.
    pub unreported: bool,
    pub cancel_requested: bool,
}

/// The daemon's open calls.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallTable {
    calls: Vec<CallRecord, MAX_OPEN_CALLS>,
}

impl CallTable {
    pub(crate) fn is_full(&self) -> bool {
        self.calls.is_full()
    }

    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    pub(crate) fn insert(&mut self, rec: CallRecord) -> Result<(), CallRecord> {
        self.calls.push(rec)
    }

    pub(crate) fn get(&self, id: CallId) -> Option<&CallRecord> {
        self.calls.iter().find(|c| c.id == id)
    }

    pub(crate) fn get_mut(&mut self, id: CallId) -> Option<&mut CallRecord> {
        self.calls.iter_mut().find(|c| c.id == id)
    }

    pub(crate) fn remove(&mut self, id: CallId) {
        if let Some(i) = self.calls.iter().position(|c| c.id == id) {
            self.calls.remove(i);
        }
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut CallRecord> {
        self.calls.iter_mut()
    }

    pub(crate) fn next_unreported(&self) -> Option<CallRecord> {
        self.calls.iter().find(|c| c.unreported).copied()
    }

    /// The earliest deadline of a call not yet final.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.calls
            .iter()
            .filter(|c| !c.state.is_final())
            .map(|c| c.deadline)
            .min()
    }
}

/// A node-side call's slot in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Handed to the application, no outcome yet.
    Active {
        stage: Option<Stage>,
        deadline: Instant,
    },
    /// Answered; the result went out as `result_seq`.
    Done { result_seq: Seq },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowEntry {
    pub id: CallId,
    pub slot: Slot,
    /// The session timed the call out; the application has not been told yet.
    pub expired_unreported: bool,
}

/// Every slot holds a call still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowBusy;

/// The node's recent call ids, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallWindow {
    entries: Vec<WindowEntry, CALL_WINDOW>,
}

impl CallWindow {
    pub(crate) fn find(&self, id: CallId) -> Option<&WindowEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    pub(crate) fn find_mut(&mut self, id: CallId) -> Option<&mut WindowEntry> {
        self.entries.iter_mut().find(|e| e.id == id)
    }

    /// Admits a new call, forgetting the oldest answered one if the window is full.
    pub(crate) fn admit(&mut self, id: CallId, deadline: Instant) -> Result<(), WindowBusy> {
        if self.entries.is_full() {
            let oldest_done = self
                .entries
                .iter()
                .position(|e| matches!(e.slot, Slot::Done { .. }) && !e.expired_unreported)
                .ok_or(WindowBusy)?;
            self.entries.remove(oldest_done);
        }
        self.entries
            .push(WindowEntry {
                id,
                slot: Slot::Active {
                    stage: None,
                    deadline,
                },
                expired_unreported: false,
            })
            .map_err(|_| WindowBusy)
    }

    pub(crate) fn active_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.slot, Slot::Active { .. }))
            .count()
    }

    /// An active call whose deadline has passed.
    pub(crate) fn first_expired(&self, now: Instant) -> Option<CallId> {
        self.entries.iter().find_map(|e| match e.slot {
            Slot::Active { deadline, .. } if deadline <= now => Some(e.id),
            _ => None,
        })
    }

    pub(crate) fn first_expired_unreported(&self) -> Option<CallId> {
        self.entries
            .iter()
            .find(|e| e.expired_unreported)
            .map(|e| e.id)
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| match e.slot {
                Slot::Active { deadline, .. } => Some(deadline),
                Slot::Done { .. } => None,
            })
            .min()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the sequence of admissions and completions, a call id still in the
        /// window is found (so a replay is answered, not run), running calls are never
        /// forgotten, and the window never exceeds its bound.
        #[test]
        fn window_never_forgets_running_calls(ops in proptest::collection::vec((0u64..80, any::<bool>()), 0..300)) {
            let mut w = CallWindow::default();
            let mut running = std::collections::BTreeSet::new();
            for (id, finish) in ops {
                if finish {
                    if let Some(e) = w.find_mut(id) {
                        if matches!(e.slot, Slot::Active { .. }) {
                            e.slot = Slot::Done { result_seq: id };
                            running.remove(&id);
                        }
                    }
                } else if w.find(id).is_none() {
                    match w.admit(id, Instant::from_millis(id)) {
                        Ok(()) => { running.insert(id); }
                        Err(WindowBusy) => prop_assert_eq!(running.len(), CALL_WINDOW),
                    }
                }
                for id in &running {
                    let active = matches!(w.find(*id).map(|e| e.slot), Some(Slot::Active { .. }));
                    prop_assert!(active, "running call {} forgotten", id);
                }
                prop_assert_eq!(w.active_count(), running.len());
            }
        }
    }
}
