//! The operator CLI's side of the socket.
//!
//! [`ApiClient::connect`] opens the socket and exchanges `Hello`s; then every method sends
//! one request and waits for its answer. The client is cheap to clone and its methods take
//! `&self`, so requests run side by side on one connection: a reader task routes each
//! response to its request by id. Errors are typed so the CLI can tell "daemon not
//! running" from "contract mismatch", "permission denied", a timeout or the daemon's own
//! error codes.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot};

use super::framing::{ReadError, encode_frame, read_frame};
use super::v1::{
    self, CallRequest, CallResult, ErrorCode, Event, EventsRequest, Node, NodeList,
    PairApproveRequest, PairCode, PairCodeRequest, PairList, PairRecord, PairRejectRequest,
    Request, Response, RevokeRequest, Revoked, ShowCallRequest, ShowNodeRequest, Status, request,
    response,
};
use super::{ApiError, CONTRACT_VERSION, MAX_FRAME, SOFTWARE_VERSION, decode_response};

/// Client timeouts and limits.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Connecting and exchanging `Hello`s.
    pub connect_timeout: Duration,
    /// Waiting for the answer to a request other than a call or an event stream.
    pub request_timeout: Duration,
    /// A call with `timeout_ms == 0` waits this long (the daemon applies its own default).
    pub default_call_timeout: Duration,
    /// Events buffered for a stream the caller is not reading; past that the stream ends
    /// with [`ClientError::Lagged`] rather than stalling the connection's other requests.
    pub stream_buffer: usize,
    pub max_frame: u32,
    /// Announced in the client's `Hello`.
    pub software_version: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            default_call_timeout: Duration::from_secs(60),
            stream_buffer: 4096,
            max_frame: MAX_FRAME,
            software_version: SOFTWARE_VERSION.to_owned(),
        }
    }
}

/// Why a request, or the connection, failed.
#[derive(Debug)]
pub enum ClientError {
    /// No daemon serves the socket: it does not exist, or nobody accepts on it.
    NotRunning {
        path: PathBuf,
        source: io::Error,
    },
    /// The socket, or the daemon, refused this user.
    PermissionDenied {
        path: PathBuf,
        detail: String,
    },
    /// The two sides speak different contract versions.
    ContractMismatch {
        client: u32,
        daemon: u32,
    },
    /// No answer in time; the request was cancelled.
    Timeout {
        after: Duration,
    },
    /// The daemon answered with an error.
    Server(ApiError),
    /// The request does not fit in one frame.
    TooLarge {
        len: u32,
        max: u32,
    },
    /// The connection closed before the answer came.
    Disconnected {
        detail: String,
    },
    /// The daemon sent something this client cannot read.
    Protocol(String),
    /// An event stream was not read fast enough and was cancelled; resume it from the
    /// next seq.
    Lagged {
        next_seq: u64,
    },
    Io(io::Error),
}

impl ClientError {
    /// The daemon's error code, when the daemon answered with an error.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotRunning { path, source } => write!(
                f,
                "the daemon is not running (no one serves {}: {source})",
                path.display()
            ),
            ClientError::PermissionDenied { path, detail } => {
                write!(f, "permission denied on {}: {detail}", path.display())
            }
            ClientError::ContractMismatch { client, daemon } => write!(
                f,
                "this client speaks operator contract version {client}, the daemon speaks \
                 version {daemon}: use matching builds"
            ),
            ClientError::Timeout { after } => {
                write!(
                    f,
                    "no answer from the daemon within {} ms",
                    after.as_millis()
                )
            }
            ClientError::Server(e) => write!(f, "the daemon answered {e}"),
            ClientError::TooLarge { len, max } => write!(
                f,
                "a request of {len} bytes exceeds the frame limit of {max} bytes"
            ),
            ClientError::Disconnected { detail } => {
                write!(f, "the daemon closed the connection: {detail}")
            }
            ClientError::Protocol(detail) => {
                write!(f, "unreadable answer from the daemon: {detail}")
            }
            ClientError::Lagged { next_seq } => write!(
                f,
                "the event stream was not read fast enough and stopped; resume from seq {next_seq}"
            ),
            ClientError::Io(e) => write!(f, "operator socket: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::NotRunning { source, .. } => Some(source),
            ClientError::Server(e) => Some(e),
            ClientError::Io(e) => Some(e),
            _ => None,
        }
    }
}

type Answer = Result<Response, ClientError>;

