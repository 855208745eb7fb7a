//! Drives one session, a node in half the runs and a daemon in the other, against a
//! hostile peer the input controls at the message level. The peer sends well-formed
//! messages whose numbers come mostly from boundary values: 0, 1, 2, `u64::MAX`,
//! `u64::MAX - 1`, `MAX_SEQ` and its neighbours, the session's own positions ±1 (last
//! sent, acknowledged, delivered) and the peer's (received, sent), `u32::MAX` and 0 for
//! limits and timeouts, gaps with `from > to`, `from = 0`, `to = u64::MAX`, call ids 0,
//! `u64::MAX` and repeated ones. In most runs it first does the hello exchange properly,
//! so the deep states are reached.
//!
//! The session's store misbehaves too: batches held, failed once or throughout an
//! outage, confirmed late, twice, or while the next batch is still being read. Frames
//! are small (2 KiB, a one-frame inbox) in many runs, so the inbox refuses frames
//! (`InboxFull`) and the driver offers them again, in order. In a quarter of the runs the
//! session is first restored from a journal built from the input: positions at the
//! extremes (`u64::MAX`, `MAX_SEQ ± 1`, acknowledged beyond what was sent), messages out
//! of order, bodies that do not decode or flow the wrong way, calls and call-window
//! entries that cannot be, a store that fails to read. `restore` must refuse it with a
//! typed `SetupError`, or give a session whose positions are the journal's, which then
//! meets the hostile peer like any other.
//!
//! Asserts, besides the checks of `common/session.rs` on every output:
//! - a message carrying a position above `MAX_SEQ`, a gap with `from = 0` or `from > to`,
//!   or data with seq 0 is refused with `Error(Malformed)` and the close; a hello or
//!   hello-ack once up, stream traffic before the hello exchange, a stream body in the
//!   wrong direction and an acknowledgement beyond `last_sent()` are refused with an error
//!   frame and the close; pings, pongs, acknowledgements of what was seen and duplicates
//!   are not;
//! - whenever a message makes the session close, the close follows a typed error frame
//!   (or nothing at all, when the peer itself sent an error or a goodbye);
//! - the session never acknowledges more than the peer sent, and never takes an
//!   acknowledgement or a resume position beyond what it transmitted (`acked()` stays
//!   within the highest seq the peer saw);
//! - no position, event or frame ever goes past `MAX_SEQ`;
//! - a session without a connection ignores frames.
//!
//! The build must have overflow checks (cargo fuzz's default): a hostile position that
//! slips through shows up as an arithmetic panic even where no assertion looks.
#![no_main]

#[macro_use]
#[path = "common/session.rs"]
mod common;

use common::{Daemon, Harness, NODE_ID, Node, Out, PLATFORM, Rng, Side};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use protocol_core::frame::MIN_MAX_FRAME;
use protocol_core::session::{
    CALL_WINDOW, CallRecord, CallState, Config, DaemonSession, Instant, JournalMeta, JournalOp,
    JournalRead, MAX_SEQ, MemJournal, NodeSession, Overflow, RECORD_HEADER, SeenCall, SessionError,
    SetupError, Slot,
};
use protocol_core::wire::{
    self, Ack, Body, Call, CallId, CallProgress, CallResult, Cancel, Capabilities,
    CapabilityDescriptor, Data, ErrorCode, ErrorFrame, Event, Gap, Goodbye, GoodbyeReason, Hello,
    HelloAck, Message, Outcome, Payload, Ping, Register, RejectCode, Resume, Seq, SessionId, Stage,
    VersionRange,
};

const MAX_STEPS: usize = 400;
/// The session id a hostile daemon hands out.
const PEER_SESSION: SessionId = [7; 16];
static BLOB: [u8; 5000] = [0x5A; 5000];

const CAPS: [CapabilityDescriptor<'static>; 1] = [CapabilityDescriptor {
    name: "echo",
    version: 1,
    input: "application/octet-stream",
    output: "application/octet-stream",
    needs_approval: false,
}];

/// What the hostile peer knows.
#[derive(Debug, Default)]
struct Peer {
    /// The session id it holds: learnt from a hello-ack (peer as node), or handed out
    /// (peer as daemon).
    session: Option<SessionId>,
    /// Highest seq of the session's stream seen in a data or gap frame, since its
    /// stream last started over.
    seen_high: Seq,
    /// The session's stream received in order.
    recv: Seq,
    /// Highest seq in range the peer put in its own stream since it last started over.
    sent_high: Seq,
    /// Call ids it received (peer as node) or used (peer as daemon).
    calls: Vec<CallId>,
    /// Resets the session reported so far.
    resets: u32,
    /// Times the peer lost its memory (as a daemon it then hands out a new session id).
    lost: u8,
    /// Peer as daemon: the session the node's last hello named (only a durable one).
    named: Option<SessionId>,
}

impl Peer {
    /// The session id a hostile daemon hands out now.
    fn daemon_session(&self) -> SessionId {
        [PEER_SESSION[0].wrapping_add(self.lost); 16]
    }
}

