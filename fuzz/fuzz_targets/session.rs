//! Drives a node (`NodeSession`) and a daemon (`DaemonSession`) against each other, each
//! through its `pump::Pump` as a real driver does, with arbitrary commands on both,
//! arbitrary bytes and frames injected, loss, duplication and reordering on the pipe
//! between them, reads cut at arbitrary sizes, writes the transport takes only in part,
//! a lender that runs dry, arbitrary steps of time (backwards too), journal batches that
//! commit, fail (once, or throughout an outage), stay in flight or are confirmed late and
//! twice, storage lent and reclaimed at arbitrary points, and restarts from the committed
//! journal.
//!
//! Asserts, besides the checks of `common/session.rs` on every output (polls come to
//! rest, frames decode and fit both limits, deadlines move once handled, deliveries are
//! consecutive, no call is final twice, stale confirmations are refused and change
//! nothing, failed batches come back at their retry deadline, nothing panics):
//! - a command's result agrees with the session (a seq it returns is `last_sent()`,
//!   `NoStorage` only without storage, call ids only grow);
//! - `reclaim` hands storage back only when nothing is held for replay;
//! - a session restores from whatever its journal committed;
//! - while only genuine frames crossed the pipe, neither side has delivered more of the
//!   other's stream than the other sent, nor seen an acknowledgement of more than the
//!   other delivered.
#![no_main]

#[macro_use]
#[path = "common/session.rs"]
mod common;

use std::collections::VecDeque;

use common::{Daemon, Harness, NODE_ID, Node, Out, PLATFORM, Pumped, Rng, Side, framed};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use protocol_core::frame::{FrameError, MIN_MAX_FRAME};
use protocol_core::pump::Lend;
use protocol_core::session::{
    Config, DaemonSession, Instant, MAX_SEQ, NodeSession, Overflow, RECORD_HEADER, SessionError,
};
use protocol_core::wire::{
    CallId, Capabilities, CapabilityDescriptor, GoodbyeReason, Outcome, Payload, Register,
    RejectCode, Seq, Stage,
};

/// Most steps of one run.
const MAX_STEPS: usize = 600;

enum Item {
    Frame(Vec<u8>),
    Close,
}

struct World {
    now: u64,
    node: Pumped<Node>,
    daemon: Pumped<Daemon>,
    /// Reads return at most this many bytes.
    chunk: usize,
    to_node: VecDeque<Item>,
    to_daemon: VecDeque<Item>,
    /// Only frames the sessions sent crossed the pipe (lost, duplicated or reordered,
    /// never forged).
    genuine: bool,
    seed: u64,
    last_call_id: CallId,
}

fn config(u: &mut Unstructured<'_>, durable_first: bool) -> Result<Config> {
    // From the smallest replay buffer a session accepts.
    let replay = u.int_in_range(RECORD_HEADER + 44..=3_000)?;
    let max_frame = *u.choose(&[4096, MIN_MAX_FRAME, 300, 1024, 2048])?;
    let base = if u.arbitrary()? {
        Config::embedded(replay)
    } else {
        Config::server(replay)
    };
    let mut c = base.with_max_frame(max_frame);
    c.durable = u.arbitrary::<bool>()? != durable_first;
    c.overflow = if u.arbitrary()? {
        Overflow::EvictOldest
    } else {
        Overflow::Reject
    };
    c.idle_timeout_ms = *u.choose(&[30_000, 0, 1_000, 5_000, u32::MAX])?;
    c.keep_alive_ms = *u.choose(&[5_000, 0, 1, 300, u32::MAX])?;
    c.handshake_timeout_ms = *u.choose(&[10_000, 0, 100, u32::MAX])?;
    c.ack_delay_ms = *u.choose(&[20, 0, 1_000, u32::MAX])?;
    c.ack_every = *u.choose(&[2, 0, 1, 5, u32::MAX])?;
    c.ack_timeout_ms = *u.choose(&[5_000, 0, 500, u32::MAX])?;
    Ok(c)
}

fn payload(data: &[u8]) -> Payload<'_> {
    Payload {
        content_type: "application/octet-stream",
        data,
    }
}

