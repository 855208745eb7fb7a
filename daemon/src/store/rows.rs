//! The rows every store engine keeps and gives back.

use serde::{Deserialize, Serialize};

use crate::ca::Fingerprint;

/// One capability as a node announced it (the protocol's capability descriptor, owned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityRow {
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

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    /// Unix milliseconds; a later put never moves it forward.
    pub first_seen_ms: u64,
    /// Unix milliseconds.
    pub last_seen_ms: u64,
    /// The daemon's word for where the node stands (e.g. `online`, `offline`).
    pub state: String,
    pub platform: Option<String>,
    pub address: Option<String>,
    pub capabilities: Vec<CapabilityRow>,
}

/// Bytes with their declared content type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A call as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    /// Daemon-wide call id.
    pub id: u64,
    pub node: String,
    pub capability: String,
    pub input: Payload,
    /// The caller's word for where the call stands (e.g. `queued`, `succeeded`).
    pub state: String,
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
    pub state: String,
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

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Global, increasing, never reused.
    pub seq: u64,
    pub node: String,
    pub name: String,
    pub content_type: String,
    pub body: Vec<u8>,
    pub at_ms: u64,
    pub origin: Option<EventOrigin>,
}

/// How many events, and how old, are kept. `None` keeps without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Keep at most this many of the newest events (by seq).
    pub max_events: Option<u64>,
    /// Drop events whose timestamp is more than this many milliseconds before `now`.
    pub max_age_ms: Option<u64>,
}

/// A paired device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
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
