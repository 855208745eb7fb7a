//! The daemon's TCP + TLS listener.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol_core::pairing::{PAIRING_MAX_FRAME, PairingMessage, decode_pairing};
use protocol_core::session::DaemonSession;
use protocol_core::wire::{ErrorCode, decode_message};
use rustls::ServerConfig;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::refuse::{close_after, error_frame, refuse, refuse_pairing};
use crate::admission::pairing_limit::{
    DEFAULT_PAIRING_BURST, DEFAULT_PAIRING_REFILL, PairingStarts,
};
use crate::admission::{self, Denied};
use crate::clock;
use crate::driver::{Application, Driver, Ended};
use crate::host::TransportKind;
use crate::stats::{self, HandshakeFailure};
use crate::tls::{ALPN, Fingerprint, Revocation, RevocationWatch};

/// Default cap on concurrent connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default time allowed for the TLS handshake (and, for an anonymous connection, its
/// first pairing frame).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections over the cap being refused at once; beyond this they are dropped unread.
const MAX_REFUSING: usize = 64;

/// Largest TLS record the listener sends, header included (rustls `max_fragment_size`).
///
/// Microcontroller nodes (embedded-tls) hold one whole record in their read buffer and
/// cannot make the daemon send smaller ones (rustls ignores the client's
/// `max_fragment_length`), so the daemon keeps its records small: 1024 bytes, 1019 of
/// plaintext. Not for QUIC, which has no TLS records (rustls bypasses its fragmenter
/// there): the QUIC endpoint keeps the configuration it was given. embedded-tls also
/// cannot reassemble a handshake message split across records, so the daemon's whole
/// handshake flight (its certificate and the CA's name among it) must stay within one
/// record; a certificate from the daemon's CA with a few names does.
pub const MAX_RECORD: usize = 1024;

/// The listener's copy of `tls`, with records capped at [`MAX_RECORD`].
fn capped(tls: &ServerConfig) -> Arc<ServerConfig> {
    let mut capped = tls.clone();
    capped.max_fragment_size = Some(MAX_RECORD);
    Arc::new(capped)
}

/// Limits of a [`Listener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Connections served at once (handshaking, routed, or being driven). One more is
    /// refused with `Error(Overloaded)` after its TLS handshake.
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// Pairing starts one peer address (an IPv6 /64) may make at once...
    pub pairing_burst: u32,
    /// ...then one per this long. A start over the limit is answered with a pairing
    /// `Abort(RateLimited { retry_after_ms })` and closed.
    pub pairing_refill: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            pairing_burst: DEFAULT_PAIRING_BURST,
            pairing_refill: DEFAULT_PAIRING_REFILL,
        }
    }
}

/// Where accepted connections go. A full (or closed) channel refuses the connection
/// with `Error(Overloaded)`.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Connections with a valid, unrevoked device certificate.
    pub nodes: mpsc::Sender<DeviceConnection>,
    /// Connections without a certificate whose first frame is a pairing `Start`. With
    /// `None`, such connections are refused with `Error(Unauthorized)`.
    pub pairing: Option<mpsc::Sender<PairingConnection>>,
}

/// The daemon's TCP + TLS listener: accepts, runs the handshake under a timeout, checks
/// the peer and routes it, under a cap on concurrent connections. Every refusal after a
/// TLS handshake is an `Error` frame the peer can read, then a close; a refusal during
/// the handshake is a TLS alert. Other connections keep being served.
pub struct Listener {
    tcp: TcpListener,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
}

struct Shared {
    acceptor: TlsAcceptor,
    revocation: Arc<dyn Revocation>,
    config: ListenerConfig,
    pairing_starts: PairingStarts,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.tcp.local_addr().ok())
            .field("config", &self.shared.config)
            .field("open", &self.open_connections())
            .finish()
    }
}

