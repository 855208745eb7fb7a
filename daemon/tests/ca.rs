//! The certificate authority's issuance rules.
#![allow(clippy::unwrap_used)]

use chacha20::ChaCha20Rng;
use daemon::ca::{CaError, CertificateAuthority, DAY_MS, IssuancePolicy, verify_csr};
use rcgen::{
    CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, KeyPair,
    PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PublicKeyData, SanType,
};
use spake2plus::rand_core::SeedableRng;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

const NOW: u64 = 1_800_000_000_000;

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::from_seed([7; 32])
}

fn ca() -> CertificateAuthority {
    CertificateAuthority::create("tern test CA", NOW, IssuancePolicy::default(), &mut rng())
        .unwrap()
}

fn csr_for(key: &KeyPair, params: CertificateParams) -> Vec<u8> {
    params.serialize_request(key).unwrap().der().to_vec()
}

fn plain_csr(key: &KeyPair) -> Vec<u8> {
    csr_for(key, CertificateParams::default())
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

#[test]
fn client_certificate_is_built_by_the_ca_not_the_csr() {
    let ca = ca();
    let key = p256();
    // A CSR that asks for everything it must not get.
    let mut wish = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    // rcgen will not write basicConstraints into a CSR itself; ask for CA:TRUE by hand.
    let mut bc =
        CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff]);
    bc.set_criticality(true);
    wish.custom_extensions.push(bc);
    wish.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::Any,
    ];
    wish.distinguished_name.push(DnType::CommonName, "ternd");
    wish.subject_alt_names
        .push(SanType::DnsName("ternd".try_into().unwrap()));
    let csr = csr_for(&key, wish);
    let (_, parsed) = X509CertificationRequest::from_der(&csr).unwrap();
    let asks_ca = parsed
        .requested_extensions()
        .unwrap()
        .any(|e| matches!(e, ParsedExtension::BasicConstraints(b) if b.ca));
    assert!(asks_ca, "the CSR really asks for CA:TRUE");

    let issued = ca.issue_client(&csr, "node-7", NOW, &mut rng()).unwrap();
    let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();

    assert!(!cert.is_ca(), "the CA bit must never be set");
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present")
        .value;
    assert!(!bc.ca);
    let eku = cert
        .extended_key_usage()
        .unwrap()
        .expect("EKU present")
        .value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
    assert!(
        cert.subject_alternative_name().unwrap().is_none(),
        "no SAN from the CSR"
    );
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["node-7"]);
    assert_eq!(
        cert.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    for ext in cert.extensions() {
        assert!(
            !matches!(
                ext.parsed_extension(),
                ParsedExtension::SubjectAlternativeName(_)
            ),
            "unexpected SAN"
        );
    }
    // Bounded validity: 90 days, backdated five minutes.
    let v = cert.validity();
    let span = v.not_after.timestamp() - v.not_before.timestamp();
    assert_eq!(span as u64 * 1000, 90 * DAY_MS + 5 * 60 * 1000);
    let (_, ca_cert) = X509Certificate::from_der(ca.certificate_der()).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert_eq!(ca.verify_client(&issued.der).unwrap().device_id, "node-7");
}

#[test]
fn csr_with_a_bad_signature_is_refused() {
    let ca = ca();
    let csr = plain_csr(&p256());
    let mut sig = csr.clone();
    let last = sig.len() - 1;
    sig[last] ^= 0x01;
    assert_eq!(
        ca.issue_client(&sig, "n", NOW, &mut rng()),
        Err(CaError::CsrSignature)
    );

    // A changed subject under the original signature fails too.
    let key = p256();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "aaaa");
    let mut csr = csr_for(&key, params);
    let at = csr.windows(4).position(|w| w == b"aaaa").unwrap();
    csr[at] = b'b';
    assert_eq!(verify_csr(&csr), Err(CaError::CsrSignature));

    assert_eq!(
        ca.issue_client(&[0x30, 0x00], "n", NOW, &mut rng()),
        Err(CaError::CsrParse)
    );
}

