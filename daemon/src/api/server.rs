//! The daemon's side of the operator socket.
//!
//! [`ApiServer::bind`] creates the socket (mode 0600, replacing a stale file a dead daemon
//! left, refusing to start while another daemon answers on it); [`ApiServer::serve`]
//! accepts connections and runs each on its own task. A connection starts with the
//! `Hello` exchange, then every request runs on a task of its own, so a slow call or an
//! endless event stream never holds up the requests beside it. Each request is validated
//! before the [`OperatorApi`] handler sees it. A frame that does not decode, an unknown
//! request kind or a bad argument is answered with a typed `Error` and the connection
//! goes on; an oversize length prefix is answered with an `Error`, then the connection
//! closes, since the byte stream is out of step.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

use super::framing::{ReadError, encode_frame, read_frame};
use super::v1::{
    self, CallRequest, CallResult, ErrorCode, Event, EventsRequest, ListNodesRequest, Node,
    NodeList, PairApproveRequest, PairCode, PairCodeRequest, PairList, PairRecord,
    PairRejectRequest, Response, RevokeRequest, Revoked, ShowCallRequest, ShowNodeRequest, Status,
    request, response,
};
use super::{
    ApiError, CONTRACT_VERSION, MAX_FRAME, SOFTWARE_VERSION, check_request, decode_request,
};

/// What the daemon does for each request. The server has validated every argument (ids,
/// names, ranges: see the `.proto` file) before a method is called.
///
/// A request's future is dropped when its client cancels it or disconnects.
pub trait OperatorApi: Send + Sync + 'static {
    fn status(&self) -> impl Future<Output = Result<Status, ApiError>> + Send;

    fn pair_code(
        &self,
        req: PairCodeRequest,
    ) -> impl Future<Output = Result<PairCode, ApiError>> + Send;

    fn pair_list(&self) -> impl Future<Output = Result<PairList, ApiError>> + Send;

    fn pair_approve(
        &self,
        req: PairApproveRequest,
    ) -> impl Future<Output = Result<PairRecord, ApiError>> + Send;

    fn pair_reject(
        &self,
        req: PairRejectRequest,
    ) -> impl Future<Output = Result<PairRecord, ApiError>> + Send;

    /// One page of the nodes, by id (see `ListNodesRequest` in the `.proto` file).
    fn list_nodes(
        &self,
        req: ListNodesRequest,
    ) -> impl Future<Output = Result<NodeList, ApiError>> + Send;

    fn show_node(
        &self,
        req: ShowNodeRequest,
    ) -> impl Future<Output = Result<Node, ApiError>> + Send;

    /// One call's record, final or not, with when it timed out if the node answered
    /// afterwards.
    fn show_call(
        &self,
        req: ShowCallRequest,
    ) -> impl Future<Output = Result<CallResult, ApiError>> + Send;

    /// Runs a capability call to its final state. A call that ends badly on the node
    /// (failed, rejected, timed out...) is an `Ok` [`CallResult`] with that state; an
    /// `Err` means the call could not be placed (unknown node, daemon shutting down).
    fn call(&self, req: CallRequest) -> impl Future<Output = Result<CallResult, ApiError>> + Send;

    /// Sends the events asked for into `sink`. Returning `Ok` ends the stream with
    /// `EndOfStream`, `Err` with that error. A follow stream returns only when the daemon
    /// stops following (its future is dropped when the client cancels).
    fn events(
        &self,
        req: EventsRequest,
        sink: EventSink,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    fn revoke(&self, req: RevokeRequest) -> impl Future<Output = Result<Revoked, ApiError>> + Send;
}

