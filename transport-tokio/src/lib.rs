//! Tern's std transport: protocol-core sessions over TCP + TLS on tokio.
//!
//! - [`tls`]: rustls configurations for both ends. The daemon requires client
//!   certificates that chain to its CA (or none at all: such a connection may only pair),
//!   consults a live [`Revocation`](tls::Revocation) check at every handshake, and keeps
//!   session resumption and tickets off. A node pins the SHA-256 fingerprint of the
//!   daemon's server certificate. ALPN `tern/1` on both.
//! - [`tcp`]: the listener (connection cap, handshake timeout, routing of authenticated
//!   connections to the node plane and anonymous ones to pairing, refusals the peer can
//!   read) and the connector.
//! - [`driver`]: runs one [`Session`](protocol_core::session::Session) of either role
//!   over one stream, with storage lent from a [`StoragePool`] and journal operations
//!   handed to a [`JournalStore`].
//!
//! The crate depends on `protocol-core` only; what it needs from the daemon (the CA, the
//! revocation set, a journal, the application) comes in through values and small traits.
#![forbid(unsafe_code)]

pub mod admission;
pub mod clock;
pub mod driver;
pub mod host;
pub mod journal;
pub mod pairing;
pub mod pool;
pub mod quic;
pub mod stats;
pub mod tcp;
pub mod tls;

pub use driver::{Application, Driver, Ended, Journal};
pub use journal::{Batch, JournalError, JournalStore, MemJournals};
pub use pool::{PoolLender, StoragePool};
