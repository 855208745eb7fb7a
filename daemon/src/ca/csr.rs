//! Checking a node's certificate signing request.
//!
//! Only the request's public key is used: its signature is checked (the node holds the
//! private key) and the key must be P-256, which every node, microcontrollers included,
//! can use for TLS. The subject and every requested extension are ignored.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

use super::CaError;

/// What issuance takes from a CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    /// The SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    /// The public key, SEC1 uncompressed.
    pub public_key: Vec<u8>,
}

/// Parses `der`, checks its signature and its key type.
pub fn verify_csr(der: &[u8]) -> Result<VerifiedCsr, CaError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CaError::CsrParse)?;
    if !rest.is_empty() {
        return Err(CaError::CsrParse);
    }
    csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(CaError::UnsupportedKey);
    }
    Ok(VerifiedCsr {
        spki_der: spki.raw.to_vec(),
        public_key: spki.subject_public_key.data.to_vec(),
    })
}
