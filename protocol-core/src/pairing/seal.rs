//! Sealing with keys derived from the PAKE.
//!
//! `K_shared` (SPAKE2+) goes through HKDF-SHA256 with salt `tern/pairing/v1` into one
//! ChaCha20-Poly1305 key per direction (`info` = `tern/pairing/v1 node->daemon` and
//! `tern/pairing/v1 daemon->node`). Each direction numbers its sealed messages from 0
//! and the number is the nonce, so with one key per direction a nonce never repeats.
//! The associated data names the message kind and the code id.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use super::PairingError;

/// Bytes a seal adds.
pub const TAG_LEN: usize = 16;

const SALT: &[u8] = b"tern/pairing/v1";
const INFO_TO_DAEMON: &[u8] = b"tern/pairing/v1 node->daemon";
const INFO_TO_NODE: &[u8] = b"tern/pairing/v1 daemon->node";

/// Which sealed payload; part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Csr,
    Answer,
}

/// The two directions' keys of one pairing run.
pub struct SealKeys {
    to_daemon: [u8; 32],
    to_node: [u8; 32],
    code_id: u16,
}

impl Drop for SealKeys {
    fn drop(&mut self) {
        self.to_daemon.zeroize();
        self.to_node.zeroize();
    }
}

impl core::fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SealKeys(..)")
    }
}

impl SealKeys {
    /// Derives both keys from the PAKE's `K_shared`.
    pub fn derive(shared: &[u8], code_id: u16) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(SALT), shared);
        let mut keys = Self {
            to_daemon: [0; 32],
            to_node: [0; 32],
            code_id,
        };
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit: expand cannot fail.
        let a = hk.expand(INFO_TO_DAEMON, &mut keys.to_daemon);
        let b = hk.expand(INFO_TO_NODE, &mut keys.to_node);
        debug_assert!(a.is_ok() && b.is_ok());
        keys
    }

    fn aad(&self, kind: Kind) -> [u8; 18] {
        let mut aad = [0u8; 18];
        aad[..15].copy_from_slice(SALT);
        aad[15] = match kind {
            Kind::Csr => b'C',
            Kind::Answer => b'A',
        };
        aad[16..].copy_from_slice(&self.code_id.to_be_bytes());
        aad
    }

    fn key(&self, kind: Kind) -> &[u8; 32] {
        match kind {
            Kind::Csr => &self.to_daemon,
            Kind::Answer => &self.to_node,
        }
    }

    /// Seals `buf[..len]` in place and appends the tag; returns the sealed length.
    pub(crate) fn seal(
        &self,
        kind: Kind,
        seq: u32,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, PairingError> {
        if buf.len() < len + TAG_LEN {
            return Err(PairingError::BufferTooSmall);
        }
        let cipher = ChaCha20Poly1305::new(self.key(kind).into());
        let (body, rest) = buf.split_at_mut(len);
        let tag = cipher
            .encrypt_inout_detached(&nonce(seq), &self.aad(kind), body.into())
            .map_err(|_| PairingError::Internal)?;
        rest[..TAG_LEN].copy_from_slice(&tag);
        Ok(len + TAG_LEN)
    }

    /// Opens `buf` (ciphertext then tag) in place; returns the plaintext length.
    pub(crate) fn open(&self, kind: Kind, seq: u32, buf: &mut [u8]) -> Result<usize, PairingError> {
        let len = buf
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(PairingError::Tampered)?;
        let (body, tag) = buf.split_at_mut(len);
        let tag = Tag::try_from(&tag[..]).map_err(|_| PairingError::Tampered)?;
        let cipher = ChaCha20Poly1305::new(self.key(kind).into());
        cipher
            .decrypt_inout_detached(&nonce(seq), &self.aad(kind), body.into(), &tag)
            .map_err(|_| PairingError::Tampered)?;
        Ok(len)
    }
}

fn nonce(seq: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&seq.to_be_bytes());
    Nonce::from(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let keys = SealKeys::derive(&[7; 32], 42);
        let mut buf = [0u8; 64];
        buf[..5].copy_from_slice(b"hello");
        let n = keys.seal(Kind::Answer, 3, &mut buf, 5).unwrap();
        assert_eq!(n, 5 + TAG_LEN);
        let sealed = buf;
        assert_eq!(keys.open(Kind::Answer, 3, &mut buf[..n]), Ok(5));
        assert_eq!(&buf[..5], b"hello");
        for (kind, seq) in [(Kind::Answer, 4), (Kind::Csr, 3)] {
            let mut copy = sealed;
            assert_eq!(
                keys.open(kind, seq, &mut copy[..n]),
                Err(PairingError::Tampered)
            );
        }
        let mut flipped = sealed;
        flipped[1] ^= 1;
        assert_eq!(
            keys.open(Kind::Answer, 3, &mut flipped[..n]),
            Err(PairingError::Tampered)
        );
        let other = SealKeys::derive(&[7; 32], 43);
        let mut copy = sealed;
        assert_eq!(
            other.open(Kind::Answer, 3, &mut copy[..n]),
            Err(PairingError::Tampered)
        );
        assert_eq!(
            keys.open(Kind::Answer, 3, &mut [0u8; 15]),
            Err(PairingError::Tampered)
        );
    }
}
