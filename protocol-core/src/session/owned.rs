//! Owned copies of the events, for std drivers that hand events to other tasks, and
//! for tests that compare values.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::calls::CallState;
use super::event::{CloseReason, DaemonEvent, NodeEvent, NotRun};
use crate::time::Instant;
use crate::wire::{Body, CallId, Outcome, Payload, RejectCode, Seq, SessionId, Stage};

/// An owned [`Payload`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnedPayload {
    pub content_type: String,
    pub data: Vec<u8>,
}

impl From<Payload<'_>> for OwnedPayload {
    fn from(p: Payload<'_>) -> Self {
        OwnedPayload {
            content_type: p.content_type.to_string(),
            data: p.data.to_vec(),
        }
    }
}

/// An owned [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OwnedOutcome {
    Success(OwnedPayload),
    Failed { reason: String },
    Rejected { code: RejectCode, reason: String },
    Cancelled,
    TimedOut,
}

impl From<Outcome<'_>> for OwnedOutcome {
    fn from(o: Outcome<'_>) -> Self {
        match o {
            Outcome::Success(p) => OwnedOutcome::Success(p.into()),
            Outcome::Failed { reason } => OwnedOutcome::Failed {
                reason: reason.to_string(),
            },
            Outcome::Rejected { code, reason } => OwnedOutcome::Rejected {
                code,
                reason: reason.to_string(),
            },
            Outcome::Cancelled => OwnedOutcome::Cancelled,
            Outcome::TimedOut => OwnedOutcome::TimedOut,
        }
    }
}

impl OwnedOutcome {
    /// Borrows it back, e.g. to answer a call with it.
    pub fn as_outcome(&self) -> Outcome<'_> {
        match self {
            OwnedOutcome::Success(p) => Outcome::Success(Payload {
                content_type: &p.content_type,
                data: &p.data,
            }),
            OwnedOutcome::Failed { reason } => Outcome::Failed { reason },
            OwnedOutcome::Rejected { code, reason } => Outcome::Rejected {
                code: *code,
                reason,
            },
            OwnedOutcome::Cancelled => Outcome::Cancelled,
            OwnedOutcome::TimedOut => Outcome::TimedOut,
        }
    }
}

/// An owned capability descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnedCapability {
    pub name: String,
    pub version: u32,
    pub input: String,
    pub output: String,
    pub needs_approval: bool,
}

/// An owned progress or result that came for a call no longer open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OwnedLateAnswer {
    Progress {
        call_id: CallId,
        stage: Stage,
        detail: String,
    },
    Result {
        call_id: CallId,
        outcome: OwnedOutcome,
    },
}

/// An owned [`NodeEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedNodeEvent {
    Connected {
        session: SessionId,
        resumed: bool,
        version: u16,
    },
    Disconnected(CloseReason),
    SessionReset {
        unacked: Option<(Seq, Seq)>,
        peer_lost_from: Seq,
    },
    Call {
        seq: Seq,
        call_id: CallId,
        capability: String,
        input: OwnedPayload,
        deadline: Instant,
    },
    DuplicateCall {
        seq: Seq,
        call_id: CallId,
        answer: Option<Seq>,
    },
    CallNotRun {
        seq: Seq,
        call_id: CallId,
        why: NotRun,
        answer: Seq,
    },
    Cancel {
        seq: Seq,
        call_id: CallId,
        active: bool,
    },
    CallExpired {
        call_id: CallId,
        answer: Seq,
    },
    CallInterrupted {
        call_id: CallId,
        answer: Seq,
    },
    Gap {
        from: Seq,
        to: Seq,
    },
    JournalFailed,
}

