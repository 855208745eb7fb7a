//! Session bugs the deterministic simulation (`tests/simulation.rs`) found, each reduced
//! to the few steps that show it. The seed that found each is named in its comment.

#[allow(dead_code)]
#[path = "sim/rng.rs"]
mod sim_rng;

use protocol_core::frame::HEADER_LEN;
use protocol_core::session::{
    CallState, Config, DaemonSession, INTERRUPTED, Instant, MemJournal, NodeSession, NotRun,
    OwnedDaemonEvent, OwnedNodeEvent, OwnedOutcome, Session, SessionError, Transmit,
};
use protocol_core::wire::{self, Body, Message, Payload};

type Node = NodeSession<Vec<u8>>;
type Daemon = DaemonSession<Vec<u8>>;

const JSON: &str = "application/json";

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn payload(data: &[u8]) -> Payload<'_> {
    Payload {
        content_type: JSON,
        data,
    }
}

fn node_config(replay_bytes: usize) -> Config {
    Config::server(replay_bytes).with_max_frame(4096)
}

fn daemon_config() -> Config {
    Config::server(4096).with_max_frame(4096)
}

fn new_node(c: Config) -> Node {
    NodeSession::new(c, "n1", "test", Some(vec![0; c.storage_len()])).expect("node")
}

fn new_daemon() -> Daemon {
    let c = daemon_config();
    let mut d = DaemonSession::new(c, "n1", &mut sim_rng::SimRng::new(7)).expect("daemon");
    d.lend(vec![0; c.storage_len()]).expect("lend");
    d
}

/// Writes the session's next batch to `journal` and confirms it by its id; true if
/// there was one. A batch polled to its end is closed; nothing polled closes none.
fn commit<S: Session>(s: &mut S, journal: &mut MemJournal, now: u64) -> bool {
    let mut any = false;
    while let Some(op) = s.poll_journal() {
        journal.apply(&op);
        any = true;
    }
    match s.closed_batch() {
        Some(id) => {
            assert!(any, "{id} closed without ops");
            s.handle_journal_committed(at(now), id)
                .expect("the confirmation names the closed batch");
        }
        None => assert!(!any, "ops polled, yet no batch closed"),
    }
    any
}

/// Frame payloads the session has to send now.
fn frames<S: Session>(s: &mut S, now: u64) -> Vec<Vec<u8>> {
    let mut buf = vec![0; s.config().transmit_len()];
    let mut out = Vec::new();
    while let Ok(Some(Transmit::Frame(n))) = s.poll_transmit(at(now), &mut buf) {
        out.push(buf[HEADER_LEN..n].to_vec());
    }
    out
}

fn feed<S: Session>(s: &mut S, now: u64, frames: &[Vec<u8>]) {
    for f in frames {
        assert_eq!(s.handle_frame(at(now), f), Ok(()), "storage is lent");
    }
}

fn node_events(n: &mut Node) -> Vec<OwnedNodeEvent> {
    std::iter::from_fn(|| n.poll_event().map(Into::into)).collect()
}

fn daemon_events(d: &mut Daemon) -> Vec<OwnedDaemonEvent> {
    std::iter::from_fn(|| d.poll_event().map(Into::into)).collect()
}

/// A node and a daemon with their journals over a perfect pipe; `sent` keeps every
/// frame the node sent.
struct Pair {
    node: Node,
    nj: MemJournal,
    daemon: Daemon,
    dj: MemJournal,
    node_events: Vec<OwnedNodeEvent>,
    daemon_events: Vec<OwnedDaemonEvent>,
    sent: Vec<Vec<u8>>,
}

