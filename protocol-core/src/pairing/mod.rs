//! Pairing: a node that holds only a short code gets a client certificate for a key it
//! generated itself, and learns which daemon to trust, over any transport.
//!
//! Runs on its own connection, before the node has a certificate, with its own message
//! set ([`PairingMessage`]), framed with [`crate::frame`]:
//!
//! 1. node -> daemon `Start`: the code's public id and the SPAKE2+ share `shareP`;
//! 2. daemon -> node `Challenge`: `shareV` and `confirmV`;
//! 3. node -> daemon `Confirm`: `confirmP` (sent only once `confirmV` checked) and the
//!    node's CSR, sealed with a key derived from the PAKE;
//! 4. daemon -> node `Sealed`: zero or more `Pending` answers while an operator decides,
//!    then `Issued` (client certificate, CA certificate, server-certificate fingerprint)
//!    or `Rejected`, each sealed with the other direction's key.
//!
//! Either side may send `Abort` with a typed [`PairingError`] and close. The node role is
//! [`NodePairing`], the daemon role [`DaemonPairing`]; both follow the crate's sans-IO
//! convention (`SANS_IO.md`): frames and timers go in through `handle_frame` and
//! `handle_timeout`, frames come out of `poll_transmit`, events out of `poll_event`, the
//! next deadline out of `poll_timeout`. A node's driver pumps its run as a [`Watched`],
//! which notes a listener that refuses the connection with a node-plane `Error` frame
//! instead of pairing. `PAIRING.md` next to this crate's manifest specifies the protocol.

mod approval;
mod cert;
mod code;
mod daemon;
mod limits;
mod messages;
mod node;
mod seal;
mod serde_instant;
mod watched;

pub use approval::{Approval, ApprovalError, ApprovalState};
pub use cert::{certificate_fingerprint, certificate_spki, csr_spki};
pub use code::{
    CodeDisplay, CodeError, MAX_CODE_ID, PAKE_CONTEXT, PBKDF2_ROUNDS, PairingCode, PairingUri,
    RecordBytes, SECRET_SPACE, URI_PREFIX, URI_VERSION, VERIFIER_ID,
};
pub use daemon::{DaemonConfig, DaemonPairing, DaemonPairingEvent};
pub use limits::{
    CodeLifetime, CodeWindow, DEFAULT_CODE_LIFETIME_MS, LimitError, MAX_CODE_LIFETIME_MS,
    MAX_FAILED_ATTEMPTS, MIN_CODE_LIFETIME_MS, TokenBucket,
};
#[cfg(feature = "alloc")]
pub use messages::OwnedIssued;
pub use messages::{
    Abort, Answer, Challenge, Confirm, Issued, PAIRING_MAX_FRAME, PAIRING_VERSION, PairingMessage,
    Sealed, Start, decode_answer, decode_pairing, encode_answer, encode_pairing,
};
pub use node::{NodeConfig, NodePairing, NodePairingEvent, Paired};
pub use seal::{SealKeys, TAG_LEN};
pub use watched::{Refusal, Watched};

use serde::{Deserialize, Serialize};

/// Why a pairing failed. Also the code an `Abort` carries, so each side learns which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PairingError {
    /// Tag 0. The key confirmation failed: the peer holds another code, or a relay
    /// changed the PAKE messages.
    WrongCode,
    /// Tag 1. The code's lifetime is over.
    Expired,
    /// Tag 2. The code saw too many failed attempts; it is refused even when right.
    WindowClosed,
    /// Tag 3. Too many pairing starts; retry later.
    RateLimited { retry_after_ms: u64 },
    /// Tag 4. No code with this id is outstanding.
    UnknownCode,
    /// Tag 5. The code already paired a node.
    AlreadyUsed,
    /// Tag 6. The operator refused the pairing.
    RejectedByOperator,
    /// Tag 7. A sealed message failed authentication.
    Tampered,
    /// Tag 8. The CSR does not parse, its signature is wrong, or its key is refused.
    BadCsr,
    /// Tag 9. The issued certificate does not carry the node's key, or does not parse.
    BadCertificate,
    /// Tag 10. The daemon's fingerprint is not the one the QR code carried.
    FingerprintMismatch,
    /// Tag 11. A frame that does not decode.
    Malformed,
    /// Tag 12. A valid message at the wrong time or in the wrong direction.
    UnexpectedMessage,
    /// Tag 13. No common pairing version.
    VersionMismatch { ours: u16, theirs: u16 },
    /// Tag 14. The pairing's deadline passed.
    TimedOut,
    /// Tag 15. A buffer too small for a message.
    BufferTooSmall,
    /// Tag 16. The pairing expired while the operator had not decided.
    ApprovalExpired,
    /// Tag 17. Something on the sender's side failed.
    Internal,
}

impl core::fmt::Display for PairingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PairingError::WrongCode => f.write_str("wrong pairing code"),
            PairingError::Expired => f.write_str("pairing code expired"),
            PairingError::WindowClosed => {
                f.write_str("pairing code closed after too many failed attempts")
            }
            PairingError::RateLimited { retry_after_ms } => {
                write!(f, "too many pairing attempts; retry in {retry_after_ms} ms")
            }
            PairingError::UnknownCode => f.write_str("unknown pairing code"),
            PairingError::AlreadyUsed => f.write_str("pairing code already used"),
            PairingError::RejectedByOperator => f.write_str("pairing rejected by the operator"),
            PairingError::Tampered => f.write_str("sealed pairing message failed authentication"),
            PairingError::BadCsr => f.write_str("certificate signing request refused"),
            PairingError::BadCertificate => {
                f.write_str("issued certificate does not carry the node's key")
            }
            PairingError::FingerprintMismatch => {
                f.write_str("daemon fingerprint differs from the pinned one")
            }
            PairingError::Malformed => f.write_str("malformed pairing message"),
            PairingError::UnexpectedMessage => f.write_str("unexpected pairing message"),
            PairingError::VersionMismatch { ours, theirs } => {
                write!(
                    f,
                    "pairing version {theirs} not spoken (this side speaks {ours})"
                )
            }
            PairingError::TimedOut => f.write_str("pairing timed out"),
            PairingError::BufferTooSmall => f.write_str("buffer too small for a pairing message"),
            PairingError::ApprovalExpired => {
                f.write_str("pairing expired before the operator decided")
            }
            PairingError::Internal => f.write_str("internal pairing failure"),
        }
    }
}

impl core::error::Error for PairingError {}
