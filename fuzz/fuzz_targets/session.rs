//! Drives a node-role and a daemon-role session with arbitrary commands, arbitrary
//! frames, arbitrary loss on the pipe between them and arbitrary steps of time.
//!
//! Asserts: nothing panics; `poll_output` always comes to rest; every frame sent decodes
//! and respects the peer's limit; a deadline handed out lies in the future; each side
//! delivers stream messages with consecutive seqs (gaps included); a call reaches at
//! most one final state.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use protocol_core::frame::{FrameError, HEADER_LEN, MIN_MAX_FRAME};
use protocol_core::session::{Config, Event, Input, Instant, NoJournal, Output, Session};
use protocol_core::wire::{self, GoodbyeReason, Outcome, Payload, Stage};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

#[derive(Default)]
struct Side {
    /// Frames in flight towards this side.
    inbox: Vec<Vec<u8>>,
    last_seq: u64,
    finals: BTreeSet<u64>,
    calls: Vec<u64>,
}

fn drain<B: AsRef<[u8]> + AsMut<[u8]>>(
    s: &mut Session<B, NoJournal>,
    now: u64,
    peer_max: u32,
    me: &mut Side,
    peer: &mut Side,
) {
    let mut buf = vec![0u8; 8192];
    for _ in 0..10_000 {
        match s.poll_output(Instant::from_millis(now), &mut buf) {
            Output::Transmit(bytes) => {
                let payload = &bytes[HEADER_LEN..];
                assert!(
                    payload.len() <= peer_max as usize || payload.len() <= MIN_MAX_FRAME as usize
                );
                wire::decode_message(payload).expect("a session only sends valid messages");
                peer.inbox.push(payload.to_vec());
            }
            Output::Close => peer.inbox.clear(),
            Output::Timeout(at) => {
                assert!(at.as_millis() > now, "deadline {at:?} not after now {now}");
                return;
            }
            Output::Event(e) => {
                let seq = match e {
                    Event::Message { seq, .. }
                    | Event::Call { seq, .. }
                    | Event::DuplicateCall { seq, .. }
                    | Event::CallNotRun { seq, .. }
                    | Event::Cancel { seq, .. } => Some((seq, seq)),
                    Event::CallUpdate { seq: Some(seq), .. } => Some((seq, seq)),
                    Event::Gap { from, to } => Some((from, to)),
                    Event::SessionReset { .. } => {
                        me.last_seq = 0;
                        None
                    }
                    _ => None,
                };
                if let Some((from, to)) = seq {
                    assert_eq!(from, me.last_seq + 1, "delivery out of order");
                    me.last_seq = to;
                }
                if let Event::Call { call, .. } = e {
                    me.calls.push(call.call_id);
                }
                if let Event::CallUpdate { call_id, state, .. } = e
                    && state.is_final()
                {
                    assert!(me.finals.insert(call_id), "call {call_id} final twice");
                }
            }
        }
    }
    panic!("poll_output never came to rest");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let mut nc = Config::server(256 + usize::from(input.u8()) * 4);
    nc.max_frame = MIN_MAX_FRAME + u32::from(input.u8()) * 8;
    let dc = Config::server(1024);
    let dc = Config {
        max_frame: 4096,
        ..dc
    };
    let mut node = Session::node(nc, "n", "fuzz", vec![0u8; nc.storage_needed()]).expect("node");
    let mut rng = Rng(u64::from(input.u8()));
    let mut daemon = Session::daemon(dc, "n", vec![0u8; dc.storage_needed()], NoJournal, &mut rng)
        .expect("daemon");
    let (mut ns, mut ds) = (Side::default(), Side::default());
    let mut now = 0u64;
    while !input.0.is_empty() {
        let t = Instant::from_millis(now);
        match input.u8() % 16 {
            0 => now += u64::from(input.u16()),
            1 => {
                node.handle_input(t, Input::Connected);
                daemon.handle_input(t, Input::Connected);
                ns.inbox.clear();
                ds.inbox.clear();
            }
            2 => {
                node.handle_input(t, Input::Disconnected);
                daemon.handle_input(t, Input::Disconnected);
                ns.inbox.clear();
                ds.inbox.clear();
            }
            3 => {
                let n = usize::from(input.u8());
                let body = input.take(n).to_vec();
                let _ = node.send_event(
                    "e",
                    Payload {
                        content_type: "x",
                        data: &body,
                    },
                );
            }
            4 => {
                let timeout = u32::from(input.u16());
                let _ = daemon.call(
                    t,
                    "c",
                    Payload {
                        content_type: "x",
                        data: b"{}",
                    },
                    timeout,
                );
            }
            5 => {
                let id = u64::from(input.u8() % 8);
                let _ = daemon.cancel(id);
            }
            6 => {
                if let Some(&id) = ns
                    .calls
                    .get(usize::from(input.u8()) % ns.calls.len().max(1))
                {
                    let outcome = match input.u8() % 4 {
                        0 => Outcome::Success(Payload {
                            content_type: "x",
                            data: b"ok",
                        }),
                        1 => Outcome::Failed { reason: "f" },
                        2 => Outcome::Cancelled,
                        _ => Outcome::TimedOut,
                    };
                    let _ = node.complete(id, outcome);
                }
            }
            7 => {
                if let Some(&id) = ns
                    .calls
                    .get(usize::from(input.u8()) % ns.calls.len().max(1))
                {
                    let _ = node.progress(id, Stage::AwaitingApproval, "");
                }
            }
            // Deliver (or lose, or duplicate) the oldest frame in flight.
            8..=10 => {
                let to_node = input.u8() % 2 == 0;
                let fate = input.u8() % 8;
                let side = if to_node { &mut ns } else { &mut ds };
                if !side.inbox.is_empty() {
                    let f = side.inbox.remove(0);
                    if fate == 1 {
                        side.inbox.insert(0, f.clone());
                    }
                    if fate != 0 {
                        if to_node {
                            node.handle_input(t, Input::Frame(&f));
                        } else {
                            daemon.handle_input(t, Input::Frame(&f));
                        }
                    }
                }
            }
            11 => {
                let n = usize::from(input.u8());
                let f = input.take(n).to_vec();
                if input.u8() % 2 == 0 {
                    node.handle_input(t, Input::Frame(&f));
                } else {
                    daemon.handle_input(t, Input::Frame(&f));
                }
            }
            12 => {
                node.handle_input(t, Input::Timeout);
                daemon.handle_input(t, Input::Timeout);
            }
            13 => node.handle_input(t, Input::Close(GoodbyeReason::Shutdown)),
            14 => daemon.handle_input(
                t,
                Input::FrameError(FrameError::TooLarge {
                    len: 1 << 20,
                    max: 4096,
                }),
            ),
            _ => {
                // Deliver everything in flight.
                for f in std::mem::take(&mut ds.inbox) {
                    daemon.handle_input(t, Input::Frame(&f));
                }
                for f in std::mem::take(&mut ns.inbox) {
                    node.handle_input(t, Input::Frame(&f));
                }
            }
        }
        drain(&mut node, now, dc.max_frame, &mut ns, &mut ds);
        drain(&mut daemon, now, nc.max_frame, &mut ds, &mut ns);
    }
});

struct Rng(u64);

impl Rng {
    fn step(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
}

impl rand_core::TryRng for Rng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.step() as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.step())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for b in dst {
            *b = self.step() as u8;
        }
        Ok(())
    }
}