/// Where the reader puts a response.
enum Pending {
    Unary(oneshot::Sender<Answer>),
    Stream(mpsc::Sender<Answer>),
}

struct Shared {
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Set once the connection is gone: why.
    closed: Mutex<Option<String>>,
    next_id: AtomicU64,
    max_frame: u32,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        // A panic elsewhere leaves the map consistent (single inserts and removes).
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed_reason(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn cancel(&self, target: u64) {
        if self.pending().remove(&target).is_none() {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = Request {
            id,
            kind: Some(request::Kind::Cancel(v1::CancelRequest { target })),
        };
        if let Ok(frame) = encode_frame(&req, self.max_frame) {
            let _ = self.out.send(frame);
        }
    }
}

struct Tasks {
    reader: tokio::task::AbortHandle,
    writer: tokio::task::AbortHandle,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A connection to the daemon's operator socket.
#[derive(Clone)]
pub struct ApiClient {
    shared: Arc<Shared>,
    config: Arc<ClientConfig>,
    daemon: Arc<v1::Hello>,
    _tasks: Arc<Tasks>,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("daemon", &self.daemon)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Connects to the daemon's socket at `path` with the default timeouts.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_with(path, ClientConfig::default()).await
    }

    pub async fn connect_with(
        path: impl AsRef<Path>,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        let after = config.connect_timeout;
        tokio::time::timeout(after, Self::open(path, config))
            .await
            .unwrap_or(Err(ClientError::Timeout { after }))
    }

    async fn open(path: PathBuf, config: ClientConfig) -> Result<Self, ClientError> {
        let mut stream =
            UnixStream::connect(&path)
                .await
                .map_err(|source| match source.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning {
                            path: path.clone(),
                            source,
                        }
                    }
                    io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                        path: path.clone(),
                        detail: source.to_string(),
                    },
                    _ => ClientError::Io(source),
                })?;
        let hello = Request {
            id: 1,
            kind: Some(request::Kind::Hello(v1::Hello {
                contract_version: CONTRACT_VERSION,
                software_version: config.software_version.clone(),
            })),
        };
        let frame = encode_frame(&hello, config.max_frame).map_err(frame_error)?;
        stream.write_all(&frame).await.map_err(ClientError::Io)?;
        let answer = match read_frame(&mut stream, config.max_frame).await {
            Ok(frame) => decode_response(&frame)
                .map_err(|e| ClientError::Protocol(format!("hello answer: {e}")))?,
            Err(ReadError::Closed) => {
                return Err(ClientError::Disconnected {
                    detail: "closed before answering Hello".into(),
                });
            }
            Err(e) => return Err(read_error(e)),
        };
        let daemon = match answer.kind {
            Some(response::Kind::Hello(h)) if h.contract_version == CONTRACT_VERSION => h,
            Some(response::Kind::Hello(h)) => {
                return Err(ClientError::ContractMismatch {
                    client: CONTRACT_VERSION,
                    daemon: h.contract_version,
                });
            }
            Some(response::Kind::Error(e)) => {
                let daemon_version = e.daemon_contract_version;
                let e = ApiError::from_proto(e);
                return Err(match e.code {
                    ErrorCode::ContractMismatch => ClientError::ContractMismatch {
                        client: CONTRACT_VERSION,
                        daemon: daemon_version,
                    },
                    ErrorCode::PermissionDenied => ClientError::PermissionDenied {
                        path,
                        detail: e.message,
                    },
                    _ => ClientError::Server(e),
                });
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected Hello, got {}",
                    kind_name(other.as_ref())
                )));
            }
        };

        let (rd, mut wr) = stream.into_split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let shared = Arc::new(Shared {
            out,
            pending: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
            next_id: AtomicU64::new(2),
            max_frame: config.max_frame,
        });
        let writer = tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let reader = tokio::spawn(read_loop(rd, shared.clone()));
        Ok(Self {
            shared,
            config: Arc::new(config),
            daemon: Arc::new(daemon),
            _tasks: Arc::new(Tasks {
                reader: reader.abort_handle(),
                writer: writer.abort_handle(),
            }),
        })
    }

    /// The daemon's `Hello`: its contract and software versions.
    pub fn daemon_hello(&self) -> &v1::Hello {
        &self.daemon
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        let timeout = self.config.request_timeout;
        match self
            .unary(request::Kind::Status(v1::StatusRequest {}), timeout)
            .await?
        {
            response::Kind::Status(s) => Ok(s),
            other => Err(unexpected("Status", &other)),
        }
    }

    pub async fn pair_code(&self, req: PairCodeRequest) -> Result<PairCode, ClientError> {
        let timeout = self.config.request_timeout;
        match self.unary(request::Kind::PairCode(req), timeout).await? {
            response::Kind::PairCode(c) => Ok(c),
            other => Err(unexpected("PairCode", &other)),
        }
    }

    pub async fn pair_list(&self) -> Result<PairList, ClientError> {
        let timeout = self.config.request_timeout;
        let kind = request::Kind::PairList(v1::PairListRequest {});
        match self.unary(kind, timeout).await? {
            response::Kind::PairList(l) => Ok(l),
            other => Err(unexpected("PairList", &other)),
        }
    }

    pub async fn pair_approve(&self, code_id: u32) -> Result<PairRecord, ClientError> {
        let timeout = self.config.request_timeout;
        let kind = request::Kind::PairApprove(PairApproveRequest { code_id });
        match self.unary(kind, timeout).await? {
            response::Kind::PairRecord(r) => Ok(r),
            other => Err(unexpected("PairRecord", &other)),
        }
    }

    pub async fn pair_reject(&self, code_id: u32) -> Result<PairRecord, ClientError> {
        let timeout = self.config.request_timeout;
        let kind = request::Kind::PairReject(PairRejectRequest { code_id });
        match self.unary(kind, timeout).await? {
            response::Kind::PairRecord(r) => Ok(r),
            other => Err(unexpected("PairRecord", &other)),
        }
    }

    /// Every node, by id: the daemon's pages, one after the other. The answer's
    /// `next_after` is empty.
    pub async fn list_nodes(&self) -> Result<NodeList, ClientError> {
        let mut all = NodeList::default();
        let mut after = String::new();
        loop {
            let page = self.list_nodes_page(after.as_str(), 0).await?;
            all.nodes.extend(page.nodes);
            if page.next_after.is_empty() {
                return Ok(all);
            }
            // Pages move forward by id, so the listing ends; a daemon that goes back
            // would have it run forever.
            if page.next_after <= after {
                return Err(ClientError::Protocol(format!(
                    "the node list went back from {after:?} to {:?}",
                    page.next_after
                )));
            }
            after = page.next_after;
        }
    }

    /// One page of the nodes: at most `limit` of them (0 for the daemon's default, capped
    /// by the daemon) whose ids sort after `after` (empty for the first page). The next
    /// page starts after the answer's `next_after`, empty when this was the last page.
    pub async fn list_nodes_page(
        &self,
        after: impl Into<String>,
        limit: u32,
    ) -> Result<NodeList, ClientError> {
        let timeout = self.config.request_timeout;
        let kind = request::Kind::ListNodes(v1::ListNodesRequest {
            after: after.into(),
            limit: Some(limit),
        });
        match self.unary(kind, timeout).await? {
            response::Kind::Nodes(n) => Ok(n),
            other => Err(unexpected("NodeList", &other)),
        }
    }

    pub async fn show_node(&self, id: impl Into<String>) -> Result<Node, ClientError> {
        let timeout = self.config.request_timeout;
        let kind = request::Kind::ShowNode(ShowNodeRequest { id: id.into() });
        match self.unary(kind, timeout).await? {
            response::Kind::Node(n) => Ok(n),
            other => Err(unexpected("Node", &other)),
        }
    }

    /// One call's record.
    pub async fn show_call(&self, id: u64) -> Result<CallResult, ClientError> {
        let timeout = self.config.request_timeout;
        let kind = request::Kind::ShowCall(ShowCallRequest { id });
        match self.unary(kind, timeout).await? {
            response::Kind::CallResult(c) => Ok(c),
            other => Err(unexpected("CallResult", &other)),
        }
    }

    /// Runs a capability call to its final state. Waits for the call's own deadline plus
    /// the request timeout, so the daemon's `TIMED_OUT` result arrives before the client
    /// gives up.
    pub async fn call(&self, req: CallRequest) -> Result<CallResult, ClientError> {
        let deadline = match req.timeout_ms {
            0 => self.config.default_call_timeout,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let timeout = deadline + self.config.request_timeout;
        match self.unary(request::Kind::Call(req), timeout).await? {
            response::Kind::CallResult(r) => Ok(r),
            other => Err(unexpected("CallResult", &other)),
        }
    }

    pub async fn revoke(
        &self,
        node: impl Into<String>,
        reason: impl Into<String>,
    ) -> Result<Revoked, ClientError> {
        let timeout = self.config.request_timeout;
        let kind = request::Kind::Revoke(RevokeRequest {
            node: node.into(),
            reason: reason.into(),
        });
        match self.unary(kind, timeout).await? {
            response::Kind::Revoked(r) => Ok(r),
            other => Err(unexpected("Revoked", &other)),
        }
    }

    /// Starts an event stream; read it with [`EventStream::next`]. Dropping the stream
    /// cancels it on the daemon.
    pub async fn events(&self, req: EventsRequest) -> Result<EventStream, ClientError> {
        let next_seq = req.from_seq;
        let (tx, rx) = mpsc::channel(self.config.stream_buffer.max(1));
        let id = self.register(Pending::Stream(tx))?;
        let guard = CancelOnDrop {
            shared: self.shared.clone(),
            id,
            armed: true,
        };
        self.send(id, request::Kind::Events(req))?;
        Ok(EventStream {
            rx,
            guard,
            _tasks: self._tasks.clone(),
            next_seq,
            done: false,
        })
    }

    fn register(&self, pending: Pending) -> Result<u64, ClientError> {
        if let Some(detail) = self.shared.closed_reason() {
            return Err(ClientError::Disconnected { detail });
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.pending().insert(id, pending);
        // The reader may have closed between the check and the insert; it drains the map
        // after setting `closed`, so check once more.
        if let Some(detail) = self.shared.closed_reason() {
            self.shared.pending().remove(&id);
            return Err(ClientError::Disconnected { detail });
        }
        Ok(id)
    }

    fn send(&self, id: u64, kind: request::Kind) -> Result<(), ClientError> {
        let req = Request {
            id,
            kind: Some(kind),
        };
        let frame = match encode_frame(&req, self.shared.max_frame) {
            Ok(frame) => frame,
            Err(e) => {
                self.shared.pending().remove(&id);
                return Err(frame_error(e));
            }
        };
        self.shared.out.send(frame).map_err(|_| {
            self.shared.pending().remove(&id);
            ClientError::Disconnected {
                detail: "the connection's writer stopped".into(),
            }
        })
    }

    async fn unary(
        &self,
        kind: request::Kind,
        timeout: Duration,
    ) -> Result<response::Kind, ClientError> {
        let (tx, rx) = oneshot::channel();
        let id = self.register(Pending::Unary(tx))?;
        // Dropped before the answer (timeout, or the caller gave up): cancel on the daemon.
        let mut guard = CancelOnDrop {
            shared: self.shared.clone(),
            id,
            armed: true,
        };
        self.send(id, kind)?;
        let answer = match tokio::time::timeout(timeout, rx).await {
            Err(_) => return Err(ClientError::Timeout { after: timeout }),
            Ok(Err(_)) => {
                guard.armed = false;
                return Err(ClientError::Disconnected {
                    detail: self.shared.closed_reason().unwrap_or_default(),
                });
            }
            Ok(Ok(answer)) => answer,
        };
        guard.armed = false;
        match answer?.kind {
            Some(response::Kind::Error(e)) => Err(ClientError::Server(ApiError::from_proto(e))),
            Some(kind) => Ok(kind),
            None => Err(ClientError::Protocol(
                "an answer of a kind this client does not know".into(),
            )),
        }
    }
}

/// Cancels a request on the daemon unless disarmed (its answer came).
struct CancelOnDrop {
    shared: Arc<Shared>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.shared.cancel(self.id);
        }
    }
}