impl Pair {
    fn new(node: Node) -> Self {
        Pair {
            node,
            nj: MemJournal::new(),
            daemon: new_daemon(),
            dj: MemJournal::new(),
            node_events: Vec::new(),
            daemon_events: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// Runs both sides until neither has anything to do.
    fn pump(&mut self, now: u64) {
        for _ in 0..1000 {
            self.node_events.extend(node_events(&mut self.node));
            self.daemon_events.extend(daemon_events(&mut self.daemon));
            let busy = commit(&mut self.node, &mut self.nj, now)
                | commit(&mut self.daemon, &mut self.dj, now);
            let up = frames(&mut self.node, now);
            let down = frames(&mut self.daemon, now);
            if !busy && up.is_empty() && down.is_empty() {
                return;
            }
            feed(&mut self.daemon, now, &up);
            feed(&mut self.node, now, &down);
            self.sent.extend(up);
        }
        panic!("the pair did not settle");
    }

    fn connect(&mut self, now: u64) {
        self.node.handle_connected(at(now));
        self.daemon.handle_connected(at(now));
        self.pump(now);
        assert!(self.node.is_connected() && self.daemon.is_connected());
    }

    fn disconnect(&mut self, now: u64) {
        self.node.handle_disconnected(at(now));
        self.daemon.handle_disconnected(at(now));
        self.pump(now);
    }

    /// Results for `call_id` among the node's frames.
    fn results_sent(&self, call_id: u64) -> usize {
        self.sent
            .iter()
            .filter(|f| {
                matches!(wire::decode_message(f),
                    Ok(Message::Data(d)) if matches!(&d.body, Body::Result(r) if r.call_id == call_id))
            })
            .count()
    }
}

/// Seed 7 (Linux node with a full replay buffer): a journaled node that stops while a
/// call runs and its replay buffer is full could not be restored at all, since the
/// `Failed(INTERRUPTED)` answer found no room and `restore` refused the journal as
/// inconsistent. The answer is owed now, and goes out once the daemon acknowledges.
#[test]
fn a_node_restores_with_a_full_replay_buffer_and_a_running_call() {
    let c = node_config(256);
    let mut p = Pair::new(new_node(c));
    p.connect(0);
    let id = p
        .daemon
        .call(at(10), "job", payload(b"{}"), 60_000)
        .expect("call");
    p.pump(10);
    assert!(
        p.node_events
            .iter()
            .any(|e| matches!(e, OwnedNodeEvent::Call { call_id, .. } if *call_id == id)),
        "{:?}",
        p.node_events
    );
    // Offline, the node fills its replay buffer; then the process stops.
    p.disconnect(20);
    let mut sent = 0;
    while p.node.send_event("reading", payload(b"0123456789")).is_ok() {
        sent += 1;
        commit(&mut p.node, &mut p.nj, 20);
    }
    assert!(sent > 2, "the replay buffer holds a few events");
    assert_eq!(
        p.node.send_event("reading", payload(b"0123456789")),
        Err(SessionError::Full)
    );
    let restored = NodeSession::restore(c, "n1", "test", Some(vec![0; c.storage_len()]), &p.nj);
    p.node = restored.expect("a full replay buffer is no reason to refuse the journal");
    assert_eq!(
        node_events(&mut p.node),
        vec![],
        "no room for the answer yet"
    );
    // Back online: the daemon acknowledges the events, and the answer goes out.
    p.node_events.clear();
    p.connect(30);
    p.pump(40);
    let interrupted: Vec<_> = p
        .node_events
        .iter()
        .filter(|e| matches!(e, OwnedNodeEvent::CallInterrupted { call_id, .. } if *call_id == id))
        .collect();
    assert_eq!(interrupted.len(), 1, "{:?}", p.node_events);
    assert!(
        p.daemon_events.iter().any(|e| matches!(e,
            OwnedDaemonEvent::CallUpdate { call_id, state: CallState::Failed, outcome: Some(OwnedOutcome::Failed { reason }), .. }
                if *call_id == id && reason == INTERRUPTED)),
        "{:?}",
        p.daemon_events
    );
    assert_eq!(p.daemon.open_calls(), 0);
}

/// Seed 3 (Linux node): a call whose deadline passed while its call-window entry waited
/// for the journal was answered `TimedOut` without any event, and when its message
/// reached the front it was reported as a `DuplicateCall` (a call the application never
/// saw) and answered a second time. Now it is answered once, when its message is
/// handed out, as `CallNotRun { why: Expired }`.
#[test]
fn a_call_that_expires_before_its_window_entry_commits_is_answered_once_without_running() {
    let mut p = Pair::new(new_node(node_config(2048)));
    p.connect(0);
    p.node_events.clear();
    let id = p
        .daemon
        .call(at(10), "job", payload(b"{}"), 50)
        .expect("call");
    assert!(commit(&mut p.daemon, &mut p.dj, 10));
    let down = frames(&mut p.daemon, 10);
    feed(&mut p.node, 10, &down);
    assert_eq!(
        node_events(&mut p.node),
        vec![],
        "not handed before it is durable"
    );
    // The store is slow: the batch naming the call commits after its deadline.
    let mut staged = p.nj.clone();
    while let Some(op) = p.node.poll_journal() {
        staged.apply(&op);
    }
    p.node.handle_timeout(at(100));
    assert_eq!(
        node_events(&mut p.node),
        vec![],
        "nothing the application holds expired"
    );
    p.nj = staged;
    let batch = p
        .node
        .closed_batch()
        .expect("the batch naming the call closed");
    p.node
        .handle_journal_committed(at(100), batch)
        .expect("the confirmation names the closed batch");
    let events = node_events(&mut p.node);
    assert!(
        matches!(&events[..], [OwnedNodeEvent::CallNotRun { call_id, why: NotRun::Expired, .. }] if *call_id == id),
        "{events:?}"
    );
    p.pump(100);
    p.pump(200);
    assert_eq!(p.results_sent(id), 1, "answered once");
    assert!(p.node_events.iter().all(|e| !matches!(
        e,
        OwnedNodeEvent::DuplicateCall { .. } | OwnedNodeEvent::Call { .. }
    )));
    assert_eq!(p.daemon.open_calls(), 0);
}

/// Seed 3903 of 5,000 (a microcontroller and a call too large for its frames): the daemon
/// sent the gap that stands for the call before the call's `Undeliverable` state was
/// journaled. When the daemon stopped before that commit, the restored session found
/// the call still queued and its message acknowledged, reported it `Dispatched` (the
/// node never had it) and let it time out. Now the gap waits for the journal like any
/// other outgoing message, and the call ends `Undeliverable` either way.
#[test]
fn a_gap_for_a_call_too_large_for_the_node_waits_for_the_journal() {
    let nc = Config::embedded(1024);
    let node = NodeSession::new(nc, "n1", "test", Some(vec![0; nc.storage_len()])).expect("node");
    let mut p = Pair::new(node);
    p.connect(0);
    p.disconnect(10);
    let big = vec![b'x'; 3000];
    let id = p
        .daemon
        .call(at(20), "job", payload(&big), 5_000)
        .expect("queued while the node is away");
    assert!(commit(&mut p.daemon, &mut p.dj, 20));
    // The node comes back; the daemon answers its hello but its store is slow.
    p.node.handle_connected(at(30));
    p.daemon.handle_connected(at(30));
    let hello = frames(&mut p.node, 30);
    feed(&mut p.daemon, 30, &hello);
    let mut staged = p.dj.clone();
    let down = loop {
        // Whatever the daemon sends before its store commits reaches the node.
        p.daemon_events.extend(daemon_events(&mut p.daemon));
        while let Some(op) = p.daemon.poll_journal() {
            staged.apply(&op);
        }
        let down = frames(&mut p.daemon, 30);
        if !down.is_empty() {
            break down;
        }
        // Nothing can leave before the commit: confirm the batch and look again.
        p.dj = staged.clone();
        let batch = p
            .daemon
            .closed_batch()
            .expect("a batch holds the frames back");
        p.daemon
            .handle_journal_committed(at(30), batch)
            .expect("the confirmation names the closed batch");
    };
    feed(&mut p.node, 30, &down);
    p.node_events.extend(node_events(&mut p.node));
    // The daemon stops now: what its store did not commit is gone.
    let dc = daemon_config();
    p.daemon = DaemonSession::restore(
        dc,
        "n1",
        Some(vec![0; dc.storage_len()]),
        &p.dj,
        &mut sim_rng::SimRng::new(8),
    )
    .expect("restore");
    p.daemon_events.clear();
    p.node.handle_disconnected(at(40));
    p.node_events.clear();
    p.connect(50);
    p.daemon.handle_timeout(at(6_000));
    p.pump(6_000);
    let updates: Vec<CallState> = p
        .daemon_events
        .iter()
        .filter_map(|e| match e {
            OwnedDaemonEvent::CallUpdate { call_id, state, .. } if *call_id == id => Some(*state),
            _ => None,
        })
        .collect();
    assert_eq!(
        updates,
        vec![CallState::Undeliverable],
        "{:?}",
        p.daemon_events
    );
    assert!(
        p.node_events
            .iter()
            .any(|e| matches!(e, OwnedNodeEvent::Gap { .. })),
        "{:?}",
        p.node_events
    );
}

/// Seed 0 (a microcontroller whose replay buffer is full, through the pump): a frame the
/// inbox refuses (`InboxFull`) keeps back every frame received after it, the
/// acknowledgement that frees the replay buffer too. The call at the inbox front waits
/// for room for its answer, the room waits for the acknowledgement, the acknowledgement
/// waits behind the refused frame: nothing moves until the ack timeout closes the
/// connection (1.5 s there) and the next connection resumes. A refused frame's own
/// acknowledgement is applied; one in a later frame is not.
#[test]
fn a_refused_frame_does_not_keep_back_the_acknowledgement_after_it() {
    use protocol_core::pump::{Alloc, Pump, Step};
    use protocol_core::wire::{Ack, Call, Data, HelloAck};

    let c = Config::embedded(1024);
    let mut node = new_node(c);
    node.handle_connected(at(0));
    frames(&mut node, 0);
    let hello_ack = Message::HelloAck(HelloAck {
        version: 1,
        max_frame: 4096,
        idle_timeout_ms: 30_000,
        session: [1; 16],
        resumed: false,
        received: 0,
    });
    feed(&mut node, 0, &[encode(&hello_ack)]);
    node_events(&mut node);
    // Readings fill the replay buffer while the daemon's acknowledgements are away.
    while node.send_event("reading", payload(&[7; 40])).is_ok() {}
    frames(&mut node, 0);
    let readings = node.last_sent();
    let call = |seq: u64, input: &[u8]| {
        let body = Body::Call(Call {
            call_id: seq,
            capability: "job",
            timeout_ms: 0,
            input: payload(input),
        });
        let msg = Message::Data(Data { seq, ack: 0, body });
        let mut buf = vec![0; 4096];
        let n = wire::encode_message(&msg, u32::MAX, &mut buf).expect("encodes");
        buf.truncate(n);
        buf
    };
    // Calls with no time left: their `TimedOut` answers take what room is left, until
    // one finds none and stays at the inbox front; the calls after it fill the inbox,
    // and the last, large one finds it full and is refused. The acknowledgement of every
    // reading comes after them.
    let mut received = Vec::new();
    for seq in 1..=10 {
        received.extend(call(seq, b""));
    }
    received.extend(call(11, &[b'x'; 1_200]));
    received.extend(call(12, &[b'x'; 1_200]));
    let ack = Message::Ack(Ack { received: readings });
    let mut buf = vec![0; 64];
    let n = wire::encode_message(&ack, u32::MAX, &mut buf).expect("encodes");
    received.extend(&buf[..n]);
    let mut input: &[u8] = &received;
    let mut pump = Pump::new();
    let wait = loop {
        match pump.poll(at(10), &mut node, &mut Alloc, &mut input) {
            Step::Events(s) => while s.poll_event().is_some() {},
            Step::Journal(_) => unreachable!("the node keeps no journal"),
            Step::Transmit(_) | Step::Close(_) => {}
            Step::Wait(w) => break w,
        }
    };
    assert_eq!(
        (node.acked(), node.delivered()),
        (readings, 12),
        "{wait:?} with {} bytes unread",
        input.len()
    );
}

fn encode(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0; 4096];
    let n = wire::encode_payload(msg, &mut buf).expect("encodes");
    buf.truncate(n);
    buf
}
