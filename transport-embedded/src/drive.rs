//! One connection's drive, for a session and a pairing run alike: the pump keeps the
//! order; this keeps the TLS reader, the writer and the timers.
//!
//! The TLS reader runs beside the pump and is never cancelled (an embedded-tls read is
//! not cancel-safe): it decrypts into its record buffer and copies what the pump may take
//! into the shared read buffer, then signals. It reads only while the pump's last
//! [`Wait`](protocol_core::pump::Wait) allowed it (`read`: no frame held back) and the
//! buffer has room; otherwise the bytes stay in TLS and TCP, whose flow control pushes
//! back on the daemon. The pump side waits on that signal, the machine's deadline and
//! the application's wake-up, all of which are safe to drop.

use core::cell::{Cell, RefCell};
use core::convert::Infallible;
use core::future::{Future, pending};

use embassy_futures::select::{Either, Either3, select, select3};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Timer, with_timeout};
use embedded_io_async::{BufRead, ErrorKind, Write};
use embedded_tls::TlsError;
use protocol_core::pump::{Input, Machine, Pump, ReadBuf, Slots, Step};
use protocol_core::time::Instant;

/// Milliseconds since boot on the embassy clock, as protocol-core counts time.
pub(crate) fn now() -> Instant {
    Instant::from_millis(embassy_time::Instant::now().as_millis())
}

/// Returns at `at` on the embassy clock; never without one.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => {
            let at = embassy_time::Instant::try_from_millis(at.as_millis())
                .unwrap_or(embassy_time::Instant::MAX);
            Timer::at(at).await;
        }
        None => pending().await,
    }
}

/// How the TLS reader stopped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadEnd {
    /// The daemon closed TLS (`close_notify`).
    Closed,
    /// The TCP connection ended without `close_notify`.
    Eof,
    /// The daemon sent a TLS alert. embedded-tls 0.19 reports every alert after the
    /// handshake without its description; `before_data` tells whether it came before any
    /// application byte, where TLS 1.3 puts the daemon's refusal of our certificate.
    Alert { before_data: bool },
    /// The transport failed.
    Io(ErrorKind),
    /// A TLS failure (a record too large for the read buffer, a bad record).
    Tls(TlsError),
}

impl ReadEnd {
    fn of(e: TlsError, received: bool) -> Self {
        match e {
            TlsError::ConnectionClosed => ReadEnd::Closed,
            TlsError::IoError => ReadEnd::Eof,
            TlsError::Io(kind) => ReadEnd::Io(kind),
            // The read path fails with `InternalError` for an alert and nothing else once
            // the key schedule is established.
            TlsError::InternalError => ReadEnd::Alert {
                before_data: !received,
            },
            other => ReadEnd::Tls(other),
        }
    }
}

/// The read buffer the pump takes from, and what the reader and the pump tell each other.
pub(crate) struct Inbound<'r, B> {
    rx: &'r RefCell<ReadBuf<B>>,
    may_read: Cell<bool>,
    received: Cell<bool>,
    end: Cell<Option<ReadEnd>>,
    /// Reader to pump: bytes arrived, or the reader stopped.
    arrived: Signal<NoopRawMutex, ()>,
    /// Pump to reader: reading may be allowed again, or room was made.
    resume: Signal<NoopRawMutex, ()>,
}

impl<'r, B: AsRef<[u8]> + AsMut<[u8]>> Inbound<'r, B> {
    /// Empties `rx` of a previous connection's bytes.
    pub(crate) fn new(rx: &'r RefCell<ReadBuf<B>>) -> Self {
        if let Ok(mut rx) = rx.try_borrow_mut() {
            let waiting = rx.len();
            rx.consume(waiting);
        }
        Self {
            rx,
            may_read: Cell::new(true),
            received: Cell::new(false),
            end: Cell::new(None),
            arrived: Signal::new(),
            resume: Signal::new(),
        }
    }

    fn allow(&self, read: bool) {
        self.may_read.set(read);
        self.resume.signal(());
    }

    fn has_room(&self) -> bool {
        self.rx
            .try_borrow_mut()
            .is_ok_and(|mut rx| !rx.space().is_empty())
    }

    /// Copies what fits of `chunk` into the read buffer; `None` when reading is not
    /// allowed now or there is no room.
    fn store(&self, chunk: &[u8]) -> Option<usize> {
        if !self.may_read.get() {
            return None;
        }
        let mut rx = self.rx.try_borrow_mut().ok()?;
        let space = rx.space();
        let n = space.len().min(chunk.len());
        if n == 0 {
            return None;
        }
        space[..n].copy_from_slice(&chunk[..n]);
        rx.filled(n);
        self.received.set(true);
        self.arrived.signal(());
        Some(n)
    }

    fn finish(&self, end: ReadEnd) {
        self.end.set(Some(end));
        self.arrived.signal(());
    }
}