/// What must happen to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// An error frame with a code of this kind, then the close.
    Refuse(Code),
    Accept,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Malformed,
    Unexpected,
    Unauthorized,
    Version,
}

fn code_matches(code: ErrorCode, want: Code) -> bool {
    match want {
        Code::Malformed => code == ErrorCode::Malformed,
        Code::Unexpected => code == ErrorCode::UnexpectedMessage,
        Code::Unauthorized => code == ErrorCode::Unauthorized,
        Code::Version => matches!(code, ErrorCode::VersionMismatch { .. }),
    }
}

/// Everything in a message that names a position of a stream.
fn positions_valid(msg: &Message<'_>) -> bool {
    match msg {
        Message::Hello(h) => h.resume.is_none_or(|r| r.received <= MAX_SEQ),
        Message::HelloAck(a) => a.received <= MAX_SEQ,
        Message::Data(d) => d.seq >= 1 && d.seq <= MAX_SEQ && d.ack <= MAX_SEQ,
        Message::Ack(a) => a.received <= MAX_SEQ,
        Message::Gap(g) => g.from >= 1 && g.from <= g.to && g.to <= MAX_SEQ,
        _ => true,
    }
}

fn verdict<S: Side>(msg: &Message<'_>, s: &S, peer: &Peer) -> Verdict {
    if matches!(msg, Message::Error(_) | Message::Goodbye(_)) {
        return Verdict::Unknown;
    }
    if !positions_valid(msg) {
        return Verdict::Refuse(Code::Malformed);
    }
    let up = s.is_connected();
    match msg {
        Message::Hello(_) | Message::HelloAck(_) if up => Verdict::Refuse(Code::Unexpected),
        Message::Hello(_) if S::NODE => Verdict::Refuse(Code::Unexpected),
        Message::HelloAck(_) if !S::NODE => Verdict::Refuse(Code::Unexpected),
        Message::Hello(h) => {
            if !h.versions.contains(1) || h.versions.is_empty() {
                Verdict::Refuse(Code::Version)
            } else if h.node_id != NODE_ID {
                Verdict::Refuse(Code::Unauthorized)
            } else if h.max_frame < MIN_MAX_FRAME {
                Verdict::Refuse(Code::Unexpected)
            } else {
                Verdict::Unknown
            }
        }
        Message::HelloAck(a) => {
            if a.version != 1 || a.max_frame < MIN_MAX_FRAME {
                Verdict::Refuse(Code::Unexpected)
            } else {
                Verdict::Unknown
            }
        }
        Message::Data(_)
        | Message::Ack(_)
        | Message::Gap(_)
        | Message::Ping(_)
        | Message::Pong(_)
            if !up =>
        {
            Verdict::Refuse(Code::Unexpected)
        }
        Message::Ping(_) | Message::Pong(_) => Verdict::Accept,
        Message::Ack(a) if a.received > s.last_sent() => Verdict::Refuse(Code::Unexpected),
        Message::Ack(a) if a.received <= peer.seen_high => Verdict::Accept,
        Message::Data(d) => {
            let ours = matches!(d.body, Body::Call(_) | Body::Cancel(_));
            if ours != S::NODE || d.ack > s.last_sent() {
                Verdict::Refuse(Code::Unexpected)
            } else if d.seq <= s.delivered() && d.ack <= peer.seen_high {
                Verdict::Accept
            } else {
                Verdict::Unknown
            }
        }
        Message::Gap(g) if g.to <= s.delivered() => Verdict::Accept,
        _ => Verdict::Unknown,
    }
}

/// The session's role-specific side: its application's commands.
trait Under: Side {
    fn command(h: &mut Harness<Self>, u: &mut Unstructured<'_>, now: Instant) -> Result<()>;
    fn session_id(&self) -> Option<SessionId>;
}

impl Under for Node {
    fn command(h: &mut Harness<Self>, u: &mut Unstructured<'_>, _: Instant) -> Result<()> {
        let len = *u.choose(&[8usize, 0, 200, 1_000, 2_100, 4_500])?;
        let r = match u.int_in_range(0u8..=3)? {
            0 => h.s.send_event("reading", payload(len)),
            1 => h.s.register(Register {
                capabilities: Capabilities::new(&CAPS).expect("one fits"),
            }),
            2 | 3 => {
                let calls = &h.app.calls;
                let id = if calls.is_empty() || u.ratio(1, 6)? {
                    pick_call_id(u, &[])?
                } else {
                    calls[u.choose_index(calls.len())?]
                };
                if u.arbitrary()? {
                    h.s.progress(id, Stage::Running, "")
                } else {
                    h.s.complete(id, Outcome::Success(payload(len)))
                }
            }
            _ => unreachable!(),
        };
        check_queued(h, r);
        Ok(())
    }

