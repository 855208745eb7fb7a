//! The node host's session application: it registers the capabilities, runs calls on
//! tokio and answers them, stops cancelled and expired calls, and sends the host's
//! events.
//!
//! [`HostApp`] is the driver's [`Application`] for a `NodeSession`. A call's handler
//! runs on its own task; its progress reports and its outcome come back as
//! [`HostCommand`]s on the driver's command channel and go into the session there.
//! Whatever the session has no room for yet (its replay buffer is full until the daemon
//! acknowledges) waits in order in a queue that is retried after every input; events
//! from [`NodeHandle::send_event`] hold a permit of a bounded semaphore until the
//! session took them, so producers wait instead of losing events.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use protocol_core::session::{
    CloseReason, Instant, NodeSession, OwnedNodeEvent, OwnedOutcome, OwnedPayload, SessionError,
};
use protocol_core::wire::{
    CallId, Capabilities, GoodbyeReason, Payload, Register, SessionId, Stage,
};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use transport_tokio::Application;

use super::capabilities::{CallContext, Registry, success};

/// The session type the node host drives.
pub type HostSession = NodeSession<Box<[u8]>>;

/// Longest event name accepted from the host.
pub const MAX_EVENT_NAME: usize = 64;

/// Progress reports a running handler may have in flight before it waits.
const PROGRESS_QUEUE: usize = 8;

/// The state of the node's link, as the host sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// A connection is up (the hello exchange finished).
    pub connected: bool,
    /// The session, once the daemon named one.
    pub session: Option<SessionId>,
    /// The last hello-ack resumed the session rather than starting one.
    pub resumed: bool,
    /// Connections that came up so far.
    pub connections: u64,
    /// How the last connection ended.
    pub last_close: Option<CloseReason>,
}

/// Why an event was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    /// Empty, or longer than [`MAX_EVENT_NAME`].
    BadName(String),
    /// The payload does not encode as JSON.
    Encode(String),
    /// It can never fit in a frame or the replay buffer.
    TooLarge,
    /// The node host stopped.
    Stopped,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::BadName(n) => {
                write!(f, "event name {n:?} must be 1-{MAX_EVENT_NAME} bytes")
            }
            EventError::Encode(e) => write!(f, "event payload is not JSON: {e}"),
            EventError::TooLarge => f.write_str("event too large for the session"),
            EventError::Stopped => f.write_str("the node host stopped"),
        }
    }
}

impl std::error::Error for EventError {}

/// A command on the driver's channel: a handler's progress or outcome, a host event, or
/// the shutdown.
pub struct HostCommand(Cmd);

enum Cmd {
    Progress {
        call_id: CallId,
        stage: Stage,
        detail: String,
    },
    Finished {
        call_id: CallId,
        outcome: OwnedOutcome,
    },
    Event(QueuedEvent),
    Shutdown,
}

impl fmt::Debug for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Cmd::Progress { call_id, stage, .. } => write!(f, "Progress({call_id}, {stage:?})"),
            Cmd::Finished { call_id, .. } => write!(f, "Finished({call_id})"),
            Cmd::Event(e) => write!(f, "Event({})", e.name),
            Cmd::Shutdown => f.write_str("Shutdown"),
        }
    }
}

struct QueuedEvent {
    name: String,
    data: Vec<u8>,
    /// Held until the session took the event: bounds what waits.
    _permit: OwnedSemaphorePermit,
    done: oneshot::Sender<Result<(), EventError>>,
}

/// What waits for room in the session, in order.
enum Pending {
    Register,
    Progress {
        call_id: CallId,
        stage: Stage,
        detail: String,
    },
    Complete {
        call_id: CallId,
        outcome: OwnedOutcome,
    },
    Event(QueuedEvent),
}

