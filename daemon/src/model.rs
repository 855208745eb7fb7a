//! The daemon's model of its own state: what the runtime keeps, every store engine
//! stores and gives back, and the operator API and CLI show. One type per concept;
//! conversions happen only at the edges (protobuf for operators in `serve/operator.rs`,
//! wire messages for nodes in `runtime/app.rs`, SQL in each engine).

use serde::{Deserialize, Serialize};

use protocol_core::session::CallState;

use crate::ca::Fingerprint;
/// A pairing code and its request, as the pairing service keeps it.
pub use crate::pairing::PairingRecord;

/// One capability as a node announced it (the protocol's capability descriptor, owned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// Dotted name, e.g. `system.health`.
    pub name: String,
    pub version: u32,
    /// Content type the capability takes.
    pub input: String,
    /// Content type it answers with.
    pub output: String,
    /// A local person approves each call before it runs.
    pub needs_approval: bool,
}

/// A node: who it is, when it was seen, what it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    /// Unix milliseconds; a later put never moves it forward.
    pub first_seen_ms: u64,
    /// Unix milliseconds.
    pub last_seen_ms: u64,
    /// A daemon holds a connection from it.
    pub online: bool,
    pub platform: Option<String>,
    pub address: Option<String>,
    pub capabilities: Vec<Capability>,
}

/// Bytes with their declared content type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A capability call, from the operator's request to how it ended: the record is the
/// truth of what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Daemon-wide call id.
    pub id: u64,
    pub node: String,
    pub capability: String,
    pub input: Payload,
    pub state: CallStatus,
    /// The result, once there is one.
    pub output: Option<Payload>,
    /// Why the call failed, when it did.
    pub error: Option<String>,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub updated_ms: u64,
    pub deadline_ms: u64,
    /// The call's id in the node's session, once it went into it.
    pub session_call: Option<u64>,
    /// When the daemon gave up on the call (its deadline passed), if the node's answer
    /// came afterwards: `state` and `updated_ms` are then the node's late answer.
    pub timed_out_ms: Option<u64>,
}

/// A change of a stored call; `None` fields keep what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallUpdate {
    pub id: u64,
    pub state: CallStatus,
    pub updated_ms: u64,
    pub output: Option<Payload>,
    pub error: Option<String>,
    pub session_call: Option<u64>,
}

/// Where an event stood in the node's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventOrigin {
    /// The node's session id.
    pub session: [u8; 16],
    /// The event's seq in that session's node->daemon stream.
    pub stream_seq: u64,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub node: String,
    pub name: String,
    pub content_type: String,
    pub body: Vec<u8>,
    /// Unix milliseconds.
    pub at_ms: u64,
    pub origin: Option<EventOrigin>,
}

/// An event as stored: the event and the seq the store gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Global, increasing, never reused.
    pub seq: u64,
    pub event: NewEvent,
}

/// A paired device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub device_id: String,
    /// SHA-256 of `cert_der`.
    pub fingerprint: Fingerprint,
    /// The client certificate issued to it (the latest, after a renewal).
    pub cert_der: Vec<u8>,
    /// Unix milliseconds.
    pub paired_at_ms: u64,
    /// An operator's label.
    pub name: Option<String>,
}

/// What an operator identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperatorRole {
    Viewer,
    Admin,
}

impl OperatorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Viewer, Self::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// An operator identity the daemon issued: a client certificate of the operator CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// 1 to 64 bytes of `[A-Za-z0-9._-]` (the rule of device ids).
    pub name: String,
    pub role: OperatorRole,
    /// SHA-256 of `cert_der`.
    pub fingerprint: [u8; 32],
    /// The client certificate issued to the operator.
    pub cert_der: Vec<u8>,
    /// When the certificate expires (Unix milliseconds).
    pub not_after_ms: u64,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// When the identity was revoked (Unix milliseconds), if it was.
    pub revoked_ms: Option<u64>,
}

/// Which calls a listing wants, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFilter {
    pub node: Option<String>,
    pub state: Option<CallStatus>,
    /// Only calls created at or after this (Unix ms); 0 for no bound.
    pub since_ms: u64,
    /// Only calls created before this (Unix ms); None for no bound.
    pub until_ms: Option<u64>,
    /// Only calls with an id below this (the previous page's last id); None from the
    /// newest.
    pub before_id: Option<u64>,
    /// Most calls returned (the caller caps it; the store takes it as given, min 1).
    pub limit: u32,
}

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
