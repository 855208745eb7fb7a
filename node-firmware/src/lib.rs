//! Tern's microcontroller node: one application, several boards.
//!
//! A board brings its peripherals through [`Board`] and its console through [`Console`],
//! an [`IdentityStore`](transport_embedded::IdentityStore) (a flash sector, or a file
//! standing in for one), a [`Dialer`](transport_embedded::Dialer) on its network stack,
//! an RNG seeded from its entropy ([`rng_from_seed`]) and one static arena of
//! [`ARENA_LEN`] bytes; [`run`] does the rest:
//!
//! 1. loads the identity; a blank store means first boot: the pairing code or `tern://`
//!    URI comes from the build ([`Settings::invitation`]) or is read from the console,
//!    the key is generated on the device, the node pairs and stores what it was issued,
//!    and prints its node id;
//! 2. connects with mutual TLS (the daemon pinned), registers its capabilities and
//!    serves them ([`app`]): `echo`, `system.health`, `board.led`, `tern.certificate`;
//!    streams `sensor.temperature` readings; asks for a new certificate when the current
//!    one is due;
//! 3. reconnects with backoff and resumes the same session until the daemon refuses the
//!    node for good, or the board asks it to stop (then it first waits until the daemon
//!    has acknowledged everything sent).
#![no_std]
#![forbid(unsafe_code)]

pub mod app;
pub mod board;
pub mod capabilities;
pub mod provision;
mod run;
pub mod sensor;

pub use app::FirmwareApp;
pub use board::{Board, Console};
pub use provision::{ProvisionError, parse_invitation};
pub use run::{ARENA_LEN, CONFIG, Exit, Settings, rng_from_seed, run};
