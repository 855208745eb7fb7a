//! Capability calls: the daemon's table of open calls and the node's window of recent
//! call ids, each entry with its journal mark.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use super::journal::{JournalOp, Mark, Track};
use crate::time::Instant;
use crate::wire::{CallId, RejectCode, Seq, Stage};

/// Most calls a daemon session keeps open at once.
pub const MAX_OPEN_CALLS: usize = 32;
/// Call ids a node remembers (with their outcome) to answer replays without running
/// them again.
pub const CALL_WINDOW: usize = 32;

/// Where a call stands, as the daemon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// The call's message is larger than the node accepts: it was never sent.
    Undeliverable,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallRecord {
    pub id: CallId,
    /// Seq of the call message in the daemon->node stream.
    pub seq: Seq,
    /// On the daemon's clock.
    pub deadline: Instant,
    /// The timeout asked for: the time left put on the wire never exceeds it, even when
    /// the clock steps back.
    pub timeout_ms: u32,
    pub state: CallState,
    /// The application has not yet been told of `state`.
    pub unreported: bool,
    pub cancel_requested: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CallEntry {
    rec: CallRecord,
    mark: Mark,
    /// Reported final; dropped once its removal is durable.
    removed: bool,
}

/// The daemon's open calls.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallTable {
    calls: Vec<CallEntry, MAX_OPEN_CALLS>,
}

impl CallTable {
    pub(crate) fn is_full(&self) -> bool {
        self.calls.is_full()
    }

    /// Open calls (not yet reported final).
    pub(crate) fn len(&self) -> usize {
        self.calls.iter().filter(|c| !c.removed).count()
    }

    pub(crate) fn insert(&mut self, rec: CallRecord, track: &Track) -> Result<(), CallRecord> {
        let mut mark = Mark::Clean;
        track.touch(&mut mark);
        self.calls
            .push(CallEntry {
                rec,
                mark,
                removed: false,
            })
            .map_err(|e| e.rec)
    }

    pub(crate) fn get(&self, id: CallId) -> Option<&CallRecord> {
        self.calls
            .iter()
            .find(|c| c.rec.id == id && !c.removed)
            .map(|c| &c.rec)
    }

    /// Changes an open call; the change is journaled.
    pub(crate) fn update(
        &mut self,
        id: CallId,
        track: &Track,
        change: impl FnOnce(&mut CallRecord),
    ) -> Option<CallRecord> {
        let c = self
            .calls
            .iter_mut()
            .find(|c| c.rec.id == id && !c.removed)?;
        change(&mut c.rec);
        track.touch(&mut c.mark);
        Some(c.rec)
    }

    /// Changes every open call `pick` selects.
    pub(crate) fn update_all(
        &mut self,
        track: &Track,
        mut pick: impl FnMut(&CallRecord) -> bool,
        mut change: impl FnMut(&mut CallRecord),
    ) {
        for c in self.calls.iter_mut().filter(|c| !c.removed) {
            if pick(&c.rec) {
                change(&mut c.rec);
                track.touch(&mut c.mark);
            }
        }
    }

    /// The application saw the call's final state: drop it (once that is durable).
    pub(crate) fn remove(&mut self, id: CallId, track: &Track) {
        let Some(i) = self.calls.iter().position(|c| c.rec.id == id && !c.removed) else {
            return;
        };
        if track.enabled {
            self.calls[i].removed = true;
            self.calls[i].mark = Mark::Dirty;
        } else {
            self.calls.remove(i);
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &CallRecord> {
        self.calls.iter().filter(|c| !c.removed).map(|c| &c.rec)
    }

    /// True when nothing about call `id` waits for the journal (a call no longer in
    /// the table was dropped once its removal was durable).
    pub(crate) fn is_durable(&self, id: CallId) -> bool {
        self.calls
            .iter()
            .filter(|c| c.rec.id == id)
            .all(|c| c.mark == Mark::Clean)
    }

    pub(crate) fn next_unreported(&self) -> Option<CallRecord> {
        self.iter().find(|c| c.unreported).copied()
    }

    /// The earliest deadline of a call not yet final.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.iter()
            .filter(|c| !c.state.is_final())
            .map(|c| c.deadline)
            .min()
    }

    /// A change waits for the journal.
    pub(crate) fn dirty(&self) -> bool {
        self.calls.iter().any(|c| c.mark == Mark::Dirty)
    }

    pub(crate) fn poll_journal(&mut self) -> Option<JournalOp<'static>> {
        let c = self.calls.iter_mut().find(|c| c.mark == Mark::Dirty)?;
        c.mark.polled();
        Some(if c.removed {
            JournalOp::RemoveCall(c.rec.id)
        } else {
            JournalOp::PutCall(c.rec)
        })
    }

