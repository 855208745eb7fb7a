//! Session behaviour between one node and one daemon over a perfect in-memory pipe.

#[allow(dead_code)]
#[path = "sim/journal.rs"]
mod journal;
#[allow(dead_code)]
#[path = "sim/rng.rs"]
mod rng;

use journal::MemJournal;
use protocol_core::frame::{HEADER_LEN, MIN_MAX_FRAME};
use protocol_core::session::{
    CallState, CloseReason, Config, Event, Input, Instant, Output, Session, SessionError,
};
use protocol_core::wire::{
    self, Body, Call, Data, ErrorCode, GoodbyeReason, Message, Outcome, Payload, VersionRange,
};
use rng::SimRng;

type Node = Session<Vec<u8>>;
type Daemon = Session<Vec<u8>, MemJournal>;

const JSON: &str = "application/json";

fn cfg() -> Config {
    let mut c = Config::server(2048);
    c.max_frame = 4096;
    c
}

fn node_with(c: Config) -> Node {
    Session::node(c, "n1", "test", vec![0; c.storage_needed()]).expect("node")
}

fn daemon_with(c: Config, journal: MemJournal) -> Daemon {
    Session::daemon(
        c,
        "n1",
        vec![0; c.storage_needed()],
        journal,
        &mut SimRng::new(1),
    )
    .expect("daemon")
}

/// Everything one session put out in one drain: frames (payloads) and events (as text).
#[derive(Debug, Default)]
struct Drained {
    frames: Vec<Vec<u8>>,
    events: Vec<String>,
    closed: bool,
    timeout: Option<Instant>,
}

fn drain<B: AsRef<[u8]> + AsMut<[u8]>, J: protocol_core::session::Journal>(
    s: &mut Session<B, J>,
    now: u64,
) -> Drained {
    let mut d = Drained::default();
    let mut buf = vec![0u8; 8192];
    loop {
        match s.poll_output(Instant::from_millis(now), &mut buf) {
            Output::Transmit(bytes) => d.frames.push(bytes[HEADER_LEN..].to_vec()),
            Output::Event(e) => d.events.push(format!("{e:?}")),
            Output::Close => d.closed = true,
            Output::Timeout(t) => {
                d.timeout = Some(t);
                return d;
            }
        }
    }
}

/// Pipes frames both ways until both sides are quiet; returns every event by side.
fn pump(node: &mut Node, daemon: &mut Daemon, now: u64) -> (Vec<String>, Vec<String>) {
    let (mut ne, mut de) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let n = drain(node, now);
        let d = drain(daemon, now);
        ne.extend(n.events);
        de.extend(d.events);
        if n.frames.is_empty() && d.frames.is_empty() {
            break;
        }
        for f in &n.frames {
            daemon.handle_input(Instant::from_millis(now), Input::Frame(f));
        }
        for f in &d.frames {
            node.handle_input(Instant::from_millis(now), Input::Frame(f));
        }
    }
    (ne, de)
}

fn connect(node: &mut Node, daemon: &mut Daemon, now: u64) -> (Vec<String>, Vec<String>) {
    node.handle_input(Instant::from_millis(now), Input::Connected);
    daemon.handle_input(Instant::from_millis(now), Input::Connected);
    pump(node, daemon, now)
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
    let mut daemon = daemon_with(cfg(), MemJournal::default());
    let (ne, de) = connect(&mut node, &mut daemon, 0);
    assert!(ne.iter().any(|e| e.starts_with("Connected")), "{ne:?}");
    assert!(de.iter().any(|e| e.starts_with("Connected")), "{de:?}");
    assert!(node.is_connected() && daemon.is_connected());

    let id = daemon
        .call(
            Instant::from_millis(10),
            "sys.health",
            payload(b"{}"),
            1_000,
        )
        .expect("call");
    let (ne, de) = pump(&mut node, &mut daemon, 10);
    assert!(
        ne.iter()
            .any(|e| e.starts_with("Call {") && e.contains("timeout_ms: 1000")),
        "{ne:?}"
    );
    // One delivered message: the acknowledgement waits for data to ride on, at most
    // `ack_delay_ms`.
    assert!(!de.iter().any(|e| e.contains("Dispatched")), "{de:?}");
    node.handle_input(Instant::from_millis(30), Input::Timeout);
    let (_, de) = pump(&mut node, &mut daemon, 30);
    assert!(de.iter().any(|e| e.contains("Dispatched")), "{de:?}");

    node.progress(id, wire::Stage::Running, "")
        .expect("progress");
    node.complete(id, Outcome::Success(payload(b"ok")))
        .expect("complete");
    let (_, de) = pump(&mut node, &mut daemon, 20);
    assert!(de.iter().any(|e| e.contains("state: Running")), "{de:?}");
    assert!(
        de.iter()
            .any(|e| e.contains("state: Succeeded") && e.contains("Success")),
        "{de:?}"
    );
    assert_eq!(daemon.open_calls(), 0);
    assert_eq!(
        node.complete(id, Outcome::Cancelled),
        Err(SessionError::Finished)
    );
}

