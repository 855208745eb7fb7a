//! Trust: how a node authenticates the daemon and itself over embedded-tls 0.19.
//!
//! - [`verifier`]: the daemon's certificate must hash to the pin learned at pairing, and
//!   the handshake's CertificateVerify must verify with that certificate's key. On a
//!   pairing connection without a pin, any certificate is accepted but its
//!   CertificateVerify is still required, and its fingerprint is handed back so pairing
//!   can require the sealed answer to name the same one.
//! - [`provider`]: the `CryptoProvider` embedded-tls asks for the RNG, the verifier, the
//!   client certificate and the signer; and [`open`], the handshake plus the check
//!   embedded-tls leaves to its caller (a server that never authenticated).
//! - [`rng`]: the caller's `rand_core` 0.10 RNG as the `rand_core` 0.6 RNG embedded-tls
//!   asks for.
//! - [`socket`]: one connection's reader and writer as the `Clone` socket
//!   `TlsConnection::split` needs, so a TLS read is never raced against a timer.
//!
//! Record sizes: the daemon caps the records it sends at [`DAEMON_MAX_FRAGMENT`] bytes
//! (rustls `max_fragment_size`), so [`TLS_READ_LEN`] bytes hold any record it sends.
//! embedded-tls 0.19 cannot reassemble a handshake message split across records, so the
//! daemon's whole handshake flight (its certificate included) must fit one record.

pub mod provider;
pub mod rng;
pub mod socket;
pub mod verifier;

pub use provider::{ClientAuth, NodeProvider, TlsFailure, open};
pub use rng::RngBridge;
pub use socket::SharedSocket;
pub use verifier::{DaemonVerifier, ServerCheck, VerifyRefusal};

use crate::identity::MAX_CERT_LEN;

/// The ALPN protocol id of the node plane and of pairing; the daemon refuses a connection
/// that did not negotiate it.
pub const ALPN: &[u8] = b"tern/1";
pub(crate) const ALPN_PROTOCOLS: &[&[u8]] = &[ALPN];

/// Largest TLS record the daemon sends, header included (rustls `max_fragment_size`).
pub const DAEMON_MAX_FRAGMENT: usize = 1024;

/// Bytes of the TLS record read buffer: the body of the largest record the daemon sends.
/// rustls keeps `max_fragment_size` with the 5-byte header, so a record carries at most
/// 1019 bytes of plaintext; sealed it gains its content type (1) and the AEAD tag (16).
/// embedded-tls holds the record body without its header.
pub const TLS_READ_LEN: usize = DAEMON_MAX_FRAGMENT + 12;

/// What a client Certificate message adds to the certificate it carries: handshake
/// header (4), request context (1), list length (3), entry length (3), entry extensions (2).
const CERTIFICATE_MESSAGE_OVERHEAD: usize = 13;
/// What one sealed record adds: header (5), content type (1), AEAD tag (16).
const RECORD_OVERHEAD: usize = 22;

/// Bytes of the TLS record write buffer a client certificate of `cert_len` bytes needs:
/// the Certificate message goes out as one record.
pub const fn tls_write_len(cert_len: usize) -> usize {
    let needed = cert_len + CERTIFICATE_MESSAGE_OVERHEAD + RECORD_OVERHEAD;
    // embedded-tls reserves this much of the buffer whenever it writes application data.
    if needed > embedded_tls::TLS_RECORD_OVERHEAD {
        needed
    } else {
        embedded_tls::TLS_RECORD_OVERHEAD + 1
    }
}

/// Bytes of the TLS record write buffer that hold the largest client certificate an
/// identity can keep ([`MAX_CERT_LEN`]).
pub const TLS_WRITE_LEN: usize = tls_write_len(MAX_CERT_LEN);

/// Bytes of the TLS record write buffer for a pairing connection (no client certificate:
/// the ClientHello, about 200 bytes, is the largest record).
pub const PAIRING_TLS_WRITE_LEN: usize = 512;

/// SHA-256 of a certificate's DER: how a node pins the daemon's server certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        Fingerprint(protocol_core::pairing::certificate_fingerprint(cert_der))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares without an early exit, so a probe cannot learn a prefix from timing.
    pub(crate) fn matches(&self, other: &Fingerprint) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl core::fmt::Display for Fingerprint {
    /// Lower-case hex.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl core::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}
