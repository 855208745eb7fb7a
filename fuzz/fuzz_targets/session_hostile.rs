//! Drives one session, a node in half the runs and a daemon in the other, against a
//! hostile peer the input controls at the message level. The peer sends well-formed
//! messages whose numbers come mostly from boundary values: 0, 1, 2, `u64::MAX`,
//! `u64::MAX - 1`, `MAX_SEQ` and its neighbours, the session's own positions ±1 (last
//! sent, acknowledged, delivered) and the peer's (received, sent), `u32::MAX` and 0 for
//! limits and timeouts, gaps with `from > to`, `from = 0`, `to = u64::MAX`, call ids 0,
//! `u64::MAX` and repeated ones. In most runs it first does the hello exchange properly,
//! so the deep states are reached.
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
    Config, DaemonSession, Instant, MAX_SEQ, NodeSession, Overflow, RECORD_HEADER, SessionError,
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
        let resumed = s.session_id() == Some(session);
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
        self.h.feed(now, payload);
        let outs = self.h.drain(now);
        if !live {
            assert!(outs.is_empty(), "a session without a connection answered");
            return self.observe(&outs);
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
            16 => self.h.s.timeout(now),
            17 => {
                self.h.hold = u.arbitrary()?;
                self.h.fail_next = u.int_in_range(0..=1)?;
                if u.arbitrary()? {
                    self.h.confirm(now);
                }
            }
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

fn config(u: &mut Unstructured<'_>) -> Result<Config> {
    let replay = *u.choose(&[3_000, RECORD_HEADER + 44, 300, 20_000])?;
    let max_frame = *u.choose(&[4096, MIN_MAX_FRAME, 2048])?;
    let mut c = Config::server(replay).with_max_frame(max_frame);
    c.durable = u.arbitrary()?;
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

fn run<S: Under>(s: S, u: &mut Unstructured<'_>) -> Result<()> {
    let mut r = Run {
        h: Harness::new(s),
        peer: Peer::default(),
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
    if node_role {
        let s = NodeSession::new(c, NODE_ID, PLATFORM, storage).expect("config");
        run(s, u)
    } else {
        let mut s = DaemonSession::new(c, NODE_ID, &mut Rng(u.arbitrary()?)).expect("config");
        if let Some(buf) = storage {
            s.lend(buf).expect("lend");
        }
        run(s, u)
    }
}

fuzz_target!(|data: &[u8]| {
    common::require_overflow_checks();
    let _ = start(&mut Unstructured::new(data));
});