    fn session_id(&self) -> Option<SessionId> {
        NodeSession::session_id(self)
    }
}

impl Under for Daemon {
    fn command(h: &mut Harness<Self>, u: &mut Unstructured<'_>, now: Instant) -> Result<()> {
        if u.ratio(1, 4)? {
            let id = pick_call_id(u, &[])?;
            let r = h.s.cancel(id);
            check_queued(h, r);
            return Ok(());
        }
        let len = *u.choose(&[8usize, 0, 200, 1_000, 2_100, 4_500])?;
        let timeout = pick_u32(u, 5_000)?;
        let before = h.s.last_sent();
        match h.s.call(now, "echo", payload(len), timeout) {
            Ok(_) => assert_eq!(h.s.last_sent(), before + 1),
            Err(SessionError::NoStorage) => assert!(!h.s.has_storage()),
            Err(_) => assert_eq!(h.s.last_sent(), before),
        }
        Ok(())
    }

    fn session_id(&self) -> Option<SessionId> {
        Some(DaemonSession::session_id(self))
    }
}

fn check_queued<S: Side>(h: &Harness<S>, r: core::result::Result<Seq, SessionError>) {
    match r {
        Ok(seq) => assert!(seq == h.s.last_sent() && seq <= MAX_SEQ, "queued as {seq}"),
        Err(SessionError::NoStorage) => assert!(!h.s.has_storage()),
        Err(_) => {}
    }
}

fn payload(len: usize) -> Payload<'static> {
    Payload {
        content_type: "application/octet-stream",
        data: &BLOB[..len.min(BLOB.len())],
    }
}

fn pick_u32(u: &mut Unstructured<'_>, legit: u32) -> Result<u32> {
    if u.ratio(1, 10)? {
        return u.arbitrary();
    }
    Ok(*u.choose(&[
        legit,
        0,
        1,
        2,
        255,
        256,
        257,
        999,
        1_000,
        u32::MAX,
        u32::MAX - 1,
    ])?)
}

fn pick_call_id(u: &mut Unstructured<'_>, known: &[CallId]) -> Result<CallId> {
    if !known.is_empty() && u.arbitrary()? {
        return Ok(known[u.choose_index(known.len())?]);
    }
    Ok(*u.choose(&[1, 0, 2, u64::MAX, u64::MAX - 1, MAX_SEQ, MAX_SEQ + 1])?)
}

/// A position: mostly a boundary value or a neighbour of one both sides stand at.
fn pick_seq<S: Side>(u: &mut Unstructured<'_>, s: &S, peer: &Peer) -> Result<Seq> {
    if u.ratio(1, 12)? {
        return u.arbitrary();
    }
    let base = *u.choose(&[
        s.delivered(),
        s.last_sent(),
        s.acked(),
        peer.recv,
        peer.seen_high,
        peer.sent_high,
        0,
        1,
        2,
        u64::MAX,
        u64::MAX - 1,
        MAX_SEQ,
    ])?;
    Ok(match u.int_in_range(0u8..=3)? {
        0 => base.wrapping_sub(1),
        1 => base.wrapping_add(1),
        _ => base,
    })
}

fn body<'a, S: Side>(
    u: &mut Unstructured<'_>,
    peer: &Peer,
    direction_ok: bool,
) -> Result<Body<'a>> {
    // A daemon's bodies go to a node; a node's to a daemon.
    let as_daemon = S::NODE == direction_ok;
    let call_id = pick_call_id(u, &peer.calls)?;
    let len = *u.choose(&[4usize, 0, 100, 2_000, 4_100])?;
    Ok(if as_daemon {
        if u.ratio(3, 4)? {
            Body::Call(Call {
                call_id,
                capability: "echo",
                timeout_ms: pick_u32(u, 5_000)?,
                input: payload(len),
            })
        } else {
            Body::Cancel(Cancel { call_id })
        }
    } else {
        match u.int_in_range(0u8..=3)? {
            0 => Body::Event(Event {
                name: "reading",
                payload: payload(len),
            }),
            1 => Body::Register(Register {
                capabilities: Capabilities::new(&CAPS).expect("one fits"),
            }),
            2 => Body::Progress(CallProgress {
                call_id,
                stage: Stage::Running,
                detail: "",
            }),
            _ => Body::Result(CallResult {
                call_id,
                outcome: if u.arbitrary()? {
                    Outcome::Success(payload(len))
                } else {
                    Outcome::Rejected {
                        code: RejectCode::Busy,
                        reason: "",
                    }
                },
            }),
        }
    })
}

/// The greeting a well-behaved peer sends: a hello-ack to a node, a hello to a daemon.
fn greeting<S: Under>(s: &S, peer: &Peer, max_frame: u32) -> Message<'static> {
    if S::NODE {
        let session = peer.daemon_session();
        // A node that holds the session but has not journaled it yet does not name it,
        // and a daemon resumes only what was named.
        let resumed = peer.named == Some(session) && s.session_id() == Some(session);
        Message::HelloAck(HelloAck {
            version: 1,
            max_frame,
            idle_timeout_ms: 30_000,
            session,
            resumed,
            received: if resumed { peer.recv } else { 0 },
        })
    } else {
        Message::Hello(Hello {
            versions: VersionRange::new(1, 1),
            max_frame,
            idle_timeout_ms: 30_000,
            node_id: NODE_ID,
            platform: PLATFORM,
            resume: peer.session.map(|session| Resume {
                session,
                received: peer.recv,
            }),
        })
    }
}

