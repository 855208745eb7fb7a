//! The node protocol's message set.
//!
//! The order of variants in every enum here *is* the wire tag (postcard encodes the
//! variant index as a varint). Variants are only ever appended; see `WIRE.md`.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use super::version::VersionRange;

/// Position in one direction of a session's ordered stream. The first message is 1;
/// 0 means "nothing yet".
pub type Seq = u64;
/// A capability call's id, chosen by the daemon, unique per node.
pub type CallId = u64;
/// Names a session across reconnects.
pub type SessionId = [u8; 16];

/// Most capabilities a node announces in one [`Register`].
pub const MAX_CAPABILITIES: usize = 32;

/// One frame's content.
// Boxing the large variants would need an allocator; a message lives briefly on the stack.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Tag 0. Node -> daemon, first message on a connection.
    #[serde(borrow)]
    Hello(Hello<'a>),
    /// Tag 1. Daemon -> node, answer to a hello that was accepted.
    HelloAck(HelloAck),
    /// Tag 2. A numbered message of the session's ordered stream, either direction.
    #[serde(borrow)]
    Data(Data<'a>),
    /// Tag 3. Cumulative acknowledgement, when there is no data to carry it.
    Ack(Ack),
    /// Tag 4. Messages the sender no longer holds and will never deliver.
    Gap(Gap),
    /// Tag 5.
    Ping(Ping),
    /// Tag 6.
    Pong(Ping),
    /// Tag 7. A typed failure; the sender closes the connection after it.
    #[serde(borrow)]
    Error(ErrorFrame<'a>),
    /// Tag 8. A clean close.
    #[serde(borrow)]
    Goodbye(Goodbye<'a>),
}

impl Message<'_> {
    /// Number of top-level kinds this version knows; tags at or above it are unknown.
    pub const KINDS: u32 = 9;

    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::HelloAck(_) => "hello-ack",
            Message::Data(d) => d.body.kind(),
            Message::Ack(_) => "ack",
            Message::Gap(_) => "gap",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::Error(_) => "error",
            Message::Goodbye(_) => "goodbye",
        }
    }
}

/// Resume an earlier session instead of starting a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub session: SessionId,
    /// Highest daemon->node seq the node has received in order; the daemon replays
    /// from `received + 1`.
    pub received: Seq,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello<'a> {
    /// Versions the node speaks.
    pub versions: VersionRange,
    /// Largest frame payload the node accepts.
    pub max_frame: u32,
    /// Idle timeout the node wants, in milliseconds; the session uses the smaller of both.
    pub idle_timeout_ms: u32,
    /// The node's device id (must match its certificate's subject).
    pub node_id: &'a str,
    /// What the node runs on, e.g. `linux-x86_64`, `stm32f4`.
    pub platform: &'a str,
    pub resume: Option<Resume>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The version chosen for this connection.
    pub version: u16,
    /// Largest frame payload the daemon accepts.
    pub max_frame: u32,
    /// Idle timeout the daemon wants, in milliseconds.
    pub idle_timeout_ms: u32,
    pub session: SessionId,
    /// True if the session named in the hello was resumed; false if a new one began.
    pub resumed: bool,
    /// Highest node->daemon seq the daemon has received in order; the node replays from
    /// `received + 1`.
    pub received: Seq,
}

/// A numbered stream message with a piggybacked cumulative acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data<'a> {
    pub seq: Seq,
    /// Everything up to and including this seq of the *other* direction was received.
    pub ack: Seq,
    #[serde(borrow)]
    pub body: Body<'a>,
}