    pub(crate) fn committed(&mut self) {
        for c in self.calls.iter_mut() {
            c.mark.committed();
        }
        self.calls.retain(|c| !(c.removed && c.mark == Mark::Clean));
    }

    pub(crate) fn failed(&mut self) {
        for c in self.calls.iter_mut() {
            c.mark.failed();
        }
    }

    /// Every call is journaled again (after the journal was cleared).
    pub(crate) fn touch_all(&mut self, track: &Track) {
        for c in self.calls.iter_mut() {
            track.touch(&mut c.mark);
        }
    }
}

/// Where a node-side call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Slot {
    /// Handed (or about to be handed) to the application, no outcome yet.
    Active {
        stage: Option<Stage>,
        /// On the node's clock.
        deadline: Instant,
    },
    /// Answered; the answer went out as `result_seq`.
    Done { result_seq: Seq },
}

/// A call in the node's window, as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeenCall {
    pub id: CallId,
    pub slot: Slot,
    /// Admission order: the oldest answered call is forgotten first.
    pub age: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowEntry {
    pub(crate) call: SeenCall,
    pub(crate) mark: Mark,
    /// The session timed the call out; the application has not been told yet.
    pub(crate) expired_unreported: bool,
    /// Timed out, but the replay buffer had no room for the answer yet.
    pub(crate) answer_owed: bool,
    /// Handed to the application (an entry admitted but not yet durable is not).
    pub(crate) handed: bool,
}

/// Every slot holds a call still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowBusy;

/// The node's recent call ids, in fixed slots (the journal keys them by slot).
#[derive(Debug, Clone)]
pub(crate) struct CallWindow {
    slots: [Option<WindowEntry>; CALL_WINDOW],
    next_age: u64,
}

impl Default for CallWindow {
    fn default() -> Self {
        CallWindow {
            slots: [None; CALL_WINDOW],
            next_age: 0,
        }
    }
}

impl CallWindow {
    pub(crate) fn find(&self, id: CallId) -> Option<&WindowEntry> {
        self.slots.iter().flatten().find(|e| e.call.id == id)
    }

    fn find_mut(&mut self, id: CallId) -> Option<&mut WindowEntry> {
        self.slots.iter_mut().flatten().find(|e| e.call.id == id)
    }

    /// Changes a call's slot; the change is journaled.
    pub(crate) fn set(&mut self, id: CallId, slot: Slot, track: &Track) {
        if let Some(e) = self.find_mut(id) {
            e.call.slot = slot;
            track.touch(&mut e.mark);
        }
    }

    pub(crate) fn entry_mut(&mut self, id: CallId) -> Option<&mut WindowEntry> {
        self.find_mut(id)
    }

