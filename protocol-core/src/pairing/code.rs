//! Pairing codes and the `tern://pair` URI a QR code carries.
//!
//! A code is twelve decimal digits, shown as `IIII-SSSS-SSSS`: the first four are the
//! code's public id (they tell the daemon which registration record to run the PAKE
//! with), the last eight are the secret. The secret never crosses the wire; it keys the
//! PAKE through PBKDF2 (see [`PairingCode::prover_secret`]).
//!
//! URI: `tern://pair?v=1&addr=HOST:PORT&code=IIII-SSSS-SSSS&fp=HEX64`, where `addr` is
//! the daemon's pairing address (a DNS name, an IPv4 address or a bracketed IPv6
//! address, then `:port`), `code` the pairing code and `fp` the lowercase hex SHA-256
//! of the daemon's server certificate (DER). Parameters may come in any order; unknown
//! ones are ignored so later versions can add some; a repeated one is an error.

use core::fmt;

use spake2plus::rand_core::CryptoRng;
use spake2plus::{P256Sha256, ProverSecret, Suite};
use zeroize::Zeroize;

/// Largest public id (four digits).
pub const MAX_CODE_ID: u16 = 9_999;
/// Number of possible secrets (eight digits).
pub const SECRET_SPACE: u32 = 100_000_000;
/// PBKDF2-HMAC-SHA256 rounds over the code's secret. The code has ~27 bits, so the
/// hash only slows an offline search through a stolen record; the real defences are the
/// attempt window and the expiry.
pub const PBKDF2_ROUNDS: u32 = 1_000;
/// The daemon's identity in the PAKE (`idVerifier`).
pub const VERIFIER_ID: &[u8] = b"ternd";
/// The PAKE context string: protocol, version, suite.
pub const PAKE_CONTEXT: &[u8] = b"tern pairing v1 P256-SHA256-HKDF-SHA256-HMAC-SHA256";

/// A registration record as the daemon stores it: `w0` then `L` (RFC 9383).
pub type RecordBytes = [u8; 97];

/// Why a code or a URI does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeError {
    /// Not exactly twelve digits (dashes and spaces aside).
    BadLength,
    /// A character other than a digit, dash or space.
    BadCharacter,
    /// The id or the secret is out of range.
    OutOfRange,
    /// The URI does not start with `tern://pair?`.
    BadScheme,
    /// A parameter without `=`.
    BadParameter,
    /// A parameter that appears twice.
    DuplicateParameter,
    /// `v` is not a version this build reads.
    UnsupportedVersion,
    /// A required parameter is missing.
    Missing(&'static str),
    /// `addr` is not `host:port` in the allowed characters.
    BadAddress,
    /// `fp` is not 64 hex digits.
    BadFingerprint,
}

impl fmt::Display for CodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeError::BadLength => f.write_str("a pairing code has twelve digits"),
            CodeError::BadCharacter => f.write_str("a pairing code has only digits and dashes"),
            CodeError::OutOfRange => f.write_str("pairing code out of range"),
            CodeError::BadScheme => f.write_str("not a tern://pair URI"),
            CodeError::BadParameter => f.write_str("URI parameter without a value"),
            CodeError::DuplicateParameter => f.write_str("URI parameter given twice"),
            CodeError::UnsupportedVersion => f.write_str("unsupported pairing URI version"),
            CodeError::Missing(name) => write!(f, "URI parameter `{name}` missing"),
            CodeError::BadAddress => f.write_str("`addr` is not host:port"),
            CodeError::BadFingerprint => f.write_str("`fp` is not 64 hex digits"),
        }
    }
}

impl core::error::Error for CodeError {}

/// A pairing code: public id and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode {
    id: u16,
    secret: u32,
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs.
        write!(f, "PairingCode({:04}-****-****)", self.id)
    }
}

impl Drop for PairingCode {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl PairingCode {
    pub fn new(id: u16, secret: u32) -> Result<Self, CodeError> {
        if id > MAX_CODE_ID || secret >= SECRET_SPACE {
            return Err(CodeError::OutOfRange);
        }
        Ok(Self { id, secret })
    }

    /// A fresh code with a uniformly random secret.
    pub fn generate<R: CryptoRng + ?Sized>(id: u16, rng: &mut R) -> Result<Self, CodeError> {
        // Rejection sampling keeps the secret uniform over the eight digits.
        let limit = u32::MAX - u32::MAX % SECRET_SPACE;
        loop {
            let v = rng.next_u32();
            if v < limit {
                return Self::new(id, v % SECRET_SPACE);
            }
        }
    }

