//! rustls configurations for both ends of a Tern link, and the identity of a peer.
//!
//! Security rules, one file per concern:
//! - [`server`]: client certificates must chain to the daemon's CA; a connection without
//!   one is admitted but classified anonymous (pairing only); every handshake consults
//!   the live [`Revocation`] check; no session resumption, no tickets; ALPN `tern/1`.
//! - [`client`]: a node presents its certificate and accepts the daemon only if the
//!   server certificate hashes to the fingerprint pinned at pairing; no resumption;
//!   ALPN `tern/1`.
//! - [`identity`]: the device id (certificate subject CN) and fingerprint (SHA-256 of
//!   the certificate DER) of a peer.
//! - [`revocation`]: the revocation check and its change notices.

pub mod client;
pub mod identity;
pub mod revocation;
pub mod server;

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use client::{client_config, pairing_client_config};
pub use identity::{Fingerprint, PeerIdentity, device_id_of, peer_identity};
pub use revocation::{Revocation, RevocationList, RevocationWatch};
pub use server::server_config;

/// The ALPN protocol id of the node plane (and pairing) over TLS.
pub const ALPN: &[u8] = b"tern/1";

/// The crypto provider both ends use: ring, TLS 1.3, AES-128-GCM first. Its SHA-256
/// runs on the CPU's SHA extensions where ring's SHA-384 has no such path: a full
/// handshake is cheaper on both ends, at the 128-bit level P-256 gives anyway.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..default_provider()
    })
}

/// A TLS configuration could not be built.
#[derive(Debug)]
pub enum TlsSetupError {
    /// The CA certificate could not be used as a trust anchor.
    BadCa(rustls::Error),
    /// The client verifier could not be built.
    Verifier(rustls::server::VerifierBuilderError),
    /// rustls refused the certificate, key or protocol settings.
    Rustls(rustls::Error),
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::BadCa(e) => write!(f, "CA certificate not usable: {e}"),
            TlsSetupError::Verifier(e) => write!(f, "client verifier: {e}"),
            TlsSetupError::Rustls(e) => write!(f, "TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for TlsSetupError {}

impl From<rustls::Error> for TlsSetupError {
    fn from(e: rustls::Error) -> Self {
        TlsSetupError::Rustls(e)
    }
}
