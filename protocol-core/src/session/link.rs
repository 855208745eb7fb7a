//! The link layer both roles share: connection state (hello exchange, keep-alive, idle
//! and ack timeouts, farewell), the two stream halves over lent storage, cumulative
//! acknowledgements, and the durability bookkeeping.
//!
//! The role types (`NodeSession`, `DaemonSession`) keep their storage next to a
//! [`Link`], so an event can borrow the storage while the link and the role's tables
//! change.

use super::config::{Config, DATA_OVERHEAD, MAX_SEQ, MIN_IDLE_TIMEOUT_MS, SessionError};
use super::event::CloseReason;
use super::journal::{BatchId, JournalError, JournalMeta, JournalOp, Mark, Track};
use super::ring::Record;
use super::stream::{BeyondSent, InStream, Next, OutStream, Pushed, Received};
use crate::frame::{FrameError, HEADER_LEN, MIN_MAX_FRAME};
use crate::time::{Earliest, Instant};
use crate::transmit::{Transmit, TransmitError};
use crate::wire::{
    self, Ack, Body, EncodeError, ErrorCode, ErrorFrame, Gap, Goodbye, GoodbyeReason, Hello,
    HelloAck, Message, Ping, Seq, SessionId,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
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
pub(crate) enum Farewell {
    Error(ErrorCode, &'static str),
    Goodbye(GoodbyeReason),
    Nothing,
}

/// Per-connection state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conn {
    pub(crate) state: State,
    started: Instant,
    pub(crate) last_recv: Instant,
    last_sent: Instant,
    pub(crate) peer_max: u32,
    idle_ms: u64,
    keep_alive_ms: u64,
    pub(crate) version: u16,
    pub(crate) send_hello: bool,
    pub(crate) send_hello_ack: bool,
    pub(crate) resumed: bool,
    pong: Option<u64>,
    pings: u64,
    /// Stream data may flow. Daemon: the node proved it holds the session id (a frame
    /// after our hello-ack). Node: the session id is durable.
    pub(crate) confirmed: bool,
    /// Node: acknowledge at once (this confirms the hello-ack to the daemon).
    pub(crate) ack_now: bool,
    /// Node: the session our hello named (`resume`), if any.
    pub(crate) named: Option<SessionId>,
    /// Last acknowledgement value sent on this connection.
    ack_sent: Seq,
    ack_due: Option<Instant>,
    /// Since when data sent on this connection waits for an acknowledgement.
    unacked_since: Option<Instant>,
    /// When the oldest ping that nothing has answered yet went out: a peer that stays
    /// silent after it for `ack_timeout_ms` is gone (a transport whose packets vanish
    /// may never say so; only the idle timeout would, much later).
    ping_since: Option<Instant>,
    farewell: Option<Farewell>,
    /// A farewell went out; `Transmit::Close` comes next.
    close_next: bool,
}

impl Conn {
    pub(crate) const fn down() -> Self {
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
            named: None,
            ack_sent: 0,
            ack_due: None,
            unacked_since: None,
            ping_since: None,
            farewell: None,
            close_next: false,
        }
    }
}

/// Application notices waiting for `poll_event`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Notices {
    pub(crate) reset: Option<(Option<(Seq, Seq)>, Seq)>,
    pub(crate) connected: bool,
    pub(crate) disconnected: Option<CloseReason>,
}

/// Which role a link serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Node,
    Daemon,
}

/// What [`Link::take_frame`] leaves to the role.
#[derive(Debug)]
pub(crate) enum Taken<'f> {
    /// Nothing (handled, refused, or ignored).
    Nothing,
    /// Daemon: a hello to check.
    Hello(Hello<'f>),
    /// Node: the daemon's answer to our hello.
    HelloAck(HelloAck),
    /// Stream traffic on an established connection; `acked`: the peer's
    /// acknowledgement moved.
    Stream { acked: bool },
    /// Stream data the inbox has no room for now: its acknowledgement was applied
    /// (`acked`: it moved), its message was not stored (`SessionError::InboxFull`).
    Refused { acked: bool },
}

/// Something the link tells the application, in the order it is told; each role turns
/// it into its own event.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Notice {
    JournalFailed,
    SessionReset {
        unacked: Option<(Seq, Seq)>,
        peer_lost_from: Seq,
    },
    Connected {
        session: SessionId,
        resumed: bool,
        version: u16,
    },
    Disconnected(CloseReason),
}

/// What a role does with the link's outgoing data.
pub(crate) trait Outgoing {
    /// A call's time left as it goes out now, if `body` is a call (the daemon rewrites
    /// it, since the clocks differ).
    fn time_left(&mut self, now: Instant, seq: Seq, body: &[u8]) -> Option<u32>;
    /// Message `seq` is larger than the peer accepts: it goes out as a gap, once what
    /// this records (the daemon's call ends `Undeliverable`) is durable (`true`).
    fn undeliverable(&mut self, seq: Seq, body: &[u8]) -> bool;
}