    /// Parses `IIII-SSSS-SSSS`; dashes and spaces anywhere are ignored.
    pub fn parse(text: &str) -> Result<Self, CodeError> {
        let mut digits = [0u8; 12];
        let mut n = 0;
        for c in text.bytes() {
            match c {
                b'-' | b' ' => {}
                b'0'..=b'9' => {
                    *digits.get_mut(n).ok_or(CodeError::BadLength)? = c - b'0';
                    n += 1;
                }
                _ => return Err(CodeError::BadCharacter),
            }
        }
        if n != 12 {
            return Err(CodeError::BadLength);
        }
        let id = digits[..4].iter().fold(0u16, |a, d| a * 10 + u16::from(*d));
        let secret = digits[4..].iter().fold(0u32, |a, d| a * 10 + u32::from(*d));
        digits.zeroize();
        Self::new(id, secret)
    }

    /// The public id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The prover's `w0`, `w1` (RFC 9383 section 3.2): PBKDF2-HMAC-SHA256 over
    /// `len(pw) || pw || len(idProver) || idProver || len(idVerifier) || idVerifier`,
    /// with `pw` the eight secret digits and `idProver` the four id digits.
    ///
    /// Fails only if a half of the PBKDF output reduces to zero (probability 2^-256).
    pub fn prover_secret(&self) -> Result<ProverSecret<P256Sha256>, spake2plus::Error> {
        let mut pw = [0u8; 8];
        write_digits(self.secret, &mut pw);
        let id = self.prover_id();
        let mut input = [0u8; 8 + 8 + 8 + 4 + 8 + VERIFIER_ID.len()];
        let mut at = 0;
        for part in [&pw[..], &id[..], VERIFIER_ID] {
            input[at..at + 8].copy_from_slice(&(part.len() as u64).to_le_bytes());
            input[at + 8..at + 8 + part.len()].copy_from_slice(part);
            at += 8 + part.len();
        }
        let mut salt = [0u8; 20];
        salt[..16].copy_from_slice(b"tern-pairing-v1/");
        salt[16..].copy_from_slice(&id);
        let mut output = [0u8; P256Sha256::MIN_PBKDF_OUTPUT_LEN];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(&input[..at], &salt, PBKDF2_ROUNDS, &mut output);
        pw.zeroize();
        input.zeroize();
        let secret = ProverSecret::from_pbkdf_output(&output);
        output.zeroize();
        secret
    }

    /// The registration record the daemon keeps instead of the code.
    pub fn verifier_record(&self) -> Result<RecordBytes, spake2plus::Error> {
        Ok(*self.prover_secret()?.verifier_record().to_bytes())
    }

    /// `idProver`: the id's four digits.
    pub fn prover_id(&self) -> [u8; 4] {
        let mut id = [0u8; 4];
        write_digits(u32::from(self.id), &mut id);
        id
    }

    /// The code as a person types it; shows the secret.
    pub fn display(&self) -> CodeDisplay<'_> {
        CodeDisplay(self)
    }
}

/// Formats a code as `IIII-SSSS-SSSS`.
#[derive(Debug)]
pub struct CodeDisplay<'a>(&'a PairingCode);

impl fmt::Display for CodeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.secret;
        write!(f, "{:04}-{:04}-{:04}", self.0.id, s / 10_000, s % 10_000)
    }
}

fn write_digits(mut v: u32, out: &mut [u8]) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// What a pairing QR code carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingUri<'a> {
    /// The daemon's pairing address, `host:port`.
    pub addr: &'a str,
    pub code: PairingCode,
    /// SHA-256 of the daemon's server certificate (DER), which the node pins.
    pub fingerprint: [u8; 32],
}

/// The URI prefix.
pub const URI_PREFIX: &str = "tern://pair?";
/// The URI version this build writes and reads.
pub const URI_VERSION: &str = "1";

impl<'a> PairingUri<'a> {
    pub fn parse(uri: &'a str) -> Result<Self, CodeError> {
        let query = uri.strip_prefix(URI_PREFIX).ok_or(CodeError::BadScheme)?;
        let (mut v, mut addr, mut code, mut fp) = (None, None, None, None);
        for param in query.split('&') {
            let (key, value) = param.split_once('=').ok_or(CodeError::BadParameter)?;
            let slot = match key {
                "v" => &mut v,
                "addr" => &mut addr,
                "code" => &mut code,
                "fp" => &mut fp,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(CodeError::DuplicateParameter);
            }
        }
        if v.ok_or(CodeError::Missing("v"))? != URI_VERSION {
            return Err(CodeError::UnsupportedVersion);
        }
        let addr = addr.ok_or(CodeError::Missing("addr"))?;
        check_addr(addr)?;
        let code = PairingCode::parse(code.ok_or(CodeError::Missing("code"))?)?;
        let fingerprint = parse_hex32(fp.ok_or(CodeError::Missing("fp"))?)?;
        Ok(Self {
            addr,
            code,
            fingerprint,
        })
    }

