//! A PKCS#10 certificate signing request (RFC 2986) for the node's key, built without an
//! allocator.
//!
//! The daemon takes only the public key from it, after checking its signature (the
//! request proves the node holds the key); the subject and any attribute are ignored,
//! so the request carries a fixed common name and no attributes. It is signed with the
//! p256 generation embedded-tls links already (0.13), so the firmware carries one
//! ECDSA implementation for both.

use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, SequenceOf, SetOf, Utf8StringRef};
use der::{Encode, Sequence, ValueOrd};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, Signature};
use spki::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use crate::key::NodeKey;

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// The subject a node's request names: the daemon chooses the device id itself.
pub const CSR_COMMON_NAME: &str = "tern-node";

/// Largest request [`build_csr`] writes (a common name of up to 64 bytes). A request
/// with [`CSR_COMMON_NAME`] is about 200 bytes.
pub const MAX_CSR_LEN: usize = 320;

/// Largest common name a request may carry (X.520 `ub-common-name`).
pub const MAX_COMMON_NAME_LEN: usize = 64;

/// AttributeTypeAndValue, with a UTF8String value.
#[derive(Clone, Debug, Eq, PartialEq, Sequence, ValueOrd)]
struct AttributeTypeAndValue<'a> {
    oid: ObjectIdentifier,
    value: Utf8StringRef<'a>,
}

/// Name: one relative distinguished name holding one common name.
type Name<'a> = SequenceOf<SetOf<AttributeTypeAndValue<'a>, 1>, 1>;

/// Attribute; never populated, but the type fixes the shape of the (empty) set.
#[derive(Clone, Debug, Eq, PartialEq, Sequence, ValueOrd)]
struct Attribute<'a> {
    oid: ObjectIdentifier,
    values: SetOf<AnyRef<'a>, 1>,
}

/// CertificationRequestInfo (RFC 2986 §4.1).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct RequestInfo<'a> {
    /// v1 (0).
    version: u8,
    subject: Name<'a>,
    public_key: SubjectPublicKeyInfo<ObjectIdentifier, BitStringRef<'a>>,
    /// Required, and empty here.
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", constructed = "true")]
    attributes: SetOf<Attribute<'a>, 0>,
}

/// CertificationRequest (RFC 2986 §4.2).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct Request<'a> {
    info: RequestInfo<'a>,
    /// ecdsa-with-SHA256, parameters absent (RFC 5758 §3.2).
    algorithm: AlgorithmIdentifier<AnyRef<'a>>,
    signature: BitStringRef<'a>,
}

/// Why a request could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrError {
    /// The common name is empty or longer than [`MAX_COMMON_NAME_LEN`].
    CommonName,
    /// `out` is too small for the request ([`MAX_CSR_LEN`] always suffices).
    BufferTooSmall,
    /// The encoder refused a value.
    Encoding,
}

impl core::fmt::Display for CsrError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CsrError::CommonName => "CSR common name must be 1 to 64 bytes",
            CsrError::BufferTooSmall => "buffer too small for the CSR",
            CsrError::Encoding => "CSR encoding failed",
        })
    }
}

impl core::error::Error for CsrError {}

fn encoding(e: der::Error) -> CsrError {
    match e.kind() {
        der::ErrorKind::Overlength | der::ErrorKind::Overflow => CsrError::BufferTooSmall,
        _ => CsrError::Encoding,
    }
}

/// Writes a DER request for `key`'s public key, signed with `key` (ECDSA P-256 SHA-256,
/// deterministic: no RNG needed), into `out`; returns the written prefix.
pub fn build_csr<'o>(
    key: &NodeKey,
    common_name: &str,
    out: &'o mut [u8],
) -> Result<&'o [u8], CsrError> {
    if common_name.is_empty() || common_name.len() > MAX_COMMON_NAME_LEN {
        return Err(CsrError::CommonName);
    }
    let public_key = key.public_key();
    let mut rdn = SetOf::<AttributeTypeAndValue<'_>, 1>::new();
    rdn.insert(AttributeTypeAndValue {
        oid: COMMON_NAME,
        value: Utf8StringRef::new(common_name).map_err(encoding)?,
    })
    .map_err(encoding)?;
    let mut subject: Name<'_> = SequenceOf::new();
    subject.add(rdn).map_err(encoding)?;
    let info = RequestInfo {
        version: 0,
        subject,
        public_key: SubjectPublicKeyInfo {
            algorithm: AlgorithmIdentifier {
                oid: ID_EC_PUBLIC_KEY,
                parameters: Some(SECP256R1),
            },
            subject_public_key: BitStringRef::from_bytes(&public_key).map_err(encoding)?,
        },
        attributes: SetOf::new(),
    };
    // What is signed is the DER of the request info.
    let mut info_der = [0u8; MAX_CSR_LEN];
    let info_der = info.encode_to_slice(&mut info_der).map_err(encoding)?;
    let signature: Signature = key.signing_key().sign(info_der);
    let signature: DerSignature = signature.to_der();
    let request = Request {
        info,
        algorithm: AlgorithmIdentifier {
            oid: ECDSA_WITH_SHA256,
            parameters: None,
        },
        signature: BitStringRef::from_bytes(signature.as_bytes()).map_err(encoding)?,
    };
    request.encode_to_slice(out).map_err(encoding)
}
