//! Hex text, as certificates and CSRs travel in JSON, into and out of caller buffers.
//!
//! Encoding writes lowercase; decoding takes either case and nothing else (no prefix,
//! no sign, no whitespace).

use core::fmt;

/// Why hex could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HexError {
    /// Hex text has two digits per byte; this has an odd number.
    OddLength,
    /// The byte at `index` of the text is not a hex digit.
    InvalidDigit { index: usize },
    /// The output buffer holds fewer than the `needed` bytes.
    BufferTooSmall { needed: usize },
}

impl fmt::Display for HexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HexError::OddLength => f.write_str("hex text of odd length"),
            HexError::InvalidDigit { index } => write!(f, "not a hex digit at {index}"),
            HexError::BufferTooSmall { needed } => {
                write!(f, "the buffer holds fewer than the {needed} bytes needed")
            }
        }
    }
}

impl core::error::Error for HexError {}

/// Length of the hex text for `bytes` bytes.
pub const fn encoded_len(bytes: usize) -> usize {
    bytes.saturating_mul(2)
}

/// Bytes that hex text of `chars` characters decodes to.
pub const fn decoded_len(chars: usize) -> usize {
    chars / 2
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex at the start of `out`; returns the text.
pub fn encode<'o>(bytes: &[u8], out: &'o mut [u8]) -> Result<&'o str, HexError> {
    let needed = encoded_len(bytes.len());
    let out = out
        .get_mut(..needed)
        .ok_or(HexError::BufferTooSmall { needed })?;
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    // Only ASCII digits were written, so this never falls back.
    Ok(core::str::from_utf8(out).unwrap_or_default())
}

/// Decodes `text` into the start of `out`; returns the bytes.
pub fn decode<'o>(text: &str, out: &'o mut [u8]) -> Result<&'o [u8], HexError> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) {
        return Err(HexError::OddLength);
    }
    let needed = decoded_len(text.len());
    let out = out
        .get_mut(..needed)
        .ok_or(HexError::BufferTooSmall { needed })?;
    for (i, (b, pair)) in out.iter_mut().zip(text.chunks_exact(2)).enumerate() {
        let digit = |j: usize| nibble(pair[j]).ok_or(HexError::InvalidDigit { index: 2 * i + j });
        *b = (digit(0)? << 4) | digit(1)?;
    }
    Ok(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let bytes: [u8; 256] = core::array::from_fn(|i| i as u8);
        let mut text = [0u8; 512];
        let hex = encode(&bytes, &mut text).unwrap();
        assert_eq!(&hex[..8], "00010203");
        assert_eq!(&hex[hex.len() - 4..], "feff");
        let mut back = [0u8; 256];
        assert_eq!(decode(hex, &mut back).unwrap(), &bytes[..]);
        let upper = std::string::String::from(hex).to_ascii_uppercase();
        assert_eq!(decode(&upper, &mut back).unwrap(), &bytes[..]);
        assert_eq!(encode(&[], &mut []).unwrap(), "");
        assert_eq!(decode("", &mut []).unwrap(), &[] as &[u8]);
    }

    #[test]
    fn writes_only_the_start_of_a_larger_buffer() {
        let mut text = [b'.'; 8];
        assert_eq!(encode(&[0xab, 0x01], &mut text).unwrap(), "ab01");
        assert_eq!(&text[4..], b"....");
        let mut bytes = [7u8; 4];
        assert_eq!(decode("C0fe", &mut bytes).unwrap(), &[0xc0, 0xfe]);
        assert_eq!(bytes[2..], [7, 7]);
    }

    #[test]
    fn refuses_bad_text_and_small_buffers() {
        let mut out = [0u8; 8];
        assert_eq!(decode("abc", &mut out), Err(HexError::OddLength));
        assert_eq!(
            decode("zz", &mut out),
            Err(HexError::InvalidDigit { index: 0 })
        );
        assert_eq!(
            decode("00g0", &mut out),
            Err(HexError::InvalidDigit { index: 2 })
        );
        // A sign, which `u8::from_str_radix` takes.
        assert_eq!(
            decode("+f", &mut out),
            Err(HexError::InvalidDigit { index: 0 })
        );
        assert_eq!(
            decode("0é0", &mut out),
            Err(HexError::InvalidDigit { index: 1 })
        );
        assert_eq!(
            decode(" 0", &mut out),
            Err(HexError::InvalidDigit { index: 0 })
        );
        assert_eq!(
            decode("000000", &mut out[..2]),
            Err(HexError::BufferTooSmall { needed: 3 })
        );
        assert_eq!(
            encode(&[1, 2, 3], &mut out[..5]),
            Err(HexError::BufferTooSmall { needed: 6 })
        );
    }
}
