//! The versioned migrations, applied under a row lock so that several daemons starting
//! at once against one database migrate it once.
//!
//! The version lives in `tern_schema` (one row). Each migration runs in its own
//! transaction together with the version bump; a database whose version is above
//! `MIGRATIONS.len()` was written by a newer binary and is refused.
//!
//! The SQL keeps to what PostgreSQL-compatible distributed engines (YugabyteDB) run:
//! plain tables, B-tree and partial unique indexes, `ON CONFLICT`, `RETURNING`, CTEs,
//! row locks (`FOR UPDATE`); no extensions, no advisory locks, no `LOCK TABLE`, no
//! sequences whose order the writers would rely on (event seqs come from a counter row,
//! see `apply.rs`).

use tokio_postgres::Client;

use super::pg;
use crate::store::StoreError;

/// Each entry moves the schema from version `index` to `index + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: everything the daemon keeps, as in the SQLite store, plus what several
    // daemons share: the event seq counter and session ownership.
    r"
    CREATE TABLE ca (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cert_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL,
        policy TEXT NOT NULL
    );
    CREATE TABLE server_identity (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cert_der BYTEA NOT NULL,
        cert_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL
    );
    CREATE TABLE endpoint_keys (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        reset_key BYTEA NOT NULL CHECK (length(reset_key) = 64),
        token_key BYTEA NOT NULL CHECK (length(token_key) = 64)
    );
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        fingerprint BYTEA NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
        cert_der BYTEA NOT NULL,
        paired_at BIGINT NOT NULL,
        name TEXT
    );
    CREATE TABLE revocations (
        kind TEXT NOT NULL CHECK (kind IN ('certificate', 'device')),
        subject TEXT NOT NULL,
        revoked_at BIGINT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (kind, subject)
    );
    CREATE TABLE pairings (
        code_id INTEGER PRIMARY KEY,
        record TEXT NOT NULL,
        decided BOOLEAN NOT NULL,
        verifier BYTEA NOT NULL
    );
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        state TEXT NOT NULL,
        platform TEXT,
        address TEXT,
        capabilities TEXT NOT NULL
    );
    CREATE TABLE calls (
        id BIGINT PRIMARY KEY,
        node TEXT NOT NULL,
        capability TEXT NOT NULL,
        input_type TEXT NOT NULL,
        input BYTEA NOT NULL,
        state TEXT NOT NULL,
        output_type TEXT,
        output BYTEA,
        error TEXT,
        created BIGINT NOT NULL,
        updated BIGINT NOT NULL,
        deadline BIGINT NOT NULL,
        session_call BIGINT,
        timed_out BIGINT
    );
    CREATE INDEX calls_by_node ON calls (node, id);
    CREATE INDEX calls_queued ON calls (id) WHERE state = 'queued' AND session_call IS NULL;
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    INSERT INTO counters (name, value) VALUES ('event_seq', 0), ('call_id', 0);
    CREATE TABLE events (
        seq BIGINT PRIMARY KEY,
        node TEXT NOT NULL,
        name TEXT NOT NULL,
        content_type TEXT NOT NULL,
        body BYTEA NOT NULL,
        at BIGINT NOT NULL,
        origin_session BYTEA,
        origin_seq BIGINT
    );
    CREATE INDEX events_by_node ON events (node, seq);
    CREATE INDEX events_by_age ON events (at);
    CREATE UNIQUE INDEX events_origin ON events (node, origin_session, origin_seq)
        WHERE origin_session IS NOT NULL;
    CREATE TABLE journals (
        key TEXT PRIMARY KEY
    );
    CREATE TABLE journal_meta (
        key TEXT PRIMARY KEY REFERENCES journals (key) ON DELETE CASCADE,
        meta BYTEA NOT NULL
    );
    CREATE TABLE journal_messages (
        key TEXT NOT NULL REFERENCES journals (key) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (key, seq)
    );
    CREATE TABLE journal_calls (
        key TEXT NOT NULL REFERENCES journals (key) ON DELETE CASCADE,
        id BIGINT NOT NULL,
        record BYTEA NOT NULL,
        PRIMARY KEY (key, id)
    );
    CREATE TABLE journal_seen (
        key TEXT NOT NULL REFERENCES journals (key) ON DELETE CASCADE,
        slot INTEGER NOT NULL,
        call BYTEA NOT NULL,
        PRIMARY KEY (key, slot)
    );
    CREATE TABLE owners (
        node TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        since BIGINT NOT NULL
    );
    ",
    // 2: operator identities and the CA that signs them, and the indexes call listings
    // (newest first, by node, state or creation time) walk.
    r"
    CREATE TABLE operator_ca (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cert_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL,
        policy TEXT NOT NULL
    );
    CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'admin')),
        fingerprint BYTEA NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
        cert_der BYTEA NOT NULL,
        not_after BIGINT NOT NULL,
        created BIGINT NOT NULL,
        revoked BIGINT
    );
    CREATE INDEX calls_by_state ON calls (state, id);
    CREATE INDEX calls_by_node_state ON calls (node, state, id);
    CREATE INDEX calls_by_created ON calls (created);
    ",
];

/// The schema version this binary writes.
pub(crate) fn supported_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// Brings the schema up to date, one migration per transaction.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    // Two daemons creating the version table at once: one wins, the other's
    // `IF NOT EXISTS` may still fail on the catalog; once more settles it.
    let create = "CREATE TABLE IF NOT EXISTS tern_schema (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )";
    if client.batch_execute(create).await.is_err() {
        client
            .batch_execute(create)
            .await
            .map_err(pg("create the schema version table"))?;
    }
    client
        .execute(
            "INSERT INTO tern_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
            &[],
        )
        .await
        .map_err(pg("initialise the schema version"))?;
    let supported = supported_version();
    loop {
        let tx = client.transaction().await.map_err(pg("begin migration"))?;
        // The row lock holds every other migrator until this one commits.
        let found: i32 = tx
            .query_one(
                "SELECT version FROM tern_schema WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(pg("read schema version"))?
            .get(0);
        let found = u32::try_from(found)
            .map_err(|_| StoreError::Corrupt(format!("schema version {found}")))?;
        if found > supported {
            return Err(StoreError::TooNew { found, supported });
        }
        let Some(sql) = MIGRATIONS.get(found as usize) else {
            return Ok(());
        };
        tx.batch_execute(sql).await.map_err(pg("apply migration"))?;
        tx.execute(
            "UPDATE tern_schema SET version = $1 WHERE id = 1",
            &[&i32::try_from(found + 1).unwrap_or(i32::MAX)],
        )
        .await
        .map_err(pg("write schema version"))?;
        tx.commit().await.map_err(pg("commit migration"))?;
    }
}
