//! Who owns each node's session, and at which epoch: a claim raises the epoch, a fence
//! refuses a submission whose owner or epoch is no longer the stored one.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;
use crate::store::encode::{check_id, enc};

const OWNED_BY: &str = "SELECT node, epoch FROM owners WHERE owner = ?1 ORDER BY node";

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

/// The first of `count` values of `counter`, never handed out before.
pub(crate) fn reserve(conn: &Connection, counter: &str, count: u64) -> Result<u64, StoreError> {
    let count = i64::try_from(count)
        .ok()
        .filter(|c| *c > 0)
        .ok_or_else(|| StoreError::Invalid(format!("cannot reserve {count} ids")))?;
    let last: i64 = conn
        .prepare_cached(
            "INSERT INTO counters (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value
             RETURNING value",
        )
        .and_then(|mut s| s.query_row(params![counter, count], |r| r.get(0)))
        .map_err(StoreError::db("reserve ids"))?;
    u64::try_from(last - count + 1).map_err(|_| StoreError::Corrupt(format!("counter {counter}")))
}

pub(crate) fn owned_by(conn: &Connection, owner: &str) -> Result<Vec<(String, u64)>, StoreError> {
    conn.prepare_cached(OWNED_BY)
        .and_then(|mut s| {
            s.query_map([owner], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(StoreError::db("list owned sessions"))?
        .into_iter()
        .map(|(node, epoch)| {
            u64::try_from(epoch)
                .map(|e| (node, e))
                .map_err(|_| StoreError::Corrupt(format!("epoch {epoch}")))
        })
        .collect()
}

pub(crate) fn claims_since(
    conn: &Connection,
    since_ms: u64,
) -> Result<Vec<(String, String, u64)>, StoreError> {
    conn.prepare_cached("SELECT node, owner, epoch FROM owners WHERE since >= ?1")
        .and_then(|mut s| {
            s.query_map([enc(since_ms)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(StoreError::db("list recent claims"))?
        .into_iter()
        .map(|(node, owner, epoch)| {
            u64::try_from(epoch)
                .map(|e| (node, owner, e))
                .map_err(|_| StoreError::Corrupt(format!("epoch {epoch}")))
        })
        .collect()
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
