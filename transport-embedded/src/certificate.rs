//! X.509 certificates (RFC 5280) as far as a node reads them: the signed part's bytes,
//! the issuer and subject names, the validity, the subject's key and the signature. Read
//! with der 0.8 in place, without an allocator; a malformed certificate is a typed error,
//! never a panic.

use der::asn1::{AnyRef, BitStringRef, GeneralizedTime, IntRef, ObjectIdentifier, UtcTime};
use der::{Choice, Decode, Reader, Sequence, SliceReader, Tag, Tagged};
use p256::ecdsa::VerifyingKey;
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
pub(crate) const ECDSA_WITH_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// Why a certificate could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateError {
    /// The bytes are not one DER X.509 certificate (or bytes follow it).
    Malformed,
    /// The certificate's key is not a P-256 key.
    UnsupportedKey,
}

impl core::fmt::Display for CertificateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CertificateError::Malformed => "not a DER X.509 certificate",
            CertificateError::UnsupportedKey => "the certificate's key is not a P-256 key",
        })
    }
}

impl core::error::Error for CertificateError {}

impl From<der::Error> for CertificateError {
    fn from(_: der::Error) -> Self {
        CertificateError::Malformed
    }
}

/// When a certificate is valid, in seconds since the Unix epoch (both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: u64,
    pub not_after: u64,
}

impl Validity {
    /// Whether `now_unix` falls within the validity.
    pub fn contains(&self, now_unix: u64) -> bool {
        self.not_before <= now_unix && now_unix <= self.not_after
    }
}

/// The validity of the DER certificate `cert_der` (UTCTime or GeneralizedTime).
pub fn validity(cert_der: &[u8]) -> Result<Validity, CertificateError> {
    Ok(Certificate::from_der(cert_der)?.tbs.validity.unix())
}

/// Time ::= CHOICE { utcTime UTCTime, generalTime GeneralizedTime }
#[derive(Choice, Clone, Copy, Debug, PartialEq, Eq)]
enum Time {
    #[asn1(type = "UTCTime")]
    Utc(UtcTime),
    #[asn1(type = "GeneralizedTime")]
    General(GeneralizedTime),
}

impl Time {
    fn unix(self) -> u64 {
        match self {
            Time::Utc(t) => t.to_unix_duration().as_secs(),
            Time::General(t) => t.to_unix_duration().as_secs(),
        }
    }
}

#[derive(Sequence, Clone, Copy, Debug, PartialEq, Eq)]
struct ValidityDer {
    not_before: Time,
    not_after: Time,
}

impl ValidityDer {
    fn unix(self) -> Validity {
        Validity {
            not_before: self.not_before.unix(),
            not_after: self.not_after.unix(),
        }
    }
}

/// TBSCertificate (RFC 5280 §4.1). Names and extensions stay raw: a node compares names
/// byte for byte and reads nothing from extensions.
#[derive(Sequence, Clone, Debug, PartialEq, Eq)]
pub(crate) struct TbsCertificate<'a> {
    #[asn1(context_specific = "0", default = "Default::default")]
    version: u8,
    serial_number: IntRef<'a>,
    pub(crate) signature: AlgorithmIdentifierRef<'a>,
    pub(crate) issuer: AnyRef<'a>,
    validity: ValidityDer,
    pub(crate) subject: AnyRef<'a>,
    pub(crate) subject_public_key_info: SubjectPublicKeyInfoRef<'a>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    issuer_unique_id: Option<BitStringRef<'a>>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    subject_unique_id: Option<BitStringRef<'a>>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    extensions: Option<AnyRef<'a>>,
}

/// A certificate read in place.
#[derive(Clone, Debug)]
pub(crate) struct Certificate<'a> {
    /// The whole TBSCertificate TLV: what the issuer signed.
    pub(crate) tbs_der: &'a [u8],
    pub(crate) tbs: TbsCertificate<'a>,
    pub(crate) signature_algorithm: AlgorithmIdentifierRef<'a>,
    pub(crate) signature: BitStringRef<'a>,
}

impl<'a> Certificate<'a> {
    /// Reads `der`, which must hold one certificate and nothing after it.
    pub(crate) fn from_der(der: &'a [u8]) -> Result<Self, CertificateError> {
        let mut reader = SliceReader::new(der)?;
        // The signed bytes are needed as they are, so the outer sequence is read by hand.
        let (tbs_der, signature_algorithm, signature) = reader.sequence(|r| {
            let tbs_der = r.tlv_bytes()?;
            let algorithm = AlgorithmIdentifierRef::decode(r)?;
            let signature = BitStringRef::decode(r)?;
            Ok::<_, der::Error>((tbs_der, algorithm, signature))
        })?;
        reader.finish()?;
        let tbs = TbsCertificate::from_der(tbs_der)?;
        Ok(Self {
            tbs_der,
            tbs,
            signature_algorithm,
            signature,
        })
    }

    pub(crate) fn validity(&self) -> Validity {
        self.tbs.validity.unix()
    }

    /// The subject's P-256 key.
    pub(crate) fn p256_key(&self) -> Result<VerifyingKey, CertificateError> {
        p256_key(&self.tbs.subject_public_key_info)
    }

    /// The subject's common name, if the subject holds exactly one (in any RDN) and it
    /// is text: how the daemon names a device in its certificate.
    pub(crate) fn common_name(&self) -> Result<Option<&'a str>, CertificateError> {
        common_name(self.tbs.subject)
    }
}

/// The P-256 key of a SubjectPublicKeyInfo.
pub(crate) fn p256_key(
    spki: &SubjectPublicKeyInfoRef<'_>,
) -> Result<VerifyingKey, CertificateError> {
    let curve = spki
        .algorithm
        .parameters
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY || curve != Some(SECP256R1) {
        return Err(CertificateError::UnsupportedKey);
    }
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or(CertificateError::Malformed)?;
    VerifyingKey::from_sec1_bytes(point).map_err(|_| CertificateError::UnsupportedKey)
}

/// AttributeTypeAndValue, its value left raw (a directory string of any kind).
#[derive(Sequence, Clone, Copy, Debug, PartialEq, Eq)]
struct AttributeTypeAndValue<'a> {
    oid: ObjectIdentifier,
    value: AnyRef<'a>,
}

/// The one common name of a Name (a SEQUENCE OF sets of AttributeTypeAndValue): `None`
/// when it holds none, several, or one that is not UTF-8, printable or IA5 text.
fn common_name(name: AnyRef<'_>) -> Result<Option<&str>, CertificateError> {
    let mut found = None;
    let mut count = 0usize;
    name.sequence(|names: &mut SliceReader<'_>| {
        while !names.is_finished() {
            let rdn = AnyRef::decode(names)?;
            rdn.tag().assert_eq(Tag::Set)?;
            let mut attributes = SliceReader::new(rdn.value())?;
            while !attributes.is_finished() {
                let attribute = AttributeTypeAndValue::decode(&mut attributes)?;
                if attribute.oid == COMMON_NAME {
                    count += 1;
                    found = Some(attribute.value);
                }
            }
        }
        Ok::<_, der::Error>(())
    })?;
    let Some(value) = found.filter(|_| count == 1) else {
        return Ok(None);
    };
    let text = matches!(
        value.tag(),
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String
    );
    Ok(text
        .then(|| core::str::from_utf8(value.value()).ok())
        .flatten())
}
