//! The sessions the transports borrow: one per node, kept here while the node is away.

use std::sync::Arc;

use protocol_core::session::DaemonSession;
use protocol_core::wire::ErrorCode;
use tracing::info;
use transport_tokio::host::{Closed, Commands, Opened, Peer, Refusal, Sessions, TransportKind};

use super::app::{NodeApp, node_row};
use super::persist::{Write, now_ms};
use super::{NodeEntry, NodeSessionState, Runtime, RuntimeCommand};

/// The runtime as both transports see it: a node's session for each of its
/// connections (created at its first), given back when the connection ends.
#[derive(Clone, Debug)]
pub struct Registry {
    runtime: Arc<Runtime>,
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
}

impl Sessions<NodeSessionState> for Registry {
    type App = NodeApp;

    fn open(
        &mut self,
        peer: &Peer,
        commands: Commands<RuntimeCommand>,
    ) -> Result<Opened<NodeSessionState, NodeApp>, Refusal> {
        // On a shared store the session may be another daemon's: claim it first.
        self.runtime.take_over(&peer.device_id).map_err(|e| {
            tracing::warn!(node = %peer.device_id, error = %e, "taking the session over failed");
            Refusal::new(
                ErrorCode::Overloaded,
                "the daemon cannot take the session now; retry",
            )
        })?;
        let mut state = self.runtime.lock();
        let state = &mut *state;
        let entry = state
            .nodes
            .entry(peer.device_id.clone())
            .or_insert_with(|| NodeEntry::new(&peer.device_id));
        let session = match entry.session.take() {
            Some(s) => s,
            None if entry.connection.is_some() => {
                // The node's previous connection still holds the session (a half-open
                // connection it gave up on): close it; the node's retry gets it.
                if let Some(old) = &entry.connection {
                    let _ = old.try_send(RuntimeCommand::Close(ErrorCode::Overloaded));
                }
                return Err(Refusal::new(
                    ErrorCode::Overloaded,
                    "the node's previous connection is closing; retry",
                ));
            }
            None => DaemonSession::new(self.runtime.config, &peer.device_id, &mut state.rng)
                .map_err(|e| Refusal::new(ErrorCode::Internal, format!("session: {e:?}")))?,
        };
        entry.connection = Some(commands);
        let scheme = scheme(peer.transport);
        info!(node = %peer.device_id, transport = scheme, addr = %peer.addr, "node connected");
        entry.info.address = Some(format!("{scheme}://{}", peer.addr));
        entry.info.transport = Some(peer.transport);
        entry.info.last_seen_ms = now_ms();
        Ok(Opened {
            session,
            app: NodeApp {
                runtime: self.runtime.clone(),
                node: peer.device_id.clone(),
            },
            journal_key: peer.device_id.as_str().into(),
        })
    }

    fn closed(&mut self, peer: &Peer, session: NodeSessionState, _: NodeApp, how: Closed) {
        info!(
            node = %peer.device_id,
            transport = scheme(peer.transport),
            addr = %peer.addr,
            reason = %how,
            "node disconnected"
        );
        let row = {
            let mut state = self.runtime.lock();
            let Some(entry) = state.nodes.get_mut(&peer.device_id) else {
                return;
            };
            entry.session = Some(session);
            entry.connection = None;
            entry.info.online = false;
            entry.info.last_seen_ms = now_ms();
            node_row(&entry.info)
        };
        self.runtime.store.submit(vec![Write::PutNode(row)]);
    }
}

/// The scheme of a node's address, as operators read it.
fn scheme(transport: TransportKind) -> &'static str {
    match transport {
        TransportKind::Quic => "quic",
        TransportKind::Tcp => "tcp",
    }
}
