//! Session behaviour between one node and one daemon over a perfect in-memory pipe,
//! driven the way a driver does (events, journal batches, frames).

#[allow(dead_code)]
#[path = "sim/rng.rs"]
mod sim_rng;
mod support;
use sim_rng::SimRng;

use protocol_core::frame::{HEADER_LEN, MIN_MAX_FRAME};
use protocol_core::session::{
    CallState, CloseReason, Config, DaemonSession, INTERRUPTED, Instant, MAX_SEQ,
    MIN_IDLE_TIMEOUT_MS, NodeSession, OwnedDaemonEvent, OwnedNodeEvent, OwnedOutcome, OwnedPayload,
    SessionError, Transmit, TransmitError,
};
use protocol_core::wire::{
    self, Body, Call, Data, ErrorCode, Gap, GoodbyeReason, Message, Outcome, Payload, Stage,
    VersionRange,
};
use support::{Daemon, Node, Peer, connect, pump, tick};

const JSON: &str = "application/json";

fn cfg() -> Config {
    let mut c = Config::server(2048).with_max_frame(4096);
    c.durable = true;
    c
}

fn node_with(c: Config) -> Peer<Node> {
    Peer::new(NodeSession::new(c, "n1", "test", Some(vec![0; c.storage_len()])).expect("node"))
}

fn daemon_with(c: Config) -> Peer<Daemon> {
    let mut rng = rng(1);
    let mut d = DaemonSession::new(c, "n1", &mut rng).expect("daemon");
    d.lend(vec![0; c.storage_len()]).expect("lend");
    Peer::new(d)
}

fn rng(seed: u64) -> SimRng {
    SimRng::new(seed)
}

fn payload(data: &[u8]) -> Payload<'_> {
    Payload {
        content_type: JSON,
        data,
    }
}

#[test]
fn hello_then_a_call_round_trip() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    assert!(node.s.is_connected() && daemon.s.is_connected());
    assert!(matches!(
        node.take_events()[..],
        [OwnedNodeEvent::Connected { resumed: false, .. }]
    ));
    assert!(matches!(
        &daemon.take_events()[..],
        [OwnedDaemonEvent::Connected { resumed: false, platform, .. }] if platform == "test"
    ));

    let id = daemon
        .s
        .call(
            Instant::from_millis(10),
            "sys.health",
            payload(b"{}"),
            1_000,
        )
        .expect("call");
    pump(&mut node, &mut daemon, 10);
    let ev = node.take_events();
    assert!(
        matches!(&ev[..], [OwnedNodeEvent::Call { call_id, capability, deadline, .. }]
            if *call_id == id && capability == "sys.health" && *deadline == Instant::from_millis(1_010)),
        "{ev:?}"
    );
    tick(&mut node, &mut daemon, 30);
    assert_eq!(
        daemon.take_events(),
        vec![OwnedDaemonEvent::CallUpdate {
            call_id: id,
            state: CallState::Dispatched,
            seq: None,
            outcome: None
        }]
    );
    node.s.progress(id, Stage::Running, "").expect("progress");
    node.s
        .complete(id, Outcome::Success(payload(b"ok")))
        .expect("complete");
    pump(&mut node, &mut daemon, 40);
    let ev = daemon.take_events();
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(matches!(
        ev[0],
        OwnedDaemonEvent::CallUpdate {
            state: CallState::Running,
            ..
        }
    ));
    assert_eq!(
        ev[1],
        OwnedDaemonEvent::CallUpdate {
            call_id: id,
            state: CallState::Succeeded,
            seq: Some(2),
            outcome: Some(OwnedOutcome::Success(OwnedPayload {
                content_type: JSON.into(),
                data: b"ok".to_vec()
            }))
        }
    );
    assert_eq!(daemon.s.open_calls(), 0);
}

fn encode(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 20];
    let n = wire::encode_payload(msg, &mut buf).expect("encode");
    buf.truncate(n);
    buf
}

fn decoded(frames: &[Vec<u8>]) -> Vec<Message<'_>> {
    frames
        .iter()
        .map(|f| wire::decode_message(f).expect("our frames decode"))
        .collect()
}

