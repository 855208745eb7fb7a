//! Sessions: the hello exchange, resumable ordered streams in both directions,
//! keep-alive and idle timeout, and capability calls, as one sans-IO state machine.
//!
//! A [`Session`] outlives connections: the adapter reports a connection with
//! [`Input::Connected`], feeds its frames in with [`Input::Frame`], and reports its end
//! with [`Input::Disconnected`]. After every input (and whenever a deadline from
//! [`Output::Timeout`] comes) it calls [`Session::poll_output`] until that returns
//! `Timeout`. Nothing here reads a clock or allocates; all memory is the caller's
//! `storage`, split between the replay buffer and the inbox.
//!
//! See `SESSION.md` next to this crate's manifest for the state machine, the resumption
//! rules and the journal contract.

mod calls;
mod event;
mod journal;
mod ring;
mod stream;
mod timers;

pub use calls::{CALL_WINDOW, CallRecord, CallState, MAX_OPEN_CALLS};
pub use event::{CloseReason, Event, Input, NotRun, Output};
pub use journal::{Journal, JournalMeta, NoJournal};
pub use ring::RECORD_HEADER;
pub use stream::Overflow;
pub use timers::Instant;

use heapless::String;
use rand_core::Rng;

use self::calls::{CallTable, CallWindow, Slot};
use self::ring::Ring;
use self::stream::{InStream, KIND_GAP, Next, OutStream, Pushed, Received, gap_end};
use self::timers::Earliest;
use crate::frame::{FrameError, HEADER_LEN, MIN_MAX_FRAME};
use crate::wire::{
    self, Ack, Body, Call, CallId, CallProgress, CallResult, Cancel, Data, EncodeError, ErrorCode,
    ErrorFrame, Event as EventBody, Gap, Goodbye, GoodbyeReason, Hello, HelloAck, Message, Outcome,
    Payload, Ping, RejectCode, Resume, Seq, SessionId, Stage, VersionRange,
};

/// Longest node id a session stores.
pub const MAX_NODE_ID: usize = 64;
/// Longest platform name a session stores.
pub const MAX_PLATFORM: usize = 32;
/// Most bytes a `Data` frame adds around its body (tag and two varints).
const DATA_OVERHEAD: usize = 1 + 10 + 10;

/// Which end of the link a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Daemon,
    Node,
}

/// Limits and timers of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub versions: VersionRange,
    /// Largest frame payload we accept (announced in the hello).
    pub max_frame: u32,
    /// Idle timeout we want; the connection uses the smaller of both sides'.
    pub idle_timeout_ms: u32,
    /// Send a ping after this long without sending anything (capped at a third of the
    /// idle timeout in use).
    pub keep_alive_ms: u32,
    /// Time allowed for the hello exchange.
    pub handshake_timeout_ms: u32,
    /// Longest an acknowledgement waits for outgoing data to ride on.
    pub ack_delay_ms: u32,
    /// Acknowledge at once when this many delivered messages are unacknowledged.
    pub ack_every: u32,
    /// Close the connection when data sent on it stays unacknowledged this long: the
    /// connection is stuck, and a new one resumes where the peer stands.
    pub ack_timeout_ms: u32,
    /// Bytes of storage for the replay buffer; the rest is the inbox, which must hold one
    /// frame of `max_frame` bytes plus [`RECORD_HEADER`].
    pub replay_bytes: usize,
    pub overflow: Overflow,
}

impl Config {
    /// Server defaults (`DESIGN.md`): 512 KiB frames, idle 30 s, keep-alive 5 s,
    /// handshake 10 s.
    pub const fn server(replay_bytes: usize) -> Self {
        Config {
            versions: wire::PROTOCOL_VERSIONS,
            max_frame: crate::frame::DEFAULT_MAX_FRAME,
            idle_timeout_ms: 30_000,
            keep_alive_ms: 5_000,
            handshake_timeout_ms: 10_000,
            ack_delay_ms: 20,
            ack_every: 2,
            ack_timeout_ms: 5_000,
            replay_bytes,
            overflow: Overflow::Reject,
        }
    }

    /// Microcontroller defaults: 2 KiB frames, server timers.
    pub const fn embedded(replay_bytes: usize) -> Self {
        let mut c = Self::server(replay_bytes);
        c.max_frame = 2048;
        c
    }

    /// Storage bytes this configuration needs at least, for a replay buffer of
    /// `replay_bytes` bytes.
    pub const fn storage_needed(&self) -> usize {
        self.replay_bytes + RECORD_HEADER + self.max_frame as usize
    }
}

/// Why a session could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupError {
    /// `storage` is smaller than [`Config::storage_needed`].
    StorageTooSmall { needed: usize, available: usize },
    /// `max_frame` below [`MIN_MAX_FRAME`].
    FrameLimitTooSmall,
    /// A node id or platform name longer than [`MAX_NODE_ID`] / [`MAX_PLATFORM`].
    NameTooLong,
    /// The journal failed.
    Journal,
    /// The journal holds more than the storage or call table can hold, or is out of order.
    JournalInconsistent,
}

/// Why an application command was refused. Nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// The replay buffer has no room now; try again after the peer acknowledges.
    Full,
    /// The message can never be sent: larger than the replay buffer or the peer's limit.
    TooLarge,
    /// Not a command of this session's role.
    WrongRole,
    /// [`MAX_OPEN_CALLS`] calls are open.
    TooManyCalls,
    /// No open call has this id.
    UnknownCall,
    /// The call already reached a final state.
    Finished,
    /// The journal refused the write.
    Journal,
    /// The message cannot be encoded.
    Unencodable,
}

impl core::fmt::Display for SessionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SessionError::Full => "replay buffer full",
            SessionError::TooLarge => "message too large for the replay buffer or the peer",
            SessionError::WrongRole => "not a command of this session's role",
            SessionError::TooManyCalls => "too many open calls",
            SessionError::UnknownCall => "no open call with this id",
            SessionError::Finished => "the call already finished",
            SessionError::Journal => "journal write failed",
            SessionError::Unencodable => "message cannot be encoded",
        })
    }
}

