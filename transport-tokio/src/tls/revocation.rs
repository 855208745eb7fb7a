//! The live revocation check, consulted at every handshake and by every open connection.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use super::identity::Fingerprint;

/// The daemon's revocation set, as the transport sees it.
///
/// [`is_revoked`](Self::is_revoked) is called at every handshake with a client
/// certificate (and once more before the connection is handed to the node plane); the
/// receiver from [`subscribe`](Self::subscribe) changes whenever something is revoked,
/// and every open connection of a device then asks again, so a revoked device's
/// connection closes at once.
pub trait Revocation: Send + Sync + 'static {
    /// True if the certificate `fingerprint` or the device `device_id` is revoked.
    fn is_revoked(&self, fingerprint: &Fingerprint, device_id: &str) -> bool;
    /// A receiver whose value changes after each revocation.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

/// An in-memory revocation set: revoked certificates and devices.
pub struct RevocationList {
    certificates: RwLock<HashSet<Fingerprint>>,
    devices: RwLock<HashSet<String>>,
    changes: watch::Sender<u64>,
}

impl RevocationList {
    pub fn new() -> Self {
        Self {
            certificates: RwLock::default(),
            devices: RwLock::default(),
            changes: watch::Sender::new(0),
        }
    }

    /// Revokes one certificate: its next handshakes fail, its open connections close.
    pub fn revoke_certificate(&self, fingerprint: Fingerprint) {
        self.certificates
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(fingerprint);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Revokes a device, whatever certificate it presents.
    pub fn revoke_device(&self, device_id: &str) {
        self.devices
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device_id.to_owned());
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Default for RevocationList {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocation for RevocationList {
    fn is_revoked(&self, fingerprint: &Fingerprint, device_id: &str) -> bool {
        self.certificates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(fingerprint)
            || self
                .devices
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(device_id)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

impl fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationList")
            .field(
                "certificates",
                &self.certificates.read().map_or(0, |s| s.len()),
            )
            .field("devices", &self.devices.read().map_or(0, |s| s.len()))
            .finish()
    }
}

/// One connected device's view of the revocation set: its identity, the check and the
/// change notices. A [`Driver`](crate::Driver) given one closes the connection with
/// `Error(Revoked)` as soon as the device or its certificate is revoked.
#[derive(Clone)]
pub struct RevocationWatch {
    pub(crate) revocation: Arc<dyn Revocation>,
    pub(crate) notices: watch::Receiver<u64>,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) device_id: String,
}

impl RevocationWatch {
    pub fn new(revocation: Arc<dyn Revocation>, fingerprint: Fingerprint, device_id: &str) -> Self {
        let notices = revocation.subscribe();
        Self {
            revocation,
            notices,
            fingerprint,
            device_id: device_id.to_owned(),
        }
    }

    /// True if this device or its certificate is revoked now.
    pub fn is_revoked(&self) -> bool {
        self.revocation
            .is_revoked(&self.fingerprint, &self.device_id)
    }
}

impl fmt::Debug for RevocationWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationWatch")
            .field("device_id", &self.device_id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}
