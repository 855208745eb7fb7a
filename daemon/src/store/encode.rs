//! How values are checked and encoded before any engine stores them, so SQLite and
//! PostgreSQL refuse the same writes and read back the same values.
//!
//! Both engines store integers as signed 64-bit; protocol numbers (seqs, call ids,
//! timestamps) are `u64` up to `u64::MAX`. `enc` maps a `u64` to the `i64` with the
//! top bit flipped, which is lossless *and* order-preserving, so `ORDER BY` and range
//! deletes (`Trim`, retention) stay correct for values at and above 2^63.

use super::StoreError;
use crate::ca::Fingerprint;
use crate::model::{CallFilter, CallStatus, Capability, Operator, OperatorRole};
use crate::pairing::PairingRecord;
use crate::revocation::Revoked;

/// Stores a device (parameters: id, fingerprint, certificate, paired at, name), in both
/// engines' SQL.
pub(crate) const PUT_DEVICE: &str = "INSERT INTO devices (device_id, fingerprint, cert_der,
    paired_at, name) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (device_id) DO UPDATE SET fingerprint = excluded.fingerprint,
        cert_der = excluded.cert_der, paired_at = excluded.paired_at, name = excluded.name";

/// A renewed certificate: a stored device keeps its `paired_at` and name.
pub(crate) const RENEW_DEVICE: &str = "INSERT INTO devices (device_id, fingerprint, cert_der,
    paired_at, name) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (device_id) DO UPDATE SET fingerprint = excluded.fingerprint,
        cert_der = excluded.cert_der";

/// Ends a call no node took (parameters: id, time), in both engines' SQL.
pub(crate) const EXPIRE_CALL: &str = "UPDATE calls SET state = 'timed_out', updated = $2,
    error = 'deadline passed before any daemon holding the node took the call'
    WHERE id = $1 AND state = 'queued' AND session_call IS NULL";

/// The calls waiting for whichever daemon holds their node, in both engines' SQL.
pub(crate) const QUEUED_CALLS: &str = "WHERE state = 'queued' AND session_call IS NULL ORDER BY id";

/// Longest node id the store accepts.
pub const MAX_NODE_ID_LEN: usize = 255;

pub(crate) fn check_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
        return Err(StoreError::Invalid(format!(
            "node id must be 1 to {MAX_NODE_ID_LEN} bytes, got {}",
            id.len()
        )));
    }
    Ok(())
}

/// Longest journal key (a node id on the daemon, `self` on a node host).
pub const MAX_JOURNAL_KEY_LEN: usize = 255;

pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_JOURNAL_KEY_LEN {
        return Err(StoreError::Invalid(format!(
            "journal key must be 1 to {MAX_JOURNAL_KEY_LEN} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

pub(crate) fn blob<T: serde::Serialize>(what: &str, v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v)
        .map_err(|e| StoreError::Invalid(format!("{what} does not encode: {e}")))
}

pub(crate) fn unblob<'a, T: serde::Deserialize<'a>>(
    what: &str,
    key: &str,
    bytes: &'a [u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes)
        .map_err(|e| StoreError::Corrupt(format!("journal {key:?}: stored {what}: {e}")))
}

/// A `u64` as the order-preserving `i64` stored in its place.
pub(crate) const fn enc(v: u64) -> i64 {
    (v ^ (1 << 63)) as i64
}

/// The `u64` an [`enc`]oded column holds.
pub(crate) const fn dec(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// A device row's id is valid and its fingerprint is its certificate's.
pub(crate) fn check_device(d: &super::Device) -> Result<(), StoreError> {
    crate::ca::check_device_id(&d.device_id)
        .map_err(|_| StoreError::Invalid(format!("invalid device id {:?}", d.device_id)))?;
    if Fingerprint::of(&d.cert_der) != d.fingerprint {
        return Err(StoreError::Invalid(format!(
            "device {}: fingerprint does not match the certificate",
            d.device_id
        )));
    }
    Ok(())
}

/// A node's state as stored (a word an operator reads in the table).
pub(crate) fn node_state(online: bool) -> &'static str {
    if online { "online" } else { "offline" }
}

/// Whether a stored node state says online.
pub(crate) fn node_online(state: &str) -> bool {
    state == "online"
}

/// A call's state as stored.
pub(crate) fn call_state_from(id: u64, state: &str) -> Result<CallStatus, StoreError> {
    CallStatus::parse(state)
        .ok_or_else(|| StoreError::Corrupt(format!("call {id} in unknown state {state:?}")))
}

/// A revocation's key: its kind and what it names.
pub(crate) fn revoked_key(what: &Revoked) -> (&'static str, String) {
    match what {
        Revoked::Certificate(fp) => ("certificate", fp.to_hex()),
        Revoked::Device(id) => ("device", id.clone()),
    }
}

/// What a stored revocation key names.
pub(crate) fn revoked_from(kind: &str, subject: String) -> Result<Revoked, StoreError> {
    match kind {
        "certificate" => Fingerprint::from_hex(&subject)
            .map(Revoked::Certificate)
            .ok_or_else(|| StoreError::Corrupt(format!("revoked fingerprint {subject:?}"))),
        "device" => Ok(Revoked::Device(subject)),
        other => Err(StoreError::Corrupt(format!("revocation kind {other:?}"))),
    }
}

/// A node's capability list as stored: JSON, replaced and read whole.
pub(crate) fn capabilities_json(caps: &[Capability]) -> Result<String, StoreError> {
    serde_json::to_string(caps)
        .map_err(|e| StoreError::Invalid(format!("capabilities do not encode: {e}")))
}

pub(crate) fn capabilities_from(node: &str, json: &str) -> Result<Vec<Capability>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("capabilities of node {node}: {e}")))
}

/// Stores a pairing record (parameters: code id, JSON, decided, verifier), in both
/// engines' SQL. It changes only the same code: a copy of another code on that id (a
/// daemon's stale one) never replaces the stored one, and an operator's decision is
/// never overwritten by an older, undecided copy (another daemon's write, made before
/// it took the decision in). New codes go in with `CREATE_PAIRING`.
pub(crate) const PUT_PAIRING: &str = "INSERT INTO pairings (code_id, record, decided, verifier)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (code_id) DO UPDATE SET record = excluded.record,
        decided = excluded.decided
    WHERE pairings.verifier = excluded.verifier
        AND (excluded.decided OR NOT pairings.decided)";

/// Stores a new code's record only where no record is (parameters as `PUT_PAIRING`).
pub(crate) const CREATE_PAIRING: &str = "INSERT INTO pairings (code_id, record, decided, verifier)
    VALUES ($1, $2, $3, $4) ON CONFLICT (code_id) DO NOTHING RETURNING code_id";

/// Whether an operator decided a pairing (or it ran its course).
pub(crate) fn pairing_decided(p: &PairingRecord) -> bool {
    p.approval.state != protocol_core::pairing::ApprovalState::Pending
}

/// A pairing record as stored: JSON under its code id.
pub(crate) fn pairing_json(p: &PairingRecord) -> Result<String, StoreError> {
    serde_json::to_string(p)
        .map_err(|e| StoreError::Invalid(format!("pairing record does not encode: {e}")))
}

pub(crate) fn pairing_from(code_id: u16, json: &str) -> Result<PairingRecord, StoreError> {
    let rec: PairingRecord = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("pairing {code_id:04}: {e}")))?;
    if rec.code_id != code_id {
        return Err(StoreError::Corrupt(format!(
            "pairing row {code_id:04} holds code id {:04}",
            rec.code_id
        )));
    }
    Ok(rec)
}

/// Stores a new operator (parameters: name, role, fingerprint, certificate, not after,
/// created, revoked), in both engines' SQL; a row back when it was stored. A stored
/// operator of that name is replaced only when it is revoked and this is another
/// certificate, or when it is live and this is its own certificate (a retried
/// submission): a live name stays taken, a revoked certificate stays revoked.
pub(crate) const ADD_OPERATOR: &str = "INSERT INTO operators (name, role, fingerprint, cert_der,
    not_after, created, revoked) VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (name) DO UPDATE SET role = excluded.role,
        fingerprint = excluded.fingerprint, cert_der = excluded.cert_der,
        not_after = excluded.not_after, created = excluded.created, revoked = excluded.revoked
    WHERE (operators.revoked IS NULL) = (operators.fingerprint = excluded.fingerprint)
    RETURNING name";

