//! Limits and timers of a session, and the errors of its setup and commands.

use super::ring::RECORD_HEADER;
use super::stream::Overflow;
use crate::frame::{HEADER_LEN, MIN_MAX_FRAME};
use crate::wire::{self, Seq, VersionRange};

/// Longest node id a session stores.
pub const MAX_NODE_ID: usize = 64;
/// Longest platform name a session stores.
pub const MAX_PLATFORM: usize = 32;
/// Highest seq either side may use. A peer's number above it is refused before it moves
/// any state, so no arithmetic on a received position can overflow. (At a million
/// messages a second a stream reaches it after 146,000 years.)
pub const MAX_SEQ: Seq = 1 << 62;
/// Shortest idle timeout a peer may impose: a smaller one would make us ping in a loop.
pub const MIN_IDLE_TIMEOUT_MS: u32 = 1_000;
/// Most bytes a `Data` frame adds around its body (tag and two varints).
pub(crate) const DATA_OVERHEAD: usize = 1 + 10 + 10;
/// Most bytes of an answer a node queues by itself: `Result { call_id: u64::MAX,
/// Failed(INTERRUPTED) }` (tag, varint id, outcome tag, length, 31 bytes of reason).
pub(crate) const MAX_OWN_ANSWER: usize = 1 + 10 + 1 + 1 + 31;

/// Limits and timers of a session. `const`, so a microcontroller keeps it in flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub versions: VersionRange,
    /// Largest frame payload we accept (announced in the hello) and the largest we send.
    pub max_frame: u32,
    /// Idle timeout we want; the connection uses the smaller of both sides' (never below
    /// [`MIN_IDLE_TIMEOUT_MS`]).
    pub idle_timeout_ms: u32,
    /// Send a ping after this long without sending anything (capped at a third of the
    /// idle timeout in use).
    pub keep_alive_ms: u32,
    /// Time allowed for the hello exchange.
    pub handshake_timeout_ms: u32,
    /// Longest an acknowledgement waits for outgoing data to ride on.
    pub ack_delay_ms: u32,
    /// Acknowledge at once when this many delivered messages are unacknowledged.
    pub ack_every: u32,
    /// Close the connection when data sent on it stays unacknowledged this long, or
    /// when nothing at all comes back this long after a keep-alive ping: the connection
    /// is stuck (or its peer gone), and a new one resumes where the peer stands.
    pub ack_timeout_ms: u32,
    /// Bytes of the replay buffer (unacknowledged outgoing messages).
    pub replay_bytes: usize,
    /// Bytes of the inbox (received messages not yet handed to the application); at
    /// least one frame of `max_frame` bytes plus [`RECORD_HEADER`](super::RECORD_HEADER).
    pub inbox_bytes: usize,
    pub overflow: Overflow,
    /// The session's state is journaled: it emits [`JournalOp`](super::JournalOp)s and
    /// waits for their commit before it transmits what they carry or acknowledges what
    /// they record. Off on a microcontroller, whose session lives in RAM.
    pub durable: bool,
}

impl Config {
    /// Server defaults (`DESIGN.md`): 512 KiB frames, idle 30 s, keep-alive 5 s,
    /// handshake 10 s, journaled; `replay_bytes` of replay buffer.
    pub const fn server(replay_bytes: usize) -> Self {
        let max_frame = crate::frame::DEFAULT_MAX_FRAME;
        Config {
            versions: wire::PROTOCOL_VERSIONS,
            max_frame,
            idle_timeout_ms: 30_000,
            keep_alive_ms: 5_000,
            handshake_timeout_ms: 10_000,
            ack_delay_ms: 20,
            ack_every: 2,
            ack_timeout_ms: 5_000,
            replay_bytes,
            inbox_bytes: inbox_for(max_frame),
            overflow: Overflow::Reject,
            durable: true,
        }
    }

    /// Microcontroller defaults: 2 KiB frames, server timers, state in RAM.
    pub const fn embedded(replay_bytes: usize) -> Self {
        let mut c = Self::server(replay_bytes);
        c.max_frame = 2048;
        c.inbox_bytes = inbox_for(2048);
        c.durable = false;
        c
    }

    /// The same configuration with another frame limit (and the inbox it needs).
    pub const fn with_max_frame(mut self, max_frame: u32) -> Self {
        self.max_frame = max_frame;
        self.inbox_bytes = inbox_for(max_frame);
        self
    }

    /// Bytes of storage a session needs while it holds data: the replay buffer and the
    /// inbox. Lent by the driver; see `SESSION.md`, "Memory".
    pub const fn storage_len(&self) -> usize {
        self.replay_bytes + self.inbox_bytes
    }

