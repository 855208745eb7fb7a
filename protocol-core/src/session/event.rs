//! What a session hands to its application: one event type per role.

use super::calls::CallState;
use crate::time::Instant;
use crate::wire::{
    Body, Call, CallId, Capabilities, ErrorCode, Event as EventBody, GoodbyeReason, Outcome, Seq,
    SessionId,
};

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// We said goodbye (the application asked, or the connection was idle).
    Local(GoodbyeReason),
    /// The peer said goodbye.
    Peer(GoodbyeReason),
    /// We sent this error frame.
    SentError(ErrorCode),
    /// The peer sent this error frame.
    PeerError(ErrorCode),
    /// The hello exchange did not finish in time.
    HandshakeTimeout,
    /// Data sent stayed unacknowledged, or a keep-alive ping unanswered, too long.
    AckTimeout,
    /// The transport went away.
    TransportClosed,
}

/// Why a node answered a call without handing it to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotRun {
    /// Every slot of the call window holds a running call; answered `Rejected(Busy)`.
    Busy,
    /// The call arrived with no time left; answered `TimedOut`.
    Expired,
}

/// A node session's event. Every message of the daemon's stream produces exactly one
/// event that names its `seq`, or is covered by a `Gap` or a `SessionReset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent<'a> {
    /// The hello exchange finished.
    Connected {
        session: SessionId,
        resumed: bool,
        version: u16,
    },
    Disconnected(CloseReason),
    /// The daemon lost this session (its journal): our messages in `unacked` will never
    /// be delivered; the daemon's messages from `peer_lost_from` on, if any, are gone.
    SessionReset {
        unacked: Option<(Seq, Seq)>,
        peer_lost_from: Seq,
    },
    /// Run this call, then answer with `progress` / `complete` before `deadline`.
    Call {
        seq: Seq,
        call: Call<'a>,
        deadline: Instant,
    },
    /// A call id seen before came again: answered from the window (with message
    /// `answer`, or none if the daemon acknowledged the answer already), not run again.
    DuplicateCall {
        seq: Seq,
        call_id: CallId,
        answer: Option<Seq>,
    },
    /// A call answered (by message `answer`) without running.
    CallNotRun {
        seq: Seq,
        call_id: CallId,
        why: NotRun,
        answer: Seq,
    },
    /// The daemon cancelled a call; `active` if it still runs here (stop it and
    /// complete it as `Cancelled`).
    Cancel {
        seq: Seq,
        call_id: CallId,
        active: bool,
    },
    /// The call's deadline passed; the session answered `TimedOut` (message `answer`).
    /// Stop it.
    CallExpired {
        call_id: CallId,
        answer: Seq,
    },
    /// A call that was running when this node stopped was answered `Failed` (message
    /// `answer`) after the restart: it may or may not have finished.
    CallInterrupted {
        call_id: CallId,
        answer: Seq,
    },
    /// The daemon's messages `from..=to` are lost (its replay buffer overflowed).
    Gap {
        from: Seq,
        to: Seq,
    },
    /// The store failed a journal batch; the session retries it and holds back what
    /// depends on it.
    JournalFailed,
}

/// A daemon session's event. Every message of the node's stream produces exactly one
/// event that names its `seq`, or is covered by a `Gap` or a `SessionReset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonEvent<'a> {
    /// The hello exchange finished.
    Connected {
        session: SessionId,
        resumed: bool,
        version: u16,
        platform: &'a str,
    },
    Disconnected(CloseReason),
    /// The node came back without its memory: our messages in `unacked` will never be
    /// delivered (open calls end `Lost`); the node's messages from `peer_lost_from` on,
    /// if any, are gone.
    SessionReset {
        unacked: Option<(Seq, Seq)>,
        peer_lost_from: Seq,
    },
    /// The node's complete capability set, replacing any earlier one.
    Register {
        seq: Seq,
        capabilities: Capabilities<'a>,
    },
    /// An event the node reported.
    Event {
        seq: Seq,
        event: EventBody<'a>,
    },
    /// A call changed state. `seq` names the node's message that caused it, if one did;
    /// `outcome` is the node's answer for a final state it reported.
    CallUpdate {
        call_id: CallId,
        state: CallState,
        seq: Option<Seq>,
        outcome: Option<Outcome<'a>>,
    },
    /// A progress or result for a call that is no longer open (it timed out here
    /// first): delivered as it came.
    LateAnswer {
        seq: Seq,
        body: Body<'a>,
    },
    /// The node's messages `from..=to` are lost (its replay buffer overflowed).
    Gap {
        from: Seq,
        to: Seq,
    },
    /// The store failed a journal batch; the session retries it and holds back what
    /// depends on it.
    JournalFailed,
}