/// Connects a daemon to a scripted peer: feeds a hello, returns the daemon's frames.
fn hello_from(node_id: &str, max_frame: u32) -> Vec<u8> {
    encode(&Message::Hello(wire::Hello {
        versions: wire::PROTOCOL_VERSIONS,
        max_frame,
        idle_timeout_ms: 30_000,
        node_id,
        platform: "scripted",
        resume: None,
    }))
}

#[test]
fn version_mismatch_is_a_typed_error_naming_both_ranges() {
    let mut nc = cfg();
    nc.versions = VersionRange::new(5, 6);
    let mut node = node_with(nc);
    let mut daemon = daemon_with(cfg());
    node.s.handle_connected(Instant::ZERO);
    daemon.s.handle_connected(Instant::ZERO);
    let hello = node.drain(0).frames;
    daemon.feed(0, &hello);
    let d = daemon.drain(0);
    assert!(d.closed, "the daemon closes after the error frame");
    let expected = ErrorCode::VersionMismatch {
        client: VersionRange::new(5, 6),
        server: wire::PROTOCOL_VERSIONS,
    };
    assert!(matches!(decoded(&d.frames)[..], [Message::Error(e)] if e.code == expected));
    assert_eq!(
        d.events,
        vec![OwnedDaemonEvent::Disconnected(CloseReason::SentError(
            expected
        ))]
    );
    node.feed(0, &d.frames);
    let n = node.drain(0);
    assert!(n.closed);
    assert_eq!(
        n.events,
        vec![OwnedNodeEvent::Disconnected(CloseReason::PeerError(
            expected
        ))]
    );
}

#[test]
fn malformed_frame_gets_an_error_frame_then_close() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    daemon.take_events();
    daemon
        .s
        .handle_frame(Instant::ZERO, &[2, 0xff])
        .expect("taken");
    let d = daemon.drain(0);
    assert!(
        matches!(decoded(&d.frames)[..], [Message::Error(e)] if e.code == ErrorCode::Malformed)
    );
    assert!(d.closed && !daemon.s.has_connection());
    assert_eq!(
        d.events,
        vec![OwnedDaemonEvent::Disconnected(CloseReason::SentError(
            ErrorCode::Malformed
        ))]
    );
}

#[test]
fn a_message_in_the_wrong_direction_is_refused() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    let call_from_node = encode(&Message::Data(Data {
        seq: 1,
        ack: 0,
        body: Body::Call(Call {
            call_id: 1,
            capability: "x",
            timeout_ms: 1,
            input: payload(b""),
        }),
    }));
    daemon
        .s
        .handle_frame(Instant::ZERO, &call_from_node)
        .expect("taken");
    let d = daemon.drain(0);
    assert!(matches!(
        decoded(&d.frames)[..],
        [Message::Error(e)] if e.code == ErrorCode::UnexpectedMessage
    ));
    assert!(d.closed);
}

#[test]
fn never_sends_more_than_the_peer_accepts() {
    let nc = cfg().with_max_frame(MIN_MAX_FRAME);
    let mut node = node_with(nc);
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    let big = vec![b'x'; 300];
    assert_eq!(
        daemon
            .s
            .call(Instant::ZERO, "sys.health", payload(&big), 1_000),
        Err(SessionError::TooLarge)
    );
    let small = vec![b'x'; 100];
    daemon
        .s
        .call(Instant::ZERO, "sys.health", payload(&small), 1_000)
        .expect("fits");
    let d = daemon.drain(0);
    assert!(!d.frames.is_empty());
    assert!(d.frames.iter().all(|f| f.len() <= MIN_MAX_FRAME as usize));
}

