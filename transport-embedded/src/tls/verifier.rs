//! The node's check of the daemon: its certificate, and the handshake signature made
//! with that certificate's key.
//!
//! embedded-tls calls [`TlsVerifier::verify_certificate`] with the Certificate message and
//! the transcript hash up to and including it, which is exactly what the server's
//! CertificateVerify signs; then [`TlsVerifier::verify_signature`] with that signature.
//! The first call keeps the key and the transcript for the second. A certificate alone
//! proves nothing (it is public and can be replayed): only the signature shows the peer
//! holds its key, so the daemon counts as authenticated only once both checks passed.
//!
//! embedded-tls 0.19 finishes a handshake in which the server sent neither message, and
//! then never calls this verifier: the caller must check [`DaemonVerifier::authenticated`]
//! after `open()` ([`super::open`] does).

use embedded_tls::{
    Aes128GcmSha256, CertificateEntryRef, CertificateRef, CertificateVerifyRef, SignatureScheme,
    TlsError, TlsVerifier,
};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2_010::{Digest, Sha256};

use super::Fingerprint;
use crate::certificate::{Certificate, CertificateError};

/// RFC 8446 §4.4.3: 64 spaces, the context string and a zero byte precede the transcript
/// hash in what a server's CertificateVerify signs.
const SERVER_CONTEXT: &[u8] = b"TLS 1.3, server CertificateVerify\x00";
const SIGNED_LEN: usize = 64 + SERVER_CONTEXT.len() + 32;

/// Which server certificate a connection accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCheck {
    /// Only the certificate with this fingerprint: the node plane, or pairing from a
    /// `tern://` URI that carries the daemon's fingerprint.
    Pinned(Fingerprint),
    /// Any certificate, for pairing from a bare code: the PAKE authenticates the daemon,
    /// and the pairing run requires the sealed answer to name the certificate seen here
    /// ([`DaemonVerifier::authenticated`]), which binds this connection to the PAKE.
    Observe,
}

/// Why the verifier refused the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyRefusal {
    /// The certificate is not the pinned one.
    PinMismatch,
    /// The Certificate message carried no X.509 certificate.
    NoCertificate,
    /// The certificate does not parse far enough to read its key.
    MalformedCertificate,
    /// The certificate's key is not a P-256 key.
    UnsupportedKey,
    /// The CertificateVerify names another scheme than ECDSA P-256 SHA-256.
    UnsupportedScheme,
    /// The CertificateVerify signature does not verify with the certificate's key: the
    /// peer shows a certificate without holding its key.
    BadSignature,
    /// A CertificateVerify without a Certificate before it.
    OutOfOrder,
}

impl core::error::Error for VerifyRefusal {}

impl core::fmt::Display for VerifyRefusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            VerifyRefusal::PinMismatch => "the daemon's certificate is not the pinned one",
            VerifyRefusal::NoCertificate => "the daemon sent no certificate",
            VerifyRefusal::MalformedCertificate => "the daemon's certificate does not parse",
            VerifyRefusal::UnsupportedKey => "the daemon's certificate key is not P-256",
            VerifyRefusal::UnsupportedScheme => "the daemon signed with another scheme than P-256",
            VerifyRefusal::BadSignature => {
                "the daemon's handshake signature does not verify with its certificate"
            }
            VerifyRefusal::OutOfOrder => "the daemon sent CertificateVerify before Certificate",
        })
    }
}

/// The certificate seen, waiting for its CertificateVerify.
struct Pending {
    key: VerifyingKey,
    transcript: Sha256,
    fingerprint: Fingerprint,
}

/// Checks the daemon at one TLS handshake; see the [module documentation](self).
pub struct DaemonVerifier {
    check: ServerCheck,
    pending: Option<Pending>,
    authenticated: Option<Fingerprint>,
    refusal: Option<VerifyRefusal>,
}

impl core::fmt::Debug for DaemonVerifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DaemonVerifier")
            .field("check", &self.check)
            .field("authenticated", &self.authenticated)
            .field("refusal", &self.refusal)
            .finish_non_exhaustive()
    }
}

impl DaemonVerifier {
    pub fn new(check: ServerCheck) -> Self {
        Self {
            check,
            pending: None,
            authenticated: None,
            refusal: None,
        }
    }

    /// The fingerprint of the daemon's certificate, once its certificate was accepted
    /// and its CertificateVerify verified with that certificate's key; `None` before, or
    /// when the server skipped either message.
    pub fn authenticated(&self) -> Option<Fingerprint> {
        self.authenticated
    }

    /// Why the daemon was refused, if it was.
    pub fn refusal(&self) -> Option<VerifyRefusal> {
        self.refusal
    }

