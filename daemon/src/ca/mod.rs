//! The daemon's certificate authority.
//!
//! It issues the daemon's server certificate and one client certificate per node. A
//! client certificate is built from parameters the CA sets itself: the device id as
//! subject CN, `clientAuth` as the only extended key usage, basicConstraints CA:FALSE,
//! a bounded validity. From a node's CSR only the public key is taken, after its
//! signature was checked; requested extensions (a CA bit, SANs, other EKUs) are
//! ignored, so a CSR cannot make itself a CA.

mod csr;
mod fingerprint;
mod policy;

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SerialNumber,
};
use serde::{Deserialize, Serialize};
use spake2plus::rand_core::CryptoRng;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

pub use csr::{VerifiedCsr, verify_csr};
pub use fingerprint::Fingerprint;
pub use policy::{DAY_MS, IssuancePolicy};

/// Longest device id; it becomes the certificate's CN, whose limit is 64.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Why the CA refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaError {
    /// The CSR does not parse.
    CsrParse,
    /// The CSR's signature does not verify with its own key.
    CsrSignature,
    /// The key is not P-256.
    UnsupportedKey,
    /// A device id that is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    BadDeviceId,
    /// A certificate presented for renewal does not parse or was not issued by this CA.
    NotOurs,
    /// A stored CA that does not load.
    BadStoredCa(String),
    /// The certificate library failed.
    Generate(String),
}

impl fmt::Display for CaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaError::CsrParse => f.write_str("certificate signing request does not parse"),
            CaError::CsrSignature => {
                f.write_str("certificate signing request signature is invalid")
            }
            CaError::UnsupportedKey => f.write_str("only P-256 keys are accepted"),
            CaError::BadDeviceId => f.write_str("invalid device id"),
            CaError::NotOurs => f.write_str("certificate was not issued by this CA"),
            CaError::BadStoredCa(e) => write!(f, "stored CA does not load: {e}"),
            CaError::Generate(e) => write!(f, "certificate generation failed: {e}"),
        }
    }
}

impl std::error::Error for CaError {}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        CaError::Generate(e.to_string())
    }
}

/// The CA as the store keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCa {
    pub cert_pem: String,
    pub key_pem: String,
    pub policy: IssuancePolicy,
}

impl fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCa")
            .field("cert_pem", &self.cert_pem)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The daemon's server identity.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
    /// What nodes pin.
    pub fingerprint: Fingerprint,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A client certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCertificate {
    pub device_id: String,
    pub der: Vec<u8>,
    pub fingerprint: Fingerprint,
    pub not_after_ms: u64,
}

/// What the CA reads back from a client certificate it issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub device_id: String,
    pub fingerprint: Fingerprint,
    pub not_after_ms: u64,
}

