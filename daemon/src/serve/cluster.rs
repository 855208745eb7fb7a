//! Several daemons on one shared store (PostgreSQL): who owns which node's session,
//! journal writes fenced by that ownership, and what one daemon learns from the store
//! about the others' work — revocations, pairing codes minted, decided or used
//! elsewhere, calls queued for the nodes it holds, nodes that connected elsewhere.
//!
//! Nothing here is a protocol between daemons: each daemon reads and writes the store,
//! and a short sync pass (every [`SYNC_INTERVAL`]) picks up what the others wrote. A
//! revocation made on one daemon closes the node's connection on another within one
//! pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::{info, warn};
use transport_tokio::journal::{Batch, CommitFuture, JournalError, JournalStore};

use super::revocations::LiveRevocations;
use crate::runtime::ownership::{Claimed, Ownership};
use crate::runtime::persist::now_ms;
use crate::runtime::{NodeInfo, Runtime};
use crate::store::{Store, StoreError, Write};

/// How often a daemon reads what the others wrote.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// How often a daemon looks for calls queued for the nodes it holds.
pub const CALLS_INTERVAL: Duration = Duration::from_millis(50);

/// Every this many passes, one reads everything rather than what changed lately.
pub const FULL_PASS_EVERY: u64 = 20;

/// How far before the last pass a "what changed since" read starts: clocks of daemons
/// may disagree by this much, and a claim commits a moment after its time is taken.
const SINCE_MARGIN_MS: u64 = 2_000;

/// Call ids a daemon takes at start: its own range, never used by another daemon.
pub const CALL_ID_BLOCK: u64 = 1 << 40;

