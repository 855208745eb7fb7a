//! The session contract as an adapter author meets it: the holes an outside test pass
//! found through the public API and its documents, each reduced to the steps that show
//! it. Every test here failed before its fix.

#[allow(dead_code)]
#[path = "sim/rng.rs"]
mod sim_rng;
mod support;

use protocol_core::frame::HEADER_LEN;
use protocol_core::session::{
    CallRecord, CallState, Config, DaemonSession, Instant, JournalError, JournalMeta, JournalOp,
    MAX_SEQ, MemJournal, NodeSession, Overflow, OwnedDaemonEvent, OwnedNodeEvent, SeenCall,
    SessionError, SetupError, Slot,
};
use protocol_core::wire::{self, Body, Call, Event, Message, Payload};
use sim_rng::SimRng;
use support::{Daemon, Node, Peer, connect, pump};

const JSON: &str = "application/json";

fn payload(data: &[u8]) -> Payload<'_> {
    Payload {
        content_type: JSON,
        data,
    }
}

fn cfg() -> Config {
    Config::server(8 * 1024).with_max_frame(4096)
}

fn node_with(c: Config) -> Peer<Node> {
    Peer::new(NodeSession::new(c, "n1", "test", Some(vec![0; c.storage_len()])).expect("node"))
}

fn daemon_with(c: Config) -> Peer<Daemon> {
    let mut d = DaemonSession::new(c, "n1", &mut SimRng::new(1)).expect("daemon");
    d.lend(vec![0; c.storage_len()]).expect("lend");
    Peer::new(d)
}

fn restore_node(c: Config, journal: &MemJournal) -> Result<Node, SetupError> {
    NodeSession::restore(c, "n1", "test", Some(vec![0; c.storage_len()]), journal)
}

fn restore_daemon(c: Config, journal: &MemJournal) -> Result<Daemon, SetupError> {
    DaemonSession::restore(
        c,
        "n1",
        Some(vec![0; c.storage_len()]),
        journal,
        &mut SimRng::new(2),
    )
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn messages(frames: &[Vec<u8>]) -> Vec<Message<'_>> {
    frames
        .iter()
        .map(|f| wire::decode_message(f).expect("decodes"))
        .collect()
}

fn frame_of(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let n = wire::encode_message(msg, 8192, &mut buf).expect("encodes");
    buf[HEADER_LEN..n].to_vec()
}

fn disconnect(node: &mut Peer<Node>, daemon: &mut Peer<Daemon>, now: u64) {
    node.s.handle_disconnected(at(now));
    daemon.s.handle_disconnected(at(now));
    node.drain(now);
    daemon.drain(now);
}

// ----- 1. A node names only a session that is durable -----

/// The node's batch recording its session id is not committed when the link drops and
/// the daemon queues a call. Naming that session on the next hello made the daemon take
/// it as held; the node then died before the commit, came back without a session, and
/// was reset: the queued call ended `Lost` without running.
#[test]
fn a_node_names_only_a_durable_session_so_its_own_crash_never_resets_it() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    node.auto_commit = false;
    connect(&mut node, &mut daemon, 0);
    assert!(
        node.s.session_id().is_some(),
        "the hello-ack named a session"
    );
    let id = daemon
        .s
        .call(at(1), "slow.job", payload(b"{}"), 60_000)
        .expect("call");
    pump(&mut node, &mut daemon, 1);
    disconnect(&mut node, &mut daemon, 2);

    // The node reconnects before its batch commits: its hello names no session.
    node.s.handle_connected(at(3));
    let hello = node.drain(3).frames;
    let named = messages(&hello).iter().find_map(|m| match m {
        Message::Hello(h) => Some(h.resume.is_some()),
        _ => None,
    });
    assert_eq!(named, Some(false), "a session not yet durable is not named");
    daemon.s.handle_connected(at(3));
    daemon.feed(3, &hello);
    pump(&mut node, &mut daemon, 3);

    // It dies before the commit and comes back from what its journal holds.
    let journal = node.journal.clone();
    let mut node = Peer::new(restore_node(cfg(), &journal).expect("restore"));
    node.journal = journal;
    disconnect(&mut node, &mut daemon, 4);
    connect(&mut node, &mut daemon, 5);
    pump(&mut node, &mut daemon, 6);

    let de = daemon.take_events();
    assert!(
        !de.iter()
            .any(|e| matches!(e, OwnedDaemonEvent::SessionReset { .. })),
        "{de:?}"
    );
    assert!(
        !de.iter().any(|e| matches!(
            e,
            OwnedDaemonEvent::CallUpdate {
                state: CallState::Lost,
                ..
            }
        )),
        "{de:?}"
    );
    assert!(
        node.take_events()
            .iter()
            .any(|e| matches!(e, OwnedNodeEvent::Call { call_id, .. } if *call_id == id)),
        "the queued call ran"
    );
}

