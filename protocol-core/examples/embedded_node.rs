//! A node on a microcontroller: the driver loop around a [`NodeSession`], with no
//! allocator and no standard library.
//!
//! Everything is in static buffers the firmware hands over once: the session's storage
//! (replay buffer and inbox), the frame decoder's buffer and the transmit buffer. The
//! limits are a `const` [`Config`], so they live in flash. The loop is `async` in the
//! shape an embassy task has; the transport (a TCP socket of `embassy-net`, a UART) and
//! the clock (`embassy-time`) come in through two small traits.
//!
//! On the device:
//!
//! ```text
//! static STORAGE: StaticCell<[u8; STORAGE_LEN]> = StaticCell::new();
//! static DECODER: StaticCell<[u8; DECODER_LEN]> = StaticCell::new();
//! static TX: StaticCell<[u8; TX_LEN]> = StaticCell::new();
//!
//! #[embassy_executor::task]
//! async fn tern(stack: Stack<'static>) -> ! {
//!     let mut node = Node::new(STORAGE.init([0; STORAGE_LEN]), TX.init([0; TX_LEN]), "sensor-7", "stm32f4")
//!         .expect("CONFIG fits its buffers");
//!     let decoder = DECODER.init([0; DECODER_LEN]);
//!     loop {
//!         let mut socket = connect(stack).await; // TCP, then TLS
//!         drive(&mut node, decoder, &mut socket, &EmbassyClock).await;
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

use protocol_core::frame::FrameDecoder;
use protocol_core::session::{Config, Instant, NodeEvent, NodeSession, SetupError, Transmit};
use protocol_core::wire::{
    Capabilities, CapabilityDescriptor, Outcome, Payload, Register, RejectCode,
};

/// The node's limits: 1 KiB of replay buffer, 2 KiB frames, state in RAM.
pub const CONFIG: Config = Config::embedded(1024);
/// Bytes of the session's storage.
pub const STORAGE_LEN: usize = CONFIG.storage_len();
/// Bytes of the frame decoder's buffer: one frame at our own limit.
pub const DECODER_LEN: usize = CONFIG.max_frame as usize;
/// Bytes of the transmit buffer: always holds the next frame.
pub const TX_LEN: usize = CONFIG.transmit_len();

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

/// The node: its session, which outlives connections, and the transmit buffer.
pub struct Node {
    session: NodeSession<Buf>,
    tx: Buf,
    /// An echo input, copied out of the event (which borrows the session).
    echo: [u8; ECHO_MAX],
    /// Events sent so far.
    pub events_sent: u32,
    /// Calls answered so far.
    pub calls_answered: u32,
}

impl core::fmt::Debug for Node {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("session", &self.session)
            .field("events_sent", &self.events_sent)
            .field("calls_answered", &self.calls_answered)
            .finish_non_exhaustive()
    }
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
    pub fn new(storage: Buf, tx: Buf, node_id: &str, platform: &str) -> Result<Self, SetupError> {
        Ok(Node {
            session: NodeSession::new(CONFIG, node_id, platform, Some(storage))?,
            tx,
            echo: [0; ECHO_MAX],
            events_sent: 0,
            calls_answered: 0,
        })
    }

    pub fn session(&self) -> &NodeSession<Buf> {
        &self.session
    }

    /// Feeds received bytes through the frame decoder into the session.
    fn input(&mut self, now: Instant, decoder: &mut FrameDecoder<&mut [u8]>, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match decoder.decode(bytes) {
                Ok(progress) => {
                    if let Some(frame) = progress.frame {
                        // The storage is lent for good, so the session never asks for it.
                        let _ = self.session.handle_frame(now, frame);
                    }
                    bytes = &bytes[progress.consumed..];
                }
                Err(e) => {
                    // Out of step: an error frame goes out, then the close.
                    self.session.handle_frame_error(now, e);
                    return;
                }
            }
        }
    }

    /// Hands every event to the application.
    fn events(&mut self) {
        loop {
            let action = match self.session.poll_event() {
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
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        // A refused command (`Full`: the replay buffer waits for the daemon's
        // acknowledgement) is dropped here; a real node would retry after the next ack.
        match action {
            Action::Nothing => {}
            Action::Announce => {
                if let Ok(capabilities) = Capabilities::new(&CAPABILITIES) {
                    let _ = self.session.register(Register { capabilities });
                }
                let up = Payload {
                    content_type: "text/plain",
                    data: b"up",
                };
                if self.session.send_event("node.up", up).is_ok() {
                    self.events_sent += 1;
                }
            }
            Action::Echo { id, len } => {
                let out = Payload {
                    content_type: OCTETS,
                    data: &self.echo[..len],
                };
                if self.session.complete(id, Outcome::Success(out)).is_ok() {
                    self.calls_answered += 1;
                }
            }
            Action::Reject { id, code } => {
                let outcome = Outcome::Rejected { code, reason: "" };
                let _ = self.session.complete(id, outcome);
            }
            Action::Cancelled { id } => {
                let _ = self.session.complete(id, Outcome::Cancelled);
            }
        }
    }

    /// Writes every frame the session has; `Err` once the connection is over.
    async fn output<T: Transport>(&mut self, now: Instant, io: &mut T) -> Result<(), Closed> {
        loop {
            match self.session.poll_transmit(now, &mut *self.tx) {
                Ok(Some(Transmit::Frame(n))) => {
                    if io.write_all(&self.tx[..n]).await.is_err() {
                        self.session.handle_disconnected(now);
                        return Err(Closed);
                    }
                }
                Ok(Some(Transmit::Close)) => {
                    io.close().await;
                    return Err(Closed);
                }
                // A buffer of `transmit_len()` bytes always holds the next frame.
                Ok(None) | Err(_) => return Ok(()),
            }
        }
    }
}

/// Runs one transport connection until it ends. The session, and whatever it holds for
/// replay, carries over to the next one.
pub async fn drive<T: Transport, C: Clock>(
    node: &mut Node,
    decoder_buf: &mut [u8],
    io: &mut T,
    clock: &C,
) {
    let Ok(mut decoder) = FrameDecoder::new(decoder_buf, CONFIG.max_frame) else {
        return;
    };
    node.session.handle_connected(clock.now());
    let mut chunk = [0u8; 256];
    loop {
        node.events();
        if node.output(clock.now(), io).await.is_err() {
            return;
        }
        // Bytes, or the next deadline, whichever comes first.
        let deadline = node.session.poll_timeout();
        let got = {
            let mut read = pin!(io.read(&mut chunk));
            let mut timer = pin!(async {
                match deadline {
                    Some(at) => clock.sleep_until(at).await,
                    None => core::future::pending().await,
                }
            });
            poll_fn(|cx| match read.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
            })
            .await
        };
        let now = clock.now();
        match got {
            Some(Ok(n)) => node.input(now, &mut decoder, &chunk[..n]),
            Some(Err(Closed)) => {
                node.session.handle_disconnected(now);
                return;
            }
            None => {}
        }
        // Cheap at any time; does what is due.
        node.session.handle_timeout(now);
    }
}
