//! The per-connection driver: one [`Session`] of either role over one byte stream.
//!
//! The loop of `protocol-core/SESSION.md` ("The loop that drives one connection"), on
//! tokio: after every input the application drains the session's events, the journal
//! batch is staged and committed, storage the session no longer needs goes back to the
//! pool, and the frames the session has are written; then the driver waits for whichever
//! comes first of bytes from the peer, the session's deadline, an application command,
//! or a revocation notice.

use std::fmt;
use std::io;
use std::sync::Arc;

use protocol_core::frame::FrameDecoder;
use protocol_core::session::{Instant, OwnedJournalOp, Session, SessionError, Transmit};
use protocol_core::wire::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::clock::{now, until};
use crate::host::TransportKind;
use crate::journal::{Batch, JournalStore};
use crate::pool::{StoragePool, frame_buffers};
use crate::stats;
use crate::tcp::refuse::{close_after, error_frame};
use crate::tls::RevocationWatch;

/// Bytes read from the stream at a time.
const READ_CHUNK: usize = 8 * 1024;

/// What the application does with a session's events and with its own commands.
///
/// Both are called with storage lent to the session, so a command that sends (`call`,
/// `send_event`, `complete`, ...) does not meet `NoStorage`.
pub trait Application<S: Session> {
    /// A command the application sends to the connection's task.
    type Command;

    /// Called after every input: poll `session.poll_event()` until `None` and react.
    /// Events borrow the session; copy what must outlive the call.
    fn handle_events(&mut self, session: &mut S, now: Instant);

    /// One command received on the driver's command channel.
    fn handle_command(&mut self, session: &mut S, now: Instant, command: Self::Command);
}

/// How a driven connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The session closed it (a goodbye, or an error frame it sent) and the close was
    /// written.
    Closed,
    /// The peer closed the stream.
    PeerClosed,
    /// The device or its certificate was revoked; `Error(Revoked)` was written.
    Revoked,
}

/// Drives one session over one stream. Build it with [`Driver::new`], add a command
/// channel and a revocation watch if wanted, then [`run`](Driver::run) it.
pub struct Driver<'a, S: Session, A: Application<S>> {
    pub(crate) session: &'a mut S,
    pool: &'a StoragePool,
    journal: Journal,
    app: &'a mut A,
    commands: Option<&'a mut mpsc::Receiver<A::Command>>,
    revocation: Option<RevocationWatch>,
}

impl<S: Session, A: Application<S>> fmt::Debug for Driver<'_, S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("pool", &self.pool)
            .field("commands", &self.commands.is_some())
            .field("revocation", &self.revocation)
            .finish_non_exhaustive()
    }
}

impl<'a, S, A> Driver<'a, S, A>
where
    S: Session<Storage = Box<[u8]>>,
    A: Application<S>,
{
    /// A driver for `session`, lending storage from `pool` (whose buffers must hold the
    /// session's `Config::storage_len()`), committing journal batches to `journal`.
    pub fn new(
        session: &'a mut S,
        pool: &'a StoragePool,
        journal: Journal,
        app: &'a mut A,
    ) -> Self {
        Self {
            session,
            pool,
            journal,
            app,
            commands: None,
            revocation: None,
        }
    }

    /// Application commands arrive on `commands` while the connection runs.
    pub fn with_commands(mut self, commands: &'a mut mpsc::Receiver<A::Command>) -> Self {
        self.commands = Some(commands);
        self
    }

    /// Closes the connection with `Error(Revoked)` as soon as `watch` reports the device
    /// or its certificate revoked (checked first thing, and at every revocation notice).
    pub fn with_revocation(mut self, watch: RevocationWatch) -> Self {
        self.revocation = Some(watch);
        self
    }

    /// Runs the connection until it ends. The session is told of the connection
    /// (`handle_connected`) and of its end; its storage is back in the pool on return
    /// whenever it holds no data. An I/O error ends the connection too (after
    /// `handle_disconnected`) and is returned.
    pub async fn run<IO>(self, mut io: IO) -> io::Result<Ended>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let Driver {
            session,
            pool,
            journal,
            app,
            mut commands,
            mut revocation,
        } = self;
        let config = *session.config();
        if pool.buffer_len() < config.storage_len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "pool buffers of {} bytes cannot hold the session's {} bytes of storage",
                    pool.buffer_len(),
                    config.storage_len()
                ),
            ));
        }
        if revocation.as_ref().is_some_and(RevocationWatch::is_revoked) {
            close_after(&mut io, &error_frame(ErrorCode::Revoked, "revoked")).await;
            return Ok(Ended::Revoked);
        }
        let mut core = Core {
            session,
            pool,
            journal,
            app,
        };
        let max = config.max_frame;
        // Frame-sized buffers come from the shared pool only while used, so a quiet
        // connection holds none.
        let buffers = frame_buffers();
        let mut dec: Option<FrameDecoder<Box<[u8]>>> = None;
        let mut rx = vec![0u8; READ_CHUNK];
        core.session.handle_connected(now());
        loop {
            core.react().await;
            let mut tx = buffers.take(config.transmit_len());
            let mut filled = 0;
            let mut close = false;
            let full = loop {
                match core.session.poll_transmit(now(), &mut tx[filled..]) {
                    Ok(Some(Transmit::Frame(n))) => {
                        stats::frame_out(TransportKind::Tcp, n);
                        filled += n;
                    }
                    Ok(Some(Transmit::Close)) => {
                        close = true;
                        break false;
                    }
                    Ok(None) => break false,
                    // The batch is full: write it, then go on.
                    Err(_) => break true,
                }
            };
            if close {
                close_after(&mut io, &tx[..filled]).await;
                buffers.put(tx);
                core.react().await;
                return Ok(Ended::Closed);
            }
            if filled > 0 {
                let written = async {
                    io.write_all(&tx[..filled]).await?;
                    io.flush().await
                };
                if let Err(e) = written.await {
                    buffers.put(tx);
                    return Err(core.disconnected(e).await);
                }
            }
            buffers.put(tx);
            if full {
                continue;
            }
            let deadline = core.session.poll_timeout();
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep(until(at)).await,
                    None => std::future::pending().await,
                }
            };
            let command = async {
                match commands.as_deref_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let notice = async {
                match revocation.as_mut() {
                    Some(w) => w.notices.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = io.read(&mut rx) => match read {
                    Ok(0) => {
                        core.session.handle_disconnected(now());
                        core.react().await;
                        return Ok(Ended::PeerClosed);
                    }
                    Ok(n) => core.feed(&mut dec, max, &rx[..n]),
                    Err(e) => return Err(core.disconnected(e).await),
                },
                () = timer => core.session.handle_timeout(now()),
                command = command => match command {
                    Some(c) => {
                        core.lend();
                        core.app.handle_command(core.session, now(), c);
                    }
                    None => commands = None,
                },
                live = notice => {
                    if !live {
                        revocation = None;
                    } else if revocation.as_ref().is_some_and(RevocationWatch::is_revoked) {
                        // Frames are written whole above, so the error frame starts on a
                        // frame boundary.
                        close_after(&mut io, &error_frame(ErrorCode::Revoked, "revoked")).await;
                        core.session.handle_disconnected(now());
                        core.react().await;
                        return Ok(Ended::Revoked);
                    }
                }
            }
        }
    }
}