// ----- 2. A gap waits for the journal -----

/// An evicting sender dropped messages that were never journaled; announcing the gap
/// let the daemon acknowledge seqs a restored node had never assigned, and every later
/// resume was refused ("resume beyond what was sent").
#[test]
fn a_gap_is_announced_only_once_its_seqs_are_durable() {
    let mut c = Config::server(200).with_max_frame(2048);
    c.overflow = Overflow::EvictOldest;
    let mut node = node_with(c);
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    node.take_events();
    node.auto_commit = false;
    for i in 0..20u8 {
        node.s
            .send_event("reading", payload(&[i; 10]))
            .expect("evicting sender takes it");
    }
    let out = node.drain(1).frames;
    assert!(
        !messages(&out)
            .iter()
            .any(|m| matches!(m, Message::Gap(_) | Message::Data(_))),
        "nothing of the stream leaves before it is durable: {:?}",
        messages(&out)
    );
    daemon.feed(1, &out);
    daemon.drain(1);

    // The node dies before its batch commits; it must resume and deliver again.
    let journal = node.journal.clone();
    let mut node = Peer::new(restore_node(c, &journal).expect("restore"));
    node.journal = journal;
    disconnect(&mut node, &mut daemon, 2);
    connect(&mut node, &mut daemon, 3);
    assert!(node.s.is_connected() && daemon.s.is_connected());
    node.s
        .send_event("reading", payload(b"after"))
        .expect("event");
    pump(&mut node, &mut daemon, 4);
    assert!(
        daemon.take_events().iter().any(
            |e| matches!(e, OwnedDaemonEvent::Event { payload, .. } if payload.data.as_slice() == b"after")
        ),
        "the restored node delivers"
    );
}

/// With its journal committing, the same sender does announce the gap, and only for
/// durable seqs.
#[test]
fn an_evicting_sender_announces_durable_gaps() {
    let mut c = Config::server(200).with_max_frame(2048);
    c.overflow = Overflow::EvictOldest;
    let mut node = node_with(c);
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    disconnect(&mut node, &mut daemon, 1);
    for i in 0..20u8 {
        node.s
            .send_event("reading", payload(&[i; 10]))
            .expect("event");
    }
    node.drain(2);
    connect(&mut node, &mut daemon, 3);
    let gaps: Vec<_> = daemon
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            OwnedDaemonEvent::Gap { from, to } => Some((from, to)),
            _ => None,
        })
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let (from, to) = gaps[0];
    assert_eq!(from, 1);
    assert!(to < 20 && to <= node.journal.stored_meta().expect("meta").last_sent);
}

// ----- 3. A full inbox is backpressure -----

fn event_frame(seq: u64, data: &[u8]) -> Vec<u8> {
    frame_of(&Message::Data(wire::Data {
        seq,
        ack: 0,
        body: Body::Event(Event {
            name: "big",
            payload: payload(data),
        }),
    }))
}

