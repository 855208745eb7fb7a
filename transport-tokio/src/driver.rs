//! The per-connection driver: one [`Session`] of either role over one byte stream.
//!
//! The drive order is protocol-core's [`Pump`] (`SANS_IO.md`, "The pump"): the
//! application's turn, the journal batch, frames in one at a time, frames out, then a
//! wait. This driver keeps what the pump leaves to it — the stream, the session's timer,
//! the application's commands, revocation notices and the journal store — and waits for
//! whichever comes first.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::Arc;

use protocol_core::pump::{Pump, ReadBuf, Step, Wait};
use protocol_core::session::{BatchId, Instant, OwnedJournalOp, Session};
use protocol_core::wire::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::clock::{now, until};
use crate::host::TransportKind;
use crate::journal::{Batch, JournalStore};
use crate::pool::{PoolLender, StoragePool};
use crate::stats;
use crate::tcp::refuse::{close_after, error_frame};
use crate::tls::RevocationWatch;

/// Bytes read from the stream at a time.
const READ_CHUNK: usize = 8 * 1024;

/// What the application does with a session's events and with its own commands.
///
/// Both are called in the pump's `Events` step, with storage lent to the session, so a
/// command that sends (`call`, `send_event`, `complete`, ...) does not meet `NoStorage`.
pub trait Application<S: Session> {
    /// A command the application sends to the connection's task.
    type Command;

    /// Called after every input: poll `session.poll_event()` until `None` and react.
    /// Events borrow the session; copy what must outlive the call.
    fn handle_events(&mut self, session: &mut S, now: Instant);

    /// One command received on the driver's command channel, handed over at the
    /// application's next turn (before its events).
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
    S: Session<Buf = Box<[u8]>>,
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
    /// whenever it holds no data, and no journal batch of it is left unconfirmed. An I/O
    /// error ends the connection too (after `handle_disconnected`) and is returned.
    pub async fn run<IO>(self, mut io: IO) -> io::Result<Ended>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let Driver {
            session,
            pool,
            journal,
            app,
            commands,
            revocation,
        } = self;
        let storage_len = session.config().storage_len();
        if pool.buffer_len() < storage_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "pool buffers of {} bytes cannot hold the session's {storage_len} bytes \
                     of storage",
                    pool.buffer_len(),
                ),
            ));
        }
        if revocation.as_ref().is_some_and(RevocationWatch::is_revoked) {
            close_after(&mut io, &error_frame(ErrorCode::Revoked, "revoked")).await;
            return Ok(Ended::Revoked);
        }
        let mut core = Core {
            app,
            journal,
            commands,
            queued: VecDeque::new(),
            revocation,
            lender: PoolLender::new(pool.clone()),
        };
        let mut pump = Pump::new();
        let mut link = Link {
            io,
            rx: ReadBuf::new(vec![0u8; READ_CHUNK]),
        };
        session.handle_connected(now());
        let ended = core.connection(session, &mut pump, &mut link).await;
        if !matches!(ended, Ok(Ended::Closed)) {
            session.handle_disconnected(now());
        }
        core.settle(session, &mut pump, &mut link).await;
        pump.release(session, &mut core.lender);
        stats::add(TransportKind::Tcp, pump.take_counts());
        ended
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

/// The stream, and the bytes read from it that the pump has not taken yet.
struct Link<IO> {
    io: IO,
    rx: ReadBuf<Vec<u8>>,
}

/// What serves the session apart from the stream.
struct Core<'a, S: Session, A: Application<S>> {
    app: &'a mut A,
    journal: Journal,
    commands: Option<&'a mut mpsc::Receiver<A::Command>>,
    /// Commands received, for the application's next turn.
    queued: VecDeque<A::Command>,
    revocation: Option<RevocationWatch>,
    lender: PoolLender,
}