/// An event stream. `next()` yields events until the stream ends (`None`) or fails.
pub struct EventStream {
    rx: mpsc::Receiver<Answer>,
    guard: CancelOnDrop,
    /// The connection lives while its stream does, even if every client handle is gone.
    _tasks: Arc<Tasks>,
    next_seq: u64,
    done: bool,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("id", &self.guard.id)
            .field("next_seq", &self.next_seq)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next event; `None` once the daemon ended the stream (or after an error).
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        if self.done {
            return None;
        }
        let answer = self.rx.recv().await;
        let item = match answer {
            Some(Ok(resp)) => match resp.kind {
                Some(response::Kind::Event(event)) => {
                    self.next_seq = event.seq.saturating_add(1);
                    return Some(Ok(event));
                }
                Some(response::Kind::End(_)) => None,
                Some(response::Kind::Error(e)) => {
                    Some(Err(ClientError::Server(ApiError::from_proto(e))))
                }
                other => Some(Err(unexpected(
                    "Event",
                    &other.unwrap_or(response::Kind::End(v1::EndOfStream {})),
                ))),
            },
            Some(Err(e)) => Some(Err(e)),
            // The reader dropped our sender: it overflowed, or the connection closed.
            None => Some(Err(match self.guard.shared.closed_reason() {
                Some(detail) => ClientError::Disconnected { detail },
                None => ClientError::Lagged {
                    next_seq: self.next_seq,
                },
            })),
        };
        self.done = true;
        self.guard.armed = false;
        item
    }

    /// The seq to resume from after this stream: one past the last event read.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

