//! The contract between a Tern node and the daemon, beyond the wire protocol.
//!
//! `protocol-core` says how bytes travel; this crate says what they mean once they
//! arrive: the names of the built-in capabilities and events, the JSON each one carries,
//! and the descriptors a node registers them with. The Linux node host, the daemon and
//! microcontroller firmware all take them from here, so a node of either kind is called,
//! read and renewed the same way.
//!
//! - [`names`]: capability and event names, and [`JSON`], the content type they use;
//! - [`descriptors`]: the built-in capabilities as a node registers them;
//! - [`health`]: what `system.health` answers and the `health` event carries, on a
//!   Linux host or a microcontroller;
//! - [`renewal`]: the certificate renewal exchange (`tern.renew`, `tern.certificate`);
//! - [`board`]: a board's LED and temperature sensor;
//! - [`hex`]: the hex text DER travels as, into and out of caller buffers.
//!
//! Nothing here allocates. Payloads borrow their text from the JSON they were read from
//! (`&'a str`), so they decode with `serde_json` on a host and with `serde-json-core` on a
//! microcontroller. Borrowing has one cost: a string holding a JSON escape cannot be
//! lent as it stands. `serde_json` refuses it, and `serde-json-core` hands it over still
//! escaped unless given an unescape buffer (`from_slice_escaped`). Hex never needs
//! escaping; a host name or path that does is read back only through such a buffer.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod board;
pub mod descriptors;
pub mod health;
pub mod hex;
pub mod names;
pub mod renewal;

pub use board::{LedState, SetLed, Temperature};
pub use descriptors::Descriptor;
pub use health::{Disk, Health, LoadAverage, Memory, Stack, Usage};
pub use hex::HexError;
pub use names::JSON;
pub use renewal::{Installed, RenewRequest, Renewed};

#[cfg(test)]
mod tests;