impl From<NodeEvent<'_>> for OwnedNodeEvent {
    fn from(e: NodeEvent<'_>) -> Self {
        match e {
            NodeEvent::Connected {
                session,
                resumed,
                version,
            } => OwnedNodeEvent::Connected {
                session,
                resumed,
                version,
            },
            NodeEvent::Disconnected(r) => OwnedNodeEvent::Disconnected(r),
            NodeEvent::SessionReset {
                unacked,
                peer_lost_from,
            } => OwnedNodeEvent::SessionReset {
                unacked,
                peer_lost_from,
            },
            NodeEvent::Call {
                seq,
                call,
                deadline,
            } => OwnedNodeEvent::Call {
                seq,
                call_id: call.call_id,
                capability: call.capability.to_string(),
                input: call.input.into(),
                deadline,
            },
            NodeEvent::DuplicateCall {
                seq,
                call_id,
                answer,
            } => OwnedNodeEvent::DuplicateCall {
                seq,
                call_id,
                answer,
            },
            NodeEvent::CallNotRun {
                seq,
                call_id,
                why,
                answer,
            } => OwnedNodeEvent::CallNotRun {
                seq,
                call_id,
                why,
                answer,
            },
            NodeEvent::Cancel {
                seq,
                call_id,
                active,
            } => OwnedNodeEvent::Cancel {
                seq,
                call_id,
                active,
            },
            NodeEvent::CallExpired { call_id, answer } => {
                OwnedNodeEvent::CallExpired { call_id, answer }
            }
            NodeEvent::CallInterrupted { call_id, answer } => {
                OwnedNodeEvent::CallInterrupted { call_id, answer }
            }
            NodeEvent::Gap { from, to } => OwnedNodeEvent::Gap { from, to },
            NodeEvent::JournalFailed => OwnedNodeEvent::JournalFailed,
        }
    }
}

/// An owned [`DaemonEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedDaemonEvent {
    Connected {
        session: SessionId,
        resumed: bool,
        version: u16,
        platform: String,
    },
    Disconnected(CloseReason),
    SessionReset {
        unacked: Option<(Seq, Seq)>,
        peer_lost_from: Seq,
    },
    Register {
        seq: Seq,
        capabilities: Vec<OwnedCapability>,
    },
    Event {
        seq: Seq,
        name: String,
        payload: OwnedPayload,
    },
    CallUpdate {
        call_id: CallId,
        state: CallState,
        seq: Option<Seq>,
        outcome: Option<OwnedOutcome>,
    },
    LateAnswer {
        seq: Seq,
        answer: OwnedLateAnswer,
    },
    Gap {
        from: Seq,
        to: Seq,
    },
    JournalFailed,
}

impl From<DaemonEvent<'_>> for OwnedDaemonEvent {
    fn from(e: DaemonEvent<'_>) -> Self {
        match e {
            DaemonEvent::Connected {
                session,
                resumed,
                version,
                platform,
            } => OwnedDaemonEvent::Connected {
                session,
                resumed,
                version,
                platform: platform.to_string(),
            },
            DaemonEvent::Disconnected(r) => OwnedDaemonEvent::Disconnected(r),
            DaemonEvent::SessionReset {
                unacked,
                peer_lost_from,
            } => OwnedDaemonEvent::SessionReset {
                unacked,
                peer_lost_from,
            },
            DaemonEvent::Register { seq, capabilities } => OwnedDaemonEvent::Register {
                seq,
                capabilities: capabilities
                    .iter()
                    .map(|c| OwnedCapability {
                        name: c.name.to_string(),
                        version: c.version,
                        input: c.input.to_string(),
                        output: c.output.to_string(),
                        needs_approval: c.needs_approval,
                    })
                    .collect(),
            },
            DaemonEvent::Event { seq, event } => OwnedDaemonEvent::Event {
                seq,
                name: event.name.to_string(),
                payload: event.payload.into(),
            },
            DaemonEvent::CallUpdate {
                call_id,
                state,
                seq,
                outcome,
            } => OwnedDaemonEvent::CallUpdate {
                call_id,
                state,
                seq,
                outcome: outcome.map(Into::into),
            },
            DaemonEvent::LateAnswer { seq, body } => {
                let answer = match body {
                    Body::Progress(p) => OwnedLateAnswer::Progress {
                        call_id: p.call_id,
                        stage: p.stage,
                        detail: p.detail.to_string(),
                    },
                    Body::Result(r) => OwnedLateAnswer::Result {
                        call_id: r.call_id,
                        outcome: r.outcome.into(),
                    },
                    // Only progress and results are late answers.
                    _ => OwnedLateAnswer::Result {
                        call_id: 0,
                        outcome: OwnedOutcome::Failed {
                            reason: String::new(),
                        },
                    },
                };
                OwnedDaemonEvent::LateAnswer { seq, answer }
            }
            DaemonEvent::Gap { from, to } => OwnedDaemonEvent::Gap { from, to },
            DaemonEvent::JournalFailed => OwnedDaemonEvent::JournalFailed,
        }
    }
}
