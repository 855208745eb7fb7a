//! Certificate renewal over a node's authenticated session, without pairing again.
//!
//! Within its renewal window a node sends the event `tern.renew` with a
//! [`RenewRequest`]: a CSR for its own key. The daemon names the device from the
//! session's certificate, never from the event, issues a certificate for it and calls
//! the node's `tern.certificate` capability with a [`Renewed`]. The node checks the
//! certificate (its key, its device id, its CA, not expired) before keeping it, answers
//! [`Installed`], and presents it from its next connection on. DER travels as hex text.

use serde::{Deserialize, Serialize};

use crate::hex::{self, HexError};

/// The `tern.renew` event's payload: `{"csr": "<hex DER>"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest<'a> {
    /// The CSR's DER, hex.
    pub csr: &'a str,
}

impl<'a> RenewRequest<'a> {
    /// A request for the CSR `csr_der`, its hex written into `text` (twice the DER's
    /// length).
    pub fn new(csr_der: &[u8], text: &'a mut [u8]) -> Result<Self, HexError> {
        Ok(Self {
            csr: hex::encode(csr_der, text)?,
        })
    }

    /// The CSR's DER, decoded into `out` (half the hex's length).
    pub fn csr_der<'o>(&self, out: &'o mut [u8]) -> Result<&'o [u8], HexError> {
        hex::decode(self.csr, out)
    }
}

/// `tern.certificate`'s input: `{"cert": "<hex DER>"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renewed<'a> {
    /// The certificate's DER, hex.
    pub cert: &'a str,
}

impl<'a> Renewed<'a> {
    /// The certificate `cert_der`, its hex written into `text` (twice the DER's length).
    pub fn new(cert_der: &[u8], text: &'a mut [u8]) -> Result<Self, HexError> {
        Ok(Self {
            cert: hex::encode(cert_der, text)?,
        })
    }

    /// The certificate's DER, decoded into `out` (half the hex's length).
    pub fn cert_der<'o>(&self, out: &'o mut [u8]) -> Result<&'o [u8], HexError> {
        hex::decode(self.cert, out)
    }
}

/// `tern.certificate`'s output once the certificate is kept: `{"installed": true}`. A
/// certificate the node refuses is a rejected call, not `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub installed: bool,
}
