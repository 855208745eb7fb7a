//! The daemon's side of one pairing connection over a byte stream.
//!
//! The loop of `SANS_IO.md` for a [`DaemonPairing`]: frames in through the frame decoder
//! (limit [`PAIRING_MAX_FRAME`]), the run's deadline, operator decisions; after each, the
//! responder answers the run; frames out, written whole; a close when the run asks.

use std::fmt;
use std::io;
use std::time::Duration;

use protocol_core::frame::FrameDecoder;
use protocol_core::pairing::{DaemonPairing, PAIRING_MAX_FRAME, PairingError};
use protocol_core::transmit::{Transmit, TransmitError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{PairingOutcome, PairingResponder, RunBuffer};
use crate::clock::{now, until};
use crate::tcp::PairingConnection;
use crate::tcp::refuse::{close_after, refuse_pairing};

/// Bytes read from the stream at a time: one whole pairing frame.
const READ_CHUNK: usize = PAIRING_MAX_FRAME as usize + 4;
/// Added to the run's own deadlines for the overall bound (writes to a node that stops
/// reading, the final linger).
const GRACE: Duration = Duration::from_secs(10);
/// Most reports taken from the responder in one go; a responder keeps answering `None`
/// eventually, this only keeps a faulty one from spinning the task.
const MAX_REPORTS: usize = 64;

/// Why a pairing connection ended without its run finishing.
#[derive(Debug)]
pub enum PairingServeError {
    /// The run could not be built with the responder's settings; the node was sent
    /// `Abort(Internal)`.
    Setup(PairingError),
    /// Reading or writing the connection failed.
    Io(io::Error),
    /// The node closed the connection before the run finished (e.g. while it waited for
    /// an operator).
    PeerClosed,
    /// The connection outlived every deadline its run could have.
    TimedOut,
}

impl fmt::Display for PairingServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairingServeError::Setup(e) => write!(f, "pairing run could not start: {e}"),
            PairingServeError::Io(e) => write!(f, "pairing connection failed: {e}"),
            PairingServeError::PeerClosed => {
                f.write_str("the node closed the pairing connection before the run finished")
            }
            PairingServeError::TimedOut => f.write_str("pairing connection timed out"),
        }
    }
}

impl std::error::Error for PairingServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PairingServeError::Setup(e) => Some(e),
            PairingServeError::Io(e) => Some(e),
            PairingServeError::PeerClosed | PairingServeError::TimedOut => None,
        }
    }
}

/// Runs one pairing connection to its end, answering it with `responder`.
///
/// Builds a [`DaemonPairing`] with [`PairingResponder::config`], feeds it the `Start` the
/// listener already read, then drives it: frames from the node, the run's deadline
/// (handshake, then the operator's decision), and operator decisions announced through
/// [`PairingResponder::decisions`]. A run waiting for approval keeps its connection until
/// a decision or the decision deadline. The whole connection is bounded by the run's two
/// deadlines plus a short grace. [`PairingResponder::closed`] is called once the
/// connection is over, however it ended.
///
/// Returns how the run ended, as the responder reported it: [`PairingOutcome::Completed`]
/// (the certificate was written) or [`PairingOutcome::Failed`] (the node was told why,
/// unless it was the one that aborted). Issued certificates are reported by the
/// responder's `drive` as they are issued.
pub async fn serve_pairing(
    mut conn: PairingConnection,
    responder: &dyn PairingResponder,
) -> Result<PairingOutcome, PairingServeError> {
    let config = responder.config();
    let buf: RunBuffer = vec![0u8; 2 * PAIRING_MAX_FRAME as usize].into_boxed_slice();
    let mut run = match DaemonPairing::new(now(), buf, config) {
        Ok(run) => run,
        Err(e) => {
            refuse_pairing(conn.stream(), PairingError::Internal).await;
            return Err(PairingServeError::Setup(e));
        }
    };
    let limit = Duration::from_millis(
        config
            .handshake_timeout_ms
            .saturating_add(config.decision_timeout_ms),
    )
    .saturating_add(GRACE);
    let served = tokio::time::timeout(limit, serve_run(&mut conn, &mut run, responder)).await;
    responder.closed(&run);
    served.unwrap_or(Err(PairingServeError::TimedOut))
}

