//! The operator API as the daemon answers it.

use std::sync::Arc;
use std::time::Duration;

use chacha20::ChaCha20Rng;
use protocol_core::pairing::ApprovalState;
use protocol_core::session::Instant;
use rand_core::{Rng, SeedableRng};

use super::Shared;
use crate::api::v1::{
    self, CallRequest, CallResult, Event, EventsRequest, ListNodesRequest, Node, NodeList,
    PairApproveRequest, PairCode, PairCodeRequest, PairList, PairRecord, PairRejectRequest,
    RevokeRequest, Revoked, ShowCallRequest, ShowNodeRequest, Status,
};
use crate::api::v1::{
    AddOperatorRequest, CallList, ListCallsRequest, OperatorIdentity, OperatorList, OperatorRecord,
    RevokeOperatorRequest,
};
use crate::api::{
    ApiError, Caller, DEFAULT_CALL_PAGE, DEFAULT_NODE_PAGE, EventSink, MAX_CALL_PAGE,
    MAX_NODE_PAGE, NODE_PAGE_BYTES, OperatorApi,
};
use crate::model::{CallFilter, OperatorRole};
use crate::pairing::{PairingRecord, ServiceError};
use crate::runtime::persist::now_ms;
use crate::runtime::{CallStatus, DispatchError, NodeInfo};
use crate::store::{StoreError, Write};

/// Events read from the store at a time.
const EVENT_PAGE: usize = 256;
/// A follower re-reads the store at least this often.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Most bytes a `Node` adds to the `Register` message its capabilities came in: per
/// capability a few keys and a length (at most 16 bytes each, 32 capabilities), then
/// its id, state, times, address and fingerprint (under 300 bytes).
const NODE_OVER_REGISTER: usize = 16 * protocol_core::wire::MAX_CAPABILITIES + 300;

// A node always fits in a page on its own, so paging never stalls on one.
const _: () =
    assert!(super::session_config().max_frame as usize + NODE_OVER_REGISTER <= NODE_PAGE_BYTES);

/// Answers the operator.
#[derive(Debug)]
pub struct Operator {
    shared: Arc<Shared>,
}

