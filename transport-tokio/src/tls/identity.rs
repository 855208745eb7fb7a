//! Who is at the other end of an accepted connection.

use std::fmt;

use protocol_core::session::MAX_NODE_ID;
use rustls::ServerConnection;
use x509_parser::prelude::{FromDer, X509Certificate};

/// SHA-256 of a certificate's DER: how the daemon names a certificate in its revocation
/// set and how a node pins the daemon's server certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        Fingerprint(protocol_core::pairing::certificate_fingerprint(cert_der))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    /// Lower-case hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The peer of an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A client certificate that chains to the daemon's CA: a paired device.
    Device {
        /// The certificate's subject common name.
        device_id: String,
        fingerprint: Fingerprint,
    },
    /// No client certificate: the connection may pair and do nothing else.
    Anonymous,
}

/// The device id a certificate names: its subject common name, if it has exactly one
/// that is non-empty UTF-8 of at most [`MAX_NODE_ID`] bytes.
pub fn device_id_of(cert_der: &[u8]) -> Option<String> {
    let (rest, cert) = X509Certificate::from_der(cert_der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let mut names = cert.subject().iter_common_name();
    let cn = names.next()?.as_str().ok()?;
    if names.next().is_some() || cn.is_empty() || cn.len() > MAX_NODE_ID {
        return None;
    }
    Some(cn.to_owned())
}

/// The identity of the client of a finished server handshake. `None` when the client
/// presented a certificate without a usable device id (the verifier refuses those, so
/// this does not happen with [`server_config`](super::server_config)).
pub fn peer_identity(conn: &ServerConnection) -> Option<PeerIdentity> {
    match conn.peer_certificates().and_then(|c| c.first()) {
        None => Some(PeerIdentity::Anonymous),
        Some(cert) => Some(PeerIdentity::Device {
            device_id: device_id_of(cert)?,
            fingerprint: Fingerprint::of(cert),
        }),
    }
}
