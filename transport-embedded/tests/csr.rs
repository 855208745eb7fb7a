//! The node's certificate signing request, as the daemon's CA reads it.
#![allow(clippy::unwrap_used)]

mod common;

use common::rng;
use daemon::ca::{CaError, CertificateAuthority, IssuancePolicy, verify_csr};
use transport_embedded::NodeKey;
use transport_embedded::csr::{
    CSR_COMMON_NAME, CsrError, MAX_COMMON_NAME_LEN, MAX_CSR_LEN, build_csr,
};
use transport_tokio::clock::now;

#[test]
fn the_daemons_ca_accepts_the_request_and_certifies_the_nodes_key() {
    let key = NodeKey::generate(&mut rng(1));
    let mut out = [0u8; MAX_CSR_LEN];
    let csr = build_csr(&key, CSR_COMMON_NAME, &mut out).unwrap();

    // The daemon's own checks: it parses, its signature verifies, its key is P-256.
    let verified = verify_csr(csr).unwrap();
    assert_eq!(verified.public_key, key.public_key());

    // The daemon issues a certificate for that key.
    let t0 = now().as_millis();
    let ca = CertificateAuthority::create("tern CA", t0, IssuancePolicy::default(), &mut rng(2))
        .unwrap();
    let cert = ca.issue_client(csr, "sensor-1", t0, &mut rng(3)).unwrap();
    assert_eq!(
        protocol_core::pairing::certificate_spki(&cert.der),
        Some(verified.spki_der.as_slice())
    );
    assert_eq!(ca.verify_client(&cert.der).unwrap().device_id, "sensor-1");

    // rcgen's parser (which checks the signature too) agrees.
    rcgen::CertificateSigningRequestParams::from_der(&csr.to_vec().into()).unwrap();
}

#[test]
fn a_tampered_request_is_refused_by_the_daemon() {
    let key = NodeKey::generate(&mut rng(4));
    let mut out = [0u8; MAX_CSR_LEN];
    let csr = build_csr(&key, CSR_COMMON_NAME, &mut out).unwrap().to_vec();
    // Another name under the same signature.
    let at = csr
        .windows(CSR_COMMON_NAME.len())
        .position(|w| w == CSR_COMMON_NAME.as_bytes())
        .unwrap();
    let mut tampered = csr.clone();
    tampered[at] ^= 0x20;
    assert_eq!(verify_csr(&tampered), Err(CaError::CsrSignature));
}

#[test]
fn the_longest_common_name_fits_and_bad_ones_are_refused() {
    let key = NodeKey::generate(&mut rng(5));
    let mut out = [0u8; MAX_CSR_LEN];
    let longest = "n".repeat(MAX_COMMON_NAME_LEN);
    let csr = build_csr(&key, &longest, &mut out).unwrap();
    assert!(verify_csr(csr).is_ok());

    let mut out = [0u8; MAX_CSR_LEN];
    let too_long = "n".repeat(MAX_COMMON_NAME_LEN + 1);
    assert_eq!(
        build_csr(&key, &too_long, &mut out),
        Err(CsrError::CommonName)
    );
    assert_eq!(build_csr(&key, "", &mut out), Err(CsrError::CommonName));

    let mut small = [0u8; 64];
    assert_eq!(
        build_csr(&key, CSR_COMMON_NAME, &mut small),
        Err(CsrError::BufferTooSmall)
    );
}

#[test]
fn keys_round_trip_through_their_stored_bytes() {
    let key = NodeKey::generate(&mut rng(6));
    let again = NodeKey::from_bytes(&key.to_bytes()).unwrap();
    assert_eq!(again.public_key(), key.public_key());
    assert!(NodeKey::from_bytes(&[0; 32]).is_err());
    assert!(
        NodeKey::from_bytes(&[0xFF; 32]).is_err(),
        "not below the group order"
    );
    assert_ne!(
        NodeKey::generate(&mut rng(7)).public_key(),
        key.public_key()
    );
}