/// A message with hostile numbers.
fn hostile<'a, S: Under>(u: &mut Unstructured<'_>, s: &S, peer: &Peer) -> Result<Message<'a>> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => Message::Hello(Hello {
            versions: *u.choose(&[
                VersionRange::new(1, 1),
                VersionRange::new(0, 0),
                VersionRange::new(2, 1),
                VersionRange::new(0, u16::MAX),
                VersionRange::new(u16::MAX, u16::MAX),
            ])?,
            max_frame: pick_u32(u, 4096)?,
            idle_timeout_ms: pick_u32(u, 30_000)?,
            node_id: if u.ratio(7, 8)? { NODE_ID } else { "intruder" },
            platform: "x",
            resume: if u.arbitrary()? {
                Some(Resume {
                    session: if u.arbitrary()? {
                        s.session_id().unwrap_or_default()
                    } else {
                        [0; 16]
                    },
                    received: pick_seq(u, s, peer)?,
                })
            } else {
                None
            },
        }),
        1 => Message::HelloAck(HelloAck {
            version: *u.choose(&[1, 0, 2, u16::MAX])?,
            max_frame: pick_u32(u, 4096)?,
            idle_timeout_ms: pick_u32(u, 30_000)?,
            session: *u.choose(&[peer.daemon_session(), [0; 16], [0xFF; 16]])?,
            resumed: u.arbitrary()?,
            received: pick_seq(u, s, peer)?,
        }),
        2..=4 => {
            let seq = pick_seq(u, s, peer)?;
            let ack = pick_seq(u, s, peer)?;
            let direction_ok = u.ratio(7, 8)?;
            Message::Data(Data {
                seq,
                ack,
                body: body::<S>(u, peer, direction_ok)?,
            })
        }
        5 => Message::Ack(Ack {
            received: pick_seq(u, s, peer)?,
        }),
        6 | 7 => Message::Gap(Gap {
            from: pick_seq(u, s, peer)?,
            to: pick_seq(u, s, peer)?,
        }),
        8 => {
            let p = Ping {
                nonce: u.arbitrary()?,
            };
            if u.arbitrary()? {
                Message::Ping(p)
            } else {
                Message::Pong(p)
            }
        }
        _ => {
            if u.arbitrary()? {
                Message::Error(ErrorFrame {
                    code: *u.choose(&[
                        ErrorCode::Malformed,
                        ErrorCode::Internal,
                        ErrorCode::FrameTooLarge {
                            len: u32::MAX,
                            max: 0,
                        },
                        ErrorCode::UnknownMessage { tag: u32::MAX },
                    ])?,
                    reason: "",
                })
            } else {
                Message::Goodbye(Goodbye {
                    reason: GoodbyeReason::Shutdown,
                    detail: "",
                })
            }
        }
    })
}

struct Run<S: Under> {
    h: Harness<S>,
    peer: Peer,
    now: u64,
}