/// How long connections get to close on their own when the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Server limits. The defaults suit one daemon with a handful of operators.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest frame accepted and sent.
    pub max_frame: u32,
    /// Connections served at once; more are answered `UNAVAILABLE` and closed.
    pub max_connections: usize,
    /// Requests running at once on one connection; more are answered `RESOURCE_EXHAUSTED`.
    pub max_in_flight: usize,
    /// How long a new connection may take to send its `Hello`.
    pub hello_timeout: Duration,
    /// Frames queued for a connection's writer before its requests wait.
    pub out_queue: usize,
    /// Announced in the daemon's `Hello`.
    pub software_version: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_frame: MAX_FRAME,
            max_connections: 64,
            max_in_flight: 64,
            hello_timeout: Duration::from_secs(5),
            out_queue: 64,
            software_version: SOFTWARE_VERSION.to_owned(),
        }
    }
}

/// Why the socket could not be set up.
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
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BindError::Io { source, .. } => Some(source),
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

    /// Serves connections until `shutdown` completes, then closes them all and removes
    /// the socket file.
    pub async fn serve<H: OperatorApi>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let slots = Arc::new(Semaphore::new(self.config.max_connections));
        let (stopping, stop) = watch::channel(false);
        let mut connections = JoinSet::new();
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
                    match self.admit(&stream, &slots) {
                        Ok(permit) => {
                            let handler = handler.clone();
                            let config = self.config.clone();
                            let stop = stop.clone();
                            connections.spawn(async move {
                                serve_until(stream, handler, config, stop).await;
                                drop(permit);
                            });
                        }
                        Err(refusal) => {
                            connections.spawn(refuse(stream, refusal));
                        }
                    }
                }
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // Connections say why they close; the ones that do not finish in time are cut.
        let _ = stopping.send(true);
        let drained = async { while connections.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, drained).await;
        connections.shutdown().await;
        Ok(())
    }

    fn admit(
        &self,
        stream: &UnixStream,
        slots: &Arc<Semaphore>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let cred = stream
            .peer_cred()
            .map_err(|e| ApiError::permission_denied(format!("cannot identify the peer: {e}")))?;
        if cred.uid() != self.owner_uid && cred.uid() != 0 {
            return Err(ApiError::permission_denied(format!(
                "uid {} may not use this daemon's operator socket",
                cred.uid()
            )));
        }
        slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::unavailable(format!(
                "the daemon already serves {} operator connections",
                self.config.max_connections
            ))
        })
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

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn refuse(mut stream: UnixStream, error: ApiError) {
    if let Ok(frame) = encode_frame(&error_response(0, &error), MAX_FRAME) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(&frame).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}

/// Why [`EventSink::send`] could not send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// The connection is gone.
    Closed,
    /// The event does not fit in one frame; nothing was sent and the stream goes on.
    TooLarge { len: u32, max: u32 },
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkError::Closed => f.write_str("the operator connection is closed"),
            SinkError::TooLarge { len, max } => {
                write!(
                    f,
                    "an event of {len} bytes exceeds the frame limit of {max}"
                )
            }
        }
    }
}

impl std::error::Error for SinkError {}

/// Where an [`OperatorApi::events`] handler puts the events of one stream.
#[derive(Debug)]
pub struct EventSink {
    id: u64,
    out: mpsc::Sender<Vec<u8>>,
    max_frame: u32,
}

impl EventSink {
    /// Sends one event, waiting while the client is slower than the daemon.
    pub async fn send(&mut self, event: Event) -> Result<(), SinkError> {
        let frame = encode_frame(
            &Response {
                id: self.id,
                kind: Some(response::Kind::Event(event)),
            },
            self.max_frame,
        )
        .map_err(|e| match e {
            protocol_core::frame::FrameError::TooLarge { len, max } => {
                SinkError::TooLarge { len, max }
            }
            _ => SinkError::Closed,
        })?;
        self.out.send(frame).await.map_err(|_| SinkError::Closed)
    }
}

