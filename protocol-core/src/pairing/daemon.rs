//! The daemon's side of pairing: the SPAKE2+ verifier.
//!
//! The state machine runs one connection's exchange; what it cannot know it asks the
//! application through events: the registration record for a code id (after the
//! application checked the code's window and the rate limit), and what to answer to an
//! authenticated CSR (issue a certificate, wait for an operator, or reject).

use spake2plus::rand_core::CryptoRng;
use spake2plus::{
    ConfirmP, Context, P256Sha256, ShareP, Verifier, VerifierConfirming, VerifierRecord,
};

use super::PairingError;
use super::code::{PAKE_CONTEXT, PairingCode, RecordBytes, VERIFIER_ID};
use super::messages::{
    Abort, Answer, Challenge, Issued, PAIRING_MAX_FRAME, PAIRING_VERSION, PairingMessage, Sealed,
    abort_frame_len, decode_pairing, encode_answer, encode_pairing, frame_len,
};
use super::seal::{Kind, SealKeys, TAG_LEN};
use crate::frame::HEADER_LEN;
use crate::time::Instant;
use crate::transmit::{Transmit, TransmitError};

/// Daemon-side settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Milliseconds from the connection's start to an authenticated CSR.
    pub handshake_timeout_ms: u64,
    /// Milliseconds from the CSR to the operator's decision.
    pub decision_timeout_ms: u64,
    /// Largest frame the node accepts.
    pub peer_max_frame: u32,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 30_000,
            decision_timeout_ms: 10 * 60 * 1000,
            peer_max_frame: PAIRING_MAX_FRAME,
        }
    }
}

/// What [`DaemonPairing::poll_event`] has for the application.
#[derive(Debug, PartialEq, Eq)]
pub enum DaemonPairingEvent<'a> {
    /// A node wants to pair with this code id. Check the code's window and the rate
    /// limit, count the attempt, then call [`DaemonPairing::accept_record`] or
    /// [`DaemonPairing::refuse`]. No deadline runs until then.
    RecordNeeded { code_id: u16 },
    /// The node proved the code and sent this CSR (authenticated by the PAKE). The
    /// attempt succeeded: use the code up. Then answer with `issue`, `pending` or
    /// `reject` (or `refuse`).
    CsrReceived { code_id: u16, csr: &'a [u8] },
    /// The certificate was handed over for sending; the pairing is complete and the run
    /// finished.
    Completed,
    /// The run failed (a wrong code shows here as [`PairingError::WrongCode`]); it is
    /// finished.
    Failed(PairingError),
}

// No allocator to box the PAKE state into; there is one state per run.
#[allow(clippy::large_enum_variant)]
enum State {
    AwaitStart,
    AwaitRecord {
        code_id: u16,
        share_p: [u8; 65],
    },
    AwaitConfirm {
        code_id: u16,
        verifier: VerifierConfirming<P256Sha256>,
    },
    AwaitDecision {
        keys: SealKeys,
        csr_len: usize,
    },
    Completed,
    Failed(PairingError),
    Moving,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitStart => "await_start",
            State::AwaitRecord { .. } => "await_record",
            State::AwaitConfirm { .. } => "await_confirm",
            State::AwaitDecision { .. } => "await_decision",
            State::Completed => "completed",
            State::Failed(_) => "failed",
            State::Moving => "moving",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Tx {
    Challenge {
        share_v: [u8; 65],
        confirm_v: [u8; 32],
    },
    Sealed {
        seq: u32,
        at: usize,
        len: usize,
    },
    Abort(PairingError),
}

#[derive(Debug, Clone, Copy)]
enum Event {
    RecordNeeded(u16),
    CsrReceived(u16),
    Completed,
    Failed(PairingError),
}

/// Whether the transport connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    No,
    /// After the queued frame, if any.
    Due,
    Asked,
}

