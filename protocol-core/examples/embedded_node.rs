//! A node on a microcontroller: the driver loop around a [`NodeSession`], with no
//! allocator and no standard library, on the pump.
//!
//! Everything is in static buffers the firmware hands over once: the session's storage
//! (replay buffer and inbox), the frame-assembly buffer, the transmit buffer and the
//! read buffer. The pump lends the first three from [`Slots`] and gives them back, so a
//! microcontroller driver runs the same drive order as a server's. The limits are a
//! `const` [`Config`], so they live in flash. The loop is `async` in the shape an
//! embassy task has; the transport (a TCP socket of `embassy-net`, a UART) and the
//! clock (`embassy-time`) come in through two small traits.
//!
//! On the device:
//!
//! ```text
//! static BUFS: StaticCell<[[u8; BUF_LEN]; 4]> = StaticCell::new();
//!
//! #[embassy_executor::task]
//! async fn tern(stack: Stack<'static>) -> ! {
//!     let [storage, frame, tx, rx] = BUFS.init([[0; BUF_LEN]; 4]).each_mut();
//!     let mut node = Node::new([storage, frame, tx, rx], "sensor-7", "stm32f4")
//!         .expect("CONFIG fits its buffers");
//!     loop {
//!         let mut socket = connect(stack).await; // TCP, then TLS
//!         drive(&mut node, &mut socket, &EmbassyClock).await;
//!         Timer::after_secs(1).await; // back off, then resume the same session
//!     }
//! }
//! ```
//!
//! Build it for the target: `cargo check -p protocol-core --example embedded_node
//! --target thumbv7em-none-eabihf`. `tests/embedded_node.rs` runs it on the host against
//! a `DaemonSession`.
#![cfg_attr(not(test), no_std)]

use core::future::{Future, poll_fn};
use core::pin::pin;
use core::task::Poll;

use protocol_core::pump::{Pump, ReadBuf, Slots, Step};
use protocol_core::session::{Config, Instant, NodeEvent, NodeSession, SetupError};
use protocol_core::wire::{
    Capabilities, CapabilityDescriptor, Outcome, Payload, Register, RejectCode,
};

/// The node's limits: 1 KiB of replay buffer, 2 KiB frames, state in RAM.
pub const CONFIG: Config = Config::embedded(1024);
/// Bytes of the session's storage.
pub const STORAGE_LEN: usize = CONFIG.storage_len();
/// Bytes of the frame-assembly buffer: one frame at our own limit.
pub const DECODER_LEN: usize = CONFIG.max_frame as usize;
/// Bytes of the transmit buffer: always holds the next frame.
pub const TX_LEN: usize = CONFIG.transmit_len();
/// Bytes of the read buffer.
pub const RX_LEN: usize = 512;
/// One length that fits every buffer above.
pub const BUF_LEN: usize = max(max(STORAGE_LEN, DECODER_LEN), max(TX_LEN, RX_LEN));

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// The capability this node offers: answers with its input.
pub const ECHO: &str = "echo";
/// Largest echo input answered (copied out of the session's inbox).
pub const ECHO_MAX: usize = 256;

const OCTETS: &str = "application/octet-stream";

const CAPABILITIES: [CapabilityDescriptor<'static>; 1] = [CapabilityDescriptor {
    name: ECHO,
    version: 1,
    input: OCTETS,
    output: OCTETS,
    needs_approval: false,
}];

/// A buffer handed over for good (`StaticCell::init` on the device).
pub type Buf = &'static mut [u8];

/// The transport connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A byte stream to the daemon.
// Single-threaded executor: the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// Waits for bytes and reads some into `buf` (at least one).
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Closed>;
    /// Writes all of `bytes`.
    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Closed>;
    /// Closes the connection (after what was written).
    async fn close(&mut self);
}

/// Milliseconds since boot, and a timer.
#[allow(async_fn_in_trait)]
pub trait Clock {
    fn now(&self) -> Instant;
    /// Returns at `at`.
    async fn sleep_until(&self, at: Instant);
}

/// The node: its session, which outlives connections, its static buffers and its
/// application.
pub struct Node {
    session: NodeSession<Buf>,
    lender: Slots<Buf>,
    rx: ReadBuf<Buf>,
    pub app: App,
}

impl core::fmt::Debug for Node {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("session", &self.session)
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

/// The application: an echo capability and an `up` event.
#[derive(Debug)]
pub struct App {
    /// An echo input, copied out of the event (which borrows the session).
    echo: [u8; ECHO_MAX],
    /// Events sent so far.
    pub events_sent: u32,
    /// Calls answered so far.
    pub calls_answered: u32,
}

/// What the application does after an event (the event borrows the session).
enum Action {
    Nothing,
    /// The hello exchange finished: say what we offer, and that we are up.
    Announce,
    /// Answer call `id` with the first `len` bytes of `echo`.
    Echo {
        id: u64,
        len: usize,
    },
    Reject {
        id: u64,
        code: RejectCode,
    },
    Cancelled {
        id: u64,
    },
}

impl Node {
    /// `bufs`: the session's storage, the frame-assembly, transmit and read buffers
    /// (at least [`STORAGE_LEN`], [`DECODER_LEN`], [`TX_LEN`] and [`RX_LEN`] bytes).
    pub fn new(bufs: [Buf; 4], node_id: &str, platform: &str) -> Result<Self, SetupError> {
        let [storage, frame, tx, rx] = bufs;
        Ok(Node {
            session: NodeSession::new(CONFIG, node_id, platform, Some(storage))?,
            lender: Slots::new(None, frame, tx),
            rx: ReadBuf::new(rx),
            app: App {
                echo: [0; ECHO_MAX],
                events_sent: 0,
                calls_answered: 0,
            },
        })
    }

