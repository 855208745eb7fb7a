//! Framing: `[len: u32 big-endian][payload: len bytes]`.
//!
//! The limit is a property of the *receiver*: each peer announces the largest frame it
//! accepts, and the sender refuses to produce anything larger ([`encode_frame`]). The
//! decoder checks the prefix against its own limit before it buffers a single body byte.

mod decoder;
mod encoder;

pub use decoder::{FrameDecoder, Progress, whole_frame};
pub use encoder::{encode_frame, encode_frame_with, encoded_len};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Largest frame (payload bytes, prefix excluded) a server accepts unless configured otherwise.
pub const DEFAULT_MAX_FRAME: u32 = 512 * 1024;

/// Smallest frame limit a peer may announce: room for a hello and an error frame.
pub const MIN_MAX_FRAME: u32 = 256;

/// A framing failure. After a decoding error the byte stream is out of step and the
/// decoder stays failed: the connection must be closed (after sending an error frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than the limit; no body byte was buffered.
    TooLarge { len: u32, max: u32 },
    /// The caller's buffer cannot hold the frame (encoding) or the limit (decoder set-up).
    BufferTooSmall { needed: usize, available: usize },
    /// A previous error left the decoder failed.
    Failed,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            FrameError::BufferTooSmall { needed, available } => {
                write!(f, "buffer of {available} bytes cannot hold {needed} bytes")
            }
            FrameError::Failed => f.write_str("frame decoder failed earlier; close the connection"),
        }
    }
}

impl core::error::Error for FrameError {}
