//! Reads: short, indexed queries on a pooled connection; a journal is read in one
//! repeatable-read snapshot so its tables agree with each other.

use deadpool_postgres::Object;
use protocol_core::session::{
    CALL_WINDOW, CallRecord, JournalMeta, MemJournal, OwnedJournalOp, SeenCall,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use transport_tokio::quic::{ENDPOINT_KEY_LEN, EndpointKeys};

use super::pg;
use crate::ca::{Fingerprint, ServerIdentity, StoredCa};
use crate::pairing::PairingRecord;
use crate::revocation::RevocationRecord;
use crate::store::encode::{
    ListParam, OPERATOR_COLUMNS, QUEUED_CALLS, call_listing, call_state_from, capabilities_from,
    dec, enc, node_online, operator_from, pairing_from, revoked_from, unblob,
};
use crate::store::{
    Call, CallFilter, Device, EventOrigin, NewEvent, Node, Operator, Payload, StoreError,
    StoredEvent,
};

async fn rows(
    c: &Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    what: &'static str,
) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg(what))?;
    c.query(&stmt, params).await.map_err(pg(what))
}

fn u(r: &Row, i: usize) -> u64 {
    dec(r.get::<_, i64>(i))
}

/// The table of the CA that signs devices and the server, and of the one that signs
/// operator identities.
pub(crate) const CA: &str = "ca";
pub(crate) const OPERATOR_CA: &str = "operator_ca";

pub(crate) async fn ca(c: &Object, table: &str) -> Result<Option<StoredCa>, StoreError> {
    let found = rows(
        c,
        &format!("SELECT cert_pem, key_pem, policy FROM {table} WHERE id = 1"),
        &[],
        "read the CA",
    )
    .await?;
    found
        .first()
        .map(|r| {
            let policy: String = r.get(2);
            let policy = serde_json::from_str(&policy)
                .map_err(|e| StoreError::Corrupt(format!("stored CA policy: {e}")))?;
            Ok(StoredCa {
                cert_pem: r.get(0),
                key_pem: r.get(1),
                policy,
            })
        })
        .transpose()
}

pub(crate) async fn server(c: &Object) -> Result<Option<ServerIdentity>, StoreError> {
    let found = rows(
        c,
        "SELECT cert_der, cert_pem, key_pem FROM server_identity WHERE id = 1",
        &[],
        "read the server identity",
    )
    .await?;
    Ok(found.first().map(|r| {
        let cert_der: Vec<u8> = r.get(0);
        ServerIdentity {
            fingerprint: Fingerprint::of(&cert_der),
            cert_der,
            cert_pem: r.get(1),
            key_pem: r.get(2),
        }
    }))
}

pub(crate) async fn endpoint_keys(c: &Object) -> Result<Option<EndpointKeys>, StoreError> {
    let found = rows(
        c,
        "SELECT reset_key, token_key FROM endpoint_keys WHERE id = 1",
        &[],
        "read the endpoint keys",
    )
    .await?;
    found
        .first()
        .map(|r| {
            let key = |k: Vec<u8>| {
                <[u8; ENDPOINT_KEY_LEN]>::try_from(k)
                    .map_err(|_| StoreError::Corrupt("endpoint key of the wrong length".into()))
            };
            Ok(EndpointKeys::new(key(r.get(0))?, key(r.get(1))?))
        })
        .transpose()
}