impl Operator {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn rng() -> Result<ChaCha20Rng, ApiError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(ChaCha20Rng::from_seed(seed))
    }

    /// Stores the pairing records changed since the last write.
    async fn persist_pairing(&self) -> Result<(), ApiError> {
        let changes = self
            .shared
            .pairing
            .service()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take_changes();
        let writes = super::pairing_writes(changes).collect();
        self.shared
            .store
            .write(writes)
            .await
            .map(drop)
            .map_err(|e| ApiError::internal(format!("storing the pairing: {e}")))
    }

    /// A call for a node another daemon holds (or none does): queued in the shared
    /// store, where the daemon that holds the node (now or once it connects) takes it.
    async fn call_elsewhere(
        &self,
        req: CallRequest,
        content_type: String,
        timeout_ms: u64,
    ) -> Result<CallResult, ApiError> {
        if timeout_ms > crate::runtime::calls::MAX_TIMEOUT_MS {
            return Err(ApiError::invalid_argument(format!(
                "timeout {timeout_ms} ms out of range"
            )));
        }
        if self.shared.runtime.node(&req.node).is_none() {
            return Err(ApiError::not_found(format!("unknown node {:?}", req.node)));
        }
        let id = self.shared.runtime.next_call_id();
        let now = now_ms();
        let deadline = now.saturating_add(timeout_ms);
        let row = crate::store::Call {
            id,
            node: req.node,
            capability: req.capability,
            input: crate::store::Payload {
                content_type,
                bytes: req.input,
            },
            state: CallStatus::Queued,
            output: None,
            error: None,
            created_ms: now,
            updated_ms: now,
            deadline_ms: deadline,
            session_call: None,
            timed_out_ms: None,
        };
        self.shared
            .store
            .write(vec![crate::store::Write::PutCall(row)])
            .await
            .map_err(|e| ApiError::internal(format!("queueing the call: {e}")))?;
        self.await_stored_call(id, deadline).await
    }

    /// Reads call `id`'s record until it is final; past `deadline` a call no daemon
    /// took is ended `timed_out`.
    async fn await_stored_call(&self, id: u64, deadline: u64) -> Result<CallResult, ApiError> {
        let store = &self.shared.store;
        let mut expired = false;
        loop {
            let row = store
                .call(id)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .ok_or_else(|| ApiError::internal(format!("call {id} vanished")))?;
            if row.state.is_final() {
                return Ok(call_result(row));
            }
            let now = now_ms();
            if now >= deadline && !expired {
                expired = true;
                store
                    .write(vec![crate::store::Write::ExpireCall { id, at_ms: now }])
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                continue;
            }
            // The daemon that holds the node ends it at its deadline; the margin covers
            // that daemon's sweep.
            if now >= deadline.saturating_add(2_000) {
                return Err(ApiError::timeout(format!(
                    "call {id} did not finish in time"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn node_proto(&self, info: &NodeInfo) -> Node {
        let device = self.shared.store.device(&info.id).await.ok().flatten();
        let revoked = self.shared.revocations.is_device_revoked(&info.id);
        let state = if revoked {
            v1::NodeState::Revoked
        } else if info.online {
            v1::NodeState::Online
        } else {
            v1::NodeState::Offline
        };
        let (fingerprint, not_after) = device.map_or((String::new(), 0), |d| {
            (
                d.fingerprint.0.iter().map(|b| format!("{b:02x}")).collect(),
                cert_not_after_ms(&d.cert_der),
            )
        });
        Node {
            id: info.id.clone(),
            state: state as i32,
            last_seen_ms: info.last_seen_ms,
            capabilities: info
                .capabilities
                .iter()
                .map(|c| v1::Capability {
                    name: c.name.clone(),
                    version: c.version,
                    input_content_type: c.input.clone(),
                    output_content_type: c.output.clone(),
                    needs_approval: c.needs_approval,
                })
                .collect(),
            transport: info
                .address
                .as_deref()
                .and_then(|a| a.split_once("://"))
                .map(|(scheme, _)| scheme.to_owned())
                .unwrap_or_default(),
            platform: info.platform.clone().unwrap_or_default(),
            address: info.address.clone().unwrap_or_default(),
            certificate_fingerprint: fingerprint,
            certificate_not_after_ms: not_after,
        }
    }
}

fn cert_not_after_ms(der: &[u8]) -> u64 {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).ok())
        .map_or(0, |s| s.saturating_mul(1000))
}

fn pair_record(r: &PairingRecord) -> PairRecord {
    let state = match r.approval.state {
        ApprovalState::Pending => v1::PairState::Pending,
        ApprovalState::Approved => v1::PairState::Approved,
        ApprovalState::Rejected => v1::PairState::Rejected,
        ApprovalState::Completed => v1::PairState::Completed,
        ApprovalState::Expired => v1::PairState::Expired,
    };
    PairRecord {
        code_id: u32::from(r.code_id),
        state: state as i32,
        created_at_ms: r.window.created.as_millis(),
        expires_at_ms: r.window.expires.as_millis(),
        device_id: r.device_id.clone(),
        // The record keeps where approval stands, not whether it was asked for: a
        // pairing that waits for an operator is the one that needs approval now.
        approval_required: r.approval.state == ApprovalState::Pending,
        awaiting_decision: r.awaiting_decision,
        used: r.window.used,
    }
}

fn service_error(e: ServiceError) -> ApiError {
    match e {
        ServiceError::UnknownCode(_) => ApiError::not_found(e.to_string()),
        ServiceError::Approval(_) | ServiceError::DeviceBusy(_) => {
            ApiError::failed_precondition(e.to_string())
        }
        ServiceError::Limit(_) | ServiceError::Ca(_) | ServiceError::Uri(_) => {
            ApiError::invalid_argument(e.to_string())
        }
        ServiceError::NoFreeCodeId => ApiError::unavailable(e.to_string()),
    }
}

/// A call's record as the operator API answers it.
fn call_result(call: crate::model::Call) -> CallResult {
    let (content_type, output) = call
        .output
        .map_or((String::new(), Vec::new()), |p| (p.content_type, p.bytes));
    CallResult {
        call_id: call.id,
        state: call_state(call.state) as i32,
        output,
        content_type,
        message: call.error.unwrap_or_default(),
        node: call.node,
        capability: call.capability,
        created_at_ms: call.created_ms,
        updated_at_ms: call.updated_ms,
        deadline_ms: call.deadline_ms,
        timed_out_at_ms: call.timed_out_ms.unwrap_or(0),
    }
}

/// The stored state a listing's `state` filter names.
fn call_status(s: v1::CallState) -> Result<CallStatus, ApiError> {
    Ok(match s {
        v1::CallState::Succeeded => CallStatus::Succeeded,
        v1::CallState::Failed => CallStatus::Failed,
        v1::CallState::TimedOut => CallStatus::TimedOut,
        v1::CallState::Rejected => CallStatus::Rejected,
        v1::CallState::Cancelled => CallStatus::Cancelled,
        v1::CallState::Lost => CallStatus::Lost,
        v1::CallState::Undeliverable => CallStatus::Undeliverable,
        // Not final: queued, with the node, or running. The store keeps those apart;
        // a listing by `PENDING` takes queued ones, the others are short-lived.
        v1::CallState::Pending => CallStatus::Queued,
        v1::CallState::Unspecified => {
            return Err(ApiError::invalid_argument("state must name a call state"));
        }
    })
}

fn call_state(s: CallStatus) -> v1::CallState {
    match s {
        CallStatus::Succeeded => v1::CallState::Succeeded,
        CallStatus::Failed => v1::CallState::Failed,
        CallStatus::TimedOut => v1::CallState::TimedOut,
        CallStatus::Rejected => v1::CallState::Rejected,
        CallStatus::Cancelled => v1::CallState::Cancelled,
        CallStatus::Lost => v1::CallState::Lost,
        CallStatus::Undeliverable => v1::CallState::Undeliverable,
        CallStatus::Queued
        | CallStatus::Dispatched
        | CallStatus::AwaitingApproval
        | CallStatus::Running => v1::CallState::Pending,
    }
}

impl OperatorApi for Operator {
    async fn status(&self) -> Result<Status, ApiError> {
        let s = &self.shared;
        let (known, online) = s.runtime.counts();
        let revoked = s
            .revocations
            .records()
            .iter()
            .filter(|r| matches!(r.what, crate::revocation::Revoked::Device(_)))
            .count();
        Ok(Status {
            listen_addresses: s.listening.clone(),
            mtls_enforced: true,
            ca: Some(v1::CertificateAuthority {
                fingerprint_sha256: s.identity.ca_fingerprint_hex(),
                not_after_ms: s.identity.ca_not_after_ms(),
            }),
            pairing: Some(v1::PairingPolicy {
                default_ttl_seconds: u32::try_from(s.settings.pairing.default_ttl.as_secs())
                    .unwrap_or(u32::MAX),
                approval_required: s.settings.pairing.approval_required,
            }),
            nodes: Some(v1::NodeCounts {
                paired: u32::try_from(known).unwrap_or(u32::MAX),
                online: u32::try_from(online).unwrap_or(u32::MAX),
                revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
            }),
            started_at_ms: s.started_at_ms,
            operator_addresses: s.operator_listening.clone(),
            software_version: crate::api::SOFTWARE_VERSION.to_owned(),
            store: s.settings.store_location().redacted(),
            daemon_id: s
                .cluster
                .as_ref()
                .map(|c| c.daemon_id.clone())
                .unwrap_or_default(),
        })
    }

    async fn pair_code(&self, req: PairCodeRequest) -> Result<PairCode, ApiError> {
        let mut rng = Self::rng()?;
        let device_id = if req.device_id.is_empty() {
            format!("node-{:08x}", rng.next_u32())
        } else {
            req.device_id.clone()
        };
        let now = Instant::from_millis(now_ms());
        let lifetime = (req.ttl_seconds > 0).then(|| u64::from(req.ttl_seconds) * 1000);
        let tcp = self.shared.settings.listen_tcp.map(|a| {
            // The address actually bound (the port may have been 0).
            self.shared
                .listening
                .iter()
                .find_map(|l| l.strip_prefix("tcp://")?.parse().ok())
                .unwrap_or(a)
        });
        let addr = super::pairing_address(&self.shared.settings, tcp);
        // A code id is one daemon's at a time: the record is created in the store only
        // where none is, and a code whose id another daemon took first is drawn again.
        let mut attempts = 0;
        let (code, uri, record) = loop {
            attempts += 1;
            let (code, uri, record) = {
                let mut service = self
                    .shared
                    .pairing
                    .service()
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let code = service
                    .create_code(now, &device_id, lifetime, req.require_approval, &mut rng)
                    .map_err(service_error)?;
                let uri = service.uri(&addr, &code).map_err(service_error)?;
                let record = service
                    .record(code.id())
                    .cloned()
                    .ok_or_else(|| ApiError::internal("the new code has no record"))?;
                (code, uri, record)
            };
            match self
                .shared
                .store
                .write(vec![crate::store::Write::CreatePairing(record.clone())])
                .await
            {
                Ok(_) => break (code, uri, record),
                Err(crate::store::StoreError::Taken { .. }) if attempts < 8 => {
                    let stored = self.shared.store.pairing_records().await;
                    // Another write of this service's changes may have stored it first.
                    let ours = stored.as_ref().is_ok_and(|all| {
                        all.iter().any(|r| {
                            r.code_id == record.code_id
                                && r.verifier_record == record.verifier_record
                        })
                    });
                    if ours {
                        break (code, uri, record);
                    }
                    let mut service = self
                        .shared
                        .pairing
                        .service()
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    service.forget(code.id());
                    if let Ok(stored) = stored {
                        service.absorb(stored);
                    }
                }
                Err(e) => {
                    self.shared
                        .pairing
                        .service()
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .forget(code.id());
                    return Err(ApiError::internal(format!("storing the code: {e}")));
                }
            }
        };
        self.persist_pairing().await?;
        Ok(PairCode {
            code: code.display().to_string(),
            uri,
            code_id: u32::from(code.id()),
            expires_at_ms: record.window.expires.as_millis(),
            device_id,
            approval_required: record.approval.state == ApprovalState::Pending,
        })
    }

    async fn pair_list(&self) -> Result<PairList, ApiError> {
        let mut records = self
            .shared
            .pairing
            .service()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .records();
        records.sort_by_key(|r| r.code_id);
        Ok(PairList {
            records: records.iter().map(pair_record).collect(),
        })
    }

    async fn pair_approve(&self, req: PairApproveRequest) -> Result<PairRecord, ApiError> {
        let id = u16::try_from(req.code_id)
            .map_err(|_| ApiError::invalid_argument("code id out of range"))?;
        self.shared
            .pairing
            .approve(Instant::from_millis(now_ms()), id)
            .map_err(service_error)?;
        self.persist_pairing().await?;
        self.record(id)
    }

    async fn pair_reject(&self, req: PairRejectRequest) -> Result<PairRecord, ApiError> {
        let id = u16::try_from(req.code_id)
            .map_err(|_| ApiError::invalid_argument("code id out of range"))?;
        self.shared
            .pairing
            .reject(Instant::from_millis(now_ms()), id)
            .map_err(service_error)?;
        self.persist_pairing().await?;
        self.record(id)
    }

    async fn list_nodes(&self, req: ListNodesRequest) -> Result<NodeList, ApiError> {
        let limit = match req.limit {
            // A client from before paging: everything, or an error it can show.
            None => usize::MAX,
            Some(0) => DEFAULT_NODE_PAGE as usize,
            Some(n) => n.min(MAX_NODE_PAGE) as usize,
        };
        let (infos, mut more) = self.shared.runtime.nodes_after(&req.after, limit);
        let mut nodes = Vec::with_capacity(infos.len());
        let mut bytes = 0;
        for info in &infos {
            let node = self.node_proto(info).await;
            // As a `NodeList` field: its key and length, then the node.
            let len = prost::encoding::message::encoded_len(1, &node);
            if !nodes.is_empty() && bytes + len > NODE_PAGE_BYTES {
                more = true;
                break;
            }
            bytes += len;
            nodes.push(node);
        }
        if !more {
            return Ok(NodeList {
                nodes,
                next_after: String::new(),
            });
        }
        if req.limit.is_none() {
            return Err(ApiError::failed_precondition(
                "the nodes do not fit in one answer; list them with a client that pages \
                 (`limit` set)",
            ));
        }
        let next_after = nodes.last().map(|n| n.id.clone()).unwrap_or_default();
        Ok(NodeList { nodes, next_after })
    }

    async fn show_node(&self, req: ShowNodeRequest) -> Result<Node, ApiError> {
        let info = self
            .shared
            .runtime
            .node(&req.id)
            .ok_or_else(|| ApiError::not_found(format!("unknown node {:?}", req.id)))?;
        Ok(self.node_proto(&info).await)
    }

    async fn call(&self, req: CallRequest) -> Result<CallResult, ApiError> {
        if self.shared.revocations.is_device_revoked(&req.node) {
            return Err(ApiError::failed_precondition(format!(
                "node {:?} is revoked",
                req.node
            )));
        }
        let timeout_ms = if req.timeout_ms == 0 {
            30_000
        } else {
            u64::from(req.timeout_ms)
        };
        let content_type = if req.content_type.is_empty() {
            "application/json".to_owned()
        } else {
            req.content_type.clone()
        };
        if let Some(cluster) = &self.shared.cluster
            && !crate::runtime::ownership::Ownership::owns(&**cluster, &req.node)
        {
            return self.call_elsewhere(req, content_type, timeout_ms).await;
        }
        let (id, rx) = self
            .shared
            .runtime
            .call(
                now_ms(),
                &req.node,
                &req.capability,
                &content_type,
                req.input,
                timeout_ms,
            )
            .map_err(|e| match e {
                DispatchError::UnknownNode(_) => ApiError::not_found(e.to_string()),
                DispatchError::BadTimeout(_) => ApiError::invalid_argument(e.to_string()),
            })?;
        // One deadline: the runtime ends the call at it (its sweep, or the session's
        // copy of it for a call the node holds) and answers this waiter either way.
        match rx.await {
            Ok(call) => Ok(call_result(call)),
            // Another daemon took the node over while the call ran: its record says how
            // it ends.
            Err(_) if self.shared.cluster.is_some() => {
                self.await_stored_call(id, now_ms().saturating_add(timeout_ms))
                    .await
            }
            Err(_) => Err(ApiError::unavailable("the daemon is shutting down")),
        }
    }

    async fn show_call(&self, req: ShowCallRequest) -> Result<CallResult, ApiError> {
        self.shared
            .store
            .call(req.id)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map(call_result)
            .ok_or_else(|| ApiError::not_found(format!("no call {}", req.id)))
    }

    async fn list_calls(&self, req: ListCallsRequest) -> Result<CallList, ApiError> {
        let limit = match req.limit {
            0 => DEFAULT_CALL_PAGE,
            n => n.min(MAX_CALL_PAGE),
        };
        let state = match req.state.map(v1::CallState::try_from) {
            None => None,
            Some(Ok(state)) => Some(call_status(state)?),
            Some(Err(_)) => return Err(ApiError::invalid_argument("unknown call state")),
        };
        let filter = CallFilter {
            node: req.node,
            state,
            since_ms: req.since_ms,
            until_ms: (req.until_ms != 0).then_some(req.until_ms),
            before_id: (req.before_id != 0).then_some(req.before_id),
            // One more than asked: whether there is a next page.
            limit: limit + 1,
        };
        let mut calls = self
            .shared
            .store
            .calls(&filter)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let more = calls.len() > limit as usize;
        calls.truncate(limit as usize);
        let next_before_id = if more {
            calls.last().map_or(0, |c| c.id)
        } else {
            0
        };
        Ok(CallList {
            calls: calls.into_iter().map(call_result).collect(),
            next_before_id,
        })
    }

    async fn add_operator(&self, req: AddOperatorRequest) -> Result<OperatorIdentity, ApiError> {
        let role = match v1::Role::try_from(req.role) {
            Ok(v1::Role::Admin) => OperatorRole::Admin,
            Ok(v1::Role::Viewer) => OperatorRole::Viewer,
            _ => return Err(ApiError::invalid_argument("role must be viewer or admin")),
        };
        let registry = &self.shared.operators;
        let (op, certificate_pem) = registry.issue(&req.name, role, &req.csr_der)?;
        self.shared
            .store
            .write(vec![Write::AddOperator(op.clone())])
            .await
            .map_err(|e| match e {
                StoreError::Taken { .. } => ApiError::failed_precondition(format!(
                    "an operator named {:?} exists: revoke it first, or choose another name",
                    req.name
                )),
                e => ApiError::internal(e.to_string()),
            })?;
        let record = super::operators::record(&op);
        registry.remember(op);
        tracing::info!(operator = %req.name, role = role.as_str(), "operator identity issued");
        Ok(OperatorIdentity {
            operator: Some(record),
            certificate_pem,
            server_ca_pem: self.shared.identity.ca.certificate_pem().to_owned(),
        })
    }

    async fn list_operators(&self) -> Result<OperatorList, ApiError> {
        let all = self
            .shared
            .store
            .operators()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(OperatorList {
            operators: all.iter().map(super::operators::record).collect(),
        })
    }

    async fn revoke_operator(
        &self,
        req: RevokeOperatorRequest,
    ) -> Result<OperatorRecord, ApiError> {
        let now = now_ms();
        self.shared
            .store
            .write(vec![Write::RevokeOperator {
                name: req.name.clone(),
                at_ms: now,
            }])
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => {
                    ApiError::not_found(format!("no operator {:?}", req.name))
                }
                e => ApiError::internal(e.to_string()),
            })?;
        self.shared.operators.forget(&req.name, now);
        tracing::info!(operator = %req.name, "operator identity revoked");
        let all = self
            .shared
            .store
            .operators()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        all.iter()
            .find(|o| o.name == req.name)
            .map(super::operators::record)
            .ok_or_else(|| ApiError::not_found(format!("no operator {:?}", req.name)))
    }

    fn authenticate(&self, cert_der: &[u8]) -> Result<Caller, ApiError> {
        self.shared.operators.authenticate(cert_der)
    }

    async fn events(&self, req: EventsRequest, mut sink: EventSink) -> Result<(), ApiError> {
        // `from_seq` is the first seq wanted; the store reads the seqs after a bound.
        let mut after = req.from_seq.saturating_sub(1);
        let notify = self.shared.runtime.events_stored.clone();
        loop {
            let stored = notify.notified();
            let rows = self
                .shared
                .store
                .events_after(after, req.node.as_deref(), EVENT_PAGE)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let full = rows.len() == EVENT_PAGE;
            for row in rows {
                after = row.seq;
                let event = Event {
                    seq: row.seq,
                    node: row.event.node,
                    name: row.event.name,
                    body: row.event.body,
                    content_type: row.event.content_type,
                    at_ms: row.event.at_ms,
                };
                sink.send(event)
                    .await
                    .map_err(|e| ApiError::unavailable(e.to_string()))?;
            }
            if full {
                continue;
            }
            if !req.follow {
                return Ok(());
            }
            let _ = tokio::time::timeout(FOLLOW_POLL, stored).await;
        }
    }

    async fn revoke(&self, req: RevokeRequest) -> Result<Revoked, ApiError> {
        let runtime = &self.shared.runtime;
        let Some(info) = runtime.node(&req.node) else {
            return Err(ApiError::not_found(format!("unknown node {:?}", req.node)));
        };
        let now = now_ms();
        let reason = if req.reason.is_empty() {
            "revoked by the operator".to_owned()
        } else {
            req.reason.clone()
        };
        self.shared
            .revocations
            .revoke_device(&*self.shared.store, &req.node, now, &reason)
            .await
            .map_err(ApiError::internal)?;
        // The transports close its connections on the revocation notice; this covers a
        // connection that carries no revocation watch.
        runtime.disconnect(&req.node, protocol_core::wire::ErrorCode::Revoked);
        Ok(Revoked {
            node: req.node,
            revoked_at_ms: now,
            connections_closed: u32::from(info.online),
        })
    }
}

impl Operator {
    fn record(&self, id: u16) -> Result<PairRecord, ApiError> {
        self.shared
            .pairing
            .service()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(id)
            .map(pair_record)
            .ok_or_else(|| ApiError::not_found(format!("no pairing with code id {id:04}")))
    }
}