/// Regression: a message above the peer's limit, queued while disconnected, used to wedge
/// the connection (`BufferTooSmall` forever: no hello-ack, ack or ping went out, and no
/// deadline came). It goes out as a gap, the call ends `Undeliverable` at once, and the
/// connection carries on.
#[test]
fn a_message_above_the_peers_limit_queued_while_away_does_not_wedge_the_connection() {
    let mut daemon = daemon_with(Config::server(8192).with_max_frame(4096));
    let big = vec![b'x'; 3_000];
    let id = daemon
        .s
        .call(Instant::ZERO, "sys.health", payload(&big), 60_000)
        .expect("fits our own limit");
    let small = daemon
        .s
        .call(Instant::ZERO, "sys.health", payload(b"{}"), 60_000)
        .expect("call");
    daemon.drain(0);
    // The node accepts 2 KiB frames only.
    let mut node = node_with(cfg().with_max_frame(2048));
    connect(&mut node, &mut daemon, 1);
    let de = daemon.take_events();
    assert!(
        de.contains(&OwnedDaemonEvent::CallUpdate {
            call_id: id,
            state: CallState::Undeliverable,
            seq: None,
            outcome: None
        }),
        "{de:?}"
    );
    let ne = node.take_events();
    assert!(
        ne.contains(&OwnedNodeEvent::Gap { from: 1, to: 1 }),
        "{ne:?}"
    );
    assert!(
        ne.iter()
            .any(|e| matches!(e, OwnedNodeEvent::Call { call_id, .. } if *call_id == small)),
        "{ne:?}"
    );
    // Keep-alive and timers still work.
    assert!(daemon.s.poll_timeout().is_some());
    assert!(node.s.poll_timeout().is_some());
    tick(&mut node, &mut daemon, 5_001);
    assert!(node.s.is_connected() && daemon.s.is_connected());
}

/// A transmit buffer of `transmit_len()` always holds the next frame; a smaller one
/// consumes nothing.
#[test]
fn a_small_transmit_buffer_consumes_nothing() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(Config::server(8192).with_max_frame(4096));
    connect(&mut node, &mut daemon, 0);
    let big = vec![b'y'; 3_000];
    daemon
        .s
        .call(Instant::ZERO, "echo", payload(&big), 60_000)
        .expect("call");
    daemon.commit(0);
    let mut small = vec![0u8; 100];
    let needed = match daemon.s.poll_transmit(Instant::ZERO, &mut small) {
        Err(TransmitError::BufferTooSmall { needed }) => needed,
        other => panic!("expected BufferTooSmall, got {other:?}"),
    };
    assert!(needed > 3_000 && needed <= cfg().transmit_len());
    let mut buf = vec![0u8; cfg().transmit_len()];
    assert_eq!(
        daemon.s.poll_transmit(Instant::ZERO, &mut buf),
        Ok(Some(Transmit::Frame(needed)))
    );
    assert!(matches!(
        wire::decode_message(&buf[HEADER_LEN..needed]),
        Ok(Message::Data(Data {
            seq: 1,
            body: Body::Call(_),
            ..
        }))
    ));
}

/// Regression: a journal failure inside `call()` used to leave the call queued and
/// journaled while the caller got an error, and the next call reused its id. Journal
/// writes are outputs now: the call waits for its batch, a failed batch is emitted
/// again, nothing goes out before it is durable, and ids are never reused.
#[test]
fn a_failed_journal_batch_holds_the_call_back_until_it_is_durable() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    daemon.auto_commit = false;
    let first = daemon
        .s
        .call(Instant::ZERO, "echo", payload(b"1"), 60_000)
        .expect("call");
    daemon.fail_batches = 1;
    assert!(daemon.commit(0), "a batch to fail");
    let d = daemon.drain(0);
    assert_eq!(d.events, vec![OwnedDaemonEvent::JournalFailed]);
    assert!(d.frames.is_empty(), "nothing goes out before it is durable");
    assert_eq!(daemon.journal.call_count(), 0);
    let second = daemon
        .s
        .call(Instant::ZERO, "echo", payload(b"2"), 60_000)
        .expect("call");
    assert_eq!(second, first + 1, "ids are never reused");
    // The failed batch comes back at its retry deadline, not at once.
    assert!(!daemon.commit(0), "no batch before the retry deadline");
    assert_eq!(daemon.s.poll_timeout(), Some(Instant::from_millis(50)));
    daemon.s.handle_timeout(Instant::from_millis(50));
    assert!(daemon.commit(50));
    assert_eq!(daemon.journal.call_count(), 2);
    assert_eq!(daemon.journal.message_count(), 2);
    daemon.auto_commit = true;
    pump(&mut node, &mut daemon, 1);
    let calls: Vec<u64> = node
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            OwnedNodeEvent::Call { call_id, .. } => Some(call_id),
            _ => None,
        })
        .collect();
    assert_eq!(calls, vec![first, second], "each call runs once");
}

