//! The node's session: hello, resumption, the node->daemon stream (registrations,
//! events, call answers) and the call window that keeps a replayed call from running
//! twice.

use heapless::{String, Vec};

use super::calls::{CALL_WINDOW, CallWindow, Slot};
use super::config::{Config, MAX_NODE_ID, MAX_PLATFORM, SessionError, SetupError};
use super::event::{CloseReason, NodeEvent, NotRun};
use super::journal::{JournalMeta, JournalOp, JournalRead};
use super::link::{
    self, Farewell, Link, Notice, Outgoing, Side, State, Taken, bytes, shared_methods,
};
use super::restore::{restore_messages, restore_window};
use super::stream::KIND_GAP;
use crate::frame::{FrameError, MIN_MAX_FRAME};
use crate::time::{Earliest, Instant};
use crate::transmit::{Transmit, TransmitError};
use crate::wire::{
    self, Body, CallId, CallProgress, CallResult, ErrorCode, Event as EventBody, GoodbyeReason,
    Hello, HelloAck, Message, Outcome, Payload, Register, RejectCode, Resume, Seq, Stage,
};

/// What the node tells the daemon about a call that was running when it stopped.
pub const INTERRUPTED: &str = "interrupted: the node restarted";

/// A node's session with its daemon; see `SESSION.md`.
///
/// `B` is the storage the driver lends (`Config::storage_len` bytes): a static array on
/// a microcontroller, a pooled buffer on a server.
pub struct NodeSession<B> {
    storage: Option<B>,
    link: Link,
    window: CallWindow,
    node_id: String<MAX_NODE_ID>,
    platform: String<MAX_PLATFORM>,
    /// Calls found running in a restored journal, answered `Failed`, to report.
    interrupted: Vec<(CallId, Seq), CALL_WINDOW>,
    /// Calls found running in a restored journal whose `Failed` answer found no room in
    /// the replay buffer yet; answered, in order, once the daemon acknowledges.
    interrupt_owed: Vec<CallId, CALL_WINDOW>,
}

impl<B> core::fmt::Debug for NodeSession<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NodeSession")
            .field("node_id", &self.node_id)
            .field("session", &self.link.session)
            .field("state", &self.link.conn.state)
            .field("last_sent", &self.link.out.last())
            .field("acked", &self.link.out.acked())
            .field("delivered", &self.link.inp.delivered())
            .field("storage", &self.storage.is_some())
            .finish_non_exhaustive()
    }
}

pub(crate) fn copy_name<const N: usize>(s: &str) -> Result<String<N>, SetupError> {
    let mut out = String::new();
    out.push_str(s).map_err(|_| SetupError::NameTooLong)?;
    Ok(out)
}

/// A node has no call to rewrite and nothing to mark when a message cannot go out.
struct NodeOut;

impl Outgoing for NodeOut {
    fn time_left(&mut self, _: Instant, _: Seq, _: &[u8]) -> Option<u32> {
        None
    }
    fn undeliverable(&mut self, _: Seq, _: &[u8]) -> bool {
        true
    }
}