impl<S: Under> Run<S> {
    fn t(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    /// Reads what the session sent, as the peer would.
    fn observe(&mut self, outs: &[Out]) {
        if self.h.app.resets != self.peer.resets {
            // The session's stream and the peer's start over.
            self.peer.resets = self.h.app.resets;
            self.peer.seen_high = 0;
            self.peer.recv = 0;
            self.peer.sent_high = 0;
        }
        for o in outs {
            let Out::Frame(f) = o else { continue };
            let msg = wire::decode_message(f).expect("checked by the harness");
            let ack = match &msg {
                Message::Hello(h) => h.resume.map(|r| r.received),
                Message::HelloAck(a) => Some(a.received),
                Message::Data(d) => Some(d.ack),
                Message::Ack(a) => Some(a.received),
                _ => None,
            };
            if let Some(ack) = ack {
                assert!(
                    ack <= self.peer.sent_high && ack <= self.h.s.delivered(),
                    "acknowledges {ack}, the peer sent {} and {} were delivered",
                    self.peer.sent_high,
                    self.h.s.delivered()
                );
            }
            match msg {
                Message::Hello(h) => self.peer.named = h.resume.map(|r| r.session),
                Message::HelloAck(a) => {
                    self.peer.session = Some(a.session);
                    if !a.resumed {
                        self.peer.recv = 0;
                    }
                }
                Message::Data(d) => {
                    self.peer.seen_high = self.peer.seen_high.max(d.seq);
                    if d.seq == self.peer.recv + 1 {
                        self.peer.recv = d.seq;
                    }
                    if let Body::Call(c) = d.body {
                        self.peer.calls.push(c.call_id);
                    }
                }
                Message::Gap(g) => {
                    self.peer.seen_high = self.peer.seen_high.max(g.to);
                    if g.from <= self.peer.recv + 1 {
                        self.peer.recv = self.peer.recv.max(g.to);
                    }
                }
                _ => {}
            }
        }
        assert!(
            self.h.s.acked() <= self.peer.seen_high,
            "acked {} beyond the highest seq transmitted {}",
            self.h.s.acked(),
            self.peer.seen_high
        );
    }

    fn settle(&mut self) {
        let now = self.t();
        let mut outs = self.h.drain(now);
        outs.extend(self.h.settle_timers(now));
        self.observe(&outs);
    }

    /// Sends one message and checks what the session made of it.
    fn send(&mut self, msg: &Message<'_>, expect: Verdict) {
        let now = self.t();
        let mut buf = vec![0u8; 8192];
        let n = wire::encode_payload(msg, &mut buf).expect("a well-formed message encodes");
        let payload = &buf[..n];
        let live = self.h.s.has_connection();
        let expect = match (expect, verdict(msg, &self.h.s, &self.peer)) {
            (Verdict::Unknown, v) => v,
            (e, _) => e,
        };
        if let Message::Data(d) = msg
            && positions_valid(msg)
        {
            self.peer.sent_high = self.peer.sent_high.max(d.seq);
        }
        if let Message::Gap(g) = msg
            && positions_valid(msg)
        {
            self.peer.sent_high = self.peer.sent_high.max(g.to);
        }
        trace!("peer sends {msg:?}, expecting {expect:?}");
        // Behind a frame the inbox refused, this one waits its turn: what the session
        // answers belongs to the frames before it as much as to this one.
        let queued = !self.h.backlog.is_empty();
        self.h.feed(now, payload);
        let outs = self.h.drain(now);
        if !live {
            assert!(outs.is_empty(), "a session without a connection answered");
            return self.observe(&outs);
        }
        if queued {
            return self.observe(&outs);
        }
        if self.h.backlog.front().is_some_and(|f| f[..] == *payload) {
            assert!(
                !matches!(expect, Verdict::Refuse(_)),
                "{msg:?} met a full inbox, not the refusal its rule names"
            );
        }
        let closed = matches!(outs.last(), Some(Out::Close));
        let error = |o: &Out| match o {
            Out::Frame(f) => match wire::decode_message(f) {
                Ok(Message::Error(e)) => Some(e.code),
                _ => None,
            },
            Out::Close => None,
        };
        if closed {
            if matches!(msg, Message::Error(_) | Message::Goodbye(_)) {
                assert_eq!(
                    outs.len(),
                    1,
                    "the peer closed: nothing to send but the close"
                );
            } else {
                assert_eq!(
                    outs.len(),
                    2,
                    "a refusal is an error frame and the close: {outs:?}"
                );
                assert!(error(&outs[0]).is_some(), "closed without an error frame");
            }
        }
        let too_large = n > self.h.s.config().max_frame as usize;
        match expect {
            Verdict::Refuse(want) => {
                assert!(closed, "{msg:?} was not refused");
                let code = error(&outs[0]).expect("error frame");
                if !too_large {
                    assert!(
                        code_matches(code, want),
                        "{msg:?} refused with {code:?}, not {want:?}"
                    );
                }
            }
            Verdict::Accept if !too_large => assert!(!closed, "{msg:?} was refused"),
            _ => {}
        }
        self.observe(&outs);
    }

    /// Connects and does the hello exchange properly.
    fn greet(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let now = self.t();
        self.h.connected(now);
        self.settle();
        if u.ratio(1, 8)? {
            // Leave the hello exchange to the hostile messages.
            return Ok(());
        }
        let max_frame = *u.choose(&[4096, MIN_MAX_FRAME, 1024, u32::MAX])?;
        let hello = greeting(&self.h.s, &self.peer, max_frame);
        self.send(&hello, Verdict::Accept);
        if !S::NODE {
            // The daemon answers once its session id is durable; then the node proves
            // it holds the id with stream traffic.
            self.h.hold = false;
            self.settle();
            let ack = Message::Ack(Ack {
                received: self.peer.recv,
            });
            self.send(&ack, Verdict::Accept);
        }
        Ok(())
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let now = self.t();
        let op = u.int_in_range(0u8..=19)?;
        trace!("step {op} at {}", self.now);
        match op {
            0..=6 => {
                let msg = hostile(u, &self.h.s, &self.peer)?;
                self.send(&msg, Verdict::Unknown);
            }
            // Well-behaved stream traffic, so positions move.
            7 | 8 => {
                let seq = self.h.s.delivered() + 1;
                let msg = Message::Data(Data {
                    seq,
                    ack: self.peer.recv,
                    body: body::<S>(u, &self.peer, true)?,
                });
                self.send(&msg, Verdict::Unknown);
            }
            9 => {
                let msg = Message::Ack(Ack {
                    received: self.peer.recv,
                });
                self.send(&msg, Verdict::Unknown);
            }
            10 => {
                let from = self.h.s.delivered() + 1;
                let to = from.saturating_add(u.int_in_range(0..=3)?);
                self.send(&Message::Gap(Gap { from, to }), Verdict::Unknown);
            }
            11 | 12 => S::command(&mut self.h, u, now)?,
            13 => self.greet(u)?,
            14 => {
                self.h.disconnected(now);
            }
            15 => {
                self.now = match u.int_in_range(0u8..=3)? {
                    0 => self.now.saturating_add(u64::from(u.arbitrary::<u16>()?)),
                    1 => self.now.saturating_add(u64::from(u.arbitrary::<u32>()?)),
                    2 => self.now.saturating_sub(u64::from(u.arbitrary::<u16>()?)),
                    _ => self
                        .h
                        .s
                        .deadline()
                        .map_or(self.now, |at| self.now.max(at.as_millis())),
                };
            }
            16 => self.h.timeout(now),
            17 => store_op(&mut self.h, u, now)?,
            18 => {
                if u.arbitrary()? {
                    let held = self.h.s.unacked();
                    if self.h.s.reclaim().is_some() {
                        assert_eq!(held, 0, "storage reclaimed while holding messages");
                    }
                } else if !self.h.s.has_storage() {
                    let buf = self.h.storage();
                    assert!(self.h.s.lend(buf).is_ok());
                }
            }
            _ => {
                // The peer lost its memory: as a node it no longer names the session,
                // as a daemon it hands out a new one.
                self.peer.session = None;
                self.peer.recv = 0;
                self.peer.lost = self.peer.lost.wrapping_add(1);
            }
        }
        self.settle();
        Ok(())
    }
}

/// The store: batches held, confirmed or failed (a few, or throughout an outage), and
/// confirmations that name no closed batch: late, twice, or while the next batch is
/// still being read (early).
fn store_op<S: Side>(h: &mut Harness<S>, u: &mut Unstructured<'_>, now: Instant) -> Result<()> {
    match u.int_in_range(0u8..=4)? {
        0 | 1 => {
            h.hold = u.arbitrary()?;
            h.fail_next = u.int_in_range(0..=1)?;
            if u.arbitrary()? {
                h.confirm(now);
            }
        }
        2 => {
            let len = *u.choose(&[0u64, 40, 300, 6_000, 60_000])?;
            h.outage_until = Some(now.as_millis().saturating_add(len));
        }
        3 => {
            let pick = u.arbitrary()?;
            h.stale_confirmation(now, pick, u.arbitrary()?);
        }
        _ => {
            h.open_batch(u.int_in_range(1..=3)?);
            let pick = u.arbitrary()?;
            h.stale_confirmation(now, pick, u.arbitrary()?);
        }
    }
    Ok(())
}

fn config(u: &mut Unstructured<'_>) -> Result<Config> {
    let replay = *u.choose(&[3_000, RECORD_HEADER + 44, 300, 20_000])?;
    // Small frames and a one-frame inbox (a microcontroller's limits) in many runs.
    let max_frame = *u.choose(&[2048, 4096, MIN_MAX_FRAME, 2048])?;
    let mut c = Config::server(replay).with_max_frame(max_frame);
    c.durable = !u.ratio(1, 4)?;
    if u.ratio(1, 4)? {
        c.overflow = Overflow::EvictOldest;
    }
    c.idle_timeout_ms = *u.choose(&[30_000, 0, u32::MAX])?;
    c.keep_alive_ms = *u.choose(&[5_000, 0, u32::MAX])?;
    c.handshake_timeout_ms = *u.choose(&[10_000, 0, u32::MAX])?;
    c.ack_every = *u.choose(&[2, 0, u32::MAX])?;
    c.ack_timeout_ms = *u.choose(&[5_000, 0, u32::MAX])?;
    Ok(c)
}

/// `sent_before`: the last seq of the session's stream before a restart (0 for a new
/// session).
fn run<S: Under>(h: Harness<S>, sent_before: Seq, u: &mut Unstructured<'_>) -> Result<()> {
    // A restored session has sent and received before: what went out before the
    // restart is unknown, so the peer may have seen all of it (and acknowledges what the
    // journal says it did), and it sent what the journal says was delivered. Answers the
    // restore itself queued it has yet to see.
    let peer = Peer {
        seen_high: sent_before,
        recv: h.s.acked(),
        sent_high: h.s.delivered(),
        ..Peer::default()
    };
    let mut r = Run {
        h,
        peer,
        now: 1_000,
    };
    r.h.hold = u.ratio(1, 8)?;
    r.settle();
    // Most runs start with a proper hello exchange.
    if !u.ratio(1, 8)? {
        r.greet(u)?;
    }
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        r.step(u)?;
    }
    Ok(())
}

