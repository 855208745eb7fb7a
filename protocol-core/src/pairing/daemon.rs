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

use super::code::{PAKE_CONTEXT, PairingCode, RecordBytes, VERIFIER_ID};
use super::messages::{
    Abort, Answer, Challenge, Issued, PAIRING_MAX_FRAME, PAIRING_VERSION, PairingMessage, Sealed,
    decode_pairing, encode_answer, encode_pairing,
};
use super::seal::{Kind, SealKeys, TAG_LEN};
use super::{Input, Millis, PairingError};
use crate::wire::EncodeError;

/// Daemon-side settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonConfig {
    /// From the connection's start to an authenticated CSR.
    pub handshake_timeout_ms: Millis,
    /// From the CSR to the operator's decision.
    pub decision_timeout_ms: Millis,
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

/// What [`DaemonPairing::poll_output`] has for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum DaemonOutput<'a> {
    /// A frame of this many bytes was written to the output buffer: send it.
    Transmit(usize),
    /// A node wants to pair with this code id. Check the code's window and the rate
    /// limit, count the attempt, then call [`DaemonPairing::accept_record`] or
    /// [`DaemonPairing::refuse`].
    RecordNeeded { code_id: u16 },
    /// The node proved the code and sent this CSR (authenticated by the PAKE). The
    /// attempt succeeded: use the code up. Then answer with `issue`, `pending` or `reject`.
    CsrReceived { code_id: u16, csr: &'a [u8] },
    /// The certificate was sent; the pairing is complete.
    Completed,
    /// The run failed (a wrong code shows here as [`PairingError::WrongCode`]).
    Failed(PairingError),
    /// Nothing to do before this time; then call `handle_input(now, Input::Timeout)`.
    Timeout(Millis),
    /// Waiting on the application (`accept_record`, or a decision on the CSR).
    Waiting,
    /// Finished.
    Done,
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
        code_id: u16,
        keys: SealKeys,
        csr_len: usize,
    },
    Completed,
    Failed(PairingError),
    Moving,
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

/// One pairing run, daemon side. `buf` holds the opened CSR and, after it, the answer
/// being sealed: at least twice [`PAIRING_MAX_FRAME`].
pub struct DaemonPairing<B> {
    config: DaemonConfig,
    buf: B,
    state: State,
    tx: Option<Tx>,
    event: Option<Event>,
    deadline: Millis,
    next_seq: u32,
    /// After the last answer is sent, the state it leads to.
    finish_after_tx: Option<Result<(), PairingError>>,
}