/// What the front of the inbox holds, read before anything changes.
#[derive(Clone, Copy)]
enum Front {
    Gap {
        from: Seq,
        to: Seq,
    },
    Call {
        seq: Seq,
        call_id: CallId,
        timeout_ms: u32,
    },
    Cancel {
        seq: Seq,
        call_id: CallId,
    },
    /// Cannot happen: bodies are checked on receipt.
    Other {
        seq: Seq,
    },
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> NodeSession<B> {
    /// A new session. `storage` may be lent now (a microcontroller's static buffer) or
    /// later with [`lend`](Self::lend).
    pub fn new(
        config: Config,
        node_id: &str,
        platform: &str,
        storage: Option<B>,
    ) -> Result<Self, SetupError> {
        config.check()?;
        let mut s = NodeSession {
            storage: None,
            link: Link::new(config),
            window: CallWindow::default(),
            node_id: copy_name(node_id)?,
            platform: copy_name(platform)?,
            interrupted: Vec::new(),
            interrupt_owed: Vec::new(),
        };
        if let Some(buf) = storage {
            s.lend_checked(buf)?;
        }
        Ok(s)
    }

    fn lend_checked(&mut self, buf: B) -> Result<(), SetupError> {
        let available = buf.as_ref().len();
        link::lend(&mut self.storage, &self.link.config, buf).map_err(|_| {
            SetupError::StorageTooSmall {
                needed: self.link.config.storage_len(),
                available,
            }
        })
    }

    /// Rebuilds a journaled node session after a restart: its session id, positions,
    /// unacknowledged messages and call window. A call that was running is answered
    /// `Failed` ([`INTERRUPTED`]) and reported as `CallInterrupted`: it may have run, and
    /// is never run again. A journal never written gives a new session.
    pub fn restore(
        config: Config,
        node_id: &str,
        platform: &str,
        storage: Option<B>,
        journal: &impl JournalRead,
    ) -> Result<Self, SetupError> {
        let mut s = Self::new(config, node_id, platform, storage)?;
        let Some(meta) = journal.meta().map_err(|_| SetupError::JournalRead)? else {
            return Ok(s);
        };
        let last = restore_messages(&mut s.link, &mut s.storage, &meta, journal, Side::Node)?.last;
        restore_window(&mut s.window, journal)?;
        s.link.session = meta.session;
        s.link.inp.restore(meta.received);
        s.link
            .track
            .restored(last, meta.acked, meta.received, meta.session);
        // Calls that were running: their outcome is unknown here. An answer the full
        // replay buffer has no room for yet is owed (its deadline no longer applies).
        let running: Vec<CallId, CALL_WINDOW> = s.window.active_ids().collect();
        for call_id in running {
            let answered = s.answer_interrupted(call_id).map_err(|e| match e {
                SessionError::NoStorage => SetupError::StorageNeeded,
                _ => SetupError::JournalInconsistent {
                    why: "no room to answer an interrupted call",
                },
            })?;
            if !answered {
                if let Some(e) = s.window.entry_mut(call_id) {
                    e.answer_owed = true;
                }
                let _ = s.interrupt_owed.push(call_id);
            }
        }
        Ok(s)
    }

    /// Answers `Failed` ([`INTERRUPTED`]) for a call that was running when the node
    /// stopped; `Ok(false)` if the replay buffer has no room yet.
    fn answer_interrupted(&mut self, call_id: CallId) -> Result<bool, SessionError> {
        let body = Body::Result(CallResult {
            call_id,
            outcome: Outcome::Failed {
                reason: INTERRUPTED,
            },
        });
        match self.enqueue(&body) {
            Ok(seq) => {
                let track = self.link.track;
                self.window
                    .set(call_id, Slot::Done { result_seq: seq }, &track);
                if let Some(e) = self.window.entry_mut(call_id) {
                    e.answer_owed = false;
                }
                let _ = self.interrupted.push((call_id, seq));
                Ok(true)
            }
            Err(SessionError::Full) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn tables_dirty(&self) -> bool {
        self.window.dirty()
    }

    /// A batch is durable: what the role's tables carried is.
    fn tables_committed(&mut self) {
        self.window.committed();
        if self.link.conn.state == State::Up && !self.link.conn.confirmed {
            self.link.conn.confirmed = self.link.session_durable();
        }
    }

    fn tables_failed(&mut self) {
        self.window.failed();
    }

    // ----- storage -----

    /// Lends storage (at least `Config::storage_len` bytes). Handed back if the session
    /// holds storage already or `buf` is too short.
    pub fn lend(&mut self, buf: B) -> Result<(), B> {
        link::lend(&mut self.storage, &self.link.config, buf)?;
        // Answers that found no storage may go now.
        self.after_ack();
        Ok(())
    }

    // ----- state -----

    shared_methods!();

    /// The session id, once a hello-ack named one.
    pub fn session_id(&self) -> Option<wire::SessionId> {
        self.link.session
    }

    /// Calls handed to the application and not yet answered.
    pub fn active_calls(&self) -> usize {
        self.window.active_count()
    }

    /// Bytes of the replay buffer in use, and its capacity.
    pub fn replay_usage(&self) -> (usize, usize) {
        (self.link.out.ring().used(), self.link.out.ring().capacity())
    }

    // ----- application commands -----

    /// Sends the node's complete capability set.
    pub fn register(&mut self, register: Register<'_>) -> Result<Seq, SessionError> {
        self.enqueue(&Body::Register(register))
    }

    /// Sends an event.
    pub fn send_event(&mut self, name: &str, payload: Payload<'_>) -> Result<Seq, SessionError> {
        self.enqueue(&Body::Event(EventBody { name, payload }))
    }

    /// Reports an interim stage of a running call.
    pub fn progress(
        &mut self,
        call_id: CallId,
        stage: Stage,
        detail: &str,
    ) -> Result<Seq, SessionError> {
        let deadline = self.active_call(call_id)?;
        let seq = self.enqueue(&Body::Progress(CallProgress {
            call_id,
            stage,
            detail,
        }))?;
        self.window.set(
            call_id,
            Slot::Active {
                stage: Some(stage),
                deadline,
            },
            &self.link.track,
        );
        Ok(seq)
    }

    /// Answers a call with its final outcome.
    pub fn complete(&mut self, call_id: CallId, outcome: Outcome<'_>) -> Result<Seq, SessionError> {
        self.active_call(call_id)?;
        let seq = self.enqueue(&Body::Result(CallResult { call_id, outcome }))?;
        self.window
            .set(call_id, Slot::Done { result_seq: seq }, &self.link.track);
        Ok(seq)
    }

    fn active_call(&self, call_id: CallId) -> Result<Instant, SessionError> {
        match self.window.find(call_id).map(|e| e.call.slot) {
            None => Err(SessionError::UnknownCall),
            Some(Slot::Done { .. }) => Err(SessionError::Finished),
            Some(Slot::Active { deadline, .. }) => Ok(deadline),
        }
    }

    fn enqueue(&mut self, body: &Body<'_>) -> Result<Seq, SessionError> {
        self.link
            .enqueue(self.storage.as_mut().map(AsMut::as_mut), body)
    }

    // ----- inputs -----

    /// The transport connection is up: the hello goes out.
    pub fn handle_connected(&mut self, now: Instant) {
        self.link.now = now;
        self.link.connected(now, true);
    }

    /// One frame's payload, as a [`FrameDecoder`](crate::frame::FrameDecoder) with this
    /// session's `max_frame` cut it. Refused, with nothing of its message stored, when it
    /// carries stream data and `Err(NoStorage)`: no storage is lent, or
    /// `Err(InboxFull)`: the inbox's message waits for the application or the journal.
    /// Offer the same frame again after lending, draining events or committing.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), SessionError> {
        self.take(now, frame, false)
    }

    /// A frame that arrived after one refused with `InboxFull`, offered before it: taken
    /// only if it has no place in the stream's order (an acknowledgement, a ping, a
    /// pong); of stream data only the acknowledgement is applied, and anything else is
    /// refused (`Err(InboxFull)`) to be offered again in its turn. The peer's ack may be
    /// what frees the room the refused frame waits for.
    pub fn handle_frame_ahead(&mut self, now: Instant, frame: &[u8]) -> Result<(), SessionError> {
        self.take(now, frame, true)
    }

    fn take(&mut self, now: Instant, frame: &[u8], ahead: bool) -> Result<(), SessionError> {
        match self
            .link
            .take_frame(&mut self.storage, now, frame, Side::Node, ahead)?
        {
            Taken::HelloAck(a) => self.on_hello_ack(a),
            Taken::Stream { acked: true } => self.after_ack(),
            Taken::Refused { acked } => {
                if acked {
                    self.after_ack();
                }
                return Err(SessionError::InboxFull);
            }
            Taken::Stream { acked: false } | Taken::Hello(_) | Taken::Nothing => {}
        }
        Ok(())
    }

    fn on_hello_ack(&mut self, a: HelloAck) {
        let link = &mut self.link;
        if !link.config.versions.contains(a.version) {
            return link.fail(ErrorCode::UnexpectedMessage, "version not offered");
        }
        if a.max_frame < MIN_MAX_FRAME {
            return link.fail(ErrorCode::UnexpectedMessage, "frame limit too small");
        }
        match link.conn.named {
            Some(s) if a.resumed && a.session == s => {}
            Some(_) => {
                // The daemon lost our session: start over in the one it names.
                let unacked = link.out.reset();
                let peer_lost_from = link.inp.delivered().saturating_add(1);
                link.inp.reset();
                self.window.clear();
                link.track.start_over();
                link.notices.reset = Some((unacked, peer_lost_from));
            }
            None if a.resumed => {
                return link.fail(
                    ErrorCode::UnexpectedMessage,
                    "resumed a session never named",
                );
            }
            // We named none (none yet, or one not durable: nothing flowed in it, since
            // neither side sends stream data before the node's session id is durable).
            None => {}
        }
        if link.session != Some(a.session) {
            link.session = Some(a.session);
            link.track.touch_meta();
        }
        let mem = bytes(&self.storage);
        match link.out.resume(mem, a.received) {
            Ok(()) => {}
            Err(_) => {
                return link.fail(ErrorCode::UnexpectedMessage, "resume beyond what was sent");
            }
        }
        if a.received > 0 || link.out.acked() > 0 {
            link.acked_moved();
        }
        link.up(a.version, a.max_frame, a.idle_timeout_ms, a.resumed);
        link.conn.ack_now = true;
        link.conn.confirmed = link.session_durable();
        self.after_ack();
    }

    /// Room may have come free: answers owed for interrupted, then timed-out calls go out.
    fn after_ack(&mut self) {
        while let Some(&id) = self.interrupt_owed.first() {
            if self.answer_interrupted(id) != Ok(true) {
                // Still owed (their entries are marked owed: not answered `TimedOut`).
                return;
            }
            self.interrupt_owed.remove(0);
        }
        while let Some(id) = self.window.first_owed() {
            if !self.answer_timed_out(id) {
                break;
            }
        }
    }

    /// Answers `TimedOut` for an expired call; false if the replay buffer had no room.
    fn answer_timed_out(&mut self, call_id: CallId) -> bool {
        let body = Body::Result(CallResult {
            call_id,
            outcome: Outcome::TimedOut,
        });
        match self.enqueue(&body) {
            Ok(seq) => {
                let track = self.link.track;
                self.window
                    .set(call_id, Slot::Done { result_seq: seq }, &track);
                if let Some(e) = self.window.entry_mut(call_id) {
                    e.answer_owed = false;
                    // Only a call the application holds is one it must stop.
                    e.expired_unreported = e.handed;
                }
                true
            }
            Err(_) => {
                if let Some(e) = self.window.entry_mut(call_id) {
                    e.answer_owed = true;
                }
                false
            }
        }
    }

    /// Timers: the connection's, and the deadlines of running calls.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.link.on_timeout(now);
        self.after_ack();
        while let Some(id) = self.window.first_expired(now) {
            if !self.answer_timed_out(id) {
                break;
            }
        }
    }

    // ----- outputs -----

    /// The next frame to send, or the close; see [`crate::transmit`].
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError> {
        self.link.now = now;
        if let Some(r) = self.link.poll_farewell(buf) {
            return r;
        }
        if !self.link.live() {
            return Ok(None);
        }
        if self.link.conn.send_hello {
            let named = self.link.nameable_session();
            let resume = named.map(|session| Resume {
                session,
                received: self.link.ack_value(),
            });
            let msg = Message::Hello(Hello {
                versions: self.link.config.versions,
                max_frame: self.link.config.max_frame,
                idle_timeout_ms: self.link.config.idle_timeout_ms,
                node_id: &self.node_id,
                platform: &self.platform,
                resume,
            });
            let r = self.link.send_control(now, &msg, buf)?;
            self.link.conn.send_hello = false;
            self.link.conn.named = named;
            return Ok(r);
        }
        let mem = bytes(&self.storage);
        self.link.poll_stream(now, mem, buf, &mut NodeOut)
    }

    /// The next deadline; at it, call [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at = Earliest::new();
        self.link.next_deadline(&mut at);
        at.add(self.window.next_deadline());
        at.get()
    }

