//! The PAKE crate against RFC 9383, Appendix C, suite P256-SHA256-HKDF-SHA256-HMAC-SHA256.
//!
//! The values are the RFC's. Each role is run through the crate's public API, with an
//! RNG that hands out the RFC's `x` and `y`, and every value the API exposes is compared.
//! The values the API keeps inside (TT, K_main, K_confirmP/V) are checked for
//! consistency among themselves with an independent HKDF/HMAC, so a mistyped constant
//! cannot pass.
#![allow(clippy::unwrap_used)]

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use spake2plus::rand_core::{Infallible, TryCryptoRng, TryRng};
use spake2plus::{
    ConfirmP, ConfirmV, Context, P256Sha256, Prover, ProverSecret, ShareP, ShareV, Verifier,
    VerifierRecord,
};

const CONTEXT: &[u8] = b"SPAKE2+-P256-SHA256-HKDF-SHA256-HMAC-SHA256 Test Vectors";
const ID_PROVER: &[u8] = b"client";
const ID_VERIFIER: &[u8] = b"server";
const W0: &str = "bb8e1bbcf3c48f62c08db243652ae55d3e5586053fca77102994f23ad95491b3";
const W1: &str = "7e945f34d78785b8a3ef44d0df5a1a97d6b3b460409a345ca7830387a74b1dba";
const L: &str = "04eb7c9db3d9a9eb1f8adab81b5794c1f13ae3e225efbe91ea487425854c7fc00f00bfedcbd09b2400142d40a14f2064ef31dfaa903b91d1faea7093d835966efd";
const X: &str = "d1232c8e8693d02368976c174e2088851b8365d0d79a9eee709c6a05a2fad539";
const SHARE_P: &str = "04ef3bd051bf78a2234ec0df197f7828060fe9856503579bb1733009042c15c0c1de127727f418b5966afadfdd95a6e4591d171056b333dab97a79c7193e341727";
const Y: &str = "717a72348a182085109c8d3917d6c43d59b224dc6a7fc4f0483232fa6516d8b3";
const SHARE_V: &str = "04c0f65da0d11927bdf5d560c69e1d7d939a05b0e88291887d679fcadea75810fb5cc1ca7494db39e82ff2f50665255d76173e09986ab46742c798a9a68437b048";
const Z: &str = "04bbfce7dd7f277819c8da21544afb7964705569bdf12fb92aa388059408d50091a0c5f1d3127f56813b5337f9e4e67e2ca633117a4fbd559946ab474356c41839";
const V: &str = "0458bf27c6bca011c9ce1930e8984a797a3419797b936629a5a937cf2f11c8b9514b82b993da8a46e664f23db7c01edc87faa530db01c2ee405230b18997f16b68";
const M: &str = "04886e2f97ace46e55ba9dd7242579f2993b64e16ef3dcab95afd497333d8fa12f5ff355163e43ce224e0b0e65ff02ac8e5c7be09419c785e0ca547d55a12e2d20";
const N: &str = "04d8bbd6c639c62937b04d997f38c3770719c629d7014d49a24b4f98baa1292b4907d60aa6bfade45008a636337f5168c64d9bd36034808cd564490b1e656edbe7";
const K_MAIN: &str = "4c59e1ccf2cfb961aa31bd9434478a1089b56cd11542f53d3576fb6c2a438a29";
const K_CONFIRM_P: &str = "871ae3f7b78445e34438fb284504240239031c39d80ac23eb5ab9be5ad6db58a";
const K_CONFIRM_V: &str = "ccd53c7c1fa37b64a462b40db8be101cedcf838950162902054e644b400f1680";
const CONFIRM_P: &str = "926cc713504b9b4d76c9162ded04b5493e89109f6d89462cd33adc46fda27527";
const CONFIRM_V: &str = "9747bcc4f8fe9f63defee53ac9b07876d907d55047e6ff2def2e7529089d3e68";
const K_SHARED: &str = "0c5f8ccd1413423a54f6c1fb26ff01534a87f893779c6e68666d772bfd91f3e7";

fn unhex(hex: &str) -> Vec<u8> {
    assert_eq!(hex.len() % 2, 0);
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Hands out fixed bytes: the crate reduces 64 big-endian bytes to a scalar, so zeros
/// then the RFC's scalar make it pick exactly that scalar.
struct Replay(Vec<u8>);

impl Replay {
    fn scalar(hex: &str) -> Self {
        let mut bytes = vec![0u8; 32];
        bytes.extend_from_slice(&unhex(hex));
        Self(bytes)
    }
}

impl TryRng for Replay {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(dst.len() <= self.0.len(), "replayed bytes ran out");
        dst.copy_from_slice(&self.0[..dst.len()]);
        self.0.drain(..dst.len());
        Ok(())
    }
}

impl TryCryptoRng for Replay {}

fn context() -> Context<'static> {
    Context {
        context: CONTEXT,
        prover_id: ID_PROVER,
        verifier_id: ID_VERIFIER,
    }
}

/// A PBKDF output that reduces to exactly `w0` and `w1` (each half 40 bytes, big-endian).
fn secret() -> ProverSecret<P256Sha256> {
    let mut out = Vec::new();
    for w in [W0, W1] {
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&unhex(w));
    }
    ProverSecret::from_pbkdf_output(&out).unwrap()
}

fn len_prefixed(tt: &mut Vec<u8>, part: &[u8]) {
    tt.extend_from_slice(&(part.len() as u64).to_le_bytes());
    tt.extend_from_slice(part);
}

