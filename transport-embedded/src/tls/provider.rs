//! The node's `CryptoProvider` for embedded-tls, and the handshake that uses it.

use embedded_io_async::{Read, Write};
use embedded_tls::alert::{AlertDescription, AlertLevel};
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, SignatureScheme, TlsConfig, TlsConnection,
    TlsContext, TlsError, TlsVerifier,
};
use p256::ecdsa::{DerSignature, SigningKey};
use rand_core::CryptoRng;

use super::verifier::{DaemonVerifier, ServerCheck, VerifyRefusal};
use super::{ALPN_PROTOCOLS, Fingerprint, RngBridge};
use crate::key::NodeKey;

/// What a node presents for mutual TLS on the node plane: its key and the certificate
/// the daemon issued for it.
#[derive(Clone, Copy)]
pub struct ClientAuth<'a> {
    pub key: &'a NodeKey,
    /// The client certificate, DER.
    pub certificate: &'a [u8],
}

impl core::fmt::Debug for ClientAuth<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("certificate", &Fingerprint::of(self.certificate))
            .finish_non_exhaustive()
    }
}

/// The provider embedded-tls asks for randomness, the verifier, the signer and the
/// client certificate. Pass it as `&mut provider` so its verifier can be read after
/// `open()`.
pub struct NodeProvider<'a, R: ?Sized> {
    rng: RngBridge<'a, R>,
    verifier: DaemonVerifier,
    /// `None` on a pairing connection: the node has no certificate yet.
    client: Option<ClientAuth<'a>>,
}

impl<R: ?Sized> core::fmt::Debug for NodeProvider<'_, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NodeProvider")
            .field("verifier", &self.verifier)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl<'a, R: CryptoRng + ?Sized> NodeProvider<'a, R> {
    pub fn new(rng: &'a mut R, check: ServerCheck, client: Option<ClientAuth<'a>>) -> Self {
        Self {
            rng: RngBridge(rng),
            verifier: DaemonVerifier::new(check),
            client,
        }
    }

    pub fn verifier(&self) -> &DaemonVerifier {
        &self.verifier
    }
}

impl<R: CryptoRng + ?Sized> CryptoProvider for NodeProvider<'_, R> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = DerSignature;

    fn rng(&mut self) -> impl embedded_tls::CryptoRngCore {
        &mut self.rng
    }

    fn verifier(
        &mut self,
    ) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, embedded_tls::TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(
        &mut self,
    ) -> Result<
        (
            impl p256::ecdsa::signature::SignerMut<Self::Signature>,
            SignatureScheme,
        ),
        TlsError,
    > {
        match self.client {
            // Deterministic ECDSA (RFC 6979): signing draws nothing from the RNG.
            Some(client) => Ok((
                client.key.signing_key().clone(),
                SignatureScheme::EcdsaSecp256r1Sha256,
            )),
            None => Err::<(SigningKey, _), _>(TlsError::InvalidPrivateKey),
        }
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        self.client.map(|c| Certificate::X509(c.certificate))
    }
}

/// Why a TLS handshake with the daemon failed.
#[derive(Debug, Clone, Copy)]
pub enum TlsFailure {
    /// The node's verifier refused the daemon.
    Refused(VerifyRefusal),
    /// The handshake finished without the daemon ever showing a certificate and proving
    /// it holds its key (embedded-tls 0.19 lets that pass).
    NotAuthenticated,
    /// The daemon aborted the handshake with this alert.
    Alert(AlertDescription),
    /// The handshake failed otherwise (malformed messages, a record too large for the
    /// buffers, the transport).
    Handshake(TlsError),
}

impl TlsFailure {
    /// The daemon refused this node's certificate: it will keep refusing it (revoked,
    /// expired, not from its CA).
    pub fn certificate_refused(&self) -> bool {
        matches!(
            self,
            TlsFailure::Alert(
                AlertDescription::CertificateRevoked
                    | AlertDescription::BadCertificate
                    | AlertDescription::UnsupportedCertificate
                    | AlertDescription::CertificateExpired
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::UnknownCa
                    | AlertDescription::AccessDenied
                    | AlertDescription::CertificateRequired
            )
        )
    }
}

impl core::error::Error for TlsFailure {}

impl core::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TlsFailure::Refused(why) => write!(f, "daemon refused: {why}"),
            TlsFailure::NotAuthenticated => {
                f.write_str("the TLS handshake finished without authenticating the daemon")
            }
            TlsFailure::Alert(alert) => write!(f, "the daemon aborted the handshake: {alert:?}"),
            TlsFailure::Handshake(e) => write!(f, "TLS handshake failed: {e:?}"),
        }
    }
}

/// Runs the handshake on `tls` with `provider` and ALPN `tern/1`, then requires that the
/// daemon authenticated (embedded-tls does not). Returns the fingerprint of the
/// certificate the daemon proved it holds.
pub async fn open<S, R>(
    tls: &mut TlsConnection<'_, S, Aes128GcmSha256>,
    provider: &mut NodeProvider<'_, R>,
) -> Result<Fingerprint, TlsFailure>
where
    S: Read + Write,
    R: CryptoRng + ?Sized,
{
    let config = TlsConfig::new().with_alpn(ALPN_PROTOCOLS);
    let opened = tls.open(TlsContext::new(&config, &mut *provider)).await;
    if let Some(why) = provider.verifier.refusal() {
        return Err(TlsFailure::Refused(why));
    }
    match opened {
        Ok(()) => provider
            .verifier
            .authenticated()
            .ok_or(TlsFailure::NotAuthenticated),
        Err(TlsError::HandshakeAborted(AlertLevel::Fatal, alert)) => Err(TlsFailure::Alert(alert)),
        Err(e) => Err(TlsFailure::Handshake(e)),
    }
}