/// One pairing run, daemon side. `buf` holds the opened CSR and, after it, the answer
/// being sealed: at least twice [`PAIRING_MAX_FRAME`].
pub struct DaemonPairing<B> {
    config: DaemonConfig,
    buf: B,
    state: State,
    /// The code id the node named, kept once the run is finished.
    code_id: Option<u16>,
    tx: Option<Tx>,
    event: Option<Event>,
    close: Close,
    /// The handshake deadline, then the decision deadline.
    deadline: Instant,
    next_seq: u32,
    /// After the last answer is sent, the state it leads to.
    finish_after_tx: Option<Result<(), PairingError>>,
    transmit_len: usize,
}

impl<B> core::fmt::Debug for DaemonPairing<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DaemonPairing")
            .field("code_id", &self.code_id)
            .field("state", &self.state.name())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> DaemonPairing<B> {
    /// A run on a new connection; the handshake deadline counts from `now`.
    ///
    /// Refused with [`PairingError::BufferTooSmall`] when `buf` is shorter than twice
    /// [`PAIRING_MAX_FRAME`], or when `config.peer_max_frame` cannot hold a `Challenge`.
    pub fn new(now: Instant, buf: B, config: DaemonConfig) -> Result<Self, PairingError> {
        let room = buf.as_ref().len();
        if room < 2 * PAIRING_MAX_FRAME as usize {
            return Err(PairingError::BufferTooSmall);
        }
        let fixed = frame_len(&PairingMessage::Challenge(Challenge {
            share_v: &[0; 65],
            confirm_v: &[0; 32],
        }))
        .max(abort_frame_len());
        let peer_max = config.peer_max_frame as usize;
        if fixed - HEADER_LEN > peer_max {
            return Err(PairingError::BufferTooSmall);
        }
        // An answer is sealed in the buffer's room after the CSR and must fit the peer's
        // limit (checked when queued): bounded by both.
        let sealed = frame_len(&PairingMessage::Sealed(Sealed {
            seq: u32::MAX,
            ciphertext: buf.as_ref(),
        }));
        let transmit_len = fixed.max(sealed.min(HEADER_LEN + peer_max));
        Ok(Self {
            config,
            buf,
            state: State::AwaitStart,
            code_id: None,
            tx: None,
            event: None,
            close: Close::No,
            deadline: now.plus_ms(config.handshake_timeout_ms),
            next_seq: 0,
            finish_after_tx: None,
            transmit_len,
        })
    }

    /// The largest frame this run sends, prefix included: a `poll_transmit` buffer of
    /// this size always holds the next frame.
    pub fn transmit_len(&self) -> usize {
        self.transmit_len
    }

    /// The deadline [`Self::handle_timeout`] applies; none while the application holds
    /// the run (the record) or once finished.
    fn armed_deadline(&self) -> Option<Instant> {
        match self.state {
            State::AwaitStart | State::AwaitConfirm { .. } | State::AwaitDecision { .. } => {
                Some(self.deadline)
            }
            State::AwaitRecord { .. } | State::Completed | State::Failed(_) | State::Moving => None,
        }
    }

    fn deadline_error(&self) -> PairingError {
        if matches!(self.state, State::AwaitDecision { .. }) {
            PairingError::ApprovalExpired
        } else {
            PairingError::TimedOut
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.armed_deadline().is_some_and(|at| now >= at)
    }

    /// Feeds one received frame's payload. An error means the run failed (now, or
    /// earlier: a failed run stays failed); frames after a completed run are ignored.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), PairingError> {
        match self.state {
            State::Failed(e) => return Err(e),
            State::Completed => return Ok(()),
            _ => {}
        }
        if self.expired(now) {
            return Err(self.fail(self.deadline_error(), true));
        }
        let msg = match decode_pairing(frame) {
            Ok(m) => m,
            Err(_) => return Err(self.fail(PairingError::Malformed, true)),
        };
        let result = match msg {
            PairingMessage::Start(s) => self.on_start(s.version, s.code_id, s.share_p),
            PairingMessage::Confirm(c) => self.on_confirm(now, c.confirm_p, c.sealed_csr),
            PairingMessage::Abort(a) => return Err(self.fail(a.error, false)),
            _ => Err(PairingError::UnexpectedMessage),
        };
        result.map_err(|e| self.fail(e, true))
    }

    /// The frame decoder failed (a length prefix over [`PAIRING_MAX_FRAME`]): an
    /// unfinished run fails with [`PairingError::Malformed`] and the peer is told.
    pub fn handle_frame_error(&mut self, now: Instant, e: crate::frame::FrameError) {
        let _ = (now, e);
        if !self.is_finished() {
            self.fail(PairingError::Malformed, true);
        }
    }

    /// Applies the deadline: at or after it, the run fails with
    /// [`PairingError::TimedOut`] (before the CSR) or [`PairingError::ApprovalExpired`]
    /// (waiting for a decision). Cheap; may be called at any time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.expired(now) {
            self.fail(self.deadline_error(), true);
        }
    }

    fn on_start(&mut self, version: u16, code_id: u16, share_p: &[u8]) -> Result<(), PairingError> {
        if !matches!(self.state, State::AwaitStart) {
            return Err(PairingError::UnexpectedMessage);
        }
        if version != PAIRING_VERSION {
            return Err(PairingError::VersionMismatch {
                ours: PAIRING_VERSION,
                theirs: version,
            });
        }
        let share =
            ShareP::<P256Sha256>::from_bytes(share_p).map_err(|_| PairingError::Malformed)?;
        self.state = State::AwaitRecord {
            code_id,
            share_p: *share.as_bytes(),
        };
        self.code_id = Some(code_id);
        self.event = Some(Event::RecordNeeded(code_id));
        Ok(())
    }

    /// Runs the PAKE with the record of the code the node named and queues the
    /// `Challenge`. Call only after the code's window let the attempt in, and count the
    /// attempt then.
    ///
    /// Refused, changing nothing, when no record is awaited
    /// ([`PairingError::UnexpectedMessage`]), when `record` does not parse
    /// ([`PairingError::Internal`]) or when the handshake deadline has passed
    /// ([`PairingError::TimedOut`]); the application then calls [`Self::refuse`]. A node
    /// whose share or code id the PAKE refuses fails the run (`Ok` here: the command
    /// was taken; the failure comes as an event).
    pub fn accept_record<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        record: &RecordBytes,
        rng: &mut R,
    ) -> Result<(), PairingError> {
        let State::AwaitRecord { code_id, share_p } = self.state else {
            return Err(PairingError::UnexpectedMessage);
        };
        let record =
            VerifierRecord::<P256Sha256>::from_bytes(record).map_err(|_| PairingError::Internal)?;
        if now >= self.deadline {
            return Err(PairingError::TimedOut);
        }
        let mut step = || -> Result<_, PairingError> {
            let share_p =
                ShareP::<P256Sha256>::from_bytes(&share_p).map_err(|_| PairingError::Malformed)?;
            let prover_id = PairingCode::new(code_id, 0)
                .map_err(|_| PairingError::UnknownCode)?
                .prover_id();
            let context = Context {
                context: PAKE_CONTEXT,
                prover_id: &prover_id,
                verifier_id: VERIFIER_ID,
            };
            let (verifier, share_v) = Verifier::start(&record, &context, rng);
            let (confirming, confirm_v) = verifier
                .receive(&share_p)
                .map_err(|_| PairingError::Malformed)?;
            Ok((confirming, *share_v.as_bytes(), *confirm_v.as_bytes()))
        };
        match step() {
            Ok((verifier, share_v, confirm_v)) => {
                self.state = State::AwaitConfirm { code_id, verifier };
                self.tx = Some(Tx::Challenge { share_v, confirm_v });
                // `RecordNeeded`, if still unreported, is answered.
                self.event = None;
            }
            Err(e) => {
                self.fail(e, true);
            }
        }
        Ok(())
    }

    /// Ends the run with `error` (unknown code, expired, window closed, rate limited,
    /// approval expired...); the node is told which. Refused on a finished run
    /// ([`PairingError::UnexpectedMessage`]). A queued answer is dropped for the `Abort`.
    pub fn refuse(&mut self, error: PairingError) -> Result<(), PairingError> {
        if self.is_finished() {
            return Err(PairingError::UnexpectedMessage);
        }
        self.fail(error, true);
        Ok(())
    }

    fn on_confirm(
        &mut self,
        now: Instant,
        confirm_p: &[u8],
        sealed_csr: &[u8],
    ) -> Result<(), PairingError> {
        let State::AwaitConfirm { .. } = self.state else {
            return Err(PairingError::UnexpectedMessage);
        };
        let confirm_p =
            ConfirmP::<P256Sha256>::from_bytes(confirm_p).map_err(|_| PairingError::WrongCode)?;
        let State::AwaitConfirm {
            code_id, verifier, ..
        } = core::mem::replace(&mut self.state, State::Moving)
        else {
            return Err(PairingError::Internal);
        };
        let shared = verifier
            .finish(&confirm_p)
            .map_err(|_| PairingError::WrongCode)?;
        let keys = SealKeys::derive(shared.as_bytes(), code_id);
        let buf = self.buf.as_mut();
        let room = buf
            .get_mut(..sealed_csr.len())
            .ok_or(PairingError::BufferTooSmall)?;
        room.copy_from_slice(sealed_csr);
        let csr_len = keys.open(Kind::Csr, 0, room)?;
        self.state = State::AwaitDecision { keys, csr_len };
        self.event = Some(Event::CsrReceived(code_id));
        self.deadline = now.plus_ms(self.config.decision_timeout_ms);
        Ok(())
    }

    /// The authenticated CSR, once received and while the run waits for its answer.
    pub fn csr(&self) -> Option<&[u8]> {
        match self.state {
            State::AwaitDecision { csr_len, .. } => Some(&self.buf.as_ref()[..csr_len]),
            _ => None,
        }
    }

    /// Seals `answer` and queues it; on an error nothing changes.
    fn answer(&mut self, now: Instant, answer: &Answer<'_>) -> Result<(), PairingError> {
        let State::AwaitDecision {
            ref keys, csr_len, ..
        } = self.state
        else {
            return Err(PairingError::UnexpectedMessage);
        };
        if self.tx.is_some() {
            // One answer at a time: send the queued one first.
            return Err(PairingError::UnexpectedMessage);
        }
        if now >= self.deadline {
            return Err(PairingError::ApprovalExpired);
        }
        let at = csr_len;
        let buf = &mut self.buf.as_mut()[at..];
        let room = buf.len().saturating_sub(TAG_LEN);
        let len =
            encode_answer(answer, &mut buf[..room]).map_err(|_| PairingError::BufferTooSmall)?;
        // Sealing in place only touches the room after the CSR, which holds nothing else.
        let sealed = keys.seal(Kind::Answer, self.next_seq, buf, len)?;
        let frame = frame_len(&PairingMessage::Sealed(Sealed {
            seq: self.next_seq,
            ciphertext: &buf[..sealed],
        }));
        if frame - HEADER_LEN > self.config.peer_max_frame as usize {
            return Err(PairingError::BufferTooSmall);
        }
        self.tx = Some(Tx::Sealed {
            seq: self.next_seq,
            at,
            len: sealed,
        });
        self.next_seq += 1;
        // `CsrReceived`, if still unreported, is answered.
        self.event = None;
        Ok(())
    }

    /// Tells the node an operator must approve first. Refused, changing nothing, unless
    /// the run holds a CSR and no answer is queued ([`PairingError::UnexpectedMessage`]),
    /// at or after the decision deadline ([`PairingError::ApprovalExpired`]), or when the
    /// answer does not fit ([`PairingError::BufferTooSmall`]); the same for `issue` and
    /// `reject`.
    pub fn pending(&mut self, now: Instant) -> Result<(), PairingError> {
        self.answer(now, &Answer::Pending)
    }

    /// Sends the issued certificate; the run completes once it is handed over.
    pub fn issue(&mut self, now: Instant, issued: &Issued<'_>) -> Result<(), PairingError> {
        self.answer(now, &Answer::Issued(*issued))?;
        self.finish_after_tx = Some(Ok(()));
        Ok(())
    }

    /// Tells the node the operator refused; the run fails with
    /// [`PairingError::RejectedByOperator`] once the answer is handed over.
    pub fn reject(&mut self, now: Instant) -> Result<(), PairingError> {
        self.answer(now, &Answer::Rejected)?;
        self.finish_after_tx = Some(Err(PairingError::RejectedByOperator));
        Ok(())
    }

    fn fail(&mut self, error: PairingError, tell_peer: bool) -> PairingError {
        self.state = State::Failed(error);
        self.tx = tell_peer.then_some(Tx::Abort(error));
        // The failure replaces an unreported request: nothing is asked of the
        // application any more.
        self.event = Some(Event::Failed(error));
        self.finish_after_tx = None;
        self.close = Close::Due;
        error
    }

    /// Writes the next frame (prefix included) into `buf`, or asks to close the
    /// connection once the run is finished and its last frame was handed over. `None`:
    /// nothing to send now. A `buf` too small for the next frame consumes nothing.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError> {
        let _ = now;
        while let Some(tx) = self.tx {
            let written = {
                let msg = match tx {
                    Tx::Challenge {
                        ref share_v,
                        ref confirm_v,
                    } => PairingMessage::Challenge(Challenge { share_v, confirm_v }),
                    Tx::Sealed { seq, at, len } => PairingMessage::Sealed(Sealed {
                        seq,
                        ciphertext: &self.buf.as_ref()[at..at + len],
                    }),
                    Tx::Abort(error) => PairingMessage::Abort(Abort { error }),
                };
                // Every queued frame is at most `transmit_len` (checked when queued).
                let needed = frame_len(&msg);
                if needed <= self.transmit_len && buf.len() < needed {
                    return Err(TransmitError::BufferTooSmall { needed });
                }
                encode_pairing(&msg, self.config.peer_max_frame, buf)
            };
            match written {
                Ok(n) => {
                    self.tx = None;
                    match self.finish_after_tx.take() {
                        Some(Ok(())) => {
                            self.state = State::Completed;
                            self.event = Some(Event::Completed);
                            self.close = Close::Due;
                        }
                        Some(Err(e)) => {
                            self.state = State::Failed(e);
                            self.event = Some(Event::Failed(e));
                            self.close = Close::Due;
                        }
                        None => {}
                    }
                    return Ok(Some(Transmit::Frame(n)));
                }
                // Does not happen (see above); should it, the run fails rather than offer
                // the same frame forever.
                Err(_) if matches!(tx, Tx::Abort(_)) => self.tx = None,
                Err(_) => {
                    self.fail(PairingError::Internal, true);
                }
            }
        }
        if self.close == Close::Due {
            self.close = Close::Asked;
            return Ok(Some(Transmit::Close));
        }
        Ok(None)
    }

    /// The next event for the application, once.
    pub fn poll_event(&mut self) -> Option<DaemonPairingEvent<'_>> {
        Some(match self.event.take()? {
            Event::RecordNeeded(code_id) => DaemonPairingEvent::RecordNeeded { code_id },
            Event::CsrReceived(code_id) => match self.csr() {
                Some(csr) => DaemonPairingEvent::CsrReceived { code_id, csr },
                None => DaemonPairingEvent::Failed(PairingError::Internal),
            },
            Event::Completed => DaemonPairingEvent::Completed,
            Event::Failed(e) => DaemonPairingEvent::Failed(e),
        })
    }

    /// When [`Self::handle_timeout`] is due: the handshake or decision deadline; `None`
    /// once finished, or while the application has not answered `RecordNeeded`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.armed_deadline()
    }

    /// The failure, once failed.
    pub fn error(&self) -> Option<PairingError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The code id the node named, once it did (also after the run finished).
    pub fn code_id(&self) -> Option<u16> {
        self.code_id
    }

    /// Completed or failed: no frame is taken any more and no deadline runs.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Completed | State::Failed(_))
    }
}