/// `len` bytes for a body.
fn body(u: &mut Unstructured<'_>, max: u32) -> Result<Vec<u8>> {
    let len = match u.int_in_range(0u8..=3)? {
        0 => usize::from(u.int_in_range(0u8..=16)?),
        1 => u.int_in_range(0..=max as usize)?,
        2 => max as usize - 30,
        _ => 2 * max as usize,
    };
    Ok(vec![0xA5; len])
}

fn outcome<'a>(u: &mut Unstructured<'_>, data: &'a [u8]) -> Result<Outcome<'a>> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 => Outcome::Success(payload(data)),
        1 => Outcome::Failed { reason: "failed" },
        2 => Outcome::Rejected {
            code: RejectCode::Denied,
            reason: "no",
        },
        3 => Outcome::Cancelled,
        _ => Outcome::TimedOut,
    })
}

const CAPS: [CapabilityDescriptor<'static>; 2] = [
    CapabilityDescriptor {
        name: "echo",
        version: 1,
        input: "application/octet-stream",
        output: "application/octet-stream",
        needs_approval: false,
    },
    CapabilityDescriptor {
        name: "sys.reboot",
        version: 2,
        input: "application/json",
        output: "application/json",
        needs_approval: true,
    },
];

/// A command's `Ok(seq)` names the message it queued.
fn check_queued<S: Side>(h: &Harness<S>, r: core::result::Result<Seq, SessionError>) {
    match r {
        Ok(seq) => assert!(seq == h.s.last_sent() && seq <= MAX_SEQ, "queued as {seq}"),
        Err(SessionError::NoStorage) => {
            assert!(!h.s.has_storage(), "NoStorage while holding storage")
        }
        Err(_) => {}
    }
}

fn route(outs: Vec<Out>, toward: &mut VecDeque<Item>, back: &mut VecDeque<Item>) {
    for o in outs {
        match o {
            Out::Frame(f) => toward.push_back(Item::Frame(f)),
            Out::Close => {
                // Our end is closed: what the peer had in flight to us is gone.
                back.clear();
                toward.push_back(Item::Close);
            }
        }
    }
}

