//! The daemon's side of one pairing connection over a byte stream.
//!
//! A [`DaemonPairing`] and the [`PairingResponder`] answering it make one machine
//! ([`AnsweredRun`]) that the pump drives here and on the QUIC endpoint alike: frames in
//! (limit [`PAIRING_MAX_FRAME`]), the run's deadline and operator decisions; frames out,
//! written whole; a close when the run asks.

use std::fmt;
use std::io;
use std::ops::Deref;
use std::time::Duration;

use protocol_core::frame::FrameError;
use protocol_core::pairing::{DaemonPairing, PAIRING_MAX_FRAME, PairingError};
use protocol_core::pump::{Machine, Offer, Pump, ReadBuf, Step};
use protocol_core::time::Instant;
use protocol_core::transmit::{Transmit, TransmitError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{PairingOutcome, PairingResponder, RunBuffer};
use crate::clock::{now, until};
use crate::pool::PoolLender;
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
    let run = match DaemonPairing::new(now(), buf, config) {
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
    let mut run = AnsweredRun::new(run, responder);
    let (mut pump, mut lender) = (Pump::new(), PoolLender::frames_only());
    let served = serve_run(&mut conn, &mut run, &mut pump, &mut lender);
    let served = tokio::time::timeout(limit, served).await;
    run.closed();
    pump.release(&mut run, &mut lender);
    served.unwrap_or(Err(PairingServeError::TimedOut))
}

async fn serve_run(
    conn: &mut PairingConnection,
    run: &mut AnsweredRun<&dyn PairingResponder>,
    pump: &mut Pump<RunBuffer>,
    lender: &mut PoolLender,
) -> Result<PairingOutcome, PairingServeError> {
    let mut decisions = Some(run.responder.decisions());
    if let Some(d) = decisions.as_mut() {
        // Decisions made before this run existed are not for it.
        d.borrow_and_update();
    }
    // A refused start still leaves the run with an `Abort` to send and an event to report.
    let _ = run.offer_frame(now(), conn.first_frame());
    let mut rx = ReadBuf::new(vec![0u8; READ_CHUNK]);
    let stream = conn.stream();
    loop {
        match pump.poll(now(), run, lender, &mut rx) {
            // The responder answered as the run went; a pairing run keeps no journal.
            Step::Events(_) | Step::Journal(_) => {}
            Step::Transmit(out) => {
                if let Err(e) = write(stream, out.bytes()).await {
                    return Err(PairingServeError::Io(e));
                }
            }
            Step::Close(out) => {
                close_after(stream, out.bytes()).await;
                return Ok(run.outcome());
            }
            Step::Wait(wait) => {
                let timer = async {
                    match wait.deadline {
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
                    read = stream.read(rx.space()), if wait.read => match read {
                        Ok(0) => return Err(PairingServeError::PeerClosed),
                        Ok(n) => rx.filled(n),
                        // A node that quits without a TLS close_notify hung up all the same.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            return Err(PairingServeError::PeerClosed);
                        }
                        Err(e) => return Err(PairingServeError::Io(e)),
                    },
                    () = timer => run.handle_timeout(now()),
                    live = decided => {
                        if live {
                            run.answer();
                        } else {
                            // The responder is gone; the run's deadline still ends the wait.
                            decisions = None;
                        }
                    }
                }
            }
        }
    }
}

/// A daemon-side pairing run and the responder that answers it, as one machine for the
/// pump. The responder answers after every input (a frame, a frame error, the deadline)
/// and after every frame handed over, and hears of the run's end before an input that
/// ends a run waiting for a decision (the run forgets its CSR when it fails).
pub(crate) struct AnsweredRun<R> {
    run: DaemonPairing<RunBuffer>,
    pub(crate) responder: R,
    /// The report that ended the run.
    end: Option<PairingOutcome>,
}

impl<'r, R: Deref<Target = dyn PairingResponder + 'r>> AnsweredRun<R> {
    pub(crate) fn new(run: DaemonPairing<RunBuffer>, responder: R) -> Self {
        Self {
            run,
            responder,
            end: None,
        }
    }

    /// Calls the responder until it has nothing more; keeps the report that ends the
    /// run. Also what an operator's decision calls for.
    pub(crate) fn answer(&mut self) {
        for _ in 0..MAX_REPORTS {
            match self.responder.drive(now(), &mut self.run) {
                Some(outcome @ (PairingOutcome::Completed | PairingOutcome::Failed(_))) => {
                    self.end = Some(outcome);
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    /// How the run ended: as the responder reported it, else as the run says.
    pub(crate) fn outcome(&self) -> PairingOutcome {
        self.end.clone().unwrap_or_else(|| {
            self.run
                .error()
                .map_or(PairingOutcome::Completed, PairingOutcome::Failed)
        })
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.run.is_finished()
    }

    /// The connection is over (idempotent): a proven code without a certificate is
    /// given back.
    pub(crate) fn closed(&self) {
        self.responder.closed(&self.run);
    }

    /// A run holding an authenticated CSR (waiting for an operator) forgets it when it
    /// fails: the responder hears of the end first, while the run still shows what it
    /// held, so a proven code is given back.
    fn before_end(&self) {
        if self.run.csr().is_some() {
            self.responder.closed(&self.run);
        }
    }
}

impl<'r, R: Deref<Target = dyn PairingResponder + 'r>> Machine for AnsweredRun<R> {
    type Buf = RunBuffer;

    fn max_frame(&self) -> u32 {
        self.run.max_frame()
    }

    fn transmit_len(&self) -> usize {
        self.run.transmit_len()
    }

    fn offer_frame(&mut self, now: Instant, frame: &[u8]) -> Offer {
        // The node has nothing to say while it waits for a decision: any frame ends the
        // run.
        self.before_end();
        let offer = self.run.offer_frame(now, frame);
        self.answer();
        offer
    }

    fn handle_frame_error(&mut self, now: Instant, e: FrameError) {
        self.before_end();
        self.run.handle_frame_error(now, e);
        self.answer();
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self
            .run
            .poll_timeout()
            .is_some_and(|deadline| deadline <= now)
        {
            self.before_end();
        }
        self.run.handle_timeout(now);
        self.answer();
    }

    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError> {
        let polled = self.run.poll_transmit(now, buf);
        if let Ok(Some(Transmit::Frame(_))) = polled {
            // The last answer completes the run once handed over.
            self.answer();
        }
        polled
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.run.poll_timeout()
    }
}

async fn write<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}
