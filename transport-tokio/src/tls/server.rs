//! The daemon's TLS server configuration.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::identity::{Fingerprint, device_id_of};
use super::revocation::Revocation;
use super::{ALPN, TlsSetupError, provider};

/// The daemon's server configuration.
///
/// - A client certificate, if presented, must chain to `ca` (DER) and name a device (a
///   subject CN), and neither the certificate nor the device may be revoked: the
///   `revocation` check runs at every handshake, and a refused client gets the TLS alert
///   that says why (`certificate_revoked`, `unknown_ca`, `bad_certificate`).
/// - A client without a certificate completes the handshake; the listener classifies it
///   anonymous (pairing only).
/// - Session resumption and tickets are off (`NoServerSessionStorage`, no TLS 1.3
///   tickets): a resumed session would skip the revocation check.
/// - TLS 1.3 only; ALPN `tern/1` (the listener refuses a connection that did not
///   negotiate it).
pub fn server_config(
    ca: CertificateDer<'static>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    revocation: Arc<dyn Revocation>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(TlsSetupError::BadCa)?;
    let chain = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(TlsSetupError::Verifier)?;
    let verifier = Arc::new(CheckedClientVerifier { chain, revocation });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert_chain, key)?;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The CA chain check followed by the device-id and live revocation checks.
struct CheckedClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    revocation: Arc<dyn Revocation>,
}

impl fmt::Debug for CheckedClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedClientVerifier")
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for CheckedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // Without a certificate a client may pair, and nothing else.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let device_id = device_id_of(end_entity)
            .ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self
            .revocation
            .is_revoked(&Fingerprint::of(end_entity), &device_id)
        {
            return Err(Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
