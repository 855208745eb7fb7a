//! The daemon's session with one node: hello checks, resumption or reset, the
//! daemon->node stream (calls, cancels) and the table of open calls.

use heapless::String;
use rand_core::Rng;

use super::calls::{CallRecord, CallState, CallTable};
use super::config::{Config, MAX_NODE_ID, MAX_PLATFORM, SessionError, SetupError};
use super::event::{CloseReason, DaemonEvent};
use super::journal::{JournalMeta, JournalOp, JournalRead};
use super::link::{
    self, Farewell, Link, Notice, Outgoing, Side, State, Taken, bytes, shared_methods,
};
use super::node::copy_name;
use super::restore::{restore_calls, restore_messages};
use super::stream::KIND_GAP;
use crate::frame::{FrameError, MIN_MAX_FRAME};
use crate::time::{Earliest, Instant};
use crate::transmit::{Transmit, TransmitError};
use crate::wire::{
    self, Body, Call, CallId, Cancel, ErrorCode, GoodbyeReason, Hello, HelloAck, Message, Outcome,
    Payload, Seq, SessionId, Stage,
};

/// A daemon's session with one node; see `SESSION.md`.
///
/// `B` is the storage the driver lends while the session holds messages
/// (`Config::storage_len` bytes), a pooled buffer on a server.
pub struct DaemonSession<B> {
    storage: Option<B>,
    link: Link,
    calls: CallTable,
    node_id: String<MAX_NODE_ID>,
    /// What the node said it runs on, in its last hello.
    platform: String<MAX_PLATFORM>,
    /// The node has proved it holds the session id at least once.
    established: bool,
    id_state: [u64; 2],
    next_call_id: CallId,
}

impl<B> core::fmt::Debug for DaemonSession<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DaemonSession")
            .field("node_id", &self.node_id)
            .field("session", &self.link.session)
            .field("state", &self.link.conn.state)
            .field("last_sent", &self.link.out.last())
            .field("acked", &self.link.out.acked())
            .field("delivered", &self.link.inp.delivered())
            .field("open_calls", &self.calls.len())
            .field("storage", &self.storage.is_some())
            .finish_non_exhaustive()
    }
}

/// splitmix64: spreads a seed drawn once from the caller's RNG over later session ids.
fn next_id(state: &mut [u64; 2]) -> SessionId {
    let mut id = [0u8; 16];
    for (i, chunk) in id.chunks_mut(8).enumerate() {
        state[i] = state[i].wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state[i];
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    id
}

/// The daemon's view of outgoing data: calls carry their time left, and a call too
/// large for the node ends `Undeliverable` at once.
struct DaemonOut<'a> {
    calls: &'a mut CallTable,
    track: &'a super::journal::Track,
}

