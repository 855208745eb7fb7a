//! QUIC settings: the limits every Tern connection runs under, on top of the same rustls
//! configurations the TCP transport uses (`crate::tls`).

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{IdleTimeout, TransportConfig, VarInt};

use crate::tcp::{DEFAULT_PAIRING_BURST, DEFAULT_PAIRING_REFILL};

/// Time allowed for the handshake; the endpoint closes a connection still handshaking
/// after it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that hears nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Both ends ping this often, well inside the idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Concurrent bidirectional streams the peer may open (a node session uses one).
pub const MAX_BIDI_STREAMS: u32 = 32;
/// Default cap on concurrent connections of a server endpoint.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Limits of a QUIC endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicLimits {
    /// Connections served at once. One more completes its handshake and is closed with
    /// `Overloaded` and a reason.
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    pub max_bidi_streams: u32,
    /// Per-stream receive window. A session's frames are at most its max frame, so a
    /// window of a few frames keeps a fast sender busy without letting one connection
    /// pin much memory.
    pub stream_window: u32,
    /// Pairing starts one peer address (an IPv6 /64) may make at once...
    pub pairing_burst: u32,
    /// ...then one per this long. A start over the limit is answered with a pairing
    /// `Abort(RateLimited { retry_after_ms })` and the connection closed.
    pub pairing_refill: Duration,
}

impl Default for QuicLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            keep_alive: KEEP_ALIVE,
            max_bidi_streams: MAX_BIDI_STREAMS,
            stream_window: 2 * 1024 * 1024,
            pairing_burst: DEFAULT_PAIRING_BURST,
            pairing_refill: DEFAULT_PAIRING_REFILL,
        }
    }
}

/// The QUIC settings could not be built from the TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicSetupError(pub String);

impl std::fmt::Display for QuicSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QUIC setup: {}", self.0)
    }
}

impl std::error::Error for QuicSetupError {}

pub(crate) fn transport(limits: &QuicLimits) -> Result<Arc<TransportConfig>, QuicSetupError> {
    let idle = IdleTimeout::try_from(limits.idle_timeout)
        .map_err(|_| QuicSetupError("idle timeout out of range".into()))?;
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(limits.keep_alive))
        .max_concurrent_bidi_streams(VarInt::from_u32(limits.max_bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(limits.stream_window))
        .receive_window(VarInt::from_u32(limits.stream_window.saturating_mul(2)))
        .datagram_receive_buffer_size(None);
    Ok(Arc::new(t))
}

/// The server side: `tls` from [`server_config`](crate::tls::server_config) (resumption
/// and tickets off, client certificates checked against the CA and the live revocation
/// set at every handshake).
pub(crate) fn server(
    tls: Arc<rustls::ServerConfig>,
    limits: &QuicLimits,
) -> Result<Arc<quinn_proto::ServerConfig>, QuicSetupError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicSetupError(e.to_string()))?;
    let mut config = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
    config
        .transport_config(transport(limits)?)
        // A device's address may change; its certificate does not.
        .migration(true);
    Ok(Arc::new(config))
}

/// The client side: `tls` from [`client_config`](crate::tls::client_config) (pinned
/// server) or [`pairing_client_config`](crate::tls::pairing_client_config).
pub(crate) fn client(
    tls: Arc<rustls::ClientConfig>,
    limits: &QuicLimits,
) -> Result<quinn_proto::ClientConfig, QuicSetupError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| QuicSetupError(e.to_string()))?;
    let mut config = quinn_proto::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(limits)?);
    Ok(config)
}