    fn refuse(&mut self, why: VerifyRefusal) -> TlsError {
        self.refusal = Some(why);
        self.pending = None;
        self.authenticated = None;
        match why {
            VerifyRefusal::UnsupportedScheme => TlsError::InvalidSignatureScheme,
            VerifyRefusal::BadSignature => TlsError::InvalidSignature,
            VerifyRefusal::OutOfOrder => TlsError::InvalidHandshake,
            _ => TlsError::InvalidCertificate,
        }
    }

    /// The certificate check, on the leaf's DER: the pin (if any), then its P-256 key.
    fn accept_certificate(
        &mut self,
        transcript: &Sha256,
        leaf: &[u8],
    ) -> Result<(), VerifyRefusal> {
        let fingerprint = Fingerprint::of(leaf);
        if let ServerCheck::Pinned(pin) = self.check
            && !pin.matches(&fingerprint)
        {
            return Err(VerifyRefusal::PinMismatch);
        }
        let key = certificate_key(leaf)?;
        self.pending = Some(Pending {
            key,
            transcript: transcript.clone(),
            fingerprint,
        });
        Ok(())
    }

    /// The CertificateVerify check with the key and transcript the certificate left.
    fn accept_signature(
        &mut self,
        scheme: SignatureScheme,
        signature: &[u8],
    ) -> Result<Fingerprint, VerifyRefusal> {
        let pending = self.pending.take().ok_or(VerifyRefusal::OutOfOrder)?;
        if scheme != SignatureScheme::EcdsaSecp256r1Sha256 {
            return Err(VerifyRefusal::UnsupportedScheme);
        }
        let signature = Signature::from_der(signature).map_err(|_| VerifyRefusal::BadSignature)?;
        let mut signed = [0x20u8; SIGNED_LEN];
        signed[64..64 + SERVER_CONTEXT.len()].copy_from_slice(SERVER_CONTEXT);
        signed[64 + SERVER_CONTEXT.len()..].copy_from_slice(&pending.transcript.finalize());
        pending
            .key
            .verify(&signed, &signature)
            .map_err(|_| VerifyRefusal::BadSignature)?;
        Ok(pending.fingerprint)
    }
}

impl TlsVerifier<Aes128GcmSha256> for DaemonVerifier {
    fn set_hostname_verification(&mut self, _hostname: &str) -> Result<(), TlsError> {
        // The daemon is named by its pin, not by a host name.
        Ok(())
    }

    fn verify_certificate(
        &mut self,
        transcript: &Sha256,
        cert: CertificateRef<'_>,
    ) -> Result<(), TlsError> {
        self.pending = None;
        self.authenticated = None;
        let Some(CertificateEntryRef::X509(leaf)) = cert.entries.first() else {
            return Err(self.refuse(VerifyRefusal::NoCertificate));
        };
        self.accept_certificate(transcript, leaf)
            .map_err(|why| self.refuse(why))
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef<'_>) -> Result<(), TlsError> {
        match self.accept_signature(verify.signature_scheme, verify.signature) {
            Ok(fingerprint) => {
                self.authenticated = Some(fingerprint);
                Ok(())
            }
            Err(why) => Err(self.refuse(why)),
        }
    }
}

