//! The pairing message set and the plaintexts sealed inside it.
//!
//! Like the node plane's messages, variant order is the wire tag (postcard varint);
//! variants are only ever appended. Byte fields borrow from the frame.

use serde::{Deserialize, Serialize};

use super::PairingError;
use crate::frame::HEADER_LEN;
use crate::wire::{DecodeError, EncodeError, decode_exact, encode_framed, encode_into};

/// The pairing protocol version this build speaks.
pub const PAIRING_VERSION: u16 = 1;
/// Largest pairing frame either side sends or accepts: two small certificates and a
/// CSR fit with room to spare, and it stays within a microcontroller's RAM.
pub const PAIRING_MAX_FRAME: u32 = 4096;

/// One pairing frame's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairingMessage<'a> {
    /// Tag 0. Node -> daemon.
    #[serde(borrow)]
    Start(Start<'a>),
    /// Tag 1. Daemon -> node.
    #[serde(borrow)]
    Challenge(Challenge<'a>),
    /// Tag 2. Node -> daemon.
    #[serde(borrow)]
    Confirm(Confirm<'a>),
    /// Tag 3. Daemon -> node.
    #[serde(borrow)]
    Sealed(Sealed<'a>),
    /// Tag 4. Either direction; the sender closes after it.
    Abort(Abort),
}

impl PairingMessage<'_> {
    /// Number of kinds this version knows.
    pub const KINDS: u32 = 5;

    pub fn kind(&self) -> &'static str {
        match self {
            PairingMessage::Start(_) => "start",
            PairingMessage::Challenge(_) => "challenge",
            PairingMessage::Confirm(_) => "confirm",
            PairingMessage::Sealed(_) => "sealed",
            PairingMessage::Abort(_) => "abort",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start<'a> {
    pub version: u16,
    /// The code's public id.
    pub code_id: u16,
    /// SPAKE2+ `shareP`, SEC1 uncompressed.
    #[serde(with = "serde_bytes")]
    pub share_p: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge<'a> {
    /// SPAKE2+ `shareV`.
    #[serde(with = "serde_bytes")]
    pub share_v: &'a [u8],
    /// SPAKE2+ `confirmV`.
    #[serde(with = "serde_bytes")]
    pub confirm_v: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirm<'a> {
    /// SPAKE2+ `confirmP`.
    #[serde(with = "serde_bytes")]
    pub confirm_p: &'a [u8],
    /// The CSR (DER), sealed node -> daemon, sequence 0; tag appended.
    #[serde(with = "serde_bytes")]
    pub sealed_csr: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed<'a> {
    /// Daemon -> node sequence number, from 0; also the nonce.
    pub seq: u32,
    /// A postcard [`Answer`], sealed; tag appended.
    #[serde(with = "serde_bytes")]
    pub ciphertext: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    pub error: PairingError,
}

/// The daemon's answer, sealed inside [`Sealed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer<'a> {
    /// Tag 0. An operator must approve; more answers follow.
    Pending,
    /// Tag 1.
    #[serde(borrow)]
    Issued(Issued<'a>),
    /// Tag 2. The operator refused.
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued<'a> {
    /// The node's device id: its certificate's subject CN.
    pub device_id: &'a str,
    /// The client certificate (DER).
    #[serde(with = "serde_bytes")]
    pub client_cert: &'a [u8],
    /// The CA certificate (DER).
    #[serde(with = "serde_bytes")]
    pub ca_cert: &'a [u8],
    /// SHA-256 of the daemon's server certificate (DER), which the node pins.
    pub server_fingerprint: [u8; 32],
}

/// An owned copy of [`Issued`], for hosts with an allocator.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedIssued {
    pub device_id: alloc::string::String,
    pub client_cert: alloc::vec::Vec<u8>,
    pub ca_cert: alloc::vec::Vec<u8>,
    pub server_fingerprint: [u8; 32],
}

#[cfg(feature = "alloc")]
impl Issued<'_> {
    pub fn to_owned(&self) -> OwnedIssued {
        OwnedIssued {
            device_id: self.device_id.into(),
            client_cert: self.client_cert.into(),
            ca_cert: self.ca_cert.into(),
            server_fingerprint: self.server_fingerprint,
        }
    }
}

/// Encodes `msg` as one frame into `out`, refusing anything above `peer_max`.
pub fn encode_pairing(
    msg: &PairingMessage<'_>,
    peer_max: u32,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode_framed(msg, peer_max, out)
}

/// Bytes `msg` takes as one frame, prefix included (what [`encode_pairing`] writes).
pub(crate) fn frame_len(msg: &PairingMessage<'_>) -> usize {
    // Measuring cannot fail for these types; an impossible failure reads as "never fits".
    postcard::serialize_with_flavor(msg, postcard::ser_flavors::Size::default())
        .map_or(usize::MAX, |len| HEADER_LEN + len)
}

/// The largest `Abort` frame, prefix included.
pub(crate) fn abort_frame_len() -> usize {
    frame_len(&PairingMessage::Abort(Abort {
        error: PairingError::RateLimited {
            retry_after_ms: u64::MAX,
        },
    }))
    .max(frame_len(&PairingMessage::Abort(Abort {
        error: PairingError::VersionMismatch {
            ours: u16::MAX,
            theirs: u16::MAX,
        },
    })))
}

/// Decodes one pairing frame's payload; byte fields borrow from `payload`.
pub fn decode_pairing(payload: &[u8]) -> Result<PairingMessage<'_>, DecodeError> {
    // A one-byte tag names an unknown kind precisely; longer varints are malformed.
    match payload.first() {
        Some(&tag) if tag < 0x80 && u32::from(tag) >= PairingMessage::KINDS => {
            return Err(DecodeError::UnknownKind {
                tag: u32::from(tag),
            });
        }
        _ => {}
    }
    decode_exact(payload)
}

