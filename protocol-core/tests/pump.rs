//! The pump as a driver author uses it (from `SANS_IO.md`, "The pump"): a node and a
//! daemon each on a pump, over a byte pipe that cuts reads anywhere and takes writes in
//! part, with stores that confirm late.

#[allow(dead_code)]
#[path = "sim/rng.rs"]
mod sim_rng;

use std::collections::VecDeque;

use proptest::prelude::*;
use protocol_core::pump::{Alloc, Input, Lend, Lender, Pump, Slots, Step};
use protocol_core::session::{
    BatchId, CallState, Config, DaemonSession, Instant, MemJournal, NodeSession, OwnedDaemonEvent,
    OwnedJournalOp, OwnedNodeEvent, OwnedOutcome, Session,
};
use protocol_core::wire::{Outcome, Payload};
use sim_rng::SimRng;

const OCTETS: &str = "application/octet-stream";

fn payload(data: &[u8]) -> Payload<'_> {
    Payload {
        content_type: OCTETS,
        data,
    }
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// Bytes in flight towards one side; `keep`: a split frame may wait in it.
#[derive(Default)]
struct Pipe(VecDeque<u8>, bool);

impl Input for Pipe {
    fn bytes(&self) -> &[u8] {
        self.0.as_slices().0
    }
    fn consume(&mut self, n: usize) {
        self.0.drain(..n);
    }
    fn available(&self) -> usize {
        self.0.len()
    }
    fn peek(&self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.0.len());
        for (d, b) in dst.iter_mut().zip(self.0.iter()) {
            *d = *b;
        }
        n
    }
    fn keeps_split_frames(&self) -> bool {
        self.1
    }
}

/// Allocates every buffer, and notes the length of each frame buffer asked for.
#[derive(Default)]
struct Noting {
    frames: Vec<usize>,
    transmits: Vec<usize>,
    /// Frame buffers lent now, and waits that found one lent.
    frames_out: usize,
    held_at_wait: usize,
}

impl Lender for Noting {
    type Buf = Vec<u8>;
    fn take(&mut self, what: Lend, len: usize) -> Option<Vec<u8>> {
        match what {
            Lend::Frame => {
                self.frames.push(len);
                self.frames_out += 1;
            }
            Lend::Transmit => self.transmits.push(len),
            Lend::Storage => {}
        }
        Alloc.take(what, len)
    }
    fn put(&mut self, what: Lend, buf: Vec<u8>) {
        if what == Lend::Frame {
            self.frames_out -= 1;
        }
        Alloc.put(what, buf);
    }
}

/// How one side's transport and store behave.
#[derive(Debug, Clone, Copy)]
struct Faults {
    /// Most bytes the transport takes per write (0: all).
    write_max: usize,
    /// Polls a batch waits before its store confirms it (0: at once).
    commit_delay: u32,
}

/// One side: its session on a pump, its store, the bytes it received and not yet read.
struct Side<S> {
    s: S,
    pump: Pump<Vec<u8>>,
    journal: MemJournal,
    /// Batches staged, with the polls left until the store confirms them.
    staged: Vec<(BatchId, Vec<OwnedJournalOp>, u32)>,
    /// Bytes the transport delivered; `read` moves them into `input` in chunks.
    wire: VecDeque<u8>,
    input: Pipe,
    blocked: bool,
    faults: Faults,
    closed: bool,
    lender: Noting,
}

impl<S: Session<Buf = Vec<u8>>> Side<S> {
    fn new(s: S, faults: Faults) -> Self {
        Side {
            s,
            pump: Pump::new(),
            journal: MemJournal::new(),
            staged: Vec::new(),
            wire: VecDeque::new(),
            input: Pipe::default(),
            blocked: false,
            faults,
            closed: false,
            lender: Noting::default(),
        }
    }

