//! Message encoding into caller buffers and zero-copy decoding out of frames.

use serde::{Deserialize, Serialize};

use super::messages::{Body, ErrorCode, Message};
use crate::frame::{FrameError, HEADER_LEN, encode_frame_with};

/// Why a frame's payload is not a message of this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A message tag this version does not know (a newer peer, or garbage).
    UnknownKind { tag: u32 },
    /// A stream body tag this version does not know.
    UnknownBody { tag: u32 },
    /// The payload does not decode as the message its tag names, or is not that message's
    /// one (canonical) encoding, e.g. it has a padded varint.
    Malformed { reason: &'static str },
    /// The message decoded but bytes were left over.
    TrailingBytes { extra: usize },
}

impl DecodeError {
    /// The error code to send back before closing.
    pub fn code(&self) -> ErrorCode {
        match *self {
            DecodeError::UnknownKind { tag } | DecodeError::UnknownBody { tag } => {
                ErrorCode::UnknownMessage { tag }
            }
            DecodeError::Malformed { .. } | DecodeError::TrailingBytes { .. } => {
                ErrorCode::Malformed
            }
        }
    }
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::UnknownKind { tag } => write!(f, "unknown message kind {tag}"),
            DecodeError::UnknownBody { tag } => write!(f, "unknown stream body kind {tag}"),
            DecodeError::Malformed { reason } => write!(f, "malformed message: {reason}"),
            DecodeError::TrailingBytes { extra } => {
                write!(f, "malformed message: {extra} trailing bytes")
            }
        }
    }
}

impl core::error::Error for DecodeError {}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoded message is larger than the frame limit the peer announced.
    TooLarge { max: u32 },
    /// The caller's buffer is too small for the message.
    BufferTooSmall { available: usize },
    /// A value postcard cannot encode.
    Unencodable,
}

impl From<FrameError> for EncodeError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { max, .. } => EncodeError::TooLarge { max },
            FrameError::BufferTooSmall { available, .. } => {
                EncodeError::BufferTooSmall { available }
            }
            FrameError::Failed => EncodeError::Unencodable,
        }
    }
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::TooLarge { max } => {
                write!(f, "message exceeds the peer's frame limit of {max} bytes")
            }
            EncodeError::BufferTooSmall { available } => {
                write!(f, "message does not fit the {available}-byte buffer")
            }
            EncodeError::Unencodable => f.write_str("message cannot be encoded"),
        }
    }
}

impl core::error::Error for EncodeError {}

/// Encodes `msg` as one frame into `out`, refusing anything above `peer_max`.
/// Returns the bytes written (prefix included).
pub fn encode_message(
    msg: &Message<'_>,
    peer_max: u32,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode_framed(msg, peer_max, out)
}

/// Encodes any message set (node plane, pairing) as one frame, refusing anything above
/// `peer_max`.
///
/// A message larger than `peer_max` is always [`EncodeError::TooLarge`], however small
/// `out` is: a bigger buffer would not help. [`EncodeError::BufferTooSmall`] means the
/// message is within the limit and only `out` is too short for it.
pub(crate) fn encode_framed<T: Serialize + ?Sized>(
    msg: &T,
    peer_max: u32,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let available = out.len();
    let room = available.saturating_sub(HEADER_LEN);
    encode_frame_with(peer_max, out, |body| encode_into(msg, body)).map_err(|e| match e {
        EncodeError::BufferTooSmall { .. } => {
            // The serializer got `min(room, peer_max)` bytes. When that was all the peer
            // accepts (`room` equal to the limit included), the message is above the
            // limit; otherwise only its size tells which of the two it did not fit.
            let over_limit = (peer_max as usize) <= room
                || canonical_len(msg).is_some_and(|len| len > peer_max as usize);
            if over_limit {
                EncodeError::TooLarge { max: peer_max }
            } else {
                EncodeError::BufferTooSmall { available }
            }
        }
        other => other,
    })
}

/// Encodes `msg` without a frame prefix (for journals and replay buffers).
pub fn encode_payload(msg: &Message<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    encode_into(msg, out)
}

