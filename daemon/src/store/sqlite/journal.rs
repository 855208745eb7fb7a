//! Session journals (`SESSION.md`, "Durability"): the ops of each session's batches,
//! applied in order under the batch's key, read back as a [`MemJournal`] to restore from.
//!
//! Seqs and call ids are columns (ops address rows by them, `Trim` deletes a range);
//! the records themselves (`JournalMeta`, `CallRecord`, `SeenCall`) are postcard blobs:
//! the protocol's own encoding of its own serde types, replaced and read whole, never
//! queried by field. A change of their shape is a schema migration.
//!
//! Applying mirrors [`MemJournal::apply`] exactly, the reference a store is checked
//! against: `Clear` keeps the meta row, a `PutSeen` outside the call window is ignored,
//! and `Trim { through: u64::MAX }` keeps a message at `u64::MAX` (the reference trims
//! below `through + 1`, saturating; a session never sends seqs near it).

use rusqlite::{Connection, params};
use transport_tokio::journal::Batch;

use protocol_core::session::{
    CALL_WINDOW, CallRecord, JournalMeta, MemJournal, OwnedJournalOp, SeenCall,
};

use crate::store::StoreError;
use crate::store::encode::{blob, check_key, dec, enc, unblob};

/// Applies one session's batch, in order.
pub(crate) fn apply(conn: &Connection, batch: &Batch) -> Result<(), StoreError> {
    let key: &str = &batch.key;
    check_key(key)?;
    let db = StoreError::db;
    conn.prepare_cached("INSERT OR IGNORE INTO journals (key) VALUES (?1)")
        .and_then(|mut s| s.execute([key]))
        .map_err(db("register a journal"))?;
    for op in &batch.ops {
        match op {
            OwnedJournalOp::Clear => {
                for table in ["journal_messages", "journal_calls", "journal_seen"] {
                    conn.prepare_cached(&format!("DELETE FROM {table} WHERE key = ?1"))
                        .and_then(|mut s| s.execute([key]))
                        .map_err(db("clear a journal"))?;
                }
            }
            OwnedJournalOp::Trim { through } => {
                conn.prepare_cached("DELETE FROM journal_messages WHERE key = ?1 AND seq < ?2")
                    .and_then(|mut s| s.execute(params![key, enc(through.saturating_add(1))]))
                    .map_err(db("trim a journal"))?;
            }
            OwnedJournalOp::Append { seq, body } => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO journal_messages (key, seq, body) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![key, enc(*seq), body]))
                .map_err(db("append to a journal"))?;
            }
            OwnedJournalOp::PutCall(rec) => {
                let record = blob("call record", rec)?;
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO journal_calls (key, id, record) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![key, enc(rec.id), record]))
                .map_err(db("store a journaled call"))?;
            }
            OwnedJournalOp::RemoveCall(id) => {
                conn.prepare_cached("DELETE FROM journal_calls WHERE key = ?1 AND id = ?2")
                    .and_then(|mut s| s.execute(params![key, enc(*id)]))
                    .map_err(db("remove a journaled call"))?;
            }
            OwnedJournalOp::PutSeen { slot, call } => {
                if usize::from(*slot) >= CALL_WINDOW {
                    continue;
                }
                let call = blob("call-window entry", call)?;
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO journal_seen (key, slot, call) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![key, slot, call]))
                .map_err(db("store a call-window entry"))?;
            }
            OwnedJournalOp::Meta(meta) => {
                let meta = blob("journal meta", meta)?;
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO journal_meta (key, meta) VALUES (?1, ?2)",
                )
                .and_then(|mut s| s.execute(params![key, meta]))
                .map_err(db("store journal positions"))?;
            }
        }
    }
    Ok(())
}

/// Forgets a journal entirely (rows cascade from the `journals` row).
pub(crate) fn drop_journal(conn: &Connection, key: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM journals WHERE key = ?1")
        .and_then(|mut s| s.execute([key]))
        .map_err(StoreError::db("drop a journal"))?;
    Ok(())
}

/// Reads one journal back; call inside one read transaction for a consistent picture.
pub(crate) fn load(conn: &Connection, key: &str) -> Result<MemJournal, StoreError> {
    let db = StoreError::db;
    let mut journal = MemJournal::new();
    let metas: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT meta FROM journal_meta WHERE key = ?1")
        .and_then(|mut s| s.query_map([key], |r| r.get(0))?.collect())
        .map_err(db("read journal positions"))?;
    for meta in metas {
        let meta: JournalMeta = unblob("meta", key, &meta)?;
        journal.apply_owned(&OwnedJournalOp::Meta(meta));
    }

    let mut stmt = conn
        .prepare_cached("SELECT seq, body FROM journal_messages WHERE key = ?1 ORDER BY seq")
        .map_err(db("read journal messages"))?;
    let mut rows = stmt.query([key]).map_err(db("read journal messages"))?;
    while let Some(r) = rows.next().map_err(db("read journal messages"))? {
        let seq = dec(r.get(0).map_err(db("read journal messages"))?);
        let body: Vec<u8> = r.get(1).map_err(db("read journal messages"))?;
        journal.apply_owned(&OwnedJournalOp::Append { seq, body });
    }

    let calls: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT id, record FROM journal_calls WHERE key = ?1 ORDER BY id")
        .and_then(|mut s| {
            s.query_map([key], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(db("read journaled calls"))?;
    for (id, record) in calls {
        let rec: CallRecord = unblob("call", key, &record)?;
        if rec.id != dec(id) {
            return Err(StoreError::Corrupt(format!(
                "journal {key:?}: call row {} holds call {}",
                dec(id),
                rec.id
            )));
        }
        journal.apply_owned(&OwnedJournalOp::PutCall(rec));
    }

    let seen: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT slot, call FROM journal_seen WHERE key = ?1 ORDER BY slot")
        .and_then(|mut s| {
            s.query_map([key], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(db("read the call window"))?;
    for (slot, call) in seen {
        let slot = u8::try_from(slot)
            .ok()
            .filter(|s| usize::from(*s) < CALL_WINDOW)
            .ok_or_else(|| StoreError::Corrupt(format!("journal {key:?}: window slot {slot}")))?;
        let call: SeenCall = unblob("call-window entry", key, &call)?;
        journal.apply_owned(&OwnedJournalOp::PutSeen { slot, call });
    }
    Ok(journal)
}

/// Keys of every stored journal, sorted.
pub(crate) fn keys(conn: &Connection) -> Result<Vec<String>, StoreError> {
    conn.prepare_cached("SELECT key FROM journals ORDER BY key")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(StoreError::db("list journals"))
}