    /// Runs the pump until it waits; `app` gets every Events step. Bytes written go to
    /// `out`. Returns true if anything happened.
    fn run(&mut self, now: u64, out: &mut VecDeque<u8>, mut app: impl FnMut(&mut S)) -> bool {
        let mut busy = false;
        for _ in 0..10_000 {
            match self
                .pump
                .poll(at(now), &mut self.s, &mut self.lender, &mut self.input)
            {
                Step::Events(s) => app(s),
                Step::Journal(b) => {
                    let (id, ops) = b.into_owned().expect("a pending batch has ops");
                    self.staged.push((id, ops, self.faults.commit_delay));
                }
                Step::Transmit(o) | Step::Close(o) if !self.blocked => {
                    busy = true;
                    let len = o.bytes().len();
                    let n = match self.faults.write_max {
                        0 => len,
                        max => len.min(max),
                    };
                    out.extend(&o.bytes()[..n]);
                    if n < len {
                        o.sent(n);
                        self.blocked = true;
                    }
                }
                Step::Transmit(_) | Step::Close(_) => panic!("an Out while blocked"),
                Step::Wait(w) => {
                    assert_eq!(
                        w.write_blocked, self.blocked,
                        "the pump knows it is blocked"
                    );
                    // A frame the session refused is kept in a buffer; others are not.
                    if self.lender.frames_out > 0 && !w.held {
                        self.lender.held_at_wait += 1;
                    }
                    self.closed |= self.pump.is_closed();
                    return busy;
                }
            }
        }
        panic!("the pump never waited");
    }

    /// The transport can take more; the store confirms what is due; `n` bytes arrive.
    fn tick(&mut self, now: u64, n: usize) -> bool {
        let mut busy = false;
        if std::mem::take(&mut self.blocked) {
            self.pump.writable();
            busy = true;
        }
        let mut left = Vec::new();
        for (id, ops, delay) in std::mem::take(&mut self.staged) {
            if delay > 0 {
                left.push((id, ops, delay - 1));
                continue;
            }
            for op in &ops {
                self.journal.apply_owned(op);
            }
            self.s
                .handle_journal_committed(at(now), id)
                .expect("the confirmation names the batch");
            busy = true;
        }
        self.staged = left;
        let n = n.min(self.wire.len());
        self.input.0.extend(self.wire.drain(..n));
        busy | (n > 0) | !self.staged.is_empty()
    }
}

struct World {
    node: Side<NodeSession<Vec<u8>>>,
    daemon: Side<DaemonSession<Vec<u8>>>,
    /// Events the node's application still has to send, and calls it answers.
    to_send: VecDeque<Vec<u8>>,
    got_events: Vec<Vec<u8>>,
    results: Vec<(u64, CallState, Option<Vec<u8>>)>,
    calls_run: Vec<u64>,
    /// Answers the node's application owes.
    owed: VecDeque<(u64, Vec<u8>)>,
    /// Calls the daemon's application still has to make, and those it made.
    to_call: VecDeque<Vec<u8>>,
    called: Vec<u64>,
}

fn cfg() -> Config {
    let mut c = Config::server(8 * 1024).with_max_frame(4096);
    // A link cut to a few bytes a millisecond is slow, not stuck.
    c.ack_timeout_ms = 600_000;
    c.idle_timeout_ms = 600_000;
    c
}

impl World {
    fn new(node: Faults, daemon: Faults) -> Self {
        Self::with_config(cfg(), node, daemon)
    }

    fn with_config(c: Config, node: Faults, daemon: Faults) -> Self {
        let n = NodeSession::new(c, "n1", "test", None).expect("node");
        let d = DaemonSession::new(c, "n1", &mut SimRng::new(3)).expect("daemon");
        World {
            node: Side::new(n, node),
            daemon: Side::new(d, daemon),
            to_send: VecDeque::new(),
            got_events: Vec::new(),
            results: Vec::new(),
            calls_run: Vec::new(),
            owed: VecDeque::new(),
            to_call: VecDeque::new(),
            called: Vec::new(),
        }
    }

