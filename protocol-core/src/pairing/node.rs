//! The node's side of pairing: the SPAKE2+ prover.

use spake2plus::rand_core::CryptoRng;
use spake2plus::{ConfirmV, Context, P256Sha256, Prover, ShareV};

use super::PairingError;
use super::cert::{certificate_spki, csr_spki};
use super::code::{PAKE_CONTEXT, PairingCode, VERIFIER_ID};
use super::messages::{
    Abort, Answer, Confirm, Issued, PAIRING_MAX_FRAME, PAIRING_VERSION, PairingMessage, Start,
    abort_frame_len, decode_answer, decode_pairing, encode_pairing, frame_len,
};
use super::seal::{Kind, SealKeys, TAG_LEN};
use crate::frame::HEADER_LEN;
use crate::time::Instant;
use crate::transmit::{Transmit, TransmitError};

/// What the node gets: its certificate, the CA, and the daemon to pin.
pub type Paired<'a> = Issued<'a>;

/// Node-side settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    /// The whole pairing, an operator's approval included, must end within this many
    /// milliseconds.
    pub timeout_ms: u64,
    /// The daemon's fingerprint from the QR code, if the code came from one; the daemon
    /// must then announce exactly it.
    pub expected_fingerprint: Option<[u8; 32]>,
    /// Largest frame the daemon accepts.
    pub peer_max_frame: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 15 * 60 * 1000,
            expected_fingerprint: None,
            peer_max_frame: PAIRING_MAX_FRAME,
        }
    }
}

/// What [`NodePairing::poll_event`] has for the application.
#[derive(Debug, PartialEq, Eq)]
pub enum NodePairingEvent<'a> {
    /// The daemon waits for an operator's approval.
    AwaitingApproval,
    /// Paired: store these (the certificate goes with the node's private key). The run
    /// is finished.
    Paired(Paired<'a>),
    /// The pairing failed; the run is finished.
    Failed(PairingError),
}