    /// Checks the address before it is written, so a written URI always parses.
    pub fn new(addr: &'a str, code: PairingCode, fingerprint: [u8; 32]) -> Result<Self, CodeError> {
        check_addr(addr)?;
        Ok(Self {
            addr,
            code,
            fingerprint,
        })
    }
}

impl fmt::Display for PairingUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{URI_PREFIX}v={URI_VERSION}&addr={}&code={}&fp=",
            self.addr,
            self.code.display()
        )?;
        for b in self.fingerprint {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// `host:port` with a DNS name, IPv4 or `[IPv6]` host: no character needs escaping.
fn check_addr(addr: &str) -> Result<(), CodeError> {
    let (host, port) = addr.rsplit_once(':').ok_or(CodeError::BadAddress)?;
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok();
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !v6.is_empty()
            && v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(CodeError::BadAddress)
    }
}

fn parse_hex32(hex: &str) -> Result<[u8; 32], CodeError> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(CodeError::BadFingerprint);
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = hex_val(pair[0]).ok_or(CodeError::BadFingerprint)?;
        let lo = hex_val(pair[1]).ok_or(CodeError::BadFingerprint)?;
        *o = hi << 4 | lo;
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::{String, ToString};

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9][a-z0-9.-]{0,30}",
            (any::<[u8; 4]>()).prop_map(|a| std::format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])),
            "\\[[0-9a-f:]{2,39}\\]",
        ]
    }

    proptest! {
        #[test]
        fn uri_round_trips(host in host(), port in any::<u16>(), id in 0u16..=MAX_CODE_ID,
                           secret in 0u32..SECRET_SPACE, fp in any::<[u8; 32]>()) {
            let addr = std::format!("{host}:{port}");
            let code = PairingCode::new(id, secret).unwrap();
            let uri = PairingUri::new(&addr, code, fp).unwrap();
            let text = uri.to_string();
            prop_assert_eq!(PairingUri::parse(&text).unwrap(), uri);
        }

        #[test]
        fn code_round_trips(id in 0u16..=MAX_CODE_ID, secret in 0u32..SECRET_SPACE) {
            let code = PairingCode::new(id, secret).unwrap();
            prop_assert_eq!(PairingCode::parse(&code.display().to_string()).unwrap(), code);
        }

        #[test]
        fn uri_parse_never_panics(s in "tern://pair\\?[ -~]{0,120}") {
            let _ = PairingUri::parse(&s);
        }
    }

    #[test]
    fn typed_uri_errors() {
        let fp = "ab".repeat(32);
        let ok = std::format!("tern://pair?v=1&addr=d.example:7443&code=0001-2345-6789&fp={fp}");
        assert!(PairingUri::parse(&ok).is_ok());
        let cases: [(String, CodeError); 9] = [
            ("http://pair?v=1".into(), CodeError::BadScheme),
            (
                "tern://pair?v=2&addr=a:1&code=000123456789&fp=00".into(),
                CodeError::UnsupportedVersion,
            ),
            (
                std::format!("tern://pair?v=1&code=000123456789&fp={fp}"),
                CodeError::Missing("addr"),
            ),
            (
                std::format!("tern://pair?v=1&addr=a:1&fp={fp}"),
                CodeError::Missing("code"),
            ),
            (
                "tern://pair?v=1&addr=a:1&code=000123456789".into(),
                CodeError::Missing("fp"),
            ),
            (
                std::format!("tern://pair?v=1&v=1&addr=a:1&code=000123456789&fp={fp}"),
                CodeError::DuplicateParameter,
            ),
            (
                std::format!("tern://pair?v=1&addr=a/b:1&code=000123456789&fp={fp}"),
                CodeError::BadAddress,
            ),
            (
                std::format!("tern://pair?v=1&addr=a:1&code=00012345678&fp={fp}"),
                CodeError::BadLength,
            ),
            (
                "tern://pair?v=1&addr=a:1&code=000123456789&fp=zz".into(),
                CodeError::BadFingerprint,
            ),
        ];
        for (uri, want) in cases {
            assert_eq!(PairingUri::parse(&uri), Err(want), "{uri}");
        }
        // Unknown parameters are skipped.
        assert!(PairingUri::parse(&std::format!("{ok}&x=y")).is_ok());
    }

    #[test]
    fn debug_hides_the_secret() {
        let code = PairingCode::new(12, 34_567_890).unwrap();
        let text = std::format!("{code:?}");
        assert!(!text.contains("3456"), "{text}");
        assert_eq!(code.display().to_string(), "0012-3456-7890");
    }
}