/// Serves one operator connection over any byte stream until it closes. The socket
/// server calls it for each accepted connection; it is public so the transport can be
/// driven over other streams (an in-memory pipe in tests).
pub async fn serve_connection<S, H>(stream: S, handler: Arc<H>, config: Arc<ServerConfig>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: OperatorApi,
{
    // Never stopped from outside: the sender lives as long as the connection.
    let (_never, stop) = watch::channel(false);
    serve_until(stream, handler, config, stop).await;
}

/// Aborts a helper task when the connection's future is dropped (the server cut it).
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_until<S, H>(
    stream: S,
    handler: Arc<H>,
    config: Arc<ServerConfig>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: OperatorApi,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (out, out_rx) = mpsc::channel(config.out_queue.max(1));
    let writer = tokio::spawn(write_loop(wr, out_rx));
    let _writer_guard = AbortOnDrop(writer.abort_handle());
    // Reading runs on its own task: a read cut short by `select!` would lose bytes.
    let (in_tx, mut frames) = mpsc::channel(4);
    let max_frame = config.max_frame;
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut rd, max_frame).await;
            let last = frame.is_err();
            if in_tx.send(frame).await.is_err() || last {
                break;
            }
        }
    });
    let _reader_guard = AbortOnDrop(reader.abort_handle());

    let mut conn = Connection {
        handler,
        config,
        out,
        tasks: JoinSet::new(),
        by_task: HashMap::new(),
        by_request: HashMap::new(),
    };
    let fatal = match conn.handshake(&mut frames).await {
        Ok(()) => conn.run(&mut frames, &mut stop).await,
        Err(fatal) => fatal,
    };
    // Nothing may follow a closing error: stop the requests first.
    conn.tasks.shutdown().await;
    if let Some(response) = fatal {
        conn.send(&response).await;
    }
    drop(conn);
    reader.abort();
    // The writer ends once every sender is gone and the last frame is out.
    let _ = writer.await;
}