/// The methods both roles have alike (they keep `storage` next to a `link`).
macro_rules! shared_methods {
    () => {
        /// Takes the storage back when the session holds no message in it.
        pub fn reclaim(&mut self) -> Option<B> {
            if self.link.is_empty() {
                self.storage.take()
            } else {
                None
            }
        }

        pub fn has_storage(&self) -> bool {
            self.storage.is_some()
        }

        pub fn config(&self) -> &Config {
            &self.link.config
        }

        /// True between the end of the hello exchange and the end of the connection.
        pub fn is_connected(&self) -> bool {
            self.link.conn.state == State::Up
        }

        /// True while a transport connection is in use (hello exchange included).
        pub fn has_connection(&self) -> bool {
            self.link.conn.state != State::Down
        }

        /// Last seq assigned to our outgoing stream.
        pub fn last_sent(&self) -> Seq {
            self.link.out.last()
        }

        /// Highest outgoing seq the peer acknowledged.
        pub fn acked(&self) -> Seq {
            self.link.out.acked()
        }

        /// Highest incoming seq handed to the application.
        pub fn delivered(&self) -> Seq {
            self.link.inp.delivered()
        }

        /// Outgoing messages held for replay.
        pub fn unacked(&self) -> usize {
            self.link.out.held()
        }

        /// The journal batch `poll_journal` closed (its ops were all polled), which
        /// waits for `handle_journal_committed` or `handle_journal_failed` naming it.
        pub fn closed_batch(&self) -> Option<super::BatchId> {
            self.link.track.closed_batch()
        }

        /// True while a journal batch is being polled or waits for its confirmation.
        pub fn journal_in_flight(&self) -> bool {
            self.link.track.in_flight()
        }

        /// The closed journal batch `batch` is durable. A confirmation naming no closed
        /// batch (early, late, or twice) is refused and changes nothing.
        pub fn handle_journal_committed(
            &mut self,
            now: Instant,
            batch: super::BatchId,
        ) -> Result<(), super::JournalError> {
            self.link.journal_committed(now, batch)?;
            self.tables_committed();
            Ok(())
        }

        /// The store failed the closed journal batch `batch`; it is emitted again once
        /// its retry deadline (`poll_timeout`) passed.
        pub fn handle_journal_failed(
            &mut self,
            now: Instant,
            batch: super::BatchId,
        ) -> Result<(), super::JournalError> {
            self.link.journal_failed(now, batch)?;
            self.tables_failed();
            Ok(())
        }

        /// True if `poll_journal` has an op now: a change waits for the journal, no
        /// batch waits for its confirmation, and no failed batch waits for its retry.
        pub fn journal_pending(&self) -> bool {
            self.link.journal_pending(self.tables_dirty())
        }

        /// Closes the connection with a goodbye.
        pub fn close(&mut self, now: Instant, reason: GoodbyeReason) {
            self.link.now = now;
            if self.link.live() {
                self.link
                    .close(Farewell::Goodbye(reason), CloseReason::Local(reason));
            }
        }

        /// The transport connection is gone.
        pub fn handle_disconnected(&mut self, now: Instant) {
            self.link.now = now;
            self.link.disconnected();
        }

        /// The frame decoder failed: an error frame goes out, then the close.
        pub fn handle_frame_error(&mut self, now: Instant, e: FrameError) {
            self.link.now = now;
            if self.link.live() {
                self.link.frame_error(e);
            }
        }
    };
}
pub(crate) use shared_methods;

/// The shared state of a session; see the [module documentation](self).
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) config: Config,
    pub(crate) out: OutStream,
    pub(crate) inp: InStream,
    pub(crate) conn: Conn,
    /// The session id; a node learns it from its first hello-ack.
    pub(crate) session: Option<SessionId>,
    pub(crate) track: Track,
    pub(crate) notices: Notices,
    /// The latest `now` an input brought (events are polled without one).
    pub(crate) now: Instant,
}

/// The storage's bytes, or none (every ring is empty then).
pub(crate) fn bytes<B: AsRef<[u8]>>(storage: &Option<B>) -> &[u8] {
    storage.as_ref().map_or(&[], |b| b.as_ref())
}

/// Lends storage to a session: refused (and handed back) if it holds some already or
/// `buf` is too short.
pub(crate) fn lend<B: AsRef<[u8]>>(
    storage: &mut Option<B>,
    config: &Config,
    buf: B,
) -> Result<(), B> {
    if storage.is_some() || buf.as_ref().len() < config.storage_len() {
        return Err(buf);
    }
    *storage = Some(buf);
    Ok(())
}

impl Link {
    pub(crate) fn new(config: Config) -> Self {
        let replay = super::ring::Ring::new(0, config.replay_bytes);
        let inbox = super::ring::Ring::new(config.replay_bytes, config.inbox_bytes);
        Link {
            config,
            out: OutStream::new(replay, config.overflow),
            inp: InStream::new(inbox),
            conn: Conn::down(),
            session: None,
            track: Track::new(config.durable),
            notices: Notices::default(),
            now: Instant::ZERO,
        }
    }

    /// The session holds no message: its storage can go back to the pool.
    pub(crate) fn is_empty(&self) -> bool {
        self.out.ring().is_empty() && self.inp.inbox().is_empty()
    }

