//! Regressions found by the session fuzz targets (`fuzz/fuzz_targets/session.rs`,
//! `fuzz/fuzz_targets/session_hostile.rs`): each test replays the smallest sequence of
//! inputs that showed the fault, through the public API only.

use protocol_core::frame::HEADER_LEN;
use protocol_core::session::{
    Config, DaemonSession, Instant, JournalOp, MemJournal, NodeSession, Overflow, Session, Transmit,
};
use protocol_core::wire::{self, Gap, Message, Payload};

const T0: Instant = Instant::from_millis(1_000);

fn payload(data: &[u8]) -> Payload<'_> {
    Payload {
        content_type: "application/octet-stream",
        data,
    }
}

/// Applies every op of the next journal batch, then confirms it.
fn commit_node(s: &mut NodeSession<Vec<u8>>, journal: &mut MemJournal) {
    commit(s, journal);
}

fn commit_daemon(s: &mut DaemonSession<Vec<u8>>, journal: &mut MemJournal) {
    commit(s, journal);
}

/// The batch polled to its end is the one closed, and its confirmation names it; with
/// nothing to write no batch is closed.
fn commit<S: Session>(s: &mut S, journal: &mut MemJournal) {
    let mut ops = Vec::new();
    while let Some(op) = s.poll_journal() {
        ops.push(owned(&op));
    }
    match (ops.is_empty(), s.closed_batch()) {
        (true, None) => {}
        (false, Some(id)) => {
            for (op, body) in &ops {
                journal.apply(&borrow(op, body));
            }
            s.handle_journal_committed(T0, id)
                .expect("the confirmation names the closed batch");
        }
        (_, closed) => panic!("{} ops polled, closed batch {closed:?}", ops.len()),
    }
}

fn owned(op: &JournalOp<'_>) -> (JournalOp<'static>, Vec<u8>) {
    match *op {
        JournalOp::Append { seq, body } => (JournalOp::Append { seq, body: &[] }, body.to_vec()),
        JournalOp::Clear => (JournalOp::Clear, Vec::new()),
        JournalOp::Trim { through } => (JournalOp::Trim { through }, Vec::new()),
        JournalOp::PutCall(r) => (JournalOp::PutCall(r), Vec::new()),
        JournalOp::RemoveCall(id) => (JournalOp::RemoveCall(id), Vec::new()),
        JournalOp::PutSeen { slot, call } => (JournalOp::PutSeen { slot, call }, Vec::new()),
        JournalOp::Meta(m) => (JournalOp::Meta(m), Vec::new()),
    }
}

fn borrow<'a>(op: &JournalOp<'static>, body: &'a [u8]) -> JournalOp<'a> {
    match *op {
        JournalOp::Append { seq, .. } => JournalOp::Append { seq, body },
        other => other,
    }
}

/// Every frame payload the session transmits now.
fn frames<F>(mut poll: F, len: usize) -> Vec<Vec<u8>>
where
    F: FnMut(&mut [u8]) -> Option<Transmit>,
{
    let mut out = Vec::new();
    let mut buf = vec![0u8; len];
    while let Some(t) = poll(&mut buf) {
        match t {
            Transmit::Frame(n) => out.push(buf[HEADER_LEN..n].to_vec()),
            Transmit::Close => break,
        }
    }
    out
}

