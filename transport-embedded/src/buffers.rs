//! The caller's memory: every byte a connection uses comes from buffers handed over once
//! (static on a board), checked here once, and lent through the pump's `Slots`.
//!
//! Pairing and the node plane never run at the same time, so a board can carve both
//! sets from one arena of `max(`[`PairingBuffers::arena_len`]`, `
//! [`SessionBuffers::arena_len`]`)` bytes.

use protocol_core::frame::HEADER_LEN;
use protocol_core::pairing::{PAIRING_MAX_FRAME, TAG_LEN};
use protocol_core::session::Config;

use crate::csr::MAX_CSR_LEN;
use crate::tls::{PAIRING_TLS_WRITE_LEN, TLS_READ_LEN, TLS_WRITE_LEN};

/// Which buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    /// The session's replay buffer and inbox.
    Storage,
    /// Assembly of a frame split across reads.
    Frame,
    /// Frames waiting to be written.
    Transmit,
    /// Decrypted bytes the pump has not taken yet.
    Read,
    /// The TLS record read buffer.
    TlsRead,
    /// The TLS record write buffer.
    TlsWrite,
    /// A pairing run's own buffer (the sealed CSR, then the daemon's answer).
    Run,
}

/// A buffer smaller than what it is for needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferTooSmall {
    pub buffer: Buffer,
    pub needed: usize,
    pub available: usize,
}

impl core::fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:?} buffer of {} bytes, {} needed",
            self.buffer, self.available, self.needed
        )
    }
}

impl core::error::Error for BufferTooSmall {}

fn at_least(buffer: Buffer, buf: &[u8], needed: usize) -> Result<(), BufferTooSmall> {
    if buf.len() < needed {
        return Err(BufferTooSmall {
            buffer,
            needed,
            available: buf.len(),
        });
    }
    Ok(())
}

/// Cuts `len` bytes off the front of `arena`.
fn take<'b>(
    arena: &mut &'b mut [u8],
    buffer: Buffer,
    len: usize,
) -> Result<&'b mut [u8], BufferTooSmall> {
    let whole = core::mem::take(arena);
    if whole.len() < len {
        let available = whole.len();
        *arena = whole;
        return Err(BufferTooSmall {
            buffer,
            needed: len,
            available,
        });
    }
    let (front, rest) = whole.split_at_mut(len);
    *arena = rest;
    Ok(front)
}

/// The buffers of a node-plane [`Node`](crate::session::Node).
///
/// With `Config::embedded(1024)` (1 KiB replay buffer, 2 KiB frames): storage 3085,
/// frame 2048, transmit 2052, read 2052, TLS read 1036, TLS write 1059 bytes; 11,332 in
/// all ([`Self::arena_len`]).
#[derive(Debug)]
pub struct SessionBuffers<'b> {
    /// The session's replay buffer and inbox: `Config::storage_len()` bytes.
    pub storage: &'b mut [u8],
    /// Assembly of a frame split across reads: `Config::max_frame` bytes.
    pub frame: &'b mut [u8],
    /// Frames waiting to be written: `Config::transmit_len()` bytes.
    pub transmit: &'b mut [u8],
    /// Decrypted bytes waiting for the pump: one whole frame
    /// (`Config::transmit_len()` bytes), so the acknowledgement behind a frame the
    /// session holds back can always be read (`SANS_IO.md`, "Backpressure").
    pub read: &'b mut [u8],
    /// [`TLS_READ_LEN`] bytes.
    pub tls_read: &'b mut [u8],
    /// [`TLS_WRITE_LEN`] bytes hold any client certificate an identity keeps;
    /// `tls::tls_write_len(cert_len)` is the least for a given one.
    pub tls_write: &'b mut [u8],
}

impl<'b> SessionBuffers<'b> {
    /// Bytes of an arena [`Self::carve`] splits for `config`.
    pub const fn arena_len(config: &Config) -> usize {
        config.storage_len()
            + config.max_frame as usize
            + 2 * config.transmit_len()
            + TLS_READ_LEN
            + TLS_WRITE_LEN
    }

    /// Splits `arena` into the buffers `config` needs.
    pub fn carve(config: &Config, arena: &'b mut [u8]) -> Result<Self, BufferTooSmall> {
        let needed = Self::arena_len(config);
        if arena.len() < needed {
            return Err(BufferTooSmall {
                buffer: Buffer::Storage,
                needed,
                available: arena.len(),
            });
        }
        let mut arena = arena;
        Ok(Self {
            storage: take(&mut arena, Buffer::Storage, config.storage_len())?,
            frame: take(&mut arena, Buffer::Frame, config.max_frame as usize)?,
            transmit: take(&mut arena, Buffer::Transmit, config.transmit_len())?,
            read: take(&mut arena, Buffer::Read, config.transmit_len())?,
            tls_read: take(&mut arena, Buffer::TlsRead, TLS_READ_LEN)?,
            tls_write: take(&mut arena, Buffer::TlsWrite, TLS_WRITE_LEN)?,
        })
    }