/// Which devices.
pub(crate) enum DeviceKey<'a> {
    All,
    Id(&'a str),
    Fingerprint(&'a Fingerprint),
}

pub(crate) async fn devices(c: &Object, key: DeviceKey<'_>) -> Result<Vec<Device>, StoreError> {
    const COLS: &str = "SELECT device_id, fingerprint, cert_der, paired_at, name FROM devices";
    let found = match key {
        DeviceKey::All => {
            rows(
                c,
                &format!("{COLS} ORDER BY device_id"),
                &[],
                "list devices",
            )
            .await?
        }
        DeviceKey::Id(id) => {
            rows(
                c,
                &format!("{COLS} WHERE device_id = $1"),
                &[&id],
                "read a device",
            )
            .await?
        }
        DeviceKey::Fingerprint(fp) => {
            let fp = fp.0.to_vec();
            rows(
                c,
                &format!("{COLS} WHERE fingerprint = $1"),
                &[&fp],
                "read a device",
            )
            .await?
        }
    };
    found
        .iter()
        .map(|r| {
            let fp: Vec<u8> = r.get(1);
            Ok(Device {
                device_id: r.get(0),
                fingerprint: Fingerprint(
                    fp.try_into()
                        .map_err(|_| StoreError::Corrupt("device fingerprint length".into()))?,
                ),
                cert_der: r.get(2),
                paired_at_ms: u(r, 3),
                name: r.get(4),
            })
        })
        .collect()
}

pub(crate) async fn revocations(c: &Object) -> Result<Vec<RevocationRecord>, StoreError> {
    let found = rows(
        c,
        "SELECT kind, subject, revoked_at, reason FROM revocations
         ORDER BY revoked_at, kind, subject",
        &[],
        "list revocations",
    )
    .await?;
    found
        .iter()
        .map(|r| {
            let kind: String = r.get(0);
            Ok(RevocationRecord {
                what: revoked_from(&kind, r.get(1))?,
                revoked_at_ms: u(r, 2),
                reason: r.get(3),
            })
        })
        .collect()
}

pub(crate) async fn pairings(c: &Object) -> Result<Vec<PairingRecord>, StoreError> {
    let found = rows(
        c,
        "SELECT code_id, record FROM pairings ORDER BY code_id",
        &[],
        "list pairings",
    )
    .await?;
    found
        .iter()
        .map(|r| {
            let code_id: i32 = r.get(0);
            let code_id = u16::try_from(code_id)
                .map_err(|_| StoreError::Corrupt(format!("pairing code id {code_id}")))?;
            pairing_from(code_id, r.get(1))
        })
        .collect()
}

/// Which nodes.
pub(crate) enum NodeKey<'a> {
    All,
    Id(&'a str),
    SeenSince(u64),
}

pub(crate) async fn nodes(c: &Object, key: NodeKey<'_>) -> Result<Vec<Node>, StoreError> {
    const COLS: &str =
        "SELECT id, first_seen, last_seen, state, platform, address, capabilities FROM nodes";
    let found = match key {
        NodeKey::Id(id) => rows(c, &format!("{COLS} WHERE id = $1"), &[&id], "read a node").await?,
        NodeKey::All => rows(c, &format!("{COLS} ORDER BY id"), &[], "list nodes").await?,
        NodeKey::SeenSince(ms) => {
            rows(
                c,
                &format!("{COLS} WHERE last_seen >= $1 ORDER BY id"),
                &[&enc(ms)],
                "list nodes seen lately",
            )
            .await?
        }
    };
    found
        .iter()
        .map(|r| {
            let id: String = r.get(0);
            let caps: &str = r.get(6);
            Ok(Node {
                capabilities: capabilities_from(&id, caps)?,
                id,
                first_seen_ms: u(r, 1),
                last_seen_ms: u(r, 2),
                online: node_online(r.get(3)),
                platform: r.get(4),
                address: r.get(5),
            })
        })
        .collect()
}

pub(crate) async fn nodes_since(c: &Object, since_ms: u64) -> Result<Vec<Node>, StoreError> {
    nodes(c, NodeKey::SeenSince(since_ms)).await
}

pub(crate) async fn claims_since(
    c: &Object,
    since_ms: u64,
) -> Result<Vec<(String, String, u64)>, StoreError> {
    rows(
        c,
        "SELECT node, owner, epoch FROM owners WHERE since >= $1",
        &[&enc(since_ms)],
        "list recent claims",
    )
    .await?
    .iter()
    .map(|r| {
        let epoch: i64 = r.get(2);
        u64::try_from(epoch)
            .map(|e| (r.get(0), r.get(1), e))
            .map_err(|_| StoreError::Corrupt(format!("epoch {epoch}")))
    })
    .collect()
}

/// Which operators.
pub(crate) enum OperatorKey<'a> {
    All,
    Fingerprint(&'a [u8; 32]),
}

pub(crate) async fn operators(
    c: &Object,
    key: OperatorKey<'_>,
) -> Result<Vec<Operator>, StoreError> {
    let found = match key {
        OperatorKey::All => {
            rows(
                c,
                &format!("{OPERATOR_COLUMNS} ORDER BY name"),
                &[],
                "list operators",
            )
            .await?
        }
        OperatorKey::Fingerprint(fp) => {
            let fp = fp.to_vec();
            rows(
                c,
                &format!("{OPERATOR_COLUMNS} WHERE fingerprint = $1"),
                &[&fp],
                "read an operator",
            )
            .await?
        }
    };
    let mut list = found
        .iter()
        .map(|r| {
            operator_from(
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    // By bytes, as SQLite orders: the database's collation may order names otherwise.
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(list)
}

/// Which calls.
pub(crate) enum CallKey<'a> {
    Id(u64),
    Node(&'a str),
    Queued,
    Filter(&'a CallFilter),
}

pub(crate) async fn calls(c: &Object, key: CallKey<'_>) -> Result<Vec<Call>, StoreError> {
    const COLS: &str = "SELECT id, node, capability, input_type, input, state, output_type,
        output, error, created, updated, deadline, session_call, timed_out FROM calls";
    let found = match key {
        CallKey::Filter(filter) => {
            let (sql, params) = call_listing(filter);
            let params: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| match p {
                    ListParam::Text(t) => t as &(dyn ToSql + Sync),
                    ListParam::Int(i) => i,
                })
                .collect();
            rows(c, &format!("{COLS} {sql}"), &params, "list calls").await?
        }
        CallKey::Id(id) => {
            rows(
                c,
                &format!("{COLS} WHERE id = $1"),
                &[&enc(id)],
                "read a call",
            )
            .await?
        }
        CallKey::Queued => {
            rows(
                c,
                &format!("{COLS} {QUEUED_CALLS}"),
                &[],
                "list queued calls",
            )
            .await?
        }
        CallKey::Node(node) => {
            rows(
                c,
                &format!("{COLS} WHERE node = $1 ORDER BY id"),
                &[&node],
                "list calls",
            )
            .await?
        }
    };
    found
        .iter()
        .map(|r| {
            let id = u(r, 0);
            let output = match (
                r.get::<_, Option<String>>(6),
                r.get::<_, Option<Vec<u8>>>(7),
            ) {
                (Some(content_type), Some(bytes)) => Some(Payload {
                    content_type,
                    bytes,
                }),
                _ => None,
            };
            Ok(Call {
                id,
                node: r.get(1),
                capability: r.get(2),
                input: Payload {
                    content_type: r.get(3),
                    bytes: r.get(4),
                },
                state: call_state_from(id, r.get(5))?,
                output,
                error: r.get(8),
                created_ms: u(r, 9),
                updated_ms: u(r, 10),
                deadline_ms: u(r, 11),
                session_call: r.get::<_, Option<i64>>(12).map(dec),
                timed_out_ms: r.get::<_, Option<i64>>(13).map(dec),
            })
        })
        .collect()
}

pub(crate) async fn events_after(
    c: &Object,
    after: u64,
    node: Option<&str>,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    const COLS: &str = "SELECT seq, node, name, content_type, body, at, origin_session,
        origin_seq FROM events";
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let found = match node {
        Some(node) => {
            rows(
                c,
                &format!("{COLS} WHERE node = $1 AND seq > $2 ORDER BY seq LIMIT $3"),
                &[&node, &after, &limit],
                "read events",
            )
            .await?
        }
        None => {
            rows(
                c,
                &format!("{COLS} WHERE seq > $1 ORDER BY seq LIMIT $2"),
                &[&after, &limit],
                "read events",
            )
            .await?
        }
    };
    found
        .iter()
        .map(|r| {
            let origin = match (r.get::<_, Option<Vec<u8>>>(6), r.get::<_, Option<i64>>(7)) {
                (Some(session), Some(seq)) => Some(EventOrigin {
                    session: session
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("event origin session length".into()))?,
                    stream_seq: dec(seq),
                }),
                _ => None,
            };
            let seq: i64 = r.get(0);
            Ok(StoredEvent {
                seq: u64::try_from(seq).unwrap_or(0),
                event: NewEvent {
                    node: r.get(1),
                    name: r.get(2),
                    content_type: r.get(3),
                    body: r.get(4),
                    at_ms: u(r, 5),
                    origin,
                },
            })
        })
        .collect()
}

pub(crate) async fn journal(c: &mut Object, key: &str) -> Result<MemJournal, StoreError> {
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg("begin a journal read"))?;
    let q = |sql: &'static str| {
        let tx = &tx;
        async move { tx.query(sql, &[&key]).await }
    };
    let (metas, messages, calls, seen) = futures_util::future::join4(
        q("SELECT meta FROM journal_meta WHERE key = $1"),
        q("SELECT seq, body FROM journal_messages WHERE key = $1 ORDER BY seq"),
        q("SELECT id, record FROM journal_calls WHERE key = $1 ORDER BY id"),
        q("SELECT slot, call FROM journal_seen WHERE key = $1 ORDER BY slot"),
    )
    .await;
    let mut journal = MemJournal::new();
    for r in metas.map_err(pg("read journal positions"))? {
        let meta: JournalMeta = unblob("meta", key, r.get::<_, &[u8]>(0))?;
        journal.apply_owned(&OwnedJournalOp::Meta(meta));
    }
    for r in messages.map_err(pg("read journal messages"))? {
        journal.apply_owned(&OwnedJournalOp::Append {
            seq: u(&r, 0),
            body: r.get(1),
        });
    }
    for r in calls.map_err(pg("read journaled calls"))? {
        let id = u(&r, 0);
        let rec: CallRecord = unblob("call", key, r.get::<_, &[u8]>(1))?;
        if rec.id != id {
            return Err(StoreError::Corrupt(format!(
                "journal {key:?}: call row {id} holds call {}",
                rec.id
            )));
        }
        journal.apply_owned(&OwnedJournalOp::PutCall(rec));
    }
    for r in seen.map_err(pg("read the call window"))? {
        let slot: i32 = r.get(0);
        let slot = u8::try_from(slot)
            .ok()
            .filter(|s| usize::from(*s) < CALL_WINDOW)
            .ok_or_else(|| StoreError::Corrupt(format!("journal {key:?}: window slot {slot}")))?;
        let call: SeenCall = unblob("call-window entry", key, r.get::<_, &[u8]>(1))?;
        journal.apply_owned(&OwnedJournalOp::PutSeen { slot, call });
    }
    tx.commit().await.map_err(pg("end a journal read"))?;
    Ok(journal)
}

/// Claims `node` for `owner` in one statement (committed on return).
pub(crate) async fn claim(
    c: &Object,
    node: &str,
    owner: &str,
    at_ms: u64,
) -> Result<u64, StoreError> {
    let found = rows(
        c,
        "INSERT INTO owners (node, owner, epoch, since) VALUES ($1, $2, 1, $3)
         ON CONFLICT (node) DO UPDATE SET owner = excluded.owner,
             epoch = owners.epoch + 1, since = excluded.since
         RETURNING epoch",
        &[&node, &owner, &enc(at_ms)],
        "claim a session",
    )
    .await?;
    let epoch: i64 = found.first().map_or(0, |r| r.get(0));
    u64::try_from(epoch).map_err(|_| StoreError::Corrupt(format!("epoch {epoch} of {node}")))
}

pub(crate) async fn owned_by(c: &Object, owner: &str) -> Result<Vec<(String, u64)>, StoreError> {
    rows(
        c,
        "SELECT node, epoch FROM owners WHERE owner = $1 ORDER BY node",
        &[&owner],
        "list owned sessions",
    )
    .await?
    .iter()
    .map(|r| {
        let epoch: i64 = r.get(1);
        u64::try_from(epoch)
            .map(|e| (r.get(0), e))
            .map_err(|_| StoreError::Corrupt(format!("epoch {epoch}")))
    })
    .collect()
}

pub(crate) async fn journal_keys(c: &Object) -> Result<Vec<String>, StoreError> {
    Ok(rows(
        c,
        "SELECT key FROM journals ORDER BY key",
        &[],
        "list journals",
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}
