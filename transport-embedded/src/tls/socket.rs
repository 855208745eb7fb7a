//! The socket embedded-tls runs over, made of a connection's two halves.
//!
//! `TlsConnection::read` is not cancel-safe (it reads a record header into a local
//! array), so a TLS read must never be raced against a timer: the connection is split
//! (`TlsConnection::split`) and a reader runs beside the writer, each to completion.
//! `split` needs a `Clone` socket. This one is two shared cells: the reader's copy only
//! ever reads and the writer's only ever writes, so each cell is borrowed by one side,
//! and a borrow held across `.await` never meets another.

use core::cell::RefCell;

use embedded_io_async::{Error as _, ErrorKind, ErrorType, Read, Write};

/// A connection's reader and writer halves as one `Clone` socket.
pub struct SharedSocket<'s, R, W> {
    reader: &'s RefCell<R>,
    writer: &'s RefCell<W>,
}

impl<'s, R, W> SharedSocket<'s, R, W> {
    pub fn new(reader: &'s RefCell<R>, writer: &'s RefCell<W>) -> Self {
        Self { reader, writer }
    }
}

impl<R, W> Clone for SharedSocket<'_, R, W> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R, W> Copy for SharedSocket<'_, R, W> {}

impl<R, W> core::fmt::Debug for SharedSocket<'_, R, W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SharedSocket")
    }
}

impl<R, W> ErrorType for SharedSocket<'_, R, W> {
    type Error = ErrorKind;
}

impl<R: Read, W> Read for SharedSocket<'_, R, W> {
    // Only the reader's copy reads (see the module documentation).
    #[allow(clippy::await_holding_refcell_ref)]
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        let mut reader = self.reader.try_borrow_mut().map_err(|_| ErrorKind::Other)?;
        reader.read(buf).await.map_err(|e| e.kind())
    }
}

impl<R, W: Write> Write for SharedSocket<'_, R, W> {
    // Only the writer's copy writes (see the module documentation).
    #[allow(clippy::await_holding_refcell_ref)]
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        let mut writer = self.writer.try_borrow_mut().map_err(|_| ErrorKind::Other)?;
        match writer.write(buf).await {
            // embedded-tls writes with `write_all`, which panics on `Ok(0)`.
            Ok(0) if !buf.is_empty() => Err(ErrorKind::WriteZero),
            Ok(n) => Ok(n),
            Err(e) => Err(e.kind()),
        }
    }

    #[allow(clippy::await_holding_refcell_ref)]
    async fn flush(&mut self) -> Result<(), ErrorKind> {
        let mut writer = self.writer.try_borrow_mut().map_err(|_| ErrorKind::Other)?;
        writer.flush().await.map_err(|e| e.kind())
    }
}