async fn read_loop(mut rd: OwnedReadHalf, shared: Arc<Shared>) {
    let mut last_notice: Option<ApiError> = None;
    let reason = loop {
        let frame = match read_frame(&mut rd, shared.max_frame).await {
            Ok(frame) => frame,
            Err(ReadError::Closed) => {
                break match last_notice.take() {
                    Some(e) => e.to_string(),
                    None => "connection closed".to_owned(),
                };
            }
            Err(e) => break read_error(e).to_string(),
        };
        let resp = match decode_response(&frame) {
            Ok(resp) => resp,
            Err(e) => break format!("undecodable frame from the daemon: {e}"),
        };
        if resp.id == 0 {
            // A notice about the connection (the daemon may close after it).
            if let Some(response::Kind::Error(e)) = resp.kind {
                last_notice = Some(ApiError::from_proto(e));
            }
            continue;
        }
        route(&shared, resp);
    };
    *shared.closed.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
    let pending: Vec<Pending> = shared.pending().drain().map(|(_, p)| p).collect();
    for p in pending {
        let err = ClientError::Disconnected {
            detail: reason.clone(),
        };
        match p {
            Pending::Unary(tx) => {
                let _ = tx.send(Err(err));
            }
            Pending::Stream(tx) => {
                let _ = tx.try_send(Err(err));
            }
        }
    }
}

