//! Capability calls the daemon dispatched, by daemon-wide call id.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::get_u64;
use crate::model::{Call, CallFilter, CallStatus, CallUpdate, Payload};
use crate::store::StoreError;
use crate::store::encode::{
    EXPIRE_CALL, ListParam, QUEUED_CALLS, call_listing, check_id, dec, enc,
};

pub(crate) fn put(conn: &Connection, c: &Call) -> Result<(), StoreError> {
    check_id(&c.node)?;
    let (out_type, out) = match &c.output {
        Some(p) => (Some(p.content_type.as_str()), Some(p.bytes.as_slice())),
        None => (None, None),
    };
    conn.prepare_cached(
        "INSERT INTO calls (id, node, capability, input_type, input, state,
             output_type, output, error, created, updated, deadline, session_call, timed_out)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (id) DO UPDATE SET timed_out = excluded.timed_out, node = excluded.node,
             capability = excluded.capability, input_type = excluded.input_type,
             input = excluded.input, state = excluded.state,
             output_type = excluded.output_type, output = excluded.output,
             error = excluded.error, created = excluded.created,
             updated = excluded.updated, deadline = excluded.deadline,
             session_call = excluded.session_call
         WHERE NOT (excluded.state = 'timed_out'
             AND calls.state IN ('succeeded', 'failed', 'rejected'))",
    )
    .and_then(|mut s| {
        s.execute(params![
            enc(c.id),
            c.node,
            c.capability,
            c.input.content_type,
            c.input.bytes,
            c.state.as_str(),
            out_type,
            out,
            c.error,
            enc(c.created_ms),
            enc(c.updated_ms),
            enc(c.deadline_ms),
            c.session_call.map(enc),
            c.timed_out_ms.map(enc),
        ])
    })
    .map_err(StoreError::db("store a call"))?;
    Ok(())
}

pub(crate) fn update(conn: &Connection, u: &CallUpdate) -> Result<(), StoreError> {
    let (out_type, out) = match &u.output {
        Some(p) => (Some(p.content_type.as_str()), Some(p.bytes.as_slice())),
        None => (None, None),
    };
    let n = conn
        .prepare_cached(
            "UPDATE calls SET state = ?2, updated = ?3,
                 output_type = coalesce(?4, output_type), output = coalesce(?5, output),
                 error = coalesce(?6, error), session_call = coalesce(?7, session_call)
             WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                enc(u.id),
                u.state.as_str(),
                enc(u.updated_ms),
                out_type,
                out,
                u.error,
                u.session_call.map(enc),
            ])
        })
        .map_err(StoreError::db("update a call"))?;
    if n == 0 {
        return Err(StoreError::NotFound {
            what: "call",
            key: u.id.to_string(),
        });
    }
    Ok(())
}

pub(crate) fn expire(conn: &Connection, id: u64, at_ms: u64) -> Result<(), StoreError> {
    conn.prepare_cached(&EXPIRE_CALL.replace('$', "?"))
        .and_then(|mut s| s.execute(params![enc(id), enc(at_ms)]))
        .map_err(StoreError::db("expire a call"))?;
    Ok(())
}

pub(crate) fn queued(conn: &Connection) -> Result<Vec<Call>, StoreError> {
    conn.prepare_cached(&format!("{COLUMNS} {QUEUED_CALLS}"))
        .and_then(|mut s| s.query_map([], row)?.collect())
        .map_err(StoreError::db("list queued calls"))
}

const COLUMNS: &str = "SELECT id, node, capability, input_type, input, state, output_type,
    output, error, created, updated, deadline, session_call, timed_out FROM calls";