/// Found by `session`: a journaled session that evicts (`Overflow::EvictOldest`) kept the
/// evicted messages in its journal (the trim only covered acknowledged ones), so the
/// journal held more than the replay buffer and `restore` refused it as inconsistent.
/// Fuzz input: a daemon with a 3000-byte replay buffer queued two ~1.9 KB calls, then
/// restarted.
#[test]
fn evicting_journaled_session_restores_and_reports_the_evicted_as_a_gap() {
    let mut c = Config::server(600).with_max_frame(1024);
    c.overflow = Overflow::EvictOldest;
    c.durable = true;
    let mut node = NodeSession::new(c, "n", "test", Some(vec![0; c.storage_len()])).expect("node");
    let mut journal = MemJournal::new();
    let big = [7u8; 400];
    node.send_event("e", payload(&big)).expect("first");
    commit_node(&mut node, &mut journal);
    // The second does not fit beside the first: the first is evicted.
    node.send_event("e", payload(&big)).expect("second");
    commit_node(&mut node, &mut journal);
    assert_eq!(node.unacked(), 1);
    assert_eq!(
        journal.message_count(),
        1,
        "the evicted message left the journal"
    );

    let mut node = NodeSession::restore(c, "n", "test", Some(vec![0; c.storage_len()]), &journal)
        .expect("a journal the session wrote restores");
    assert_eq!((node.last_sent(), node.acked(), node.unacked()), (2, 0, 1));

    // On the next connection the daemon learns that message 1 is gone, then gets 2.
    let mut d = DaemonSession::new(c, "n", &mut Seed(1)).expect("daemon");
    d.lend(vec![0; c.storage_len()]).expect("lend");
    let mut dj = MemJournal::new();
    commit_daemon(&mut d, &mut dj);
    commit_node(&mut node, &mut journal);
    node.handle_connected(T0);
    d.handle_connected(T0);
    let tlen = c.transmit_len();
    let mut seen = Vec::new();
    for _ in 0..10 {
        for f in frames(|b| node.poll_transmit(T0, b).expect("buffer"), tlen) {
            seen.push(wire::decode_message(&f).map(|m| m.kind()).unwrap_or("?"));
            if let Ok(Message::Gap(g)) = wire::decode_message(&f) {
                assert_eq!(g, Gap { from: 1, to: 1 });
            }
            d.handle_frame(T0, &f).expect("storage");
        }
        commit_daemon(&mut d, &mut dj);
        while d.poll_event().is_some() {}
        for f in frames(|b| d.poll_transmit(T0, b).expect("buffer"), tlen) {
            node.handle_frame(T0, &f).expect("storage");
        }
        commit_node(&mut node, &mut journal);
        while node.poll_event().is_some() {}
    }
    assert_eq!(d.delivered(), 2, "frames: {seen:?}");
    assert!(seen.contains(&"gap"), "frames: {seen:?}");
}

/// A deterministic RNG for the daemon's session ids.
struct Seed(u64);

impl rand_core::TryRng for Seed {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
        Ok(self.0)
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for b in dst {
            *b = self.try_next_u64()? as u8;
        }
        Ok(())
    }
}

/// Found by `session_hostile`: a journaled daemon answered a hello while its session id
/// was not yet durable, so its hello-ack (and everything after it) waited for the
/// journal. A stream frame from the node then marked the connection confirmed, and
/// `poll_timeout` reported the keep-alive deadline although `poll_transmit` could send
/// nothing: the deadline stayed at or before `now` however often it was handled (a
/// driver spins until the store commits). Fuzz input: hello without resume, then
/// `Gap { from: 1, to: 3 }`, with the first journal batch in flight, 1 ms later.
#[test]
fn held_hello_ack_does_not_leave_a_deadline_that_fires_forever() {
    let mut c = Config::server(600).with_max_frame(1024);
    c.keep_alive_ms = 0;
    let mut d = DaemonSession::new(c, "n", &mut Seed(3)).expect("daemon");
    d.lend(vec![0; c.storage_len()]).expect("lend");
    // The first batch (naming the session id) is polled and stays in flight.
    while d.poll_journal().is_some() {}
    d.handle_connected(T0);
    let hello = Message::Hello(wire::Hello {
        versions: wire::PROTOCOL_VERSIONS,
        max_frame: 1024,
        idle_timeout_ms: 30_000,
        node_id: "n",
        platform: "p",
        resume: None,
    });
    let gap = Message::Gap(Gap { from: 1, to: 3 });
    let mut buf = vec![0u8; c.transmit_len()];
    for msg in [hello, gap] {
        let n = wire::encode_payload(&msg, &mut buf).expect("encodes");
        d.handle_frame(T0, &buf[..n]).expect("storage");
        while d.poll_event().is_some() {}
    }
    assert!(d.is_connected());
    assert_eq!(d.poll_transmit(T0, &mut buf), Ok(None), "hello-ack held");
    let now = Instant::from_millis(T0.as_millis() + 1);
    for _ in 0..8 {
        match d.poll_timeout() {
            Some(at) if at <= now => {
                d.handle_timeout(now);
                while let Ok(Some(_)) = d.poll_transmit(now, &mut buf) {}
            }
            _ => return,
        }
    }
    panic!("deadline {:?} stays at or before {now:?}", d.poll_timeout());
}

