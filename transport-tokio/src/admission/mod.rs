//! Admission, the same on every transport: who a connecting peer is, whether it is
//! revoked, whether the session it is lent is its own, and how often one address may
//! start pairing.

pub(crate) mod pairing_limit;

use protocol_core::wire::ErrorCode;
use rustls_pki_types::CertificateDer;

use crate::host::{Bound, Refusal};
use crate::stats::HandshakeFailure;
use crate::tls::{Fingerprint, Revocation, device_id_of};

pub use pairing_limit::{DEFAULT_PAIRING_BURST, DEFAULT_PAIRING_REFILL};

/// A peer turned away after its handshake: what the metrics count, and what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denied {
    pub(crate) failure: HandshakeFailure,
    pub(crate) refusal: Refusal,
}

impl Denied {
    fn new(failure: HandshakeFailure, code: ErrorCode, reason: &str) -> Self {
        Self {
            failure,
            refusal: Refusal::new(code, reason),
        }
    }
}

/// A device's certificate, checked after the handshake: it names a device, and neither
/// the device nor the certificate is revoked (the verifier checked at the handshake;
/// this catches a revocation since).
pub(crate) fn device(
    cert: &CertificateDer<'_>,
    revocation: Option<&dyn Revocation>,
) -> Result<(String, Fingerprint), Denied> {
    let Some(device_id) = device_id_of(cert) else {
        return Err(Denied::new(
            HandshakeFailure::Identity,
            ErrorCode::Unauthorized,
            "certificate names no device",
        ));
    };
    let fingerprint = Fingerprint::of(cert);
    if revocation.is_some_and(|r| r.is_revoked(&fingerprint, &device_id)) {
        return Err(Denied::new(
            HandshakeFailure::Revoked,
            ErrorCode::Revoked,
            "revoked",
        ));
    }
    Ok((device_id, fingerprint))
}

/// The session lent to a device's connection must serve that device: one bound to
/// another node never speaks on it.
pub(crate) fn bound_to(session: &impl Bound, device_id: &str) -> Result<(), Denied> {
    match session.bound_node() {
        Some(bound) if bound != device_id => Err(Denied::new(
            HandshakeFailure::Identity,
            ErrorCode::Unauthorized,
            "wrong node",
        )),
        _ => Ok(()),
    }
}