/// The certificate authority.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    cert_pem: String,
    policy: IssuancePolicy,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.fingerprint())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new CA with a fresh P-256 key.
    pub fn create<R: CryptoRng + ?Sized>(
        name: &str,
        now_ms: u64,
        policy: IssuancePolicy,
        rng: &mut R,
    ) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        // Path length 0: the CA signs leaves only.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = to_time(now_ms.saturating_sub(policy.backdate_ms))?;
        params.not_after = to_time(now_ms.saturating_add(policy.ca_validity_ms))?;
        params.serial_number = Some(serial(rng));
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            policy,
        })
    }

    /// Loads a CA stored with [`Self::to_stored`].
    pub fn from_stored(stored: &StoredCa) -> Result<Self, CaError> {
        let bad = |e: &dyn fmt::Display| CaError::BadStoredCa(e.to_string());
        let key = KeyPair::from_pem(&stored.key_pem).map_err(|e| bad(&e))?;
        let der = pem_der(&stored.cert_pem).ok_or_else(|| bad(&"certificate PEM"))?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad(&e))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() || !cert.is_ca() {
            return Err(bad(&"key does not belong to the CA certificate"));
        }
        let issuer = Issuer::from_ca_cert_pem(&stored.cert_pem, key).map_err(|e| bad(&e))?;
        Ok(Self {
            issuer,
            cert_der: der,
            cert_pem: stored.cert_pem.clone(),
            policy: stored.policy,
        })
    }

    pub fn to_stored(&self) -> StoredCa {
        StoredCa {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.issuer.key().serialize_pem(),
            policy: self.policy,
        }
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    pub fn policy(&self) -> &IssuancePolicy {
        &self.policy
    }

    /// The daemon's TLS server certificate, for `names` (DNS names or IP addresses).
    pub fn issue_server<R: CryptoRng + ?Sized>(
        &self,
        names: &[String],
        now_ms: u64,
        rng: &mut R,
    ) -> Result<ServerIdentity, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = common_name(names.first().map_or("ternd", String::as_str));
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_time(now_ms.saturating_sub(self.policy.backdate_ms))?;
        params.not_after = to_time(now_ms.saturating_add(self.policy.server_validity_ms))?;
        params.serial_number = Some(serial(rng));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerIdentity {
            fingerprint: Fingerprint::of(cert.der()),
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for the key in `csr_der`, with `device_id` as its subject.
    pub fn issue_client<R: CryptoRng + ?Sized>(
        &self,
        csr_der: &[u8],
        device_id: &str,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<ClientCertificate, CaError> {
        check_device_id(device_id)?;
        let csr = verify_csr(csr_der)?;
        let key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)?;
        // Built from scratch: nothing from the CSR but its key reaches the certificate.
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(device_id);
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let not_after_ms = now_ms.saturating_add(self.policy.client_validity_ms);
        params.not_before = to_time(now_ms.saturating_sub(self.policy.backdate_ms))?;
        params.not_after = to_time(not_after_ms)?;
        params.serial_number = Some(serial(rng));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ClientCertificate {
            device_id: device_id.to_owned(),
            der: cert.der().to_vec(),
            fingerprint: Fingerprint::of(cert.der()),
            // Certificates carry whole seconds.
            not_after_ms: not_after_ms / 1000 * 1000,
        })
    }

    /// Checks that `cert_der` is a client certificate this CA signed; reads it back.
    pub fn verify_client(&self, cert_der: &[u8]) -> Result<ClientInfo, CaError> {
        let (_, ca) = X509Certificate::from_der(&self.cert_der).map_err(|_| CaError::NotOurs)?;
        let (rest, cert) = X509Certificate::from_der(cert_der).map_err(|_| CaError::NotOurs)?;
        if !rest.is_empty() || cert.issuer() != ca.subject() || cert.is_ca() {
            return Err(CaError::NotOurs);
        }
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| CaError::NotOurs)?;
        let device_id = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or(CaError::NotOurs)?
            .to_owned();
        let not_after = cert.validity().not_after.timestamp();
        Ok(ClientInfo {
            device_id,
            fingerprint: Fingerprint::of(cert_der),
            not_after_ms: u64::try_from(not_after).unwrap_or(0).saturating_mul(1000),
        })
    }

    /// Whether a client certificate of this CA is due for renewal at `now_ms`.
    pub fn needs_rotation(&self, cert_der: &[u8], now_ms: u64) -> Result<bool, CaError> {
        let info = self.verify_client(cert_der)?;
        Ok(self.policy.needs_rotation(info.not_after_ms, now_ms))
    }

    /// Renewal: a new certificate, for the same device, for the key in `new_csr_der`.
    /// `current_der` is the certificate the node authenticated with (mutual TLS); the
    /// caller checks it against the revocation set first. The node may keep its key or
    /// send a new one.
    pub fn reissue<R: CryptoRng + ?Sized>(
        &self,
        current_der: &[u8],
        new_csr_der: &[u8],
        now_ms: u64,
        rng: &mut R,
    ) -> Result<ClientCertificate, CaError> {
        let info = self.verify_client(current_der)?;
        if info.not_after_ms <= now_ms {
            // An expired certificate no longer authenticates anyone: pair again.
            return Err(CaError::NotOurs);
        }
        self.issue_client(new_csr_der, &info.device_id, now_ms, rng)
    }
}

/// Device ids are CNs and log keys: short, printable, no separators that need quoting.
pub fn check_device_id(id: &str) -> Result<(), CaError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CaError::BadDeviceId)
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn serial<R: CryptoRng + ?Sized>(rng: &mut R) -> SerialNumber {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    // Positive and without a leading zero byte: RFC 5280 serials are positive integers.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn to_time(ms: u64) -> Result<OffsetDateTime, CaError> {
    let secs =
        i64::try_from(ms / 1000).map_err(|_| CaError::Generate("time out of range".into()))?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| CaError::Generate(e.to_string()))
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let parsed = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?.1;
    Some(parsed.contents)
}
