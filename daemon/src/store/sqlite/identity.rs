//! The daemon's certificate authorities (the one that signs devices and the server,
//! the one that signs operator identities), server identity and QUIC endpoint keys: one
//! row each.
//!
//! The CA's issuance policy is kept as JSON (a small serde struct that may grow fields);
//! the server identity's fingerprint is not stored but recomputed from its DER, so the
//! two can never disagree.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;
use transport_tokio::quic::{ENDPOINT_KEY_LEN, EndpointKeys};

use crate::ca::{Fingerprint, ServerIdentity, StoredCa};

/// The table of the CA that signs devices and the server, and of the one that signs
/// operator identities.
pub(crate) const CA: &str = "ca";
pub(crate) const OPERATOR_CA: &str = "operator_ca";

pub(crate) fn put_ca(
    conn: &Connection,
    table: &str,
    ca: &StoredCa,
    replace: bool,
) -> Result<(), StoreError> {
    let policy = serde_json::to_string(&ca.policy)
        .map_err(|e| StoreError::Invalid(format!("CA policy does not encode: {e}")))?;
    conn.prepare_cached(&upsert(
        &format!("INSERT INTO {table} (id, cert_pem, key_pem, policy) VALUES (1, ?1, ?2, ?3)"),
        "cert_pem = excluded.cert_pem,
             key_pem = excluded.key_pem, policy = excluded.policy",
        replace,
    ))
    .and_then(|mut s| s.execute(params![ca.cert_pem, ca.key_pem, policy]))
    .map_err(StoreError::db("store the CA"))?;
    Ok(())
}

pub(crate) fn ca(conn: &Connection, table: &str) -> Result<Option<StoredCa>, StoreError> {
    let row = conn
        .query_row(
            &format!("SELECT cert_pem, key_pem, policy FROM {table} WHERE id = 1"),
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()
        .map_err(StoreError::db("read the CA"))?;
    row.map(|(cert_pem, key_pem, policy)| {
        let policy = serde_json::from_str(&policy)
            .map_err(|e| StoreError::Corrupt(format!("stored CA policy: {e}")))?;
        Ok(StoredCa {
            cert_pem,
            key_pem,
            policy,
        })
    })
    .transpose()
}

pub(crate) fn put_server(
    conn: &Connection,
    id: &ServerIdentity,
    replace: bool,
) -> Result<(), StoreError> {
    if Fingerprint::of(&id.cert_der) != id.fingerprint {
        return Err(StoreError::Invalid(
            "server identity: fingerprint does not match the certificate".into(),
        ));
    }
    conn.prepare_cached(&upsert(
        "INSERT INTO server_identity (id, cert_der, cert_pem, key_pem) VALUES (1, ?1, ?2, ?3)",
        "cert_der = excluded.cert_der,
             cert_pem = excluded.cert_pem, key_pem = excluded.key_pem",
        replace,
    ))
    .and_then(|mut s| s.execute(params![id.cert_der, id.cert_pem, id.key_pem]))
    .map_err(StoreError::db("store the server identity"))?;
    Ok(())
}

pub(crate) fn server(conn: &Connection) -> Result<Option<ServerIdentity>, StoreError> {
    conn.query_row(
        "SELECT cert_der, cert_pem, key_pem FROM server_identity WHERE id = 1",
        [],
        |r| {
            let cert_der: Vec<u8> = r.get(0)?;
            Ok(ServerIdentity {
                fingerprint: Fingerprint::of(&cert_der),
                cert_der,
                cert_pem: r.get(1)?,
                key_pem: r.get(2)?,
            })
        },
    )
    .optional()
    .map_err(StoreError::db("read the server identity"))
}

pub(crate) fn put_endpoint_keys(
    conn: &Connection,
    keys: &EndpointKeys,
    replace: bool,
) -> Result<(), StoreError> {
    conn.prepare_cached(&upsert(
        "INSERT INTO endpoint_keys (id, reset_key, token_key) VALUES (1, ?1, ?2)",
        "reset_key = excluded.reset_key,
             token_key = excluded.token_key",
        replace,
    ))
    .and_then(|mut s| s.execute(params![&keys.reset()[..], &keys.token()[..]]))
    .map_err(StoreError::db("store the endpoint keys"))?;
    Ok(())
}

pub(crate) fn endpoint_keys(conn: &Connection) -> Result<Option<EndpointKeys>, StoreError> {
    let row = conn
        .query_row(
            "SELECT reset_key, token_key FROM endpoint_keys WHERE id = 1",
            [],
            |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()
        .map_err(StoreError::db("read the endpoint keys"))?;
    row.map(|(reset, token)| {
        let key = |k: Vec<u8>| {
            <[u8; ENDPOINT_KEY_LEN]>::try_from(k)
                .map_err(|_| StoreError::Corrupt("endpoint key of the wrong length".into()))
        };
        Ok(EndpointKeys::new(key(reset)?, key(token)?))
    })
    .transpose()
}

/// An insert that replaces the stored row (`replace`) or keeps it.
fn upsert(insert: &str, update: &str, replace: bool) -> String {
    if replace {
        format!("{insert} ON CONFLICT (id) DO UPDATE SET {update}")
    } else {
        format!("{insert} ON CONFLICT (id) DO NOTHING")
    }
}
