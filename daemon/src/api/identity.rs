//! Operator identities as files: what `ternd operator add` writes and what
//! `ternd --remote ADDR --identity FILE`, the console's login, `curl` and Python read.
//!
//! The file is PEM: the operator's certificate, its private key (PKCS#8, P-256), then the
//! CA the daemon's TLS certificate chains to. `curl --cert F --key F --cacert F` and
//! Python's `ssl` take it as it is. The client checks the daemon's certificate against
//! that CA only: the CA is the daemon's own, so the address the operator typed needs no
//! name in the certificate.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// An operator identity, read from its file.
#[derive(Clone)]
pub struct IdentityFile {
    pub certificate: CertificateDer<'static>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// What the daemon's TLS certificate must chain to.
    pub server_ca: CertificateDer<'static>,
}

impl fmt::Debug for IdentityFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityFile").finish_non_exhaustive()
    }
}

/// Why an identity file could not be used.
#[derive(Debug)]
pub struct IdentityError(pub String);

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentityError {}

/// A fresh key and the certificate signing request `AddOperator` takes for it.
#[allow(missing_debug_implementations)]
pub struct NewKey {
    pub key: KeyPair,
    pub csr_der: Vec<u8>,
}

impl NewKey {
    pub fn generate(name: &str) -> Result<Self, IdentityError> {
        let err = |e: rcgen::Error| IdentityError(format!("cannot make a key: {e}"));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key).map_err(err)?;
        Ok(Self {
            csr_der: csr.der().to_vec(),
            key,
        })
    }
}

/// The text of an identity file.
pub fn render(
    name: &str,
    role: &str,
    certificate_pem: &str,
    key_pem: &str,
    server_ca_pem: &str,
) -> String {
    format!(
        "# Tern operator identity {name:?} ({role}). Keep it secret: it is the key.\n\
         # Order: the operator's certificate, its private key, the daemon's CA.\n\
         {}\n{}\n{}\n",
        certificate_pem.trim_end(),
        key_pem.trim_end(),
        server_ca_pem.trim_end()
    )
}

impl IdentityFile {
    pub fn read(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| IdentityError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| IdentityError(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| IdentityError(format!("a certificate does not read: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|e| IdentityError(format!("no private key in it: {e}")))?;
        match <[_; 2]>::try_from(certs) {
            Ok([certificate, server_ca]) => Ok(Self {
                certificate,
                key: Arc::new(key),
                server_ca,
            }),
            Err(certs) => Err(IdentityError(format!(
                "an identity file holds two certificates (the operator's, then the daemon's \
                 CA); this one holds {}",
                certs.len()
            ))),
        }
    }

    /// TLS for the operator listener: this identity as the client certificate, the
    /// daemon's CA as the only trust anchor.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(self.server_ca.clone())
            .map_err(|e| IdentityError(format!("the daemon's CA does not load: {e}")))?;
        let verifier = Arc::new(DaemonCaVerifier {
            roots,
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.certificate.clone()], self.key.clone_key())
            .map_err(|e| IdentityError(format!("the key does not match the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Accepts a server certificate that chains to the daemon's CA, whatever name it has.
#[derive(Debug)]
struct DaemonCaVerifier {
    roots: RootCertStore,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for DaemonCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