/// The bug class `session_hostile` is built to find: a peer's `Gap { to: u64::MAX }` set
/// the delivered position to `u64::MAX`, and the next `+ 1` overflowed. Every position a
/// peer sends above `MAX_SEQ` is refused with `Error(Malformed)` before it moves state.
/// (With the bound check in `Link::numbers_valid` removed, the fuzz target finds this in
/// about 10,000 executions.)
#[test]
fn gap_to_u64_max_is_refused_before_it_moves_state() {
    use protocol_core::session::MAX_SEQ;
    use protocol_core::wire::{Data, ErrorCode, HelloAck};

    let c = Config::embedded(1024);
    let mut node = NodeSession::new(c, "n", "test", Some(vec![0; c.storage_len()])).expect("node");
    node.handle_connected(T0);
    let tlen = c.transmit_len();
    assert_eq!(
        frames(|b| node.poll_transmit(T0, b).expect("buffer"), tlen).len(),
        1,
        "hello"
    );
    let mut buf = vec![0u8; 256];
    let mut send = |node: &mut NodeSession<Vec<u8>>, msg: Message<'_>| {
        let n = wire::encode_payload(&msg, &mut buf).expect("encodes");
        node.handle_frame(T0, &buf[..n]).expect("storage");
        while node.poll_event().is_some() {}
        frames(|b| node.poll_transmit(T0, b).expect("buffer"), tlen)
    };
    let ack = HelloAck {
        version: 1,
        max_frame: 4096,
        idle_timeout_ms: 30_000,
        session: [1; 16],
        resumed: false,
        received: 0,
    };
    send(&mut node, Message::HelloAck(ack));
    assert!(node.is_connected());
    for to in [u64::MAX, MAX_SEQ + 1] {
        let out = send(&mut node, Message::Gap(Gap { from: 1, to }));
        let first = out.first().map(|f| wire::decode_message(f));
        assert!(
            matches!(first, Some(Ok(Message::Error(e))) if e.code == ErrorCode::Malformed),
            "{out:?}"
        );
        assert_eq!(node.delivered(), 0);
        // The next connection: the same session, nothing moved.
        node.handle_connected(T0);
        frames(|b| node.poll_transmit(T0, b).expect("buffer"), tlen);
        send(
            &mut node,
            Message::HelloAck(HelloAck {
                resumed: true,
                ..ack
            }),
        );
        assert!(node.is_connected());
    }
    // Stream traffic carries on from 1.
    let body = wire::Body::Cancel(wire::Cancel { call_id: 1 });
    let out = send(
        &mut node,
        Message::Data(Data {
            seq: 1,
            ack: 0,
            body,
        }),
    );
    assert!(
        out.iter()
            .all(|f| !matches!(wire::decode_message(f), Ok(Message::Error(_))))
    );
    assert_eq!(node.delivered(), 1);
}

