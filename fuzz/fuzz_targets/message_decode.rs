//! Decodes arbitrary payloads as messages. Whatever decodes must re-encode to the same
//! bytes (the encoding is canonical), and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol_core::wire::{decode_message, encode_payload};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_message(data) {
        let mut out = vec![0u8; data.len() + 16];
        let n = encode_payload(&msg, &mut out).expect("a decoded message re-encodes");
        let again = decode_message(&out[..n]).expect("re-encoded message decodes");
        assert_eq!(again, msg);
    }
});
