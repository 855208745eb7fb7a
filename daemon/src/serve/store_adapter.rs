//! The runtime over the SQLite store: its writes become store writes (queued in order,
//! group-committed), and at start it is restored from what the store holds.

use std::sync::Arc;

use tracing::{info, warn};

use super::metrics::Metrics;
use crate::runtime::persist::{self, now_ms};
use crate::runtime::{CallStatus, Capability, NodeInfo, Runtime, RuntimeStore};
use crate::store::{self, CapabilityRow, EventOrigin, NewEvent, Payload, Store, Write};

/// Runtime writes into the store.
pub struct RuntimeWrites {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl RuntimeWrites {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        Self { store, metrics }
    }
}

impl std::fmt::Debug for RuntimeWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeWrites").finish_non_exhaustive()
    }
}

fn node_row(n: &persist::NodeRow) -> store::NodeRow {
    store::NodeRow {
        id: n.id.clone(),
        first_seen_ms: n.last_seen_ms,
        last_seen_ms: n.last_seen_ms,
        state: if n.online { "online" } else { "offline" }.into(),
        platform: n.platform.clone(),
        address: n.address.clone(),
        capabilities: n
            .capabilities
            .iter()
            .map(|c| CapabilityRow {
                name: c.name.clone(),
                version: c.version,
                input: c.input.clone(),
                output: c.output.clone(),
                needs_approval: c.needs_approval,
            })
            .collect(),
    }
}

fn call_row(c: &persist::CallRow) -> store::CallRow {
    store::CallRow {
        id: c.id,
        node: c.node.clone(),
        capability: c.capability.clone(),
        input: Payload {
            content_type: c.input_type.clone(),
            bytes: c.input.clone(),
        },
        state: c.status.as_str().into(),
        output: (!c.output_type.is_empty() || !c.output.is_empty()).then(|| Payload {
            content_type: c.output_type.clone(),
            bytes: c.output.clone(),
        }),
        error: (!c.message.is_empty()).then(|| c.message.clone()),
        created_ms: c.created_ms,
        updated_ms: c.updated_ms,
        deadline_ms: c.deadline_ms,
        session_call: c.session_call,
        timed_out_ms: c.timed_out_ms,
    }
}

impl RuntimeStore for RuntimeWrites {
    fn submit(&self, writes: Vec<persist::Write>) {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            match w {
                persist::Write::Node(n) => out.push(Write::PutNode(node_row(&n))),
                persist::Write::Call(c) => {
                    if c.status.is_final() {
                        self.metrics.call_finished(c.status.as_str());
                    }
                    out.push(Write::PutCall(call_row(&c)));
                }
                persist::Write::Event(e) => {
                    self.metrics.event();
                    out.push(Write::AppendEvent(NewEvent {
                        node: e.node,
                        name: e.name,
                        content_type: e.content_type,
                        body: e.body,
                        at_ms: e.at_ms,
                        origin: Some(EventOrigin {
                            session: e.session,
                            stream_seq: e.stream_seq,
                        }),
                    }));
                }
            }
        }
        // Queued now, committed with the next group; a failure is logged (the journal
        // batch behind it fails the same way and is retried by its session).
        let pending = self.store.write(out);
        tokio::spawn(async move {
            if let Err(e) = pending.await {
                warn!(error = %e, "store write failed");
            }
        });
    }
}

/// Restores every known node: its session from its journal, what it registered, and
/// the calls it was running; queued calls that never reached a session end `Lost`.
/// On a shared store only the nodes this daemon still owns bring their calls back, and
/// queued calls stay queued for whichever daemon holds their node.
pub async fn restore(
    store: &Store,
    runtime: &Runtime,
    shared: Option<&super::cluster::Cluster>,
) -> Result<(), String> {
    let now = now_ms();
    let nodes = store.nodes().await.map_err(|e| e.to_string())?;
    let devices = store.devices().await.map_err(|e| e.to_string())?;
    let keys: std::collections::HashSet<String> = store
        .journal_keys()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let mut ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    ids.extend(devices.iter().map(|d| d.device_id.clone()));
    ids.extend(keys.iter().cloned());
    ids.sort();
    ids.dedup();
    // By id, so a start with many nodes is not a scan per node.
    let rows: std::collections::HashMap<&str, _> =
        nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let mut max_call = 0u64;
    let mut lost = Vec::new();
    for id in &ids {
        let info = match rows.get(id.as_str()) {
            Some(row) => node_info(row),
            None => NodeInfo {
                id: id.clone(),
                online: false,
                last_seen_ms: 0,
                address: None,
                transport: None,
                platform: None,
                capabilities: Vec::new(),
            },
        };
        if keys.contains(id) {
            let journal = store.load_journal(id).await.map_err(|e| e.to_string())?;
            runtime.restore_node(info, &journal)?;
        } else {
            runtime.know_node(info);
        }
        if shared.is_some_and(|c| !crate::runtime::ownership::Ownership::owns(c, id)) {
            continue;
        }
        for call in store.calls_for(id).await.map_err(|e| e.to_string())? {
            max_call = max_call.max(call.id);
            let status = CallStatus::parse(&call.state).unwrap_or(CallStatus::Lost);
            if status.is_final() {
                continue;
            }
            match call.session_call {
                // The session was restored with the call; its answer maps back here.
                Some(sc) => runtime.adopt_call(restored(&call, status), sc),
                None if shared.is_some() => {}
                None => lost.push(call),
            }
        }
    }
    runtime.continue_call_ids(max_call);
    if !lost.is_empty() {
        let writes = lost
            .into_iter()
            .map(|mut c| {
                c.state = CallStatus::Lost.as_str().into();
                c.error = Some("the daemon restarted before the call reached the node".into());
                c.updated_ms = now;
                Write::PutCall(c)
            })
            .collect();
        drop(store.write(writes));
    }
    info!(nodes = ids.len(), "nodes restored");
    Ok(())
}

/// What the runtime knows of a node from its stored row (offline: no connection here).
pub fn node_info(r: &store::NodeRow) -> NodeInfo {
    NodeInfo {
        id: r.id.clone(),
        online: false,
        last_seen_ms: r.last_seen_ms,
        address: r.address.clone(),
        transport: None,
        platform: r.platform.clone(),
        capabilities: r
            .capabilities
            .iter()
            .map(|c| Capability {
                name: c.name.clone(),
                version: c.version,
                input: c.input.clone(),
                output: c.output.clone(),
                needs_approval: c.needs_approval,
            })
            .collect(),
    }
}

/// A stored call not yet final, as the runtime tracks it; `None` for a final one.
pub fn open_call(c: &store::CallRow) -> Option<persist::CallRow> {
    let status = CallStatus::parse(&c.state).unwrap_or(CallStatus::Lost);
    (!status.is_final()).then(|| restored(c, status))
}

/// A call queued in the store by a daemon that does not hold its node.
pub fn queued_call(c: &store::CallRow) -> persist::CallRow {
    restored(c, CallStatus::Queued)
}

fn restored(c: &store::CallRow, status: CallStatus) -> persist::CallRow {
    persist::CallRow {
        id: c.id,
        node: c.node.clone(),
        capability: c.capability.clone(),
        input_type: c.input.content_type.clone(),
        input: c.input.bytes.clone(),
        status,
        output_type: String::new(),
        output: Vec::new(),
        message: String::new(),
        created_ms: c.created_ms,
        updated_ms: c.updated_ms,
        deadline_ms: c.deadline_ms,
        session_call: c.session_call,
        timed_out_ms: c.timed_out_ms,
    }
}