/// Acknowledgements wait for the journal: a received position is acknowledged only
/// once the batch that records it committed.
#[test]
fn acks_wait_for_the_journal() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    daemon.auto_commit = false;
    node.s.send_event("e", payload(b"1")).expect("send");
    node.s.send_event("e", payload(b"2")).expect("send");
    let n = node.drain(0);
    daemon.feed(0, &n.frames);
    let d = daemon.drain(0);
    assert_eq!(
        d.events
            .iter()
            .filter(|e| matches!(e, OwnedDaemonEvent::Event { .. }))
            .count(),
        2
    );
    assert!(
        !decoded(&d.frames)
            .iter()
            .any(|m| matches!(m, Message::Ack(_))),
        "no ack before the commit"
    );
    assert!(daemon.commit(0));
    let d = daemon.drain(0);
    assert!(
        decoded(&d.frames)
            .iter()
            .any(|m| matches!(m, Message::Ack(a) if a.received == 2)),
        "{:?}",
        decoded(&d.frames)
    );
}

/// Regression: a peer's `Gap { to: u64::MAX }` set the delivered position to
/// `u64::MAX` and the next `+ 1` overflowed, in both roles. Every position a peer sends
/// is validated before it moves state.
#[test]
fn extreme_positions_from_a_peer_are_refused_before_they_move_state() {
    let hostile = [
        Message::Gap(Gap {
            from: 1,
            to: u64::MAX,
        }),
        Message::Gap(Gap { from: 0, to: 3 }),
        Message::Gap(Gap { from: 5, to: 4 }),
        Message::Gap(Gap {
            from: 1,
            to: MAX_SEQ + 1,
        }),
        Message::Ack(wire::Ack { received: u64::MAX }),
        Message::Data(Data {
            seq: u64::MAX,
            ack: 0,
            body: Body::Event(wire::Event {
                name: "e",
                payload: payload(b""),
            }),
        }),
        Message::Data(Data {
            seq: 1,
            ack: u64::MAX,
            body: Body::Event(wire::Event {
                name: "e",
                payload: payload(b""),
            }),
        }),
    ];
    for msg in &hostile {
        // Daemon role.
        let mut node = node_with(cfg());
        let mut daemon = daemon_with(cfg());
        connect(&mut node, &mut daemon, 0);
        daemon.take_events();
        daemon
            .s
            .handle_frame(Instant::ZERO, &encode(msg))
            .expect("taken");
        let d = daemon.drain(0);
        assert!(d.closed, "{msg:?} closes the connection");
        assert!(
            matches!(decoded(&d.frames)[..], [Message::Error(_)]),
            "{msg:?}: {:?}",
            d.frames
        );
        assert_eq!(daemon.s.delivered(), 0, "{msg:?} moved the position");
        // Node role (a node only takes calls and cancels as data).
        let mut node = node_with(cfg());
        let mut daemon = daemon_with(cfg());
        connect(&mut node, &mut daemon, 0);
        let msg = match msg {
            Message::Data(d) => Message::Data(Data {
                seq: d.seq,
                ack: d.ack,
                body: Body::Cancel(wire::Cancel { call_id: 1 }),
            }),
            other => other.clone(),
        };
        node.s
            .handle_frame(Instant::ZERO, &encode(&msg))
            .expect("taken");
        let n = node.drain(0);
        assert!(n.closed, "{msg:?} closes the connection");
        assert_eq!(node.s.delivered(), 0, "{msg:?} moved the position");
    }
    // The largest legal position is taken, and the session still works past it.
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    daemon
        .s
        .handle_frame(
            Instant::ZERO,
            &encode(&Message::Gap(Gap {
                from: 1,
                to: MAX_SEQ,
            })),
        )
        .expect("taken");
    let d = daemon.drain(0);
    assert!(!d.closed);
    assert_eq!(daemon.s.delivered(), MAX_SEQ);
    let beyond = Message::Data(Data {
        seq: MAX_SEQ + 1,
        ack: 0,
        body: Body::Event(wire::Event {
            name: "e",
            payload: payload(b""),
        }),
    });
    daemon
        .s
        .handle_frame(Instant::ZERO, &encode(&beyond))
        .expect("taken");
    assert!(daemon.drain(0).closed);
}