    /// The next journal op (journaled sessions only); see `SESSION.md`.
    pub fn poll_journal(&mut self) -> Option<JournalOp<'_>> {
        let meta = JournalMeta::default();
        let table = &mut self.window;
        self.link
            .poll_journal(bytes(&self.storage), || table.poll_journal(), meta)
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<NodeEvent<'_>> {
        if let Some(notice) = self.link.poll_notice() {
            return Some(match notice {
                Notice::JournalFailed => NodeEvent::JournalFailed,
                Notice::SessionReset {
                    unacked,
                    peer_lost_from,
                } => NodeEvent::SessionReset {
                    unacked,
                    peer_lost_from,
                },
                Notice::Connected {
                    session,
                    resumed,
                    version,
                } => NodeEvent::Connected {
                    session,
                    resumed,
                    version,
                },
                Notice::Disconnected(reason) => NodeEvent::Disconnected(reason),
            });
        }
        if !self.interrupted.is_empty() {
            let (call_id, answer) = self.interrupted.remove(0);
            return Some(NodeEvent::CallInterrupted { call_id, answer });
        }
        if let Some((call_id, slot)) = self.window.first_expired_unreported() {
            if let Some(e) = self.window.entry_mut(call_id) {
                e.expired_unreported = false;
            }
            let answer = match slot {
                Slot::Done { result_seq } => result_seq,
                Slot::Active { .. } => 0,
            };
            return Some(NodeEvent::CallExpired { call_id, answer });
        }
        self.deliver()
    }

    /// Hands the inbox's front message to the application.
    fn deliver(&mut self) -> Option<NodeEvent<'_>> {
        let front = {
            let mem = bytes(&self.storage);
            let rec = self.link.front(mem)?;
            if rec.kind == KIND_GAP {
                Front::Gap {
                    from: rec.seq,
                    to: super::stream::gap_end(&rec),
                }
            } else {
                match postcard::from_bytes::<Body<'_>>(rec.bytes) {
                    Ok(Body::Call(c)) => Front::Call {
                        seq: rec.seq,
                        call_id: c.call_id,
                        timeout_ms: c.timeout_ms,
                    },
                    Ok(Body::Cancel(c)) => Front::Cancel {
                        seq: rec.seq,
                        call_id: c.call_id,
                    },
                    _ => Front::Other { seq: rec.seq },
                }
            }
        };
        let now = self.link.now;
        match front {
            Front::Gap { from, to } => {
                self.link.delivered(bytes(&self.storage), to);
                Some(NodeEvent::Gap { from, to })
            }
            Front::Other { seq } => {
                self.link.delivered(bytes(&self.storage), seq);
                Some(NodeEvent::Gap { from: seq, to: seq })
            }
            Front::Cancel { seq, call_id } => {
                let active = matches!(
                    self.window.find(call_id).map(|e| e.call.slot),
                    Some(Slot::Active { .. })
                );
                self.link.delivered(bytes(&self.storage), seq);
                Some(NodeEvent::Cancel {
                    seq,
                    call_id,
                    active,
                })
            }
            Front::Call {
                seq,
                call_id,
                timeout_ms,
            } => self.incoming_call(now, seq, call_id, timeout_ms),
        }
    }

    /// A call at the inbox front. `None` leaves it there (no room to answer yet, or its
    /// window entry is not durable yet).
    fn incoming_call(
        &mut self,
        now: Instant,
        seq: Seq,
        call_id: CallId,
        timeout_ms: u32,
    ) -> Option<NodeEvent<'_>> {
        let track = self.link.track;
        let entry = self.window.find(call_id).copied();
        let admitted_not_handed =
            entry.is_some_and(|e| matches!(e.call.slot, Slot::Active { .. }) && !e.handed);
        if let Some(entry) = entry.filter(|_| !admitted_not_handed) {
            // Seen before: answer again, never run again.
            let answer = match entry.call.slot {
                Slot::Active { stage, .. } => {
                    let body = Body::Progress(CallProgress {
                        call_id,
                        stage: stage.unwrap_or(Stage::Running),
                        detail: "already running",
                    });
                    self.enqueue(&body).map(Some)
                }
                Slot::Done { result_seq } => self.resend(result_seq),
            };
            let answer = match answer {
                Err(SessionError::Full | SessionError::NoStorage) => return None,
                Ok(a) => a,
                Err(_) => None,
            };
            self.link.delivered(bytes(&self.storage), seq);
            return Some(NodeEvent::DuplicateCall {
                seq,
                call_id,
                answer,
            });
        }
        if !admitted_not_handed && timeout_ms == 0 {
            let (answer, ev) = self.not_run(seq, call_id, NotRun::Expired)?;
            if self.window.admit(call_id, now, &track).is_ok() {
                self.window
                    .set(call_id, Slot::Done { result_seq: answer }, &track);
            }
            return Some(ev);
        }
        if !admitted_not_handed {
            let deadline = now.plus_ms(u64::from(timeout_ms));
            if self.window.admit(call_id, deadline, &track).is_err() {
                return self.not_run(seq, call_id, NotRun::Busy).map(|(_, ev)| ev);
            }
        }
        // A journaled node runs a call only once its window entry is durable, so a
        // restart cannot run it twice.
        if !self.window.is_durable(call_id) {
            return None;
        }
        let deadline = match self.window.find(call_id).map(|e| e.call.slot) {
            Some(Slot::Active { deadline, .. }) => deadline,
            _ => now,
        };
        if deadline <= now {
            // Its deadline passed while it waited (for the journal): answered, not run.
            let (answer, ev) = self.not_run(seq, call_id, NotRun::Expired)?;
            self.window
                .set(call_id, Slot::Done { result_seq: answer }, &track);
            return Some(ev);
        }
        if let Some(e) = self.window.entry_mut(call_id) {
            e.handed = true;
        }
        let range = self.link.inp.front_body(bytes(&self.storage))?;
        let mem = bytes(&self.storage);
        self.link.delivered(mem, seq);
        // The record's bytes stay in place until the storage next changes, which the
        // event's borrow rules out.
        let Ok(Body::Call(call)) = postcard::from_bytes::<Body<'_>>(&mem[range]) else {
            return Some(NodeEvent::Gap { from: seq, to: seq });
        };
        Some(NodeEvent::Call {
            seq,
            call,
            deadline,
        })
    }

    /// Answers call message `seq` without running it, and hands it out as such; `None`
    /// if there is no room for the answer yet (it stays at the inbox front).
    fn not_run(
        &mut self,
        seq: Seq,
        call_id: CallId,
        why: NotRun,
    ) -> Option<(Seq, NodeEvent<'static>)> {
        let outcome = match why {
            NotRun::Expired => Outcome::TimedOut,
            NotRun::Busy => Outcome::Rejected {
                code: RejectCode::Busy,
                reason: "call window full",
            },
        };
        let answer = match self.enqueue(&Body::Result(CallResult { call_id, outcome })) {
            Err(SessionError::Full | SessionError::NoStorage) => return None,
            Ok(s) => s,
            Err(_) => 0,
        };
        self.link.delivered(bytes(&self.storage), seq);
        let ev = NodeEvent::CallNotRun {
            seq,
            call_id,
            why,
            answer,
        };
        Some((answer, ev))
    }

    /// Sends a held answer again as a new message (a replayed call's answer). One no
    /// longer held was acknowledged: the daemon has it already.
    fn resend(&mut self, seq: Seq) -> Result<Option<Seq>, SessionError> {
        let Some(rec) = self.link.out.get(bytes(&self.storage), seq) else {
            return Ok(None);
        };
        let mut copy = [0u8; 128];
        let Some(dst) = copy.get_mut(..rec.bytes.len()) else {
            // Too big to copy without an allocator; it is still queued for the daemon.
            return Ok(None);
        };
        dst.copy_from_slice(rec.bytes);
        let Ok(body) = postcard::from_bytes::<Body<'_>>(dst) else {
            return Ok(None);
        };
        self.enqueue(&body).map(Some)
    }
}
