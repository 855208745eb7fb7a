//! What a node is given to pair: a `tern://pair?…` URI (from a QR code), or a pairing
//! code and the daemon's address written `CODE@HOST:PORT`.

use protocol_core::pairing::{CodeError, PairingCode};
use transport_embedded::Invitation;

/// A pairing invitation that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionError {
    /// Neither a `tern://` URI nor `CODE@HOST:PORT`.
    NoAddress,
    /// The URI or the code is malformed.
    Code(CodeError),
}

impl core::fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProvisionError::NoAddress => f.write_str(
                "expected a tern://pair?... URI, or a pairing code and the daemon's address as CODE@HOST:PORT",
            ),
            ProvisionError::Code(e) => write!(f, "bad pairing code or URI: {e:?}"),
        }
    }
}

impl core::error::Error for ProvisionError {}

/// Reads a pairing invitation; surrounding whitespace is ignored.
pub fn parse_invitation(text: &str) -> Result<Invitation<'_>, ProvisionError> {
    let text = text.trim();
    if text.starts_with("tern://") {
        return Invitation::uri(text).map_err(ProvisionError::Code);
    }
    let (code, daemon) = text.rsplit_once('@').ok_or(ProvisionError::NoAddress)?;
    let daemon = daemon.trim();
    if daemon.is_empty() || !daemon.contains(':') {
        return Err(ProvisionError::NoAddress);
    }
    let code = PairingCode::parse(code.trim()).map_err(ProvisionError::Code)?;
    Ok(Invitation::Code { code, daemon })
}