/// Regression: the time left put on the wire was `now.ms_until(deadline)`, so a clock
/// that stepped back stretched the call. It never exceeds the timeout asked for.
#[test]
fn a_clock_stepping_back_does_not_stretch_a_call() {
    let mut daemon = daemon_with(cfg());
    daemon.s.handle_connected(Instant::from_millis(10_000));
    daemon.feed(10_000, &[hello_from("n1", 4096)]);
    daemon.drain(10_000);
    let ack = encode(&Message::Ack(wire::Ack { received: 0 }));
    daemon.feed(10_000, &[ack]);
    daemon
        .s
        .call(Instant::from_millis(10_000), "echo", payload(b"{}"), 1_000)
        .expect("call");
    // The clock steps back by five seconds before the call goes out.
    let d = daemon.drain(5_000);
    let timeouts: Vec<u32> = decoded(&d.frames)
        .iter()
        .filter_map(|m| match m {
            Message::Data(Data {
                body: Body::Call(c),
                ..
            }) => Some(c.timeout_ms),
            _ => None,
        })
        .collect();
    assert_eq!(timeouts, vec![1_000]);
}

/// A transport that loses every packet may never say so (a QUIC connection whose
/// daemon restarted and whose probes all vanished): an unanswered ping ends the
/// connection after the ack timeout, not at the idle timeout.
#[test]
fn an_unanswered_ping_ends_the_connection_after_the_ack_timeout() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    node.take_events();
    let t = node.s.poll_timeout().expect("a deadline");
    assert_eq!(t, Instant::from_millis(5_000));
    node.s.handle_timeout(t);
    let n = node.drain(t.as_millis());
    assert!(matches!(decoded(&n.frames)[..], [Message::Ping(_)]));
    assert_eq!(node.s.poll_timeout(), Some(Instant::from_millis(10_000)));
    node.s.handle_timeout(Instant::from_millis(9_999));
    assert!(!node.drain(9_999).closed);
    node.s.handle_timeout(Instant::from_millis(10_000));
    let n = node.drain(10_000);
    assert!(n.closed);
    assert_eq!(
        n.events,
        vec![OwnedNodeEvent::Disconnected(CloseReason::AckTimeout)]
    );
}

/// Anything from the peer answers a ping: the connection stays, and the next ping
/// starts its own wait.
#[test]
fn an_answered_ping_keeps_the_connection() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    node.s.handle_timeout(Instant::from_millis(5_000));
    let n = node.drain(5_000);
    daemon.feed(5_001, &n.frames);
    let d = daemon.drain(5_001);
    assert!(
        decoded(&d.frames)
            .iter()
            .any(|m| matches!(m, Message::Pong(_)))
    );
    node.feed(5_002, &d.frames);
    node.drain(5_002);
    // Five seconds after the node last sent: the connection stays, the next ping goes
    // and waits on its own.
    node.s.handle_timeout(Instant::from_millis(10_000));
    let n = node.drain(10_000);
    assert!(!n.closed, "the pong answered the ping");
    assert!(matches!(decoded(&n.frames)[..], [Message::Ping(_)]));
    assert_eq!(node.s.poll_timeout(), Some(Instant::from_millis(15_000)));
    node.s.handle_timeout(Instant::from_millis(15_000));
    assert!(node.drain(15_000).closed, "the second ping went unanswered");
}

#[test]
fn keep_alive_then_idle_timeout_close_the_connection() {
    // Pings left unanswered longer than the idle timeout: the idle timeout ends it.
    let mut c = cfg();
    c.ack_timeout_ms = 60_000;
    let mut node = node_with(c);
    let mut daemon = daemon_with(c);
    connect(&mut node, &mut daemon, 0);
    // The daemon goes silent: the node pings at the keep-alive interval...
    let t = node.s.poll_timeout().expect("a deadline");
    assert_eq!(t, Instant::from_millis(5_000));
    node.s.handle_timeout(t);
    let n = node.drain(t.as_millis());
    assert!(matches!(decoded(&n.frames)[..], [Message::Ping(_)]));
    // ...and gives up when nothing came back for the idle timeout.
    node.s.handle_timeout(Instant::from_millis(30_000));
    let n = node.drain(30_000);
    assert!(matches!(
        decoded(&n.frames)[..],
        [Message::Goodbye(g)] if g.reason == GoodbyeReason::IdleTimeout
    ));
    assert!(n.closed);
}