impl Outgoing for DaemonOut<'_> {
    fn time_left(&mut self, now: Instant, _: Seq, body: &[u8]) -> Option<u32> {
        // Body tag 1 is a call; its id follows.
        let (&tag, rest) = body.split_first()?;
        if tag != 1 {
            return None;
        }
        let call_id = postcard::take_from_bytes::<CallId>(rest).ok()?.0;
        let left = self
            .calls
            .get(call_id)
            .filter(|c| !c.state.is_final())
            // Never more than asked for, even when the clock stepped back.
            .map_or(0, |c| now.ms_until(c.deadline).min(u64::from(c.timeout_ms)));
        Some(u32::try_from(left).unwrap_or(u32::MAX))
    }

    fn undeliverable(&mut self, _: Seq, body: &[u8]) -> bool {
        let Ok(Body::Call(c)) = postcard::from_bytes::<Body<'_>>(body) else {
            return true;
        };
        if self
            .calls
            .get(c.call_id)
            .is_some_and(|rec| !rec.state.is_final())
        {
            self.calls.update(c.call_id, self.track, |rec| {
                rec.state = CallState::Undeliverable;
                rec.unreported = true;
            });
        }
        self.calls.is_durable(c.call_id)
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> DaemonSession<B> {
    /// A new session for the node `node_id` (checked against its hello). `rng` seeds
    /// the session ids. The first journal batch clears whatever was stored.
    pub fn new(config: Config, node_id: &str, rng: &mut impl Rng) -> Result<Self, SetupError> {
        config.check()?;
        let mut s = DaemonSession {
            storage: None,
            link: Link::new(config),
            calls: CallTable::default(),
            node_id: copy_name(node_id)?,
            platform: String::new(),
            established: false,
            id_state: [rng.next_u64(), rng.next_u64()],
            next_call_id: 1,
        };
        s.link.session = Some(next_id(&mut s.id_state));
        if s.link.track.enabled {
            s.link.track.clear = super::journal::Mark::Dirty;
            s.link.track.touch_meta();
        }
        Ok(s)
    }

    /// Rebuilds a session from its journal: positions, unacknowledged messages, open
    /// calls. Storage is needed if the journal holds messages. A journal never written
    /// gives a new session.
    pub fn restore(
        config: Config,
        node_id: &str,
        storage: Option<B>,
        journal: &impl JournalRead,
        rng: &mut impl Rng,
    ) -> Result<Self, SetupError> {
        let mut s = Self::new(config, node_id, rng)?;
        if let Some(buf) = storage {
            let available = buf.as_ref().len();
            link::lend(&mut s.storage, &config, buf).map_err(|_| SetupError::StorageTooSmall {
                needed: config.storage_len(),
                available,
            })?;
        }
        let Some(meta) = journal.meta().map_err(|_| SetupError::JournalRead)? else {
            return Ok(s);
        };
        let Some(session) = meta.session else {
            return Err(SetupError::JournalInconsistent {
                why: "no session id",
            });
        };
        s.link.track = super::journal::Track::new(config.durable);
        let stored = restore_messages(&mut s.link, &mut s.storage, &meta, journal, Side::Daemon)?;
        let last = stored.last;
        let track = s.link.track;
        let max_id = restore_calls(&mut s.calls, &track, last, journal)?;
        s.link.session = Some(session);
        s.link.inp.restore(meta.received);
        s.link
            .track
            .restored(last, meta.acked, meta.received, Some(session));
        s.established = meta.established;
        // Never hand out an id the node may have seen: one in a stored call, or in a
        // stored call message whose record is gone.
        s.next_call_id = meta
            .next_call_id
            .max(max_id.saturating_add(1))
            .max(stored.max_call.saturating_add(1));
        s.id_state = meta.id_state;
        Ok(s)
    }

    fn tables_dirty(&self) -> bool {
        self.calls.dirty()
    }

    /// A batch is durable: what the role's tables carried is.
    fn tables_committed(&mut self) {
        self.calls.committed();
    }

    fn tables_failed(&mut self) {
        self.calls.failed();
    }

    // ----- storage -----

    /// Lends storage (at least `Config::storage_len` bytes). Handed back if the session
    /// holds storage already or `buf` is too short.
    pub fn lend(&mut self, buf: B) -> Result<(), B> {
        link::lend(&mut self.storage, &self.link.config, buf)
    }

    // ----- state -----

    shared_methods!();

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn session_id(&self) -> SessionId {
        self.link.session.unwrap_or_default()
    }

    /// Calls not yet reported final.
    pub fn open_calls(&self) -> usize {
        self.calls.len()
    }

    /// An open call's record.
    pub fn call_state(&self, id: CallId) -> Option<CallRecord> {
        self.calls.get(id).copied()
    }

    // ----- application commands -----

    /// Queues a call with a deadline `timeout_ms` from `now`; returns its id. The call
    /// goes out once the journal batch that carries it commits.
    pub fn call(
        &mut self,
        now: Instant,
        capability: &str,
        input: Payload<'_>,
        timeout_ms: u32,
    ) -> Result<CallId, SessionError> {
        self.link.now = now;
        if self.calls.is_full() || self.next_call_id == CallId::MAX {
            return Err(SessionError::TooManyCalls);
        }
        let call_id = self.next_call_id;
        let body = Body::Call(Call {
            call_id,
            capability,
            timeout_ms,
            input,
        });
        let seq = self
            .link
            .enqueue(self.storage.as_mut().map(AsMut::as_mut), &body)?;
        self.next_call_id += 1;
        let rec = CallRecord {
            id: call_id,
            seq,
            deadline: now.plus_ms(u64::from(timeout_ms)),
            timeout_ms,
            state: CallState::Queued,
            unreported: false,
            cancel_requested: false,
        };
        // The table had room (checked above) and nothing else ran in between.
        let _ = self.calls.insert(rec, &self.link.track);
        self.link.track.touch_meta();
        Ok(call_id)
    }

    /// Asks the node to cancel a call. Its final state comes from the node's answer or
    /// from its deadline.
    pub fn cancel(&mut self, call_id: CallId) -> Result<Seq, SessionError> {
        match self.calls.get(call_id) {
            None => return Err(SessionError::UnknownCall),
            Some(c) if c.state.is_final() => return Err(SessionError::Finished),
            Some(_) => {}
        }
        let seq = self.link.enqueue(
            self.storage.as_mut().map(AsMut::as_mut),
            &Body::Cancel(Cancel { call_id }),
        )?;
        self.calls
            .update(call_id, &self.link.track, |c| c.cancel_requested = true);
        Ok(seq)
    }

    // ----- inputs -----

    /// A transport connection authenticated as this session's node is up.
    pub fn handle_connected(&mut self, now: Instant) {
        self.link.now = now;
        self.link.connected(now, false);
    }

    /// One frame's payload. Refused, with nothing of its message stored, when it carries
    /// stream data and `Err(NoStorage)`: no storage is lent, or `Err(InboxFull)`: the
    /// inbox's message waits for the application. Offer the same frame again after
    /// lending or draining events.
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
        let taken = self
            .link
            .take_frame(&mut self.storage, now, frame, Side::Daemon, ahead)?;
        let refused = matches!(taken, Taken::Refused { .. });
        match taken {
            Taken::Hello(h) => self.on_hello(h),
            Taken::Stream { acked } | Taken::Refused { acked } => {
                if !self.link.conn.confirmed {
                    // Stream traffic after the hello proves the node took our hello-ack:
                    // from now on a hello without this session id means the node lost
                    // its memory.
                    self.link.conn.confirmed = true;
                    if !self.established {
                        self.established = true;
                        self.link.track.touch_meta();
                    }
                }
                if acked {
                    self.dispatched();
                }
            }
            Taken::HelloAck(_) | Taken::Nothing => {}
        }
        if refused {
            return Err(SessionError::InboxFull);
        }
        Ok(())
    }

    fn on_hello(&mut self, h: Hello<'_>) {
        let version = match wire::negotiate(h.versions, self.link.config.versions) {
            Ok(v) => v,
            Err(m) => {
                return self.link.fail(
                    ErrorCode::VersionMismatch {
                        client: m.client,
                        server: m.server,
                    },
                    "no common version",
                );
            }
        };
        if h.node_id != self.node_id.as_str() {
            return self
                .link
                .fail(ErrorCode::Unauthorized, "node id does not match");
        }
        if h.max_frame < MIN_MAX_FRAME {
            return self
                .link
                .fail(ErrorCode::UnexpectedMessage, "frame limit too small");
        }
        self.platform.clear();
        let _ = self.platform.push_str(truncate(h.platform, MAX_PLATFORM));
        let resumed = match h.resume {
            // Naming our session proves the node holds it, confirmed or not.
            Some(r) if Some(r.session) == self.link.session => {
                match self.link.out.resume(bytes(&self.storage), r.received) {
                    Ok(()) => {}
                    Err(_) => {
                        return self
                            .link
                            .fail(ErrorCode::UnexpectedMessage, "resume beyond what was sent");
                    }
                }
                if !self.established {
                    self.established = true;
                    self.link.track.touch_meta();
                }
                self.link.acked_moved();
                self.dispatched();
                true
            }
            _ if self.established => {
                self.reset_session();
                false
            }
            // The node has not confirmed this session yet (our hello-ack may have been
            // lost): it starts again, and whatever was queued goes out once it confirms.
            _ => {
                if self.link.out.resume(bytes(&self.storage), 0).is_err() {
                    return self
                        .link
                        .fail(ErrorCode::Internal, "unconfirmed session sent data");
                }
                false
            }
        };
        self.link.conn.send_hello_ack = true;
        self.link
            .up(version, h.max_frame, h.idle_timeout_ms, resumed);
        self.link.conn.confirmed = resumed;
    }

    /// The node came back without its state: everything of the old session is lost.
    fn reset_session(&mut self) {
        let link = &mut self.link;
        let unacked = link.out.reset();
        let peer_lost_from = link.inp.delivered().saturating_add(1);
        link.inp.reset();
        link.session = Some(next_id(&mut self.id_state));
        self.established = false;
        link.track.start_over();
        let track = link.track;
        self.calls.update_all(
            &track,
            |c| !c.state.is_final(),
            |c| {
                c.state = CallState::Lost;
                c.unreported = true;
            },
        );
        // The journal is cleared first in the next batch: every call is written again.
        self.calls.touch_all(&track);
        link.notices.reset = Some((unacked, peer_lost_from));
    }

    /// The node acknowledged call messages: they are dispatched.
    fn dispatched(&mut self) {
        let acked = self.link.out.acked();
        let track = self.link.track;
        self.calls.update_all(
            &track,
            |c| c.state == CallState::Queued && c.seq <= acked,
            |c| {
                c.state = CallState::Dispatched;
                c.unreported = true;
            },
        );
    }

    /// Timers: the connection's, and the calls' deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.link.on_timeout(now);
        let track = self.link.track;
        self.calls.update_all(
            &track,
            |c| !c.state.is_final() && c.deadline <= now,
            |c| {
                c.state = CallState::TimedOut;
                c.unreported = true;
            },
        );
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
        if !self.link.live() || self.link.conn.state != State::Up {
            return Ok(None);
        }
        if self.link.conn.send_hello_ack {
            // A hello-ack names the session: only once that is durable.
            if !self.link.session_durable() {
                return Ok(None);
            }
            let msg = Message::HelloAck(HelloAck {
                version: self.link.conn.version,
                max_frame: self.link.config.max_frame,
                idle_timeout_ms: self.link.config.idle_timeout_ms,
                session: self.session_id(),
                resumed: self.link.conn.resumed,
                received: self.link.ack_value(),
            });
            let r = self.link.send_control(now, &msg, buf)?;
            self.link.conn.send_hello_ack = false;
            return Ok(r);
        }
        let mem = bytes(&self.storage);
        let track = self.link.track;
        let mut role = DaemonOut {
            calls: &mut self.calls,
            track: &track,
        };
        self.link.poll_stream(now, mem, buf, &mut role)
    }

    /// The next deadline; at it, call [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at = Earliest::new();
        self.link.next_deadline(&mut at);
        at.add(self.calls.next_deadline());
        at.get()
    }

    /// The next journal op; see `SESSION.md`.
    pub fn poll_journal(&mut self) -> Option<JournalOp<'_>> {
        let meta = JournalMeta {
            established: self.established,
            next_call_id: self.next_call_id,
            id_state: self.id_state,
            ..JournalMeta::default()
        };
        let table = &mut self.calls;
        self.link
            .poll_journal(bytes(&self.storage), || table.poll_journal(), meta)
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<DaemonEvent<'_>> {
        if let Some(notice) = self.link.poll_notice() {
            return Some(match notice {
                Notice::JournalFailed => DaemonEvent::JournalFailed,
                Notice::SessionReset {
                    unacked,
                    peer_lost_from,
                } => DaemonEvent::SessionReset {
                    unacked,
                    peer_lost_from,
                },
                Notice::Connected {
                    session,
                    resumed,
                    version,
                } => DaemonEvent::Connected {
                    session,
                    resumed,
                    version,
                    platform: &self.platform,
                },
                Notice::Disconnected(reason) => DaemonEvent::Disconnected(reason),
            });
        }
        if let Some(c) = self.calls.next_unreported() {
            let track = self.link.track;
            if c.state.is_final() {
                self.calls.remove(c.id, &track);
            } else {
                self.calls.update(c.id, &track, |r| r.unreported = false);
            }
            return Some(DaemonEvent::CallUpdate {
                call_id: c.id,
                state: c.state,
                seq: None,
                outcome: None,
            });
        }
        self.deliver()
    }

    /// Hands the inbox's front message to the application.
    fn deliver(&mut self) -> Option<DaemonEvent<'_>> {
        let mem = bytes(&self.storage);
        let rec = self.link.front(mem)?;
        let seq = rec.seq;
        if rec.kind == KIND_GAP {
            let to = super::stream::gap_end(&rec);
            self.link.delivered(mem, to);
            return Some(DaemonEvent::Gap { from: seq, to });
        }
        let body = match postcard::from_bytes::<Body<'_>>(rec.bytes) {
            Ok(body) => body,
            // Checked on receipt: cannot happen. Skip rather than stall.
            Err(_) => {
                self.link.delivered(mem, seq);
                return Some(DaemonEvent::Gap { from: seq, to: seq });
            }
        };
        let track = self.link.track;
        let ev = match body {
            Body::Register(r) => DaemonEvent::Register {
                seq,
                capabilities: r.capabilities,
            },
            Body::Event(event) => DaemonEvent::Event { seq, event },
            Body::Progress(p) => {
                let stage = match p.stage {
                    Stage::AwaitingApproval => CallState::AwaitingApproval,
                    Stage::Running => CallState::Running,
                };
                let open = self
                    .calls
                    .get(p.call_id)
                    .is_some_and(|c| !c.state.is_final());
                if open {
                    self.calls.update(p.call_id, &track, |c| {
                        c.state = stage;
                        c.unreported = false;
                    });
                    DaemonEvent::CallUpdate {
                        call_id: p.call_id,
                        state: stage,
                        seq: Some(seq),
                        outcome: None,
                    }
                } else {
                    DaemonEvent::LateAnswer { seq, body }
                }
            }
            Body::Result(r) => {
                let open = self
                    .calls
                    .get(r.call_id)
                    .is_some_and(|c| !c.state.is_final());
                if open {
                    let state = match r.outcome {
                        Outcome::Success(_) => CallState::Succeeded,
                        Outcome::Failed { .. } => CallState::Failed,
                        Outcome::Rejected { code, .. } => CallState::Rejected(code),
                        Outcome::Cancelled => CallState::Cancelled,
                        Outcome::TimedOut => CallState::TimedOut,
                    };
                    self.calls.remove(r.call_id, &track);
                    DaemonEvent::CallUpdate {
                        call_id: r.call_id,
                        state,
                        seq: Some(seq),
                        outcome: Some(r.outcome),
                    }
                } else {
                    DaemonEvent::LateAnswer { seq, body }
                }
            }
            // Refused on receipt: cannot happen.
            Body::Call(_) | Body::Cancel(_) => DaemonEvent::Gap { from: seq, to: seq },
        };
        self.link.delivered(mem, seq);
        Some(ev)
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
