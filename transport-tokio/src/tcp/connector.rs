//! A node's TCP + TLS connector.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::listener::DEFAULT_HANDSHAKE_TIMEOUT;
use crate::tls::ALPN;

/// Dials the daemon over TCP and runs the TLS handshake with a node's configuration
/// ([`client_config`](crate::tls::client_config) or
/// [`pairing_client_config`](crate::tls::pairing_client_config)).
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    handshake_timeout: Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector with the default handshake timeout (10 s).
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self {
            tls: TlsConnector::from(config),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// The time allowed for the TCP connect and the TLS handshake together.
    pub fn with_handshake_timeout(mut self, limit: Duration) -> Self {
        self.handshake_timeout = limit;
        self
    }

    /// Connects to `addr`. Fails if the daemon's certificate is not the pinned one (the
    /// rustls error is inside the `io::Error`), if the daemon did not agree to ALPN
    /// `tern/1`, or on timeout.
    ///
    /// A daemon that refuses this node's certificate says so with a TLS alert; under
    /// TLS 1.3 it arrives after the client's side of the handshake finished, so it
    /// surfaces as an error on the first read.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TlsStream<TcpStream>> {
        self.dial(None, addr).await
    }

    /// Connects to `addr` from the local address `local` (a host with several).
    pub async fn connect_from(
        &self,
        local: SocketAddr,
        addr: SocketAddr,
    ) -> io::Result<TlsStream<TcpStream>> {
        self.dial(Some(local), addr).await
    }

    async fn dial(
        &self,
        local: Option<SocketAddr>,
        addr: SocketAddr,
    ) -> io::Result<TlsStream<TcpStream>> {
        let dial = async {
            let tcp = match local {
                None => TcpStream::connect(addr).await?,
                Some(local) => {
                    let socket = if local.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    socket.bind(local)?;
                    socket.connect(addr).await?
                }
            };
            tcp.set_nodelay(true)?;
            self.tls
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
        };
        let stream = timeout(self.handshake_timeout, dial)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server did not negotiate ALPN tern/1",
            ));
        }
        Ok(stream)
    }
}