/// A peer cannot make us ping in a loop with a tiny idle timeout.
#[test]
fn a_peers_tiny_idle_timeout_is_clamped() {
    let mut daemon = daemon_with(cfg());
    daemon.s.handle_connected(Instant::ZERO);
    let hello = encode(&Message::Hello(wire::Hello {
        versions: wire::PROTOCOL_VERSIONS,
        max_frame: 4096,
        idle_timeout_ms: 0,
        node_id: "n1",
        platform: "p",
        resume: None,
    }));
    daemon.feed(0, &[hello]);
    daemon.drain(0);
    daemon.feed(0, &[encode(&Message::Ack(wire::Ack { received: 0 }))]);
    daemon.drain(0);
    let t = daemon.s.poll_timeout().expect("deadline");
    assert!(
        t >= Instant::from_millis(u64::from(MIN_IDLE_TIMEOUT_MS) / 3),
        "{t:?}"
    );
}

#[test]
fn goodbye_closes_both_sides_cleanly() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    daemon.take_events();
    node.s.close(Instant::ZERO, GoodbyeReason::Shutdown);
    let n = node.drain(0);
    assert!(n.closed);
    daemon.feed(0, &n.frames);
    let d = daemon.drain(0);
    assert!(d.closed);
    assert_eq!(
        d.events,
        vec![OwnedDaemonEvent::Disconnected(CloseReason::Peer(
            GoodbyeReason::Shutdown
        ))]
    );
}

#[test]
fn a_call_times_out_on_the_daemon_even_if_the_node_never_comes() {
    let mut daemon = daemon_with(cfg());
    let id = daemon
        .s
        .call(Instant::ZERO, "sys.health", payload(b"{}"), 250)
        .expect("call");
    daemon.drain(0);
    assert_eq!(daemon.s.poll_timeout(), Some(Instant::from_millis(250)));
    daemon.s.handle_timeout(Instant::from_millis(250));
    let d = daemon.drain(250);
    assert_eq!(
        d.events,
        vec![OwnedDaemonEvent::CallUpdate {
            call_id: id,
            state: CallState::TimedOut,
            seq: None,
            outcome: None
        }]
    );
    assert_eq!(daemon.s.call_state(id), None);
    assert_eq!(daemon.s.poll_timeout(), None, "nothing is timed any more");
}

