//! Incremental frame decoding.
//!
//! Input arrives in chunks of any size. A frame that lies whole inside the chunk is
//! handed out as a slice of that chunk (no copy); only a frame split across chunks is
//! assembled in the decoder's buffer, which the caller provides and which must hold the
//! largest frame the decoder accepts.

use super::{FrameError, HEADER_LEN};

/// What one [`FrameDecoder::decode`] call did.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress<'a> {
    /// Bytes of the input taken; feed the rest (`&input[consumed..]`) in the next call.
    pub consumed: usize,
    /// A complete frame's payload, if one was finished.
    pub frame: Option<&'a [u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the length prefix; `have` bytes of it are in `header`.
    Header {
        header: [u8; HEADER_LEN],
        have: u8,
    },
    /// Collecting a body of `len` bytes; `have` of them are in the buffer.
    Body {
        len: usize,
        have: usize,
    },
    /// A whole frame of `len` bytes assembled in the buffer and put back
    /// ([`FrameDecoder::unread`]): the next `decode` returns it again.
    Held {
        len: usize,
    },
    Failed,
}

/// Where the frame the last `decode` returned lay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    None,
    /// In the input: that many bytes of it (prefix and body).
    Input(usize),
    /// Assembled in the buffer.
    Buffer(usize),
}

const START: State = State::Header {
    header: [0; HEADER_LEN],
    have: 0,
};

/// Incremental decoder of length-prefixed frames with a fixed limit.
pub struct FrameDecoder<B> {
    buf: B,
    max: u32,
    state: State,
    last: Last,
}

