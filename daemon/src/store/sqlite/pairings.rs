//! Pairing codes and requests, keyed by their public code id.
//!
//! A [`PairingRecord`] nests the code window and the approval state; it is kept whole
//! as JSON (a handful of rows, replaced whole, read whole by the pairing service).

use rusqlite::{Connection, OptionalExtension, params};

use crate::pairing::PairingRecord;
use crate::store::StoreError;
use crate::store::encode::{
    CREATE_PAIRING, PUT_PAIRING, pairing_decided, pairing_from, pairing_json,
};

pub(crate) fn put(conn: &Connection, p: &PairingRecord) -> Result<(), StoreError> {
    let json = pairing_json(p)?;
    conn.prepare_cached(&PUT_PAIRING.replace('$', "?"))
        .and_then(|mut s| {
            s.execute(params![
                p.code_id,
                json,
                pairing_decided(p),
                p.verifier_record
            ])
        })
        .map_err(StoreError::db("store a pairing"))?;
    Ok(())
}

pub(crate) fn create(conn: &Connection, p: &PairingRecord) -> Result<(), StoreError> {
    let json = pairing_json(p)?;
    let created = conn
        .prepare_cached(&CREATE_PAIRING.replace('$', "?"))
        .and_then(|mut s| {
            s.query_row(
                params![p.code_id, json, pairing_decided(p), p.verifier_record],
                |_| Ok(()),
            )
            .optional()
        })
        .map_err(StoreError::db("create a pairing"))?;
    created.ok_or_else(|| StoreError::Taken {
        what: "pairing code id",
        key: format!("{:04}", p.code_id),
    })
}

pub(crate) fn delete(conn: &Connection, code_id: u16, verifier: &[u8]) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM pairings WHERE code_id = ?1 AND verifier = ?2")
        .and_then(|mut s| s.execute(params![code_id, verifier]))
        .map_err(StoreError::db("delete a pairing"))?;
    Ok(())
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<PairingRecord>, StoreError> {
    let rows: Vec<(u16, String)> = conn
        .prepare_cached("SELECT code_id, record FROM pairings ORDER BY code_id")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(StoreError::db("list pairings"))?;
    rows.into_iter()
        .map(|(code_id, json)| pairing_from(code_id, &json))
        .collect()
}