    pub(crate) fn check(&self, config: &Config) -> Result<(), BufferTooSmall> {
        at_least(Buffer::Storage, self.storage, config.storage_len())?;
        at_least(Buffer::Frame, self.frame, config.max_frame as usize)?;
        at_least(Buffer::Transmit, self.transmit, config.transmit_len())?;
        at_least(Buffer::Read, self.read, config.transmit_len())?;
        at_least(Buffer::TlsRead, self.tls_read, TLS_READ_LEN)?;
        at_least(
            Buffer::TlsWrite,
            self.tls_write,
            embedded_tls::TLS_RECORD_OVERHEAD + 1,
        )
    }
}

/// Bytes of a pairing run's transmit buffer: the largest frame it sends is the
/// `Confirm` with the sealed CSR.
pub const PAIRING_TRANSMIT_LEN: usize = 512;
/// Bytes of the read buffer of a pairing connection.
pub const PAIRING_READ_LEN: usize = 1024;

const _: () = assert!(PAIRING_TRANSMIT_LEN >= HEADER_LEN + MAX_CSR_LEN + TAG_LEN + 64);

/// The buffers of one [`pair`](crate::pairing::pair) run: run 4096, frame 4096,
/// transmit 512, read 1024, TLS read 1036, TLS write 512 bytes; 11,276 in all
/// ([`Self::arena_len`]).
#[derive(Debug)]
pub struct PairingBuffers<'b> {
    /// The run's own buffer: [`PAIRING_MAX_FRAME`] bytes.
    pub run: &'b mut [u8],
    /// Assembly of a pairing frame: [`PAIRING_MAX_FRAME`] bytes.
    pub frame: &'b mut [u8],
    /// [`PAIRING_TRANSMIT_LEN`] bytes.
    pub transmit: &'b mut [u8],
    /// Any size; [`PAIRING_READ_LEN`] bytes take one TLS record at a time.
    pub read: &'b mut [u8],
    /// [`TLS_READ_LEN`] bytes.
    pub tls_read: &'b mut [u8],
    /// [`PAIRING_TLS_WRITE_LEN`] bytes.
    pub tls_write: &'b mut [u8],
}

impl<'b> PairingBuffers<'b> {
    /// Bytes of an arena [`Self::carve`] splits.
    pub const fn arena_len() -> usize {
        2 * PAIRING_MAX_FRAME as usize
            + PAIRING_TRANSMIT_LEN
            + PAIRING_READ_LEN
            + TLS_READ_LEN
            + PAIRING_TLS_WRITE_LEN
    }

    /// Splits `arena` into the buffers pairing needs.
    pub fn carve(arena: &'b mut [u8]) -> Result<Self, BufferTooSmall> {
        let needed = Self::arena_len();
        if arena.len() < needed {
            return Err(BufferTooSmall {
                buffer: Buffer::Run,
                needed,
                available: arena.len(),
            });
        }
        let mut arena = arena;
        let frame_len = PAIRING_MAX_FRAME as usize;
        Ok(Self {
            run: take(&mut arena, Buffer::Run, frame_len)?,
            frame: take(&mut arena, Buffer::Frame, frame_len)?,
            transmit: take(&mut arena, Buffer::Transmit, PAIRING_TRANSMIT_LEN)?,
            read: take(&mut arena, Buffer::Read, PAIRING_READ_LEN)?,
            tls_read: take(&mut arena, Buffer::TlsRead, TLS_READ_LEN)?,
            tls_write: take(&mut arena, Buffer::TlsWrite, PAIRING_TLS_WRITE_LEN)?,
        })
    }

    pub(crate) fn check(&self) -> Result<(), BufferTooSmall> {
        let frame_len = PAIRING_MAX_FRAME as usize;
        at_least(Buffer::Run, self.run, frame_len)?;
        at_least(Buffer::Frame, self.frame, frame_len)?;
        at_least(Buffer::Read, self.read, 1)?;
        at_least(Buffer::TlsRead, self.tls_read, TLS_READ_LEN)?;
        at_least(Buffer::TlsWrite, self.tls_write, PAIRING_TLS_WRITE_LEN)
    }
}
