//! Revocations, keyed by what they cover: a certificate fingerprint or a device id.

use rusqlite::{Connection, Row, params};

use super::get_u64;
use crate::revocation::{RevocationRecord, Revoked};
use crate::store::StoreError;
use crate::store::encode::{enc, revoked_from, revoked_key};

pub(crate) fn put(conn: &Connection, r: &RevocationRecord) -> Result<(), StoreError> {
    let (kind, subject) = revoked_key(&r.what);
    conn.prepare_cached(
        "INSERT INTO revocations (kind, subject, revoked_at, reason) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, subject) DO UPDATE SET revoked_at = excluded.revoked_at,
             reason = excluded.reason",
    )
    .and_then(|mut s| s.execute(params![kind, subject, enc(r.revoked_at_ms), r.reason]))
    .map_err(StoreError::db("store a revocation"))?;
    Ok(())
}

pub(crate) fn delete(conn: &Connection, what: &Revoked) -> Result<(), StoreError> {
    let (kind, subject) = revoked_key(what);
    conn.prepare_cached("DELETE FROM revocations WHERE kind = ?1 AND subject = ?2")
        .and_then(|mut s| s.execute(params![kind, subject]))
        .map_err(StoreError::db("delete a revocation"))?;
    Ok(())
}

fn row(r: &Row<'_>) -> rusqlite::Result<(String, String, u64, String)> {
    Ok((r.get(0)?, r.get(1)?, get_u64(r, 2)?, r.get(3)?))
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<RevocationRecord>, StoreError> {
    let rows: Vec<_> = conn
        .prepare_cached(
            "SELECT kind, subject, revoked_at, reason FROM revocations
             ORDER BY revoked_at, kind, subject",
        )
        .and_then(|mut s| s.query_map([], row)?.collect::<Result<_, _>>())
        .map_err(StoreError::db("list revocations"))?;
    rows.into_iter()
        .map(|(kind, subject, revoked_at_ms, reason)| {
            let what = revoked_from(&kind, subject)?;
            Ok(RevocationRecord {
                what,
                revoked_at_ms,
                reason,
            })
        })
        .collect()
}
