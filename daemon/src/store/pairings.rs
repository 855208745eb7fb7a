//! Pairing codes and requests, keyed by their public code id.
//!
//! A [`PairingRecord`] nests the code window and the approval state; it is kept whole
//! as JSON (a handful of rows, replaced whole, read whole by the pairing service).

use rusqlite::{Connection, params};

use super::StoreError;
use crate::pairing::PairingRecord;

pub(crate) fn put(conn: &Connection, p: &PairingRecord) -> Result<(), StoreError> {
    let json = serde_json::to_string(p)
        .map_err(|e| StoreError::Invalid(format!("pairing record does not encode: {e}")))?;
    conn.prepare_cached(
        "INSERT INTO pairings (code_id, record) VALUES (?1, ?2)
         ON CONFLICT (code_id) DO UPDATE SET record = excluded.record",
    )
    .and_then(|mut s| s.execute(params![p.code_id, json]))
    .map_err(StoreError::db("store a pairing"))?;
    Ok(())
}

pub(crate) fn delete(conn: &Connection, code_id: u16) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM pairings WHERE code_id = ?1")
        .and_then(|mut s| s.execute([code_id]))
        .map_err(StoreError::db("delete a pairing"))?;
    Ok(())
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<PairingRecord>, StoreError> {
    let rows: Vec<(u16, String)> = conn
        .prepare_cached("SELECT code_id, record FROM pairings ORDER BY code_id")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(StoreError::db("list pairings"))?;
    rows.into_iter()
        .map(|(code_id, json)| {
            let rec: PairingRecord = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("pairing {code_id:04}: {e}")))?;
            if rec.code_id != code_id {
                return Err(StoreError::Corrupt(format!(
                    "pairing row {code_id:04} holds code id {:04}",
                    rec.code_id
                )));
            }
            Ok(rec)
        })
        .collect()
}
