//! Frame encoding into caller-owned buffers.

use super::{FrameError, HEADER_LEN};

/// Bytes a frame with `payload_len` bytes of payload takes on the wire.
pub const fn encoded_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len
}

/// Writes `payload` as one frame into `out`; returns the bytes written.
///
/// `peer_max` is the limit the receiving peer announced: a larger payload is refused
/// with [`FrameError::TooLarge`], whatever the size of `out`, and nothing is written. A
/// payload within the limit that `out` cannot hold is [`FrameError::BufferTooSmall`].
pub fn encode_frame(payload: &[u8], peer_max: u32, out: &mut [u8]) -> Result<usize, FrameError> {
    if payload.len() > peer_max as usize {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        return Err(FrameError::TooLarge { len, max: peer_max });
    }
    if out.len() < encoded_len(payload.len()) {
        return Err(FrameError::BufferTooSmall {
            needed: encoded_len(payload.len()),
            available: out.len(),
        });
    }
    encode_frame_with(peer_max, out, |body| {
        body.get_mut(..payload.len())
            .map(|dst| {
                dst.copy_from_slice(payload);
                payload.len()
            })
            .ok_or(FrameError::BufferTooSmall {
                needed: encoded_len(payload.len()),
                available: body.len() + HEADER_LEN,
            })
    })
}

/// Writes a frame whose payload is produced in place by `write_body`, which gets the part
/// of `out` after the prefix and returns how many bytes it wrote. Lets a message be
/// serialised straight into the output buffer, with no intermediate copy.
///
/// `write_body` gets at most `peer_max` bytes. If they are not enough, the caller tells
/// which limit stopped it: the peer's whenever `out` holds `peer_max + HEADER_LEN` bytes or
/// more (exactly that many included), since then the body was cut to `peer_max`.
pub fn encode_frame_with<E>(
    peer_max: u32,
    out: &mut [u8],
    write_body: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<usize, E>
where
    E: From<FrameError>,
{
    let available = out.len();
    if available < HEADER_LEN {
        return Err(FrameError::BufferTooSmall {
            needed: HEADER_LEN,
            available,
        }
        .into());
    }
    let (header, body) = out.split_at_mut(HEADER_LEN);
    // Never let the body run past what the peer accepts, even if `out` is larger.
    let limit = body.len().min(peer_max as usize);
    let written = write_body(&mut body[..limit])?;
    let len = u32::try_from(written).unwrap_or(u32::MAX);
    if len > peer_max {
        return Err(FrameError::TooLarge { len, max: peer_max }.into());
    }
    header.copy_from_slice(&len.to_be_bytes());
    Ok(HEADER_LEN + written)
}
