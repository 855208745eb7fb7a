//! Just enough DER walking, without an allocator, for the node to check that the
//! certificate it was issued carries the key of the CSR it sent.

use der::asn1::AnyRef;
use der::{Decode, Reader, SliceReader, Tag};
use sha2::{Digest, Sha256};

/// SHA-256 of a certificate's DER: what a node pins for the daemon's server certificate
/// and compares at every TLS handshake (embedded TLS stacks may not check
/// basicConstraints, so a chain to the CA alone would not tell the daemon from a node).
pub fn certificate_fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The `SubjectPublicKeyInfo` (whole TLV) of a PKCS#10 CSR.
pub fn csr_spki(csr: &[u8]) -> Option<&[u8]> {
    let outer = AnyRef::from_der(csr).ok()?;
    outer
        .sequence(|r: &mut SliceReader<'_>| {
            let info = AnyRef::decode(r)?;
            let rest = r.remaining_len();
            r.read_slice(rest)?;
            info.sequence(|r: &mut SliceReader<'_>| {
                let _version = r.tlv_bytes()?;
                let _subject = r.tlv_bytes()?;
                let spki = r.tlv_bytes()?;
                let rest = r.remaining_len();
                r.read_slice(rest)?;
                Ok::<_, der::Error>(spki)
            })
        })
        .ok()
}

/// The `SubjectPublicKeyInfo` (whole TLV) of an X.509 certificate.
pub fn certificate_spki(cert: &[u8]) -> Option<&[u8]> {
    let outer = AnyRef::from_der(cert).ok()?;
    outer
        .sequence(|r: &mut SliceReader<'_>| {
            let tbs = AnyRef::decode(r)?;
            let rest = r.remaining_len();
            r.read_slice(rest)?;
            tbs.sequence(|r: &mut SliceReader<'_>| {
                let version = Tag::peek(r)?;
                if version.is_context_specific() {
                    r.tlv_bytes()?;
                }
                // serial, signature, issuer, validity, subject
                for _ in 0..5 {
                    r.tlv_bytes()?;
                }
                let spki = r.tlv_bytes()?;
                let rest = r.remaining_len();
                r.read_slice(rest)?;
                Ok::<_, der::Error>(spki)
            })
        })
        .ok()
}
