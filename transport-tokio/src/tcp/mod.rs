//! TCP + TLS: the daemon's listener and a node's connector.
//!
//! For networks that block UDP, and for microcontroller nodes. Same security rules,
//! framing and sessions as every transport: see [`crate::tls`] and [`crate::driver`].

mod connector;
mod listener;
pub(crate) mod refuse;
mod serve;

pub use crate::admission::{DEFAULT_PAIRING_BURST, DEFAULT_PAIRING_REFILL};
pub use connector::Connector;
pub use listener::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DeviceConnection, Listener, ListenerConfig,
    MAX_RECORD, PairingConnection, Routes,
};
pub use refuse::{refuse, refuse_pairing};
pub use serve::{daemon_peer, serve};
