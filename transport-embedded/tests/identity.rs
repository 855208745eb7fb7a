//! The identity record: what a paired node keeps, read back like a peer's input.
#![allow(clippy::unwrap_used)]

mod common;

use common::rng;
use transport_embedded::identity::{
    Corruption, IdentityError, IdentityStore, LoadError, MAX_ADDRESS_LEN, MAX_CERT_LEN,
    MAX_DEVICE_ID_LEN, RECORD_LEN, RecordError,
};
use transport_embedded::tls::Fingerprint;
use transport_embedded::{Identity, NodeKey, load_identity, save_identity};

fn identity() -> Identity {
    Identity::new(
        "sensor-7",
        NodeKey::generate(&mut rng(1)),
        &[0x30; 500],
        &[0x31; 400],
        Fingerprint([7; 32]),
        "192.0.2.1:7443",
    )
    .unwrap()
}

fn record(identity: &Identity) -> Vec<u8> {
    let mut record = [0u8; RECORD_LEN];
    identity.encode(&mut record);
    record.to_vec()
}

/// The record's checksum, recomputed after a deliberate change (CRC-32, IEEE).
fn reseal(record: &mut [u8]) {
    let mut crc = !0u32;
    for &byte in &record[..RECORD_LEN - 4] {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    record[RECORD_LEN - 4..].copy_from_slice(&(!crc).to_le_bytes());
}

#[test]
fn a_record_reads_back_as_the_identity_it_was_written_from() {
    let identity = identity();
    let back = Identity::decode(&record(&identity)).unwrap();
    assert_eq!(back, identity);
    assert_eq!(back.key().public_key(), identity.key().public_key());
    assert_eq!(back.client_cert(), &[0x30; 500][..]);
    assert_eq!(back.ca_cert(), &[0x31; 400][..]);
    assert_eq!(back.daemon(), "192.0.2.1:7443");
}

#[test]
fn erased_or_absent_storage_is_blank() {
    assert_eq!(Identity::decode(&[]), Err(RecordError::Blank));
    assert_eq!(
        Identity::decode(&[0xFF; RECORD_LEN]),
        Err(RecordError::Blank)
    );
    assert_eq!(Identity::decode(&[0; RECORD_LEN]), Err(RecordError::Blank));
}

#[test]
fn something_else_in_the_storage_is_foreign() {
    let mut r = record(&identity());
    r[..4].copy_from_slice(b"JPEG");
    assert_eq!(Identity::decode(&r), Err(RecordError::Foreign));
    assert_eq!(Identity::decode(b"hello"), Err(RecordError::Foreign));
}

#[test]
fn a_newer_format_is_not_misread() {
    let mut r = record(&identity());
    r[4..6].copy_from_slice(&2u16.to_le_bytes());
    reseal(&mut r);
    assert_eq!(
        Identity::decode(&r),
        Err(RecordError::UnsupportedVersion { found: 2 })
    );
}

#[test]
fn damage_is_reported_as_corruption() {
    let good = record(&identity());

    let mut flipped = good.clone();
    flipped[1000] ^= 1;
    assert_eq!(
        Identity::decode(&flipped),
        Err(RecordError::Corrupt(Corruption::Checksum))
    );

    assert_eq!(
        Identity::decode(&good[..RECORD_LEN - 1]),
        Err(RecordError::Corrupt(Corruption::Truncated {
            len: RECORD_LEN - 1
        }))
    );

    // A length beyond its field, under a valid checksum.
    let mut long = good.clone();
    long[135..137].copy_from_slice(&(MAX_CERT_LEN as u16 + 1).to_le_bytes());
    reseal(&mut long);
    assert_eq!(
        Identity::decode(&long),
        Err(RecordError::Corrupt(Corruption::Length))
    );

    // A key that is no P-256 scalar.
    let mut key = good.clone();
    key[71..103].fill(0);
    reseal(&mut key);
    assert_eq!(
        Identity::decode(&key),
        Err(RecordError::Corrupt(Corruption::Key))
    );

    // A device id that is not UTF-8.
    let mut text = good.clone();
    text[7] = 0xFF;
    reseal(&mut text);
    assert_eq!(
        Identity::decode(&text),
        Err(RecordError::Corrupt(Corruption::Text))
    );

    // A required field left empty.
    let mut empty = good;
    empty[135..137].copy_from_slice(&0u16.to_le_bytes());
    reseal(&mut empty);
    assert_eq!(
        Identity::decode(&empty),
        Err(RecordError::Corrupt(Corruption::Length))
    );
}

#[test]
fn fields_beyond_the_records_bounds_are_refused() {
    let key = || NodeKey::generate(&mut rng(2));
    let pin = Fingerprint([1; 32]);
    let cert = [0x30; 10];
    let long_id = "d".repeat(MAX_DEVICE_ID_LEN + 1);
    assert_eq!(
        Identity::new(&long_id, key(), &cert, &[], pin, "a:1"),
        Err(IdentityError::DeviceId {
            len: MAX_DEVICE_ID_LEN + 1
        })
    );
    assert_eq!(
        Identity::new("", key(), &cert, &[], pin, "a:1"),
        Err(IdentityError::DeviceId { len: 0 })
    );
    let big = vec![0x30; MAX_CERT_LEN + 1];
    assert_eq!(
        Identity::new("d", key(), &big, &[], pin, "a:1"),
        Err(IdentityError::ClientCertificate {
            len: MAX_CERT_LEN + 1
        })
    );
    assert_eq!(
        Identity::new("d", key(), &[], &[], pin, "a:1"),
        Err(IdentityError::ClientCertificate { len: 0 })
    );
    assert_eq!(
        Identity::new("d", key(), &cert, &big, pin, "a:1"),
        Err(IdentityError::CaCertificate {
            len: MAX_CERT_LEN + 1
        })
    );
    let long_addr = "a".repeat(MAX_ADDRESS_LEN + 1);
    assert_eq!(
        Identity::new("d", key(), &cert, &[], pin, &long_addr),
        Err(IdentityError::Address {
            len: MAX_ADDRESS_LEN + 1
        })
    );
    // Every field at its largest still fits the record.
    let full = Identity::new(
        &"d".repeat(MAX_DEVICE_ID_LEN),
        key(),
        &[0x30; MAX_CERT_LEN],
        &[0x31; MAX_CERT_LEN],
        pin,
        &"a".repeat(MAX_ADDRESS_LEN),
    )
    .unwrap();
    assert_eq!(Identity::decode(&record(&full)).unwrap(), full);
}

/// A store in memory, as a file or a flash sector would hold it.
#[derive(Default)]
struct MemStore {
    bytes: Vec<u8>,
    fail: bool,
}

impl IdentityStore for MemStore {
    type Error = &'static str;

    async fn read(&mut self, record: &mut [u8; RECORD_LEN]) -> Result<usize, Self::Error> {
        if self.fail {
            return Err("flash read failed");
        }
        let n = self.bytes.len().min(RECORD_LEN);
        record[..n].copy_from_slice(&self.bytes[..n]);
        Ok(n)
    }

    async fn write(&mut self, record: &[u8; RECORD_LEN]) -> Result<(), Self::Error> {
        self.bytes = record.to_vec();
        Ok(())
    }
}

#[tokio::test]
async fn a_store_keeps_the_identity_and_the_scratch_is_wiped() {
    let mut store = MemStore::default();
    let mut scratch = [0u8; RECORD_LEN];
    assert_eq!(
        load_identity(&mut store, &mut scratch).await,
        Err(LoadError::Record(RecordError::Blank))
    );
    let identity = identity();
    save_identity(&mut store, &identity, &mut scratch)
        .await
        .unwrap();
    assert!(scratch.iter().all(|&b| b == 0), "the key left the scratch");
    assert_eq!(store.bytes.len(), RECORD_LEN);
    let back = load_identity(&mut store, &mut scratch).await.unwrap();
    assert_eq!(back, identity);
    assert!(scratch.iter().all(|&b| b == 0));

    store.fail = true;
    assert_eq!(
        load_identity(&mut store, &mut scratch).await,
        Err(LoadError::Store("flash read failed"))
    );
}
