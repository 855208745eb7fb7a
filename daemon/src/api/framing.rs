//! Frames on the operator socket: `[len: u32 big-endian][payload]`, the node plane's
//! layout (`protocol_core::frame`). The prefix is checked against the limit before any
//! body byte is read, and a body's buffer grows only as its bytes arrive, so a peer that
//! announces a large frame and stalls holds no more memory than it sent.

use std::io;

use prost::Message;
use protocol_core::frame::{FrameError, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::v1::{Request, Response};

/// Why no frame was read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the stream between two frames.
    Closed,
    /// The prefix announced more than the limit; the stream is out of step.
    TooLarge { len: u32, max: u32 },
    /// The stream failed, or closed inside a frame.
    Io(io::Error),
}

/// Reads one frame of at most `max` payload bytes, as both ends of the operator socket do.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
) -> Result<Vec<u8>, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    let mut have = 0;
    while have < HEADER_LEN {
        match reader.read(&mut header[have..]).await {
            Ok(0) if have == 0 => return Err(ReadError::Closed),
            Ok(0) => {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream closed inside a frame's length prefix",
                )));
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    let len = u32::from_be_bytes(header);
    if len > max {
        return Err(ReadError::TooLarge { len, max });
    }
    let mut body = Vec::new();
    let read = reader
        .take(u64::from(len))
        .read_to_end(&mut body)
        .await
        .map_err(ReadError::Io)?;
    if read != len as usize {
        return Err(ReadError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("stream closed after {read} of a frame's {len} bytes"),
        )));
    }
    Ok(body)
}

/// Encodes `msg` as one frame (prefix included), refusing a payload above `max`.
pub(crate) fn encode_frame<M: Message>(msg: &M, max: u32) -> Result<Vec<u8>, FrameError> {
    let len = msg.encoded_len();
    if len > max as usize {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        return Err(FrameError::TooLarge { len, max });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    // `len <= max`, a u32: the cast is exact.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode_raw(&mut out);
    Ok(out)
}

/// Decodes one frame's payload as a `Request`, as the server does. Never panics, whatever
/// the bytes.
pub fn decode_request(payload: &[u8]) -> Result<Request, prost::DecodeError> {
    Request::decode(payload)
}

/// Decodes one frame's payload as a `Response`, as the client does.
pub fn decode_response(payload: &[u8]) -> Result<Response, prost::DecodeError> {
    Response::decode(payload)
}
