//! A connected node's application: what its session's events change in the runtime,
//! and how queued calls go into its session.

use std::sync::Arc;

use node_contract::names::RENEW_EVENT;
use protocol_core::session::{
    CallState, Instant, OwnedDaemonEvent, OwnedLateAnswer, OwnedOutcome, SessionError,
};
use protocol_core::wire::{GoodbyeReason, Payload};
use tracing::{info, warn};
use transport_tokio::Application;

use super::calls::CallStatus;
use super::persist::{Write, now_ms};
use super::{Capability, NodeSessionState, Runtime, RuntimeCommand, State};
use crate::model::{EventOrigin, NewEvent, Node};

/// The application of one node's connection.
pub struct NodeApp {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) node: String,
}

impl std::fmt::Debug for NodeApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeApp").field("node", &self.node).finish()
    }
}

impl Application<NodeSessionState> for NodeApp {
    type Command = RuntimeCommand;

    fn handle_events(&mut self, session: &mut NodeSessionState, now: Instant) {
        let mut writes = Vec::new();
        let mut renewals = Vec::new();
        {
            let mut state = self.runtime.lock();
            while let Some(event) = session.poll_event() {
                let owned = OwnedDaemonEvent::from(event);
                if let OwnedDaemonEvent::Event { name, payload, .. } = &owned
                    && name == RENEW_EVENT
                {
                    renewals.push(payload.data.clone());
                }
                self.apply(&mut state, owned, &mut writes);
            }
            self.dispatch(&mut state, session, now, &mut writes);
        }
        for body in renewals {
            // Answered with a call once the CA has signed; not on this task.
            tokio::spawn(self.runtime.clone().renew(self.node.clone(), body));
        }
        let stored_event = writes.iter().any(|w| matches!(w, Write::AppendEvent(_)));
        if !writes.is_empty() {
            self.runtime.store.submit(writes);
        }
        if stored_event {
            self.runtime.events_stored.notify_waiters();
        }
    }

    fn handle_command(
        &mut self,
        session: &mut NodeSessionState,
        now: Instant,
        command: RuntimeCommand,
    ) {
        match command {
            RuntimeCommand::Dispatch => {
                let mut writes = Vec::new();
                {
                    let mut state = self.runtime.lock();
                    self.dispatch(&mut state, session, now, &mut writes);
                }
                if !writes.is_empty() {
                    self.runtime.store.submit(writes);
                }
            }
            RuntimeCommand::Close(_) => session.close(now, GoodbyeReason::Shutdown),
        }
    }
}

impl NodeApp {
    fn apply(&self, state: &mut State, event: OwnedDaemonEvent, writes: &mut Vec<Write>) {
        let now = now_ms();
        let Some(entry) = state.nodes.get_mut(&self.node) else {
            return;
        };
        entry.info.last_seen_ms = now;
        match event {
            OwnedDaemonEvent::Connected {
                session,
                platform,
                resumed,
                version,
            } => {
                info!(node = %self.node, resumed, version, "node session up");
                entry.session_id = Some(session);
                entry.info.online = true;
                entry.info.platform = Some(platform);
                writes.push(Write::PutNode(node_row(&entry.info)));
            }
            OwnedDaemonEvent::Register { capabilities, .. } => {
                entry.info.capabilities = capabilities
                    .into_iter()
                    .map(|c| Capability {
                        name: c.name,
                        version: c.version,
                        input: c.input,
                        output: c.output,
                        needs_approval: c.needs_approval,
                    })
                    .collect();
                writes.push(Write::PutNode(node_row(&entry.info)));
            }
            OwnedDaemonEvent::Event { seq, name, payload } => {
                writes.push(Write::AppendEvent(NewEvent {
                    node: self.node.clone(),
                    name,
                    content_type: payload.content_type,
                    body: payload.data,
                    at_ms: now,
                    // Where it stood in the node's stream: a replay is stored once.
                    origin: Some(EventOrigin {
                        session: entry.session_id.unwrap_or_default(),
                        stream_seq: seq,
                    }),
                }));
            }
            OwnedDaemonEvent::CallUpdate {
                call_id,
                state: call_state,
                outcome,
                ..
            } => {
                let Some(&id) = entry.in_session.get(&call_id) else {
                    if CallStatus::from(call_state).is_final() {
                        // The runtime ended the call first (its deadline passed while
                        // the node was away): what the node did is only logged.
                        warn!(node = %self.node, call = call_id, state = ?call_state, "answer arrived after the call had expired");
                    }
                    return;
                };
                let status = CallStatus::from(call_state);
                if status == CallStatus::TimedOut {
                    info!(node = %self.node, call = id, "call timed out before the node answered");
                }
                if status.is_final() {
                    entry.in_session.remove(&call_id);
                    let (output, message) = match outcome {
                        Some(OwnedOutcome::Success(p)) => {
                            (Some((p.content_type, p.data)), String::new())
                        }
                        Some(OwnedOutcome::Failed { reason }) => (None, reason),
                        Some(OwnedOutcome::Rejected { code, reason }) => {
                            (None, format!("rejected ({code:?}): {reason}"))
                        }
                        Some(OwnedOutcome::Cancelled) => (None, "cancelled".into()),
                        Some(OwnedOutcome::TimedOut) => (None, "timed out on the node".into()),
                        None => (None, describe(call_state).into()),
                    };
                    if let Some((_, row)) = state.calls.finish(id, now, status, output, message) {
                        if status == CallStatus::TimedOut {
                            entry.gave_up(row.clone());
                        }
                        writes.push(Write::PutCall(row));
                    }
                } else if let Some(row) = state.calls.update(id, now, status, None) {
                    writes.push(Write::PutCall(row));
                }
            }
            OwnedDaemonEvent::Disconnected(_) => {
                entry.info.online = false;
            }
            OwnedDaemonEvent::LateAnswer {
                answer: OwnedLateAnswer::Result { call_id, outcome },
                ..
            } if entry.timed_out.contains_key(&call_id) => {
                let Some(mut row) = entry.timed_out.remove(&call_id) else {
                    return;
                };
                // The record says what happened: timed out at one time, answered at
                // another (an operator must not retry a call that ran).
                row.timed_out_ms = Some(row.updated_ms);
                row.updated_ms = now;
                let (status, output, message) = late_outcome(outcome);
                row.state = status;
                if let Some((content_type, bytes)) = output {
                    row.output = Some(crate::model::Payload {
                        content_type,
                        bytes,
                    });
                }
                row.error = (!message.is_empty()).then_some(message);
                warn!(node = %self.node, call = row.id, state = status.as_str(), "the node answered after the call timed out; recorded");
                writes.push(Write::PutCall(row));
            }
            OwnedDaemonEvent::LateAnswer { seq, answer } => {
                warn!(node = %self.node, seq, ?answer, "answer arrived after the call's deadline");
            }
            OwnedDaemonEvent::SessionReset { .. } => {
                warn!(node = %self.node, "node session reset: a new session replaces the one it had");
            }
            OwnedDaemonEvent::Gap { from, to } => {
                warn!(node = %self.node, from, to, "node messages lost (its replay buffer overflowed)");
            }
            OwnedDaemonEvent::JournalFailed => {}
        }
    }

