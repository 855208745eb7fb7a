//! Decodes arbitrary payloads as messages. Whatever decodes must re-encode to exactly the
//! input bytes (each message has one encoding: no padded varints, no trailing bytes), and
//! nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol_core::wire::{decode_message, encode_payload};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_message(data) {
        // Room to spare, so a longer re-encoding shows up as a byte mismatch below.
        let mut out = vec![0u8; data.len() + 16];
        let n = encode_payload(&msg, &mut out).expect("a decoded message re-encodes");
        assert_eq!(&out[..n], data, "{msg:?} has another encoding");
    }
});
