//! Runs the no_std node driver of `examples/embedded_node.rs` on the host, against a
//! `DaemonSession`, over an in-memory byte pipe and a simulated clock: the node connects,
//! registers its `echo` capability and says it is up, and a call round-trips.

#[allow(dead_code)]
#[path = "../examples/embedded_node.rs"]
mod embedded_node;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use embedded_node::{BUF_LEN, Buf, Clock, Closed, ECHO, Node, Transport};
use protocol_core::pump::{Alloc, Pump, Step};
use protocol_core::session::{
    CallState, Config, DaemonSession, Instant, MemJournal, OwnedDaemonEvent, OwnedOutcome,
};
use protocol_core::wire::Payload;

/// Bytes in flight each way.
#[derive(Default)]
struct Wire {
    to_node: VecDeque<u8>,
    to_daemon: Vec<u8>,
    closed: bool,
}

struct Link<'w>(&'w RefCell<Wire>);

impl Transport for Link<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Closed> {
        poll_fn(|_| {
            let mut w = self.0.borrow_mut();
            if w.closed {
                return Poll::Ready(Err(Closed));
            }
            let n = buf.len().min(w.to_node.len());
            if n == 0 {
                return Poll::Pending;
            }
            for b in &mut buf[..n] {
                *b = w.to_node.pop_front().unwrap_or_default();
            }
            Poll::Ready(Ok(n))
        })
        .await
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        let mut w = self.0.borrow_mut();
        if w.closed {
            return Err(Closed);
        }
        w.to_daemon.extend_from_slice(bytes);
        Ok(())
    }

    async fn close(&mut self) {
        self.0.borrow_mut().closed = true;
    }
}

struct SimClock<'c>(&'c Cell<u64>);

impl Clock for SimClock<'_> {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.get())
    }

    async fn sleep_until(&self, at: Instant) {
        poll_fn(|_| {
            if self.now() >= at {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

fn leak(len: usize) -> Buf {
    Box::leak(vec![0u8; len].into_boxed_slice())
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

#[test]
fn echo_call_round_trips_through_the_no_std_driver() {
    let bufs = [leak(BUF_LEN), leak(BUF_LEN), leak(BUF_LEN), leak(BUF_LEN)];
    let mut node = Node::new(bufs, "sensor-7", "stm32f4").expect("node");

    let dc = Config::server(8 * 1024).with_max_frame(4096);
    let mut daemon = DaemonSession::new(dc, "sensor-7", &mut Seed(5)).expect("daemon");
    let mut journal = MemJournal::new();
    let mut pump = Pump::new();
    let mut received: Vec<u8> = Vec::new();

    let wire = RefCell::new(Wire::default());
    let clock = Cell::new(1_000u64);
    let mut link = Link(&wire);
    let sim = SimClock(&clock);
    let mut cx = Context::from_waker(Waker::noop());

    let mut up = false;
    let mut registered = false;
    let mut call = None;
    let mut answered = None;
    {
        let mut drive = pin!(embedded_node::drive(&mut node, &mut link, &sim));
        daemon.handle_connected(Instant::from_millis(clock.get()));
        for _ in 0..2_000 {
            assert!(
                drive.as_mut().poll(&mut cx).is_pending(),
                "the connection ended"
            );
            let now = Instant::from_millis(clock.get());
            // The daemon's side, on the pump as its driver runs it.
            received.extend(std::mem::take(&mut wire.borrow_mut().to_daemon));
            loop {
                let mut input = &received[..];
                let step = pump.poll(now, &mut daemon, &mut Alloc, &mut input);
                let taken = received.len() - input.len();
                received.drain(..taken);
                match step {
                    Step::Events(d) => {
                        while let Some(ev) = d.poll_event() {
                            match OwnedDaemonEvent::from(ev) {
                                OwnedDaemonEvent::Event { name, .. } if name == "node.up" => {
                                    up = true
                                }
                                OwnedDaemonEvent::Register { capabilities, .. } => {
                                    registered = capabilities.iter().any(|c| c.name == ECHO);
                                }
                                OwnedDaemonEvent::CallUpdate {
                                    call_id,
                                    state: CallState::Succeeded,
                                    outcome: Some(OwnedOutcome::Success(out)),
                                    ..
                                } if Some(call_id) == call => answered = Some(out.data),
                                _ => {}
                            }
                        }
                        if registered && call.is_none() {
                            let input = Payload {
                                content_type: "application/octet-stream",
                                data: b"ping",
                            };
                            call = Some(d.call(now, ECHO, input, 5_000).expect("call"));
                        }
                    }
                    Step::Journal(batch) => {
                        let id = batch.stage(|op| journal.apply(&op)).expect("a batch");
                        daemon.handle_journal_committed(now, id).expect("its id");
                    }
                    Step::Transmit(out) => wire.borrow_mut().to_node.extend(out.bytes()),
                    Step::Close(_) => panic!("the daemon closed"),
                    Step::Wait(_) => break,
                }
            }
            if answered.is_some() {
                break;
            }
            // Nothing in flight: time passes, and both sides' timers run.
            if wire.borrow().to_node.is_empty() {
                clock.set(clock.get() + 10);
                daemon.handle_timeout(Instant::from_millis(clock.get()));
            }
        }
    }
    assert!(up, "the node's event arrived");
    assert_eq!(
        answered.as_deref(),
        Some(&b"ping"[..]),
        "the echo came back"
    );
    assert_eq!((node.app.events_sent, node.app.calls_answered), (1, 1));
    assert!(node.session().is_connected());
}
