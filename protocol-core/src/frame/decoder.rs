//! Incremental frame decoding.
//!
//! Input arrives in chunks of any size. A frame that lies whole inside the chunk is
//! handed out as a slice of that chunk (no copy); only a frame split across chunks is
//! assembled in the decoder's buffer. The buffer is either given up front, holding the
//! largest frame the decoder accepts ([`FrameDecoder::new`]), or given per frame once
//! its length prefix is read and checked ([`FrameDecoder::without_buffer`],
//! [`FrameDecoder::needs_buffer`], [`FrameDecoder::provide`]): a connection then holds
//! only as much as the frame it is receiving declares.

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
    /// Where split frames are assembled; `None` until one needs it when lent per frame.
    buf: Option<B>,
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
            .field("lent", &self.buf.is_some())
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
            buf: Some(buf),
            max,
            state: START,
            last: Last::None,
        })
    }

    /// A decoder that accepts frames of at most `max` payload bytes and holds no buffer:
    /// whole frames in the input need none; a split frame stops `decode` once its
    /// length prefix is read and checked, until [`provide`](Self::provide) gives a
    /// buffer of the length [`needs_buffer`](Self::needs_buffer) names.
    pub const fn without_buffer(max: u32) -> Self {
        Self {
            buf: None,
            max,
            state: START,
            last: Last::None,
        }
    }

    /// The buffer length the current frame needs before `decode` can go on: `Some`
    /// while a split frame's body is due and the decoder holds no buffer that long.
    /// The length was checked against the limit when the prefix was read.
    pub fn needs_buffer(&self) -> Option<usize> {
        match self.state {
            State::Body { len, have: 0 } if self.room() < len => Some(len),
            _ => None,
        }
    }

    /// Gives the decoder a buffer to assemble frames in. Refused (handed back) while
    /// the decoder holds bytes in its current buffer, which would be lost.
    pub fn provide(&mut self, buf: B) -> Result<(), B> {
        if self.holds_bytes() {
            return Err(buf);
        }
        self.buf = Some(buf);
        Ok(())
    }

    /// Takes the buffer back, for a pool, while it holds nothing (`None` otherwise, or
    /// if there is none). The decoder goes on; a later split frame asks for another.
    pub fn take_buffer(&mut self) -> Option<B> {
        if self.holds_bytes() {
            return None;
        }
        self.buf.take()
    }

    /// The current buffer holds bytes of a frame (being assembled or put back).
    fn holds_bytes(&self) -> bool {
        match self.state {
            State::Body { have, .. } => have > 0,
            State::Held { .. } => true,
            State::Header { .. } | State::Failed => false,
        }
    }

    fn room(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.as_ref().len())
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

    /// The buffer back (if it holds one), for a pool, once the decoder is no longer
    /// needed (between frames, `buffered() == 0`, nothing is lost by dropping it).
    pub fn into_buffer(self) -> Option<B> {
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
    /// after it can be looked at meanwhile; that needs a buffer at least as long as the
    /// frame ([`provide`](Self::provide) one first). False if the frame could not be
    /// kept (no such buffer, or `input` is not that call's): then nothing changed, and
    /// the frame is still at the front of `input`. Without a frame returned last, does
    /// nothing and returns true.
    pub fn unread(&mut self, input: &[u8]) -> bool {
        let len = match self.last {
            Last::None => return true,
            Last::Buffer(len) => len,
            Last::Input(n) => {
                let Some(frame) = input.get(HEADER_LEN..n) else {
                    return false;
                };
                if !frame.is_empty() {
                    let buf = self.buf.as_mut().map(AsMut::as_mut);
                    let Some(dst) = buf.and_then(|b| b.get_mut(..frame.len())) else {
                        return false;
                    };
                    dst.copy_from_slice(frame);
                }
                frame.len()
            }
        };
        self.last = Last::None;
        self.state = State::Held { len };
        true
    }

    /// Room in the buffer for a frame of `len` bytes (for [`unread`](Self::unread) of a
    /// frame lent out of the input).
    pub fn has_room(&self, len: usize) -> bool {
        self.room() >= len
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
                        frame: Some(&lent(&self.buf)[..len]),
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
                    // A body not yet started in a buffer too short for it: wait for one
                    // (`needs_buffer`); the prefix stays taken.
                    let buf: &mut [u8] = match self.buf.as_mut().map(AsMut::as_mut) {
                        Some(b) if b.len() >= len => b,
                        _ if len == 0 => &mut [],
                        _ => {
                            return Ok(Progress {
                                consumed,
                                frame: None,
                            });
                        }
                    };
                    let take = (len - have).min(rest.len());
                    buf[have..have + take].copy_from_slice(&rest[..take]);
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
                        frame: Some(&lent(&self.buf)[..len]),
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

/// The buffer's bytes; empty without one (a frame is only ever returned from a buffer
/// that held it).
fn lent<B: AsRef<[u8]>>(buf: &Option<B>) -> &[u8] {
    buf.as_ref().map_or(&[], AsRef::as_ref)
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
            "FrameDecoder { max: 4096, buffered: 6, failed: false, lent: true, .. }"
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

    /// Feeds `chunks` to a decoder without a buffer, giving it one of exactly the length
    /// it asks for; returns the frames and the lengths asked for.
    fn lazily(chunks: &[&[u8]], max: u32) -> Result<(Vec<Vec<u8>>, Vec<usize>), FrameError> {
        let mut dec = FrameDecoder::<Vec<u8>>::without_buffer(max);
        let (mut frames, mut asked) = (Vec::new(), Vec::new());
        for chunk in chunks {
            let mut rest = *chunk;
            loop {
                if let Some(len) = dec.needs_buffer() {
                    assert!(
                        len <= max as usize,
                        "a length is checked before it is asked for"
                    );
                    asked.push(len);
                    let _ = dec.take_buffer();
                    assert!(dec.provide(std::vec![0; len]).is_ok());
                    assert_eq!(dec.needs_buffer(), None);
                }
                let p = dec.decode(rest)?;
                rest = &rest[p.consumed..];
                if let Some(f) = p.frame {
                    frames.push(f.to_vec());
                } else if rest.is_empty() && dec.needs_buffer().is_none() {
                    break;
                }
                // Between frames the buffer may go back.
                if dec.buffered() == 0 {
                    let _ = dec.take_buffer();
                }
            }
        }
        Ok((frames, asked))
    }

    #[test]
    fn split_frames_ask_for_their_own_length_at_every_cut() {
        let max = 64;
        let mut stream = Vec::new();
        let bodies: [&[u8]; 4] = [b"", b"a", &[7; 40], &[9; 64]];
        for b in bodies {
            let mut out = [0u8; 68];
            let n = encode_frame(b, max, &mut out).unwrap();
            stream.extend_from_slice(&out[..n]);
        }
        let want: Vec<Vec<u8>> = bodies.iter().map(|b| b.to_vec()).collect();
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let chunks = [&stream[..i], &stream[i..j], &stream[j..]];
                let (frames, asked) = lazily(&chunks, max).unwrap();
                assert_eq!(frames, want, "cut at {i} and {j}");
                for len in &asked {
                    assert!([1, 40, 64].contains(len), "asked for {len}");
                }
            }
        }
        // Whole in one chunk: lent out of it, no buffer asked for.
        assert_eq!(lazily(&[&stream], max).unwrap(), (want, std::vec![]));
    }

    #[test]
    fn a_length_above_the_limit_fails_before_a_buffer_is_asked_for() {
        let max = 16;
        let at_max = 16u32.to_be_bytes();
        let mut dec = FrameDecoder::<Vec<u8>>::without_buffer(max);
        assert_eq!(dec.decode(&at_max).unwrap().consumed, HEADER_LEN);
        assert_eq!(dec.needs_buffer(), Some(16));
        let over = 17u32.to_be_bytes();
        for cut in 0..=HEADER_LEN {
            let mut dec = FrameDecoder::<Vec<u8>>::without_buffer(max);
            let first = dec.decode(&over[..cut]).map(|p| p.consumed);
            let err = if cut == HEADER_LEN {
                first
            } else {
                assert_eq!(first, Ok(cut));
                dec.decode(&over[cut..]).map(|p| p.consumed)
            };
            assert_eq!(err, Err(FrameError::TooLarge { len: 17, max }));
            assert_eq!(dec.needs_buffer(), None);
            assert!(dec.is_failed());
        }
        let huge = u32::MAX.to_be_bytes();
        let mut dec = FrameDecoder::<Vec<u8>>::without_buffer(max);
        assert!(dec.decode(&huge).is_err());
        assert_eq!(dec.needs_buffer(), None);
    }

    #[test]
    fn a_buffer_holding_bytes_is_kept() {
        let mut dec = FrameDecoder::<Vec<u8>>::without_buffer(64);
        dec.decode(&[0, 0, 0, 3, 1]).unwrap();
        assert_eq!(dec.needs_buffer(), Some(3));
        assert!(dec.provide(std::vec![0; 2]).is_ok());
        assert_eq!(dec.needs_buffer(), Some(3), "too short");
        assert_eq!(dec.take_buffer().map(|b| b.len()), Some(2));
        assert!(dec.provide(std::vec![0; 3]).is_ok());
        assert_eq!(dec.decode(&[1]).unwrap().consumed, 1);
        assert!(dec.take_buffer().is_none(), "a frame is half assembled");
        assert!(dec.provide(std::vec![0; 8]).is_err());
        assert_eq!(dec.decode(&[2, 3]).unwrap().frame, Some(&[1, 2, 3][..]));
        dec.unread(&[]);
        assert!(dec.take_buffer().is_none(), "a frame is held");
        assert_eq!(dec.decode(&[]).unwrap().frame, Some(&[1, 2, 3][..]));
        assert_eq!(dec.take_buffer().map(|b| b.len()), Some(3));
    }

    #[test]
    fn a_frame_from_the_input_is_kept_only_with_room() {
        let input = [0, 0, 0, 2, 5, 6, 0];
        let mut dec = FrameDecoder::<Vec<u8>>::without_buffer(64);
        assert_eq!(dec.decode(&input).unwrap().frame, Some(&[5, 6][..]));
        assert!(!dec.has_room(2));
        assert!(!dec.unread(&input), "no buffer");
        assert_eq!(dec.buffered(), 0);
        assert!(dec.provide(std::vec![0; 2]).is_ok());
        assert!(dec.unread(&input));
        let p = dec.decode(&input[6..]).unwrap();
        assert_eq!((p.consumed, p.frame), (0, Some(&[5, 6][..])));
        // An empty frame needs no room.
        let empty = [0, 0, 0, 0];
        let mut dec = FrameDecoder::<Vec<u8>>::without_buffer(64);
        assert_eq!(dec.decode(&empty).unwrap().frame, Some(&[][..]));
        assert!(dec.unread(&empty));
        assert_eq!(dec.decode(&[]).unwrap().frame, Some(&[][..]));
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
