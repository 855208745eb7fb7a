//! Feeds arbitrary bytes, in arbitrary chunk sizes, to the frame decoder. Every frame it
//! yields must respect the limit; a failure must leave the decoder failed; a frame that
//! holds a message is exactly what encoding that message produces; nothing panics. A
//! decoder given buffers per frame (of the length it asks for) yields the same frames
//! and the same failure, and never asks for more than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol_core::frame::{FrameDecoder, FrameError, HEADER_LEN};
use protocol_core::wire::{decode_message, encode_message};

const MAX: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_seed, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk_seed % 64) + 1;
    let lazy = lazily(stream, chunk);
    let mut frames = Vec::new();
    let mut dec = FrameDecoder::new([0u8; MAX as usize], MAX).expect("buffer holds the limit");
    // Exactly the largest frame the decoder accepts.
    let mut out = [0u8; MAX as usize + HEADER_LEN];
    for mut piece in stream.chunks(chunk) {
        while !piece.is_empty() {
            match dec.decode(piece) {
                Ok(p) => {
                    assert!(p.consumed > 0 && p.consumed <= piece.len());
                    if let Some(frame) = p.frame {
                        assert!(frame.len() <= MAX as usize);
                        frames.push(frame.to_vec());
                        if let Ok(msg) = decode_message(frame) {
                            let n = encode_message(&msg, MAX, &mut out)
                                .expect("a received message can be sent back under the same limit");
                            assert_eq!(&out[HEADER_LEN..n], frame);
                            assert_eq!(out[..HEADER_LEN], (frame.len() as u32).to_be_bytes());
                        }
                    }
                    piece = &piece[p.consumed..];
                }
                Err(FrameError::TooLarge { len, max }) => {
                    assert!(len > max && dec.is_failed() && dec.buffered() == 0);
                    assert_eq!(lazy, (frames, Some(FrameError::TooLarge { len, max })));
                    return;
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    }
    assert_eq!(lazy, (frames, None));
});

/// The same stream through a decoder without a buffer of its own: each split frame gets
/// one of exactly the length asked for, and gives it back once done.
fn lazily(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut dec = FrameDecoder::<Vec<u8>>::without_buffer(MAX);
    let mut frames = Vec::new();
    for mut piece in stream.chunks(chunk) {
        loop {
            if let Some(len) = dec.needs_buffer() {
                assert!(len <= MAX as usize);
                assert!(dec.provide(vec![0; len]).is_ok());
            }
            match dec.decode(piece) {
                Ok(p) => {
                    piece = &piece[p.consumed..];
                    if let Some(frame) = p.frame {
                        frames.push(frame.to_vec());
                    } else if piece.is_empty() && dec.needs_buffer().is_none() {
                        break;
                    }
                    if dec.buffered() == 0 {
                        drop(dec.take_buffer());
                    }
                }
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}