async fn write_loop<W: AsyncWrite>(wr: W, mut frames: mpsc::Receiver<Vec<u8>>) {
    tokio::pin!(wr);
    while let Some(frame) = frames.recv().await {
        if wr.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

type Frames = mpsc::Receiver<Result<Vec<u8>, ReadError>>;

struct Connection<H> {
    handler: Arc<H>,
    config: Arc<ServerConfig>,
    out: mpsc::Sender<Vec<u8>>,
    tasks: JoinSet<()>,
    by_task: HashMap<tokio::task::Id, u64>,
    by_request: HashMap<u64, AbortHandle>,
}

impl<H: OperatorApi> Connection<H> {
    /// Expects a matching `Hello`; `Err` carries the response to close with, if any.
    async fn handshake(&mut self, frames: &mut Frames) -> Result<(), Option<Response>> {
        let first = match tokio::time::timeout(self.config.hello_timeout, frames.recv()).await {
            Err(_) => {
                return Err(Some(error_response(
                    0,
                    &ApiError::timeout(format!(
                        "no Hello within {} ms",
                        self.config.hello_timeout.as_millis()
                    )),
                )));
            }
            Ok(None) | Ok(Some(Err(ReadError::Closed | ReadError::Io(_)))) => return Err(None),
            Ok(Some(Err(ReadError::TooLarge { len, max }))) => {
                return Err(Some(too_large(len, max)));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match screen_hello(&first, &self.config.software_version) {
            HelloAnswer::Serve(hello) => {
                self.send(&hello).await;
                Ok(())
            }
            HelloAnswer::Close(error) => Err(Some(error)),
        }
    }

    /// Serves requests until the client leaves; returns the response to close with.
    async fn run(
        &mut self,
        frames: &mut Frames,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Response> {
        loop {
            tokio::select! {
                // A dropped sender (the server is gone) stops the connection too.
                () = stopped(stop) => {
                    let error = ApiError::unavailable("the daemon is shutting down");
                    return Some(error_response(0, &error));
                }
                frame = frames.recv() => match frame {
                    Some(Ok(frame)) => self.dispatch(&frame).await,
                    Some(Err(ReadError::TooLarge { len, max })) => return Some(too_large(len, max)),
                    Some(Err(ReadError::Closed | ReadError::Io(_))) | None => return None,
                },
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.finished(done).await;
                }
            }
        }
    }

    async fn dispatch(&mut self, frame: &[u8]) {
        let (id, kind) = match screen(frame) {
            Screened::Answer(response) => return self.send(&response).await,
            Screened::Cancel { target } => {
                // Answered when the task's end is seen, so the request ends exactly once.
                if let Some(task) = self.by_request.get(&target) {
                    task.abort();
                }
                return;
            }
            Screened::Run { id, kind } => (id, kind),
        };
        if self.by_request.contains_key(&id) {
            // Answering on `id` would end the request already using it.
            let error = ApiError::invalid_argument(format!("request id {id} is already in flight"));
            return self.send(&error_response(0, &error)).await;
        }
        if self.tasks.len() >= self.config.max_in_flight {
            let error = ApiError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "{} requests are already in flight on this connection",
                    self.config.max_in_flight
                ),
            );
            return self.send(&error_response(id, &error)).await;
        }
        if let Err(error) = check_request(&kind) {
            return self.send(&error_response(id, &error)).await;
        }
        let handler = self.handler.clone();
        let out = self.out.clone();
        let max_frame = self.config.max_frame;
        let task = self
            .tasks
            .spawn(run_request(handler, id, kind, out, max_frame));
        self.by_task.insert(task.id(), id);
        self.by_request.insert(id, task);
    }

    async fn finished(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let (task, error) = match done {
            Ok((task, ())) => (task, None),
            Err(e) if e.is_cancelled() => (
                e.id(),
                Some(ApiError::new(
                    ErrorCode::Cancelled,
                    "cancelled by the client",
                )),
            ),
            Err(e) => (
                e.id(),
                Some(ApiError::internal("the request failed inside the daemon")),
            ),
        };
        let Some(id) = self.by_task.remove(&task) else {
            return;
        };
        self.by_request.remove(&id);
        if let Some(error) = error {
            self.send(&error_response(id, &error)).await;
        }
    }

    async fn send(&self, response: &Response) {
        let frame = encode_frame(response, self.config.max_frame)
            .or_else(|_| encode_frame(&oversize_response(response.id), self.config.max_frame));
        if let Ok(frame) = frame {
            // A closed writer means the client is gone; the reader will notice too.
            let _ = self.out.send(frame).await;
        }
    }
}

/// The daemon's answer to a connection's first frame.
#[derive(Debug)]
pub enum HelloAnswer {
    /// The daemon's `Hello`; requests are served next.
    Serve(Response),
    /// The error the connection closes with.
    Close(Response),
}

/// Answers a connection's first frame, decided from the frame alone.
pub fn screen_hello(frame: &[u8], software_version: &str) -> HelloAnswer {
    let req = match decode_request(frame) {
        Ok(req) => req,
        Err(e) => return HelloAnswer::Close(malformed(frame.len(), &e)),
    };
    match req.kind {
        Some(request::Kind::Hello(hello)) if hello.contract_version == CONTRACT_VERSION => {
            HelloAnswer::Serve(Response {
                id: req.id,
                kind: Some(response::Kind::Hello(v1::Hello {
                    contract_version: CONTRACT_VERSION,
                    software_version: software_version.to_owned(),
                })),
            })
        }
        Some(request::Kind::Hello(hello)) => {
            let mut error = ApiError::new(
                ErrorCode::ContractMismatch,
                format!(
                    "client speaks operator contract version {}, daemon speaks version {}",
                    hello.contract_version, CONTRACT_VERSION
                ),
            )
            .to_proto();
            error.daemon_contract_version = CONTRACT_VERSION;
            HelloAnswer::Close(Response {
                id: req.id,
                kind: Some(response::Kind::Error(error)),
            })
        }
        _ => HelloAnswer::Close(error_response(
            req.id,
            &ApiError::failed_precondition("the first request must be a Hello"),
        )),
    }
}

/// What the server makes of one frame after the `Hello`, before it looks at the
/// connection's requests in flight or validates arguments ([`check_request`]).
#[derive(Debug)]
pub enum Screened {
    /// Answered at once; nothing runs.
    Answer(Response),
    /// Cancels the request `target`, if it is in flight.
    Cancel { target: u64 },
    /// A request for the handler, once its id is free and its arguments pass.
    Run { id: u64, kind: request::Kind },
}

/// Decodes one frame as the server does and sorts it: malformed frames, the reserved id
/// 0, unknown kinds and a second `Hello` are answered without running anything.
pub fn screen(frame: &[u8]) -> Screened {
    let req = match decode_request(frame) {
        Ok(req) => req,
        Err(e) => return Screened::Answer(malformed(frame.len(), &e)),
    };
    let id = req.id;
    if id == 0 {
        let error = ApiError::invalid_argument("request id 0 is reserved");
        return Screened::Answer(error_response(0, &error));
    }
    match req.kind {
        None => {
            let error = ApiError::new(
                ErrorCode::Unimplemented,
                "unknown request kind (a newer client?)",
            );
            Screened::Answer(error_response(id, &error))
        }
        Some(request::Kind::Hello(_)) => {
            let error = ApiError::failed_precondition("Hello was already exchanged");
            Screened::Answer(error_response(id, &error))
        }
        Some(request::Kind::Cancel(cancel)) => Screened::Cancel {
            target: cancel.target,
        },
        Some(kind) => Screened::Run { id, kind },
    }
}

async fn run_request<H: OperatorApi>(
    handler: Arc<H>,
    id: u64,
    kind: request::Kind,
    out: mpsc::Sender<Vec<u8>>,
    max_frame: u32,
) {
    use request::Kind as Rq;
    use response::Kind as Rs;
    let result = match kind {
        Rq::Status(_) => handler.status().await.map(Rs::Status),
        Rq::PairCode(req) => handler.pair_code(req).await.map(Rs::PairCode),
        Rq::PairList(_) => handler.pair_list().await.map(Rs::PairList),
        Rq::PairApprove(req) => handler.pair_approve(req).await.map(Rs::PairRecord),
        Rq::PairReject(req) => handler.pair_reject(req).await.map(Rs::PairRecord),
        Rq::ListNodes(req) => handler.list_nodes(req).await.map(Rs::Nodes),
        Rq::ShowNode(req) => handler.show_node(req).await.map(Rs::Node),
        Rq::ShowCall(req) => handler.show_call(req).await.map(Rs::CallResult),
        Rq::Call(req) => handler.call(req).await.map(Rs::CallResult),
        Rq::Revoke(req) => handler.revoke(req).await.map(Rs::Revoked),
        Rq::Events(req) => {
            let sink = EventSink {
                id,
                out: out.clone(),
                max_frame,
            };
            handler
                .events(req, sink)
                .await
                .map(|()| Rs::End(v1::EndOfStream {}))
        }
        // Handled by the connection before a task is spawned.
        Rq::Hello(_) | Rq::Cancel(_) => Err(ApiError::internal("request not dispatchable")),
    };
    let response = match result {
        Ok(kind) => Response {
            id,
            kind: Some(kind),
        },
        Err(error) => error_response(id, &error),
    };
    let frame = encode_frame(&response, max_frame)
        .or_else(|_| encode_frame(&oversize_response(id), max_frame));
    if let Ok(frame) = frame {
        let _ = out.send(frame).await;
    }
}

/// Completes once the server stops (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn error_response(id: u64, error: &ApiError) -> Response {
    Response {
        id,
        kind: Some(response::Kind::Error(error.to_proto())),
    }
}

fn oversize_response(id: u64) -> Response {
    error_response(
        id,
        &ApiError::internal("the answer does not fit in one frame of the operator socket"),
    )
}

fn malformed(len: usize, e: &prost::DecodeError) -> Response {
    error_response(
        0,
        &ApiError::new(
            ErrorCode::Malformed,
            format!("a frame of {len} bytes is not a Request: {e}"),
        ),
    )
}

fn too_large(len: u32, max: u32) -> Response {
    error_response(
        0,
        &ApiError::new(
            ErrorCode::FrameTooLarge,
            format!("a frame of {len} bytes exceeds the limit of {max} bytes; closing"),
        ),
    )
}
