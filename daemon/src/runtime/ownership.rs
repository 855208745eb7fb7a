//! A node's session when several daemons share one store: it is owned by one daemon at a
//! time, at an epoch the store keeps. Before a connection is lent a session this daemon
//! does not own, the session is claimed (the epoch goes up) and rebuilt from what the
//! store holds: the journal the previous owner committed and the node's open calls.
//! Losing ownership (another daemon claimed the node, or a journal write was fenced)
//! closes the node's connection here and forgets its calls without writing them: the
//! new owner records how they end.

use std::sync::Arc;

use protocol_core::session::{DaemonSession, MemJournal};
use protocol_core::wire::ErrorCode;
use tracing::info;

use super::persist::now_ms;
use super::{CallStatus, Runtime, RuntimeCommand};
use crate::model::Call;

/// What a claim brings back.
#[derive(Debug)]
pub struct Claimed {
    pub epoch: u64,
    pub journal: MemJournal,
    /// The node's calls not yet final, as the store holds them.
    pub calls: Vec<Call>,
}

/// The store's side of ownership, as the runtime needs it.
pub trait Ownership: Send + Sync + 'static {
    /// Whether this daemon owns `node`'s session now (as far as it knows).
    fn owns(&self, node: &str) -> bool;

    /// Claims `node` for this daemon and reads what rebuilds its session. Blocks the
    /// calling thread (a store round trip or three); called outside the runtime's lock.
    fn claim(&self, node: &str) -> Result<Claimed, String>;
}

impl Runtime {
    /// Where ownership is kept; without one (a store of its own) this daemon owns every
    /// node.
    pub fn set_ownership(&self, ownership: Arc<dyn Ownership>) {
        let _ = self.ownership.set(ownership);
    }

    pub(crate) fn ownership(&self) -> Option<&Arc<dyn Ownership>> {
        self.ownership.get()
    }

    /// Makes this daemon the owner of `node`'s session if it is not, rebuilding the
    /// session from the store. Blocks while the store answers.
    pub(crate) fn take_over(&self, node: &str) -> Result<(), String> {
        let Some(ownership) = self.ownership() else {
            return Ok(());
        };
        if ownership.owns(node) {
            return Ok(());
        }
        let claimed = ownership.claim(node)?;
        let mut state = self.lock();
        let state = &mut *state;
        let mut session = DaemonSession::restore(
            self.config,
            node,
            Some(self.pool.take()),
            &claimed.journal,
            &mut state.rng,
        )
        .map_err(|e| format!("restoring the session of {node}: {e:?}"))?;
        if let Some(buf) = session.reclaim() {
            self.pool.put(buf);
        }
        let entry = state
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| super::NodeEntry::new(node));
        if let Some(mut old) = entry.session.replace(session)
            && let Some(buf) = old.reclaim()
        {
            self.pool.put(buf);
        }
        // What this daemon remembered of the node's calls is stale: the store's rows
        // are the truth now.
        let stale: Vec<u64> = entry
            .queue
            .drain(..)
            .chain(entry.in_session.drain().map(|(_, id)| id))
            .collect();
        for id in stale {
            state.calls.forget(id);
        }
        for row in claimed.calls {
            let id = row.id;
            match row.session_call {
                Some(sc) => {
                    entry.in_session.insert(sc, id);
                    state.calls.adopt(row);
                }
                None if row.state == CallStatus::Queued => {
                    entry.queue.push_back(id);
                    state.calls.adopt(row);
                }
                None => {}
            }
        }
        info!(%node, epoch = claimed.epoch, "session taken over");
        Ok(())
    }

    /// Another daemon owns `node` now: close its connection here, forget its calls.
    pub fn lose(&self, node: &str) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(entry) = state.nodes.get_mut(node) else {
            return;
        };
        if let Some(conn) = &entry.connection {
            let _ = conn.try_send(RuntimeCommand::Close(ErrorCode::Overloaded));
        }
        let ids: Vec<u64> = entry
            .queue
            .drain(..)
            .chain(entry.in_session.drain().map(|(_, id)| id))
            .collect();
        for id in ids {
            state.calls.forget(id);
        }
        info!(%node, "session owned by another daemon now");
    }

    /// A call another daemon queued for a node this daemon holds: into the node's
    /// queue, and to the node now if it is connected. `false` if it is known already.
    pub fn adopt_queued(&self, row: Call) -> bool {
        let mut state = self.lock();
        let state = &mut *state;
        if state.calls.get(row.id).is_some() || row.deadline_ms <= now_ms() {
            return false;
        }
        let Some(entry) = state.nodes.get_mut(&row.node) else {
            return false;
        };
        entry.queue.push_back(row.id);
        if let Some(conn) = &entry.connection {
            let _ = conn.try_send(RuntimeCommand::Dispatch);
        }
        state.calls.adopt(row);
        true
    }

    /// A call id no daemon sharing the store has used or will use.
    pub fn next_call_id(&self) -> u64 {
        self.lock().calls.next_id()
    }
}