#[test]
fn a_full_replay_buffer_refuses_instead_of_dropping() {
    let mut c = cfg();
    c.replay_bytes = 200;
    let mut node = node_with(c);
    let mut accepted = 0;
    let err = loop {
        match node.s.send_event("reading", payload(b"0123456789")) {
            Ok(seq) => {
                accepted += 1;
                assert_eq!(seq, accepted);
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err, SessionError::Full);
    assert_eq!(node.s.last_sent(), accepted);
    // Once the daemon acknowledges, there is room again, and nothing was lost.
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    tick(&mut node, &mut daemon, 100);
    let delivered = daemon
        .take_events()
        .iter()
        .filter(|e| matches!(e, OwnedDaemonEvent::Event { .. }))
        .count() as u64;
    assert_eq!(delivered, accepted);
    assert!(node.s.send_event("reading", payload(b"more")).is_ok());
}

#[test]
fn a_restarted_daemon_resumes_from_its_journal() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    daemon.s.handle_disconnected(Instant::from_millis(1));
    node.s.handle_disconnected(Instant::from_millis(1));
    let id = daemon
        .s
        .call(Instant::from_millis(1), "slow.job", payload(b"{}"), 60_000)
        .expect("call");
    daemon.drain(1);
    // The daemon dies before the call leaves it.
    let session = daemon.s.session_id();
    let journal = daemon.journal.clone();
    let c = cfg();
    let restored = DaemonSession::restore(
        c,
        "n1",
        Some(vec![0; c.storage_len()]),
        &journal,
        &mut rng(2),
    )
    .expect("restore");
    let mut daemon = Peer::new(restored);
    daemon.journal = journal;
    assert_eq!(daemon.s.session_id(), session);
    assert_eq!(
        daemon.s.call_state(id).map(|c| c.state),
        Some(CallState::Queued)
    );
    node.take_events();
    connect(&mut node, &mut daemon, 10);
    assert!(matches!(
        daemon.take_events()[..],
        [OwnedDaemonEvent::Connected { resumed: true, .. }, ..]
    ));
    assert!(
        node.take_events()
            .iter()
            .any(|e| matches!(e, OwnedNodeEvent::Call { call_id, .. } if *call_id == id)),
        "the journaled call reached the node"
    );
}

#[test]
fn a_replayed_call_is_answered_again_not_run_again() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    node.take_events();
    let id = daemon
        .s
        .call(Instant::ZERO, "sys.health", payload(b"{}"), 10_000)
        .expect("call");
    let d = daemon.drain(0);
    node.feed(0, &d.frames);
    node.drain(0);
    assert_eq!(
        node.take_events()
            .iter()
            .filter(|e| matches!(e, OwnedNodeEvent::Call { .. }))
            .count(),
        1
    );
    node.s
        .complete(id, Outcome::Failed { reason: "nope" })
        .expect("complete");
    node.drain(0);
    // The same call id again, as a new stream message (a daemon that lost track of it).
    let again = encode(&Message::Data(Data {
        seq: 2,
        ack: 0,
        body: Body::Call(Call {
            call_id: id,
            capability: "sys.health",
            timeout_ms: 10_000,
            input: payload(b"{}"),
        }),
    }));
    node.feed(0, &[again]);
    let n = node.drain(0);
    assert!(
        matches!(n.events[..], [OwnedNodeEvent::DuplicateCall { call_id, answer: Some(_), .. }] if call_id == id),
        "{:?}",
        n.events
    );
    let answers: Vec<_> = decoded(&n.frames)
        .into_iter()
        .filter_map(|m| match m {
            Message::Data(Data {
                body: Body::Result(r),
                ..
            }) => Some(r.outcome),
            _ => None,
        })
        .collect();
    assert!(
        answers.contains(&Outcome::Failed { reason: "nope" }),
        "{answers:?}"
    );
}

#[test]
fn a_node_that_lost_its_memory_gets_a_new_session_and_calls_are_lost_not_replayed() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    let id = daemon
        .s
        .call(Instant::ZERO, "sys.health", payload(b"{}"), 10_000)
        .expect("call");
    pump(&mut node, &mut daemon, 0);
    let old = daemon.s.session_id();
    daemon.take_events();
    // The node reboots without its RAM.
    daemon.s.handle_disconnected(Instant::from_millis(1));
    daemon.drain(1);
    let mut node = node_with(cfg());
    connect(&mut node, &mut daemon, 2);
    assert_ne!(daemon.s.session_id(), old);
    let de = daemon.take_events();
    assert!(
        de.iter()
            .any(|e| matches!(e, OwnedDaemonEvent::SessionReset { .. })),
        "{de:?}"
    );
    assert!(de.contains(&OwnedDaemonEvent::CallUpdate {
        call_id: id,
        state: CallState::Lost,
        seq: None,
        outcome: None
    }));
    assert!(
        !node
            .take_events()
            .iter()
            .any(|e| matches!(e, OwnedNodeEvent::Call { .. }))
    );
}