    pub fn session(&self) -> &NodeSession<Buf> {
        &self.session
    }
}

impl App {
    /// Hands every event to the application.
    fn events(&mut self, session: &mut NodeSession<Buf>) {
        loop {
            let action = match session.poll_event() {
                None => return,
                Some(NodeEvent::Connected { .. }) => Action::Announce,
                Some(NodeEvent::Call { call, .. }) if call.capability != ECHO => Action::Reject {
                    id: call.call_id,
                    code: RejectCode::UnknownCapability,
                },
                Some(NodeEvent::Call { call, .. }) => {
                    match self.echo.get_mut(..call.input.data.len()) {
                        Some(dst) => {
                            dst.copy_from_slice(call.input.data);
                            Action::Echo {
                                id: call.call_id,
                                len: call.input.data.len(),
                            }
                        }
                        None => Action::Reject {
                            id: call.call_id,
                            code: RejectCode::BadInput,
                        },
                    }
                }
                Some(NodeEvent::Cancel {
                    call_id,
                    active: true,
                    ..
                }) => Action::Cancelled { id: call_id },
                // Duplicates, gaps, expiries and resets need nothing from an echo node.
                Some(_) => Action::Nothing,
            };
            self.act(session, action);
        }
    }

    fn act(&mut self, session: &mut NodeSession<Buf>, action: Action) {
        // A refused command (`Full`: the replay buffer waits for the daemon's
        // acknowledgement) is dropped here; a real node would retry after the next ack.
        match action {
            Action::Nothing => {}
            Action::Announce => {
                if let Ok(capabilities) = Capabilities::new(&CAPABILITIES) {
                    let _ = session.register(Register { capabilities });
                }
                let up = Payload {
                    content_type: "text/plain",
                    data: b"up",
                };
                if session.send_event("node.up", up).is_ok() {
                    self.events_sent += 1;
                }
            }
            Action::Echo { id, len } => {
                let out = Payload {
                    content_type: OCTETS,
                    data: &self.echo[..len],
                };
                if session.complete(id, Outcome::Success(out)).is_ok() {
                    self.calls_answered += 1;
                }
            }
            Action::Reject { id, code } => {
                let outcome = Outcome::Rejected { code, reason: "" };
                let _ = session.complete(id, outcome);
            }
            Action::Cancelled { id } => {
                let _ = session.complete(id, Outcome::Cancelled);
            }
        }
    }
}

/// Runs one transport connection until it ends. The session, and whatever it holds for
/// replay, carries over to the next one.
pub async fn drive<T: Transport, C: Clock>(node: &mut Node, io: &mut T, clock: &C) {
    let mut pump = Pump::new();
    node.session.handle_connected(clock.now());
    loop {
        let step = pump.poll(
            clock.now(),
            &mut node.session,
            &mut node.lender,
            &mut node.rx,
        );
        match step {
            Step::Events(s) => node.app.events(s),
            // The session lives in RAM: it has no journal.
            Step::Journal(batch) => drop(batch.stage(|_| {})),
            Step::Transmit(out) => {
                if io.write_all(out.bytes()).await.is_err() {
                    node.session.handle_disconnected(clock.now());
                    break;
                }
            }
            Step::Close(out) => {
                let _ = io.write_all(out.bytes()).await;
                io.close().await;
                break;
            }
            Step::Wait(wait) => {
                // Bytes (unless a frame waits for the application), or the deadline.
                let got = {
                    let mut read = pin!(async {
                        match wait.read {
                            true => io.read(node.rx.space()).await.map(Some),
                            false => core::future::pending().await,
                        }
                    });
                    let mut timer = pin!(async {
                        match wait.deadline {
                            Some(at) => clock.sleep_until(at).await,
                            None => core::future::pending().await,
                        }
                    });
                    poll_fn(|cx| match read.as_mut().poll(cx) {
                        Poll::Ready(r) => Poll::Ready(r),
                        Poll::Pending => timer.as_mut().poll(cx).map(|()| Ok(None)),
                    })
                    .await
                };
                match got {
                    Ok(Some(n)) => node.rx.filled(n),
                    Ok(None) => node.session.handle_timeout(clock.now()),
                    Err(Closed) => {
                        node.session.handle_disconnected(clock.now());
                        break;
                    }
                }
            }
        }
    }
    pump.release(&mut node.session, &mut node.lender);
}