    /// A connection is in use and not closing.
    pub(crate) fn live(&self) -> bool {
        self.conn.state != State::Down && self.conn.farewell.is_none() && !self.conn.close_next
    }

    /// Largest frame payload we send on this connection.
    pub(crate) fn send_limit(&self) -> u32 {
        self.conn.peer_max.min(self.config.max_frame)
    }

    /// Highest outgoing seq that may be transmitted (durable).
    pub(crate) fn transmit_through(&self) -> Seq {
        if self.track.enabled {
            self.track.durable_append()
        } else {
            Seq::MAX
        }
    }

    /// The acknowledgement we may give: delivered, and durable.
    pub(crate) fn ack_value(&self) -> Seq {
        if self.track.enabled {
            self.inp.delivered().min(self.track.durable_received())
        } else {
            self.inp.delivered()
        }
    }

    /// True once the session id is durable (always without a journal).
    pub(crate) fn session_durable(&self) -> bool {
        !self.track.enabled || self.track.durable_session() == self.session
    }

    /// The session a node's hello may name: its own once durable. A node that named
    /// one not yet durable, then restarted without it, would make the daemon take the
    /// session as held and then reset it, losing what it had queued.
    pub(crate) fn nameable_session(&self) -> Option<SessionId> {
        self.session.filter(|_| self.session_durable())
    }

    // ----- connection -----

    pub(crate) fn connected(&mut self, now: Instant, node: bool) {
        if self.live() {
            self.notices.disconnected = Some(CloseReason::TransportClosed);
        }
        self.inp.rewind();
        self.conn = Conn {
            state: if node {
                State::HelloSent
            } else {
                State::AwaitHello
            },
            started: now,
            last_recv: now,
            last_sent: now,
            send_hello: node,
            ..Conn::down()
        };
    }

    pub(crate) fn disconnected(&mut self) {
        // A connection already closing has its reason reported.
        if self.live() {
            self.notices.disconnected = Some(CloseReason::TransportClosed);
        }
        self.conn = Conn::down();
    }

    pub(crate) fn close(&mut self, farewell: Farewell, reason: CloseReason) {
        if self.conn.state == State::Down || self.conn.close_next {
            return;
        }
        if self.conn.farewell.is_none() {
            self.conn.farewell = Some(farewell);
            self.notices.disconnected = Some(reason);
        }
    }

    /// Sends an error frame and closes.
    pub(crate) fn fail(&mut self, code: ErrorCode, reason: &'static str) {
        self.close(Farewell::Error(code, reason), CloseReason::SentError(code));
    }

    pub(crate) fn frame_error(&mut self, e: FrameError) {
        match e {
            FrameError::TooLarge { len, max } => {
                self.fail(ErrorCode::FrameTooLarge { len, max }, "frame too large")
            }
            _ => self.fail(ErrorCode::Malformed, "framing failed"),
        }
    }

    pub(crate) fn peer_closed(&mut self, reason: CloseReason) {
        self.notices.disconnected = Some(reason);
        self.conn.farewell = Some(Farewell::Nothing);
    }

    /// The hello exchange is over.
    pub(crate) fn up(&mut self, version: u16, peer_max: u32, peer_idle_ms: u32, resumed: bool) {
        let idle = self
            .config
            .idle_timeout_ms
            .min(peer_idle_ms)
            .max(MIN_IDLE_TIMEOUT_MS);
        let idle = u64::from(idle);
        self.conn.state = State::Up;
        self.conn.version = version;
        self.conn.peer_max = peer_max;
        self.conn.idle_ms = idle;
        self.conn.keep_alive_ms = u64::from(self.config.keep_alive_ms).min(idle / 3).max(1);
        self.conn.resumed = resumed;
        self.conn.ack_sent = self.ack_value();
        self.notices.connected = true;
    }

    /// The next notice for the application, if any.
    pub(crate) fn poll_notice(&mut self) -> Option<Notice> {
        if core::mem::take(&mut self.track.failed_unreported) {
            return Some(Notice::JournalFailed);
        }
        if let Some((unacked, peer_lost_from)) = self.notices.reset.take() {
            return Some(Notice::SessionReset {
                unacked,
                peer_lost_from,
            });
        }
        if core::mem::take(&mut self.notices.connected) {
            return Some(Notice::Connected {
                session: self.session.unwrap_or_default(),
                resumed: self.conn.resumed,
                version: self.conn.version,
            });
        }
        self.notices.disconnected.take().map(Notice::Disconnected)
    }

    // ----- received frames -----