/// Two 3,000-byte events in one read with 4 KiB frames: the second found the one-frame
/// inbox full and the connection was closed with `Error(Overloaded)`.
#[test]
fn a_full_inbox_refuses_the_frame_without_consuming_it() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    daemon.take_events();
    let big = [7u8; 3000];
    let (first, second) = (event_frame(1, &big), event_frame(2, &big));
    assert_eq!(daemon.s.handle_frame(at(1), &first), Ok(()));
    assert_eq!(
        daemon.s.handle_frame(at(1), &second),
        Err(SessionError::InboxFull)
    );
    assert!(daemon.s.is_connected(), "backpressure does not close");
    assert_eq!(daemon.s.delivered(), 0);
    let d = daemon.drain(1);
    assert!(
        !d.closed && !d.frames.iter().any(|f| f[0] == 7),
        "no error frame"
    );
    // The application took the first: the same frame is taken now.
    assert_eq!(daemon.s.handle_frame(at(1), &second), Ok(()));
    daemon.drain(1);
    let events = daemon
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, OwnedDaemonEvent::Event { .. }))
        .count();
    assert_eq!(events, 2);
    assert_eq!(daemon.s.delivered(), 2);
}

/// A second large call arrives while the first waits at the inbox front for its window
/// entry to commit: draining events does not help there, a commit does.
#[test]
fn a_call_waiting_for_its_window_entry_holds_the_next_frame_back() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    node.take_events();
    node.auto_commit = false;
    let big = [1u8; 3000];
    let a = daemon
        .s
        .call(at(1), "store", payload(&big), 60_000)
        .expect("call");
    let b = daemon
        .s
        .call(at(1), "store", payload(&big), 60_000)
        .expect("call");
    let frames = daemon.drain(1).frames;
    assert_eq!(frames.len(), 2);
    assert_eq!(node.s.handle_frame(at(1), &frames[0]), Ok(()));
    assert!(
        node.drain(1).events.is_empty(),
        "waits for its window entry"
    );
    assert_eq!(
        node.s.handle_frame(at(1), &frames[1]),
        Err(SessionError::InboxFull)
    );
    assert!(node.s.is_connected());
    assert!(node.commit(1));
    let ev = node.drain(1).events;
    assert!(matches!(ev[..], [OwnedNodeEvent::Call { call_id, .. }] if call_id == a));
    assert_eq!(node.s.handle_frame(at(1), &frames[1]), Ok(()));
    assert!(node.drain(1).events.is_empty());
    assert!(node.commit(1));
    let ev = node.drain(1).events;
    assert!(
        matches!(ev[..], [OwnedNodeEvent::Call { call_id, .. }] if call_id == b),
        "{ev:?}"
    );
}

/// A refused frame's acknowledgement still counts, with all it moves (a call the node
/// acknowledged is dispatched; on a node, answers owed get the room it frees).
#[test]
fn a_refused_frame_still_acknowledges() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    daemon.take_events();
    let id = daemon
        .s
        .call(at(1), "x", payload(b"{}"), 60_000)
        .expect("call");
    daemon.drain(1);
    let event = |seq, ack| {
        frame_of(&Message::Data(wire::Data {
            seq,
            ack,
            body: Body::Event(Event {
                name: "big",
                payload: payload(&[7; 3000]),
            }),
        }))
    };
    assert_eq!(daemon.s.handle_frame(at(2), &event(1, 0)), Ok(()));
    // The node's next data frame acknowledges the call; its body finds no room.
    assert_eq!(
        daemon.s.handle_frame(at(2), &event(2, 1)),
        Err(SessionError::InboxFull)
    );
    assert_eq!(daemon.s.acked(), 1, "the ack was applied");
    assert_eq!(
        daemon.s.call_state(id).map(|c| c.state),
        Some(CallState::Dispatched)
    );
    assert_eq!(daemon.s.delivered(), 0);
}

// ----- 4. Restore checks the journal like a peer -----