/// This daemon's ownership of node sessions in the shared store.
pub struct Cluster {
    pub daemon_id: String,
    store: Arc<Store>,
    /// Node -> the epoch this daemon owns it at.
    owned: Mutex<HashMap<String, u64>>,
    runtime: std::sync::OnceLock<std::sync::Weak<Runtime>>,
    handle: tokio::runtime::Handle,
    /// Journal writes refused because another daemon owned the node.
    pub fenced: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("daemon_id", &self.daemon_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Ownership for `daemon_id`, starting from what the store says it owns (a
    /// restarted daemon whose nodes no one took over keeps them without a claim).
    pub async fn start(store: Arc<Store>, daemon_id: String) -> Result<Arc<Self>, StoreError> {
        let owned = store.owned_by(&daemon_id).await?.into_iter().collect();
        Ok(Arc::new(Self {
            daemon_id,
            store,
            owned: Mutex::new(owned),
            runtime: std::sync::OnceLock::new(),
            handle: tokio::runtime::Handle::current(),
            fenced: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    pub fn attach(&self, runtime: &Arc<Runtime>) {
        let _ = self.runtime.set(Arc::downgrade(runtime));
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn epoch(&self, node: &str) -> Option<u64> {
        self.owned().get(node).copied()
    }

    /// Another daemon owns `node` now.
    fn lost(&self, node: &str) {
        if self.owned().remove(node).is_some()
            && let Some(rt) = self.runtime.get().and_then(std::sync::Weak::upgrade)
        {
            rt.lose(node);
        }
    }

    /// One pass: ownership lost to others, revocations, pairing records, calls for the
    /// nodes held here, nodes seen by others. `since_ms` bounds what changed lately
    /// (claims, sightings); `None` reads everything (the first pass, and every
    /// [`FULL_PASS_EVERY`]th, which also covers clocks that disagree).
    async fn sync(
        &self,
        runtime: &Runtime,
        revocations: &LiveRevocations,
        pairing: &crate::pairing_responder::ServiceResponder,
        since_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let gone: Vec<String> = match since_ms {
            None => {
                let held: HashMap<String, u64> = self
                    .store
                    .owned_by(&self.daemon_id)
                    .await?
                    .into_iter()
                    .collect();
                self.owned()
                    .iter()
                    .filter(|(node, epoch)| held.get(*node) != Some(epoch))
                    .map(|(node, _)| node.clone())
                    .collect()
            }
            Some(since) => {
                let owned = self.owned().clone();
                self.store
                    .claims_since(since)
                    .await?
                    .into_iter()
                    .filter(|(node, owner, epoch)| {
                        owned
                            .get(node)
                            .is_some_and(|mine| *owner != self.daemon_id || epoch != mine)
                    })
                    .map(|(node, _, _)| node)
                    .collect()
            }
        };
        for node in gone {
            self.lost(&node);
        }

        let fresh = revocations.absorb(self.store.revocations().await?);
        for device in fresh {
            info!(node = %device, "revoked by another daemon");
            runtime.disconnect(&device, protocol_core::wire::ErrorCode::Revoked);
        }

        // Codes minted, approved, used elsewhere.
        pairing.absorb(self.store.pairing_records().await?);

        let seen = match since_ms {
            None => self.store.nodes().await?,
            Some(since) => self.store.nodes_since(since).await?,
        };
        for row in seen {
            let mine = runtime
                .node(&row.id)
                .is_some_and(|n| n.transport.is_some() && n.online);
            if !mine {
                runtime.know_node(NodeInfo {
                    online: row.online,
                    ..crate::serve::store_adapter::node_info(&row)
                });
            }
        }
        Ok(())
    }

    /// Calls queued in the store for the nodes held here: taken, or ended when their
    /// deadline passed with no daemon taking them. Run more often than the rest.
    async fn sync_calls(&self, runtime: &Runtime) -> Result<(), StoreError> {
        let now = now_ms();
        let mut expired = Vec::new();
        for row in self.store.queued_calls().await? {
            if row.deadline_ms <= now {
                // No daemon took it in time; whichever sees it first ends it.
                expired.push(Write::ExpireCall {
                    id: row.id,
                    at_ms: now,
                });
                continue;
            }
            if self.epoch(&row.node).is_some() && runtime.adopt_queued(row.clone()) {
                info!(call = row.id, node = %row.node, "call queued on another daemon taken");
            }
        }
        if !expired.is_empty() {
            self.store.write(expired).await?;
        }

        Ok(())
    }

    /// Runs the calls pass every [`CALLS_INTERVAL`] and the sync pass every
    /// [`SYNC_INTERVAL`].
    pub fn spawn_sync(
        self: &Arc<Self>,
        runtime: Arc<Runtime>,
        revocations: Arc<LiveRevocations>,
        pairing: Arc<crate::pairing_responder::ServiceResponder>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CALLS_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let every = (SYNC_INTERVAL.as_millis() / CALLS_INTERVAL.as_millis()).max(1) as u64;
            let mut ticks = 0u64;
            let mut pass = 0u64;
            // The start of the last pass that worked; what changed since is read again
            // with a margin for clocks and commits in flight.
            let mut last_ok: Option<u64> = None;
            loop {
                tick.tick().await;
                if let Err(e) = me.sync_calls(&runtime).await {
                    warn!(error = %e, "reading calls queued on other daemons failed");
                }
                ticks += 1;
                if !ticks.is_multiple_of(every) {
                    continue;
                }
                let started = now_ms();
                let since = last_ok
                    .filter(|_| !pass.is_multiple_of(FULL_PASS_EVERY))
                    .map(|t| t.saturating_sub(SINCE_MARGIN_MS));
                pass += 1;
                match me.sync(&runtime, &revocations, &pairing, since).await {
                    Ok(()) => last_ok = Some(started),
                    Err(e) => warn!(error = %e, "reading the other daemons' work failed"),
                }
            }
        })
    }
}

impl Ownership for Cluster {
    fn owns(&self, node: &str) -> bool {
        self.epoch(node).is_some()
    }

    fn claim(&self, node: &str) -> Result<Claimed, String> {
        let store = self.store.clone();
        let (owner, node_id) = (self.daemon_id.clone(), node.to_owned());
        let claim = async move {
            let taken = store.take_session(&node_id, &owner, now_ms()).await?;
            Ok::<_, StoreError>(Claimed {
                epoch: taken.epoch,
                journal: taken.journal,
                calls: taken.calls,
            })
        };
        // The transports ask on a runtime thread; the store answers on the same
        // runtime, so this thread steps aside while it waits.
        let claimed = tokio::task::block_in_place(|| self.handle.block_on(claim))
            .map_err(|e| format!("claiming node {node}: {e}"))?;
        self.owned().insert(node.to_owned(), claimed.epoch);
        Ok(claimed)
    }
}

/// The journal as the transports commit it: each session's batch goes with a fence on
/// its node's epoch, so a daemon that lost the node (paused, cut off) cannot write
/// it again; a fenced batch closes the node's connection here.
#[derive(Debug)]
pub struct FencedJournal {
    pub cluster: Arc<Cluster>,
}

impl JournalStore for FencedJournal {
    fn commit(&self, batches: Vec<Batch>) -> CommitFuture {
        let cluster = self.cluster.clone();
        let pending: Vec<_> = batches
            .into_iter()
            .map(|batch| {
                let node = batch.key.to_string();
                let write = match cluster.epoch(&node) {
                    Some(epoch) => cluster.store.write(vec![
                        Write::Fence {
                            node: node.clone(),
                            owner: cluster.daemon_id.clone(),
                            epoch,
                        },
                        Write::Journal(batch),
                    ]),
                    None => crate::store::Pending::failed(StoreError::Fenced {
                        node: node.clone(),
                        epoch: 0,
                    }),
                };
                (node, write)
            })
            .collect();
        Box::pin(async move {
            let mut failed = None;
            for (node, write) in pending {
                match write.await {
                    Ok(_) => {}
                    Err(e @ StoreError::Fenced { .. }) => {
                        cluster
                            .fenced
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        warn!(%node, error = %e, "journal write fenced");
                        cluster.lost(&node);
                        failed = Some(e);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            match failed {
                None => Ok(()),
                Some(e) => Err(JournalError(e.to_string())),
            }
        })
    }
}

/// This daemon's name among those sharing the store: as configured, else one drawn at
/// its first start and kept in its state directory.
pub fn daemon_id(configured: Option<&str>, state_dir: &std::path::Path) -> Result<String, String> {
    if let Some(id) = configured {
        return Ok(id.to_owned());
    }
    let path = state_dir.join("daemon-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(|e| e.to_string())?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let id = format!("ternd-{id}");
    std::fs::write(&path, &id).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(id)
}
