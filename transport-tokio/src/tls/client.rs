//! A node's TLS client configuration: its certificate, and the daemon pinned.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::identity::Fingerprint;
use super::{ALPN, TlsSetupError, provider};

/// A paired node's client configuration: it presents `cert_chain` and `key`, and accepts
/// the daemon only if its server certificate's SHA-256 fingerprint is `pin` (learned at
/// pairing). The handshake signatures are still verified against that certificate's
/// key. No session resumption; TLS 1.3; ALPN `tern/1`.
///
/// Pinning, not a CA check: any certificate from the daemon's CA (a node's too) would
/// pass a chain check, so only the exact server certificate is accepted.
pub fn client_config(
    pin: Fingerprint,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer {
        pin: Some(pin),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert_chain, key)?;
    finish(&mut config);
    Ok(Arc::new(config))
}

/// A client configuration without a certificate, for pairing: the daemon admits such a
/// connection to pairing only.
///
/// With `pin`, the daemon is checked as in [`client_config`] (re-pairing a node that
/// knows it). Without, any server certificate is accepted: pairing's PAKE authenticates
/// the daemon and everything it hands back (`PAIRING.md`), so it is safe over an
/// unauthenticated channel; nothing else may be sent over such a connection.
pub fn pairing_client_config(pin: Option<Fingerprint>) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer {
        pin,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    finish(&mut config);
    Ok(Arc::new(config))
}

fn finish(config: &mut ClientConfig) {
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![ALPN.to_vec()];
}

/// Accepts the server certificate whose fingerprint is the pin (any, without a pin), and
/// checks the handshake signatures made with its key.
#[derive(Debug)]
struct PinnedServer {
    pin: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.pin {
            Some(pin) if Fingerprint::of(end_entity) != pin => Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