    fn step(&mut self, now: u64, chunk: usize) -> bool {
        let mut busy = false;
        let (to_send, calls_run, owed) = (&mut self.to_send, &mut self.calls_run, &mut self.owed);
        busy |= self.node.run(now, &mut self.daemon.wire, |s| {
            while let Some(ev) = s.poll_event() {
                if let OwnedNodeEvent::Call { call_id, input, .. } = OwnedNodeEvent::from(ev) {
                    calls_run.push(call_id);
                    owed.push_back((call_id, input.data));
                }
            }
            // A full replay buffer refuses (`Full`): the application tries again later.
            while let Some((id, data)) = owed.front() {
                match s.complete(*id, Outcome::Success(payload(data))) {
                    Ok(_) => drop(owed.pop_front()),
                    Err(_) => break,
                }
            }
            while let Some(e) = to_send.front() {
                match s.send_event("e", payload(e)) {
                    Ok(_) => drop(to_send.pop_front()),
                    Err(_) => break,
                }
            }
        });
        let (got, results) = (&mut self.got_events, &mut self.results);
        let (to_call, called) = (&mut self.to_call, &mut self.called);
        busy |= self.daemon.run(now, &mut self.node.wire, |s| {
            while let Some(ev) = s.poll_event() {
                match OwnedDaemonEvent::from(ev) {
                    OwnedDaemonEvent::Event { payload, .. } => got.push(payload.data),
                    OwnedDaemonEvent::CallUpdate {
                        call_id,
                        state,
                        outcome,
                        ..
                    } if state.is_final() => {
                        let data = match outcome {
                            Some(OwnedOutcome::Success(p)) => Some(p.data),
                            _ => None,
                        };
                        results.push((call_id, state, data));
                    }
                    _ => {}
                }
            }
            while let Some(data) = to_call.front() {
                match s.call(at(now), "echo", payload(data), 600_000) {
                    Ok(id) => {
                        called.push(id);
                        to_call.pop_front();
                    }
                    Err(_) => break,
                }
            }
        });
        busy |= self.node.tick(now, chunk);
        busy |= self.daemon.tick(now, chunk);
        busy | !self.to_call.is_empty() | !self.to_send.is_empty() | !self.owed.is_empty()
    }

    fn connect(&mut self, now: u64) {
        self.node.s.handle_connected(at(now));
        self.daemon.s.handle_connected(at(now));
    }

    /// Runs until nothing moves, with `chunk` bytes read at a time.
    fn settle(&mut self, now: &mut u64, chunk: usize) {
        for _ in 0..100_000 {
            if !self.step(*now, chunk) {
                return;
            }
            *now += 1;
            self.node.s.handle_timeout(at(*now));
            self.daemon.s.handle_timeout(at(*now));
        }
        panic!("never settled");
    }
}

/// Two 3,000-byte events with 4 KiB frames arrive in one read: before the pump's
/// backpressure rule the second closed the connection with `Error(Overloaded)`.
#[test]
fn two_large_events_in_one_read_are_both_delivered() {
    let quick = Faults {
        write_max: 0,
        commit_delay: 0,
    };
    let mut w = World::new(quick, quick);
    let mut now = 0;
    w.connect(now);
    w.settle(&mut now, usize::MAX);
    w.to_send.extend([vec![1; 3000], vec![2; 3000]]);
    // The node writes both frames before the daemon reads anything.
    w.node.run(now, &mut w.daemon.wire, |s| {
        while s.poll_event().is_some() {}
        for e in [[1u8; 3000], [2u8; 3000]] {
            s.send_event("e", payload(&e)).expect("room");
        }
    });
    w.node.tick(now, 0);
    w.node.run(now, &mut w.daemon.wire, |_| {});
    w.to_send.clear();
    assert!(w.daemon.wire.len() > 6000, "both frames are on the wire");
    w.settle(&mut now, usize::MAX);
    assert_eq!(w.got_events, vec![vec![1; 3000], vec![2; 3000]]);
    assert!(w.node.s.is_connected() && w.daemon.s.is_connected());
}