async fn serve_run(
    conn: &mut PairingConnection,
    run: &mut DaemonPairing<RunBuffer>,
    responder: &dyn PairingResponder,
) -> Result<PairingOutcome, PairingServeError> {
    let mut decisions = Some(responder.decisions());
    if let Some(d) = decisions.as_mut() {
        // Decisions made before this run existed are not for it.
        d.borrow_and_update();
    }
    let mut end = None;
    // A refused start still leaves the run with an `Abort` to send and an event to report.
    let _ = run.handle_frame(now(), conn.first_frame());
    answer(responder, run, &mut end);
    let mut dec = FrameDecoder::new(vec![0u8; PAIRING_MAX_FRAME as usize], PAIRING_MAX_FRAME)
        .map_err(|_| PairingServeError::Setup(PairingError::BufferTooSmall))?;
    let mut tx = vec![0u8; run.transmit_len()];
    let mut rx = vec![0u8; READ_CHUNK];
    let stream = conn.stream();
    loop {
        let (filled, close, full) = transmit(run, responder, &mut tx, &mut end);
        if close {
            close_after(stream, &tx[..filled]).await;
            return Ok(end.unwrap_or_else(|| ended(run)));
        }
        if filled > 0 {
            write(stream, &tx[..filled])
                .await
                .map_err(PairingServeError::Io)?;
        }
        if full {
            continue;
        }
        let deadline = run.poll_timeout();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep(until(at)).await,
                None => std::future::pending().await,
            }
        };
        let decided = async {
            match decisions.as_mut() {
                Some(d) => d.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = stream.read(&mut rx) => match read {
                Ok(0) => return Err(PairingServeError::PeerClosed),
                Ok(n) => feed(run, responder, &mut dec, &rx[..n], &mut end),
                // A node that quits without a TLS close_notify hung up all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(PairingServeError::PeerClosed);
                }
                Err(e) => return Err(PairingServeError::Io(e)),
            },
            () = timer => {
                let at = now();
                if run.poll_timeout().is_some_and(|deadline| deadline <= at) {
                    before_end(responder, run);
                }
                run.handle_timeout(at);
                answer(responder, run, &mut end);
            }
            live = decided => {
                if live {
                    answer(responder, run, &mut end);
                } else {
                    // The responder is gone; the run's deadline still ends the wait.
                    decisions = None;
                }
            }
        }
    }
}

/// Takes the run's frames into `tx`, letting the responder answer after each (the last
/// answer completes the run once handed over). Returns the bytes filled, whether the run
/// asked to close, and whether `tx` was full with frames still to come.
pub(crate) fn transmit(
    run: &mut DaemonPairing<RunBuffer>,
    responder: &dyn PairingResponder,
    tx: &mut [u8],
    end: &mut Option<PairingOutcome>,
) -> (usize, bool, bool) {
    let mut filled = 0;
    loop {
        match run.poll_transmit(now(), &mut tx[filled..]) {
            Ok(Some(Transmit::Frame(n))) => {
                filled += n;
                answer(responder, run, end);
            }
            Ok(Some(Transmit::Close)) => return (filled, true, false),
            Ok(None) => return (filled, false, false),
            // `tx` holds `transmit_len()`: with frames in it, write them and come back.
            Err(TransmitError::BufferTooSmall { .. }) => return (filled, false, filled > 0),
        }
    }
}

/// Cuts `input` into frames and hands each to the run, answering after each. A length
/// prefix over the limit fails the run with `Malformed` (the node is told).
pub(crate) fn feed(
    run: &mut DaemonPairing<RunBuffer>,
    responder: &dyn PairingResponder,
    dec: &mut FrameDecoder<Vec<u8>>,
    mut input: &[u8],
    end: &mut Option<PairingOutcome>,
) {
    while !input.is_empty() && !dec.is_failed() {
        match dec.decode(input) {
            Ok(p) => {
                if let Some(frame) = p.frame {
                    // The node has nothing to say while it waits for a decision: any
                    // frame ends the run.
                    before_end(responder, run);
                    // A failure is the run's own state now; the responder reports it.
                    let _ = run.handle_frame(now(), frame);
                    answer(responder, run, end);
                }
                input = &input[p.consumed..];
            }
            Err(_) => {
                before_end(responder, run);
                let _ = run.refuse(PairingError::Malformed);
                answer(responder, run, end);
            }
        }
    }
}

/// A run holding an authenticated CSR (waiting for an operator) forgets it when it
/// fails: the responder hears of the end first, while the run still shows what it held,
/// so a proven code is given back.
pub(crate) fn before_end(responder: &dyn PairingResponder, run: &DaemonPairing<RunBuffer>) {
    if run.csr().is_some() {
        responder.closed(run);
    }
}

/// Calls the responder until it has nothing more; keeps the report that ends the run.
pub(crate) fn answer(
    responder: &dyn PairingResponder,
    run: &mut DaemonPairing<RunBuffer>,
    end: &mut Option<PairingOutcome>,
) {
    for _ in 0..MAX_REPORTS {
        match responder.drive(now(), run) {
            Some(outcome @ (PairingOutcome::Completed | PairingOutcome::Failed(_))) => {
                *end = Some(outcome);
            }
            Some(_) => {}
            None => return,
        }
    }
}

/// The run's end read from the run itself, for a responder that did not report it.
fn ended(run: &DaemonPairing<RunBuffer>) -> PairingOutcome {
    run.error()
        .map_or(PairingOutcome::Completed, PairingOutcome::Failed)
}

async fn write<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}
