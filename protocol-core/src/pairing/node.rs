//! The node's side of pairing: the SPAKE2+ prover.

use spake2plus::rand_core::CryptoRng;
use spake2plus::{ConfirmV, Context, P256Sha256, Prover, ShareV};

use super::cert::{certificate_spki, csr_spki};
use super::code::{PAKE_CONTEXT, PairingCode, VERIFIER_ID};
use super::messages::{
    Abort, Answer, Confirm, Issued, PAIRING_MAX_FRAME, PAIRING_VERSION, PairingMessage, Start,
    decode_answer, decode_pairing, encode_pairing,
};
use super::seal::{Kind, SealKeys, TAG_LEN};
use super::{Input, Millis, PairingError};
use crate::wire::EncodeError;

/// What the node gets: its certificate, the CA, and the daemon to pin.
pub type Paired<'a> = Issued<'a>;

/// Node-side settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    /// The whole pairing, an operator's approval included, must end within this.
    pub timeout_ms: Millis,
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

/// What [`NodePairing::poll_output`] has for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum NodeOutput<'a> {
    /// A frame of this many bytes was written to the output buffer: send it.
    Transmit(usize),
    /// The daemon waits for an operator's approval.
    AwaitingApproval,
    /// Paired: store these (the certificate goes with the node's private key).
    Paired(Paired<'a>),
    /// The pairing failed; close the connection once any `Transmit` was sent.
    Failed(PairingError),
    /// Nothing to do before this time; then call `handle_input(now, Input::Timeout)`.
    Timeout(Millis),
    /// Finished; nothing more will come.
    Done,
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

/// One pairing run, node side.
///
/// The node builds its CSR itself (with the private key it keeps) and hands the DER in;
/// `buf` holds first the sealed CSR, then the daemon's answer, and must be at least
/// [`PAIRING_MAX_FRAME`] bytes.
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
    deadline: Millis,
    next_seq: u32,
}

impl<B> core::fmt::Debug for NodePairing<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NodePairing")
            .field("code_id", &self.code_id)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<'c, B: AsRef<[u8]> + AsMut<[u8]>> NodePairing<'c, B> {
    /// Starts a run with `code`; the first output is the `Start` frame.
    pub fn new<R: CryptoRng + ?Sized>(
        now: Millis,
        code: &PairingCode,
        csr: &'c [u8],
        buf: B,
        config: NodeConfig,
        rng: &mut R,
    ) -> Result<Self, PairingError> {
        if csr_spki(csr).is_none() {
            return Err(PairingError::BadCsr);
        }
        if buf.as_ref().len() < (PAIRING_MAX_FRAME as usize).max(csr.len() + TAG_LEN) {
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
        Ok(Self {
            config,
            code_id: code.id(),
            prover_id,
            share_p: *share.as_bytes(),
            csr,
            buf,
            state: State::AwaitChallenge(prover),
            tx: Some(Tx::Start),
            event: None,
            deadline: now.saturating_add(config.timeout_ms),
            next_seq: 0,
        })
    }

    /// Feeds a received frame or a timer. An error means the run just failed; the
    /// outputs then carry an `Abort` to send and the `Failed` event.
    pub fn handle_input(&mut self, now: Millis, input: Input<'_>) -> Result<(), PairingError> {
        match self.state {
            State::Failed(e) => return Err(e),
            State::Paired { .. } => return Ok(()),
            _ => {}
        }
        if now >= self.deadline {
            return Err(self.fail(PairingError::TimedOut, true));
        }
        let Input::Frame(payload) = input else {
            return Ok(());
        };
        let msg = match decode_pairing(payload) {
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
                Ok(())
            }
        }
    }

    fn fail(&mut self, error: PairingError, tell_peer: bool) -> PairingError {
        self.state = State::Failed(error);
        // A frame still queued (e.g. a Confirm) must not leave after a failure.
        self.tx = tell_peer.then_some(Tx::Abort(error));
        self.event = Some(Event::Failed(error));
        error
    }

    /// The next thing to do. Call until it returns `Timeout` or `Done`. A frame that does
    /// not fit `out` stays queued.
    pub fn poll_output(
        &mut self,
        now: Millis,
        out: &mut [u8],
    ) -> Result<NodeOutput<'_>, EncodeError> {
        if let Some(tx) = self.tx {
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
            let n = encode_pairing(&msg, self.config.peer_max_frame, out)?;
            self.tx = None;
            return Ok(NodeOutput::Transmit(n));
        }
        if let Some(event) = self.event.take() {
            return Ok(match event {
                Event::Pending => NodeOutput::AwaitingApproval,
                Event::Failed(e) => NodeOutput::Failed(e),
                Event::Paired => match self.paired() {
                    Some(p) => NodeOutput::Paired(p),
                    None => NodeOutput::Failed(PairingError::Internal),
                },
            });
        }
        Ok(match self.state {
            State::Paired { .. } | State::Failed(_) => NodeOutput::Done,
            _ if now >= self.deadline => NodeOutput::Timeout(now),
            _ => NodeOutput::Timeout(self.deadline),
        })
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

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Paired { .. } | State::Failed(_))
    }

    /// `idProver` of this run (the code id's digits).
    pub fn prover_id(&self) -> [u8; 4] {
        self.prover_id
    }
}