    /// Bytes of a transmit buffer that always holds the next frame.
    pub const fn transmit_len(&self) -> usize {
        HEADER_LEN + self.max_frame as usize
    }

    pub(crate) const fn check(&self) -> Result<(), SetupError> {
        if self.max_frame < MIN_MAX_FRAME {
            return Err(SetupError::FrameLimitTooSmall);
        }
        if self.inbox_bytes < inbox_for(self.max_frame) {
            return Err(SetupError::InboxTooSmall {
                needed: inbox_for(self.max_frame),
            });
        }
        // A call taken must stay answerable (`TimedOut`, or `Failed` after a restart).
        if self.replay_bytes < RECORD_HEADER + MAX_OWN_ANSWER {
            return Err(SetupError::ReplayTooSmall);
        }
        Ok(())
    }
}

/// Inbox bytes that hold one frame of `max_frame` bytes.
pub const fn inbox_for(max_frame: u32) -> usize {
    RECORD_HEADER + max_frame as usize
}

/// Why a session could not be built, or storage not lent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupError {
    /// The lent storage is smaller than [`Config::storage_len`].
    StorageTooSmall { needed: usize, available: usize },
    /// `max_frame` below [`MIN_MAX_FRAME`].
    FrameLimitTooSmall,
    /// `inbox_bytes` cannot hold one frame of `max_frame` bytes.
    InboxTooSmall { needed: usize },
    /// `replay_bytes` cannot hold the answers a session queues by itself (57 bytes).
    ReplayTooSmall,
    /// A node id or platform name longer than [`MAX_NODE_ID`] / [`MAX_PLATFORM`].
    NameTooLong,
    /// Reading the journal failed.
    JournalRead,
    /// The journal holds messages but no storage was lent to restore them into.
    StorageNeeded,
    /// The journal cannot be this session's: positions out of range or out of order,
    /// messages that do not decode or flow the other way, more than the storage or
    /// tables hold. `why` names the first fault found. A journal is checked like a peer.
    JournalInconsistent { why: &'static str },
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::StorageTooSmall { needed, available } => {
                write!(f, "session storage of {available} bytes, {needed} needed")
            }
            SetupError::FrameLimitTooSmall => {
                write!(f, "frame limit below the minimum of {MIN_MAX_FRAME} bytes")
            }
            SetupError::InboxTooSmall { needed } => {
                write!(f, "inbox cannot hold one frame ({needed} bytes needed)")
            }
            SetupError::ReplayTooSmall => f.write_str("replay buffer cannot hold a message"),
            SetupError::NameTooLong => f.write_str("node id or platform name too long"),
            SetupError::JournalRead => f.write_str("reading the journal failed"),
            SetupError::StorageNeeded => f.write_str("the journal holds messages: lend storage"),
            SetupError::JournalInconsistent { why } => {
                write!(f, "the journal is inconsistent: {why}")
            }
        }
    }
}

impl core::error::Error for SetupError {}

/// Why an application command or an input was refused. Nothing was queued or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// The replay buffer has no room now; try again after the peer acknowledges.
    Full,
    /// The message can never be sent: larger than the replay buffer or a frame.
    TooLarge,
    /// [`MAX_OPEN_CALLS`](super::MAX_OPEN_CALLS) calls are open.
    TooManyCalls,
    /// No open call has this id.
    UnknownCall,
    /// The call already reached a final state.
    Finished,
    /// The message cannot be encoded.
    Unencodable,
    /// The session holds no storage: [`lend`](super::NodeSession::lend) it first.
    NoStorage,
    /// `handle_frame`: the inbox holds a message the application has not taken yet
    /// (`poll_event`), or one whose handling waits for a journal commit. Backpressure,
    /// not an error: nothing of the frame was stored; offer it again after the events
    /// are drained or the batch committed. (An acknowledgement it carries was applied.)
    InboxFull,
}

impl core::fmt::Display for SessionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SessionError::Full => "replay buffer full",
            SessionError::TooLarge => "message too large for the replay buffer or a frame",
            SessionError::TooManyCalls => "too many open calls",
            SessionError::UnknownCall => "no open call with this id",
            SessionError::Finished => "the call already finished",
            SessionError::Unencodable => "message cannot be encoded",
            SessionError::NoStorage => "the session holds no storage",
            SessionError::InboxFull => {
                "the inbox is full: drain events or commit, then offer again"
            }
        })
    }
}

impl core::error::Error for SessionError {}
