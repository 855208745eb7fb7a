//! The transport comparison harness run by `benches/transports.rs`: the same sessions
//! over the project's QUIC driver and over TCP + TLS, raw frames over the `quinn`
//! crate, all with the same rustls configurations, on loopback.
//!
//! - [`certs`]: a test CA, the daemon's identity, one certificate per node.
//! - [`sessions`]: a daemon registry and node applications over protocol-core sessions,
//!   on either transport of `transport-tokio`.
//! - [`raw_quinn`]: the baseline, `quinn` used the usual way.
//! - [`memory`]: the daemon alone in a child process, its RSS per idle node.
//! - [`stats`]: round-trip percentiles and throughput sampling.

pub mod certs;
pub mod memory;
pub mod raw_quinn;
pub mod sessions;
pub mod stats;

use std::fmt;

/// Payload of a round trip, both ways.
pub const RTT_PAYLOAD: usize = 64;
/// Payload of a bulk frame.
pub const BULK_PAYLOAD: usize = 64 * 1024;

/// Which transport a measurement runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// protocol-core sessions over `transport_tokio::quic`.
    QuicDriver,
    /// Raw length-prefixed frames over the `quinn` crate.
    Quinn,
    /// protocol-core sessions over `transport_tokio::tcp` (TCP + TLS).
    TcpTls,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::QuicDriver, Transport::Quinn, Transport::TcpTls];

    pub fn name(self) -> &'static str {
        match self {
            Transport::QuicDriver => "quic-driver",
            Transport::Quinn => "quinn",
            Transport::TcpTls => "tcp-tls",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A measurement could not be made; the message says which step failed and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchError(pub String);

impl BenchError {
    /// Wraps an error with the step it happened in.
    pub fn context<E: fmt::Display>(step: &'static str) -> impl FnOnce(E) -> BenchError {
        move |e| BenchError(format!("{step}: {e}"))
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        BenchError(format!("I/O: {e}"))
    }
}
