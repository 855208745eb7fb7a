//! The pairing plane's decoders on arbitrary bytes, at full speed (the `pairing` target
//! spends its time in real PAKE runs). Whatever decodes re-encodes to something that
//! decodes to the same value; codes and URIs that parse print back to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol_core::frame::HEADER_LEN;
use protocol_core::pairing::{
    PairingCode, PairingUri, decode_answer, decode_pairing, encode_answer, encode_pairing,
};

fuzz_target!(|data: &[u8]| {
    let mut out = vec![0u8; data.len() + 64];
    if let Ok(msg) = decode_pairing(data) {
        let n = encode_pairing(&msg, u32::MAX, &mut out).expect("a decoded message re-encodes");
        assert_eq!(decode_pairing(&out[HEADER_LEN..n]), Ok(msg));
    }
    if let Ok(answer) = decode_answer(data) {
        let n = encode_answer(&answer, &mut out).expect("a decoded answer re-encodes");
        assert_eq!(decode_answer(&out[..n]), Ok(answer));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(code) = PairingCode::parse(text) {
            let shown = code.display().to_string();
            let again = PairingCode::parse(&shown).expect("a printed code parses");
            assert_eq!(again.display().to_string(), shown);
        }
        if let Ok(uri) = PairingUri::parse(text) {
            let shown = uri.to_string();
            let again = PairingUri::parse(&shown).expect("a printed URI parses");
            assert_eq!(
                (again.addr, again.code.id(), again.fingerprint),
                (uri.addr, uri.code.id(), uri.fingerprint)
            );
        }
    }
});
