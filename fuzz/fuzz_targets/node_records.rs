//! What a microcontroller node reads that it did not write itself: its identity record
//! (flash that may be worn, torn or foreign), certificates (a renewed one from the
//! daemon), the JSON inputs of its capabilities, and pairing invitations.
//!
//! The record is fuzzed twice: as raw bytes, and as a well-formed record with a window
//! overwritten by the input and its checksum made valid again, so the field checks
//! behind the checksum meet extreme lengths and values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_contract::{Renewed, SetLed};
use transport_embedded::identity::{RECORD_LEN, seal};
use transport_embedded::tls::Fingerprint;
use transport_embedded::{Identity, NodeKey, validity};

fuzz_target!(|data: &[u8]| {
    record(data);
    if let Some((&at, window)) = data.split_first() {
        sealed(usize::from(at) * 16, window);
    }
    let _ = validity(data);
    let _ = base().renewed(data, Some(u64::from_le_bytes([0xFF; 8])));
    let _ = serde_json_core::from_slice::<Renewed<'_>>(data);
    let _ = serde_json_core::from_slice::<SetLed>(data);
    if let Ok(text) = core::str::from_utf8(data) {
        let _ = node_firmware::parse_invitation(text);
    }
});

fn record(bytes: &[u8]) {
    if let Ok(identity) = Identity::decode(bytes) {
        let mut again = [0u8; RECORD_LEN];
        identity.encode(&mut again);
        assert_eq!(
            Identity::decode(&again).ok(),
            Some(identity),
            "a record that reads must round-trip"
        );
    }
}

fn sealed(at: usize, window: &[u8]) {
    let mut bytes = [0u8; RECORD_LEN];
    base().encode(&mut bytes);
    let at = at.min(RECORD_LEN - 4);
    let n = window.len().min(RECORD_LEN - 4 - at);
    bytes[at..at + n].copy_from_slice(&window[..n]);
    seal(&mut bytes);
    record(&bytes);
}

fn base() -> &'static Identity {
    static BASE: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();
    BASE.get_or_init(make_base)
}

fn make_base() -> Identity {
    let key = NodeKey::from_bytes(&[7; 32]).expect("a valid scalar");
    Identity::new(
        "node-1",
        key,
        &[0x30, 0x03, 0x02, 0x01, 0x00],
        &[],
        Fingerprint([9; 32]),
        "10.42.0.1:4433",
    )
    .expect("a valid identity")
}