/// The P-256 key of a DER certificate.
fn certificate_key(cert: &[u8]) -> Result<VerifyingKey, VerifyRefusal> {
    Certificate::from_der(cert)
        .and_then(|c| c.p256_key())
        .map_err(|e| match e {
            CertificateError::Malformed => VerifyRefusal::MalformedCertificate,
            CertificateError::UnsupportedKey => VerifyRefusal::UnsupportedKey,
        })
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use embedded_tls::{CertificateEntryRef, CertificateRef, CertificateVerifyRef};
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SigningKey as _};

    use super::*;

    /// A self-signed P-256 certificate and its key.
    fn certificate() -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = CertificateParams::new(std::vec!["ternd".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.der().to_vec(), key)
    }

    fn transcript(bytes: &[u8]) -> Sha256 {
        let mut t = Sha256::new();
        t.update(bytes);
        t
    }

    /// What the server signs for `transcript`, signed with `key`.
    fn signature(key: &KeyPair, transcript: &Sha256) -> Vec<u8> {
        let mut signed = Vec::from([0x20u8; 64]);
        signed.extend_from_slice(SERVER_CONTEXT);
        signed.extend_from_slice(&transcript.clone().finalize());
        key.sign(&signed).unwrap()
    }

    fn show(v: &mut DaemonVerifier, cert: &[u8], t: &Sha256) -> Result<(), TlsError> {
        let mut entries = CertificateRef::with_context(&[]);
        entries.add(CertificateEntryRef::X509(cert)).unwrap();
        TlsVerifier::<Aes128GcmSha256>::verify_certificate(v, t, entries)
    }

    fn sign(v: &mut DaemonVerifier, signature: &[u8]) -> Result<(), TlsError> {
        TlsVerifier::<Aes128GcmSha256>::verify_signature(
            v,
            CertificateVerifyRef {
                signature_scheme: SignatureScheme::EcdsaSecp256r1Sha256,
                signature,
            },
        )
    }

    #[test]
    fn the_pinned_certificate_with_its_signature_authenticates() {
        let (cert, key) = certificate();
        let pin = Fingerprint::of(&cert);
        let mut v = DaemonVerifier::new(ServerCheck::Pinned(pin));
        let t = transcript(b"client hello .. certificate");
        show(&mut v, &cert, &t).unwrap();
        // A certificate alone proves nothing.
        assert_eq!(v.authenticated(), None);
        sign(&mut v, &signature(&key, &t)).unwrap();
        assert_eq!(v.authenticated(), Some(pin));
    }

    #[test]
    fn a_handshake_without_certificate_messages_leaves_the_daemon_unauthenticated() {
        let v = DaemonVerifier::new(ServerCheck::Observe);
        assert_eq!(v.authenticated(), None);
        assert_eq!(v.refusal(), None);
    }

    #[test]
    fn another_certificate_than_the_pin_is_refused() {
        let (cert, _) = certificate();
        let (other, _) = certificate();
        let mut v = DaemonVerifier::new(ServerCheck::Pinned(Fingerprint::of(&other)));
        assert!(show(&mut v, &cert, &transcript(b"t")).is_err());
        assert_eq!(v.refusal(), Some(VerifyRefusal::PinMismatch));
    }

    #[test]
    fn observing_accepts_any_certificate_but_still_requires_its_signature() {
        let (cert, key) = certificate();
        let (_, other_key) = certificate();
        let t = transcript(b"t");
        let mut v = DaemonVerifier::new(ServerCheck::Observe);
        show(&mut v, &cert, &t).unwrap();
        assert!(sign(&mut v, &signature(&other_key, &t)).is_err());
        assert_eq!(v.refusal(), Some(VerifyRefusal::BadSignature));
        assert_eq!(v.authenticated(), None);

        let mut v = DaemonVerifier::new(ServerCheck::Observe);
        show(&mut v, &cert, &t).unwrap();
        sign(&mut v, &signature(&key, &t)).unwrap();
        assert_eq!(v.authenticated(), Some(Fingerprint::of(&cert)));
    }

    #[test]
    fn a_signature_over_another_transcript_is_refused() {
        let (cert, key) = certificate();
        let mut v = DaemonVerifier::new(ServerCheck::Pinned(Fingerprint::of(&cert)));
        show(&mut v, &cert, &transcript(b"this handshake")).unwrap();
        let replayed = signature(&key, &transcript(b"an earlier handshake"));
        assert!(sign(&mut v, &replayed).is_err());
        assert_eq!(v.refusal(), Some(VerifyRefusal::BadSignature));
    }

    #[test]
    fn a_signature_before_any_certificate_is_refused_without_panicking() {
        let (_, key) = certificate();
        let mut v = DaemonVerifier::new(ServerCheck::Observe);
        assert!(sign(&mut v, &signature(&key, &transcript(b"t"))).is_err());
        assert_eq!(v.refusal(), Some(VerifyRefusal::OutOfOrder));
    }

    #[test]
    fn garbage_and_non_p256_certificates_are_refused() {
        let mut v = DaemonVerifier::new(ServerCheck::Observe);
        assert!(show(&mut v, b"\x30\x03\x02\x01\x00", &transcript(b"t")).is_err());
        assert_eq!(v.refusal(), Some(VerifyRefusal::MalformedCertificate));

        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = CertificateParams::new(std::vec!["ternd".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut v = DaemonVerifier::new(ServerCheck::Observe);
        assert!(show(&mut v, cert.der(), &transcript(b"t")).is_err());
        assert_eq!(v.refusal(), Some(VerifyRefusal::UnsupportedKey));
    }

    #[test]
    fn an_empty_certificate_message_is_refused() {
        let mut v = DaemonVerifier::new(ServerCheck::Observe);
        let empty = CertificateRef::with_context(&[]);
        assert!(
            TlsVerifier::<Aes128GcmSha256>::verify_certificate(&mut v, &transcript(b"t"), empty)
                .is_err()
        );
        assert_eq!(v.refusal(), Some(VerifyRefusal::NoCertificate));
    }
}