impl World {
    fn t(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    /// Runs both sides' pumps and due timers; frames go into the pipes.
    fn settle(&mut self) {
        let now = self.t();
        let mut outs = self.node.run(now);
        outs.extend(self.node.settle_timers(now));
        route(outs, &mut self.to_daemon, &mut self.to_node);
        let mut outs = self.daemon.run(now);
        outs.extend(self.daemon.settle_timers(now));
        route(outs, &mut self.to_node, &mut self.to_daemon);
        self.cross_check();
    }

    fn cross_check(&self) {
        if !self.genuine || self.node.h.s.session_id() != Some(self.daemon.h.s.session_id()) {
            return;
        }
        let (n, d) = (&self.node.h.s, &self.daemon.h.s);
        assert!(
            d.delivered() <= n.last_sent(),
            "daemon delivered {} of {} sent",
            d.delivered(),
            n.last_sent()
        );
        assert!(
            n.delivered() <= d.last_sent(),
            "node delivered {} of {} sent",
            n.delivered(),
            d.last_sent()
        );
        assert!(
            n.acked() <= d.delivered(),
            "node acked {} beyond daemon delivery {}",
            n.acked(),
            d.delivered()
        );
        assert!(
            d.acked() <= n.delivered(),
            "daemon acked {} beyond node delivery {}",
            d.acked(),
            n.delivered()
        );
    }

    /// Hands the front item of one pipe over, loses it, duplicates it or swaps it with
    /// the next one.
    fn deliver(&mut self, to_node: bool, fate: u8) {
        let now = self.t();
        let pipe = if to_node {
            &mut self.to_node
        } else {
            &mut self.to_daemon
        };
        let Some(item) = pipe.pop_front() else {
            return;
        };
        match (fate, item) {
            // Lost.
            (0, _) => {}
            (1, Item::Frame(f)) => {
                pipe.push_front(Item::Frame(f.clone()));
                self.feed(to_node, now, Item::Frame(f));
            }
            (2, item) if !pipe.is_empty() => {
                let next = pipe.pop_front();
                pipe.push_front(item);
                if let Some(next) = next {
                    self.feed(to_node, now, next);
                }
            }
            (_, item) => self.feed(to_node, now, item),
        }
    }

    /// Hands an item to the receiving side's transport: a frame's bytes into its input
    /// (the pump takes them at the next settle), or the end of the connection.
    fn feed(&mut self, to_node: bool, now: Instant, item: Item) {
        match (to_node, item) {
            (true, Item::Frame(f)) => self.node.receive(&framed(&f), self.chunk),
            (false, Item::Frame(f)) => self.daemon.receive(&framed(&f), self.chunk),
            (true, Item::Close) => {
                self.node.disconnected(now);
                self.to_node.clear();
            }
            (false, Item::Close) => {
                self.daemon.disconnected(now);
                self.to_daemon.clear();
            }
        }
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let now = self.t();
        let op = u.int_in_range(0u8..=33)?;
        trace!("step {op} at {}", self.now);
        match op {
            // Time.
            0 => self.now = self.now.saturating_add(u64::from(u.arbitrary::<u8>()?)),
            1 => self.now = self.now.saturating_add(u64::from(u.arbitrary::<u16>()?)),
            2 => self.now = self.now.saturating_add(u64::from(u.arbitrary::<u32>()?)),
            3 => self.now = self.now.saturating_sub(u64::from(u.arbitrary::<u16>()?)),
            4 => {
                let side = if u.arbitrary()? {
                    self.node.h.s.deadline()
                } else {
                    self.daemon.h.s.deadline()
                };
                if let Some(at) = side {
                    self.now = self.now.max(at.as_millis());
                }
            }
            5 => {
                self.node.h.timeout(now);
                self.daemon.h.timeout(now);
            }
            // Connections.
            6 | 7 => {
                self.to_node.clear();
                self.to_daemon.clear();
                self.node.connected(now);
                self.daemon.connected(now);
            }
            8 => {
                self.to_node.clear();
                self.to_daemon.clear();
                self.node.disconnected(now);
                self.daemon.disconnected(now);
            }
            9 => {
                let reason = *u.choose(&[
                    GoodbyeReason::Shutdown,
                    GoodbyeReason::Restart,
                    GoodbyeReason::Replaced,
                ])?;
                if u.arbitrary()? {
                    self.node.h.s.close(now, reason);
                } else {
                    self.daemon.h.s.close(now, reason);
                }
            }
            // The pipe.
            10..=14 => {
                let to_node = u.arbitrary()?;
                let fate = u.int_in_range(0u8..=9)?;
                self.deliver(to_node, fate);
            }
            15 => {
                for _ in 0..64 {
                    if self.to_node.is_empty() && self.to_daemon.is_empty() {
                        break;
                    }
                    let now = self.t();
                    if let Some(item) = self.to_daemon.pop_front() {
                        self.feed(false, now, item);
                    }
                    if let Some(item) = self.to_node.pop_front() {
                        self.feed(true, now, item);
                    }
                    self.settle();
                }
            }
            // Forged input.
            16 => {
                let len = usize::from(u.int_in_range(0u8..=80)?);
                let f = u.bytes(len)?.to_vec();
                // A frame with any payload, or bytes that need not frame at all.
                let bytes = if u.arbitrary()? { framed(&f) } else { f };
                self.genuine = false;
                if u.arbitrary()? {
                    self.node.receive(&bytes, self.chunk);
                } else {
                    self.daemon.receive(&bytes, self.chunk);
                }
            }
            17 => {
                let to_node: bool = u.arbitrary()?;
                let at: usize = u.arbitrary()?;
                let flip: u8 = u.arbitrary()?;
                let pipe = if to_node {
                    &self.to_node
                } else {
                    &self.to_daemon
                };
                if let Some(Item::Frame(f)) = pipe.front() {
                    let mut f = f.clone();
                    if !f.is_empty() {
                        let i = at % f.len();
                        f[i] ^= flip.max(1);
                    }
                    self.genuine = false;
                    if to_node {
                        self.node.receive(&framed(&f), self.chunk);
                    } else {
                        self.daemon.receive(&framed(&f), self.chunk);
                    }
                }
            }
            18 => {
                let e = match u.int_in_range(0u8..=2)? {
                    0 => FrameError::TooLarge {
                        len: u.arbitrary()?,
                        max: u.arbitrary()?,
                    },
                    1 => FrameError::Failed,
                    _ => FrameError::BufferTooSmall {
                        needed: u.arbitrary()?,
                        available: u.arbitrary()?,
                    },
                };
                if u.arbitrary()? {
                    self.node.h.s.frame_error(now, e);
                } else {
                    self.daemon.h.s.frame_error(now, e);
                }
            }
            // Node application.
            19 => {
                let data = body(u, self.node.h.s.config().max_frame)?;
                let r = self.node.h.s.send_event("reading", payload(&data));
                check_queued(&self.node.h, r);
            }
            20 => {
                let n = u.int_in_range(0..=CAPS.len())?;
                let caps = Capabilities::new(&CAPS[..n]).expect("two fit");
                let r = self.node.h.s.register(Register { capabilities: caps });
                check_queued(&self.node.h, r);
            }
            21 | 22 => {
                let calls = &self.node.h.app.calls;
                let id = if calls.is_empty() || u.ratio(1, 8)? {
                    u.arbitrary::<u8>()?.into()
                } else {
                    calls[u.choose_index(calls.len())?]
                };
                let data = body(u, self.node.h.s.config().max_frame)?;
                let outcome = outcome(u, &data)?;
                let r = self.node.h.s.complete(id, outcome);
                check_queued(&self.node.h, r);
            }
            23 => {
                let calls = &self.node.h.app.calls;
                if !calls.is_empty() {
                    let id = calls[u.choose_index(calls.len())?];
                    let stage = if u.arbitrary()? {
                        Stage::Running
                    } else {
                        Stage::AwaitingApproval
                    };
                    let r = self.node.h.s.progress(id, stage, "working");
                    check_queued(&self.node.h, r);
                }
            }
            // Daemon application.
            24 | 25 => {
                let data = body(u, self.daemon.h.s.config().max_frame)?;
                let timeout = *u.choose(&[1_000, 0, 1, 50, 60_000, u32::MAX])?;
                let before = self.daemon.h.s.last_sent();
                match self.daemon.h.s.call(now, "echo", payload(&data), timeout) {
                    Ok(id) => {
                        assert!(id > self.last_call_id, "call id {id} reused");
                        self.last_call_id = id;
                        assert_eq!(self.daemon.h.s.last_sent(), before + 1);
                    }
                    Err(SessionError::NoStorage) => assert!(!self.daemon.h.s.has_storage()),
                    Err(_) => {
                        assert_eq!(self.daemon.h.s.last_sent(), before, "a refused call queued")
                    }
                }
            }
            26 => {
                let id = if u.arbitrary()? {
                    self.last_call_id.saturating_sub(u.int_in_range(0..=3)?)
                } else {
                    u.arbitrary()?
                };
                let r = self.daemon.h.s.cancel(id);
                check_queued(&self.daemon.h, r);
            }
            // Journals.
            27 => {
                if u.arbitrary()? {
                    store_op(&mut self.node.h, u, now)?;
                } else {
                    store_op(&mut self.daemon.h, u, now)?;
                }
            }
            // Storage.
            28 => {
                if u.arbitrary()? {
                    storage_op(&mut self.node.h, u)?;
                } else {
                    storage_op(&mut self.daemon.h, u)?;
                }
            }
            // Restarts.
            29 | 30 => {
                let lend = u.arbitrary()?;
                self.seed = self.seed.wrapping_add(1);
                if u.arbitrary()? {
                    self.node.restore(self.seed, lend);
                    self.to_node.clear();
                    self.to_daemon.push_back(Item::Close);
                } else {
                    self.daemon.restore(self.seed, lend);
                    // Ids of calls that never became durable are handed out again.
                    self.last_call_id = self
                        .daemon
                        .h
                        .journal
                        .stored_meta()
                        .filter(|_| self.daemon.h.s.config().durable)
                        .map_or(0, |m| m.next_call_id.saturating_sub(1));
                    self.to_daemon.clear();
                    self.to_node.push_back(Item::Close);
                }
            }
            31 => {
                let short = *u.choose(&[0usize, 4, 5, 16, 64, 300])?;
                let short = u.arbitrary::<bool>()?.then_some(short);
                if u.arbitrary()? {
                    self.node.h.short_buf = short;
                } else {
                    self.daemon.h.short_buf = short;
                }
            }
            // The transport: short writes, short reads.
            32 => {
                let limit = *u.choose(&[1usize, 5, 64, 300, 1_500])?;
                let limit = u.arbitrary::<bool>()?.then_some(limit);
                if u.arbitrary()? {
                    self.node.write_limit = limit;
                } else {
                    self.daemon.write_limit = limit;
                }
                self.chunk = *u.choose(&[usize::MAX, 1, 3, 7, 100, 1_000])?;
            }
            // The lender runs dry for one purpose, or recovers.
            _ => {
                let dry = *u.choose(&[
                    None,
                    Some(Lend::Storage),
                    Some(Lend::Frame),
                    Some(Lend::Transmit),
                ])?;
                if u.arbitrary()? {
                    self.node.lender.dry = dry;
                } else {
                    self.daemon.lender.dry = dry;
                }
            }
        }
        self.settle();
        Ok(())
    }
}

/// The store: batches held or confirmed, failures (a few, or an outage), and late or
/// duplicate confirmations of batches confirmed before.
fn store_op<S: Side>(h: &mut Harness<S>, u: &mut Unstructured<'_>, now: Instant) -> Result<()> {
    match u.int_in_range(0u8..=3)? {
        0 => {
            h.hold = u.arbitrary()?;
            h.fail_next = u.int_in_range(0..=2)?;
            if u.arbitrary()? {
                h.confirm(now);
            }
        }
        1 => {
            let len = *u.choose(&[0u64, 40, 300, 6_000, 60_000])?;
            h.outage_until = Some(now.as_millis().saturating_add(len));
        }
        _ => {
            let pick = u.arbitrary()?;
            let failed = u.arbitrary()?;
            h.stale_confirmation(now, pick, failed);
        }
    }
    Ok(())
}

fn storage_op<S: Side>(h: &mut Harness<S>, u: &mut Unstructured<'_>) -> Result<()> {
    match u.int_in_range(0u8..=2)? {
        0 => {
            let held = h.s.unacked();
            if h.s.reclaim().is_some() {
                assert_eq!(held, 0, "storage reclaimed while holding {held} messages");
                assert!(!h.s.has_storage());
            }
        }
        1 => {
            let had = h.s.has_storage();
            let buf = h.storage();
            assert_eq!(h.s.lend(buf).is_ok(), !had, "lend of the configured size");
        }
        _ => {
            let short = vec![0u8; h.s.config().storage_len() - 1];
            let had = h.s.has_storage();
            assert!(h.s.lend(short).is_err(), "a short buffer was taken");
            assert_eq!(h.s.has_storage(), had);
        }
    }
    Ok(())
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let nc = config(u, false)?;
    let dc = config(u, true)?;
    let seed: u64 = u.arbitrary()?;
    let node_storage = (!u.ratio(1, 4)?).then(|| vec![0u8; nc.storage_len()]);
    let node = NodeSession::new(nc, NODE_ID, PLATFORM, node_storage).expect("node config");
    let mut daemon = DaemonSession::new(dc, NODE_ID, &mut Rng(seed)).expect("daemon config");
    if !u.ratio(1, 4)? {
        daemon.lend(vec![0u8; dc.storage_len()]).expect("lend");
    }
    let mut w = World {
        now: u64::from(u.arbitrary::<u16>()?),
        node: Pumped::new(node),
        daemon: Pumped::new(daemon),
        chunk: usize::MAX,
        to_node: VecDeque::new(),
        to_daemon: VecDeque::new(),
        genuine: true,
        seed,
        last_call_id: 0,
    };
    w.settle();
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        w.step(u)?;
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    common::require_overflow_checks();
    let _ = run(&mut Unstructured::new(data));
});