    /// Admits a new call, forgetting the oldest answered one if the window is full.
    pub(crate) fn admit(
        &mut self,
        id: CallId,
        deadline: Instant,
        track: &Track,
    ) -> Result<(), WindowBusy> {
        let free = self.slots.iter().position(Option::is_none);
        let slot = match free {
            Some(i) => i,
            None => self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.map(|e| (i, e)))
                .filter(|(_, e)| matches!(e.call.slot, Slot::Done { .. }) && !e.expired_unreported)
                .min_by_key(|(_, e)| e.call.age)
                .map(|(i, _)| i)
                .ok_or(WindowBusy)?,
        };
        let mut mark = Mark::Clean;
        track.touch(&mut mark);
        self.slots[slot] = Some(WindowEntry {
            call: SeenCall {
                id,
                slot: Slot::Active {
                    stage: None,
                    deadline,
                },
                age: self.next_age,
            },
            mark,
            expired_unreported: false,
            answer_owed: false,
            handed: false,
        });
        self.next_age = self.next_age.wrapping_add(1);
        Ok(())
    }

    /// Puts a journaled entry back.
    pub(crate) fn restore(&mut self, slot: u8, call: SeenCall) -> Result<(), WindowBusy> {
        let s = self.slots.get_mut(usize::from(slot)).ok_or(WindowBusy)?;
        *s = Some(WindowEntry {
            call,
            mark: Mark::Clean,
            expired_unreported: false,
            answer_owed: false,
            handed: true,
        });
        self.next_age = self.next_age.max(call.age.wrapping_add(1));
        Ok(())
    }

    pub(crate) fn active_count(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|e| matches!(e.call.slot, Slot::Active { .. }))
            .count()
    }

    /// Active calls, in no particular order.
    pub(crate) fn active_ids(&self) -> impl Iterator<Item = CallId> + '_ {
        self.slots
            .iter()
            .flatten()
            .filter(|e| matches!(e.call.slot, Slot::Active { .. }))
            .map(|e| e.call.id)
    }

    /// An active call handed to the application whose deadline has passed and whose
    /// answer is not yet owed. (One not handed out yet is answered when it would be.)
    pub(crate) fn first_expired(&self, now: Instant) -> Option<CallId> {
        self.slots.iter().flatten().find_map(|e| match e.call.slot {
            Slot::Active { deadline, .. } if deadline <= now && !e.answer_owed && e.handed => {
                Some(e.call.id)
            }
            _ => None,
        })
    }

    /// A timed-out call whose answer found no room yet.
    pub(crate) fn first_owed(&self) -> Option<CallId> {
        self.slots
            .iter()
            .flatten()
            .find(|e| e.answer_owed)
            .map(|e| e.call.id)
    }

    pub(crate) fn first_expired_unreported(&self) -> Option<(CallId, Slot)> {
        self.slots
            .iter()
            .flatten()
            .find(|e| e.expired_unreported && !e.answer_owed)
            .map(|e| (e.call.id, e.call.slot))
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flatten()
            .filter(|e| !e.answer_owed && e.handed)
            .filter_map(|e| match e.call.slot {
                Slot::Active { deadline, .. } => Some(deadline),
                Slot::Done { .. } => None,
            })
            .min()
    }

    /// True once the entry naming `id` is durable.
    pub(crate) fn is_durable(&self, id: CallId) -> bool {
        self.find(id).is_some_and(|e| e.mark == Mark::Clean)
    }

    pub(crate) fn clear(&mut self) {
        self.slots = [None; CALL_WINDOW];
    }

    /// A change waits for the journal.
    pub(crate) fn dirty(&self) -> bool {
        self.slots.iter().flatten().any(|e| e.mark == Mark::Dirty)
    }

    pub(crate) fn poll_journal(&mut self) -> Option<JournalOp<'static>> {
        let (i, e) = self
            .slots
            .iter_mut()
            .enumerate()
            .find_map(|(i, e)| e.as_mut().filter(|e| e.mark == Mark::Dirty).map(|e| (i, e)))?;
        e.mark.polled();
        Some(JournalOp::PutSeen {
            slot: u8::try_from(i).unwrap_or(u8::MAX),
            call: e.call,
        })
    }

    pub(crate) fn committed(&mut self) {
        for e in self.slots.iter_mut().flatten() {
            e.mark.committed();
        }
    }

    pub(crate) fn failed(&mut self) {
        for e in self.slots.iter_mut().flatten() {
            e.mark.failed();
        }
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
            let track = Track::new(false);
            let mut w = CallWindow::default();
            let mut running = std::collections::BTreeSet::new();
            for (id, finish) in ops {
                if finish {
                    if matches!(w.find(id).map(|e| e.call.slot), Some(Slot::Active { .. })) {
                        w.set(id, Slot::Done { result_seq: id }, &track);
                        running.remove(&id);
                    }
                } else if w.find(id).is_none() {
                    match w.admit(id, Instant::from_millis(id), &track) {
                        Ok(()) => { running.insert(id); }
                        Err(WindowBusy) => prop_assert_eq!(running.len(), CALL_WINDOW),
                    }
                }
                for id in &running {
                    let active = matches!(w.find(*id).map(|e| e.call.slot), Some(Slot::Active { .. }));
                    prop_assert!(active, "running call {} forgotten", id);
                }
                prop_assert_eq!(w.active_count(), running.len());
            }
        }
    }
}