fn start(u: &mut Unstructured<'_>) -> Result<()> {
    let node_role: bool = u.arbitrary()?;
    let c = config(u)?;
    let storage = (!u.ratio(1, 8)?).then(|| vec![0u8; c.storage_len()]);
    let seed: u64 = u.arbitrary()?;
    if u.ratio(1, 4)? {
        let journal = Journal::build(u, node_role)?;
        return if node_role {
            let r = NodeSession::restore(c, NODE_ID, PLATFORM, storage.clone(), &journal);
            restored(r, journal, storage.is_some(), u)
        } else {
            let r = DaemonSession::restore(c, NODE_ID, storage.clone(), &journal, &mut Rng(seed));
            restored(r, journal, storage.is_some(), u)
        };
    }
    if node_role {
        let s = NodeSession::new(c, NODE_ID, PLATFORM, storage).expect("config");
        run(Harness::new(s), 0, u)
    } else {
        let mut s = DaemonSession::new(c, NODE_ID, &mut Rng(seed)).expect("config");
        if let Some(buf) = storage {
            s.lend(buf).expect("lend");
        }
        run(Harness::new(s), 0, u)
    }
}

/// A journal as a store hands it back, built from the input: meta, messages, calls and
/// call-window entries, in the order stored (which need not be seq order), and a store
/// that may fail to read.
#[derive(Debug, Default)]
struct Journal {
    meta: Option<JournalMeta>,
    messages: Vec<(Seq, Vec<u8>)>,
    calls: Vec<CallRecord>,
    seen: Vec<(u8, SeenCall)>,
    /// Reading this part fails: 0 meta, 1 messages, 2 calls, 3 seen.
    unreadable: Option<u8>,
}