#[test]
fn version_mismatch_is_a_typed_error_naming_both_ranges() {
    let mut nc = cfg();
    nc.versions = VersionRange::new(5, 6);
    let mut node = node_with(nc);
    let mut daemon = daemon_with(cfg(), MemJournal::default());
    node.handle_input(Instant::ZERO, Input::Connected);
    daemon.handle_input(Instant::ZERO, Input::Connected);
    let hello = drain(&mut node, 0).frames;
    daemon.handle_input(Instant::ZERO, Input::Frame(&hello[0]));
    let d = drain(&mut daemon, 0);
    assert!(d.closed, "the daemon closes after the error frame");
    let msg = wire::decode_message(&d.frames[0]).expect("error frame");
    assert!(matches!(
        msg,
        Message::Error(e) if e.code == ErrorCode::VersionMismatch {
            client: VersionRange::new(5, 6),
            server: wire::PROTOCOL_VERSIONS,
        }
    ));
    node.handle_input(Instant::ZERO, Input::Frame(&d.frames[0]));
    let n = drain(&mut node, 0);
    assert!(n.closed);
    assert!(
        n.events
            .iter()
            .any(|e| e.contains("PeerError(VersionMismatch")),
        "{:?}",
        n.events
    );
}

#[test]
fn malformed_frame_gets_an_error_frame_then_close() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg(), MemJournal::default());
    connect(&mut node, &mut daemon, 0);
    daemon.handle_input(Instant::ZERO, Input::Frame(&[2, 0xff]));
    let d = drain(&mut daemon, 0);
    let msg = wire::decode_message(&d.frames[0]).expect("error frame");
    assert!(matches!(msg, Message::Error(e) if e.code == ErrorCode::Malformed));
    assert!(d.closed && !daemon.has_connection());
    assert!(d.events.iter().any(|e| e
        == &format!(
            "{:?}",
            Event::Disconnected(CloseReason::SentError(ErrorCode::Malformed))
        )));
}

#[test]
fn never_sends_more_than_the_peer_accepts() {
    let mut nc = cfg();
    nc.max_frame = MIN_MAX_FRAME;
    let mut node = node_with(nc);
    let mut daemon = daemon_with(cfg(), MemJournal::default());
    connect(&mut node, &mut daemon, 0);
    let big = vec![b'x'; 300];
    assert_eq!(
        daemon.call(Instant::ZERO, "sys.health", payload(&big), 1_000),
        Err(SessionError::TooLarge)
    );
    let small = vec![b'x'; 100];
    daemon
        .call(Instant::ZERO, "sys.health", payload(&small), 1_000)
        .expect("fits");
    let d = drain(&mut daemon, 0);
    assert!(d.frames.iter().all(|f| f.len() <= MIN_MAX_FRAME as usize));
    assert!(!d.frames.is_empty());
}

#[test]
fn keep_alive_then_idle_timeout_close_the_connection() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg(), MemJournal::default());
    connect(&mut node, &mut daemon, 0);
    // The daemon goes silent: the node pings at the keep-alive interval...
    let t = drain(&mut node, 0).timeout.expect("a deadline");
    assert_eq!(t, Instant::from_millis(5_000));
    node.handle_input(t, Input::Timeout);
    let n = drain(&mut node, t.as_millis());
    assert!(matches!(
        wire::decode_message(&n.frames[0]),
        Ok(Message::Ping(_))
    ));
    // ...and gives up when nothing came back for the idle timeout.
    node.handle_input(Instant::from_millis(30_000), Input::Timeout);
    let n = drain(&mut node, 30_000);
    assert!(matches!(
        wire::decode_message(&n.frames[0]),
        Ok(Message::Goodbye(g)) if g.reason == GoodbyeReason::IdleTimeout
    ));
    assert!(n.closed);
}

#[test]
fn goodbye_closes_both_sides_cleanly() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg(), MemJournal::default());
    connect(&mut node, &mut daemon, 0);
    node.handle_input(Instant::ZERO, Input::Close(GoodbyeReason::Shutdown));
    let n = drain(&mut node, 0);
    assert!(n.closed);
    daemon.handle_input(Instant::ZERO, Input::Frame(&n.frames[0]));
    let d = drain(&mut daemon, 0);
    assert!(d.closed);
    assert!(d.events.iter().any(|e| e.contains("Peer(Shutdown)")));
}

#[test]
fn a_call_times_out_on_the_daemon_even_if_the_node_never_comes() {
    let mut daemon = daemon_with(cfg(), MemJournal::default());
    let id = daemon
        .call(Instant::ZERO, "sys.health", payload(b"{}"), 250)
        .expect("call");
    let d = drain(&mut daemon, 0);
    assert_eq!(d.timeout, Some(Instant::from_millis(250)));
    daemon.handle_input(Instant::from_millis(250), Input::Timeout);
    let d = drain(&mut daemon, 250);
    assert!(
        d.events
            .iter()
            .any(|e| e.contains(&format!("call_id: {id}")) && e.contains("TimedOut")),
        "{:?}",
        d.events
    );
    assert_eq!(daemon.call_state(id), None);
}

