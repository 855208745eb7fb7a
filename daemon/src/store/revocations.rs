//! Revocations, keyed by what they cover: a certificate fingerprint or a device id.

use rusqlite::{Connection, Row, params};

use super::StoreError;
use super::schema::{enc, get_u64};
use crate::ca::Fingerprint;
use crate::revocation::{RevocationRecord, Revoked};

fn key(what: &Revoked) -> (&'static str, String) {
    match what {
        Revoked::Certificate(fp) => ("certificate", fp.to_hex()),
        Revoked::Device(id) => ("device", id.clone()),
    }
}

pub(crate) fn put(conn: &Connection, r: &RevocationRecord) -> Result<(), StoreError> {
    let (kind, subject) = key(&r.what);
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
    let (kind, subject) = key(what);
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
            let what = match kind.as_str() {
                "certificate" => {
                    Revoked::Certificate(Fingerprint::from_hex(&subject).ok_or_else(|| {
                        StoreError::Corrupt(format!("revoked fingerprint {subject:?}"))
                    })?)
                }
                "device" => Revoked::Device(subject),
                other => return Err(StoreError::Corrupt(format!("revocation kind {other:?}"))),
            };
            Ok(RevocationRecord {
                what,
                revoked_at_ms,
                reason,
            })
        })
        .collect()
}