/// A store that fails to read.
#[derive(Debug)]
struct ReadFailed;

impl JournalRead for Journal {
    type Error = ReadFailed;

    fn meta(&self) -> core::result::Result<Option<JournalMeta>, ReadFailed> {
        match self.unreadable {
            Some(0) => Err(ReadFailed),
            _ => Ok(self.meta),
        }
    }
    fn messages(&self, visit: &mut dyn FnMut(Seq, &[u8])) -> core::result::Result<(), ReadFailed> {
        for (seq, body) in &self.messages {
            visit(*seq, body);
        }
        match self.unreadable {
            Some(1) => Err(ReadFailed),
            _ => Ok(()),
        }
    }
    fn calls(&self, visit: &mut dyn FnMut(&CallRecord)) -> core::result::Result<(), ReadFailed> {
        for rec in &self.calls {
            visit(rec);
        }
        match self.unreadable {
            Some(2) => Err(ReadFailed),
            _ => Ok(()),
        }
    }
    fn seen(&self, visit: &mut dyn FnMut(u8, &SeenCall)) -> core::result::Result<(), ReadFailed> {
        for (slot, call) in &self.seen {
            visit(*slot, call);
        }
        match self.unreadable {
            Some(3) => Err(ReadFailed),
            _ => Ok(()),
        }
    }
}

/// A position a corrupt journal may hold: a boundary value, or a neighbour of one.
fn extreme(u: &mut Unstructured<'_>, near: Seq) -> Result<Seq> {
    if u.ratio(1, 10)? {
        return u.arbitrary();
    }
    let base = *u.choose(&[near, 0, 1, 2, 5, MAX_SEQ, u64::MAX, u64::MAX - 1])?;
    Ok(match u.int_in_range(0u8..=3)? {
        0 => base.wrapping_sub(1),
        1 => base.wrapping_add(1),
        _ => base,
    })
}

/// The encoded body of a stream message: of either direction, large, empty, or bytes
/// that need not decode.
fn stored_body(u: &mut Unstructured<'_>, node: bool) -> Result<Vec<u8>> {
    let peer = Peer::default();
    Ok(match u.int_in_range(0u8..=5)? {
        // The journal's own direction, or the other one.
        0..=2 => {
            let own = u.int_in_range(0u8..=2)? > 0;
            // What a peer sends a daemon is what a node's stream holds.
            let body = if own == node {
                body::<Daemon>(u, &peer, true)?
            } else {
                body::<Node>(u, &peer, true)?
            };
            body_bytes(body)
        }
        3 => Vec::new(),
        _ => {
            let len = usize::from(u.int_in_range(0u8..=40)?);
            u.bytes(len)?.to_vec()
        }
    })
}

/// A body as a journal stores it: the bytes a data frame carries after its tag, seq and
/// ack (three varints).
fn body_bytes(body: Body<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let msg = Message::Data(Data {
        seq: 1,
        ack: 0,
        body,
    });
    let n = wire::encode_payload(&msg, &mut buf).expect("a body encodes");
    let mut at = 0;
    for _ in 0..3 {
        while buf[at] & 0x80 != 0 {
            at += 1;
        }
        at += 1;
    }
    buf[at..n].to_vec()
}