// No allocator to box the PAKE state into; there is one state per run.
#[allow(clippy::large_enum_variant)]
enum State {
    AwaitChallenge(Prover<P256Sha256>),
    AwaitAnswer(SealKeys),
    Paired {
        len: usize,
    },
    Failed(PairingError),
    /// Transient, while a step consumes the previous state.
    Moving,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitChallenge(_) => "await_challenge",
            State::AwaitAnswer(_) => "await_answer",
            State::Paired { .. } => "paired",
            State::Failed(_) => "failed",
            State::Moving => "moving",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Tx {
    Start,
    Confirm { confirm_p: [u8; 32], sealed: usize },
    Abort(PairingError),
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Pending,
    Paired,
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

/// One pairing run, node side.
///
/// The node builds its CSR itself (with the private key it keeps) and hands the DER in;
/// `buf` holds first the sealed CSR, then the daemon's answer, and must be at least
/// [`PAIRING_MAX_FRAME`] bytes (and hold the sealed CSR).
pub struct NodePairing<'c, B> {
    config: NodeConfig,
    code_id: u16,
    prover_id: [u8; 4],
    share_p: [u8; 65],
    csr: &'c [u8],
    buf: B,
    state: State,
    tx: Option<Tx>,
    event: Option<Event>,
    close: Close,
    deadline: Instant,
    next_seq: u32,
    transmit_len: usize,
}

impl<B> core::fmt::Debug for NodePairing<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NodePairing")
            .field("code_id", &self.code_id)
            .field("state", &self.state.name())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<'c, B: AsRef<[u8]> + AsMut<[u8]>> NodePairing<'c, B> {
    /// Starts a run with `code`; the first frame out is the `Start`.
    ///
    /// Refused with [`PairingError::BadCsr`] when `csr` does not parse, and with
    /// [`PairingError::BufferTooSmall`] when `buf` is too small or a frame this run sends
    /// (the `Confirm` carries the CSR) would exceed `config.peer_max_frame`.
    pub fn new<R: CryptoRng + ?Sized>(
        now: Instant,
        code: &PairingCode,
        csr: &'c [u8],
        buf: B,
        config: NodeConfig,
        rng: &mut R,
    ) -> Result<Self, PairingError> {
        if csr_spki(csr).is_none() {
            return Err(PairingError::BadCsr);
        }
        let sealed_csr = csr.len() + TAG_LEN;
        if buf.as_ref().len() < (PAIRING_MAX_FRAME as usize).max(sealed_csr) {
            return Err(PairingError::BufferTooSmall);
        }
        let prover_id = code.prover_id();
        let context = Context {
            context: PAKE_CONTEXT,
            prover_id: &prover_id,
            verifier_id: VERIFIER_ID,
        };
        let secret = code.prover_secret().map_err(|_| PairingError::Internal)?;
        let (prover, share) = Prover::start(&secret, &context, rng);
        let share_p = *share.as_bytes();
        // The largest frame of each kind this run can send; the Confirm's sealed CSR is
        // measured on a slice of its length (only the length counts).
        let start = frame_len(&PairingMessage::Start(Start {
            version: PAIRING_VERSION,
            code_id: code.id(),
            share_p: &share_p,
        }));
        let confirm = frame_len(&PairingMessage::Confirm(Confirm {
            confirm_p: &[0; 32],
            sealed_csr: &buf.as_ref()[..sealed_csr],
        }));
        let transmit_len = start.max(confirm).max(abort_frame_len());
        if transmit_len - HEADER_LEN > config.peer_max_frame as usize {
            return Err(PairingError::BufferTooSmall);
        }
        Ok(Self {
            config,
            code_id: code.id(),
            prover_id,
            share_p,
            csr,
            buf,
            state: State::AwaitChallenge(prover),
            tx: Some(Tx::Start),
            event: None,
            close: Close::No,
            deadline: now.plus_ms(config.timeout_ms),
            next_seq: 0,
            transmit_len,
        })
    }

    /// The largest frame this run sends, prefix included: a `poll_transmit` buffer of
    /// this size always holds the next frame.
    pub fn transmit_len(&self) -> usize {
        self.transmit_len
    }

    /// Feeds one received frame's payload. An error means the run failed (now, or
    /// earlier: a failed run stays failed); `poll_transmit` then has an `Abort` for the
    /// daemon unless the failure is the daemon's own `Abort`, and `poll_event` the
    /// `Failed` event. Frames after a successful run are ignored.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), PairingError> {
        match self.state {
            State::Failed(e) => return Err(e),
            State::Paired { .. } => return Ok(()),
            _ => {}
        }
        if now >= self.deadline {
            return Err(self.fail(PairingError::TimedOut, true));
        }
        let msg = match decode_pairing(frame) {
            Ok(m) => m,
            Err(_) => return Err(self.fail(PairingError::Malformed, true)),
        };
        let result = match msg {
            PairingMessage::Challenge(c) => self.on_challenge(c.share_v, c.confirm_v),
            PairingMessage::Sealed(s) => self.on_sealed(s.seq, s.ciphertext),
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

    /// Applies the deadline: at or after it, an unfinished run fails with
    /// [`PairingError::TimedOut`]. Cheap; may be called at any time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.is_finished() && now >= self.deadline {
            self.fail(PairingError::TimedOut, true);
        }
    }

    fn on_challenge(&mut self, share_v: &[u8], confirm_v: &[u8]) -> Result<(), PairingError> {
        let State::AwaitChallenge(_) = self.state else {
            return Err(PairingError::UnexpectedMessage);
        };
        let share_v =
            ShareV::<P256Sha256>::from_bytes(share_v).map_err(|_| PairingError::Malformed)?;
        let confirm_v =
            ConfirmV::<P256Sha256>::from_bytes(confirm_v).map_err(|_| PairingError::Malformed)?;
        let State::AwaitChallenge(prover) = core::mem::replace(&mut self.state, State::Moving)
        else {
            return Err(PairingError::Internal);
        };
        let confirming = prover
            .receive(&share_v)
            .map_err(|_| PairingError::Malformed)?;
        // RFC 9383 order: the daemon's confirmation is checked before ours goes out, so an
        // impostor without the record learns nothing it could test guesses against.
        let (confirm_p, shared) = confirming
            .finish(&confirm_v)
            .map_err(|_| PairingError::WrongCode)?;
        let keys = SealKeys::derive(shared.as_bytes(), self.code_id);
        let buf = self.buf.as_mut();
        buf[..self.csr.len()].copy_from_slice(self.csr);
        let sealed = keys.seal(Kind::Csr, 0, buf, self.csr.len())?;
        self.tx = Some(Tx::Confirm {
            confirm_p: *confirm_p.as_bytes(),
            sealed,
        });
        self.state = State::AwaitAnswer(keys);
        Ok(())
    }

