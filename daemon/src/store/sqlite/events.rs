//! Events nodes sent: one global, monotonically increasing seq, and a retention policy.
//!
//! The seq is an `AUTOINCREMENT` rowid, so a seq is never handed out twice, even after
//! the newest events were pruned: a reader's `events_after` cursor stays valid. An event
//! may name where it stood in its node's stream ([`EventOrigin`]); a replay of the same
//! origin after a crash is stored once.

use rusqlite::{Connection, Row, params};

use super::get_u64;
use crate::model::{EventOrigin, NewEvent, StoredEvent};
use crate::store::RetentionPolicy;
use crate::store::StoreError;
use crate::store::encode::{check_id, dec, enc};

/// Appends an event; `None` when its origin is already stored.
pub(crate) fn append(conn: &Connection, e: &NewEvent) -> Result<Option<u64>, StoreError> {
    check_id(&e.node)?;
    let (session, origin_seq) = match e.origin {
        Some(o) => (Some(o.session), Some(enc(o.stream_seq))),
        None => (None, None),
    };
    let n = conn
        .prepare_cached(
            "INSERT INTO events (node, name, content_type, body, at, origin_session, origin_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (node, origin_session, origin_seq) WHERE origin_session IS NOT NULL
             DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                e.node,
                e.name,
                e.content_type,
                e.body,
                enc(e.at_ms),
                session,
                origin_seq
            ])
        })
        .map_err(StoreError::db("append an event"))?;
    if n == 0 {
        return Ok(None);
    }
    let seq = conn.last_insert_rowid();
    u64::try_from(seq)
        .map(Some)
        .map_err(|_| StoreError::Corrupt(format!("event seq {seq} is negative")))
}

/// Applies `policy` at `now_ms`; returns how many events it removed.
pub(crate) fn prune(
    conn: &Connection,
    policy: &RetentionPolicy,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    if let Some(age) = policy.max_age_ms {
        // An event exactly `max_age_ms` old is still within the policy.
        let oldest_kept = now_ms.saturating_sub(age);
        removed += conn
            .prepare_cached("DELETE FROM events WHERE at < ?1")
            .and_then(|mut s| s.execute([enc(oldest_kept)]))
            .map_err(StoreError::db("prune events by age"))?;
    }
    if let Some(max) = policy.max_events {
        // Everything below the `max`-th newest seq goes; with fewer events, nothing.
        let offset = i64::try_from(max).unwrap_or(i64::MAX);
        removed += conn
            .prepare_cached(
                "DELETE FROM events WHERE seq <= (
                     SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
            )
            .and_then(|mut s| s.execute([offset]))
            .map_err(StoreError::db("prune events by count"))?;
    }
    Ok(removed as u64)
}

fn row(r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let origin = match (
        r.get::<_, Option<[u8; 16]>>(6)?,
        r.get::<_, Option<i64>>(7)?,
    ) {
        (Some(session), Some(seq)) => Some(EventOrigin {
            session,
            stream_seq: dec(seq),
        }),
        _ => None,
    };
    Ok(StoredEvent {
        seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
        event: NewEvent {
            node: r.get(1)?,
            name: r.get(2)?,
            content_type: r.get(3)?,
            body: r.get(4)?,
            at_ms: get_u64(r, 5)?,
            origin,
        },
    })
}

/// Events with a seq above `after`, oldest first, of one node or all.
pub(crate) fn after(
    conn: &Connection,
    after: u64,
    node: Option<&str>,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let cols = "SELECT seq, node, name, content_type, body, at, origin_session, origin_seq
                FROM events";
    match node {
        Some(node) => conn
            .prepare_cached(&format!(
                "{cols} WHERE node = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))
            .and_then(|mut s| s.query_map(params![node, after, limit], row)?.collect()),
        None => conn
            .prepare_cached(&format!("{cols} WHERE seq > ?1 ORDER BY seq LIMIT ?2"))
            .and_then(|mut s| s.query_map(params![after, limit], row)?.collect()),
    }
    .map_err(StoreError::db("read events"))
}
