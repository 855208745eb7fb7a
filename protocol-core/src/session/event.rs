//! What a session hands to its caller.

use super::calls::CallState;
use super::timers::Instant;
use crate::wire::{Body, Call, CallId, ErrorCode, GoodbyeReason, Outcome, Seq, SessionId};

/// Something that happened, for the adapter to feed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// A transport connection to the peer is up (node: dialled; daemon: accepted and
    /// authenticated as this session's node).
    Connected,
    /// One frame's payload, as produced by a [`FrameDecoder`](crate::frame::FrameDecoder)
    /// with this session's `max_frame`.
    Frame(&'a [u8]),
    /// The frame decoder failed (e.g. a prefix above our limit); the session answers
    /// with an error frame and closes.
    FrameError(crate::frame::FrameError),
    /// The transport connection is gone.
    Disconnected,
    /// The deadline from [`Output::Timeout`] was reached (or any time: it is cheap).
    Timeout,
    /// Close the connection cleanly with a goodbye.
    Close(GoodbyeReason),
}

/// What the session wants done. Call `poll_output` until it returns `Timeout`.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'o> {
    /// Send these bytes (one whole frame, prefix included) on the connection.
    Transmit(&'o [u8]),
    /// Tell the application.
    Event(Event<'o>),
    /// Close the transport connection (after the frames already transmitted).
    Close,
    /// Nothing more until this instant (or until new input); [`Instant::NEVER`] if none.
    Timeout(Instant),
}

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
    /// Data sent stayed unacknowledged too long.
    AckTimeout,
    /// The transport went away.
    TransportClosed,
}

/// Why a node answered a call without handing it to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRun {
    /// Every slot of the call window holds a running call; answered `Rejected(Busy)`.
    Busy,
    /// The call arrived with no time left; answered `TimedOut`.
    Expired,
}

/// An application event. Every message of the peer's stream produces exactly one event
/// that names its `seq` (or is covered by a `Gap` or `SessionReset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'o> {
    /// The hello exchange finished.
    Connected {
        session: SessionId,
        resumed: bool,
        version: u16,
    },
    Disconnected(CloseReason),
    /// The peer started over without its state (a node that lost its memory, or a daemon
    /// that lost its journal). Our messages in `unacked` will never be delivered; the
    /// peer's messages from `peer_lost_from` on, if it sent any, are gone.
    SessionReset {
        unacked: Option<(Seq, Seq)>,
        peer_lost_from: Seq,
    },
    /// A stream message the session does not interpret (registrations, events, or call
    /// messages that no longer match an open call).
    Message {
        seq: Seq,
        body: Body<'o>,
    },
    /// The peer's messages `from..=to` were lost (its replay buffer overflowed).
    Gap {
        from: Seq,
        to: Seq,
    },
    /// Daemon: a call changed state. `seq` names the node message that caused it, if one
    /// did; `outcome` is the node's answer for a final state it reported.
    CallUpdate {
        call_id: CallId,
        state: CallState,
        seq: Option<Seq>,
        outcome: Option<Outcome<'o>>,
    },
    /// Node: run this call, then answer with `progress` / `complete`.
    Call {
        seq: Seq,
        call: Call<'o>,
        deadline: Instant,
    },
    /// Node: a call id seen before came again; it was answered from the window, with
    /// the message `answer` if one was needed (none if the daemon acknowledged the
    /// result already).
    DuplicateCall {
        seq: Seq,
        call_id: CallId,
        answer: Option<Seq>,
    },
    /// Node: a call was answered (by message `answer`) without running.
    CallNotRun {
        seq: Seq,
        call_id: CallId,
        why: NotRun,
        answer: Seq,
    },
    /// Node: the daemon cancelled a call; `active` if it is still running here (the
    /// application should stop it and complete it as `Cancelled`).
    Cancel {
        seq: Seq,
        call_id: CallId,
        active: bool,
    },
    /// Node: the call's deadline passed; the session answered `TimedOut` (message
    /// `answer`), the application should stop it.
    CallExpired {
        call_id: CallId,
        answer: Seq,
    },
    /// The `out` buffer passed to `poll_output` cannot hold what is next.
    BufferTooSmall {
        needed: usize,
    },
}
