//! Who owns each node's session, and at which epoch: a claim raises the epoch, a fence
//! refuses a submission whose owner or epoch is no longer the stored one.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;
use crate::store::encode::{check_id, enc};

fn epoch_param(epoch: u64) -> Result<i64, StoreError> {
    i64::try_from(epoch).map_err(|_| StoreError::Invalid(format!("epoch {epoch} out of range")))
}

pub(crate) fn claim(
    conn: &Connection,
    node: &str,
    owner: &str,
    epoch: u64,
    at_ms: u64,
) -> Result<u64, StoreError> {
    check_id(node)?;
    let first = epoch_param(epoch.max(1))?;
    let epoch: i64 = conn
        .prepare_cached(
            "INSERT INTO owners (node, owner, epoch, since) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (node) DO UPDATE SET owner = excluded.owner,
                 epoch = max(owners.epoch + 1, excluded.epoch), since = excluded.since
             RETURNING epoch",
        )
        .and_then(|mut s| s.query_row(params![node, owner, first, enc(at_ms)], |r| r.get(0)))
        .map_err(StoreError::db("claim a session"))?;
    u64::try_from(epoch).map_err(|_| StoreError::Corrupt(format!("epoch {epoch} of {node}")))
}

pub(crate) fn fence(
    conn: &Connection,
    node: &str,
    owner: &str,
    epoch: u64,
) -> Result<(), StoreError> {
    let at = epoch_param(epoch)?;
    let held = conn
        .prepare_cached("SELECT 1 FROM owners WHERE node = ?1 AND owner = ?2 AND epoch = ?3")
        .and_then(|mut s| s.query_row(params![node, owner, at], |_| Ok(())).optional())
        .map_err(StoreError::db("check session ownership"))?;
    match held {
        Some(()) => Ok(()),
        None => Err(StoreError::Fenced {
            node: node.to_owned(),
            epoch,
        }),
    }
}