/// The host's side of a running node: sends events, watches the link, stops the host.
#[derive(Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<HostCommand>,
    event_permits: Arc<Semaphore>,
    status: watch::Receiver<LinkStatus>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeHandle")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    /// Sends event `name` with `payload` as JSON. Resolves once the session took it (it
    /// is then delivered at least once, across reconnects); while the session has no
    /// room, or no connection, this waits.
    pub async fn send_event(&self, name: &str, payload: &impl Serialize) -> Result<(), EventError> {
        if name.is_empty() || name.len() > MAX_EVENT_NAME {
            return Err(EventError::BadName(name.to_owned()));
        }
        let data = serde_json::to_vec(payload).map_err(|e| EventError::Encode(e.to_string()))?;
        let permit = self
            .event_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EventError::Stopped)?;
        let (done, accepted) = oneshot::channel();
        let event = QueuedEvent {
            name: name.to_owned(),
            data,
            _permit: permit,
            done,
        };
        self.commands
            .send(HostCommand(Cmd::Event(event)))
            .await
            .map_err(|_| EventError::Stopped)?;
        accepted.await.map_err(|_| EventError::Stopped)?
    }

    /// Where commands for the connection go: a transport hands back here what it could
    /// not deliver to a connection that ended.
    pub(crate) fn command_sender(&self) -> mpsc::Sender<HostCommand> {
        self.commands.clone()
    }

    /// The link's state, updated as it changes.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.status.clone()
    }

    /// Stops the host: the connection closes with a goodbye, and the loop ends.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        // With the channel full, the loop's own shutdown watch still ends the connection.
        let _ = self.commands.try_send(HostCommand(Cmd::Shutdown));
    }

    pub(crate) fn shutdown_watch(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// The driver's application for the node's session.
pub struct HostApp {
    registry: Arc<Registry>,
    commands: mpsc::Sender<HostCommand>,
    running: HashMap<CallId, AbortHandle>,
    pending: VecDeque<Pending>,
    /// Registered on a connection of this process (a restored session registered in an
    /// earlier one, maybe with other capabilities).
    registered: bool,
    status: watch::Sender<LinkStatus>,
    last_close: Option<CloseReason>,
    /// A session came up (hello exchange done) since the last look.
    came_up: bool,
}

impl fmt::Debug for HostApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostApp")
            .field("registry", &self.registry)
            .field("running", &self.running.len())
            .field("pending", &self.pending.len())
            .field("registered", &self.registered)
            .finish_non_exhaustive()
    }
}

impl Drop for HostApp {
    fn drop(&mut self) {
        self.running.values().for_each(AbortHandle::abort);
    }
}

impl HostApp {
    /// An application for `registry`, the command channel (`capacity` commands) the
    /// driver must be given, and the handle the host keeps. At most `max_events` host
    /// events wait for the session at a time.
    pub fn new(
        registry: Arc<Registry>,
        capacity: usize,
        max_events: usize,
    ) -> (Self, mpsc::Receiver<HostCommand>, NodeHandle) {
        let (commands, rx) = mpsc::channel(capacity.max(1));
        let (status, status_rx) = watch::channel(LinkStatus::default());
        let (shutdown, _) = watch::channel(false);
        let handle = NodeHandle {
            commands: commands.clone(),
            event_permits: Arc::new(Semaphore::new(max_events.max(1))),
            status: status_rx,
            shutdown: Arc::new(shutdown),
        };
        let app = Self {
            registry,
            commands,
            running: HashMap::new(),
            pending: VecDeque::new(),
            registered: false,
            status,
            last_close: None,
            came_up: false,
        };
        (app, rx, handle)
    }

    /// How the last connection ended, taken (`None` once read).
    pub fn take_close_reason(&mut self) -> Option<CloseReason> {
        self.last_close.take()
    }

    /// Whether a session came up (new or resumed) since the last call: the daemon
    /// answered, so the next reconnection starts its backoff over.
    pub fn take_came_up(&mut self) -> bool {
        std::mem::take(&mut self.came_up)
    }

    /// Calls whose handlers run now.
    pub fn running_calls(&self) -> usize {
        self.running.len()
    }

    fn on_event(&mut self, ev: OwnedNodeEvent) {
        match ev {
            OwnedNodeEvent::Connected {
                session, resumed, ..
            } => {
                self.came_up = true;
                if !resumed || !self.registered {
                    self.registered = true;
                    self.pending.push_back(Pending::Register);
                }
                self.status.send_modify(|s| {
                    s.connected = true;
                    s.session = Some(session);
                    s.resumed = resumed;
                    s.connections += 1;
                });
            }
            OwnedNodeEvent::Disconnected(reason) => {
                self.last_close = Some(reason);
                self.status.send_modify(|s| {
                    s.connected = false;
                    s.last_close = Some(reason);
                });
            }
            OwnedNodeEvent::SessionReset { .. } => {
                // The daemon lost our registration and its calls with the rest: their
                // answers have nowhere to go.
                self.registered = false;
                self.running.drain().for_each(|(_, task)| task.abort());
                self.pending.retain(|p| matches!(p, Pending::Event(_)));
            }
            OwnedNodeEvent::Call {
                call_id,
                capability,
                input,
                ..
            } => self.start_call(call_id, &capability, input),
            OwnedNodeEvent::Cancel {
                call_id, active, ..
            } => {
                if let Some(task) = self.running.remove(&call_id) {
                    task.abort();
                }
                if active {
                    self.pending.push_back(Pending::Complete {
                        call_id,
                        outcome: OwnedOutcome::Cancelled,
                    });
                }
            }
            OwnedNodeEvent::CallExpired { call_id, .. } => {
                // The session answered `TimedOut` already.
                if let Some(task) = self.running.remove(&call_id) {
                    task.abort();
                }
            }
            // Answered by the session itself, or nothing to do.
            OwnedNodeEvent::CallInterrupted { .. }
            | OwnedNodeEvent::DuplicateCall { .. }
            | OwnedNodeEvent::CallNotRun { .. }
            | OwnedNodeEvent::Gap { .. }
            | OwnedNodeEvent::JournalFailed => {}
        }
    }