fn journal_with(meta: JournalMeta, ops: &[JournalOp<'_>]) -> MemJournal {
    let mut j = MemJournal::new();
    for op in ops {
        j.apply(op);
    }
    j.apply(&JournalOp::Meta(meta));
    j
}

fn meta(last_sent: u64, acked: u64, received: u64) -> JournalMeta {
    JournalMeta {
        session: Some([3; 16]),
        established: true,
        last_sent,
        acked,
        received,
        next_call_id: 1,
        id_state: [0; 2],
    }
}

fn inconsistent(r: Result<impl Sized, SetupError>) -> bool {
    matches!(r, Err(SetupError::JournalInconsistent { .. }))
}

fn body(b: &Body<'_>) -> Vec<u8> {
    postcard::to_allocvec(b).expect("encodes")
}

#[test]
fn a_corrupt_or_foreign_journal_is_a_typed_error_never_a_panic() {
    let c = cfg();
    let call = body(&Body::Call(Call {
        call_id: 4,
        capability: "x",
        timeout_ms: 1,
        input: payload(b""),
    }));
    let event = body(&Body::Event(Event {
        name: "e",
        payload: payload(b"x"),
    }));
    let positions = [
        meta(u64::MAX, u64::MAX, 0),
        meta(u64::MAX, 0, 0),
        meta(MAX_SEQ + 1, 0, 0),
        meta(0, 0, MAX_SEQ + 1),
        meta(5, 9, 0),
        // Messages 1..=3 were sent and none is stored.
        meta(3, 0, 0),
    ];
    for m in positions {
        let j = journal_with(m, &[]);
        assert!(inconsistent(restore_node(c, &j)), "node {m:?}");
        assert!(inconsistent(restore_daemon(c, &j)), "daemon {m:?}");
    }
    // Messages out of order, undecodable, or of the other direction.
    type Rows = Vec<(u64, Vec<u8>)>;
    let cases: [(&str, Rows); 3] = [
        ("a hole", vec![(1, event.clone()), (3, event.clone())]),
        ("garbage", vec![(1, vec![0xFF, 0xFF, 0xFF])]),
        ("a call from a node", vec![(1, call.clone())]),
    ];
    for (what, rows) in cases {
        let last = rows.last().map_or(0, |r| r.0);
        let ops: Vec<_> = rows
            .iter()
            .map(|(seq, b)| JournalOp::Append { seq: *seq, body: b })
            .collect();
        let j = journal_with(meta(last, 0, 0), &ops);
        assert!(inconsistent(restore_node(c, &j)), "node: {what}");
    }
    let j = journal_with(
        meta(1, 0, 0),
        &[JournalOp::Append {
            seq: 1,
            body: &event,
        }],
    );
    assert!(
        inconsistent(restore_daemon(c, &j)),
        "an event from a daemon"
    );
    // The same call id in two window slots; a call whose message was never sent.
    let seen = SeenCall {
        id: 9,
        slot: Slot::Done { result_seq: 1 },
        age: 0,
    };
    let j = journal_with(
        meta(0, 0, 0),
        &[
            JournalOp::PutSeen {
                slot: 0,
                call: seen,
            },
            JournalOp::PutSeen {
                slot: 1,
                call: seen,
            },
        ],
    );
    assert!(inconsistent(restore_node(c, &j)));
    let rec = CallRecord {
        id: 4,
        seq: 7,
        deadline: at(10),
        timeout_ms: 10,
        state: CallState::Queued,
        unreported: false,
        cancel_requested: false,
    };
    let j = journal_with(meta(0, 0, 0), &[JournalOp::PutCall(rec)]);
    assert!(inconsistent(restore_daemon(c, &j)));
}

#[test]
fn a_sound_journal_at_the_edge_of_the_range_restores() {
    let c = cfg();
    let j = journal_with(meta(MAX_SEQ, MAX_SEQ, MAX_SEQ), &[]);
    let mut node = restore_node(c, &j).expect("node at MAX_SEQ");
    assert_eq!(node.send_event("e", payload(b"x")), Err(SessionError::Full));
    let mut daemon = restore_daemon(c, &j).expect("daemon at MAX_SEQ");
    let _ = daemon.poll_journal();
    assert_eq!(daemon.last_sent(), MAX_SEQ);
}

// ----- 5. A confirmation names its batch -----

fn drain_ops(d: &mut Daemon) -> usize {
    std::iter::from_fn(|| d.poll_journal().map(|_| ())).count()
}

/// A confirmation before the batch closed counted the ops polled so far as durable: a
/// call went out before its id was, and a restarted daemon handed the id out again.
#[test]
fn a_confirmation_must_name_the_closed_batch() {
    let c = cfg();
    let mut d = DaemonSession::<Vec<u8>>::new(c, "n1", &mut SimRng::new(1)).expect("daemon");
    d.lend(vec![0; c.storage_len()]).expect("lend");
    assert!(drain_ops(&mut d) > 0);
    let first = d.closed_batch().expect("closed");
    d.handle_journal_committed(at(0), first)
        .expect("first batch");
    assert_eq!(
        d.handle_journal_committed(at(0), first),
        Err(JournalError::NoClosedBatch),
        "a duplicate"
    );

    d.call(at(0), "x", payload(b"{}"), 1_000).expect("call");
    assert!(d.poll_journal().is_some(), "the batch is open");
    assert_eq!(d.closed_batch(), None);
    assert_eq!(
        d.handle_journal_committed(at(0), first),
        Err(JournalError::NoClosedBatch),
        "an open batch cannot be confirmed"
    );
    drain_ops(&mut d);
    let second = d.closed_batch().expect("closed");
    assert_ne!(second, first);
    assert_eq!(
        d.handle_journal_committed(at(0), first),
        Err(JournalError::WrongBatch {
            closed: second,
            named: first
        }),
        "a late confirmation"
    );
    assert_eq!(
        d.handle_journal_failed(at(0), first),
        Err(JournalError::WrongBatch {
            closed: second,
            named: first
        })
    );
    assert_eq!(d.handle_journal_committed(at(0), second), Ok(()));
}

/// The call ids in stored call messages count when a restored daemon picks its next id,
/// even when the call's own record is gone.
#[test]
fn a_restored_daemon_never_reuses_a_call_id_it_sent() {
    let c = cfg();
    let call = body(&Body::Call(Call {
        call_id: 7,
        capability: "x",
        timeout_ms: 1_000,
        input: payload(b""),
    }));
    let mut m = meta(1, 0, 0);
    m.next_call_id = 1;
    let j = journal_with(
        m,
        &[JournalOp::Append {
            seq: 1,
            body: &call,
        }],
    );
    let mut d = restore_daemon(c, &j).expect("restore");
    assert_eq!(d.call(at(0), "x", payload(b""), 1_000), Ok(8));
}

// ----- 6. A failed batch comes back at its retry deadline -----

#[test]
fn a_failed_batch_waits_for_its_retry_deadline_which_backs_off() {
    let c = cfg();
    let mut d = DaemonSession::<Vec<u8>>::new(c, "n1", &mut SimRng::new(1)).expect("daemon");
    d.lend(vec![0; c.storage_len()]).expect("lend");
    let mut now = 1_000;
    let mut delays = Vec::new();
    for _ in 0..9 {
        assert!(d.journal_pending());
        drain_ops(&mut d);
        let id = d.closed_batch().expect("closed");
        d.handle_journal_failed(at(now), id).expect("failed");
        assert!(!d.journal_pending(), "not at once");
        assert!(d.poll_journal().is_none());
        let retry = d.poll_timeout().expect("a retry deadline");
        delays.push(retry.as_millis() - now);
        d.handle_timeout(at(retry.as_millis() - 1));
        assert!(!d.journal_pending(), "not before it");
        now = retry.as_millis();
        d.handle_timeout(at(now));
    }
    assert_eq!(delays, [50, 100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
    // A success resets the backoff.
    drain_ops(&mut d);
    let id = d.closed_batch().expect("closed");
    d.handle_journal_committed(at(now), id).expect("committed");
    d.call(at(now), "x", payload(b""), 60_000).expect("call");
    drain_ops(&mut d);
    let id = d.closed_batch().expect("closed");
    d.handle_journal_failed(at(now), id).expect("failed");
    assert_eq!(d.poll_timeout(), Some(at(now + 50)));
}
