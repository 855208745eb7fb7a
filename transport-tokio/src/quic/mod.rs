//! QUIC on tokio over quinn-proto and quinn-udp: one task per endpoint drives every
//! connection and the protocol-core session each carries (a node's session on one
//! bidirectional stream), with the same TLS rules as the TCP transport.
//!
//! - [`QuicEndpoint::server`]: the daemon side; a device's certificate is checked by the
//!   TLS configuration (chain, live revocation), bound to its session's node id, and its
//!   connections close as soon as it is revoked.
//! - [`QuicEndpoint::client`]: the node side; [`QuicHandle::connect`] dials the daemon
//!   with a pinned configuration.
//! - Sessions come from, and go back to, the application's
//!   [`Sessions`](crate::host::Sessions); its commands reach a connection through
//!   [`Commands`](crate::host::Commands).

mod config;
mod conn;
mod endpoint;
mod pairing;
mod socket;
mod stream;

pub use config::{
    DEFAULT_MAX_CONNECTIONS, ENDPOINT_KEY_LEN, EndpointKeys, HANDSHAKE_TIMEOUT, IDLE_TIMEOUT,
    KEEP_ALIVE, MAX_BIDI_STREAMS, QuicLimits, QuicSetupError, RESET_INTERVAL,
};
pub use endpoint::{CommandOf, ConnectError, QuicEndpoint, QuicHandle, Started};