    fn on_sealed(&mut self, seq: u32, ciphertext: &[u8]) -> Result<(), PairingError> {
        let State::AwaitAnswer(keys) = &self.state else {
            return Err(PairingError::UnexpectedMessage);
        };
        if matches!(self.tx, Some(Tx::Confirm { .. })) {
            // The daemon cannot answer a CSR it was not sent yet.
            return Err(PairingError::UnexpectedMessage);
        }
        if seq != self.next_seq {
            return Err(PairingError::Tampered);
        }
        let buf = self.buf.as_mut();
        let room = buf
            .get_mut(..ciphertext.len())
            .ok_or(PairingError::BufferTooSmall)?;
        room.copy_from_slice(ciphertext);
        let len = keys.open(Kind::Answer, seq, room)?;
        self.next_seq += 1;
        match decode_answer(&self.buf.as_ref()[..len]).map_err(|_| PairingError::Malformed)? {
            Answer::Pending => {
                self.event = Some(Event::Pending);
                Ok(())
            }
            Answer::Rejected => Err(PairingError::RejectedByOperator),
            Answer::Issued(issued) => {
                let ours = csr_spki(self.csr);
                let theirs = certificate_spki(issued.client_cert);
                if ours.is_none() || ours != theirs || certificate_spki(issued.ca_cert).is_none() {
                    return Err(PairingError::BadCertificate);
                }
                if self
                    .config
                    .expected_fingerprint
                    .is_some_and(|fp| fp != issued.server_fingerprint)
                {
                    return Err(PairingError::FingerprintMismatch);
                }
                self.state = State::Paired { len };
                self.event = Some(Event::Paired);
                self.close = Close::Due;
                Ok(())
            }
        }
    }

    fn fail(&mut self, error: PairingError, tell_peer: bool) -> PairingError {
        self.state = State::Failed(error);
        // A frame still queued (e.g. a Confirm) must not leave after a failure.
        self.tx = tell_peer.then_some(Tx::Abort(error));
        // The failure replaces an unreported `AwaitingApproval`: it no longer holds.
        self.event = Some(Event::Failed(error));
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
                    Tx::Start => PairingMessage::Start(Start {
                        version: PAIRING_VERSION,
                        code_id: self.code_id,
                        share_p: &self.share_p,
                    }),
                    Tx::Confirm {
                        ref confirm_p,
                        sealed,
                    } => PairingMessage::Confirm(Confirm {
                        confirm_p,
                        sealed_csr: &self.buf.as_ref()[..sealed],
                    }),
                    Tx::Abort(error) => PairingMessage::Abort(Abort { error }),
                };
                let needed = frame_len(&msg);
                if needed <= self.transmit_len && buf.len() < needed {
                    return Err(TransmitError::BufferTooSmall { needed });
                }
                encode_pairing(&msg, self.config.peer_max_frame, buf)
            };
            match written {
                Ok(n) => {
                    self.tx = None;
                    return Ok(Some(Transmit::Frame(n)));
                }
                // Sizes are checked at construction, so this does not happen; should it,
                // the run fails rather than offer the same frame forever.
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
    pub fn poll_event(&mut self) -> Option<NodePairingEvent<'_>> {
        Some(match self.event.take()? {
            Event::Pending => NodePairingEvent::AwaitingApproval,
            Event::Failed(e) => NodePairingEvent::Failed(e),
            Event::Paired => match self.paired() {
                Some(p) => NodePairingEvent::Paired(p),
                None => NodePairingEvent::Failed(PairingError::Internal),
            },
        })
    }

    /// When [`Self::handle_timeout`] is due: the run's deadline; `None` once finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.is_finished()).then_some(self.deadline)
    }

    /// The pairing's result, once paired.
    pub fn paired(&self) -> Option<Paired<'_>> {
        let State::Paired { len } = self.state else {
            return None;
        };
        match decode_answer(&self.buf.as_ref()[..len]) {
            Ok(Answer::Issued(issued)) => Some(issued),
            _ => None,
        }
    }

    /// The failure, once failed.
    pub fn error(&self) -> Option<PairingError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Paired or failed: no frame is taken any more and no deadline runs.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Paired { .. } | State::Failed(_))
    }

    /// `idProver` of this run (the code id's digits).
    pub fn prover_id(&self) -> [u8; 4] {
        self.prover_id
    }
}
