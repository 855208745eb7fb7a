//! Operator identities: one row per name, holding the client certificate the operator
//! CA issued, its role, and when it was revoked.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::model::Operator;
use crate::store::StoreError;
use crate::store::encode::{
    ADD_OPERATOR, OPERATOR_COLUMNS, REVOKE_OPERATOR, check_operator, enc, operator_from,
};

pub(crate) fn add(conn: &Connection, o: &Operator) -> Result<(), StoreError> {
    check_operator(o)?;
    let added = conn
        .prepare_cached(&ADD_OPERATOR.replace('$', "?"))
        .and_then(|mut s| {
            s.query_row(
                params![
                    o.name,
                    o.role.as_str(),
                    o.fingerprint,
                    o.cert_der,
                    enc(o.not_after_ms),
                    enc(o.created_ms),
                    o.revoked_ms.map(enc),
                ],
                |_| Ok(()),
            )
            .optional()
        })
        .map_err(StoreError::db("add an operator"))?;
    added.ok_or_else(|| StoreError::Taken {
        what: "operator",
        key: o.name.clone(),
    })
}

pub(crate) fn revoke(conn: &Connection, name: &str, at_ms: u64) -> Result<(), StoreError> {
    let found = conn
        .prepare_cached(&REVOKE_OPERATOR.replace('$', "?"))
        .and_then(|mut s| {
            s.query_row(params![name, enc(at_ms)], |_| Ok(()))
                .optional()
        })
        .map_err(StoreError::db("revoke an operator"))?;
    found.ok_or_else(|| StoreError::NotFound {
        what: "operator",
        key: name.to_owned(),
    })
}

type Columns = (String, String, Vec<u8>, Vec<u8>, i64, i64, Option<i64>);

fn row(r: &Row<'_>) -> rusqlite::Result<Columns> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn finish(
    (name, role, fp, cert, not_after, created, revoked): Columns,
) -> Result<Operator, StoreError> {
    operator_from(name, &role, fp, cert, not_after, created, revoked)
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<Operator>, StoreError> {
    let rows: Vec<Columns> = conn
        .prepare_cached(&format!("{OPERATOR_COLUMNS} ORDER BY name"))
        .and_then(|mut s| s.query_map([], row)?.collect())
        .map_err(StoreError::db("list operators"))?;
    rows.into_iter().map(finish).collect()
}

pub(crate) fn by_fingerprint(
    conn: &Connection,
    fingerprint: &[u8; 32],
) -> Result<Option<Operator>, StoreError> {
    conn.prepare_cached(&format!("{OPERATOR_COLUMNS} WHERE fingerprint = ?1"))
        .and_then(|mut s| s.query_row([fingerprint], row).optional())
        .map_err(StoreError::db("read an operator"))?
        .map(finish)
        .transpose()
}
