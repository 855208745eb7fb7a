//! Certificate renewal over the node's session, without pairing again (the exchange
//! `node_contract::renewal` defines).
//!
//! Before its certificate ends the node sends the event `tern.renew` carrying
//! [`renewal_csr`] (hex, in `node_contract::RenewRequest`). The daemon names the device
//! from the session's certificate, never from the request, issues a certificate for the
//! same device and key, and calls the node's `tern.certificate` capability with it. The
//! node keeps it only if [`Identity::renewed`] accepts it, stores the new identity, and
//! presents it from its next connection on.
//!
//! The daemon names a device by the subject common name of its certificate (exactly
//! one CN), so that is what is compared.

use p256::ecdsa::Signature;
use p256::ecdsa::signature::Verifier;

use crate::certificate::{Certificate, ECDSA_WITH_SHA256};
pub use crate::certificate::{CertificateError, Validity, validity};
use crate::csr::{CsrError, build_csr};
use crate::identity::{Identity, MAX_CERT_LEN};

/// Why a renewed certificate was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalRefused {
    /// The bytes are not one DER X.509 certificate.
    Malformed,
    /// The certificate is longer than an identity holds ([`MAX_CERT_LEN`]).
    TooLong { len: usize },
    /// The identity keeps no CA certificate to check the signature with.
    NoCaCertificate,
    /// The identity's CA certificate does not parse, or its key is not P-256.
    BadCaCertificate,
    /// The certificate is for another key than the node's (or not for a P-256 key).
    OtherKey,
    /// The certificate does not name this node's device id as its one common name.
    OtherDevice,
    /// The certificate's issuer is not the CA's subject.
    OtherCa,
    /// The certificate is signed with another algorithm than ECDSA P-256 SHA-256.
    UnsupportedSignature,
    /// The signature does not verify with the CA's key.
    BadSignature,
    /// The certificate's validity starts after `now`.
    NotYetValid { not_before: u64, now: u64 },
    /// The certificate's validity ended before `now`.
    Expired { not_after: u64, now: u64 },
}

impl core::fmt::Display for RenewalRefused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RenewalRefused::Malformed => f.write_str("the renewed certificate does not parse"),
            RenewalRefused::TooLong { len } => write!(
                f,
                "the renewed certificate has {len} bytes (at most {MAX_CERT_LEN} kept)"
            ),
            RenewalRefused::NoCaCertificate => {
                f.write_str("no CA certificate kept to check the renewed certificate with")
            }
            RenewalRefused::BadCaCertificate => {
                f.write_str("the kept CA certificate does not parse or its key is not P-256")
            }
            RenewalRefused::OtherKey => f.write_str("the renewed certificate is for another key"),
            RenewalRefused::OtherDevice => {
                f.write_str("the renewed certificate names another device")
            }
            RenewalRefused::OtherCa => f.write_str("another CA issued the renewed certificate"),
            RenewalRefused::UnsupportedSignature => {
                f.write_str("the renewed certificate is not signed with ECDSA P-256 SHA-256")
            }
            RenewalRefused::BadSignature => {
                f.write_str("the renewed certificate's signature does not verify with the CA's key")
            }
            RenewalRefused::NotYetValid { not_before, now } => write!(
                f,
                "the renewed certificate is valid from {not_before}, after now ({now})"
            ),
            RenewalRefused::Expired { not_after, now } => write!(
                f,
                "the renewed certificate expired at {not_after}, before now ({now})"
            ),
        }
    }
}

impl core::error::Error for RenewalRefused {}

/// A CSR for the identity's own key into `out` ([`MAX_CSR_LEN`](crate::csr::MAX_CSR_LEN)
/// bytes suffice); returns the written prefix. The daemon takes only the key from it;
/// the subject names the device id, as the Linux node host's request does.
pub fn renewal_csr<'o>(identity: &Identity, out: &'o mut [u8]) -> Result<&'o [u8], CsrError> {
    build_csr(identity.key(), identity.device_id(), out)
}

impl Identity {
    /// This identity with the client certificate `cert_der` the daemon renewed, if the
    /// certificate is for this node's key, names this node's device id as its one
    /// subject common name (the same as the current certificate does), is signed by the CA certificate this identity keeps,
    /// and, when `now_unix` is given, is valid then (a board without a wall clock passes
    /// `None`). Everything else stays as it is.
    pub fn renewed(
        &self,
        cert_der: &[u8],
        now_unix: Option<u64>,
    ) -> Result<Identity, RenewalRefused> {
        if cert_der.len() > MAX_CERT_LEN {
            return Err(RenewalRefused::TooLong {
                len: cert_der.len(),
            });
        }
        let cert = Certificate::from_der(cert_der).map_err(|_| RenewalRefused::Malformed)?;
        match cert.p256_key() {
            Ok(key) if key == *self.key().signing_key().verifying_key() => {}
            Ok(_) | Err(CertificateError::UnsupportedKey) => return Err(RenewalRefused::OtherKey),
            Err(CertificateError::Malformed) => return Err(RenewalRefused::Malformed),
        }
        let name = cert.common_name().map_err(|_| RenewalRefused::Malformed)?;
        // The device the session says it is, and the one the current certificate names:
        // the same on any identity pairing made, both checked in case one is not.
        let current = Certificate::from_der(self.client_cert())
            .ok()
            .and_then(|c| c.common_name().ok().flatten());
        if name != Some(self.device_id()) || current.is_some_and(|c| Some(c) != name) {
            return Err(RenewalRefused::OtherDevice);
        }
        check_signature(&cert, self.ca_cert())?;
        if let Some(now) = now_unix {
            let validity = cert.validity();
            if now < validity.not_before {
                return Err(RenewalRefused::NotYetValid {
                    not_before: validity.not_before,
                    now,
                });
            }
            if now > validity.not_after {
                return Err(RenewalRefused::Expired {
                    not_after: validity.not_after,
                    now,
                });
            }
        }
        Identity::new(
            self.device_id(),
            self.key().clone(),
            cert_der,
            self.ca_cert(),
            self.server_pin(),
            self.daemon(),
        )
        .map_err(|_| RenewalRefused::TooLong {
            len: cert_der.len(),
        })
    }
}

/// Checks that the CA certificate `ca_der` issued `cert`: the issuer is its subject, and
/// the signature over the TBS bytes verifies with its key.
fn check_signature(cert: &Certificate<'_>, ca_der: &[u8]) -> Result<(), RenewalRefused> {
    if ca_der.is_empty() {
        return Err(RenewalRefused::NoCaCertificate);
    }
    let ca = Certificate::from_der(ca_der).map_err(|_| RenewalRefused::BadCaCertificate)?;
    let ca_key = ca
        .p256_key()
        .map_err(|_| RenewalRefused::BadCaCertificate)?;
    if cert.tbs.issuer != ca.tbs.subject {
        return Err(RenewalRefused::OtherCa);
    }
    // ecdsa-with-SHA256 has no parameters (RFC 5758 §3.2); the signed copy of the
    // algorithm must agree with the outer one (RFC 5280 §4.1.1.2).
    let algorithm = cert.signature_algorithm;
    if algorithm.oid != ECDSA_WITH_SHA256
        || algorithm.parameters.is_some()
        || cert.tbs.signature != algorithm
    {
        return Err(RenewalRefused::UnsupportedSignature);
    }
    let signature = cert
        .signature
        .as_bytes()
        .and_then(|der| Signature::from_der(der).ok())
        .ok_or(RenewalRefused::BadSignature)?;
    ca_key
        .verify(cert.tbs_der, &signature)
        .map_err(|_| RenewalRefused::BadSignature)
}