fn row(r: &Row<'_>) -> rusqlite::Result<Call> {
    let output = match (
        r.get::<_, Option<String>>(6)?,
        r.get::<_, Option<Vec<u8>>>(7)?,
    ) {
        (Some(content_type), Some(bytes)) => Some(Payload {
            content_type,
            bytes,
        }),
        _ => None,
    };
    let state: String = r.get(5)?;
    let state = CallStatus::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            5,
            rusqlite::types::Type::Text,
            format!("unknown call state {state:?}").into(),
        )
    })?;
    Ok(Call {
        id: get_u64(r, 0)?,
        node: r.get(1)?,
        capability: r.get(2)?,
        input: Payload {
            content_type: r.get(3)?,
            bytes: r.get(4)?,
        },
        state,
        output,
        error: r.get(8)?,
        created_ms: get_u64(r, 9)?,
        updated_ms: get_u64(r, 10)?,
        deadline_ms: get_u64(r, 11)?,
        session_call: r.get::<_, Option<i64>>(12)?.map(dec),
        timed_out_ms: r.get::<_, Option<i64>>(13)?.map(dec),
    })
}

pub(crate) fn get(conn: &Connection, id: u64) -> Result<Option<Call>, StoreError> {
    conn.prepare_cached(&format!("{COLUMNS} WHERE id = ?1"))
        .and_then(|mut s| s.query_row([enc(id)], row).optional())
        .map_err(StoreError::db("read a call"))
}

pub(crate) fn for_node(conn: &Connection, node: &str) -> Result<Vec<Call>, StoreError> {
    conn.prepare_cached(&format!("{COLUMNS} WHERE node = ?1 ORDER BY id"))
        .and_then(|mut s| s.query_map([node], row)?.collect())
        .map_err(StoreError::db("list calls"))
}

/// The calls `filter` wants, newest first.
pub(crate) fn list(conn: &Connection, filter: &CallFilter) -> Result<Vec<Call>, StoreError> {
    let (sql, params) = call_listing(filter);
    conn.prepare_cached(&format!("{COLUMNS} {}", sql.replace('$', "?")))
        .and_then(|mut s| s.query_map(values(params), row)?.collect())
        .map_err(StoreError::db("list calls"))
}

/// A listing's parameters as SQLite takes them.
fn values(params: Vec<ListParam<'_>>) -> rusqlite::ParamsFromIter<Vec<rusqlite::types::Value>> {
    rusqlite::params_from_iter(
        params
            .into_iter()
            .map(|p| match p {
                ListParam::Text(t) => rusqlite::types::Value::Text(t.to_owned()),
                ListParam::Int(i) => rusqlite::types::Value::Integer(i),
            })
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// How SQLite runs the listing `filter` asks for, one step a line.
    fn plan(conn: &Connection, filter: &CallFilter) -> String {
        let (sql, params) = call_listing(filter);
        let mut s = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {COLUMNS} {}",
                sql.replace('$', "?")
            ))
            .unwrap();
        let steps: Vec<String> = s
            .query_map(values(params), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        steps.join("\n")
    }

    #[test]
    fn listings_by_node_or_state_walk_an_index_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("tern.db")).unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let filters = [
            CallFilter {
                node: Some("n1".into()),
                limit: 50,
                ..CallFilter::default()
            },
            CallFilter {
                node: Some("n1".into()),
                before_id: Some(900),
                since_ms: 1,
                limit: 50,
                ..CallFilter::default()
            },
            CallFilter {
                state: Some(CallStatus::Running),
                before_id: Some(900),
                limit: 50,
                ..CallFilter::default()
            },
            CallFilter {
                node: Some("n1".into()),
                state: Some(CallStatus::Queued),
                until_ms: Some(5),
                limit: 50,
                ..CallFilter::default()
            },
        ];
        for filter in filters {
            let plan = plan(&conn, &filter);
            assert!(
                plan.contains("USING INDEX calls_by_"),
                "{filter:?}:\n{plan}"
            );
            // The index gives the order: no sort of what it found.
            assert!(!plan.contains("TEMP B-TREE"), "{filter:?}:\n{plan}");
        }
        // No bound: the newest ids first, straight off the table.
        let plan = plan(
            &conn,
            &CallFilter {
                limit: 10,
                ..CallFilter::default()
            },
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