    /// Takes one frame's payload: decodes it, checks its numbers and direction, and
    /// applies everything both roles do alike; hellos and acknowledgements go back to
    /// the role. `Err(NoStorage)`: stream data and no storage lent; nothing consumed.
    pub(crate) fn take_frame<'f, B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        storage: &mut Option<B>,
        now: Instant,
        frame: &'f [u8],
        side: Side,
        ahead: bool,
    ) -> Result<Taken<'f>, SessionError> {
        if !self.live() {
            return Ok(Taken::Nothing);
        }
        let msg = match wire::decode_message(frame) {
            Ok(msg) => msg,
            Err(_) if ahead => return Err(SessionError::InboxFull),
            Err(e) => {
                self.now = now;
                self.fail(e.code(), "message does not decode");
                return Ok(Taken::Nothing);
            }
        };
        if ahead {
            // Behind a refused frame: only what has no place in the stream's order.
            let up = self.conn.state == State::Up && Self::numbers_valid(&msg);
            match msg {
                Message::Ack(_) | Message::Ping(_) | Message::Pong(_) if up => {}
                Message::Data(d)
                    if up && super::restore::flows_from_daemon(&d.body) == (side == Side::Node) =>
                {
                    self.now = now;
                    let acked = self.on_ack(bytes(storage), d.ack);
                    return Ok(Taken::Refused {
                        acked: acked == Some(true),
                    });
                }
                _ => return Err(SessionError::InboxFull),
            }
        }
        if matches!(msg, Message::Data(_) | Message::Gap(_)) && storage.is_none() {
            return Err(SessionError::NoStorage);
        }
        self.now = now;
        self.conn.last_recv = now;
        if !Self::numbers_valid(&msg) {
            self.fail(ErrorCode::Malformed, "position out of range");
            return Ok(Taken::Nothing);
        }
        let up = self.conn.state == State::Up;
        let stream = |acked: Option<bool>| Taken::Stream {
            acked: acked == Some(true),
        };
        Ok(match msg {
            Message::Error(e) => {
                self.peer_closed(CloseReason::PeerError(e.code));
                Taken::Nothing
            }
            Message::Goodbye(g) => {
                self.peer_closed(CloseReason::Peer(g.reason));
                Taken::Nothing
            }
            Message::Hello(h) if side == Side::Daemon && self.conn.state == State::AwaitHello => {
                Taken::Hello(h)
            }
            Message::HelloAck(a) if side == Side::Node && self.conn.state == State::HelloSent => {
                Taken::HelloAck(a)
            }
            Message::Data(d) if up => {
                if super::restore::flows_from_daemon(&d.body) != (side == Side::Node) {
                    self.fail(
                        ErrorCode::UnexpectedMessage,
                        "message in the wrong direction",
                    );
                    return Ok(stream(None));
                }
                let acked = self.on_ack(bytes(storage), d.ack);
                if self.live() {
                    let Some(body) = data_body(frame) else {
                        self.fail(ErrorCode::Malformed, "data body");
                        return Ok(stream(acked));
                    };
                    // Backpressure: the message waits in the peer's frame, not here.
                    if self.inp.lacks_room(d.seq, body.len()) {
                        return Ok(Taken::Refused {
                            acked: acked == Some(true),
                        });
                    }
                    let mem = storage.as_mut().map_or(&mut [][..], |b| b.as_mut());
                    self.on_data(mem, d.seq, body);
                }
                stream(acked)
            }
            Message::Ack(a) if up => stream(self.on_ack(bytes(storage), a.received)),
            Message::Gap(g) if up => {
                if self.inp.lacks_room_for_gap(g) {
                    return Ok(Taken::Refused { acked: false });
                }
                let mem = storage.as_mut().map_or(&mut [][..], |b| b.as_mut());
                self.on_gap(mem, g);
                stream(None)
            }
            Message::Ping(p) if up => {
                self.on_ping(p.nonce);
                stream(None)
            }
            Message::Pong(_) if up => stream(None),
            _ => {
                self.fail(ErrorCode::UnexpectedMessage, "unexpected message");
                Taken::Nothing
            }
        })
    }

    /// Checks every position a peer's message carries before any of it moves state.
    pub(crate) fn numbers_valid(msg: &Message<'_>) -> bool {
        match msg {
            Message::Hello(h) => h.resume.is_none_or(|r| r.received <= MAX_SEQ),
            Message::HelloAck(a) => a.received <= MAX_SEQ,
            Message::Data(d) => d.seq >= 1 && d.seq <= MAX_SEQ && d.ack <= MAX_SEQ,
            Message::Ack(a) => a.received <= MAX_SEQ,
            Message::Gap(g) => g.from >= 1 && g.from <= g.to && g.to <= MAX_SEQ,
            _ => true,
        }
    }

    /// Applies a cumulative acknowledgement. `Some(true)` if it moved, `None` if it was
    /// a violation (the connection is closing).
    pub(crate) fn on_ack(&mut self, mem: &[u8], through: Seq) -> Option<bool> {
        match self.out.ack(mem, through) {
            Err(BeyondSent) => {
                self.fail(ErrorCode::UnexpectedMessage, "ack beyond what was sent");
                None
            }
            Ok(false) => Some(false),
            Ok(true) => {
                self.conn.unacked_since =
                    (self.out.sent_through() > through).then_some(self.conn.last_recv);
                self.acked_moved();
                Some(true)
            }
        }
    }

    pub(crate) fn acked_moved(&mut self) {
        if self.track.enabled {
            self.track.trim = Mark::Dirty;
            self.track.touch_meta();
        }
    }

    /// Stores a received data message's body (its bytes as they came, no re-encoding).
    pub(crate) fn on_data(&mut self, mem: &mut [u8], seq: Seq, body: &[u8]) {
        let got = self.inp.data_with(mem, seq, body.len(), |dst| {
            dst.copy_from_slice(body);
            true
        });
        self.on_received(got);
    }

    pub(crate) fn on_gap(&mut self, mem: &mut [u8], gap: Gap) {
        let got = self.inp.gap(mem, gap);
        self.on_received(got);
    }

    fn on_received(&mut self, got: Received) {
        match got {
            Received::Accepted | Received::Duplicate => {}
            Received::Hole { .. } => self.fail(ErrorCode::UnexpectedMessage, "sequence hole"),
            Received::Full => self.fail(ErrorCode::Overloaded, "inbox full"),
        }
    }

    pub(crate) fn on_ping(&mut self, nonce: u64) {
        self.conn.pong = Some(nonce);
    }

    /// The front inbox record, if any.
    pub(crate) fn front<'m>(&self, mem: &'m [u8]) -> Option<Record<'m>> {
        self.inp.front(mem)
    }

    /// The front record (through `through`) was handed out: record it, schedule the ack.
    pub(crate) fn delivered(&mut self, mem: &[u8], through: Seq) {
        self.inp.pop_delivered(mem, through);
        self.track.touch_meta();
        self.schedule_ack();
    }

    /// An acknowledgement is owed: now if `ack_every` are waiting, else after the delay.
    pub(crate) fn schedule_ack(&mut self) {
        if self.conn.state != State::Up {
            return;
        }
        let pending = self.ack_value().saturating_sub(self.conn.ack_sent);
        if pending == 0 {
            return;
        }
        let due = if pending >= u64::from(self.config.ack_every.max(1)) {
            self.now
        } else {
            self.now.plus_ms(u64::from(self.config.ack_delay_ms))
        };
        self.conn.ack_due = Some(self.conn.ack_due.map_or(due, |at| at.min(due)));
    }

    // ----- sending -----

    /// Appends a body to the outgoing stream; journaled (and transmitted once durable).
    pub(crate) fn enqueue(
        &mut self,
        mem: Option<&mut [u8]>,
        body: &Body<'_>,
    ) -> Result<Seq, SessionError> {
        let len =
            postcard::experimental::serialized_size(body).map_err(|_| SessionError::Unencodable)?;
        let mut limit = self.config.max_frame as usize;
        if self.conn.state == State::Up {
            limit = limit.min(self.conn.peer_max as usize);
        }
        if !self.out.ring().could_hold(len) || len.saturating_add(DATA_OVERHEAD) > limit {
            return Err(SessionError::TooLarge);
        }
        if self.out.last() >= MAX_SEQ {
            return Err(SessionError::Full);
        }
        let mem = mem.ok_or(SessionError::NoStorage)?;
        let pushed = self.out.push_with(mem, len, |dst| {
            postcard::to_slice(body, dst)
                .map(|_| ())
                .map_err(|_| SessionError::Unencodable)
        })?;
        match pushed {
            Pushed::Full => Err(SessionError::Full),
            Pushed::Stored {
                seq,
                evicted_through,
            } => {
                if evicted_through.is_some() {
                    self.acked_moved();
                }
                self.track.touch_meta();
                Ok(seq)
            }
        }
    }

    /// Writes the farewell, or says to close. `None`: carry on.
    pub(crate) fn poll_farewell(
        &mut self,
        buf: &mut [u8],
    ) -> Option<Result<Option<Transmit>, TransmitError>> {
        if self.conn.close_next {
            self.conn = Conn::down();
            return Some(Ok(Some(Transmit::Close)));
        }
        let farewell = self.conn.farewell?;
        let msg = match farewell {
            Farewell::Error(code, reason) => Message::Error(ErrorFrame { code, reason }),
            Farewell::Goodbye(reason) => Message::Goodbye(Goodbye { reason, detail: "" }),
            Farewell::Nothing => {
                self.conn = Conn::down();
                return Some(Ok(Some(Transmit::Close)));
            }
        };
        Some(match emit(&msg, self.send_limit(), buf) {
            Ok(n) => {
                self.conn.farewell = None;
                self.conn.close_next = true;
                Ok(Some(Transmit::Frame(n)))
            }
            Err(Emit::Small(needed)) => Err(TransmitError::BufferTooSmall { needed }),
            // Our own small frame above the peer's limit: close without it.
            Err(Emit::TooLarge) => {
                self.conn = Conn::down();
                Ok(Some(Transmit::Close))
            }
        })
    }

    /// Writes a link-level frame the role built (hello, hello-ack).
    pub(crate) fn send_control(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError> {
        let limit = self.send_limit();
        self.emit_control(now, msg, limit, buf)
    }

    /// Pongs, acks, stream data, keep-alive: the next frame once the connection is up
    /// and confirmed.
    pub(crate) fn poll_stream(
        &mut self,
        now: Instant,
        mem: &[u8],
        buf: &mut [u8],
        role: &mut impl Outgoing,
    ) -> Result<Option<Transmit>, TransmitError> {
        if self.conn.state != State::Up || !self.live() || !self.conn.confirmed {
            return Ok(None);
        }
        let limit = self.send_limit();
        if let Some(nonce) = self.conn.pong {
            let r = self.emit_control(now, &Message::Pong(Ping { nonce }), limit, buf)?;
            self.conn.pong = None;
            return Ok(r);
        }
        let ack = self.ack_value();
        if self.conn.ack_now {
            let r = self.emit_control(now, &Message::Ack(Ack { received: ack }), limit, buf)?;
            self.conn.ack_now = false;
            self.conn.ack_sent = ack;
            self.conn.ack_due = None;
            return Ok(r);
        }
        match self.out.next(mem, self.transmit_through()) {
            Some(Next::Gap(gap)) => {
                let r = self.emit_control(now, &Message::Gap(gap), limit, buf)?;
                self.out.advance(gap.to);
                self.conn.unacked_since.get_or_insert(now);
                return Ok(r);
            }
            Some(Next::Data(rec)) => match self.send_data(now, rec, ack, buf, role)? {
                Some(t) => return Ok(Some(t)),
                // Closing, or a gap waits for the journal (acks and pings may still go).
                None if !self.live() => return Ok(None),
                None => {}
            },
            None => {}
        }
        if ack > self.conn.ack_sent && self.conn.ack_due.is_some_and(|at| at <= now) {
            let r = self.emit_control(now, &Message::Ack(Ack { received: ack }), limit, buf)?;
            self.conn.ack_sent = ack;
            self.conn.ack_due = None;
            return Ok(r);
        }
        if self.keep_alive_due().is_some_and(|at| now >= at) {
            let nonce = self.conn.pings.wrapping_add(1);
            let r = self.emit_control(now, &Message::Ping(Ping { nonce }), limit, buf)?;
            self.conn.pings = nonce;
            if r.is_some() && !self.ping_unanswered() {
                self.conn.ping_since = Some(now);
            }
            return Ok(r);
        }
        Ok(None)
    }

    fn send_data(
        &mut self,
        now: Instant,
        rec: Record<'_>,
        ack: Seq,
        buf: &mut [u8],
        role: &mut impl Outgoing,
    ) -> Result<Option<Transmit>, TransmitError> {
        let seq = rec.seq;
        let limit = self.send_limit();
        let written = match role.time_left(now, seq, rec.bytes) {
            // A call: its time left is rewritten, so it is encoded anew.
            Some(left) => match postcard::from_bytes::<Body<'_>>(rec.bytes) {
                Ok(mut body) => {
                    if let Body::Call(c) = &mut body {
                        c.timeout_ms = left;
                    }
                    emit(&Message::Data(wire::Data { seq, ack, body }), limit, buf)
                }
                Err(_) => Err(Emit::TooLarge),
            },
            None => emit_data_raw(seq, ack, rec.bytes, limit, buf),
        };
        let n = match written {
            Ok(n) => n,
            Err(Emit::Small(needed)) => return Err(TransmitError::BufferTooSmall { needed }),
            Err(Emit::TooLarge) => {
                // Above what this peer accepts: it learns of the loss instead, once the
                // loss is journaled (a restarted daemon must not take the gap's
                // acknowledgement for the call's).
                if !role.undeliverable(seq, rec.bytes) {
                    return Ok(None);
                }
                let gap = Message::Gap(Gap { from: seq, to: seq });
                let r = self.emit_control(now, &gap, limit, buf)?;
                self.out.advance(seq);
                self.conn.unacked_since.get_or_insert(now);
                return Ok(r);
            }
        };
        self.out.advance(seq);
        self.conn.unacked_since.get_or_insert(now);
        self.conn.ack_sent = ack;
        self.conn.ack_due = None;
        self.conn.last_sent = now;
        Ok(Some(Transmit::Frame(n)))
    }

    fn emit_control(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        limit: u32,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError> {
        match emit(msg, limit, buf) {
            Ok(n) => {
                self.conn.last_sent = now;
                Ok(Some(Transmit::Frame(n)))
            }
            Err(Emit::Small(needed)) => Err(TransmitError::BufferTooSmall { needed }),
            Err(Emit::TooLarge) => {
                self.fail(ErrorCode::Internal, "control frame above the peer's limit");
                Ok(None)
            }
        }
    }

    // ----- timers -----

    /// Connection timers, and a failed journal batch's retry.
    pub(crate) fn on_timeout(&mut self, now: Instant) {
        self.now = now;
        self.track.on_timeout(now);
        if !self.live() {
            return;
        }
        match self.conn.state {
            State::AwaitHello | State::HelloSent if now >= self.handshake_deadline() => {
                self.close(Farewell::Nothing, CloseReason::HandshakeTimeout);
            }
            State::Up if now >= self.conn.last_recv.plus_ms(self.conn.idle_ms) => {
                self.close(
                    Farewell::Goodbye(GoodbyeReason::IdleTimeout),
                    CloseReason::Local(GoodbyeReason::IdleTimeout),
                );
            }
            State::Up
                if self.conn.unacked_since.is_some_and(|since| {
                    now >= since.plus_ms(u64::from(self.config.ack_timeout_ms))
                }) || self.ping_deadline().is_some_and(|at| now >= at) =>
            {
                self.close(Farewell::Nothing, CloseReason::AckTimeout);
            }
            _ => {}
        }
    }

    /// A ping went out and nothing came back since.
    fn ping_unanswered(&self) -> bool {
        self.conn
            .ping_since
            .is_some_and(|sent| self.conn.last_recv < sent)
    }

    /// When an unanswered ping means the peer is gone.
    fn ping_deadline(&self) -> Option<Instant> {
        self.ping_unanswered()
            .then_some(self.conn.ping_since)
            .flatten()
            .map(|sent| sent.plus_ms(u64::from(self.config.ack_timeout_ms)))
    }

    /// When a ping is due; none once the clock has run out (a deadline that saturates
    /// at the end of time would be due forever, a ping each poll).
    fn keep_alive_due(&self) -> Option<Instant> {
        let at = self.conn.last_sent.plus_ms(self.conn.keep_alive_ms);
        (at > self.conn.last_sent).then_some(at)
    }

    fn handshake_deadline(&self) -> Instant {
        self.conn
            .started
            .plus_ms(u64::from(self.config.handshake_timeout_ms))
    }

    /// The link's next deadline.
    pub(crate) fn next_deadline(&self, at: &mut Earliest) {
        at.add(self.track.retry_at());
        if !self.live() {
            return;
        }
        match self.conn.state {
            State::AwaitHello | State::HelloSent => at.add(Some(self.handshake_deadline())),
            State::Up => {
                at.add(Some(self.conn.last_recv.plus_ms(self.conn.idle_ms)));
                // A held hello-ack (not yet durable) holds back every stream frame too.
                if self.conn.confirmed && !self.conn.send_hello_ack {
                    at.add(self.keep_alive_due());
                    if self.ack_value() > self.conn.ack_sent {
                        at.add(self.conn.ack_due);
                    }
                }
                at.add(
                    self.conn
                        .unacked_since
                        .map(|t| t.plus_ms(u64::from(self.config.ack_timeout_ms))),
                );
                at.add(self.ping_deadline());
            }
            State::Down => {}
        }
    }

    // ----- journal -----

    /// The next journal op of a batch: the link's (clear, trim, appends), then the
    /// role's tables, then the meta; `None` closes the batch.
    pub(crate) fn poll_journal<'m>(
        &mut self,
        mem: &'m [u8],
        tables: impl FnOnce() -> Option<JournalOp<'static>>,
        meta: JournalMeta,
    ) -> Option<JournalOp<'m>> {
        if let Some(op) = self.poll_journal_head(mem) {
            return Some(op);
        }
        if self.track.can_poll()
            && let Some(op) = tables()
        {
            self.track.opened();
            return Some(op);
        }
        if let Some(op) = self.poll_journal_meta(meta) {
            return Some(op);
        }
        self.track.close_batch();
        None
    }

    /// True if `poll_journal` has an op now (`tables`: the role's tables changed).
    pub(crate) fn journal_pending(&self, tables: bool) -> bool {
        if !self.track.can_poll() {
            return false;
        }
        let t = &self.track;
        let trim = t.trim == Mark::Dirty && self.trim_through() > t.trimmed_carried();
        let append = t
            .carried_append()
            .saturating_add(1)
            .max(self.out.first_held())
            <= self.out.last();
        t.clear == Mark::Dirty || t.meta == Mark::Dirty || trim || append || tables
    }

    /// Where the journal's stored messages end: acknowledged ones, and those evicted
    /// unacknowledged (`EvictOldest`).
    fn trim_through(&self) -> Seq {
        self.out
            .acked()
            .max(self.out.first_held().saturating_sub(1))
    }

    /// The link's journal ops, in order: clear, trim, appends. `None`: the role's next.
    pub(crate) fn poll_journal_head<'m>(&mut self, mem: &'m [u8]) -> Option<JournalOp<'m>> {
        if !self.track.can_poll() {
            return None;
        }
        if self.track.clear == Mark::Dirty {
            self.track.clear.polled();
            self.track.opened();
            return Some(JournalOp::Clear);
        }
        if self.track.trim == Mark::Dirty {
            self.track.trim.polled();
            let through = self.trim_through();
            if through > self.track.trimmed_carried() {
                self.track.carry_trim(through);
                self.track.opened();
                return Some(JournalOp::Trim { through });
            }
        }
        // Appends of messages still held; evicted ones are covered by the trim.
        let mut next = self.track.carried_append().saturating_add(1);
        next = next.max(self.out.first_held());
        if next <= self.out.last()
            && let Some(rec) = self.out.get(mem, next)
        {
            self.track.carry_append(rec.seq);
            self.track.opened();
            return Some(JournalOp::Append {
                seq: rec.seq,
                body: rec.bytes,
            });
        }
        None
    }

    /// The meta op, last in a batch.
    pub(crate) fn poll_journal_meta(
        &mut self,
        mut meta: JournalMeta,
    ) -> Option<JournalOp<'static>> {
        if !self.track.can_poll() || self.track.meta != Mark::Dirty {
            return None;
        }
        self.track.meta.polled();
        meta.session = self.session;
        meta.last_sent = self.out.last();
        meta.acked = self.out.acked();
        meta.received = self.inp.delivered();
        self.track.carry_meta(meta.received, meta.session);
        // Everything held is carried by now.
        self.track.carry_append(self.out.last());
        self.track.opened();
        Some(JournalOp::Meta(meta))
    }

    /// After the batch committed: acks and data held back may go. A confirmation that
    /// names no closed batch is refused and changes nothing.
    pub(crate) fn journal_committed(
        &mut self,
        now: Instant,
        batch: BatchId,
    ) -> Result<(), JournalError> {
        self.track.check_confirmation(batch)?;
        self.now = now;
        self.track.committed();
        self.schedule_ack();
        Ok(())
    }

    pub(crate) fn journal_failed(
        &mut self,
        now: Instant,
        batch: BatchId,
    ) -> Result<(), JournalError> {
        self.track.check_confirmation(batch)?;
        self.now = now;
        self.track.failed(now);
        Ok(())
    }
}