#[test]
fn only_p256_keys_and_valid_device_ids() {
    let ca = ca();
    let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    assert_eq!(
        ca.issue_client(&plain_csr(&ed), "n", NOW, &mut rng()),
        Err(CaError::UnsupportedKey)
    );
    let csr = plain_csr(&p256());
    for bad in ["", "a b", "x/y", &"a".repeat(65)] {
        assert_eq!(
            ca.issue_client(&csr, bad, NOW, &mut rng()),
            Err(CaError::BadDeviceId),
            "{bad:?}"
        );
    }
}

#[test]
fn server_certificate_chains_and_is_not_a_ca() {
    let ca = ca();
    let server = ca
        .issue_server(&["ternd.local".into(), "127.0.0.1".into()], NOW, &mut rng())
        .unwrap();
    let (_, cert) = X509Certificate::from_der(&server.cert_der).unwrap();
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let (_, ca_cert) = X509Certificate::from_der(ca.certificate_der()).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert_eq!(
        server.fingerprint,
        daemon::ca::Fingerprint::of(&server.cert_der)
    );
    assert!(ca_cert.is_ca());
}

#[test]
fn ca_persists_as_pem_and_reloads() {
    let ca = ca();
    let stored = ca.to_stored();
    assert!(stored.cert_pem.contains("BEGIN CERTIFICATE"));
    assert!(stored.key_pem.contains("PRIVATE KEY"));
    let json = serde_json::to_string(&stored).unwrap();
    let reloaded =
        CertificateAuthority::from_stored(&serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(reloaded.fingerprint(), ca.fingerprint());
    let issued = reloaded
        .issue_client(&plain_csr(&p256()), "n1", NOW, &mut rng())
        .unwrap();
    assert_eq!(ca.verify_client(&issued.der).unwrap().device_id, "n1");

    let other =
        CertificateAuthority::create("other", NOW, IssuancePolicy::default(), &mut rng()).unwrap();
    let mut mixed = stored.clone();
    mixed.key_pem = other.to_stored().key_pem;
    assert!(matches!(
        CertificateAuthority::from_stored(&mixed),
        Err(CaError::BadStoredCa(_))
    ));
}

#[test]
fn rotation_before_expiry_reissues_for_the_same_device() {
    let ca = ca();
    let first = ca
        .issue_client(&plain_csr(&p256()), "node-r", NOW, &mut rng())
        .unwrap();
    assert!(!ca.needs_rotation(&first.der, NOW + DAY_MS).unwrap());
    assert!(!ca.needs_rotation(&first.der, NOW + 59 * DAY_MS).unwrap());
    assert!(ca.needs_rotation(&first.der, NOW + 61 * DAY_MS).unwrap());

    let new_key = p256();
    let later = NOW + 61 * DAY_MS;
    let second = ca
        .reissue(&first.der, &plain_csr(&new_key), later, &mut rng())
        .unwrap();
    assert_eq!(second.device_id, "node-r");
    assert_ne!(second.fingerprint, first.fingerprint);
    assert!(second.not_after_ms > first.not_after_ms);
    let (_, cert) = X509Certificate::from_der(&second.der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        new_key.subject_public_key_info().as_slice()
    );
    assert!(!ca.needs_rotation(&second.der, later).unwrap());

    // Only this CA's unexpired client certificates can be renewed.
    let other =
        CertificateAuthority::create("other", NOW, IssuancePolicy::default(), &mut rng()).unwrap();
    let foreign = other
        .issue_client(&plain_csr(&p256()), "node-r", NOW, &mut rng())
        .unwrap();
    assert_eq!(
        ca.reissue(&foreign.der, &plain_csr(&p256()), NOW, &mut rng()),
        Err(CaError::NotOurs)
    );
    assert_eq!(
        ca.reissue(
            &first.der,
            &plain_csr(&p256()),
            NOW + 91 * DAY_MS,
            &mut rng()
        ),
        Err(CaError::NotOurs)
    );
}