fn route(shared: &Shared, resp: Response) {
    let id = resp.id;
    let terminal = !matches!(resp.kind, Some(response::Kind::Event(_)));
    let mut pending = shared.pending();
    if terminal {
        match pending.remove(&id) {
            Some(Pending::Unary(tx)) => {
                let _ = tx.send(Ok(resp));
            }
            // A full stream buffer cannot take its end either: the stream then reads as
            // lagged, which tells the caller to resume.
            Some(Pending::Stream(tx)) => {
                let _ = tx.try_send(Ok(resp));
            }
            None => {}
        }
        return;
    }
    let overflow = match pending.get(&id) {
        Some(Pending::Stream(tx)) => tx.try_send(Ok(resp)).is_err(),
        // An event for a unary request or for a cancelled stream: nothing waits for it.
        _ => false,
    };
    drop(pending);
    if overflow {
        // Dropping the sender lets the stream see it lagged once it drained what it has.
        shared.cancel(id);
    }
}

fn kind_name(kind: Option<&response::Kind>) -> &'static str {
    match kind {
        None => "an unknown answer",
        Some(response::Kind::Hello(_)) => "Hello",
        Some(response::Kind::Error(_)) => "Error",
        Some(response::Kind::End(_)) => "EndOfStream",
        Some(response::Kind::Status(_)) => "Status",
        Some(response::Kind::PairCode(_)) => "PairCode",
        Some(response::Kind::PairList(_)) => "PairList",
        Some(response::Kind::PairRecord(_)) => "PairRecord",
        Some(response::Kind::Nodes(_)) => "NodeList",
        Some(response::Kind::Node(_)) => "Node",
        Some(response::Kind::CallResult(_)) => "CallResult",
        Some(response::Kind::Event(_)) => "Event",
        Some(response::Kind::Revoked(_)) => "Revoked",
    }
}

fn unexpected(wanted: &str, got: &response::Kind) -> ClientError {
    ClientError::Protocol(format!("expected {wanted}, got {}", kind_name(Some(got))))
}

fn frame_error(e: protocol_core::frame::FrameError) -> ClientError {
    match e {
        protocol_core::frame::FrameError::TooLarge { len, max } => {
            ClientError::TooLarge { len, max }
        }
        other => ClientError::Protocol(other.to_string()),
    }
}

fn read_error(e: ReadError) -> ClientError {
    match e {
        ReadError::Closed => ClientError::Disconnected {
            detail: "connection closed".into(),
        },
        ReadError::TooLarge { len, max } => ClientError::Protocol(format!(
            "the daemon sent a frame of {len} bytes, above the limit of {max}"
        )),
        ReadError::Io(e) => ClientError::Io(e),
    }
}
