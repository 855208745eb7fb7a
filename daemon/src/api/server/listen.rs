//! The two listeners: the Unix socket, and TCP with TLS.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::console::Console;
use super::http::{Conn, Peer, service};
use super::{OperatorApi, ServerConfig};
use crate::api::ApiError;

/// Why a listener could not be set up.
#[derive(Debug)]
pub enum BindError {
    /// Another daemon accepts connections on this socket.
    AlreadyRunning { path: PathBuf },
    /// Something other than a socket lies at the path; it is left alone.
    NotASocket { path: PathBuf },
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// The TCP address could not be bound.
    Tcp { addr: SocketAddr, source: io::Error },
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::AlreadyRunning { path } => write!(
                f,
                "another daemon is already serving the operator socket {}",
                path.display()
            ),
            BindError::NotASocket { path } => write!(
                f,
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
            BindError::Io { path, op, source } => {
                write!(
                    f,
                    "cannot {op} operator socket {}: {source}",
                    path.display()
                )
            }
            BindError::Tcp { addr, source } => {
                write!(f, "cannot listen for operators on {addr}: {source}")
            }
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BindError::Io { source, .. } | BindError::Tcp { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The operator socket, bound and ready to serve.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file as created, so only that file is removed on the way out.
    ident: (u64, u64),
    /// The daemon's user: connections from anyone else (but root) are refused.
    owner_uid: u32,
    config: Arc<ServerConfig>,
}

impl ApiServer {
    /// Binds the socket at `path` with the default limits. Must run inside a tokio runtime.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, BindError> {
        Self::bind_with(path, ServerConfig::default())
    }

    /// Binds the socket at `path`. Must run inside a tokio runtime.
    pub fn bind_with(path: impl AsRef<Path>, config: ServerConfig) -> Result<Self, BindError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |op, source| BindError::Io {
            path: path.clone(),
            op,
            source,
        };
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(&path) {
                    Ok(_) => return Err(BindError::AlreadyRunning { path }),
                    // Nobody listens: a daemon died without cleaning up.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        std::fs::remove_file(&path).map_err(|e| io_err("remove stale", e))?;
                    }
                    Err(e) => return Err(io_err("probe existing", e)),
                }
            }
            Ok(_) => return Err(BindError::NotASocket { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", e)),
        }
        let listener = UnixListener::bind(&path).map_err(|e| io_err("bind", e))?;
        // Whoever connects before this narrows the mode still meets the peer-uid check.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("set the mode of", e))?;
        let meta = std::fs::metadata(&path).map_err(|e| io_err("inspect", e))?;
        Ok(Self {
            listener,
            ident: (meta.dev(), meta.ino()),
            owner_uid: meta.uid(),
            path,
            config: Arc::new(config),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown` completes, then lets them finish (for a
    /// grace period) and removes the socket file.
    pub async fn serve<H: OperatorApi>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let mut connections = Connections::new(&self.config);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        // A connection that failed before it was accepted (e.g. the peer
                        // left) concerns that peer only.
                        Err(e) if is_per_connection(&e) => continue,
                        Err(e) => return Err(e),
                    };
                    let Some(permit) = connections.slot() else { continue };
                    let peer = match self.peer(&stream) {
                        Ok(()) => Peer::Unix,
                        Err(refusal) => Peer::Refused(refusal),
                    };
                    let conn = Conn { peer, console: None };
                    connections.spawn(async { Some((stream, conn)) }, handler.clone(), permit);
                }
                Some(_) = connections.set.join_next(), if !connections.set.is_empty() => {}
            }
        }
        connections.drain().await;
        Ok(())
    }

    fn peer(&self, stream: &UnixStream) -> Result<(), ApiError> {
        let cred = stream
            .peer_cred()
            .map_err(|e| ApiError::permission_denied(format!("cannot identify the peer: {e}")))?;
        if cred.uid() != self.owner_uid && cred.uid() != 0 {
            return Err(ApiError::permission_denied(format!(
                "uid {} may not use this daemon's operator socket",
                cred.uid()
            )));
        }
        Ok(())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Only our own socket: a newer daemon may have replaced it.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.ident
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The operator API and the web console on TCP with TLS.
pub struct OperatorListener {
    listener: TcpListener,
    tls: TlsAcceptor,
    config: Arc<ServerConfig>,
    console: Arc<Console>,
}

impl fmt::Debug for OperatorListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorListener")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl OperatorListener {
    /// Listens on `addr`. `tls` carries the daemon's certificate and takes a client
    /// certificate only from the operator CA, without requiring one (a browser logs in
    /// to the console instead).
    pub async fn bind(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
        config: ServerConfig,
    ) -> Result<Self, BindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BindError::Tcp { addr, source })?;
        let config = Arc::new(config);
        Ok(Self {
            listener,
            tls: TlsAcceptor::from(Arc::new(tls)),
            console: Arc::new(Console::new(config.session_lifetime)),
            config,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections until `shutdown` completes.
    pub async fn serve<H: OperatorApi>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let mut connections = Connections::new(&self.config);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => {
                    let (stream, from) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) if is_per_connection(&e) => continue,
                        Err(e) => return Err(e),
                    };
                    let Some(permit) = connections.slot() else { continue };
                    let tls = self.tls.clone();
                    let console = self.console.clone();
                    let timeout = self.config.handshake_timeout;
                    let handshake = async move {
                        let stream = match tokio::time::timeout(timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                debug!(%from, error = %e, "operator TLS handshake failed");
                                return None;
                            }
                            Err(_) => return None,
                        };
                        let cert = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| CertificateDer::from(c.to_vec()));
                        let conn = Conn { peer: Peer::Tls { cert }, console: Some(console) };
                        Some((stream, conn))
                    };
                    connections.spawn(handshake, handler.clone(), permit);
                }
                Some(_) = connections.set.join_next(), if !connections.set.is_empty() => {}
            }
        }
        connections.drain().await;
        Ok(())
    }
}

/// The connections of one listener.
struct Connections {
    set: JoinSet<()>,
    slots: Arc<Semaphore>,
    stopping: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
    config: Arc<ServerConfig>,
}

impl Connections {
    fn new(config: &Arc<ServerConfig>) -> Self {
        let (stopping, stop) = watch::channel(false);
        Self {
            set: JoinSet::new(),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            stopping,
            stop,
            config: config.clone(),
        }
    }

    /// A slot for one more connection; `None` when all are taken (the connection is
    /// dropped: closed at once).
    fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Serves the connection `setup` yields (none if it failed, e.g. its TLS handshake)
    /// on a task of its own, holding its slot until it closes.
    fn spawn<S, H>(
        &mut self,
        setup: impl Future<Output = Option<(S, Conn)>> + Send + 'static,
        handler: Arc<H>,
        permit: OwnedSemaphorePermit,
    ) where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        H: OperatorApi,
    {
        let stop = self.stop.clone();
        let header_timeout = self.config.header_timeout;
        self.set.spawn(async move {
            if let Some((stream, conn)) = setup.await {
                serve_http(stream, conn, handler, header_timeout, stop).await;
            }
            drop(permit);
        });
    }

    /// Asks every connection to finish; cuts those still running after the grace.
    async fn drain(mut self) {
        let _ = self.stopping.send(true);
        let drained = async { while self.set.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(self.config.shutdown_grace, drained).await;
        self.set.shutdown().await;
    }
}

/// Serves HTTP/1.1 on one connection until it closes or the listener stops.
async fn serve_http<S, H>(
    stream: S,
    conn: Conn,
    handler: Arc<H>,
    header_timeout: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: OperatorApi,
{
    let svc = service(handler, Arc::new(conn));
    let http = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(http);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = &mut http => return,
        () = stopping => {}
    }
    http.as_mut().graceful_shutdown();
    // Streams that never end on their own are cut when the task is.
    let _ = http.await;
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