impl Journal {
    fn build(u: &mut Unstructured<'_>, node: bool) -> Result<Self> {
        let last_sent = extreme(u, 3)?;
        let acked = match u.int_in_range(0u8..=3)? {
            0 => last_sent,
            1 => last_sent.saturating_sub(u.int_in_range(0..=4)?),
            2 => last_sent.wrapping_add(1),
            _ => extreme(u, last_sent)?,
        };
        let meta = JournalMeta {
            session: if u.ratio(3, 4)? {
                Some(*u.choose(&[PEER_SESSION, [0; 16], [0xFF; 16]])?)
            } else {
                None
            },
            established: u.arbitrary()?,
            last_sent,
            acked,
            received: extreme(u, 2)?,
            next_call_id: pick_call_id(u, &[])?,
            id_state: u.arbitrary()?,
        };
        let mut j = Journal {
            meta: (!u.ratio(1, 16)?).then_some(meta),
            unreadable: if u.ratio(1, 16)? {
                Some(u.int_in_range(0..=3)?)
            } else {
                None
            },
            ..Journal::default()
        };
        let n = u.int_in_range(0u64..=6)?;
        let mut seq = match u.int_in_range(0u8..=3)? {
            0 | 1 => acked.wrapping_add(1),
            2 => last_sent.wrapping_sub(n).wrapping_add(1),
            _ => extreme(u, acked)?,
        };
        for _ in 0..n {
            let body = stored_body(u, node)?;
            j.messages.push((seq, body));
            seq = if u.ratio(7, 8)? {
                seq.wrapping_add(1)
            } else {
                extreme(u, seq)?
            };
        }
        for _ in 0..u.int_in_range(0..=5)? {
            let id = pick_call_id(u, &j.calls.iter().map(|c| c.id).collect::<Vec<_>>())?;
            if node {
                let slot = if u.arbitrary()? {
                    Slot::Active {
                        stage: *u.choose(&[
                            None,
                            Some(Stage::Running),
                            Some(Stage::AwaitingApproval),
                        ])?,
                        deadline: Instant::from_millis(u.arbitrary()?),
                    }
                } else {
                    Slot::Done {
                        result_seq: extreme(u, last_sent)?,
                    }
                };
                let at = u.int_in_range(0u8..=40)?;
                j.seen.push((
                    at,
                    SeenCall {
                        id,
                        slot,
                        age: u.arbitrary()?,
                    },
                ));
            } else {
                j.calls.push(CallRecord {
                    id,
                    seq: extreme(u, last_sent)?,
                    deadline: Instant::from_millis(u.arbitrary()?),
                    timeout_ms: pick_u32(u, 5_000)?,
                    state: *u.choose(&[
                        CallState::Queued,
                        CallState::Dispatched,
                        CallState::AwaitingApproval,
                        CallState::Running,
                        CallState::Succeeded,
                        CallState::Failed,
                        CallState::TimedOut,
                        CallState::Rejected(RejectCode::Busy),
                        CallState::Cancelled,
                        CallState::Lost,
                        CallState::Undeliverable,
                    ])?,
                    unreported: u.arbitrary()?,
                    cancel_requested: u.arbitrary()?,
                });
            }
        }
        Ok(j)
    }

    /// The same contents in the reference journal, for the commits that follow.
    fn to_mem(&self) -> MemJournal {
        let mut m = MemJournal::new();
        for (seq, body) in &self.messages {
            m.apply(&JournalOp::Append { seq: *seq, body });
        }
        for rec in &self.calls {
            m.apply(&JournalOp::PutCall(*rec));
        }
        for (slot, call) in &self.seen {
            m.apply(&JournalOp::PutSeen {
                slot: *slot,
                call: *call,
            });
        }
        if let Some(meta) = self.meta {
            m.apply(&JournalOp::Meta(meta));
        }
        m
    }
}

/// What `restore` made of a journal built from the input: a typed refusal, or a session
/// standing where the journal says, which then meets the hostile peer.
fn restored<S: Under>(
    r: core::result::Result<S, SetupError>,
    journal: Journal,
    lent: bool,
    u: &mut Unstructured<'_>,
) -> Result<()> {
    let s = match r {
        Ok(s) => s,
        Err(SetupError::JournalInconsistent { why }) => {
            trace!("journal refused: {why}");
            return Ok(());
        }
        Err(SetupError::StorageNeeded) => {
            assert!(!lent, "storage was lent, yet restore asked for it");
            return Ok(());
        }
        Err(SetupError::JournalRead) => {
            assert!(
                journal.unreadable.is_some(),
                "a readable journal failed to read"
            );
            return Ok(());
        }
        Err(e) => panic!("restore refused a journal with {e:?}"),
    };
    if let Some(part) = journal.unreadable {
        // Only a part this role never reads (or none at all, without a meta) may fail.
        let unread = if S::NODE { 2 } else { 3 };
        assert!(
            part != 0 && (journal.meta.is_none() || part == unread),
            "restored although reading part {part} of the journal failed"
        );
    }
    match journal.meta {
        Some(meta) => {
            assert_eq!(s.session_id(), meta.session, "restored session id");
            assert_eq!(s.acked(), meta.acked, "restored acknowledged position");
            assert_eq!(s.delivered(), meta.received, "restored delivered position");
            // A node answers the calls it was running: those answers follow the stream.
            if S::NODE {
                assert!(s.last_sent() >= meta.last_sent, "restored last seq");
            } else {
                assert_eq!(s.last_sent(), meta.last_sent, "restored last seq");
            }
        }
        None => assert_eq!(
            (s.last_sent(), s.delivered()),
            (0, 0),
            "a journal never written gives a new session"
        ),
    }
    assert!(
        s.unacked() <= journal.messages.len() + CALL_WINDOW,
        "restored more messages than the journal holds"
    );
    trace!("restored from a journal built from the input: {s:?}");
    let mut h = Harness::new(s);
    h.adopt(journal.to_mem());
    h.check_positions();
    run(h, journal.meta.map_or(0, |m| m.last_sent), u)
}

fuzz_target!(|data: &[u8]| {
    common::require_overflow_checks();
    let _ = start(&mut Unstructured::new(data));
});