impl<S, A> Core<'_, S, A>
where
    S: Session<Buf = Box<[u8]>>,
    A: Application<S>,
{
    /// Drives the connection until it ends; the pump keeps the order.
    async fn connection<IO>(
        &mut self,
        session: &mut S,
        pump: &mut Pump<Box<[u8]>>,
        link: &mut Link<IO>,
    ) -> io::Result<Ended>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            match pump.poll(now(), session, &mut self.lender, &mut link.rx) {
                Step::Events(s) => self.events(s),
                Step::Journal(batch) => self.commit(batch.into_owned(), session).await,
                Step::Transmit(out) => write(&mut link.io, out.bytes()).await?,
                Step::Close(out) => return Ok(close(&mut link.io, out.bytes()).await),
                Step::Wait(wait) => {
                    if let Some(ended) = self.wait(wait, session, pump, link).await? {
                        return Ok(ended);
                    }
                }
            }
        }
    }

    /// After the connection: the application's last events and the journal batch they
    /// leave, so the session goes back with none in flight. Nothing reaches the peer.
    async fn settle<IO>(
        &mut self,
        session: &mut S,
        pump: &mut Pump<Box<[u8]>>,
        link: &mut Link<IO>,
    ) {
        loop {
            match pump.poll(now(), session, &mut self.lender, &mut link.rx) {
                Step::Events(s) => self.events(s),
                Step::Journal(batch) => self.commit(batch.into_owned(), session).await,
                Step::Transmit(_) | Step::Close(_) => {}
                Step::Wait(_) => return,
            }
        }
    }

    /// The application's turn: the commands that arrived since, then the events.
    fn events(&mut self, session: &mut S) {
        let now = now();
        for command in self.queued.drain(..) {
            self.app.handle_command(session, now, command);
        }
        self.app.handle_events(session, now);
    }

    /// Commits a staged batch and confirms it. A failed batch comes back through the
    /// session's timer, so a failing store is not retried in a spin.
    async fn commit(&mut self, staged: Option<(BatchId, Vec<OwnedJournalOp>)>, session: &mut S) {
        let Some((id, ops)) = staged else {
            return;
        };
        let batch = Batch {
            key: self.journal.key.clone(),
            ops,
        };
        let committed = self.journal.store.commit(vec![batch]).await;
        confirm(session, id, committed.is_ok());
    }

    /// Waits for the stream (if the pump takes input), the session's deadline, a
    /// command or a revocation notice. `Some` when the connection is over.
    async fn wait<IO>(
        &mut self,
        wait: Wait,
        session: &mut S,
        pump: &mut Pump<Box<[u8]>>,
        link: &mut Link<IO>,
    ) -> io::Result<Option<Ended>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        stats::add(TransportKind::Tcp, pump.take_counts());
        // A full read buffer would read as the end of the stream.
        let read = wait.read && link.rx.len() < READ_CHUNK;
        let timer = async {
            match wait.deadline {
                Some(at) => tokio::time::sleep(until(at)).await,
                None => std::future::pending().await,
            }
        };
        let command = async {
            match self.commands.as_deref_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let notice = async {
            match self.revocation.as_mut() {
                Some(w) => w.notices.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = link.io.read(link.rx.space()), if read => match n? {
                0 => return Ok(Some(Ended::PeerClosed)),
                n => link.rx.filled(n),
            },
            () = timer => session.handle_timeout(now()),
            command = command => match command {
                Some(c) => self.queued.push_back(c),
                None => self.commands = None,
            },
            live = notice => {
                if !live {
                    self.revocation = None;
                } else if self.revocation.as_ref().is_some_and(RevocationWatch::is_revoked) {
                    // Frames are written whole, so the error frame starts on a frame
                    // boundary.
                    let frame = error_frame(ErrorCode::Revoked, "revoked");
                    close_after(&mut link.io, &frame).await;
                    return Ok(Some(Ended::Revoked));
                }
            }
        }
        Ok(None)
    }
}

/// Tells the session how its batch `id` went. A refused confirmation means the driver
/// lost track of its batches: a bug, not the session's or the store's fault.
pub(crate) fn confirm<S: Session>(session: &mut S, id: BatchId, committed: bool) {
    let now = now();
    let confirmed = if committed {
        session.handle_journal_committed(now, id)
    } else {
        session.handle_journal_failed(now, id)
    };
    debug_assert!(
        confirmed.is_ok(),
        "{id} confirmation refused: {confirmed:?}"
    );
}

async fn write<IO: AsyncWrite + Unpin>(io: &mut IO, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// The session's last frames, then the close.
async fn close<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO, last: &[u8]) -> Ended {
    close_after(io, last).await;
    Ended::Closed
}
