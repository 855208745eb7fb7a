//! Tern's transport for microcontrollers: protocol-core's node session and pairing run
//! over embassy-net TCP with embedded-tls 0.19 mutual TLS, on the caller's static
//! buffers, without an allocator.
//!
//! The drive order is protocol-core's pump (`SANS_IO.md`, "The pump"); this crate keeps
//! the I/O, the timers and the identity's storage:
//!
//! - [`tls`]: the daemon checked against the SHA-256 pin learned at pairing *and* its
//!   handshake signature; a handshake in which the daemon never authenticated is
//!   refused; ALPN `tern/1`; the RNG bridge; record buffer sizes.
//! - [`key`], [`csr`]: the node's P-256 key, generated on the device, and the PKCS#10
//!   request the daemon's CA signs.
//! - [`identity`]: what a paired node keeps, as a checked fixed-layout record, through
//!   an [`IdentityStore`].
//! - [`pairing`]: [`pair`] turns a pairing code or a `tern://` URI into an
//!   identity.
//! - [`renewal`]: a renewed certificate over the session, without pairing again: the
//!   request ([`renewal_csr`]) and the checks before keeping it ([`Identity::renewed`]).
//! - [`session`]: [`run_session`] drives one node-plane connection;
//!   [`run_node`] reconnects with a [`Backoff`] and resumes the same
//!   session until the daemon refuses the node for good or the application stops it
//!   ([`NodeApp::keep_running`]).
//! - [`dial`]: how the daemon is reached ([`TcpDialer`] on embassy-net).
//! - [`buffers`]: the caller's memory, checked once.
//!
//! On a board (one executor task; `ARENA` a static array of
//! `max(PairingBuffers::arena_len(), SessionBuffers::arena_len(&CONFIG))` bytes, `rng`
//! a `rand_core` 0.10 CSPRNG seeded from the hardware RNG, `store` the board's flash
//! sector or file):
//!
//! ```text
//! let mut dialer = TcpDialer::new(stack, tcp_rx, tcp_tx);
//! let mut record = [0u8; RECORD_LEN];
//! let identity = match load_identity(&mut store, &mut record).await {
//!     Ok(identity) => identity,
//!     Err(LoadError::Record(RecordError::Blank)) => {
//!         let key = NodeKey::generate(&mut rng);
//!         let invitation = Invitation::uri(uri_from_qr_code)?;  // or Invitation::Code { .. }
//!         let buffers = PairingBuffers::carve(&mut ARENA[..])?;
//!         let identity = pair(&mut dialer, &invitation, &key, buffers, &mut rng,
//!                             PairOptions::default(), &mut || show("approve me")).await?;
//!         save_identity(&mut store, &identity, &mut record).await?;
//!         identity
//!     }
//!     Err(e) => return fail(e),  // foreign or corrupt: do not overwrite blindly
//! };
//! let buffers = SessionBuffers::carve(&CONFIG, &mut ARENA[..])?;
//! let mut node = Node::new(CONFIG, &identity, "stm32f429", buffers, NodeOptions::default())?;
//! match run_node(&mut node, &identity, &mut dialer, &mut app, &mut rng,
//!                Backoff::default()).await {
//!     // The app's `keep_running` said no: shutting down, or a renewed identity to save.
//!     Ok(()) => {}
//!     // Revoked, certificate refused, pin mismatch...: erase the record and pair again.
//!     Err(refused) => fail(refused),
//! }
//! ```
#![no_std]
#![forbid(unsafe_code)]

pub mod buffers;
mod certificate;
pub mod csr;
pub mod dial;
mod drive;
pub mod identity;
pub mod key;
pub mod pairing;
pub mod renewal;
pub mod session;
pub mod tls;

// The delays are protocol-core's, shared with the Linux node host.
pub use buffers::{BufferTooSmall, PairingBuffers, SessionBuffers};
pub use dial::{Connection, DialError, Dialer, TcpDialer};
pub use identity::{Identity, IdentityStore, LoadError, RecordError, load_identity, save_identity};
pub use key::NodeKey;
pub use pairing::{Invitation, PairError, PairOptions, pair};
pub use protocol_core::backoff::Backoff;
pub use renewal::{CertificateError, RenewalRefused, Validity, renewal_csr, validity};
pub use session::{
    Ended, LinkError, Node, NodeApp, NodeOptions, PeerClose, Refused, run_node, run_session,
};
