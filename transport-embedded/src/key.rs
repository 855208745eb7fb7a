//! The node's P-256 key: generated on the device from its RNG, kept as its 32-byte
//! scalar, never sent anywhere. It signs the CSR at pairing and every TLS handshake.

use p256::ecdsa::SigningKey;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::tls::RngBridge;

/// Bytes of a stored key: the P-256 private scalar, big-endian.
pub const KEY_LEN: usize = 32;

/// Bytes of the public key, SEC1 uncompressed.
pub const PUBLIC_KEY_LEN: usize = 65;

/// Stored key bytes that are not a P-256 private scalar (zero, or not below the group
/// order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidKey;

impl core::fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("not a P-256 private key")
    }
}

impl core::error::Error for InvalidKey {}

/// A node's P-256 key pair. The secret is wiped from memory when it is dropped.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
}

impl core::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

impl PartialEq for NodeKey {
    fn eq(&self, other: &Self) -> bool {
        // Public keys: comparing them tells nothing about the secrets.
        self.signing.verifying_key() == other.signing.verifying_key()
    }
}

impl Eq for NodeKey {}

impl NodeKey {
    /// A new key drawn from `rng` (rejection sampling: uniform over the valid scalars).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self {
            signing: SigningKey::random(&mut RngBridge(rng)),
        }
    }

    /// A key from its stored scalar.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<Self, InvalidKey> {
        let signing = SigningKey::from_slice(bytes).map_err(|_| InvalidKey)?;
        Ok(Self { signing })
    }

    /// The scalar to store. Wiped when the returned value is dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        out.copy_from_slice(&self.signing.to_bytes());
        out
    }

    /// The public key, SEC1 uncompressed (what the CSR and the certificate carry).
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        let point = self.signing.verifying_key().to_encoded_point(false);
        let mut out = [0u8; PUBLIC_KEY_LEN];
        out.copy_from_slice(point.as_bytes());
        out
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}
