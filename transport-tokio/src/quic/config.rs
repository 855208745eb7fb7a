//! QUIC settings: the limits every Tern connection runs under, on top of the same rustls
//! configurations the TCP transport uses (`crate::tls`).

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    ConnectionIdGenerator, EndpointConfig, HashedConnectionIdGenerator, IdleTimeout,
    TransportConfig, VarInt,
};
use ring::{hkdf, hmac};

use crate::admission::{DEFAULT_PAIRING_BURST, DEFAULT_PAIRING_REFILL};

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
/// Least time between two stateless resets: none. quinn-proto's default (20 ms) would
/// take a restarted daemon 200 s to reset 10,000 nodes' dead connections, and any
/// interval drops all but the first of a received batch (they share one `now`), leaving
/// those nodes to their idle timeout. A reset is always smaller than the packet that
/// caused it, so it cannot amplify, and a loop dies out.
pub const RESET_INTERVAL: Duration = Duration::ZERO;

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
    /// Least time between two stateless resets sent.
    pub reset_interval: Duration,
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
            reset_interval: RESET_INTERVAL,
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

/// The keys a daemon's endpoint keeps across restarts: with the same stateless-reset key a
/// restarted daemon answers a node's next packet on its dead connection with a reset the
/// node trusts, so the node reconnects at once instead of waiting out its idle timeout;
/// the token key keeps address-validation tokens valid.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointKeys {
    reset: [u8; ENDPOINT_KEY_LEN],
    token: [u8; ENDPOINT_KEY_LEN],
}

/// Bytes of each [`EndpointKeys`] key.
pub const ENDPOINT_KEY_LEN: usize = 64;

impl EndpointKeys {
    /// Keys from the caller's secret random bytes (kept in the daemon's store).
    pub fn new(reset: [u8; ENDPOINT_KEY_LEN], token: [u8; ENDPOINT_KEY_LEN]) -> Self {
        Self { reset, token }
    }

    pub fn reset(&self) -> &[u8; ENDPOINT_KEY_LEN] {
        &self.reset
    }

    pub fn token(&self) -> &[u8; ENDPOINT_KEY_LEN] {
        &self.token
    }
}

impl std::fmt::Debug for EndpointKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointKeys(..)")
    }
}

/// The endpoint's settings: the reset key from `keys`, or a fresh random one.
pub(crate) fn endpoint(keys: Option<&EndpointKeys>, limits: &QuicLimits) -> Arc<EndpointConfig> {
    let mut config = match keys {
        Some(k) => {
            let reset = hmac::Key::new(hmac::HMAC_SHA256, &k.reset);
            // quinn-proto drops a packet whose connection ID its generator does not
            // recognise before it would reset it: the generator's key must outlive a
            // restart too. It is derived from the reset key rather than stored apart.
            let tag = hmac::sign(&reset, b"tern connection ids");
            let mut cid_key = [0u8; 8];
            cid_key.copy_from_slice(&tag.as_ref()[..8]);
            let cid_key = u64::from_le_bytes(cid_key);
            let mut config = EndpointConfig::new(Arc::new(reset));
            config.cid_generator(move || {
                Box::new(HashedConnectionIdGenerator::from_key(cid_key))
                    as Box<dyn ConnectionIdGenerator>
            });
            config
        }
        None => EndpointConfig::default(),
    };
    config.min_reset_interval(limits.reset_interval);
    Arc::new(config)
}

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
    keys: Option<&EndpointKeys>,
) -> Result<Arc<quinn_proto::ServerConfig>, QuicSetupError> {
    let crypto =
        Arc::new(QuicServerConfig::try_from(tls).map_err(|e| QuicSetupError(e.to_string()))?);
    let mut config = match keys {
        Some(k) => {
            let token_key = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&k.token);
            quinn_proto::ServerConfig::new(crypto, Arc::new(token_key))
        }
        None => quinn_proto::ServerConfig::with_crypto(crypto),
    };
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
