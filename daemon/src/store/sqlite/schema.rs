//! Connection settings, the versioned migrations, and how unsigned numbers are stored.
//!
//! The schema version lives in `PRAGMA user_version`; [`MIGRATIONS`] is applied in order,
//! each in its own transaction together with the version bump, so a crash mid-upgrade
//! leaves the previous version intact. A database whose version is above
//! `MIGRATIONS.len()` was written by a newer binary and is refused.
//!
//! SQLite integers are `i64`; protocol numbers (seqs, call ids, timestamps) are `u64` up
//! to `u64::MAX`. [`enc`] maps a `u64` to the `i64` with the top bit flipped, which is
//! lossless *and* order-preserving, so `ORDER BY` and range deletes (`Trim`, retention)
//! stay correct for values at and above 2^63.

use std::time::Duration;

use rusqlite::Connection;

use crate::store::StoreError;
use crate::store::encode::dec;

/// Each entry moves the schema from version `index` to `index + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: everything the daemon keeps.
    r"
    CREATE TABLE ca (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cert_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL,
        policy TEXT NOT NULL
    );
    CREATE TABLE server_identity (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cert_der BLOB NOT NULL,
        cert_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL
    );
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        fingerprint BLOB NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
        cert_der BLOB NOT NULL,
        paired_at INTEGER NOT NULL,
        name TEXT
    );
    CREATE TABLE revocations (
        kind TEXT NOT NULL CHECK (kind IN ('certificate', 'device')),
        subject TEXT NOT NULL,
        revoked_at INTEGER NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (kind, subject)
    ) WITHOUT ROWID;
    CREATE TABLE pairings (
        code_id INTEGER PRIMARY KEY,
        record TEXT NOT NULL
    );
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        state TEXT NOT NULL,
        platform TEXT,
        address TEXT,
        capabilities TEXT NOT NULL
    );
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        capability TEXT NOT NULL,
        input_type TEXT NOT NULL,
        input BLOB NOT NULL,
        state TEXT NOT NULL,
        output_type TEXT,
        output BLOB,
        error TEXT,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        deadline INTEGER NOT NULL,
        session_call INTEGER
    );
    CREATE INDEX calls_by_node ON calls (node, id);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        node TEXT NOT NULL,
        name TEXT NOT NULL,
        content_type TEXT NOT NULL,
        body BLOB NOT NULL,
        at INTEGER NOT NULL,
        origin_session BLOB,
        origin_seq INTEGER
    );
    CREATE INDEX events_by_node ON events (node, seq);
    CREATE INDEX events_by_age ON events (at);
    CREATE UNIQUE INDEX events_origin ON events (node, origin_session, origin_seq)
        WHERE origin_session IS NOT NULL;
    CREATE TABLE journals (
        key TEXT PRIMARY KEY
    ) WITHOUT ROWID;
    CREATE TABLE journal_meta (
        key TEXT PRIMARY KEY REFERENCES journals (key) ON DELETE CASCADE,
        meta BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE journal_messages (
        key TEXT NOT NULL REFERENCES journals (key) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (key, seq)
    ) WITHOUT ROWID;
    CREATE TABLE journal_calls (
        key TEXT NOT NULL REFERENCES journals (key) ON DELETE CASCADE,
        id INTEGER NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (key, id)
    ) WITHOUT ROWID;
    CREATE TABLE journal_seen (
        key TEXT NOT NULL REFERENCES journals (key) ON DELETE CASCADE,
        slot INTEGER NOT NULL,
        call BLOB NOT NULL,
        PRIMARY KEY (key, slot)
    ) WITHOUT ROWID;
    ",
    // 2: the QUIC endpoint's keys, kept so that a restarted daemon resets its nodes'
    // dead connections instead of leaving them to time out.
    r"
    CREATE TABLE endpoint_keys (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        reset_key BLOB NOT NULL CHECK (length(reset_key) = 64),
        token_key BLOB NOT NULL CHECK (length(token_key) = 64)
    );
    ",
    // 3: who owns each node's session, and since which epoch (the same fencing as on
    // a shared PostgreSQL, so both engines pass one conformance suite).
    r"
    CREATE TABLE owners (
        node TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        since INTEGER NOT NULL
    );
    ALTER TABLE calls ADD COLUMN timed_out INTEGER;
    ALTER TABLE pairings ADD COLUMN decided INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE pairings ADD COLUMN verifier BLOB NOT NULL DEFAULT x'';
    CREATE INDEX calls_queued ON calls (id) WHERE state = 'queued' AND session_call IS NULL;
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    ",
    // 4: operator identities and the CA that signs them, and the indexes call listings
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
        fingerprint BLOB NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
        cert_der BLOB NOT NULL,
        not_after INTEGER NOT NULL,
        created INTEGER NOT NULL,
        revoked INTEGER
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

/// Settings every connection gets.
pub(crate) fn configure(conn: &Connection, busy_timeout: Duration) -> Result<(), StoreError> {
    conn.busy_timeout(busy_timeout)
        .map_err(StoreError::db("set busy timeout"))?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(StoreError::db("enable foreign keys"))?;
    // FULL: with WAL, NORMAL may lose the last commits on power loss; an acknowledged
    // write must survive.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(StoreError::db("set synchronous"))?;
    Ok(())
}

/// Switches the file to WAL and brings the schema up to date.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(StoreError::db("enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database(format!(
            "enable WAL: the database stays in {mode} mode"
        )));
    }
    let supported = supported_version();
    loop {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::db("begin migration"))?;
        let found: u32 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(StoreError::db("read schema version"))?;
        if found > supported {
            return Err(StoreError::TooNew { found, supported });
        }
        let Some(sql) = MIGRATIONS.get(found as usize) else {
            return Ok(());
        };
        tx.execute_batch(sql)
            .map_err(StoreError::db("apply migration"))?;
        tx.pragma_update(None, "user_version", found + 1)
            .map_err(StoreError::db("write schema version"))?;
        tx.commit().map_err(StoreError::db("commit migration"))?;
    }
}

/// A `u64` read from an [`enc`]oded column.
pub(crate) fn get_u64(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    row.get::<_, i64>(idx).map(dec)
}