impl core::error::Error for SessionError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection.
    Down,
    /// Daemon: connected, waiting for the node's hello.
    AwaitHello,
    /// Node: hello queued or sent, waiting for the hello-ack.
    HelloSent,
    Up,
}

/// A frame to send before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Farewell {
    Error(ErrorCode, &'static str),
    Goodbye(GoodbyeReason),
    Nothing,
}

/// Per-connection state.
#[derive(Debug, Clone, Copy)]
struct Conn {
    state: State,
    started: Instant,
    last_recv: Instant,
    last_sent: Instant,
    peer_max: u32,
    idle_ms: u64,
    keep_alive_ms: u64,
    version: u16,
    send_hello: bool,
    send_hello_ack: bool,
    resumed: bool,
    pong: Option<u64>,
    pings: u64,
    /// Daemon: the node proved it holds the session id (it sent a frame after our
    /// hello-ack), so stream data may flow. Node: always true once up.
    confirmed: bool,
    /// Node: acknowledge at once, which confirms the hello-ack to the daemon.
    ack_now: bool,
    /// Last acknowledgement value sent on this connection.
    ack_sent: Seq,
    ack_due: Option<Instant>,
    /// Since when data sent on this connection waits for an acknowledgement.
    unacked_since: Option<Instant>,
    farewell: Option<Farewell>,
    /// A farewell went out; `Output::Close` comes next.
    close_next: bool,
}

impl Conn {
    const fn down() -> Self {
        Conn {
            state: State::Down,
            started: Instant::ZERO,
            last_recv: Instant::ZERO,
            last_sent: Instant::ZERO,
            peer_max: MIN_MAX_FRAME,
            idle_ms: 0,
            keep_alive_ms: 0,
            version: 0,
            send_hello: false,
            send_hello_ack: false,
            resumed: false,
            pong: None,
            pings: 0,
            confirmed: false,
            ack_now: false,
            ack_sent: 0,
            ack_due: None,
            unacked_since: None,
            farewell: None,
            close_next: false,
        }
    }
}

/// Application notices waiting for `poll_output`.
#[derive(Debug, Clone, Copy, Default)]
struct Notices {
    reset: Option<(Option<(Seq, Seq)>, Seq)>,
    connected: bool,
    disconnected: Option<CloseReason>,
}

/// One session with one peer; see the [module documentation](self).
#[derive(Debug)]
pub struct Session<B, J = NoJournal> {
    role: Role,
    config: Config,
    node_id: String<MAX_NODE_ID>,
    platform: String<MAX_PLATFORM>,
    mem: B,
    out: OutStream,
    inp: InStream,
    journal: J,
    /// The session id; a node learns it from its first hello-ack.
    session: Option<SessionId>,
    /// Daemon: the node has connected in this session at least once.
    established: bool,
    id_state: [u64; 2],
    next_call_id: CallId,
    calls: CallTable,
    window: CallWindow,
    conn: Conn,
    notices: Notices,
}

