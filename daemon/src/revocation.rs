//! The revocation set: certificates (by fingerprint) and whole devices (by device id)
//! that must not connect.
//!
//! Transports call [`RevocationSet::is_revoked`] at every handshake, so a revocation
//! takes effect on the next handshake (and TLS session resumption is off, so no
//! handshake skips it). Reads take a shared lock on two hash sets; writes are rare.
//! The records are plain serde data the store persists; the sets are rebuilt from them.

use std::collections::HashSet;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::ca::Fingerprint;

/// What a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Revoked {
    /// One certificate; the device may be issued another.
    Certificate(Fingerprint),
    /// Every certificate of the device, past and future, until the record is removed.
    Device(String),
}

/// One revocation as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    pub what: Revoked,
    /// Unix milliseconds.
    pub revoked_at_ms: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
struct Sets {
    certificates: HashSet<Fingerprint>,
    devices: HashSet<String>,
    records: Vec<RevocationRecord>,
}

/// The live revocation set, shared between the transports and the operator API.
#[derive(Debug, Default)]
pub struct RevocationSet {
    sets: RwLock<Sets>,
}

impl RevocationSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the set from stored records.
    pub fn from_records(records: impl IntoIterator<Item = RevocationRecord>) -> Self {
        let set = Self::new();
        for r in records {
            set.insert(r);
        }
        set
    }

    /// The check a handshake makes: is this certificate, or its device, revoked?
    pub fn is_revoked(&self, fingerprint: &Fingerprint, device_id: &str) -> bool {
        let sets = self.read();
        sets.certificates.contains(fingerprint) || sets.devices.contains(device_id)
    }

    /// Whether the device itself is revoked (whatever certificate it presents).
    pub fn is_device_revoked(&self, device_id: &str) -> bool {
        self.read().devices.contains(device_id)
    }

    /// Revokes one certificate; false if it already was.
    pub fn revoke_certificate(&self, fingerprint: Fingerprint, now_ms: u64, reason: &str) -> bool {
        self.insert(RevocationRecord {
            what: Revoked::Certificate(fingerprint),
            revoked_at_ms: now_ms,
            reason: reason.to_owned(),
        })
    }

    /// Revokes a device and every certificate it has or will get; false if it already was.
    pub fn revoke_device(&self, device_id: &str, now_ms: u64, reason: &str) -> bool {
        self.insert(RevocationRecord {
            what: Revoked::Device(device_id.to_owned()),
            revoked_at_ms: now_ms,
            reason: reason.to_owned(),
        })
    }

    /// Adds what `records` hold that the set lacks; returns the devices newly revoked.
    pub fn absorb(&self, records: Vec<RevocationRecord>) -> (bool, Vec<String>) {
        let mut any = false;
        let mut devices = Vec::new();
        for record in records {
            let device = match &record.what {
                Revoked::Device(id) => Some(id.clone()),
                Revoked::Certificate(_) => None,
            };
            if self.insert(record) {
                any = true;
                devices.extend(device);
            }
        }
        (any, devices)
    }

    /// Lifts a device's revocation (certificate revocations stay: re-pair instead).
    pub fn reinstate_device(&self, device_id: &str) -> bool {
        let mut sets = self.write();
        let removed = sets.devices.remove(device_id);
        if removed {
            sets.records
                .retain(|r| r.what != Revoked::Device(device_id.to_owned()));
        }
        removed
    }

    /// Every record, for the store.
    pub fn records(&self) -> Vec<RevocationRecord> {
        self.read().records.clone()
    }

    pub fn len(&self) -> usize {
        self.read().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, record: RevocationRecord) -> bool {
        let mut sets = self.write();
        let new = match &record.what {
            Revoked::Certificate(fp) => sets.certificates.insert(*fp),
            Revoked::Device(id) => sets.devices.insert(id.clone()),
        };
        if new {
            sets.records.push(record);
        }
        new
    }

    // A panic while holding the lock leaves the sets consistent (every write is a single
    // insert or remove), so a poisoned lock is still safe to use; failing open would not be.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Sets> {
        self.sets.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Sets> {
        self.sets.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn revokes_by_fingerprint_and_by_device() {
        let set = RevocationSet::new();
        let a = Fingerprint([1; 32]);
        let b = Fingerprint([2; 32]);
        assert!(!set.is_revoked(&a, "dev-1"));
        assert!(set.revoke_certificate(a, 10, "key leaked"));
        assert!(!set.revoke_certificate(a, 11, "again"));
        assert!(set.is_revoked(&a, "dev-1"));
        assert!(!set.is_revoked(&b, "dev-1"));
        assert!(set.revoke_device("dev-2", 12, "stolen"));
        assert!(set.is_revoked(&b, "dev-2"));
        assert!(set.reinstate_device("dev-2"));
        assert!(!set.is_revoked(&b, "dev-2"));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn records_persist_and_reload() {
        let set = RevocationSet::new();
        set.revoke_certificate(Fingerprint([9; 32]), 1, "rotated out");
        set.revoke_device("dev-x", 2, "decommissioned");
        let json = serde_json::to_string(&set.records()).unwrap();
        let back: Vec<RevocationRecord> = serde_json::from_str(&json).unwrap();
        let reloaded = RevocationSet::from_records(back);
        assert!(reloaded.is_revoked(&Fingerprint([9; 32]), "other"));
        assert!(reloaded.is_revoked(&Fingerprint([0; 32]), "dev-x"));
        assert_eq!(reloaded.records(), set.records());
    }

    #[test]
    fn concurrent_reads_see_a_revocation() {
        let set = Arc::new(RevocationSet::new());
        let fp = Fingerprint([5; 32]);
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let set = Arc::clone(&set);
                std::thread::spawn(move || {
                    // Spin until the writer's revocation is visible.
                    while !set.is_revoked(&fp, "n") {
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        set.revoke_certificate(fp, 0, "test");
        for r in readers {
            r.join().unwrap();
        }
    }
}