/// Encodes an answer's plaintext (no frame).
pub fn encode_answer(answer: &Answer<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    encode_into(answer, out)
}

/// Decodes an answer's plaintext.
pub fn decode_answer(bytes: &[u8]) -> Result<Answer<'_>, DecodeError> {
    decode_exact(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    fn error() -> impl Strategy<Value = PairingError> {
        prop_oneof![
            Just(PairingError::WrongCode),
            Just(PairingError::Expired),
            Just(PairingError::WindowClosed),
            any::<u64>().prop_map(|retry_after_ms| PairingError::RateLimited { retry_after_ms }),
            Just(PairingError::Tampered),
            (any::<u16>(), any::<u16>())
                .prop_map(|(ours, theirs)| PairingError::VersionMismatch { ours, theirs }),
            Just(PairingError::Internal),
        ]
    }

    /// Owned parts from which a message is borrowed.
    #[derive(Debug, Clone)]
    struct Parts {
        kind: u8,
        a: Vec<u8>,
        b: Vec<u8>,
        n: u32,
        err: PairingError,
    }

    fn parts() -> impl Strategy<Value = Parts> {
        (
            0u8..5,
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(any::<u8>(), 0..200),
            any::<u32>(),
            error(),
        )
            .prop_map(|(kind, a, b, n, err)| Parts { kind, a, b, n, err })
    }

    fn message(p: &Parts) -> PairingMessage<'_> {
        match p.kind {
            0 => PairingMessage::Start(Start {
                version: p.n as u16,
                code_id: (p.n >> 16) as u16,
                share_p: &p.a,
            }),
            1 => PairingMessage::Challenge(Challenge {
                share_v: &p.a,
                confirm_v: &p.b,
            }),
            2 => PairingMessage::Confirm(Confirm {
                confirm_p: &p.a,
                sealed_csr: &p.b,
            }),
            3 => PairingMessage::Sealed(Sealed {
                seq: p.n,
                ciphertext: &p.a,
            }),
            _ => PairingMessage::Abort(Abort { error: p.err }),
        }
    }

    proptest! {
        #[test]
        fn round_trips_through_a_frame(p in parts()) {
            let msg = message(&p);
            let mut out = vec![0u8; 1024];
            let n = encode_pairing(&msg, PAIRING_MAX_FRAME, &mut out).unwrap();
            prop_assert_eq!(frame_len(&msg), n);
            if let PairingMessage::Abort(_) = msg {
                prop_assert!(n <= abort_frame_len());
            }
            let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
            prop_assert_eq!(len + 4, n);
            prop_assert_eq!(decode_pairing(&out[4..n]).unwrap(), msg);
        }

        #[test]
        fn decoder_never_panics_and_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(msg) = decode_pairing(&bytes) {
                let mut out = vec![0u8; bytes.len() + 16];
                let n = encode_pairing(&msg, PAIRING_MAX_FRAME, &mut out).unwrap();
                prop_assert_eq!(decode_pairing(&out[4..n]).unwrap(), msg);
            }
        }

        #[test]
        fn truncation_is_an_error(p in parts(), cut in any::<prop::sample::Index>()) {
            let msg = message(&p);
            let mut out = vec![0u8; 1024];
            let n = encode_pairing(&msg, PAIRING_MAX_FRAME, &mut out).unwrap();
            let body = &out[4..n];
            let cut = cut.index(body.len());
            prop_assert!(decode_pairing(&body[..cut]).is_err());
        }

        #[test]
        fn answers_round_trip(a in proptest::collection::vec(any::<u8>(), 0..300),
                              b in proptest::collection::vec(any::<u8>(), 0..300),
                              id in "[a-z0-9-]{1,40}", fp in any::<[u8; 32]>(), which in 0u8..3) {
            let answer = match which {
                0 => Answer::Pending,
                1 => Answer::Rejected,
                _ => Answer::Issued(Issued { device_id: &id, client_cert: &a, ca_cert: &b, server_fingerprint: fp }),
            };
            let mut out = vec![0u8; 1024];
            let n = encode_answer(&answer, &mut out).unwrap();
            prop_assert_eq!(decode_answer(&out[..n]).unwrap(), answer);
        }

        #[test]
        fn answer_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_answer(&bytes);
        }
    }

    #[test]
    fn unknown_kind_and_peer_limit() {
        assert_eq!(
            decode_pairing(&[9]),
            Err(DecodeError::UnknownKind { tag: 9 })
        );
        assert!(decode_pairing(&[]).is_err());
        let big = [0u8; 100];
        let msg = PairingMessage::Sealed(Sealed {
            seq: 0,
            ciphertext: &big,
        });
        let mut out = [0u8; 256];
        assert_eq!(
            encode_pairing(&msg, 64, &mut out),
            Err(EncodeError::TooLarge { max: 64 })
        );
    }
}