/// Why a frame was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Emit {
    /// Above the peer's limit.
    TooLarge,
    /// The buffer needs this many bytes.
    Small(usize),
}

/// Encodes one frame, refusing anything above `limit`.
pub(crate) fn emit(msg: &Message<'_>, limit: u32, buf: &mut [u8]) -> Result<usize, Emit> {
    let size = postcard::experimental::serialized_size(msg).map_err(|_| Emit::TooLarge)?;
    if size > limit as usize {
        return Err(Emit::TooLarge);
    }
    let needed = HEADER_LEN + size;
    if buf.len() < needed {
        return Err(Emit::Small(needed));
    }
    match wire::encode_message(msg, limit, buf) {
        Ok(n) => Ok(n),
        Err(EncodeError::BufferTooSmall { .. }) => Err(Emit::Small(needed)),
        Err(_) => Err(Emit::TooLarge),
    }
}

/// Data message tag on the wire (`Message::Data`).
const DATA_TAG: u8 = 2;

/// Writes a `Data` frame around an already-encoded body.
fn emit_data_raw(
    seq: Seq,
    ack: Seq,
    body: &[u8],
    limit: u32,
    buf: &mut [u8],
) -> Result<usize, Emit> {
    let mut head = [0u8; 21];
    head[0] = DATA_TAG;
    let mut n = 1;
    n += put_varint(seq, &mut head[n..]);
    n += put_varint(ack, &mut head[n..]);
    let size = n + body.len();
    if size > limit as usize {
        return Err(Emit::TooLarge);
    }
    let needed = HEADER_LEN + size;
    let Some(out) = buf.get_mut(..needed) else {
        return Err(Emit::Small(needed));
    };
    let prefix = u32::try_from(size).map_err(|_| Emit::TooLarge)?;
    out[..HEADER_LEN].copy_from_slice(&prefix.to_be_bytes());
    out[HEADER_LEN..HEADER_LEN + n].copy_from_slice(&head[..n]);
    out[HEADER_LEN + n..].copy_from_slice(body);
    Ok(needed)
}