/// Where a driven session's journal goes: a store and the session's key in it.
#[derive(Clone)]
pub struct Journal {
    pub store: Arc<dyn JournalStore>,
    pub key: Arc<str>,
}

impl Journal {
    pub fn new(store: Arc<dyn JournalStore>, key: impl Into<Arc<str>>) -> Self {
        Self {
            store,
            key: key.into(),
        }
    }
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The session and what serves it, apart from the stream.
struct Core<'a, S, A> {
    session: &'a mut S,
    pool: &'a StoragePool,
    journal: Journal,
    app: &'a mut A,
}

impl<S, A> Core<'_, S, A>
where
    S: Session<Storage = Box<[u8]>>,
    A: Application<S>,
{
    fn lend(&mut self) {
        if !self.session.has_storage() {
            if let Err(buf) = self.session.lend(self.pool.take()) {
                self.pool.put(buf);
            }
        }
    }

    /// Events to the application, the journal batch to the store, storage back to the
    /// pool if the session holds no data. A confirmed batch may release events (a
    /// journaled node's calls wait for it) whose handling writes more, so this goes on
    /// until a pass stages nothing.
    async fn react(&mut self) {
        self.lend();
        loop {
            self.app.handle_events(self.session, now());
            let mut ops = Vec::new();
            while let Some(op) = self.session.poll_journal() {
                ops.push(OwnedJournalOp::from(&op));
            }
            if ops.is_empty() {
                break;
            }
            let batch = Batch {
                key: self.journal.key.clone(),
                ops,
            };
            match self.journal.store.commit(vec![batch]).await {
                Ok(()) => self.session.handle_journal_committed(now()),
                Err(_) => {
                    // The session emits the batch again; retry at the next input rather
                    // than spin on a failing store.
                    self.session.handle_journal_failed(now());
                    self.app.handle_events(self.session, now());
                    break;
                }
            }
        }
        if let Some(buf) = self.session.reclaim() {
            self.pool.put(buf);
        }
    }

    /// Cuts frames out of the bytes read and feeds them one at a time, the application
    /// draining events after each (the inbox holds one frame).
    fn feed(&mut self, slot: &mut Option<FrameDecoder<Box<[u8]>>>, max: u32, input: &[u8]) {
        let buffers = frame_buffers();
        let dec = match slot {
            Some(d) => d,
            None => match FrameDecoder::new(buffers.take(max as usize), max) {
                Ok(d) => slot.insert(d),
                Err(e) => {
                    self.session.handle_frame_error(now(), e);
                    return;
                }
            },
        };
        self.feed_into(dec, input);
        if dec.buffered() == 0 && !dec.is_failed() {
            if let Some(d) = slot.take() {
                buffers.put(d.into_buffer());
            }
        }
    }

    fn feed_into(&mut self, dec: &mut FrameDecoder<Box<[u8]>>, mut input: &[u8]) {
        while !input.is_empty() && !dec.is_failed() {
            match dec.decode(input) {
                Ok(p) => {
                    if let Some(frame) = p.frame {
                        stats::frame_in(TransportKind::Tcp, frame.len());
                        self.lend();
                        if self.session.handle_frame(now(), frame) == Err(SessionError::NoStorage) {
                            // The pool's buffer was refused: nothing to retry with.
                            break;
                        }
                        self.app.handle_events(self.session, now());
                    }
                    input = &input[p.consumed..];
                }
                Err(e) => {
                    self.session.handle_frame_error(now(), e);
                    break;
                }
            }
        }
    }

    async fn disconnected(&mut self, e: io::Error) -> io::Error {
        self.session.handle_disconnected(now());
        self.react().await;
        e
    }
}