/// A call waits at the node's inbox front for its window entry, whose batch the store
/// confirms late; the next call's frame is held back (the pump stops reading) and taken
/// once the confirmation came.
#[test]
fn a_frame_held_for_a_late_commit_is_taken_after_it() {
    let node = Faults {
        write_max: 0,
        commit_delay: 5,
    };
    let quick = Faults {
        write_max: 0,
        commit_delay: 0,
    };
    let mut w = World::new(node, quick);
    let mut now = 0;
    w.connect(now);
    w.settle(&mut now, usize::MAX);
    w.daemon.pump.lend(&mut w.daemon.s, &mut Alloc);
    let a = w
        .daemon
        .s
        .call(at(now), "echo", payload(&[5; 3000]), 60_000);
    let b = w
        .daemon
        .s
        .call(at(now), "echo", payload(&[6; 3000]), 60_000);
    let (a, b) = (a.expect("call"), b.expect("call"));
    w.settle(&mut now, usize::MAX);
    assert_eq!(w.calls_run, vec![a, b]);
    let ok: Vec<_> = w
        .results
        .iter()
        .map(|(id, st, data)| (*id, *st, data.as_ref().map(|d| d[0])))
        .collect();
    assert_eq!(
        ok,
        vec![
            (a, CallState::Succeeded, Some(5)),
            (b, CallState::Succeeded, Some(6))
        ]
    );
    assert!(w.node.s.is_connected());
}

/// A quiet connection gives every buffer back to the lender.
#[test]
fn a_quiet_connection_holds_no_buffer() {
    #[derive(Default)]
    struct Counting(Vec<Lend>);
    impl Lender for Counting {
        type Buf = Vec<u8>;
        fn take(&mut self, what: Lend, len: usize) -> Option<Vec<u8>> {
            self.0.push(what);
            Some(vec![0; len])
        }
        fn put(&mut self, what: Lend, _: Vec<u8>) {
            let i = self.0.iter().position(|w| *w == what).expect("lent first");
            self.0.remove(i);
        }
    }
    let c = cfg();
    let mut d: DaemonSession<Vec<u8>> =
        DaemonSession::new(c, "n1", &mut SimRng::new(1)).expect("daemon");
    let mut node: NodeSession<Vec<u8>> = NodeSession::new(c, "n1", "t", None).expect("node");
    let (mut dp, mut np) = (Pump::new(), Pump::new());
    let (mut lender, mut nl) = (Counting::default(), Counting::default());
    let (mut to_d, mut to_n): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    d.handle_connected(at(0));
    node.handle_connected(at(0));
    for _ in 0..50 {
        until_wait(&mut dp, &mut d, &mut lender, &mut to_d, &mut to_n);
        until_wait(&mut np, &mut node, &mut nl, &mut to_n, &mut to_d);
    }
    assert!(d.is_connected() && node.is_connected());
    assert_eq!(lender.0, vec![], "the daemon's side holds nothing");
    assert_eq!(nl.0, vec![], "the node's side holds nothing");
}

/// Transmit buffers hold a batch of small frames, or one large frame, not the largest
/// frame allowed; frames larger than the batch still go out, whatever the cutting.
#[test]
fn transmit_buffers_fit_what_they_carry() {
    let mut c = Config::server(1 << 20);
    c.ack_timeout_ms = 600_000;
    c.idle_timeout_ms = 600_000;
    assert!(c.transmit_len() > 256 * 1024);
    for (chunk, write_max) in [(usize::MAX, 0), (1_000, 7_000)] {
        let node = Faults {
            write_max,
            commit_delay: 0,
        };
        let daemon = Faults {
            write_max: 0,
            commit_delay: 0,
        };
        let mut w = World::with_config(c, node, daemon);
        let mut now = 0;
        w.connect(now);
        let sent = vec![
            vec![1; 100],
            vec![2; 200 * 1024],
            vec![3; 10],
            vec![4; 70 * 1024],
        ];
        w.to_send.extend(sent.iter().cloned());
        w.settle(&mut now, chunk);
        assert_eq!(w.got_events, sent);
        let node_tx = &w.node.lender.transmits;
        assert!(node_tx.iter().any(|n| *n > 200 * 1024), "{node_tx:?}");
        assert!(node_tx.iter().all(|n| *n < 210 * 1024), "{node_tx:?}");
        let daemon_tx = &w.daemon.lender.transmits;
        assert!(daemon_tx.iter().all(|n| *n <= 64 * 1024), "{daemon_tx:?}");
    }
}