/// Found by `session`: a journaled node restarted with a call still running answers it
/// `Failed` while it restores. A replay buffer too small for that answer (the setup
/// check accepted 14 bytes) made `restore` fail with `JournalInconsistent` on every
/// start: the node could never come back. Fuzz input: a node with a 14-byte replay
/// buffer took a call (timeout 4294967208 ms), then restarted. The setup check now
/// refuses a replay buffer that cannot hold the answers a session queues by itself.
#[test]
fn replay_buffer_holds_the_answers_the_session_queues_itself() {
    use protocol_core::session::{NodeEvent, RECORD_HEADER, SetupError};
    use protocol_core::wire::{Body, Call, Data, HelloAck};

    let smallest = RECORD_HEADER + 44;
    let mut c = Config::server(smallest - 1).with_max_frame(1024);
    c.durable = true;
    let refused = NodeSession::new(c, "n", "test", Some(vec![0; c.storage_len()]));
    assert_eq!(refused.err(), Some(SetupError::ReplayTooSmall));

    c.replay_bytes = smallest;
    let mut node = NodeSession::new(c, "n", "test", Some(vec![0; c.storage_len()])).expect("node");
    let mut journal = MemJournal::new();
    let tlen = c.transmit_len();
    let mut buf = vec![0u8; 512];
    let mut send = |node: &mut NodeSession<Vec<u8>>, journal: &mut MemJournal, msg: Message<'_>| {
        let n = wire::encode_payload(&msg, &mut buf).expect("encodes");
        node.handle_frame(T0, &buf[..n]).expect("storage");
        let mut calls = Vec::new();
        // A journaled node runs a call once the window entry naming it is durable.
        for _ in 0..3 {
            while let Some(ev) = node.poll_event() {
                if let NodeEvent::Call { call, .. } = ev {
                    calls.push(call.call_id);
                }
            }
            commit_node(node, journal);
        }
        frames(|b| node.poll_transmit(T0, b).expect("buffer"), tlen);
        calls
    };
    node.handle_connected(T0);
    frames(|b| node.poll_transmit(T0, b).expect("buffer"), tlen);
    let hello_ack = HelloAck {
        version: 1,
        max_frame: 4096,
        idle_timeout_ms: 30_000,
        session: [2; 16],
        resumed: false,
        received: 0,
    };
    send(&mut node, &mut journal, Message::HelloAck(hello_ack));
    let call = Body::Call(Call {
        call_id: u64::MAX,
        capability: "c",
        timeout_ms: 4_294_967_208,
        input: payload(b""),
    });
    let data = Message::Data(Data {
        seq: 1,
        ack: 0,
        body: call,
    });
    assert_eq!(
        send(&mut node, &mut journal, data),
        vec![u64::MAX],
        "the call runs"
    );

    // Restart with the call running: it is answered, and the restore succeeds.
    let mut node = NodeSession::restore(c, "n", "test", Some(vec![0; c.storage_len()]), &journal)
        .expect("a journal the session wrote restores");
    assert_eq!(node.last_sent(), 1, "the answer is queued");
    let interrupted = node.poll_event().map(|e| format!("{e:?}"));
    assert_eq!(
        interrupted,
        Some(format!(
            "{:?}",
            NodeEvent::CallInterrupted {
                call_id: u64::MAX,
                answer: 1
            }
        ))
    );
}

/// Found by `session_hostile` (a daemon restored from a journal whose call deadline lay
/// near `u64::MAX`; the driver's clock followed it to `Instant::NEVER`, and a frame came
/// then): with `now` at `Instant::NEVER` the keep-alive deadline `last_sent +
/// keep_alive_ms` saturates to `NEVER` again after every ping, so it is always due:
/// `poll_transmit` hands out a `Ping` on every call and never comes to rest.
#[test]
fn the_keep_alive_comes_to_rest_at_the_end_of_time() {
    use protocol_core::wire::HelloAck;

    let c = Config::embedded(1024);
    let end = Instant::NEVER;
    let mut node = NodeSession::new(c, "n", "test", Some(vec![0; c.storage_len()])).expect("node");
    node.handle_connected(end);
    let tlen = c.transmit_len();
    frames(|b| node.poll_transmit(end, b).expect("buffer"), tlen);
    let ack = Message::HelloAck(HelloAck {
        version: 1,
        max_frame: 4096,
        idle_timeout_ms: 30_000,
        session: [1; 16],
        resumed: false,
        received: 0,
    });
    let mut buf = vec![0u8; 256];
    let n = wire::encode_payload(&ack, &mut buf).expect("encodes");
    node.handle_frame(end, &buf[..n]).expect("hello-ack");
    while node.poll_event().is_some() {}
    assert!(node.is_connected());
    let mut out = vec![0u8; tlen];
    let mut sent = 0;
    while let Ok(Some(Transmit::Frame(_))) = node.poll_transmit(end, &mut out) {
        sent += 1;
        assert!(sent < 100, "poll_transmit never comes to rest at {end:?}");
    }
}
