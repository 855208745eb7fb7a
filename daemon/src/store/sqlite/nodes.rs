//! Nodes the daemon has seen: identity, times, state and announced capabilities.
//!
//! The capability list is kept as JSON: it is replaced whole when a node registers and
//! read whole, never queried by field.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::get_u64;
use crate::model::Node;
use crate::store::StoreError;
use crate::store::encode::{
    capabilities_from, capabilities_json, check_id, enc, node_online, node_state,
};

pub(crate) fn put(conn: &Connection, n: &Node) -> Result<(), StoreError> {
    check_id(&n.id)?;
    let caps = capabilities_json(&n.capabilities)?;
    conn.prepare_cached(
        "INSERT INTO nodes (id, first_seen, last_seen, state, platform, address, capabilities)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (id) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen),
             last_seen = excluded.last_seen, state = excluded.state,
             platform = excluded.platform, address = excluded.address,
             capabilities = excluded.capabilities",
    )
    .and_then(|mut s| {
        s.execute(params![
            n.id,
            enc(n.first_seen_ms),
            enc(n.last_seen_ms),
            node_state(n.online),
            n.platform,
            n.address,
            caps
        ])
    })
    .map_err(StoreError::db("store a node"))?;
    Ok(())
}

/// Moves `last_seen` forward (never back: touches may be applied out of order).
pub(crate) fn touch(conn: &Connection, id: &str, last_seen_ms: u64) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached("UPDATE nodes SET last_seen = max(last_seen, ?2) WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id, enc(last_seen_ms)]))
        .map_err(StoreError::db("touch a node"))?;
    if n == 0 {
        return Err(StoreError::NotFound {
            what: "node",
            key: id.to_owned(),
        });
    }
    Ok(())
}

const COLUMNS: &str =
    "SELECT id, first_seen, last_seen, state, platform, address, capabilities FROM nodes";

fn row(r: &Row<'_>) -> rusqlite::Result<(Node, String)> {
    Ok((
        Node {
            id: r.get(0)?,
            first_seen_ms: get_u64(r, 1)?,
            last_seen_ms: get_u64(r, 2)?,
            online: node_online(&r.get::<_, String>(3)?),
            platform: r.get(4)?,
            address: r.get(5)?,
            capabilities: Vec::new(),
        },
        r.get(6)?,
    ))
}

fn finish((mut node, caps): (Node, String)) -> Result<Node, StoreError> {
    node.capabilities = capabilities_from(&node.id, &caps)?;
    Ok(node)
}

pub(crate) fn get(conn: &Connection, id: &str) -> Result<Option<Node>, StoreError> {
    conn.prepare_cached(&format!("{COLUMNS} WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], row).optional())
        .map_err(StoreError::db("read a node"))?
        .map(finish)
        .transpose()
}

pub(crate) fn since(conn: &Connection, since_ms: u64) -> Result<Vec<Node>, StoreError> {
    let rows: Vec<_> = conn
        .prepare_cached(&format!("{COLUMNS} WHERE last_seen >= ?1 ORDER BY id"))
        .and_then(|mut s| s.query_map([enc(since_ms)], row)?.collect::<Result<_, _>>())
        .map_err(StoreError::db("list nodes seen lately"))?;
    rows.into_iter().map(finish).collect()
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<Node>, StoreError> {
    let rows: Vec<_> = conn
        .prepare_cached(&format!("{COLUMNS} ORDER BY id"))
        .and_then(|mut s| s.query_map([], row)?.collect::<Result<_, _>>())
        .map_err(StoreError::db("list nodes"))?;
    rows.into_iter().map(finish).collect()
}