    fn start_call(&mut self, call_id: CallId, capability: &str, input: OwnedPayload) {
        let (ctx, mut progress) = CallContext::with_progress(PROGRESS_QUEUE);
        let output_type = self
            .registry
            .get(capability)
            .map(|c| c.descriptor().clone());
        let call = self
            .registry
            .call(capability, &input.content_type, input.data, ctx);
        let (fut, descriptor) = match (call, output_type) {
            (Ok(fut), Some(d)) => (fut, d),
            (Err(e), _) => {
                self.pending.push_back(Pending::Complete {
                    call_id,
                    outcome: e.to_outcome(),
                });
                return;
            }
            (Ok(_), None) => return,
        };
        let tx = self.commands.clone();
        let task = tokio::spawn(async move {
            let mut fut = fut;
            let result = loop {
                tokio::select! {
                    biased;
                    Some(p) = progress.recv() => {
                        let cmd = Cmd::Progress { call_id, stage: p.stage, detail: p.detail };
                        let _ = tx.send(HostCommand(cmd)).await;
                    }
                    r = &mut fut => break r,
                }
            };
            // Reports made just before the end go first, in order.
            while let Ok(p) = progress.try_recv() {
                let cmd = Cmd::Progress {
                    call_id,
                    stage: p.stage,
                    detail: p.detail,
                };
                let _ = tx.send(HostCommand(cmd)).await;
            }
            let outcome = match result {
                Ok(out) => success(&descriptor, out),
                Err(e) => e.to_outcome(),
            };
            let _ = tx
                .send(HostCommand(Cmd::Finished { call_id, outcome }))
                .await;
        });
        self.running.insert(call_id, task.abort_handle());
    }

    /// Puts what waits into the session, in order, until it has no room.
    fn flush(&mut self, session: &mut HostSession) {
        while let Some(front) = self.pending.front() {
            let result = match front {
                Pending::Register => {
                    let list = self.registry.wire_descriptors();
                    match Capabilities::new(&list) {
                        Ok(capabilities) => session.register(Register { capabilities }),
                        // A registry holds at most the protocol's maximum.
                        Err(_) => Err(SessionError::TooLarge),
                    }
                }
                Pending::Progress {
                    call_id,
                    stage,
                    detail,
                } => session.progress(*call_id, *stage, detail),
                Pending::Complete { call_id, outcome } => {
                    session.complete(*call_id, outcome.as_outcome())
                }
                Pending::Event(e) => session.send_event(
                    &e.name,
                    Payload {
                        content_type: node_contract::JSON,
                        data: &e.data,
                    },
                ),
            };
            if matches!(result, Err(SessionError::Full | SessionError::NoStorage)) {
                // Room comes with the daemon's acknowledgements.
                return;
            }
            let Some(done) = self.pending.pop_front() else {
                return;
            };
            // Other errors: the call ended meanwhile (cancelled, expired), or an event
            // that can never fit, which its sender learns.
            if let Pending::Event(e) = done {
                let answer = result.map(|_| ()).map_err(|err| match err {
                    SessionError::TooLarge | SessionError::Unencodable => EventError::TooLarge,
                    _ => EventError::Stopped,
                });
                let _ = e.done.send(answer);
            }
        }
    }
}

impl Application<HostSession> for HostApp {
    type Command = HostCommand;

    fn handle_events(&mut self, session: &mut HostSession, _: Instant) {
        while let Some(ev) = session.poll_event() {
            let ev = OwnedNodeEvent::from(ev);
            self.on_event(ev);
        }
        self.flush(session);
    }

    fn handle_command(&mut self, session: &mut HostSession, now: Instant, command: HostCommand) {
        match command.0 {
            Cmd::Progress {
                call_id,
                stage,
                detail,
            } => self.pending.push_back(Pending::Progress {
                call_id,
                stage,
                detail,
            }),
            Cmd::Finished { call_id, outcome } => {
                self.running.remove(&call_id);
                self.pending
                    .push_back(Pending::Complete { call_id, outcome });
            }
            Cmd::Event(e) => self.pending.push_back(Pending::Event(e)),
            Cmd::Shutdown => session.close(now, GoodbyeReason::Shutdown),
        }
        self.flush(session);
    }
}
