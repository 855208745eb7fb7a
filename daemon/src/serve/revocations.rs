//! The revocation set as the transports consult it: the daemon's set, with change
//! notices so open connections of a revoked device close at once.

use tokio::sync::watch;
use transport_tokio::tls::{Fingerprint as TlsFingerprint, Revocation};

use crate::ca::Fingerprint;
use crate::revocation::{RevocationRecord, RevocationSet};
use crate::store::{Store, Write};

/// The live set.
#[derive(Debug)]
pub struct LiveRevocations {
    set: RevocationSet,
    changes: watch::Sender<u64>,
}

impl LiveRevocations {
    /// The set as the store holds it.
    pub async fn load(store: &Store) -> Result<Self, String> {
        let records = store.revocations().await.map_err(|e| e.to_string())?;
        Ok(Self {
            set: RevocationSet::from_records(records),
            changes: watch::Sender::new(0),
        })
    }

    /// Revokes `device_id` durably, then tells the transports. Returns the record, or
    /// `None` if it was revoked already.
    pub async fn revoke_device(
        &self,
        store: &Store,
        device_id: &str,
        now_ms: u64,
        reason: &str,
    ) -> Result<Option<RevocationRecord>, String> {
        let record = RevocationRecord {
            what: crate::revocation::Revoked::Device(device_id.to_owned()),
            revoked_at_ms: now_ms,
            reason: reason.to_owned(),
        };
        // In force before it is durable: the next handshake is refused at once.
        let fresh = self.set.revoke_device(device_id, now_ms, reason);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        store
            .write(vec![Write::PutRevocation(record.clone())])
            .await
            .map_err(|e| e.to_string())?;
        Ok(fresh.then_some(record))
    }

    /// Takes in revocations another daemon stored; tells the transports of any new one
    /// and returns the devices newly revoked.
    pub fn absorb(&self, records: Vec<RevocationRecord>) -> Vec<String> {
        let (any, devices) = self.set.absorb(records);
        if any {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        devices
    }

    pub fn is_device_revoked(&self, device_id: &str) -> bool {
        self.set.is_device_revoked(device_id)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn records(&self) -> Vec<RevocationRecord> {
        self.set.records()
    }
}

impl Revocation for LiveRevocations {
    fn is_revoked(&self, fingerprint: &TlsFingerprint, device_id: &str) -> bool {
        self.set.is_revoked(&Fingerprint(fingerprint.0), device_id)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