#[test]
fn a_full_replay_buffer_refuses_instead_of_dropping() {
    let mut c = cfg();
    c.replay_bytes = 200;
    let mut node = node_with(c);
    let mut accepted = 0;
    let err = loop {
        match node.send_event("reading", payload(b"0123456789")) {
            Ok(seq) => {
                accepted += 1;
                assert_eq!(seq, accepted);
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err, SessionError::Full);
    assert_eq!(node.last_sent(), accepted);
    // Once the daemon acknowledges, there is room again, and nothing was lost.
    let mut daemon = daemon_with(cfg(), MemJournal::default());
    let (_, de) = connect(&mut node, &mut daemon, 0);
    let delivered = de.iter().filter(|e| e.starts_with("Message")).count() as u64;
    assert_eq!(delivered, accepted);
    pump(&mut node, &mut daemon, 100);
    assert!(node.send_event("reading", payload(b"more")).is_ok());
}

#[test]
fn a_restarted_daemon_resumes_from_its_journal() {
    let journal = MemJournal::default();
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg(), journal.clone());
    connect(&mut node, &mut daemon, 0);
    let id = daemon
        .call(Instant::ZERO, "slow.job", payload(b"{}"), 60_000)
        .expect("call");
    // The daemon dies before the call leaves it.
    let session = daemon.session_id();
    drop(daemon);
    node.handle_input(Instant::from_millis(5), Input::Disconnected);
    drain(&mut node, 5);
    let c = cfg();
    let mut daemon: Daemon = Session::restore_daemon(
        c,
        "n1",
        vec![0; c.storage_needed()],
        journal,
        &mut SimRng::new(2),
    )
    .expect("restore");
    assert_eq!(daemon.session_id(), session);
    assert_eq!(
        daemon.call_state(id).map(|c| c.state),
        Some(CallState::Queued)
    );
    let (ne, de) = connect(&mut node, &mut daemon, 10);
    assert!(
        de.iter()
            .any(|e| e.starts_with("Connected") && e.contains("resumed: true")),
        "{de:?}"
    );
    assert!(
        ne.iter().any(|e| e.starts_with("Call {")),
        "the journaled call reached the node: {ne:?}"
    );
}

#[test]
fn a_replayed_call_is_answered_again_not_run_again() {
    let mut node = node_with(cfg());
    let mut daemon = daemon_with(cfg(), MemJournal::default());
    connect(&mut node, &mut daemon, 0);
    let id = daemon
        .call(Instant::ZERO, "sys.health", payload(b"{}"), 10_000)
        .expect("call");
    let d = drain(&mut daemon, 0);
    for f in &d.frames {
        node.handle_input(Instant::ZERO, Input::Frame(f));
    }
    let n = drain(&mut node, 0);
    assert_eq!(
        n.events.iter().filter(|e| e.starts_with("Call {")).count(),
        1
    );
    node.complete(id, Outcome::Failed { reason: "nope" })
        .expect("complete");
    drain(&mut node, 0);
    // The same call id again, as a new stream message (e.g. re-sent by a daemon that
    // lost track of it).
    let again = Message::Data(Data {
        seq: 2,
        ack: 0,
        body: Body::Call(Call {
            call_id: id,
            capability: "sys.health",
            timeout_ms: 10_000,
            input: payload(b"{}"),
        }),
    });
    let mut buf = vec![0u8; 512];
    let len = wire::encode_payload(&again, &mut buf).expect("encode");
    node.handle_input(Instant::ZERO, Input::Frame(&buf[..len]));
    let n = drain(&mut node, 0);
    assert!(
        n.events.iter().any(|e| e.starts_with("DuplicateCall")),
        "{:?}",
        n.events
    );
    assert!(!n.events.iter().any(|e| e.starts_with("Call {")));
    let answers: Vec<_> = n
        .frames
        .iter()
        .filter_map(|f| match wire::decode_message(f) {
            Ok(Message::Data(Data {
                body: Body::Result(r),
                ..
            })) => Some(r.outcome),
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
    let mut daemon = daemon_with(cfg(), MemJournal::default());
    connect(&mut node, &mut daemon, 0);
    let id = daemon
        .call(Instant::ZERO, "sys.health", payload(b"{}"), 10_000)
        .expect("call");
    pump(&mut node, &mut daemon, 0);
    let old = daemon.session_id();
    // The node reboots without its RAM.
    daemon.handle_input(Instant::from_millis(1), Input::Disconnected);
    drain(&mut daemon, 1);
    let mut node = node_with(cfg());
    let (ne, de) = connect(&mut node, &mut daemon, 2);
    assert_ne!(daemon.session_id(), old);
    assert!(de.iter().any(|e| e.starts_with("SessionReset")), "{de:?}");
    assert!(
        de.iter()
            .any(|e| e.contains(&format!("call_id: {id}")) && e.contains("Lost")),
        "{de:?}"
    );
    assert!(!ne.iter().any(|e| e.starts_with("Call {")), "{ne:?}");
}