impl<B> core::fmt::Debug for FrameDecoder<B> {
    /// The limit and the progress on the current frame; never the buffer's bytes.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (buffered, failed) = match self.state {
            State::Header { have, .. } => (usize::from(have), false),
            State::Body { have, .. } => (HEADER_LEN + have, false),
            State::Held { len } => (HEADER_LEN + len, false),
            State::Failed => (0, true),
        };
        f.debug_struct("FrameDecoder")
            .field("max", &self.max)
            .field("buffered", &buffered)
            .field("failed", &failed)
            .finish_non_exhaustive()
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> FrameDecoder<B> {
    /// A decoder that accepts frames of at most `max` payload bytes, assembling split
    /// frames in `buf` (at least `max` bytes long).
    pub fn new(buf: B, max: u32) -> Result<Self, FrameError> {
        let available = buf.as_ref().len();
        if available < max as usize {
            return Err(FrameError::BufferTooSmall {
                needed: max as usize,
                available,
            });
        }
        Ok(Self {
            buf,
            max,
            state: START,
            last: Last::None,
        })
    }

    /// The largest payload this decoder accepts.
    pub fn max_frame(&self) -> u32 {
        self.max
    }

    /// Bytes of an unfinished frame held (prefix and body).
    pub fn buffered(&self) -> usize {
        match self.state {
            State::Header { have, .. } => have as usize,
            State::Body { have, .. } => HEADER_LEN + have,
            State::Held { len } => HEADER_LEN + len,
            State::Failed => 0,
        }
    }

    /// The buffer back, for a pool, once the decoder is no longer needed (between
    /// frames, `buffered() == 0`, nothing is lost by dropping the decoder).
    pub fn into_buffer(self) -> B {
        self.buf
    }

    /// True after an error: the stream is out of step and must be closed.
    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Keeps the frame the last [`decode`](Self::decode) returned, for a receiver that
    /// cannot take it yet: the next `decode` returns it again, and the call's whole
    /// `consumed` counts as taken. `input` is the input of that call: a frame lent out of
    /// it is copied into the buffer (where an assembled frame already lies), so the bytes
    /// after it can be looked at meanwhile. Without a frame returned last, does nothing.
    pub fn unread(&mut self, input: &[u8]) {
        let len = match core::mem::replace(&mut self.last, Last::None) {
            Last::None => return,
            Last::Buffer(len) => len,
            Last::Input(n) => {
                let Some(frame) = input.get(HEADER_LEN..n) else {
                    return;
                };
                self.buf.as_mut()[..frame.len()].copy_from_slice(frame);
                frame.len()
            }
        };
        self.state = State::Held { len };
    }

    /// Takes bytes from `input` until one frame is complete or the input is used up.
    ///
    /// Call again with the rest of the input while `consumed < input.len()`.
    pub fn decode<'a>(&'a mut self, input: &'a [u8]) -> Result<Progress<'a>, FrameError> {
        let mut consumed = 0;
        self.last = Last::None;
        loop {
            match self.state {
                State::Failed => return Err(FrameError::Failed),
                State::Held { len } => {
                    self.state = START;
                    self.last = Last::Buffer(len);
                    return Ok(Progress {
                        consumed: 0,
                        frame: Some(&self.buf.as_ref()[..len]),
                    });
                }
                State::Header { mut header, have } => {
                    let have = have as usize;
                    let rest = &input[consumed..];
                    // Fast path: a whole frame inside the input is lent out without a copy.
                    if have == 0 && rest.len() >= HEADER_LEN {
                        let len = self.check_len(be_u32(&rest[..HEADER_LEN]))?;
                        if let Some(frame) = rest.get(HEADER_LEN..HEADER_LEN + len) {
                            self.last = Last::Input(HEADER_LEN + len);
                            return Ok(Progress {
                                consumed: consumed + HEADER_LEN + len,
                                frame: Some(frame),
                            });
                        }
                    }
                    let take = (HEADER_LEN - have).min(rest.len());
                    header[have..have + take].copy_from_slice(&rest[..take]);
                    consumed += take;
                    let have = have + take;
                    if have < HEADER_LEN {
                        self.state = State::Header {
                            header,
                            have: have as u8,
                        };
                        return Ok(Progress {
                            consumed,
                            frame: None,
                        });
                    }
                    let len = self.check_len(u32::from_be_bytes(header))?;
                    self.state = State::Body { len, have: 0 };
                }
                State::Body { len, have } => {
                    let rest = &input[consumed..];
                    let take = (len - have).min(rest.len());
                    self.buf.as_mut()[have..have + take].copy_from_slice(&rest[..take]);
                    consumed += take;
                    let have = have + take;
                    if have < len {
                        self.state = State::Body { len, have };
                        return Ok(Progress {
                            consumed,
                            frame: None,
                        });
                    }
                    self.state = START;
                    self.last = Last::Buffer(len);
                    return Ok(Progress {
                        consumed,
                        frame: Some(&self.buf.as_ref()[..len]),
                    });
                }
            }
        }
    }

    fn check_len(&mut self, len: u32) -> Result<usize, FrameError> {
        if len > self.max {
            self.state = State::Failed;
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        Ok(len as usize)
    }
}

/// The frame lying whole at the front of `input`, and the bytes it takes (prefix
/// included), without buffering anything: `None` if `input` holds less than a frame.
pub fn whole_frame(input: &[u8], max: u32) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(prefix) = input.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = be_u32(prefix);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let end = HEADER_LEN + len as usize;
    Ok(input.get(HEADER_LEN..end).map(|frame| (frame, end)))
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut b = [0; HEADER_LEN];
    b.copy_from_slice(bytes);
    u32::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{DEFAULT_MAX_FRAME, encode_frame};
    use std::vec::Vec;

    #[test]
    fn debug_does_not_print_the_buffer() {
        let mut dec = FrameDecoder::new(std::vec![0xABu8; 4096], 4096).unwrap();
        dec.decode(&[0, 0, 0, 10, 1, 2]).unwrap();
        let text = std::format!("{dec:?}");
        assert_eq!(
            text,
            "FrameDecoder { max: 4096, buffered: 6, failed: false, .. }"
        );
    }

    #[test]
    fn whole_frame_is_lent_from_input() {
        let mut out = [0u8; 16];
        let n = encode_frame(b"hello", DEFAULT_MAX_FRAME, &mut out).unwrap();
        let mut dec = FrameDecoder::new([0u8; 8], 8).unwrap();
        let p = dec.decode(&out[..n]).unwrap();
        assert_eq!(
            p,
            Progress {
                consumed: n,
                frame: Some(&b"hello"[..])
            }
        );
        assert_eq!(p.frame.unwrap().as_ptr(), out[4..].as_ptr());
    }

    #[test]
    fn byte_at_a_time() {
        let mut out = [0u8; 16];
        let n = encode_frame(b"abc", 64, &mut out).unwrap();
        let mut dec = FrameDecoder::new([0u8; 64], 64).unwrap();
        for i in 0..n - 1 {
            let p = dec.decode(&out[i..i + 1]).unwrap();
            assert_eq!(
                p,
                Progress {
                    consumed: 1,
                    frame: None
                }
            );
        }
        let p = dec.decode(&out[n - 1..n]).unwrap();
        assert_eq!(p.frame, Some(&b"abc"[..]));
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn oversize_prefix_rejected_before_body() {
        let mut dec = FrameDecoder::new([0u8; 16], 16).unwrap();
        let mut input = Vec::from(17u32.to_be_bytes());
        input.extend_from_slice(&[0xAA; 17]);
        // Prefix split: the first half is accepted, the second half fails.
        assert_eq!(dec.decode(&input[..2]).unwrap().consumed, 2);
        assert_eq!(
            dec.decode(&input[2..]),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        assert_eq!(dec.buffered(), 0);
        assert!(dec.is_failed());
        assert_eq!(dec.decode(&input[4..]), Err(FrameError::Failed));
    }

    #[test]
    fn an_unread_frame_comes_again() {
        let mut out = [0u8; 32];
        let n = encode_frame(b"abc", 64, &mut out).unwrap();
        let m = encode_frame(b"defg", 64, &mut out[n..]).unwrap();
        let mut dec = FrameDecoder::new([0u8; 64], 64).unwrap();
        // Lent out of the input: copied into the buffer, the input taken.
        let p = dec.decode(&out[..n + m]).unwrap();
        assert_eq!((p.consumed, p.frame), (n, Some(&b"abc"[..])));
        dec.unread(&out[..n + m]);
        assert_eq!(dec.buffered(), n);
        assert_eq!(whole_frame(&out[n..n + m], 64), Ok(Some((&b"defg"[..], m))));
        let p = dec.decode(&out[n..n + m]).unwrap();
        assert_eq!((p.consumed, p.frame), (0, Some(&b"abc"[..])));
        // Assembled across inputs: held where it is.
        assert_eq!(dec.decode(&out[n..n + 2]).unwrap().consumed, 2);
        let p = dec.decode(&out[n + 2..n + m]).unwrap();
        assert_eq!(p.frame, Some(&b"defg"[..]));
        dec.unread(&[]);
        assert_eq!(dec.buffered(), m);
        let p = dec.decode(&[]).unwrap();
        assert_eq!((p.consumed, p.frame), (0, Some(&b"defg"[..])));
        assert_eq!(dec.buffered(), 0);
        // Nothing returned last: nothing to keep.
        assert_eq!(dec.decode(&[0]).unwrap().frame, None);
        dec.unread(&[0]);
        assert_eq!(dec.buffered(), 1);
    }

    #[test]
    fn a_whole_frame_is_found_without_buffering() {
        let mut out = [0u8; 16];
        let n = encode_frame(b"hello", 64, &mut out).unwrap();
        assert_eq!(whole_frame(&out[..n - 1], 64), Ok(None));
        assert_eq!(whole_frame(&out[..3], 64), Ok(None));
        assert_eq!(
            whole_frame(&out[..n], 4),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        );
    }

    #[test]
    fn buffer_must_hold_the_limit() {
        assert_eq!(
            FrameDecoder::new([0u8; 8], 9).unwrap_err(),
            FrameError::BufferTooSmall {
                needed: 9,
                available: 8
            }
        );
    }

    #[test]
    fn encoder_refuses_above_peer_limit() {
        let mut out = [0u8; 64];
        assert_eq!(
            encode_frame(&[0; 33], 32, &mut out),
            Err(FrameError::TooLarge { len: 33, max: 32 })
        );
        assert_eq!(
            encode_frame(&[0; 10], 32, &mut out[..8]),
            Err(FrameError::BufferTooSmall {
                needed: 14,
                available: 8
            })
        );
    }
}