/// Polls until the pump waits, committing at once; `input` is what arrived, `out`
/// where frames go.
fn until_wait<S: Session<Buf = Vec<u8>>>(
    pump: &mut Pump<Vec<u8>>,
    s: &mut S,
    lender: &mut impl Lender<Buf = Vec<u8>>,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    loop {
        let mut rest = &input[..];
        let step = pump.poll(at(0), s, lender, &mut rest);
        let taken = input.len() - rest.len();
        input.drain(..taken);
        match step {
            Step::Events(s) => while s.poll_event().is_some() {},
            Step::Journal(b) => {
                let id = b.stage(|_| {}).expect("ops");
                s.handle_journal_committed(at(0), id).expect("id");
            }
            Step::Transmit(o) => out.extend(o.bytes()),
            Step::Close(_) => panic!("closed"),
            Step::Wait(_) => return,
        }
    }
}

/// A microcontroller's static buffers go out and come back through [`Slots`].
#[test]
fn slots_lend_the_same_static_buffers() {
    let c = Config::embedded(1024);
    let mut slots: Slots<Vec<u8>> = Slots::new(
        Some(vec![0; c.storage_len()]),
        vec![0; c.max_frame as usize],
        vec![0; c.transmit_len()],
    );
    let storage = slots.take(Lend::Storage, c.storage_len()).expect("storage");
    assert!(slots.take(Lend::Storage, 1).is_none(), "lent already");
    slots.put(Lend::Storage, storage);
    assert!(
        slots.take(Lend::Transmit, c.transmit_len() + 1).is_none(),
        "too short"
    );
    assert!(slots.take(Lend::Transmit, c.transmit_len()).is_some());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the read sizes, partial writes and store delays, every event arrives
    /// once, in order, every call runs once and succeeds with its input, and no side
    /// closes.
    #[test]
    fn the_pump_delivers_everything_once_under_any_cutting(
        events in proptest::collection::vec(1usize..3_500, 0..12),
        calls in proptest::collection::vec(1usize..3_000, 0..6),
        chunk in 1usize..5_000,
        keep in any::<bool>(),
        node_write in 0usize..3_000,
        daemon_write in 0usize..3_000,
        node_delay in 0u32..4,
        daemon_delay in 0u32..4,
    ) {
        let mut w = World::new(
            Faults { write_max: node_write, commit_delay: node_delay },
            Faults { write_max: daemon_write, commit_delay: daemon_delay },
        );
        w.node.input.1 = keep;
        w.daemon.input.1 = keep;
        let mut now = 0;
        w.connect(now);
        let sent: Vec<Vec<u8>> = events
            .iter()
            .enumerate()
            .map(|(i, n)| vec![i as u8; *n])
            .collect();
        w.to_send.extend(sent.iter().cloned());
        w.to_call.extend(calls.iter().enumerate().map(|(i, n)| vec![100 + i as u8; *n]));
        w.settle(&mut now, chunk);
        prop_assert_eq!(&w.got_events, &sent);
        let ids = w.called.clone();
        prop_assert_eq!(ids.len(), calls.len());
        prop_assert_eq!(&w.calls_run, &ids);
        let finals: Vec<_> = w.results.iter().map(|(id, st, d)| (*id, *st, d.as_ref().map(Vec::len))).collect();
        let want: Vec<_> = ids.iter().zip(&calls).map(|(id, n)| (*id, CallState::Succeeded, Some(*n))).collect();
        prop_assert_eq!(finals, want);
        prop_assert!(!w.node.closed && !w.daemon.closed);
        prop_assert!(w.node.s.is_connected() && w.daemon.s.is_connected());
        if keep {
            // The input kept every split frame until it was whole: assembled at once, so
            // the frame buffer went back in the same poll.
            prop_assert_eq!(w.node.lender.held_at_wait + w.daemon.lender.held_at_wait, 0);
        }
        // Frame buffers are as long as the frames they hold, never the limit: every
        // frame here is shorter than it.
        let longest = events.iter().chain(&calls).max().copied().unwrap_or(0);
        for side in [&w.node.lender.frames, &w.daemon.lender.frames] {
            for len in side {
                prop_assert!(*len < cfg().max_frame as usize, "asked for {}", len);
                prop_assert!(*len < longest + 256, "asked for {} (longest payload {})", len, longest);
            }
        }
    }
}