/// The TLS reader: runs until the connection's read side ends, then stays pending (the
/// pump side decides when the connection is over).
pub(crate) async fn read_into<R, B>(reader: &mut R, inbound: &Inbound<'_, B>) -> Infallible
where
    R: BufRead<Error = TlsError>,
    B: AsRef<[u8]> + AsMut<[u8]>,
{
    loop {
        while !(inbound.may_read.get() && inbound.has_room()) {
            inbound.resume.wait().await;
        }
        let taken = {
            let chunk = match reader.fill_buf().await {
                Ok(chunk) => chunk,
                Err(e) => {
                    inbound.finish(ReadEnd::of(e, inbound.received.get()));
                    return pending().await;
                }
            };
            loop {
                if let Some(n) = inbound.store(chunk) {
                    break n;
                }
                inbound.resume.wait().await;
            }
        };
        reader.consume(taken);
    }
}

/// What the driver does at the pump's `Events` step, and when it wants one without any
/// input.
pub(crate) trait Turn<M> {
    fn events(&mut self, machine: &mut M, now: Instant);

    fn wake_at(&self) -> Option<Instant> {
        None
    }
}

/// How [`pump_connection`] ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DriveEnd {
    /// The machine closed the connection; its last frames were written.
    Closed,
    /// The read side ended.
    Read(ReadEnd),
    /// Writing failed.
    Write(TlsError),
    /// A write made no progress within the limit.
    WriteStalled,
}

/// Drives `machine` through `pump` until the connection ends: frames from `inbound`
/// (filled by [`read_into`], run beside this), frames out through `writer`, the
/// machine's deadlines and the turn's wake-ups. A write that takes longer than
/// `write_limit` ends the connection.
pub(crate) async fn pump_connection<M, T, W, B>(
    pump: &mut Pump<B>,
    machine: &mut M,
    turn: &mut T,
    lender: &mut Slots<B>,
    inbound: &Inbound<'_, B>,
    writer: &mut W,
    write_limit: Duration,
) -> DriveEnd
where
    M: Machine<Buf = B>,
    T: Turn<M>,
    W: Write<Error = TlsError>,
    B: AsRef<[u8]> + AsMut<[u8]>,
{
    // A wake-up instant is served once, even if the turn keeps naming it.
    let mut served_wake = None;
    loop {
        let at = now();
        let step = match inbound.rx.try_borrow_mut() {
            Ok(mut rx) => pump.poll(at, machine, lender, &mut *rx),
            // The reader never holds the buffer across a wait, so this does not happen;
            // if it did, the input waits for the next poll.
            Err(_) => pump.poll(at, machine, lender, &mut &[][..]),
        };
        match step {
            Step::Events(m) => turn.events(m, at),
            // Only journaled sessions have batches, and the node's session is kept in RAM
            // (`session::Node::new` refuses a journaled configuration).
            Step::Journal(batch) => {
                let _ = batch.stage(|_| {});
            }
            Step::Transmit(out) => {
                if let Err(end) = write(writer, out.bytes(), write_limit).await {
                    return end;
                }
            }
            Step::Close(out) => {
                // The connection ends either way; the read side tells whether the daemon
                // took the last frames.
                let _ = write(writer, out.bytes(), write_limit).await;
                return DriveEnd::Closed;
            }
            Step::Wait(wait) => {
                inbound.allow(wait.read);
                if let Some(end) = inbound.end.get() {
                    return DriveEnd::Read(end);
                }
                let wake = turn.wake_at().filter(|w| Some(*w) != served_wake);
                match select3(
                    inbound.arrived.wait(),
                    sleep_until(wait.deadline),
                    sleep_until(wake),
                )
                .await
                {
                    Either3::First(()) => {}
                    Either3::Second(()) => machine.handle_timeout(now()),
                    Either3::Third(()) => {
                        served_wake = wake;
                        pump.lend(machine, lender);
                    }
                }
            }
        }
    }
}

/// After the connection: the application's last events (the end of the connection
/// among them) until the pump has nothing more. Nothing reaches the daemon any more.
pub(crate) fn settle<M, T, B>(
    pump: &mut Pump<B>,
    machine: &mut M,
    turn: &mut T,
    lender: &mut Slots<B>,
) where
    M: Machine<Buf = B>,
    T: Turn<M>,
    B: AsRef<[u8]> + AsMut<[u8]>,
{
    loop {
        let at = now();
        match pump.poll(at, machine, lender, &mut &[][..]) {
            Step::Events(m) => turn.events(m, at),
            Step::Journal(batch) => {
                let _ = batch.stage(|_| {});
            }
            Step::Transmit(_) | Step::Close(_) => {}
            Step::Wait(_) => return,
        }
    }
}

/// Runs the reader and the pump side together until the pump side ends. The reader is
/// dropped then, mid-read perhaps: the connection is over, nothing reads it again.
pub(crate) async fn with_reader<F, R>(pump_side: F, reader_side: R) -> F::Output
where
    F: Future,
    R: Future<Output = Infallible>,
{
    match select(pump_side, reader_side).await {
        Either::First(end) => end,
        Either::Second(never) => match never {},
    }
}

async fn write<W: Write<Error = TlsError>>(
    writer: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), DriveEnd> {
    let written = with_timeout(limit, async {
        let mut rest = bytes;
        while !rest.is_empty() {
            match writer.write(rest).await {
                Ok(0) => return Err(TlsError::IoError),
                Ok(n) => rest = &rest[n.min(rest.len())..],
                Err(e) => return Err(e),
            }
        }
        writer.flush().await
    })
    .await;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DriveEnd::Write(e)),
        Err(_) => Err(DriveEnd::WriteStalled),
    }
}
