//! Rebuilding a session from its journal. A journal is checked like a peer: a corrupt or
//! foreign one gets a typed [`SetupError`], never a panic, and no position read from it
//! can overflow later arithmetic.

use super::calls::{CallRecord, CallTable, CallWindow, SeenCall};
use super::config::{MAX_SEQ, SetupError};
use super::journal::{JournalMeta, JournalRead, Track};
use super::link::{Link, Side};
use super::stream::Overflow;
use crate::wire::{Body, CallId, Seq};

fn bad(why: &'static str) -> SetupError {
    SetupError::JournalInconsistent { why }
}

/// What the stored messages told.
pub(crate) struct Messages {
    /// The last seq of the outgoing stream.
    pub(crate) last: Seq,
    /// Daemon: the largest call id among the stored call messages.
    pub(crate) max_call: CallId,
}

/// Checks the stored positions before anything is built on them.
pub(crate) fn check_meta(meta: &JournalMeta) -> Result<(), SetupError> {
    if meta.last_sent > MAX_SEQ || meta.acked > MAX_SEQ || meta.received > MAX_SEQ {
        return Err(bad("a position above MAX_SEQ"));
    }
    if meta.acked > meta.last_sent {
        return Err(bad("acknowledged beyond what was sent"));
    }
    Ok(())
}

/// Puts a journal's messages back into the replay buffer and sets the stream's
/// positions. Each message must decode as a body of `side`'s stream; seqs follow each
/// other from the acknowledged position (an evicting sender's first one may lie above).
pub(crate) fn restore_messages<B: AsMut<[u8]>>(
    link: &mut Link,
    storage: &mut Option<B>,
    meta: &JournalMeta,
    journal: &impl JournalRead,
    side: Side,
) -> Result<Messages, SetupError> {
    check_meta(meta)?;
    let mut fault: Option<SetupError> = None;
    let mut prev: Option<Seq> = None;
    let mut max_call: CallId = 0;
    let evicts = link.config.overflow == Overflow::EvictOldest;
    {
        let mut mem = storage.as_mut().map(AsMut::as_mut);
        let out = &mut link.out;
        journal
            .messages(&mut |seq, body| {
                // Rows at or below the acknowledged position are trimmed garbage.
                if fault.is_some() || seq <= meta.acked {
                    return;
                }
                let next = prev.map_or(meta.acked + 1, |p| p.saturating_add(1));
                let why = if seq > meta.last_sent {
                    Some("a message beyond the last seq sent")
                } else if seq != next && (prev.is_some() || !evicts) {
                    Some("messages missing or out of order")
                } else {
                    match postcard::from_bytes::<Body<'_>>(body) {
                        Err(_) => Some("a message that does not decode"),
                        Ok(b) if flows_from_daemon(&b) != (side == Side::Daemon) => {
                            Some("a message of the other direction")
                        }
                        Ok(b) => {
                            if let Body::Call(c) = b {
                                max_call = max_call.max(c.call_id);
                            }
                            None
                        }
                    }
                };
                if let Some(why) = why {
                    fault = Some(bad(why));
                    return;
                }
                prev = Some(seq);
                match mem.as_deref_mut() {
                    Some(mem) => {
                        if out.restore(mem, seq, body).is_err() {
                            fault = Some(bad("more messages than the replay buffer holds"));
                        }
                    }
                    None => fault = Some(SetupError::StorageNeeded),
                }
            })
            .map_err(|_| SetupError::JournalRead)?;
    }
    if let Some(e) = fault {
        return Err(e);
    }
    // Every message not acknowledged is stored, up to the last one sent (an evicting
    // sender may have dropped the oldest ones).
    let complete = match prev {
        Some(p) => p == meta.last_sent,
        None => meta.last_sent == meta.acked || evicts,
    };
    if !complete {
        return Err(bad("messages missing"));
    }
    link.out.restore_positions(meta.last_sent, meta.acked);
    Ok(Messages {
        last: meta.last_sent,
        max_call,
    })
}

/// Calls and cancels flow daemon -> node, everything else node -> daemon.
pub(crate) fn flows_from_daemon(body: &Body<'_>) -> bool {
    matches!(body, Body::Call(_) | Body::Cancel(_))
}

/// Daemon: puts the stored calls back; returns the largest id among them.
pub(crate) fn restore_calls(
    calls: &mut CallTable,
    track: &Track,
    last: Seq,
    journal: &impl JournalRead,
) -> Result<CallId, SetupError> {
    let mut fault = None;
    let mut max_id: CallId = 0;
    journal
        .calls(&mut |rec: &CallRecord| {
            if fault.is_some() {
                return;
            }
            fault = if rec.seq > last || rec.seq == 0 {
                Some("a call whose message was never sent")
            } else if calls.get(rec.id).is_some() {
                Some("a call stored twice")
            } else if calls.insert(*rec, track).is_err() {
                Some("more calls than a session keeps open")
            } else {
                max_id = max_id.max(rec.id);
                None
            };
        })
        .map_err(|_| SetupError::JournalRead)?;
    match fault {
        Some(why) => Err(bad(why)),
        None => Ok(max_id),
    }
}

/// Node: puts the stored call-window entries back.
pub(crate) fn restore_window(
    window: &mut CallWindow,
    journal: &impl JournalRead,
) -> Result<(), SetupError> {
    let mut fault = None;
    journal
        .seen(&mut |slot, call: &SeenCall| {
            if fault.is_some() {
                return;
            }
            fault = if window.find(call.id).is_some() {
                Some("a call id in two window slots")
            } else if window.restore(slot, *call).is_err() {
                Some("a window slot out of range")
            } else {
                None
            };
        })
        .map_err(|_| SetupError::JournalRead)?;
    fault.map_or(Ok(()), |why| Err(bad(why)))
}
