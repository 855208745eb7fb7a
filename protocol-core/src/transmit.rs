//! The transmit rule shared by every state machine of this crate.
//!
//! `poll_transmit(now, buf)` writes at most one whole frame (length prefix included)
//! into the caller's `buf` and says what to do with it. The frame counts as handed over
//! when it is returned: the driver writes those bytes whole (keeping them across a
//! partial or blocked write) before it reports the connection gone. A driver may call
//! `poll_transmit` again on the rest of its buffer to batch several frames into one
//! write. When `buf` cannot hold the next frame, nothing is consumed and
//! [`TransmitError::BufferTooSmall`] says how much is needed; a buffer of the size the
//! state machine reports at construction (`transmit_len`) always holds the next frame,
//! so that error only ever means "flush what you batched first".

/// What the driver does next on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// `buf[..len]` holds one frame, prefix included: send it.
    Frame(usize),
    /// Close the transport connection, after the frames already handed over.
    Close,
}

/// Why nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitError {
    /// `buf` is smaller than the next frame; nothing was consumed.
    BufferTooSmall { needed: usize },
}

impl core::fmt::Display for TransmitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TransmitError::BufferTooSmall { needed } => {
                write!(
                    f,
                    "transmit buffer too small: the next frame needs {needed} bytes"
                )
            }
        }
    }
}

impl core::error::Error for TransmitError {}
