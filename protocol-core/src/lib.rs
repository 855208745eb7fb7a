//! Tern's protocol core: the node protocol as sans-IO state machines.
//!
//! Nothing here touches a socket, a clock or an allocator. Adapters feed bytes and the
//! current time in and carry out what the state machines ask for. This layer holds:
//!
//! - [`frame`]: length-prefixed framing with the frame limit checked on the prefix;
//! - [`wire`]: the message set (postcard, zero-copy), message tags, version negotiation;
//! - [`session`]: sessions with resumable ordered streams, keep-alive and capability
//!   calls, and the journal hook that makes a daemon's side durable;
//! - [`pairing`]: pairing from a short code (SPAKE2+), CSR-based issuance, sealed answers;
//! - [`pump`]: the one drive order every driver uses: frames in, storage lent, events,
//!   journal batches, frames out, backpressure;
//! - [`backoff`]: the delays between a node's reconnection attempts.
//!
//! Every state machine follows one convention (inputs through `handle_*` with `now`,
//! outputs polled apart, buffers lent by the caller): `SANS_IO.md` next to this crate's
//! manifest. The byte-level specification is in `WIRE.md`.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod backoff;
pub mod frame;
pub mod pairing;
pub mod pump;
pub mod session;
pub mod time;
pub mod transmit;
pub mod wire;