/// What a stream message carries.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body<'a> {
    /// Tag 0. Node -> daemon: the node's complete capability set, replacing any earlier one.
    #[serde(borrow)]
    Register(Register<'a>),
    /// Tag 1. Daemon -> node.
    #[serde(borrow)]
    Call(Call<'a>),
    /// Tag 2. Node -> daemon: an interim state of a call.
    #[serde(borrow)]
    Progress(CallProgress<'a>),
    /// Tag 3. Node -> daemon: a call's final outcome.
    #[serde(borrow)]
    Result(CallResult<'a>),
    /// Tag 4. Daemon -> node.
    Cancel(Cancel),
    /// Tag 5. Node -> daemon.
    #[serde(borrow)]
    Event(Event<'a>),
}

impl Body<'_> {
    /// Number of body kinds this version knows.
    pub const KINDS: u32 = 6;

    pub fn kind(&self) -> &'static str {
        match self {
            Body::Register(_) => "register",
            Body::Call(_) => "call",
            Body::Progress(_) => "progress",
            Body::Result(_) => "result",
            Body::Cancel(_) => "cancel",
            Body::Event(_) => "event",
        }
    }
}

/// Opaque bytes with a declared content type (e.g. `application/json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload<'a> {
    pub content_type: &'a str,
    #[serde(with = "serde_bytes")]
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityDescriptor<'a> {
    /// Dotted name, e.g. `system.health`.
    pub name: &'a str,
    pub version: u32,
    /// Content type the capability takes.
    pub input: &'a str,
    /// Content type it answers with.
    pub output: &'a str,
    /// A local person must approve each call before it runs.
    pub needs_approval: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register<'a> {
    #[serde(borrow)]
    pub capabilities: Vec<CapabilityDescriptor<'a>, MAX_CAPABILITIES>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call<'a> {
    pub call_id: CallId,
    pub capability: &'a str,
    /// Time left until the call's deadline when this message was sent, in milliseconds.
    /// Relative, because the two clocks are not synchronised.
    pub timeout_ms: u32,
    #[serde(borrow)]
    pub input: Payload<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// Waiting for a local person to allow the call.
    AwaitingApproval,
    /// Running.
    Running,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallProgress<'a> {
    pub call_id: CallId,
    pub stage: Stage,
    pub detail: &'a str,
}

/// Why a node refused to run a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectCode {
    UnknownCapability,
    /// A local person said no.
    Denied,
    BadInput,
    Busy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<'a> {
    /// Tag 0.
    #[serde(borrow)]
    Success(Payload<'a>),
    /// Tag 1. Ran and failed.
    Failed { reason: &'a str },
    /// Tag 2. Not run.
    Rejected { code: RejectCode, reason: &'a str },
    /// Tag 3. Stopped by a cancel.
    Cancelled,
    /// Tag 4. The deadline passed on the node.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallResult<'a> {
    pub call_id: CallId,
    #[serde(borrow)]
    pub outcome: Outcome<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub call_id: CallId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<'a> {
    pub name: &'a str,
    #[serde(borrow)]
    pub payload: Payload<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Everything up to and including this seq was received.
    pub received: Seq,
}

/// Messages `from..=to` are gone: the receiver learns of the loss instead of waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub from: Seq,
    pub to: Seq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub nonce: u64,
}

/// Typed error codes of an [`ErrorFrame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Tag 0. No common protocol version; both ranges named.
    VersionMismatch {
        client: VersionRange,
        server: VersionRange,
    },
    /// Tag 1. A frame above the receiver's limit.
    FrameTooLarge { len: u32, max: u32 },
    /// Tag 2. A payload that does not decode.
    Malformed,
    /// Tag 3. A message (or stream body) tag this version does not know.
    UnknownMessage { tag: u32 },
    /// Tag 4. A valid message at the wrong time or in the wrong direction.
    UnexpectedMessage,
    /// Tag 5. The peer's identity is not accepted.
    Unauthorized,
    /// Tag 6. The peer's certificate was revoked.
    Revoked,
    /// Tag 7. The receiver's queues are full; try later.
    Overloaded,
    /// Tag 8.
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame<'a> {
    pub code: ErrorCode,
    /// A short human-readable reason.
    pub reason: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GoodbyeReason {
    Shutdown,
    Restart,
    IdleTimeout,
    /// A newer connection of the same node took over the session.
    Replaced,
    Revoked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye<'a> {
    pub reason: GoodbyeReason,
    pub detail: &'a str,
}