    /// Moves queued calls into the session while it has room; a call whose deadline
    /// passed is left for [`Runtime::expire`](super::Runtime::expire), never sent.
    fn dispatch(
        &self,
        state: &mut State,
        session: &mut NodeSessionState,
        now: Instant,
        writes: &mut Vec<Write>,
    ) {
        let now_wall = now_ms();
        let Some(entry) = state.nodes.get_mut(&self.node) else {
            return;
        };
        if !entry.info.online {
            return;
        }
        while let Some(&id) = entry.queue.front() {
            let Some(call) = state.calls.get(id) else {
                entry.queue.pop_front();
                continue;
            };
            let left = state.calls.time_left(id, now_wall).unwrap_or(0);
            if left == 0 {
                entry.queue.pop_front();
                continue;
            }
            let input = Payload {
                content_type: &call.input.content_type,
                data: &call.input.bytes,
            };
            let timeout = u32::try_from(left).unwrap_or(u32::MAX);
            match session.call(now, &call.capability, input, timeout) {
                Ok(session_call) => {
                    entry.queue.pop_front();
                    entry.in_session.insert(session_call, id);
                    if let Some(row) =
                        state
                            .calls
                            .update(id, now_wall, CallStatus::Queued, Some(session_call))
                    {
                        writes.push(Write::PutCall(row));
                    }
                }
                // No room now: the next acknowledgement or answer makes some.
                Err(SessionError::Full | SessionError::TooManyCalls | SessionError::NoStorage) => {
                    break;
                }
                Err(e) => {
                    entry.queue.pop_front();
                    let message = format!("the call cannot be sent: {e}");
                    if let Some((_, row)) =
                        state
                            .calls
                            .finish(id, now_wall, CallStatus::Undeliverable, None, message)
                    {
                        writes.push(Write::PutCall(row));
                    }
                }
            }
        }
    }
}

pub(crate) fn node_row(info: &super::NodeInfo) -> Node {
    Node {
        id: info.id.clone(),
        // The store keeps the first sighting; a later one never moves it.
        first_seen_ms: info.last_seen_ms,
        online: info.online,
        last_seen_ms: info.last_seen_ms,
        platform: info.platform.clone(),
        address: info.address.clone(),
        capabilities: info.capabilities.clone(),
    }
}

/// A node's answer as the call's record keeps it.
fn late_outcome(outcome: OwnedOutcome) -> (CallStatus, Option<(String, Vec<u8>)>, String) {
    match outcome {
        OwnedOutcome::Success(p) => (
            CallStatus::Succeeded,
            Some((p.content_type, p.data)),
            String::new(),
        ),
        OwnedOutcome::Failed { reason } => (CallStatus::Failed, None, reason),
        OwnedOutcome::Rejected { code, reason } => (
            CallStatus::Rejected,
            None,
            format!("rejected ({code:?}): {reason}"),
        ),
        OwnedOutcome::Cancelled => (CallStatus::Cancelled, None, "cancelled".into()),
        OwnedOutcome::TimedOut => (CallStatus::TimedOut, None, "timed out on the node".into()),
    }
}

fn describe(state: CallState) -> &'static str {
    match state {
        CallState::Lost => "the node restarted without its memory before answering",
        CallState::Undeliverable => "larger than the node accepts",
        CallState::TimedOut => "deadline passed",
        _ => "",
    }
}