impl<B> core::fmt::Debug for DaemonPairing<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DaemonPairing")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> DaemonPairing<B> {
    pub fn new(now: Millis, buf: B, config: DaemonConfig) -> Result<Self, PairingError> {
        if buf.as_ref().len() < 2 * PAIRING_MAX_FRAME as usize {
            return Err(PairingError::BufferTooSmall);
        }
        Ok(Self {
            config,
            buf,
            state: State::AwaitStart,
            tx: None,
            event: None,
            deadline: now.saturating_add(config.handshake_timeout_ms),
            next_seq: 0,
            finish_after_tx: None,
        })
    }

    /// Feeds a received frame or a timer. An error means the run just failed.
    pub fn handle_input(&mut self, now: Millis, input: Input<'_>) -> Result<(), PairingError> {
        match self.state {
            State::Failed(e) => return Err(e),
            State::Completed => return Ok(()),
            _ => {}
        }
        if now >= self.deadline {
            let e = if matches!(self.state, State::AwaitDecision { .. }) {
                PairingError::ApprovalExpired
            } else {
                PairingError::TimedOut
            };
            return Err(self.fail(e, true));
        }
        let Input::Frame(payload) = input else {
            return Ok(());
        };
        let msg = match decode_pairing(payload) {
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
        self.event = Some(Event::RecordNeeded(code_id));
        Ok(())
    }

    /// Runs the PAKE with the record of the code the node named. Call only after the
    /// code's window let the attempt in, and count the attempt then.
    pub fn accept_record<R: CryptoRng + ?Sized>(
        &mut self,
        record: &RecordBytes,
        rng: &mut R,
    ) -> Result<(), PairingError> {
        let State::AwaitRecord { code_id, share_p } = self.state else {
            return Err(PairingError::UnexpectedMessage);
        };
        let mut step = || -> Result<_, PairingError> {
            let record = VerifierRecord::<P256Sha256>::from_bytes(record)
                .map_err(|_| PairingError::Internal)?;
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
                Ok(())
            }
            Err(e) => Err(self.fail(e, true)),
        }
    }

    /// Refuses the run with `error` (unknown code, expired, window closed, rate limited,
    /// approval expired...); the node is told which.
    pub fn refuse(&mut self, error: PairingError) {
        if !matches!(self.state, State::Completed | State::Failed(_)) {
            self.fail(error, true);
        }
    }

    fn on_confirm(
        &mut self,
        now: Millis,
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
        self.state = State::AwaitDecision {
            code_id,
            keys,
            csr_len,
        };
        self.event = Some(Event::CsrReceived(code_id));
        self.deadline = now.saturating_add(self.config.decision_timeout_ms);
        Ok(())
    }

    /// The authenticated CSR, once received.
    pub fn csr(&self) -> Option<&[u8]> {
        match self.state {
            State::AwaitDecision { csr_len, .. } => Some(&self.buf.as_ref()[..csr_len]),
            _ => None,
        }
    }

    fn answer(&mut self, answer: &Answer<'_>) -> Result<(), PairingError> {
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
        let at = csr_len;
        let buf = &mut self.buf.as_mut()[at..];
        let room = buf.len().saturating_sub(TAG_LEN);
        let len =
            encode_answer(answer, &mut buf[..room]).map_err(|_| PairingError::BufferTooSmall)?;
        let sealed = keys.seal(Kind::Answer, self.next_seq, buf, len)?;
        // Room for the `Sealed` envelope (tag, seq, length) within the node's limit.
        if sealed + 16 > self.config.peer_max_frame as usize {
            return Err(PairingError::BufferTooSmall);
        }
        self.tx = Some(Tx::Sealed {
            seq: self.next_seq,
            at,
            len: sealed,
        });
        self.next_seq += 1;
        Ok(())
    }

    /// Tells the node an operator must approve first.
    pub fn pending(&mut self) -> Result<(), PairingError> {
        self.answer(&Answer::Pending)
    }

    /// Sends the issued certificate; the run completes once it is transmitted.
    pub fn issue(&mut self, issued: &Issued<'_>) -> Result<(), PairingError> {
        self.answer(&Answer::Issued(*issued))?;
        self.finish_after_tx = Some(Ok(()));
        Ok(())
    }

    /// Tells the node the operator refused.
    pub fn reject(&mut self) -> Result<(), PairingError> {
        self.answer(&Answer::Rejected)?;
        self.finish_after_tx = Some(Err(PairingError::RejectedByOperator));
        Ok(())
    }

    fn fail(&mut self, error: PairingError, tell_peer: bool) -> PairingError {
        self.state = State::Failed(error);
        self.tx = tell_peer.then_some(Tx::Abort(error));
        self.event = Some(Event::Failed(error));
        self.finish_after_tx = None;
        error
    }

    /// The next thing to do. Call until it returns `Timeout`, `Waiting` or `Done`.
    pub fn poll_output(
        &mut self,
        now: Millis,
        out: &mut [u8],
    ) -> Result<DaemonOutput<'_>, EncodeError> {
        if let Some(tx) = self.tx {
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
            let n = encode_pairing(&msg, self.config.peer_max_frame, out)?;
            self.tx = None;
            match self.finish_after_tx.take() {
                Some(Ok(())) => {
                    self.state = State::Completed;
                    self.event = Some(Event::Completed);
                }
                Some(Err(e)) => {
                    self.state = State::Failed(e);
                    self.event = Some(Event::Failed(e));
                }
                None => {}
            }
            return Ok(DaemonOutput::Transmit(n));
        }
        if let Some(event) = self.event.take() {
            return Ok(match event {
                Event::RecordNeeded(code_id) => DaemonOutput::RecordNeeded { code_id },
                Event::CsrReceived(code_id) => match self.csr() {
                    Some(csr) => DaemonOutput::CsrReceived { code_id, csr },
                    None => DaemonOutput::Failed(PairingError::Internal),
                },
                Event::Completed => DaemonOutput::Completed,
                Event::Failed(e) => DaemonOutput::Failed(e),
            });
        }
        Ok(match self.state {
            State::Completed | State::Failed(_) => DaemonOutput::Done,
            State::AwaitRecord { .. } => DaemonOutput::Waiting,
            _ if now >= self.deadline => DaemonOutput::Timeout(now),
            _ => DaemonOutput::Timeout(self.deadline),
        })
    }

    /// The failure, once failed.
    pub fn error(&self) -> Option<PairingError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The code id the node named, once it did and while the run is in progress.
    pub fn code_id(&self) -> Option<u16> {
        match self.state {
            State::AwaitRecord { code_id, .. }
            | State::AwaitConfirm { code_id, .. }
            | State::AwaitDecision { code_id, .. } => Some(code_id),
            _ => None,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Completed | State::Failed(_))
    }
}
