//! Writes as SQL: each [`Write`] becomes one or more statements, prepared once on the
//! writer's connection, and a submission's statements are sent together (pipelined:
//! one round trip, not one per statement) and checked in order afterwards.
//!
//! Event seqs come from a counter row updated in the same statement as the insert. Its
//! row lock is held until the group commits, so groups of different daemons take seqs
//! one after the other and commit in seq order: a reader following `seq > n` never
//! sees a seq before a smaller one that commits later (a sequence would not give that).

use std::future::Future;
use std::pin::Pin;

use futures_util::future::join_all;
use protocol_core::session::{CALL_WINDOW, OwnedJournalOp};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

use super::pg;
use crate::store::encode::{
    blob, capabilities_json, check_id, check_key, enc, pairing_json, revoked_key,
};
use crate::store::{Receipt, RetentionPolicy, StoreError, Write};

type Param = Box<dyn ToSql + Sync + Send>;

/// What a statement's answer means.
#[derive(Debug)]
enum Expect {
    /// Anything.
    Done,
    /// At least one row back, else this `NotFound`.
    Row { what: &'static str, key: String },
    /// At least one row back, else this `Taken`.
    Created { what: &'static str, key: String },
    /// A fence: at least one row back, else the session was taken over.
    Owned { node: String, epoch: u64 },
    /// The seq of an appended event, or none for a replayed origin.
    EventSeq,
    /// Rows removed by retention.
    Pruned,
    /// The epoch a claim took.
    Epoch,
    /// The first id reserved.
    Reserved,
}

/// One statement with its parameters.
pub(crate) struct Op {
    stmt: Statement,
    params: Vec<Param>,
    expect: Expect,
    what: &'static str,
}

/// Every statement the writer runs, prepared once.
pub(crate) struct Statements {
    put_ca: Statement,
    put_server: Statement,
    put_keys: Statement,
    create_ca: Statement,
    create_server: Statement,
    create_keys: Statement,
    create_operator_ca: Statement,
    add_operator: Statement,
    revoke_operator: Statement,
    reserve: Statement,
    put_device: Statement,
    delete_device: Statement,
    renew_device: Statement,
    put_revocation: Statement,
    delete_revocation: Statement,
    put_pairing: Statement,
    create_pairing: Statement,
    delete_pairing: Statement,
    put_node: Statement,
    touch_node: Statement,
    put_call: Statement,
    update_call: Statement,
    expire_call: Statement,
    append_event: Statement,
    prune_age: Statement,
    prune_count: Statement,
    journal_register: Statement,
    journal_clear: [Statement; 3],
    journal_trim: Statement,
    journal_append: Statement,
    journal_put_call: Statement,
    journal_remove_call: Statement,
    journal_put_seen: Statement,
    journal_meta: Statement,
    drop_journal: Statement,
    claim: Statement,
    fence: Statement,
}

impl Statements {
    pub(crate) async fn prepare(c: &Client) -> Result<Self, StoreError> {
        let p = |sql: &'static str| async move {
            c.prepare(sql).await.map_err(pg("prepare a statement"))
        };
        let p2 =
            |sql: String| async move { c.prepare(&sql).await.map_err(pg("prepare a statement")) };
        const CA: (&str, &str) = (
            "INSERT INTO ca (id, cert_pem, key_pem, policy) VALUES (1, $1, $2, $3)",
            "cert_pem = excluded.cert_pem, key_pem = excluded.key_pem, policy = excluded.policy",
        );
        const SERVER: (&str, &str) = (
            "INSERT INTO server_identity (id, cert_der, cert_pem, key_pem) VALUES (1, $1, $2, $3)",
            "cert_der = excluded.cert_der, cert_pem = excluded.cert_pem,
                key_pem = excluded.key_pem",
        );
        const KEYS: (&str, &str) = (
            "INSERT INTO endpoint_keys (id, reset_key, token_key) VALUES (1, $1, $2)",
            "reset_key = excluded.reset_key, token_key = excluded.token_key",
        );
        let replace = |(insert, update): (&str, &str)| {
            format!("{insert} ON CONFLICT (id) DO UPDATE SET {update}")
        };
        let keep = |(insert, _): (&str, &str)| format!("{insert} ON CONFLICT (id) DO NOTHING");
        Ok(Self {
            put_ca: p2(replace(CA)).await?,
            put_server: p2(replace(SERVER)).await?,
            put_keys: p2(replace(KEYS)).await?,
            create_ca: p2(keep(CA)).await?,
            create_server: p2(keep(SERVER)).await?,
            create_keys: p2(keep(KEYS)).await?,
            create_operator_ca: p("INSERT INTO operator_ca (id, cert_pem, key_pem, policy)
                VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING")
            .await?,
            add_operator: p(crate::store::encode::ADD_OPERATOR).await?,
            revoke_operator: p(crate::store::encode::REVOKE_OPERATOR).await?,
            reserve: p("INSERT INTO counters (name, value) VALUES ($1, $2)
                ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value
                RETURNING value - $2 + 1")
            .await?,
            put_device: p(crate::store::encode::PUT_DEVICE).await?,
            delete_device: p("DELETE FROM devices WHERE device_id = $1").await?,
            renew_device: p(crate::store::encode::RENEW_DEVICE).await?,
            put_revocation: p(
                "INSERT INTO revocations (kind, subject, revoked_at, reason) VALUES ($1, $2, $3, $4)
                ON CONFLICT (kind, subject) DO UPDATE SET revoked_at = excluded.revoked_at,
                    reason = excluded.reason",
            )
            .await?,
            delete_revocation: p("DELETE FROM revocations WHERE kind = $1 AND subject = $2")
                .await?,
            put_pairing: p(crate::store::encode::PUT_PAIRING).await?,
            create_pairing: p(crate::store::encode::CREATE_PAIRING).await?,
            delete_pairing: p("DELETE FROM pairings WHERE code_id = $1 AND verifier = $2").await?,
            put_node: p(
                "INSERT INTO nodes (id, first_seen, last_seen, state, platform, address,
                    capabilities)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (id) DO UPDATE SET
                    first_seen = LEAST(nodes.first_seen, excluded.first_seen),
                    last_seen = excluded.last_seen, state = excluded.state,
                    platform = excluded.platform, address = excluded.address,
                    capabilities = excluded.capabilities",
            )
            .await?,
            touch_node: p("UPDATE nodes SET last_seen = GREATEST(last_seen, $2) WHERE id = $1
                RETURNING 1")
            .await?,
            put_call: p(
                "INSERT INTO calls (id, node, capability, input_type, input, state,
                    output_type, output, error, created, updated, deadline, session_call,
                    timed_out)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                ON CONFLICT (id) DO UPDATE SET node = excluded.node,
                    timed_out = excluded.timed_out,
                    capability = excluded.capability, input_type = excluded.input_type,
                    input = excluded.input, state = excluded.state,
                    output_type = excluded.output_type, output = excluded.output,
                    error = excluded.error, created = excluded.created,
                    updated = excluded.updated, deadline = excluded.deadline,
                    session_call = excluded.session_call
                WHERE NOT (excluded.state = 'timed_out'
                    AND calls.state IN ('succeeded', 'failed', 'rejected'))",
            )
            .await?,
            update_call: p(
                "UPDATE calls SET state = $2, updated = $3,
                    output_type = coalesce($4, output_type), output = coalesce($5, output),
                    error = coalesce($6, error), session_call = coalesce($7, session_call)
                WHERE id = $1 RETURNING 1",
            )
            .await?,
            expire_call: p(crate::store::encode::EXPIRE_CALL).await?,
            append_event: p(
                "WITH s AS (UPDATE counters SET value = value + 1 WHERE name = 'event_seq'
                    RETURNING value)
                INSERT INTO events (seq, node, name, content_type, body, at, origin_session,
                    origin_seq)
                SELECT s.value, $1, $2, $3, $4, $5, $6, $7 FROM s
                ON CONFLICT (node, origin_session, origin_seq)
                    WHERE origin_session IS NOT NULL DO NOTHING
                RETURNING seq",
            )
            .await?,
            prune_age: p("DELETE FROM events WHERE at < $1").await?,
            prune_count: p("DELETE FROM events WHERE seq <= (
                    SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET $1)")
            .await?,
            journal_register: p("INSERT INTO journals (key) VALUES ($1)
                ON CONFLICT (key) DO NOTHING")
            .await?,
            journal_clear: [
                p("DELETE FROM journal_messages WHERE key = $1").await?,
                p("DELETE FROM journal_calls WHERE key = $1").await?,
                p("DELETE FROM journal_seen WHERE key = $1").await?,
            ],
            journal_trim: p("DELETE FROM journal_messages WHERE key = $1 AND seq < $2").await?,
            journal_append: p("INSERT INTO journal_messages (key, seq, body) VALUES ($1, $2, $3)
                ON CONFLICT (key, seq) DO UPDATE SET body = excluded.body")
            .await?,
            journal_put_call: p("INSERT INTO journal_calls (key, id, record) VALUES ($1, $2, $3)
                ON CONFLICT (key, id) DO UPDATE SET record = excluded.record")
            .await?,
            journal_remove_call: p("DELETE FROM journal_calls WHERE key = $1 AND id = $2")
                .await?,
            journal_put_seen: p("INSERT INTO journal_seen (key, slot, call) VALUES ($1, $2, $3)
                ON CONFLICT (key, slot) DO UPDATE SET call = excluded.call")
            .await?,
            journal_meta: p("INSERT INTO journal_meta (key, meta) VALUES ($1, $2)
                ON CONFLICT (key) DO UPDATE SET meta = excluded.meta")
            .await?,
            drop_journal: p("DELETE FROM journals WHERE key = $1").await?,
            claim: p(
                "INSERT INTO owners (node, owner, epoch, since) VALUES ($1, $2, $3, $4)
                ON CONFLICT (node) DO UPDATE SET owner = excluded.owner,
                    epoch = GREATEST(owners.epoch + 1, excluded.epoch), since = excluded.since
                RETURNING epoch",
            )
            .await?,
            // The row lock it takes holds a claimer back until this group commits.
            fence: p("UPDATE owners SET epoch = epoch
                WHERE node = $1 AND owner = $2 AND epoch = $3 RETURNING 1")
            .await?,
        })
    }
}

fn op(stmt: &Statement, params: Vec<Param>, what: &'static str) -> Op {
    Op {
        stmt: stmt.clone(),
        params,
        expect: Expect::Done,
        what,
    }
}

/// The statements of one write, after the checks every engine makes.
fn ops(
    s: &Statements,
    w: &Write,
    retention: &RetentionPolicy,
    out: &mut Vec<Op>,
) -> Result<(), StoreError> {
    match w {
        Write::PutCa(ca) | Write::CreateCa(ca) | Write::CreateOperatorCa(ca) => {
            let policy = serde_json::to_string(&ca.policy)
                .map_err(|e| StoreError::Invalid(format!("CA policy does not encode: {e}")))?;
            let stmt = match w {
                Write::CreateCa(_) => &s.create_ca,
                Write::CreateOperatorCa(_) => &s.create_operator_ca,
                _ => &s.put_ca,
            };
            out.push(op(
                stmt,
                vec![
                    Box::new(ca.cert_pem.clone()),
                    Box::new(ca.key_pem.clone()),
                    Box::new(policy),
                ],
                "store the CA",
            ));
        }
        Write::AddOperator(o) => {
            crate::store::encode::check_operator(o)?;
            out.push(Op {
                expect: Expect::Created {
                    what: "operator",
                    key: o.name.clone(),
                },
                ..op(
                    &s.add_operator,
                    vec![
                        Box::new(o.name.clone()),
                        Box::new(o.role.as_str()),
                        Box::new(o.fingerprint.to_vec()),
                        Box::new(o.cert_der.clone()),
                        Box::new(enc(o.not_after_ms)),
                        Box::new(enc(o.created_ms)),
                        Box::new(o.revoked_ms.map(enc)),
                    ],
                    "add an operator",
                )
            });
        }
        Write::RevokeOperator { name, at_ms } => out.push(Op {
            expect: Expect::Row {
                what: "operator",
                key: name.clone(),
            },
            ..op(
                &s.revoke_operator,
                vec![Box::new(name.clone()), Box::new(enc(*at_ms))],
                "revoke an operator",
            )
        }),
        Write::PutServerIdentity(id) | Write::CreateServerIdentity(id) => {
            if crate::ca::Fingerprint::of(&id.cert_der) != id.fingerprint {
                return Err(StoreError::Invalid(
                    "server identity: fingerprint does not match the certificate".into(),
                ));
            }
            let stmt = match w {
                Write::CreateServerIdentity(_) => &s.create_server,
                _ => &s.put_server,
            };
            out.push(op(
                stmt,
                vec![
                    Box::new(id.cert_der.clone()),
                    Box::new(id.cert_pem.clone()),
                    Box::new(id.key_pem.clone()),
                ],
                "store the server identity",
            ));
        }
        Write::ReserveIds { counter, count } => {
            let count = i64::try_from(*count)
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| StoreError::Invalid(format!("cannot reserve {count} ids")))?;
            out.push(Op {
                expect: Expect::Reserved,
                ..op(
                    &s.reserve,
                    vec![Box::new((*counter).to_owned()), Box::new(count)],
                    "reserve ids",
                )
            });
        }
        Write::CreateEndpointKeys(keys) => out.push(op(
            &s.create_keys,
            vec![
                Box::new(keys.reset().to_vec()),
                Box::new(keys.token().to_vec()),
            ],
            "store the endpoint keys",
        )),
        Write::PutEndpointKeys(keys) => out.push(op(
            &s.put_keys,
            vec![
                Box::new(keys.reset().to_vec()),
                Box::new(keys.token().to_vec()),
            ],
            "store the endpoint keys",
        )),
        Write::PutDevice(d) | Write::RenewDevice(d) => {
            crate::store::encode::check_device(d)?;
            let stmt = match w {
                Write::RenewDevice(_) => &s.renew_device,
                _ => &s.put_device,
            };
            out.push(op(
                stmt,
                vec![
                    Box::new(d.device_id.clone()),
                    Box::new(d.fingerprint.0.to_vec()),
                    Box::new(d.cert_der.clone()),
                    Box::new(enc(d.paired_at_ms)),
                    Box::new(d.name.clone()),
                ],
                "store a device",
            ));
        }
        Write::DeleteDevice(id) => {
            out.push(op(
                &s.delete_device,
                vec![Box::new(id.clone())],
                "delete a device",
            ));
        }
        Write::PutRevocation(r) => {
            let (kind, subject) = revoked_key(&r.what);
            out.push(op(
                &s.put_revocation,
                vec![
                    Box::new(kind),
                    Box::new(subject),
                    Box::new(enc(r.revoked_at_ms)),
                    Box::new(r.reason.clone()),
                ],
                "store a revocation",
            ));
        }
        Write::DeleteRevocation(what) => {
            let (kind, subject) = revoked_key(what);
            out.push(op(
                &s.delete_revocation,
                vec![Box::new(kind), Box::new(subject)],
                "delete a revocation",
            ));
        }
        Write::CreatePairing(p) => out.push(Op {
            expect: Expect::Created {
                what: "pairing code id",
                key: format!("{:04}", p.code_id),
            },
            ..op(
                &s.create_pairing,
                vec![
                    Box::new(i32::from(p.code_id)),
                    Box::new(pairing_json(p)?),
                    Box::new(crate::store::encode::pairing_decided(p)),
                    Box::new(p.verifier_record.clone()),
                ],
                "create a pairing",
            )
        }),
        Write::PutPairing(p) => out.push(op(
            &s.put_pairing,
            vec![
                Box::new(i32::from(p.code_id)),
                Box::new(pairing_json(p)?),
                Box::new(crate::store::encode::pairing_decided(p)),
                Box::new(p.verifier_record.clone()),
            ],
            "store a pairing",
        )),
        Write::DeletePairing { code_id, verifier } => out.push(op(
            &s.delete_pairing,
            vec![Box::new(i32::from(*code_id)), Box::new(verifier.clone())],
            "delete a pairing",
        )),
        Write::PutNode(n) => {
            check_id(&n.id)?;
            out.push(op(
                &s.put_node,
                vec![
                    Box::new(n.id.clone()),
                    Box::new(enc(n.first_seen_ms)),
                    Box::new(enc(n.last_seen_ms)),
                    Box::new(crate::store::encode::node_state(n.online)),
                    Box::new(n.platform.clone()),
                    Box::new(n.address.clone()),
                    Box::new(capabilities_json(&n.capabilities)?),
                ],
                "store a node",
            ));
        }
        Write::TouchNode { id, last_seen_ms } => out.push(Op {
            expect: Expect::Row {
                what: "node",
                key: id.clone(),
            },
            ..op(
                &s.touch_node,
                vec![Box::new(id.clone()), Box::new(enc(*last_seen_ms))],
                "touch a node",
            )
        }),
        Write::PutCall(c) => {
            check_id(&c.node)?;
            let (out_type, output) = match &c.output {
                Some(p) => (Some(p.content_type.clone()), Some(p.bytes.clone())),
                None => (None, None),
            };
            out.push(op(
                &s.put_call,
                vec![
                    Box::new(enc(c.id)),
                    Box::new(c.node.clone()),
                    Box::new(c.capability.clone()),
                    Box::new(c.input.content_type.clone()),
                    Box::new(c.input.bytes.clone()),
                    Box::new(c.state.as_str()),
                    Box::new(out_type),
                    Box::new(output),
                    Box::new(c.error.clone()),
                    Box::new(enc(c.created_ms)),
                    Box::new(enc(c.updated_ms)),
                    Box::new(enc(c.deadline_ms)),
                    Box::new(c.session_call.map(enc)),
                    Box::new(c.timed_out_ms.map(enc)),
                ],
                "store a call",
            ));
        }
        Write::UpdateCall(u) => {
            let (out_type, output) = match &u.output {
                Some(p) => (Some(p.content_type.clone()), Some(p.bytes.clone())),
                None => (None, None),
            };
            out.push(Op {
                expect: Expect::Row {
                    what: "call",
                    key: u.id.to_string(),
                },
                ..op(
                    &s.update_call,
                    vec![
                        Box::new(enc(u.id)),
                        Box::new(u.state.as_str()),
                        Box::new(enc(u.updated_ms)),
                        Box::new(out_type),
                        Box::new(output),
                        Box::new(u.error.clone()),
                        Box::new(u.session_call.map(enc)),
                    ],
                    "update a call",
                )
            });
        }
        Write::ExpireCall { id, at_ms } => out.push(op(
            &s.expire_call,
            vec![Box::new(enc(*id)), Box::new(enc(*at_ms))],
            "expire a call",
        )),
        Write::AppendEvent(e) => {
            check_id(&e.node)?;
            let (session, origin_seq) = match e.origin {
                Some(o) => (Some(o.session.to_vec()), Some(enc(o.stream_seq))),
                None => (None, None),
            };
            out.push(Op {
                expect: Expect::EventSeq,
                ..op(
                    &s.append_event,
                    vec![
                        Box::new(e.node.clone()),
                        Box::new(e.name.clone()),
                        Box::new(e.content_type.clone()),
                        Box::new(e.body.clone()),
                        Box::new(enc(e.at_ms)),
                        Box::new(session),
                        Box::new(origin_seq),
                    ],
                    "append an event",
                )
            });
        }
        Write::PruneEvents { now_ms } => {
            if let Some(age) = retention.max_age_ms {
                out.push(Op {
                    expect: Expect::Pruned,
                    ..op(
                        &s.prune_age,
                        vec![Box::new(enc(now_ms.saturating_sub(age)))],
                        "prune events by age",
                    )
                });
            }
            if let Some(max) = retention.max_events {
                out.push(Op {
                    expect: Expect::Pruned,
                    ..op(
                        &s.prune_count,
                        vec![Box::new(i64::try_from(max).unwrap_or(i64::MAX))],
                        "prune events by count",
                    )
                });
            }
        }
        Write::Journal(batch) => journal_ops(s, &batch.key, &batch.ops, out)?,
        Write::DropJournal(key) => {
            out.push(op(
                &s.drop_journal,
                vec![Box::new(key.clone())],
                "drop a journal",
            ));
        }
        Write::ClaimSession {
            node,
            owner,
            epoch,
            at_ms,
        } => {
            check_id(node)?;
            out.push(Op {
                expect: Expect::Epoch,
                ..op(
                    &s.claim,
                    vec![
                        Box::new(node.clone()),
                        Box::new(owner.clone()),
                        Box::new(enc_epoch((*epoch).max(1))?),
                        Box::new(enc(*at_ms)),
                    ],
                    "claim a session",
                )
            });
        }
        Write::Fence { node, owner, epoch } => out.push(Op {
            expect: Expect::Owned {
                node: node.clone(),
                epoch: *epoch,
            },
            ..op(
                &s.fence,
                vec![
                    Box::new(node.clone()),
                    Box::new(owner.clone()),
                    Box::new(enc_epoch(*epoch)?),
                ],
                "check session ownership",
            )
        }),
    }
    Ok(())
}

/// Epochs are counted from 1 and stored as they are (never near `i64::MAX`).
fn enc_epoch(epoch: u64) -> Result<i64, StoreError> {
    i64::try_from(epoch).map_err(|_| StoreError::Invalid(format!("epoch {epoch} out of range")))
}

fn journal_ops(
    s: &Statements,
    key: &str,
    batch: &[OwnedJournalOp],
    out: &mut Vec<Op>,
) -> Result<(), StoreError> {
    check_key(key)?;
    let k = || -> Param { Box::new(key.to_owned()) };
    out.push(op(&s.journal_register, vec![k()], "register a journal"));
    for o in batch {
        match o {
            OwnedJournalOp::Clear => {
                for stmt in &s.journal_clear {
                    out.push(op(stmt, vec![k()], "clear a journal"));
                }
            }
            OwnedJournalOp::Trim { through } => out.push(op(
                &s.journal_trim,
                vec![k(), Box::new(enc(through.saturating_add(1)))],
                "trim a journal",
            )),
            OwnedJournalOp::Append { seq, body } => out.push(op(
                &s.journal_append,
                vec![k(), Box::new(enc(*seq)), Box::new(body.clone())],
                "append to a journal",
            )),
            OwnedJournalOp::PutCall(rec) => out.push(op(
                &s.journal_put_call,
                vec![
                    k(),
                    Box::new(enc(rec.id)),
                    Box::new(blob("call record", rec)?),
                ],
                "store a journaled call",
            )),
            OwnedJournalOp::RemoveCall(id) => out.push(op(
                &s.journal_remove_call,
                vec![k(), Box::new(enc(*id))],
                "remove a journaled call",
            )),
            OwnedJournalOp::PutSeen { slot, call } => {
                if usize::from(*slot) >= CALL_WINDOW {
                    continue;
                }
                out.push(op(
                    &s.journal_put_seen,
                    vec![
                        k(),
                        Box::new(i32::from(*slot)),
                        Box::new(blob("call-window entry", call)?),
                    ],
                    "store a call-window entry",
                ));
            }
            OwnedJournalOp::Meta(meta) => out.push(op(
                &s.journal_meta,
                vec![k(), Box::new(blob("journal meta", meta)?)],
                "store journal positions",
            )),
        }
    }
    Ok(())
}

type OpFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Answer, tokio_postgres::Error>> + Send + 'a>>;

enum Answer {
    Rows(Vec<tokio_postgres::Row>),
    Count(u64),
}

/// A submission's statements, after the checks every engine makes.
pub(crate) fn prepare(
    s: &Statements,
    writes: &[Write],
    retention: &RetentionPolicy,
) -> Result<Vec<Op>, StoreError> {
    let mut list = Vec::new();
    for w in writes {
        ops(s, w, retention, &mut list)?;
    }
    Ok(list)
}

/// Sends every statement of `lists` at once (one pipeline, in order) and answers each
/// list: what it produced, or why it was refused.
pub(crate) async fn run(tx: &Transaction<'_>, lists: &[&[Op]]) -> Vec<Result<Receipt, StoreError>> {
    let futures: Vec<OpFuture<'_>> = lists
        .iter()
        .flat_map(|l| l.iter())
        .map(|o| {
            let params: Vec<&(dyn ToSql + Sync)> = o
                .params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let counted = matches!(o.expect, Expect::Pruned | Expect::Done);
            let stmt = &o.stmt;
            Box::pin(async move {
                if counted {
                    tx.execute(stmt, &params).await.map(Answer::Count)
                } else {
                    tx.query(stmt, &params).await.map(Answer::Rows)
                }
            }) as OpFuture<'_>
        })
        .collect();
    let mut answers = join_all(futures).await.into_iter();
    lists
        .iter()
        .map(|l| {
            let mine: Vec<_> = answers.by_ref().take(l.len()).collect();
            check(l, mine)
        })
        .collect()
}

/// Applies one submission inside `tx`. On `Err` the submission's statements may have
/// partly applied: the caller rolls back to its savepoint.
pub(crate) async fn apply(
    tx: &Transaction<'_>,
    s: &Statements,
    writes: &[Write],
    retention: &RetentionPolicy,
) -> Result<Receipt, StoreError> {
    let list = prepare(s, writes, retention)?;
    run(tx, &[&list])
        .await
        .pop()
        .unwrap_or(Err(StoreError::Closed))
}

/// What one submission's answers say, in order.
fn check(
    list: &[Op],
    answers: Vec<Result<Answer, tokio_postgres::Error>>,
) -> Result<Receipt, StoreError> {
    let mut receipt = Receipt::default();
    for (o, answer) in list.iter().zip(answers) {
        let answer = answer.map_err(pg(o.what))?;
        match (&o.expect, answer) {
            (Expect::Done, _) => {}
            (Expect::Row { what, key }, Answer::Rows(rows)) if rows.is_empty() => {
                return Err(StoreError::NotFound {
                    what,
                    key: key.clone(),
                });
            }
            (Expect::Created { what, key }, Answer::Rows(rows)) if rows.is_empty() => {
                return Err(StoreError::Taken {
                    what,
                    key: key.clone(),
                });
            }
            (Expect::Owned { node, epoch }, Answer::Rows(rows)) if rows.is_empty() => {
                return Err(StoreError::Fenced {
                    node: node.clone(),
                    epoch: *epoch,
                });
            }
            (Expect::EventSeq, Answer::Rows(rows)) => {
                let seq = match rows.first() {
                    Some(r) => {
                        let seq: i64 = r.get(0);
                        Some(u64::try_from(seq).map_err(|_| {
                            StoreError::Corrupt(format!("event seq {seq} is negative"))
                        })?)
                    }
                    None => None,
                };
                receipt.events.push(seq);
            }
            (Expect::Pruned, Answer::Count(n)) => receipt.pruned += n,
            (Expect::Reserved, Answer::Rows(rows)) => {
                let first: i64 = rows.first().map_or(0, |r| r.get(0));
                receipt.reserved.push(u64::try_from(first).unwrap_or(0));
            }
            (Expect::Epoch, Answer::Rows(rows)) => {
                let epoch: i64 = rows.first().map_or(0, |r| r.get(0));
                receipt.epochs.push(u64::try_from(epoch).unwrap_or(0));
            }
            _ => {}
        }
    }
    Ok(receipt)
}