#[test]
fn registration_record_matches_w0_and_l() {
    let record = secret().verifier_record();
    let mut want = unhex(W0);
    want.extend_from_slice(&unhex(L));
    assert_eq!(record.to_bytes().as_ref(), &want[..]);
    let parsed = VerifierRecord::<P256Sha256>::from_bytes(&want).unwrap();
    assert_eq!(parsed.to_bytes().as_ref(), &want[..]);
}

#[test]
fn both_roles_reproduce_the_vectors() {
    let secret = secret();
    let (prover, share_p) = Prover::start(&secret, &context(), &mut Replay::scalar(X));
    assert_eq!(share_p.as_bytes().as_slice(), &unhex(SHARE_P)[..], "shareP");

    let record = secret.verifier_record();
    let (verifier, share_v) = Verifier::start(&record, &context(), &mut Replay::scalar(Y));
    assert_eq!(share_v.as_bytes().as_slice(), &unhex(SHARE_V)[..], "shareV");

    // Each role takes the RFC's bytes, not the other role's objects.
    let share_p = ShareP::<P256Sha256>::from_bytes(&unhex(SHARE_P)).unwrap();
    let share_v = ShareV::<P256Sha256>::from_bytes(&unhex(SHARE_V)).unwrap();
    let (verifier, confirm_v) = verifier.receive(&share_p).unwrap();
    assert_eq!(
        confirm_v.as_bytes().as_slice(),
        &unhex(CONFIRM_V)[..],
        "confirmV"
    );

    let confirm_v = ConfirmV::<P256Sha256>::from_bytes(&unhex(CONFIRM_V)).unwrap();
    let (confirm_p, prover_key) = prover
        .receive(&share_v)
        .unwrap()
        .finish(&confirm_v)
        .unwrap();
    assert_eq!(
        confirm_p.as_bytes().as_slice(),
        &unhex(CONFIRM_P)[..],
        "confirmP"
    );
    assert_eq!(
        prover_key.as_bytes().as_slice(),
        &unhex(K_SHARED)[..],
        "K_shared (prover)"
    );

    let confirm_p = ConfirmP::<P256Sha256>::from_bytes(&unhex(CONFIRM_P)).unwrap();
    let verifier_key = verifier.finish(&confirm_p).unwrap();
    assert_eq!(
        verifier_key.as_bytes().as_slice(),
        &unhex(K_SHARED)[..],
        "K_shared (verifier)"
    );
}

#[test]
fn wrong_confirmations_are_refused() {
    let secret = secret();
    let (prover, _) = Prover::start(&secret, &context(), &mut Replay::scalar(X));
    let share_v = ShareV::<P256Sha256>::from_bytes(&unhex(SHARE_V)).unwrap();
    let mut bad = unhex(CONFIRM_V);
    bad[31] ^= 1;
    let bad = ConfirmV::<P256Sha256>::from_bytes(&bad).unwrap();
    assert!(prover.receive(&share_v).unwrap().finish(&bad).is_err());

    let (verifier, _) = Verifier::start(
        &secret.verifier_record(),
        &context(),
        &mut Replay::scalar(Y),
    );
    let share_p = ShareP::<P256Sha256>::from_bytes(&unhex(SHARE_P)).unwrap();
    let (verifier, _) = verifier.receive(&share_p).unwrap();
    let mut bad = unhex(CONFIRM_P);
    bad[0] ^= 0x80;
    assert!(
        verifier
            .finish(&ConfirmP::from_bytes(&bad).unwrap())
            .is_err()
    );
}

/// The RFC's intermediate values agree with each other under an independent key
/// schedule (RFC 9383 section 3.4): TT from the vector's parts, K_main = SHA-256(TT),
/// K_confirmP || K_confirmV = HKDF(K_main, "ConfirmationKeys"), K_shared =
/// HKDF(K_main, "SharedKey"), confirmP = HMAC(K_confirmP, shareV), confirmV =
/// HMAC(K_confirmV, shareP).
#[test]
fn key_schedule_is_consistent_with_the_vectors() {
    let mut tt = Vec::new();
    for part in [
        CONTEXT,
        ID_PROVER,
        ID_VERIFIER,
        &unhex(M),
        &unhex(N),
        &unhex(SHARE_P),
        &unhex(SHARE_V),
        &unhex(Z),
        &unhex(V),
        &unhex(W0),
    ] {
        len_prefixed(&mut tt, part);
    }
    let k_main = Sha256::digest(&tt);
    assert_eq!(k_main.as_slice(), &unhex(K_MAIN)[..], "K_main");

    let hk = Hkdf::<Sha256>::new(None, &k_main);
    let mut confirmation = [0u8; 64];
    hk.expand(b"ConfirmationKeys", &mut confirmation).unwrap();
    assert_eq!(&confirmation[..32], &unhex(K_CONFIRM_P)[..], "K_confirmP");
    assert_eq!(&confirmation[32..], &unhex(K_CONFIRM_V)[..], "K_confirmV");
    let mut shared = [0u8; 32];
    hk.expand(b"SharedKey", &mut shared).unwrap();
    assert_eq!(&shared[..], &unhex(K_SHARED)[..], "K_shared");

    let mac = |key: &[u8], msg: &[u8]| {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        m.update(msg);
        m.finalize().into_bytes().to_vec()
    };
    assert_eq!(
        mac(&confirmation[..32], &unhex(SHARE_V)),
        unhex(CONFIRM_P),
        "confirmP"
    );
    assert_eq!(
        mac(&confirmation[32..], &unhex(SHARE_P)),
        unhex(CONFIRM_V),
        "confirmV"
    );
}
