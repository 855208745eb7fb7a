//! The runtime over the state store: its writes are store writes (queued in order,
//! group-committed; counted here for the metrics), and at start it is restored from
//! what the store holds.

use std::sync::Arc;

use tracing::{info, warn};

use super::metrics::Metrics;
use crate::model::{Call, Node};
use crate::runtime::persist::now_ms;
use crate::runtime::{CallStatus, NodeInfo, Runtime, RuntimeStore};
use crate::store::{Store, Write};

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

impl RuntimeStore for RuntimeWrites {
    fn submit(&self, writes: Vec<Write>) {
        for w in &writes {
            match w {
                Write::PutCall(c) if c.state.is_final() => {
                    self.metrics.call_finished(c.state.as_str());
                }
                Write::AppendEvent(_) => self.metrics.event(),
                _ => {}
            }
        }
        // Queued now, committed with the next group; a failure is logged (the journal
        // batch behind it fails the same way and is retried by its session).
        let pending = self.store.write(writes);
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
            if call.state.is_final() {
                continue;
            }
            match call.session_call {
                // The session was restored with the call; its answer maps back here.
                Some(sc) => runtime.adopt_call(call, sc),
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
                c.state = CallStatus::Lost;
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
pub fn node_info(r: &Node) -> NodeInfo {
    NodeInfo {
        id: r.id.clone(),
        online: false,
        last_seen_ms: r.last_seen_ms,
        address: r.address.clone(),
        transport: None,
        platform: r.platform.clone(),
        capabilities: r.capabilities.clone(),
    }
}

/// A stored call not yet final, as the runtime tracks it; `None` for a final one.
pub fn open_call(c: &Call) -> Option<Call> {
    (!c.state.is_final()).then(|| c.clone())
}