impl Listener {
    /// Binds `addr`. `tls` comes from [`server_config`](crate::tls::server_config) with
    /// the same `revocation`, which the listener checks once more before it hands a
    /// device's connection over.
    ///
    /// The listener serves its own copy of `tls` whose records are capped at
    /// [`MAX_RECORD`] bytes (the caller's, shared with QUIC, is left as it is).
    pub async fn bind(
        addr: SocketAddr,
        tls: Arc<ServerConfig>,
        revocation: Arc<dyn Revocation>,
        config: ListenerConfig,
    ) -> io::Result<Self> {
        let tls = capped(&tls);
        Ok(Self {
            tcp: TcpListener::bind(addr).await?,
            permits: Arc::new(Semaphore::new(config.max_connections)),
            shared: Arc::new(Shared {
                acceptor: TlsAcceptor::from(tls),
                revocation,
                pairing_starts: PairingStarts::new(config.pairing_burst, config.pairing_refill),
                config,
            }),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Connections counted against the cap now.
    pub fn open_connections(&self) -> usize {
        self.shared
            .config
            .max_connections
            .saturating_sub(self.permits.available_permits())
    }

    /// Accepts connections until the node route is found closed (checked before each
    /// accept; abort the task to stop at once). Each connection is handled on its own task; an accept error (e.g. out of file descriptors) pauses briefly and
    /// the loop goes on.
    pub async fn run(self, routes: Routes) -> io::Result<()> {
        let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
        while !routes.nodes.is_closed() {
            let (tcp, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let shared = self.shared.clone();
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let routes = routes.clone();
                    tokio::spawn(admit(shared, routes, tcp, peer, permit));
                }
                Err(_) => {
                    // Over the cap: say so after the handshake, within a small budget
                    // of refusals in progress; past it, drop the connection unread.
                    stats::failed(TransportKind::Tcp, HandshakeFailure::Overloaded);
                    if let Ok(slot) = refusing.clone().try_acquire_owned() {
                        tokio::spawn(async move {
                            let limit = shared.config.handshake_timeout;
                            if let Ok(Ok(tls)) = timeout(limit, shared.acceptor.accept(tcp)).await {
                                refuse(tls, ErrorCode::Overloaded, "connection limit reached")
                                    .await;
                            }
                            drop(slot);
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Handshake, checks, routing of one connection within the cap.
async fn admit(
    shared: Arc<Shared>,
    routes: Routes,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let limit = shared.config.handshake_timeout;
    // A refused certificate ends here: rustls has sent the alert that says why.
    let mut tls = match timeout(limit, shared.acceptor.accept(tcp).into_fallible()).await {
        Ok(Ok(tls)) => tls,
        Ok(Err((_, mut tcp))) => {
            stats::failed(TransportKind::Tcp, HandshakeFailure::Tls);
            // The alert is written; a close with the peer's next bytes unread (a node
            // sends its hello right after its Finished) would reset the connection and
            // could destroy the alert before the peer reads it.
            return close_after(&mut tcp, &[]).await;
        }
        Err(_) => return stats::failed(TransportKind::Tcp, HandshakeFailure::Timeout),
    };
    let conn = tls.get_ref().1;
    if conn.alpn_protocol() != Some(ALPN) {
        stats::failed(TransportKind::Tcp, HandshakeFailure::Alpn);
        return refuse(tls, ErrorCode::Unauthorized, "ALPN tern/1 required").await;
    }
    let device = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|cert| admission::device(cert, Some(shared.revocation.as_ref())));
    match device {
        Some(Err(denied)) => {
            stats::failed(TransportKind::Tcp, denied.failure);
            refuse(tls, denied.refusal.code, &denied.refusal.reason).await;
        }
        Some(Ok((device_id, fingerprint))) => {
            let conn = DeviceConnection {
                stream: tls,
                device_id,
                fingerprint,
                peer,
                revocation: shared.revocation.clone(),
                _permit: permit,
            };
            match routes.nodes.try_send(conn) {
                Ok(()) => {}
                Err(TrySendError::Full(c) | TrySendError::Closed(c)) => {
                    c.refuse(ErrorCode::Overloaded, "node plane busy").await;
                }
            }
        }
        None => {
            let Some(pairing) = routes.pairing else {
                return refuse(
                    tls,
                    ErrorCode::Unauthorized,
                    "a client certificate is required",
                )
                .await;
            };
            let first = match timeout(limit, first_frame(&mut tls)).await {
                Ok(Ok(Ok(frame))) => frame,
                Ok(Ok(Err(code))) => return refuse(tls, code, "frame too large").await,
                Ok(Err(_)) | Err(_) => return,
            };
            if !matches!(decode_pairing(&first), Ok(PairingMessage::Start(_))) {
                let reason = if decode_message(&first).is_ok() {
                    "the node plane needs a client certificate"
                } else {
                    "without a client certificate only pairing is allowed"
                };
                return refuse(tls, ErrorCode::Unauthorized, reason).await;
            }
            if let Err(error) = shared.pairing_starts.try_start(peer.ip(), clock::now()) {
                return refuse_pairing(tls, error).await;
            }
            let conn = PairingConnection {
                stream: tls,
                first_frame: first,
                peer,
                _permit: permit,
            };
            match pairing.try_send(conn) {
                Ok(()) => {}
                Err(TrySendError::Full(c) | TrySendError::Closed(c)) => {
                    c.refuse(ErrorCode::Overloaded, "pairing busy").await;
                }
            }
        }
    }
}

/// Reads exactly one frame of at most [`PAIRING_MAX_FRAME`] bytes; a larger length
/// prefix is answered `FrameTooLarge` before any body byte is read.
async fn first_frame(tls: &mut TlsStream<TcpStream>) -> io::Result<Result<Vec<u8>, ErrorCode>> {
    let mut header = [0u8; 4];
    tls.read_exact(&mut header).await?;
    let len = u32::from_be_bytes(header);
    if len > PAIRING_MAX_FRAME {
        return Ok(Err(ErrorCode::FrameTooLarge {
            len,
            max: PAIRING_MAX_FRAME,
        }));
    }
    let mut frame = vec![0u8; len as usize];
    tls.read_exact(&mut frame).await?;
    Ok(Ok(frame))
}

/// An accepted connection with a valid, unrevoked device certificate, for the node plane.
/// It counts against the listener's cap until dropped.
pub struct DeviceConnection {
    stream: TlsStream<TcpStream>,
    device_id: String,
    fingerprint: Fingerprint,
    peer: SocketAddr,
    pub(super) revocation: Arc<dyn Revocation>,
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for DeviceConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceConnection")
            .field("device_id", &self.device_id)
            .field("fingerprint", &self.fingerprint)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl DeviceConnection {
    /// The device id its certificate names (subject CN). The daemon builds the session
    /// with it, `DaemonSession::new(config, conn.device_id(), rng)`, so a hello naming
    /// another node is answered `Error(Unauthorized)`.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the TLS handshake was a full one (never a resumption).
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.stream.get_ref().1.handshake_kind()
    }

    /// Drives `driver`'s session over this connection, closing it with `Error(Revoked)`
    /// as soon as this device or its certificate is revoked.
    ///
    /// The session must be this device's: one built for another node id is refused
    /// (`InvalidInput`) and the peer reads `Error(Unauthorized)`.
    pub async fn serve<A>(
        self,
        driver: Driver<'_, DaemonSession<Box<[u8]>>, A>,
    ) -> io::Result<Ended>
    where
        A: Application<DaemonSession<Box<[u8]>>>,
    {
        let mut stream = self.stream;
        if let Err(denied) = admission::bound_to(&*driver.session, &self.device_id) {
            deny(&mut stream, &denied).await;
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the session belongs to another node than the certificate",
            ));
        }
        let watch = RevocationWatch::new(self.revocation, self.fingerprint, &self.device_id);
        let ended = driver.with_revocation(watch).run(&mut stream).await;
        drop(self._permit);
        ended
    }

    /// Closes the connection with `Error { code, reason }`.
    pub async fn refuse(self, code: ErrorCode, reason: &str) {
        refuse(self.stream, code, reason).await;
    }

    /// The stream, and the permit that counts it against the listener's cap.
    pub(super) fn into_parts(self) -> (TlsStream<TcpStream>, OwnedSemaphorePermit) {
        (self.stream, self._permit)
    }
}

/// An accepted connection without a client certificate whose first frame was a pairing
/// `Start`: it may carry pairing messages and nothing else. It counts against the
/// listener's cap until dropped.
pub struct PairingConnection {
    stream: TlsStream<TcpStream>,
    first_frame: Vec<u8>,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for PairingConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingConnection")
            .field("peer", &self.peer)
            .field("first_frame_len", &self.first_frame.len())
            .finish_non_exhaustive()
    }
}

impl PairingConnection {
    /// The peer's address (pairing rate-limits per address).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The payload of the first frame (a pairing `Start`), already read off the stream.
    pub fn first_frame(&self) -> &[u8] {
        &self.first_frame
    }

    /// The stream, after the first frame.
    pub fn stream(&mut self) -> &mut TlsStream<TcpStream> {
        &mut self.stream
    }

    /// Closes the connection with `Error { code, reason }`.
    pub async fn refuse(self, code: ErrorCode, reason: &str) {
        refuse(self.stream, code, reason).await;
    }
}

/// Tells a peer admission turned away why, with an `Error` frame.
pub(super) async fn deny<IO>(io: &mut IO, denied: &Denied)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let r = &denied.refusal;
    close_after(io, &error_frame(r.code, &r.reason)).await;
}