/// Writes a minimal LEB128 varint (postcard's); `out` holds at least 10 bytes.
fn put_varint(mut v: u64, out: &mut [u8]) -> usize {
    let mut i = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// Skips one LEB128 varint; the bytes it took.
fn skip_varint(bytes: &[u8]) -> Option<usize> {
    bytes
        .iter()
        .take(10)
        .position(|b| b & 0x80 == 0)
        .map(|i| i + 1)
}

/// The encoded body of a `Data` payload that decoded: what follows the tag, seq and ack.
pub(crate) fn data_body(payload: &[u8]) -> Option<&[u8]> {
    let mut at = skip_varint(payload)?;
    at += skip_varint(payload.get(at..)?)?;
    at += skip_varint(payload.get(at..)?)?;
    payload.get(at..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Data, Event, Payload};

    #[test]
    fn raw_data_frames_equal_encoded_ones() {
        for (seq, ack) in [(1, 0), (127, 128), (300, 1 << 40), (MAX_SEQ, MAX_SEQ)] {
            let body = Body::Event(Event {
                name: "e",
                payload: Payload {
                    content_type: "t",
                    data: b"xyz",
                },
            });
            let mut enc = [0u8; 64];
            let body_len = postcard::to_slice(&body, &mut enc).unwrap().len();
            let mut raw = [0u8; 128];
            let n = emit_data_raw(seq, ack, &enc[..body_len], 1024, &mut raw).unwrap();
            let mut framed = [0u8; 128];
            let m = emit(&Message::Data(Data { seq, ack, body }), 1024, &mut framed).unwrap();
            assert_eq!(raw[..n], framed[..m]);
            assert_eq!(data_body(&raw[HEADER_LEN..n]), Some(&enc[..body_len]));
        }
    }
}