/// A journaled node hands a call out only once its window entry is durable; after a
/// crash it answers a call that was running `Failed(INTERRUPTED)` and never runs it
/// again, even when the daemon replays it.
#[test]
fn a_restarted_node_never_runs_a_call_twice() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg());
    connect(&mut node, &mut daemon, 0);
    node.take_events();
    node.auto_commit = false;
    let id = daemon
        .s
        .call(Instant::ZERO, "slow", payload(b"{}"), 60_000)
        .expect("call");
    let d = daemon.drain(0);
    node.feed(0, &d.frames);
    assert!(
        node.drain(0).events.is_empty(),
        "not before the window entry is durable"
    );
    assert!(node.commit(0));
    let ev = node.drain(0).events;
    assert!(
        matches!(ev[..], [OwnedNodeEvent::Call { call_id, .. }] if call_id == id),
        "{ev:?}"
    );
    // The node crashes while the call runs; what it had not committed is gone.
    let journal = node.journal.clone();
    let c = cfg();
    let restored = NodeSession::restore(c, "n1", "test", Some(vec![0; c.storage_len()]), &journal)
        .expect("restore");
    let mut node = Peer::new(restored);
    node.journal = journal;
    let ev = node.drain(10).events;
    assert!(
        matches!(ev[..], [OwnedNodeEvent::CallInterrupted { call_id, .. }] if call_id == id),
        "{ev:?}"
    );
    daemon.s.handle_disconnected(Instant::from_millis(10));
    daemon.drain(10);
    connect(&mut node, &mut daemon, 10);
    tick(&mut node, &mut daemon, 100);
    assert!(
        !node
            .take_events()
            .iter()
            .any(|e| matches!(e, OwnedNodeEvent::Call { .. })),
        "never run again"
    );
    let de = daemon.take_events();
    assert!(
        de.iter().any(|e| matches!(
            e,
            OwnedDaemonEvent::CallUpdate { call_id, state: CallState::Failed, outcome: Some(OwnedOutcome::Failed { reason }), .. }
                if *call_id == id && reason == INTERRUPTED
        )),
        "{de:?}"
    );
}

/// Storage is lent only while a session holds messages; a frame that needs it while
/// none is lent consumes nothing.
#[test]
fn storage_is_lent_while_needed_and_given_back_at_rest() {
    let c = cfg();
    let mut node = node_with(c);
    let d = DaemonSession::<Vec<u8>>::new(c, "n1", &mut rng(3)).expect("daemon");
    assert!(!d.has_storage());
    let mut daemon = Peer::new(d);
    connect(&mut node, &mut daemon, 0);
    node.s.send_event("e", payload(b"x")).expect("send");
    let n = node.drain(0);
    let data = n.frames.last().expect("data").clone();
    assert_eq!(
        daemon.s.handle_frame(Instant::ZERO, &data),
        Err(SessionError::NoStorage)
    );
    assert_eq!(daemon.s.delivered(), 0, "nothing consumed");
    daemon.s.lend(vec![0; c.storage_len()]).expect("lend");
    assert!(
        daemon.s.lend(vec![0; c.storage_len()]).is_err(),
        "one at a time"
    );
    daemon.s.handle_frame(Instant::ZERO, &data).expect("taken");
    assert!(daemon.s.reclaim().is_none(), "holds a message");
    let d = daemon.drain(0);
    assert!(matches!(
        d.events[..],
        [OwnedDaemonEvent::Event { seq: 1, .. }]
    ));
    assert!(daemon.s.reclaim().is_some(), "empty again");
    assert!(!daemon.s.has_storage());
    // Too small is refused.
    let mut d = DaemonSession::<Vec<u8>>::new(c, "n1", &mut rng(4)).expect("daemon");
    assert!(d.lend(vec![0; c.storage_len() - 1]).is_err());
}

#[test]
fn debug_output_does_not_print_storage() {
    let node = node_with(cfg());
    let text = format!("{:?}", node.s);
    assert!(text.len() < 400, "{text}");
    let mut rng = rng(5);
    let d = DaemonSession::<Vec<u8>>::new(cfg(), "n1", &mut rng).expect("daemon");
    let text = format!("{d:?}");
    assert!(text.len() < 400, "{text}");
}

/// The memory model's figures (`SESSION.md`, "Memory"), printed and bounded.
#[test]
fn memory_figures() {
    use core::mem::size_of;
    let node_session = size_of::<NodeSession<&'static mut [u8]>>();
    let daemon_at_rest = size_of::<DaemonSession<Box<[u8]>>>();
    let server = Config::server(64 * 1024);
    let embedded = Config::embedded(1024);
    let daemon_lent = daemon_at_rest + server.storage_len();
    let node_static = node_session + embedded.storage_len();
    println!(
        "memory: node session {node_session} B (+ {} B static storage with Config::embedded(1024): {node_static} B)",
        embedded.storage_len()
    );
    println!(
        "memory: daemon session at rest {daemon_at_rest} B; with a connection and lent storage (Config::server(64 KiB)): {daemon_lent} B"
    );
    assert!(
        daemon_at_rest <= 4 * 1024,
        "a daemon session at rest costs a few KiB at most"
    );
    assert!(node_session <= 4 * 1024);
}