/// Revokes an operator (parameters: name, time), keeping an earlier revocation's time;
/// a row back when the operator exists. In both engines' SQL.
pub(crate) const REVOKE_OPERATOR: &str =
    "UPDATE operators SET revoked = coalesce(revoked, $2) WHERE name = $1 RETURNING name";

/// An operator row's columns, in the order [`operator_from`] takes them.
pub(crate) const OPERATOR_COLUMNS: &str =
    "SELECT name, role, fingerprint, cert_der, not_after, created, revoked FROM operators";

/// An operator's name is valid (the rule of device ids) and its fingerprint is its
/// certificate's.
pub(crate) fn check_operator(o: &Operator) -> Result<(), StoreError> {
    crate::ca::check_device_id(&o.name)
        .map_err(|_| StoreError::Invalid(format!("invalid operator name {:?}", o.name)))?;
    if Fingerprint::of(&o.cert_der).0 != o.fingerprint {
        return Err(StoreError::Invalid(format!(
            "operator {}: fingerprint does not match the certificate",
            o.name
        )));
    }
    Ok(())
}

/// An operator from its stored columns (`OPERATOR_COLUMNS`, numbers still [`enc`]oded).
pub(crate) fn operator_from(
    name: String,
    role: &str,
    fingerprint: Vec<u8>,
    cert_der: Vec<u8>,
    not_after: i64,
    created: i64,
    revoked: Option<i64>,
) -> Result<Operator, StoreError> {
    let role = OperatorRole::parse(role)
        .ok_or_else(|| StoreError::Corrupt(format!("operator {name} has role {role:?}")))?;
    let fingerprint = <[u8; 32]>::try_from(fingerprint)
        .map_err(|_| StoreError::Corrupt(format!("operator {name}: fingerprint length")))?;
    Ok(Operator {
        name,
        role,
        fingerprint,
        cert_der,
        not_after_ms: dec(not_after),
        created_ms: dec(created),
        revoked_ms: revoked.map(dec),
    })
}

/// A parameter of a call listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListParam<'a> {
    Text(&'a str),
    Int(i64),
}

/// What follows `SELECT ... FROM calls` in a listing of the calls `filter` wants, in
/// both engines' SQL (`$n` parameters), and its parameters in order. Only the bounds
/// set are in the SQL, so each engine plans the listing on the index that fits it:
/// `calls_by_node` (node, id), `calls_by_state` (state, id), `calls_by_node_state`,
/// `calls_by_created`, or the primary key walked from the newest id.
pub(crate) fn call_listing(filter: &CallFilter) -> (String, Vec<ListParam<'_>>) {
    let mut bounds: Vec<(&str, ListParam<'_>)> = Vec::new();
    if let Some(node) = &filter.node {
        bounds.push(("node =", ListParam::Text(node)));
    }
    if let Some(state) = filter.state {
        bounds.push(("state =", ListParam::Text(state.as_str())));
    }
    if filter.since_ms > 0 {
        bounds.push(("created >=", ListParam::Int(enc(filter.since_ms))));
    }
    if let Some(until) = filter.until_ms {
        bounds.push(("created <", ListParam::Int(enc(until))));
    }
    if let Some(before) = filter.before_id {
        bounds.push(("id <", ListParam::Int(enc(before))));
    }
    let conditions: Vec<String> = bounds
        .iter()
        .enumerate()
        .map(|(i, (condition, _))| format!("{condition} ${}", i + 1))
        .collect();
    let mut sql = String::new();
    if !conditions.is_empty() {
        sql = format!("WHERE {} ", conditions.join(" AND "));
    }
    sql.push_str(&format!("ORDER BY id DESC LIMIT ${}", bounds.len() + 1));
    let mut params: Vec<ListParam<'_>> = bounds.into_iter().map(|(_, p)| p).collect();
    params.push(ListParam::Int(i64::from(filter.limit.max(1))));
    (sql, params)
}