fn copy_name<const N: usize>(s: &str) -> Result<String<N>, SetupError> {
    let mut out = String::new();
    out.push_str(s).map_err(|_| SetupError::NameTooLong)?;
    Ok(out)
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

impl<B: AsRef<[u8]> + AsMut<[u8]>> Session<B, NoJournal> {
    /// A node-role session. Its state lives in RAM only: a restart loses it, and the
    /// daemon reports what was lost.
    pub fn node(
        config: Config,
        node_id: &str,
        platform: &str,
        storage: B,
    ) -> Result<Self, SetupError> {
        Self::build(Role::Node, config, node_id, platform, storage, NoJournal)
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, J: Journal> Session<B, J> {
    fn build(
        role: Role,
        config: Config,
        node_id: &str,
        platform: &str,
        storage: B,
        journal: J,
    ) -> Result<Self, SetupError> {
        let available = storage.as_ref().len();
        let needed = config.storage_needed();
        if available < needed {
            return Err(SetupError::StorageTooSmall { needed, available });
        }
        if config.max_frame < MIN_MAX_FRAME {
            return Err(SetupError::FrameLimitTooSmall);
        }
        let replay = Ring::new(0, config.replay_bytes);
        let inbox = Ring::new(config.replay_bytes, available - config.replay_bytes);
        Ok(Session {
            role,
            config,
            node_id: copy_name(node_id)?,
            platform: copy_name(platform)?,
            mem: storage,
            out: OutStream::new(replay, config.overflow),
            inp: InStream::new(inbox),
            journal,
            session: None,
            established: false,
            id_state: [0; 2],
            next_call_id: 1,
            calls: CallTable::default(),
            window: CallWindow::default(),
            conn: Conn::down(),
            notices: Notices::default(),
        })
    }

    /// A new daemon-role session for the node `node_id` (checked against its hello).
    /// `rng` seeds the session ids. The journal is written from scratch.
    pub fn daemon(
        config: Config,
        node_id: &str,
        storage: B,
        journal: J,
        rng: &mut impl Rng,
    ) -> Result<Self, SetupError> {
        let mut s = Self::build(Role::Daemon, config, node_id, "", storage, journal)?;
        s.id_state = [rng.next_u64(), rng.next_u64()];
        s.session = Some(next_id(&mut s.id_state));
        s.journal
            .clear_messages()
            .map_err(|_| SetupError::Journal)?;
        s.save_meta().map_err(|_| SetupError::Journal)?;
        Ok(s)
    }

    /// Rebuilds a daemon-role session from its journal: positions, unacknowledged
    /// messages and open calls. A journal never written gives a new session.
    pub fn restore_daemon(
        config: Config,
        node_id: &str,
        storage: B,
        journal: J,
        rng: &mut impl Rng,
    ) -> Result<Self, SetupError> {
        let Some(meta) = journal.load_meta().map_err(|_| SetupError::Journal)? else {
            return Self::daemon(config, node_id, storage, journal, rng);
        };
        let mut s = Self::build(Role::Daemon, config, node_id, "", storage, journal)?;
        let mut bad = false;
        {
            let mem = s.mem.as_mut();
            let out = &mut s.out;
            let mut prev: Option<Seq> = None;
            s.journal
                .for_each_message(&mut |seq, bytes| {
                    let in_order = prev.is_none_or(|p| seq == p + 1) && seq > meta.acked;
                    if !in_order || seq > meta.last_sent || out.restore(mem, seq, bytes).is_err() {
                        bad = true;
                    }
                    prev = Some(seq);
                })
                .map_err(|_| SetupError::Journal)?;
            if prev.is_some_and(|p| p != meta.last_sent) {
                bad = true;
            }
        }
        {
            let calls = &mut s.calls;
            s.journal
                .for_each_call(&mut |rec| {
                    if calls.insert(*rec).is_err() {
                        bad = true;
                    }
                })
                .map_err(|_| SetupError::Journal)?;
        }
        if bad || meta.acked > meta.last_sent {
            return Err(SetupError::JournalInconsistent);
        }
        s.out.restore_positions(meta.last_sent, meta.acked);
        s.inp.restore(meta.received);
        s.session = Some(meta.session);
        s.established = meta.established;
        s.next_call_id = meta.next_call_id;
        s.id_state = meta.id_state;
        Ok(s)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The session id (a node knows it after its first hello-ack).
    pub fn session_id(&self) -> Option<SessionId> {
        self.session
    }

    /// True between the end of the hello exchange and the end of the connection.
    pub fn is_connected(&self) -> bool {
        self.conn.state == State::Up
    }

    /// True while a transport connection is in use (hello exchange included).
    pub fn has_connection(&self) -> bool {
        self.conn.state != State::Down
    }

    /// Last seq assigned to our outgoing stream.
    pub fn last_sent(&self) -> Seq {
        self.out.last()
    }

    /// Highest outgoing seq the peer acknowledged.
    pub fn acked(&self) -> Seq {
        self.out.acked()
    }

    /// Outgoing messages held for replay.
    pub fn unacked(&self) -> usize {
        self.out.held()
    }

    /// Highest incoming seq handed to the application.
    pub fn delivered(&self) -> Seq {
        self.inp.delivered()
    }

    /// Daemon: calls not yet reported final.
    pub fn open_calls(&self) -> usize {
        self.calls.len()
    }

    /// Daemon: an open call's record.
    pub fn call_state(&self, id: CallId) -> Option<CallRecord> {
        self.calls.get(id).copied()
    }

    /// Node: calls handed to the application and not yet answered.
    pub fn active_calls(&self) -> usize {
        self.window.active_count()
    }

    pub fn journal(&self) -> &J {
        &self.journal
    }

    /// Bytes of the replay buffer in use, and its capacity.
    pub fn replay_usage(&self) -> (usize, usize) {
        (self.out.ring().used(), self.out.ring().capacity())
    }

    /// Bytes of the inbox in use, and its capacity.
    pub fn inbox_usage(&self) -> (usize, usize) {
        (self.inp.inbox().used(), self.inp.inbox().capacity())
    }

    // ----- application commands -----

    /// Node: sends a registration or an event on the node->daemon stream.
    pub fn send(&mut self, body: &Body<'_>) -> Result<Seq, SessionError> {
        match (self.role, body) {
            (Role::Node, Body::Register(_) | Body::Event(_)) => self.enqueue(body),
            _ => Err(SessionError::WrongRole),
        }
    }

    /// Node: sends an event.
    pub fn send_event(&mut self, name: &str, payload: Payload<'_>) -> Result<Seq, SessionError> {
        self.send(&Body::Event(EventBody { name, payload }))
    }

    /// Daemon: queues a call with a deadline `timeout_ms` from `now`. Returns its id.
    pub fn call(
        &mut self,
        now: Instant,
        capability: &str,
        input: Payload<'_>,
        timeout_ms: u32,
    ) -> Result<CallId, SessionError> {
        if self.role != Role::Daemon {
            return Err(SessionError::WrongRole);
        }
        if self.calls.is_full() {
            return Err(SessionError::TooManyCalls);
        }
        let call_id = self.next_call_id;
        let body = Body::Call(Call {
            call_id,
            capability,
            timeout_ms,
            input,
        });
        let seq = self.enqueue(&body)?;
        self.next_call_id += 1;
        let rec = CallRecord {
            id: call_id,
            seq,
            deadline: now.plus_ms(u64::from(timeout_ms)),
            state: CallState::Queued,
            unreported: false,
            cancel_requested: false,
        };
        // The table had room (checked above) and nothing else ran in between.
        let _ = self.calls.insert(rec);
        self.journal
            .put_call(&rec)
            .map_err(|_| SessionError::Journal)?;
        self.save_meta().map_err(|_| SessionError::Journal)?;
        Ok(call_id)
    }

    /// Daemon: asks the node to cancel a call. The call's final state comes from the
    /// node's answer or from its deadline.
    pub fn cancel(&mut self, call_id: CallId) -> Result<Seq, SessionError> {
        if self.role != Role::Daemon {
            return Err(SessionError::WrongRole);
        }
        match self.calls.get(call_id) {
            None => return Err(SessionError::UnknownCall),
            Some(c) if c.state.is_final() => return Err(SessionError::Finished),
            Some(_) => {}
        }
        let seq = self.enqueue(&Body::Cancel(Cancel { call_id }))?;
        if let Some(c) = self.calls.get_mut(call_id) {
            c.cancel_requested = true;
            let rec = *c;
            self.journal
                .put_call(&rec)
                .map_err(|_| SessionError::Journal)?;
        }
        Ok(seq)
    }

    /// Node: reports an interim stage of a running call.
    pub fn progress(
        &mut self,
        call_id: CallId,
        stage: Stage,
        detail: &str,
    ) -> Result<Seq, SessionError> {
        self.active_call(call_id)?;
        let seq = self.enqueue(&Body::Progress(CallProgress {
            call_id,
            stage,
            detail,
        }))?;
        if let Some(e) = self.window.find_mut(call_id)
            && let Slot::Active { deadline, .. } = e.slot
        {
            e.slot = Slot::Active {
                stage: Some(stage),
                deadline,
            };
        }
        Ok(seq)
    }

    /// Node: answers a call with its final outcome.
    pub fn complete(&mut self, call_id: CallId, outcome: Outcome<'_>) -> Result<Seq, SessionError> {
        self.active_call(call_id)?;
        let seq = self.enqueue(&Body::Result(CallResult { call_id, outcome }))?;
        if let Some(e) = self.window.find_mut(call_id) {
            e.slot = Slot::Done { result_seq: seq };
        }
        Ok(seq)
    }

    fn active_call(&self, call_id: CallId) -> Result<(), SessionError> {
        if self.role != Role::Node {
            return Err(SessionError::WrongRole);
        }
        match self.window.find(call_id).map(|e| e.slot) {
            None => Err(SessionError::UnknownCall),
            Some(Slot::Done { .. }) => Err(SessionError::Finished),
            Some(Slot::Active { .. }) => Ok(()),
        }
    }

    /// Appends a body to the outgoing stream (and the journal).
    fn enqueue(&mut self, body: &Body<'_>) -> Result<Seq, SessionError> {
        let len =
            postcard::experimental::serialized_size(body).map_err(|_| SessionError::Unencodable)?;
        let peer_limit = if self.conn.state == State::Up {
            self.conn.peer_max as usize
        } else {
            usize::MAX
        };
        if !self.out.ring().could_hold(len) || len.saturating_add(DATA_OVERHEAD) > peer_limit {
            return Err(SessionError::TooLarge);
        }
        let seq_next = self.out.last() + 1;
        let journal = &mut self.journal;
        let pushed = self.out.push_with(self.mem.as_mut(), len, |dst| {
            postcard::to_slice(body, dst).map_err(|_| SessionError::Unencodable)?;
            // Journaled before it can be transmitted; a refusal leaves no trace.
            journal
                .append(seq_next, dst)
                .map_err(|_| SessionError::Journal)
        })?;
        match pushed {
            Pushed::Full => Err(SessionError::Full),
            Pushed::Stored {
                seq,
                evicted_through,
            } => {
                if let Some(through) = evicted_through {
                    self.journal
                        .trim(through)
                        .map_err(|_| SessionError::Journal)?;
                }
                self.save_meta().map_err(|_| SessionError::Journal)?;
                Ok(seq)
            }
        }
    }

    fn save_meta(&mut self) -> Result<(), J::Error> {
        let Some(session) = self.session else {
            return Ok(());
        };
        if self.role != Role::Daemon {
            return Ok(());
        }
        self.journal.save_meta(&JournalMeta {
            session,
            established: self.established,
            last_sent: self.out.last(),
            acked: self.out.acked(),
            received: self.inp.delivered(),
            next_call_id: self.next_call_id,
            id_state: self.id_state,
        })
    }

    // ----- input -----

    /// Feeds one input in. Follow with `poll_output` until it returns `Timeout`.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Connected => self.on_connected(now),
            Input::Disconnected => {
                // A connection already closing has its reason reported.
                if self.live() {
                    self.notices.disconnected = Some(CloseReason::TransportClosed);
                }
                self.conn = Conn::down();
            }
            Input::Frame(payload) => self.on_frame(now, payload),
            Input::FrameError(e) => match e {
                FrameError::TooLarge { len, max } => {
                    self.fail(ErrorCode::FrameTooLarge { len, max }, "frame too large")
                }
                _ => self.fail(ErrorCode::Malformed, "framing failed"),
            },
            Input::Timeout => self.on_timers(now),
            Input::Close(reason) => {
                if self.live() {
                    self.close(Farewell::Goodbye(reason), CloseReason::Local(reason));
                }
            }
        }
    }

    /// A connection is in use and not closing.
    fn live(&self) -> bool {
        self.conn.state != State::Down && self.conn.farewell.is_none() && !self.conn.close_next
    }

    fn on_connected(&mut self, now: Instant) {
        if self.live() {
            self.notices.disconnected = Some(CloseReason::TransportClosed);
        }
        self.inp.rewind();
        self.conn = Conn {
            state: match self.role {
                Role::Node => State::HelloSent,
                Role::Daemon => State::AwaitHello,
            },
            started: now,
            last_recv: now,
            last_sent: now,
            send_hello: self.role == Role::Node,
            ..Conn::down()
        };
    }

    fn close(&mut self, farewell: Farewell, reason: CloseReason) {
        if self.conn.state == State::Down || self.conn.close_next {
            return;
        }
        if self.conn.farewell.is_none() {
            self.conn.farewell = Some(farewell);
            self.notices.disconnected = Some(reason);
        }
    }

    /// Sends an error frame and closes.
    fn fail(&mut self, code: ErrorCode, reason: &'static str) {
        self.close(Farewell::Error(code, reason), CloseReason::SentError(code));
    }

    fn on_frame(&mut self, now: Instant, payload: &[u8]) {
        if !self.live() {
            return;
        }
        self.conn.last_recv = now;
        let msg = match wire::decode_message(payload) {
            Ok(msg) => msg,
            Err(e) => return self.fail(e.code(), "message does not decode"),
        };
        let proves_ack = matches!(
            msg,
            Message::Data(_)
                | Message::Ack(_)
                | Message::Gap(_)
                | Message::Ping(_)
                | Message::Pong(_)
        );
        if self.conn.state == State::Up && !self.conn.confirmed && proves_ack {
            // Stream traffic after the hello proves the node took our hello-ack: from now on a
            // hello without this session id means the node lost its memory.
            self.conn.confirmed = true;
            self.established = true;
            if self.save_meta().is_err() {
                return self.fail(ErrorCode::Internal, "journal failed");
            }
        }
        match (self.conn.state, self.role, msg) {
            (_, _, Message::Error(e)) => {
                self.notices.disconnected = Some(CloseReason::PeerError(e.code));
                self.conn.farewell = Some(Farewell::Nothing);
            }
            (_, _, Message::Goodbye(g)) => {
                self.notices.disconnected = Some(CloseReason::Peer(g.reason));
                self.conn.farewell = Some(Farewell::Nothing);
            }
            (State::AwaitHello, Role::Daemon, Message::Hello(h)) => self.on_hello(h),
            (State::HelloSent, Role::Node, Message::HelloAck(a)) => self.on_hello_ack(a),
            (State::Up, _, Message::Data(d)) => {
                if self.on_ack(d.ack) {
                    self.on_data(d.seq, &d.body);
                }
            }
            (State::Up, _, Message::Ack(a)) => {
                self.on_ack(a.received);
            }
            (State::Up, _, Message::Gap(g)) => {
                let got = self.inp.gap(self.mem.as_mut(), g);
                self.on_received(got);
            }
            (State::Up, _, Message::Ping(p)) => self.conn.pong = Some(p.nonce),
            (State::Up, _, Message::Pong(_)) => {}
            _ => self.fail(ErrorCode::UnexpectedMessage, "unexpected message"),
        }
    }

    fn on_hello(&mut self, h: Hello<'_>) {
        let version = match wire::negotiate(h.versions, self.config.versions) {
            Ok(v) => v,
            Err(m) => {
                return self.fail(
                    ErrorCode::VersionMismatch {
                        client: m.client,
                        server: m.server,
                    },
                    "no common version",
                );
            }
        };
        if h.node_id != self.node_id.as_str() {
            return self.fail(ErrorCode::Unauthorized, "node id does not match");
        }
        if h.max_frame < MIN_MAX_FRAME {
            return self.fail(ErrorCode::UnexpectedMessage, "frame limit too small");
        }
        let resumed = match h.resume {
            // Naming our session proves the node holds it, confirmed or not.
            Some(r) if Some(r.session) == self.session => {
                if self.out.resume(self.mem.as_ref(), r.received).is_err() {
                    return self.fail(ErrorCode::UnexpectedMessage, "resume beyond what was sent");
                }
                self.established = true;
                if self.trimmed().is_err() {
                    return;
                }
                true
            }
            _ if self.established => {
                self.reset_session();
                false
            }
            // The node has not confirmed this session yet (our hello-ack may have been
            // lost): it starts again, and whatever was queued goes out once it confirms.
            _ => {
                if self.out.resume(self.mem.as_ref(), 0).is_err() {
                    return self.fail(ErrorCode::Internal, "unconfirmed session sent data");
                }
                false
            }
        };
        self.conn.send_hello_ack = true;
        self.up(version, h.max_frame, h.idle_timeout_ms, resumed);
        self.conn.confirmed = resumed;
    }

    /// The node came back without its state: everything of the old session is lost.
    fn reset_session(&mut self) {
        let unacked = self.out.reset();
        let peer_lost_from = self.inp.delivered() + 1;
        self.inp.reset();
        self.session = Some(next_id(&mut self.id_state));
        self.established = false;
        let mut journal_ok = self.journal.clear_messages().is_ok() && self.save_meta().is_ok();
        for c in self.calls.iter_mut() {
            if !c.state.is_final() {
                c.state = CallState::Lost;
                c.unreported = true;
                journal_ok &= self.journal.put_call(c).is_ok();
            }
        }
        self.notices.reset = Some((unacked, peer_lost_from));
        if !journal_ok {
            self.fail(ErrorCode::Internal, "journal failed");
        }
    }

    fn on_hello_ack(&mut self, a: HelloAck) {
        if !self.config.versions.contains(a.version) {
            return self.fail(ErrorCode::UnexpectedMessage, "version not offered");
        }
        if a.max_frame < MIN_MAX_FRAME {
            return self.fail(ErrorCode::UnexpectedMessage, "frame limit too small");
        }
        match self.session {
            Some(s) if a.resumed && a.session == s => {}
            Some(_) => {
                // The daemon lost our session: start over in the one it names.
                let unacked = self.out.reset();
                let peer_lost_from = self.inp.delivered() + 1;
                self.inp.reset();
                self.window.clear();
                self.notices.reset = Some((unacked, peer_lost_from));
            }
            None if a.resumed => {
                return self.fail(ErrorCode::UnexpectedMessage, "resumed a session never had");
            }
            None => {}
        }
        self.session = Some(a.session);
        if self.out.resume(self.mem.as_ref(), a.received).is_err() {
            return self.fail(ErrorCode::UnexpectedMessage, "resume beyond what was sent");
        }
        self.up(a.version, a.max_frame, a.idle_timeout_ms, a.resumed);
        self.conn.confirmed = true;
        self.conn.ack_now = true;
    }

    fn up(&mut self, version: u16, peer_max: u32, peer_idle_ms: u32, resumed: bool) {
        let idle = u64::from(self.config.idle_timeout_ms.min(peer_idle_ms).max(1));
        self.conn.state = State::Up;
        self.conn.version = version;
        self.conn.peer_max = peer_max;
        self.conn.idle_ms = idle;
        self.conn.keep_alive_ms = u64::from(self.config.keep_alive_ms).min(idle / 3).max(1);
        self.conn.resumed = resumed;
        self.conn.ack_sent = self.inp.delivered();
        self.notices.connected = true;
    }

    /// Applies a cumulative acknowledgement; false if it was a violation (connection
    /// closing).
    fn on_ack(&mut self, through: Seq) -> bool {
        match self.out.ack(self.mem.as_ref(), through) {
            Err(_) => {
                self.fail(ErrorCode::UnexpectedMessage, "ack beyond what was sent");
                false
            }
            Ok(false) => true,
            Ok(true) => {
                self.conn.unacked_since =
                    (self.out.sent_through() > through).then_some(self.conn.last_recv);
                self.trimmed().is_ok()
            }
        }
    }

    /// After the acknowledged position moved: journal it and move calls on.
    fn trimmed(&mut self) -> Result<(), ()> {
        let acked = self.out.acked();
        let mut ok = self.journal.trim(acked).is_ok();
        for c in self.calls.iter_mut() {
            if c.state == CallState::Queued && c.seq <= acked {
                c.state = CallState::Dispatched;
                c.unreported = true;
                ok &= self.journal.put_call(c).is_ok();
            }
        }
        ok &= self.save_meta().is_ok();
        if ok {
            Ok(())
        } else {
            self.fail(ErrorCode::Internal, "journal failed");
            Err(())
        }
    }

    fn on_data(&mut self, seq: Seq, body: &Body<'_>) {
        let Ok(len) = postcard::experimental::serialized_size(body) else {
            return self.fail(ErrorCode::Malformed, "body does not encode");
        };
        let got = self.inp.data_with(self.mem.as_mut(), seq, len, |dst| {
            postcard::to_slice(body, dst).map(|_| ()).is_ok()
        });
        self.on_received(got);
    }

    fn on_received(&mut self, got: Received) {
        match got {
            Received::Accepted | Received::Duplicate => {}
            Received::Hole { .. } => self.fail(ErrorCode::UnexpectedMessage, "sequence hole"),
            Received::Full => self.fail(ErrorCode::Overloaded, "inbox full"),
        }
    }

    fn on_timers(&mut self, now: Instant) {
        match self.conn.state {
            State::AwaitHello | State::HelloSent
                if self.live()
                    && now
                        >= self
                            .conn
                            .started
                            .plus_ms(u64::from(self.config.handshake_timeout_ms)) =>
            {
                self.close(Farewell::Nothing, CloseReason::HandshakeTimeout);
            }
            State::Up if self.live() && now >= self.conn.last_recv.plus_ms(self.conn.idle_ms) => {
                self.close(
                    Farewell::Goodbye(GoodbyeReason::IdleTimeout),
                    CloseReason::Local(GoodbyeReason::IdleTimeout),
                );
            }
            State::Up
                if self.live()
                    && self.conn.unacked_since.is_some_and(|since| {
                        now >= since.plus_ms(u64::from(self.config.ack_timeout_ms))
                    }) =>
            {
                self.close(Farewell::Nothing, CloseReason::AckTimeout);
            }
            _ => {}
        }
        match self.role {
            Role::Daemon => {
                let mut ok = true;
                for c in self.calls.iter_mut() {
                    if !c.state.is_final() && c.deadline <= now {
                        c.state = CallState::TimedOut;
                        c.unreported = true;
                        ok &= self.journal.put_call(c).is_ok();
                    }
                }
                if !ok {
                    self.fail(ErrorCode::Internal, "journal failed");
                }
            }
            Role::Node => {
                while let Some(id) = self.window.first_expired(now) {
                    let body = Body::Result(CallResult {
                        call_id: id,
                        outcome: Outcome::TimedOut,
                    });
                    // With the replay buffer full, try again at the next poll.
                    let Ok(seq) = self.enqueue(&body) else { break };
                    if let Some(e) = self.window.find_mut(id) {
                        e.slot = Slot::Done { result_seq: seq };
                        e.expired_unreported = true;
                    }
                }
            }
        }
    }

    // ----- output -----

    /// The next thing to do. `out` receives frames to transmit and the bytes events
    /// borrow; it must hold the larger of both sides' frame limits plus the 4-byte prefix.
    pub fn poll_output<'o>(&mut self, now: Instant, out: &'o mut [u8]) -> Output<'o> {
        self.on_timers(now);
        if self.conn.close_next {
            self.conn = Conn::down();
            return Output::Close;
        }
        if let Some(n) = self.next_frame(now, out) {
            return match n {
                Ok(n) => {
                    self.conn.last_sent = now;
                    Output::Transmit(&out[..n])
                }
                Err(needed) => Output::Event(Event::BufferTooSmall { needed }),
            };
        }
        if let Some(ev) = self.next_event(now, out) {
            return Output::Event(ev);
        }
        Output::Timeout(self.next_deadline(now))
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut at = Earliest::new();
        match self.conn.state {
            State::AwaitHello | State::HelloSent if self.live() => at.add(Some(
                self.conn
                    .started
                    .plus_ms(u64::from(self.config.handshake_timeout_ms)),
            )),
            State::Up if self.live() => {
                at.add(Some(self.conn.last_recv.plus_ms(self.conn.idle_ms)));
                at.add(Some(self.conn.last_sent.plus_ms(self.conn.keep_alive_ms)));
                at.add(self.conn.ack_due);
                at.add(
                    self.conn
                        .unacked_since
                        .map(|t| t.plus_ms(u64::from(self.config.ack_timeout_ms))),
                );
            }
            _ => {}
        }
        at.add(self.calls.next_deadline());
        // A call past its deadline whose answer found no room waits for an ack, not time.
        at.add(self.window.next_deadline().filter(|at| *at > now));
        at.get()
    }

    /// Encodes the next frame into `out`: `Ok(len)`, or `Err(needed)` if `out` is too
    /// small for it.
    fn next_frame(&mut self, now: Instant, out: &mut [u8]) -> Option<Result<usize, usize>> {
        let peer_max = self.conn.peer_max;
        if let Some(farewell) = self.conn.farewell.take() {
            self.conn.close_next = true;
            let msg = match farewell {
                Farewell::Error(code, reason) => Message::Error(ErrorFrame { code, reason }),
                Farewell::Goodbye(reason) => Message::Goodbye(Goodbye { reason, detail: "" }),
                Farewell::Nothing => return None,
            };
            // A farewell that does not fit is skipped: the close still happens.
            return wire::encode_message(&msg, peer_max, out).ok().map(Ok);
        }
        if self.conn.close_next || self.conn.state == State::Down {
            return None;
        }
        if self.conn.send_hello {
            self.conn.send_hello = false;
            let resume = self.session.map(|session| Resume {
                session,
                received: self.inp.delivered(),
            });
            let msg = Message::Hello(Hello {
                versions: self.config.versions,
                max_frame: self.config.max_frame,
                idle_timeout_ms: self.config.idle_timeout_ms,
                node_id: &self.node_id,
                platform: &self.platform,
                resume,
            });
            return Some(encode(&msg, peer_max, out));
        }
        if self.conn.state != State::Up {
            return None;
        }
        if self.conn.send_hello_ack {
            self.conn.send_hello_ack = false;
            let msg = Message::HelloAck(HelloAck {
                version: self.conn.version,
                max_frame: self.config.max_frame,
                idle_timeout_ms: self.config.idle_timeout_ms,
                session: self.session.unwrap_or_default(),
                resumed: self.conn.resumed,
                received: self.inp.delivered(),
            });
            return Some(encode(&msg, peer_max, out));
        }
        if let Some(nonce) = self.conn.pong.take() {
            return Some(encode(&Message::Pong(Ping { nonce }), peer_max, out));
        }
        let ack = self.inp.delivered();
        if core::mem::take(&mut self.conn.ack_now) {
            self.conn.ack_sent = ack;
            self.conn.ack_due = None;
            return Some(encode(&Message::Ack(Ack { received: ack }), peer_max, out));
        }
        let next = if self.conn.confirmed {
            self.out.next(self.mem.as_ref())
        } else {
            None
        };
        match next {
            Some(Next::Gap(gap)) => {
                self.out.advance(gap.to);
                self.conn.unacked_since.get_or_insert(now);
                return Some(encode(&Message::Gap(gap), peer_max, out));
            }
            Some(Next::Data(rec)) => {
                let seq = rec.seq;
                let Ok(mut body) = postcard::from_bytes::<Body<'_>>(rec.bytes) else {
                    // Our own encoding: cannot happen; report it as lost rather than stall.
                    self.out.advance(seq);
                    return Some(encode(
                        &Message::Gap(Gap { from: seq, to: seq }),
                        peer_max,
                        out,
                    ));
                };
                if let Body::Call(call) = &mut body {
                    // The wire carries the time left, since the clocks differ.
                    let left = self
                        .calls
                        .get(call.call_id)
                        .filter(|c| !c.state.is_final())
                        .map_or(0, |c| now.ms_until(c.deadline));
                    call.timeout_ms = u32::try_from(left).unwrap_or(u32::MAX);
                }
                let msg = Message::Data(Data { seq, ack, body });
                let res = match wire::encode_message(&msg, peer_max, out) {
                    Err(EncodeError::TooLarge { .. }) => {
                        // Above what this peer accepts: it learns of the loss instead.
                        encode(&Message::Gap(Gap { from: seq, to: seq }), peer_max, out)
                    }
                    other => other.map_err(|_| needed_for(peer_max)),
                };
                if res.is_ok() {
                    self.out.advance(seq);
                    self.conn.unacked_since.get_or_insert(now);
                    self.conn.ack_sent = ack;
                    self.conn.ack_due = None;
                }
                return Some(res);
            }
            None => {}
        }
        if ack <= self.conn.ack_sent {
            self.conn.ack_due = None;
        }
        if ack > self.conn.ack_sent && self.conn.ack_due.is_some_and(|at| at <= now) {
            self.conn.ack_sent = ack;
            self.conn.ack_due = None;
            return Some(encode(&Message::Ack(Ack { received: ack }), peer_max, out));
        }
        if now >= self.conn.last_sent.plus_ms(self.conn.keep_alive_ms) {
            self.conn.pings += 1;
            return Some(encode(
                &Message::Ping(Ping {
                    nonce: self.conn.pings,
                }),
                peer_max,
                out,
            ));
        }
        None
    }

    fn next_event<'o>(&mut self, now: Instant, out: &'o mut [u8]) -> Option<Event<'o>> {
        if let Some((unacked, peer_lost_from)) = self.notices.reset.take() {
            return Some(Event::SessionReset {
                unacked,
                peer_lost_from,
            });
        }
        if core::mem::take(&mut self.notices.connected) {
            return Some(Event::Connected {
                session: self.session.unwrap_or_default(),
                resumed: self.conn.resumed,
                version: self.conn.version,
            });
        }
        if let Some(reason) = self.notices.disconnected.take() {
            return Some(Event::Disconnected(reason));
        }
        if let Some(c) = self.calls.next_unreported() {
            return Some(self.report_call(c));
        }
        if let Some(call_id) = self.window.first_expired_unreported()
            && let Some(e) = self.window.find_mut(call_id)
        {
            e.expired_unreported = false;
            let answer = match e.slot {
                Slot::Done { result_seq } => result_seq,
                Slot::Active { .. } => 0,
            };
            return Some(Event::CallExpired { call_id, answer });
        }
        self.deliver(now, out)
    }

    fn report_call(&mut self, c: CallRecord) -> Event<'static> {
        let ok = if c.state.is_final() {
            self.calls.remove(c.id);
            self.journal.remove_call(c.id).is_ok()
        } else {
            let mut ok = true;
            if let Some(rec) = self.calls.get_mut(c.id) {
                rec.unreported = false;
                ok = self.journal.put_call(rec).is_ok();
            }
            ok
        };
        if !ok {
            self.fail(ErrorCode::Internal, "journal failed");
        }
        Event::CallUpdate {
            call_id: c.id,
            state: c.state,
            seq: None,
            outcome: None,
        }
    }

    /// Hands the inbox's front message to the application.
    fn deliver<'o>(&mut self, now: Instant, out: &'o mut [u8]) -> Option<Event<'o>> {
        let rec = self.inp.front(self.mem.as_ref())?;
        let seq = rec.seq;
        if rec.kind == KIND_GAP {
            let to = gap_end(&rec);
            self.mark_delivered(now, to);
            return Some(Event::Gap { from: seq, to });
        }
        let len = rec.bytes.len();
        let Some(dst) = out.get_mut(..len) else {
            return Some(Event::BufferTooSmall { needed: len });
        };
        dst.copy_from_slice(rec.bytes);
        let out: &'o [u8] = out;
        let Ok(body) = postcard::from_bytes::<Body<'o>>(&out[..len]) else {
            // Stored by us from a decoded body: cannot happen. Skip rather than stall.
            self.mark_delivered(now, seq);
            return Some(Event::Gap { from: seq, to: seq });
        };
        let ev = match (self.role, &body) {
            (Role::Daemon, Body::Progress(p)) => self.call_progress(seq, *p),
            (Role::Daemon, Body::Result(r)) => self.call_result(seq, *r),
            (Role::Node, Body::Call(c)) => self.incoming_call(now, seq, *c)?,
            (Role::Node, Body::Cancel(c)) => Event::Cancel {
                seq,
                call_id: c.call_id,
                active: matches!(
                    self.window.find(c.call_id).map(|e| e.slot),
                    Some(Slot::Active { .. })
                ),
            },
            _ => Event::Message { seq, body },
        };
        self.mark_delivered(now, seq);
        Some(ev)
    }

    /// The message(s) through `through` were handed out: record, then schedule the ack.
    fn mark_delivered(&mut self, now: Instant, through: Seq) {
        self.inp.pop_delivered(self.mem.as_ref(), through);
        if self.save_meta().is_err() {
            self.fail(ErrorCode::Internal, "journal failed");
            return;
        }
        if self.conn.state == State::Up {
            let pending = through.saturating_sub(self.conn.ack_sent);
            let due = if pending >= u64::from(self.config.ack_every.max(1)) {
                now
            } else {
                now.plus_ms(u64::from(self.config.ack_delay_ms))
            };
            self.conn.ack_due = Some(self.conn.ack_due.map_or(due, |at| at.min(due)));
        }
    }

    fn call_progress<'o>(&mut self, seq: Seq, p: CallProgress<'o>) -> Event<'o> {
        let Some(c) = self
            .calls
            .get_mut(p.call_id)
            .filter(|c| !c.state.is_final())
        else {
            return Event::Message {
                seq,
                body: Body::Progress(p),
            };
        };
        c.state = match p.stage {
            Stage::AwaitingApproval => CallState::AwaitingApproval,
            Stage::Running => CallState::Running,
        };
        c.unreported = false;
        let rec = *c;
        if self.journal.put_call(&rec).is_err() {
            self.fail(ErrorCode::Internal, "journal failed");
        }
        Event::CallUpdate {
            call_id: p.call_id,
            state: rec.state,
            seq: Some(seq),
            outcome: None,
        }
    }

    fn call_result<'o>(&mut self, seq: Seq, r: CallResult<'o>) -> Event<'o> {
        if self.calls.get(r.call_id).is_none_or(|c| c.state.is_final()) {
            return Event::Message {
                seq,
                body: Body::Result(r),
            };
        }
        let state = match r.outcome {
            Outcome::Success(_) => CallState::Succeeded,
            Outcome::Failed { .. } => CallState::Failed,
            Outcome::Rejected { code, .. } => CallState::Rejected(code),
            Outcome::Cancelled => CallState::Cancelled,
            Outcome::TimedOut => CallState::TimedOut,
        };
        self.calls.remove(r.call_id);
        if self.journal.remove_call(r.call_id).is_err() {
            self.fail(ErrorCode::Internal, "journal failed");
        }
        Event::CallUpdate {
            call_id: r.call_id,
            state,
            seq: Some(seq),
            outcome: Some(r.outcome),
        }
    }

    /// Node: a call message. `None` leaves it in the inbox (no room to answer yet).
    fn incoming_call<'o>(&mut self, now: Instant, seq: Seq, c: Call<'o>) -> Option<Event<'o>> {
        let call_id = c.call_id;
        if let Some(entry) = self.window.find(call_id).copied() {
            // Seen before: answer again, never run again.
            let answer = match entry.slot {
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
                Err(SessionError::Full) => return None,
                Ok(a) => a,
                Err(_) => None,
            };
            return Some(Event::DuplicateCall {
                seq,
                call_id,
                answer,
            });
        }
        if c.timeout_ms == 0 {
            let body = Body::Result(CallResult {
                call_id,
                outcome: Outcome::TimedOut,
            });
            let result_seq = match self.enqueue(&body) {
                Err(SessionError::Full) => return None,
                Ok(s) => s,
                Err(_) => 0,
            };
            if self.window.admit(call_id, now).is_ok()
                && let Some(e) = self.window.find_mut(call_id)
            {
                e.slot = Slot::Done { result_seq };
            }
            return Some(Event::CallNotRun {
                seq,
                call_id,
                why: NotRun::Expired,
                answer: result_seq,
            });
        }
        let deadline = now.plus_ms(u64::from(c.timeout_ms));
        if self.window.admit(call_id, deadline).is_err() {
            let body = Body::Result(CallResult {
                call_id,
                outcome: Outcome::Rejected {
                    code: RejectCode::Busy,
                    reason: "call window full",
                },
            });
            let answer = match self.enqueue(&body) {
                Err(SessionError::Full) => return None,
                Ok(s) => s,
                Err(_) => 0,
            };
            return Some(Event::CallNotRun {
                seq,
                call_id,
                why: NotRun::Busy,
                answer,
            });
        }
        Some(Event::Call {
            seq,
            call: c,
            deadline,
        })
    }

    /// Sends a held message again as a new one (a replayed call's answer). A message no
    /// longer held was acknowledged: the daemon has it already.
    fn resend(&mut self, seq: Seq) -> Result<Option<Seq>, SessionError> {
        let Some(rec) = self.out.get(self.mem.as_ref(), seq) else {
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

fn needed_for(peer_max: u32) -> usize {
    HEADER_LEN + peer_max as usize
}

fn encode(msg: &Message<'_>, peer_max: u32, out: &mut [u8]) -> Result<usize, usize> {
    wire::encode_message(msg, peer_max, out).map_err(|_| needed_for(peer_max))
}
