//! Feeds arbitrary bytes, in arbitrary chunk sizes, to the frame decoder. Every frame it
//! yields must respect the limit; a failure must leave the decoder failed; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol_core::frame::{FrameDecoder, FrameError};
use protocol_core::wire::decode_message;

const MAX: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_seed, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk_seed % 64) + 1;
    let mut dec = FrameDecoder::new([0u8; MAX as usize], MAX).expect("buffer holds the limit");
    for mut piece in stream.chunks(chunk) {
        while !piece.is_empty() {
            match dec.decode(piece) {
                Ok(p) => {
                    assert!(p.consumed > 0 && p.consumed <= piece.len());
                    if let Some(frame) = p.frame {
                        assert!(frame.len() <= MAX as usize);
                        let _ = decode_message(frame);
                    }
                    piece = &piece[p.consumed..];
                }
                Err(FrameError::TooLarge { len, max }) => {
                    assert!(len > max && dec.is_failed() && dec.buffered() == 0);
                    return;
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    }
});