/// Encodes without a frame prefix.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    msg: &T,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let available = out.len();
    match postcard::to_slice(msg, out) {
        Ok(written) => Ok(written.len()),
        Err(postcard::Error::SerializeBufferFull) => Err(EncodeError::BufferTooSmall { available }),
        Err(_) => Err(EncodeError::Unencodable),
    }
}

/// Decodes one frame's payload. Strings and byte payloads borrow from `payload`.
///
/// Only the canonical encoding is accepted (see `WIRE.md`): whatever decodes re-encodes to
/// exactly `payload`.
pub fn decode_message(payload: &[u8]) -> Result<Message<'_>, DecodeError> {
    let (tag, after_tag) = read_varint(payload)?;
    if tag >= u64::from(Message::KINDS) {
        return Err(DecodeError::UnknownKind { tag: clamp(tag) });
    }
    if tag == DATA_TAG {
        // Data = seq, ack, body tag: name an unknown body precisely.
        let (_, after_seq) = read_varint(&payload[after_tag..])?;
        let rest = &payload[after_tag + after_seq..];
        let (_, after_ack) = read_varint(rest)?;
        let (body, _) = read_varint(&rest[after_ack..])?;
        if body >= u64::from(Body::KINDS) {
            return Err(DecodeError::UnknownBody { tag: clamp(body) });
        }
    }
    decode_exact(payload)
}

/// Decodes a value that must use every byte, encoded canonically: an encoding has exactly
/// one reading, and a message exactly one encoding.
pub(crate) fn decode_exact<'a, T: Deserialize<'a> + Serialize>(
    bytes: &'a [u8],
) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => {
            // postcard's decoder allows one kind of slack only: a varint may be padded
            // (`80 00` reads as 0). Every other item's length is fixed by the value it
            // decodes to (raw bytes, one-byte bools and option tags, string and byte
            // lengths). So what was read is the value's own encoding plus one byte per
            // padding byte: equal lengths mean no padded varint, and then the input is
            // byte for byte what the encoder writes for this value. (A capability list
            // re-encodes its received bytes as they are, so it checks the descriptors
            // inside it itself, when it is decoded.)
            if canonical_len(&value) == Some(bytes.len()) {
                Ok(value)
            } else {
                Err(DecodeError::Malformed {
                    reason: NON_CANONICAL,
                })
            }
        }
        Ok((_, rest)) => Err(DecodeError::TrailingBytes { extra: rest.len() }),
        Err(e) => Err(DecodeError::Malformed {
            reason: postcard_reason(e),
        }),
    }
}

/// The reason given for a decodable encoding that is not the one the encoder writes.
pub(crate) const NON_CANONICAL: &str = "non-canonical encoding";

/// Bytes of `value`'s (canonical) encoding.
pub(crate) fn canonical_len<T: Serialize + ?Sized>(value: &T) -> Option<usize> {
    postcard::experimental::serialized_size(value).ok()
}

const DATA_TAG: u64 = 2;

fn clamp(tag: u64) -> u32 {
    u32::try_from(tag).unwrap_or(u32::MAX)
}

/// Reads a postcard (LEB128) varint; returns it and the bytes it took. A padded varint (a
/// last byte of zero after the first) is refused: it is not the encoder's.
fn read_varint(bytes: &[u8]) -> Result<(u64, usize), DecodeError> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        // The tenth byte holds bit 63 only.
        if i == 9 && b > 1 {
            break;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(DecodeError::Malformed {
                    reason: NON_CANONICAL,
                });
            }
            return Ok((value, i + 1));
        }
    }
    Err(DecodeError::Malformed {
        reason: if bytes.is_empty() {
            "empty payload"
        } else {
            "bad varint"
        },
    })
}

fn postcard_reason(e: postcard::Error) -> &'static str {
    use postcard::Error as E;
    match e {
        E::DeserializeUnexpectedEnd => "truncated",
        E::DeserializeBadVarint => "bad varint",
        E::DeserializeBadBool => "bad bool",
        E::DeserializeBadChar | E::DeserializeBadUtf8 => "invalid utf-8",
        E::DeserializeBadOption => "bad option tag",
        E::DeserializeBadEnum => "unknown enum variant",
        E::DeserializeBadEncoding => "bad encoding",
        E::SerdeDeCustom => "invalid field value",
        _ => "does not decode",
    }
}
