//! The CLI's side of the operator API: HTTP/1.1 with the contract's JSON mapping, on the
//! daemon's Unix socket or, with an operator identity, on its TLS listener.
//!
//! Each request takes a connection of its own (a Unix socket connects in microseconds;
//! a remote CLI runs one command), so a client is cheap to clone and requests run side
//! by side. Errors are typed so the CLI can tell "daemon not running" from "contract
//! mismatch", "permission denied", a timeout or the daemon's own error codes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use super::contract::{Method, from_json_lenient as from_json, message};
use super::identity::IdentityFile;
use super::request::Request;
use super::v1::{
    self, AddOperatorRequest, CallList, CallRequest, CallResult, ErrorCode, Event, EventsRequest,
    ListCallsRequest, Node, NodeList, OperatorIdentity, OperatorList, OperatorRecord, PairCode,
    PairCodeRequest, PairList, PairRecord, Revoked, Status, WhoAmI,
};
use super::{ApiError, CONTRACT_HEADER, CONTRACT_VERSION, MAX_BODY};

/// Where the daemon is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The operator socket in the daemon's state directory.
    Unix(PathBuf),
    /// The daemon's TLS listener, `host:port`, reached with an operator identity.
    Remote {
        addr: String,
        identity: IdentityFile,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Remote { addr, .. } => write!(f, "https://{addr}"),
        }
    }
}

/// Client timeouts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Connecting (and the TLS handshake).
    pub connect_timeout: Duration,
    /// Waiting for the answer to a request other than a call or an event stream.
    pub request_timeout: Duration,
    /// A call with `timeout_ms == 0` waits this long (the daemon applies its own default).
    pub default_call_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            default_call_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// No daemon serves the endpoint: nothing exists there, or nobody accepts on it.
    NotRunning {
        endpoint: String,
        source: io::Error,
    },
    /// The daemon refused this caller: the socket's user, or the identity's certificate.
    PermissionDenied {
        endpoint: String,
        detail: String,
    },
    /// The two sides speak different contract versions.
    ContractMismatch {
        client: u32,
        daemon: u32,
    },
    /// No answer in time.
    Timeout {
        after: Duration,
    },
    /// The daemon answered with an error.
    Server(ApiError),
    /// The connection closed before the answer came (or an event stream broke).
    Disconnected {
        detail: String,
    },
    /// The daemon sent something this client cannot read.
    Protocol(String),
    /// The identity file cannot be used.
    Identity(String),
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
            ClientError::NotRunning { endpoint, source } => write!(
                f,
                "the daemon is not running (no one serves {endpoint}: {source})"
            ),
            ClientError::PermissionDenied { endpoint, detail } => {
                write!(f, "permission denied by {endpoint}: {detail}")
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
            ClientError::Disconnected { detail } => {
                write!(f, "the daemon closed the connection: {detail}")
            }
            ClientError::Protocol(detail) => {
                write!(f, "unreadable answer from the daemon: {detail}")
            }
            ClientError::Identity(detail) => write!(f, "operator identity: {detail}"),
            ClientError::Io(e) => write!(f, "operator API: {e}"),
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

/// A client of one daemon.
#[derive(Clone)]
pub struct ApiClient {
    endpoint: Arc<Endpoint>,
    tls: Option<TlsConnector>,
    config: Arc<ClientConfig>,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("endpoint", &self.endpoint.to_string())
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client of the daemon whose socket is at `path`; checks that it answers, speaks
    /// this contract and serves this user.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::open(
            Endpoint::Unix(path.as_ref().to_path_buf()),
            ClientConfig::default(),
        )
        .await
    }

    /// A client of the daemon at `endpoint`; checks as [`Self::connect`] does.
    pub async fn open(endpoint: Endpoint, config: ClientConfig) -> Result<Self, ClientError> {
        let tls = match &endpoint {
            Endpoint::Unix(_) => None,
            Endpoint::Remote { identity, .. } => Some(TlsConnector::from(Arc::new(
                identity
                    .client_config()
                    .map_err(|e| ClientError::Identity(e.to_string()))?,
            ))),
        };
        let client = Self {
            endpoint: Arc::new(endpoint),
            tls,
            config: Arc::new(config),
        };
        client.whoami().await?;
        Ok(client)
    }

    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.unary(Request::WhoAmI(v1::WhoAmIRequest {}), None)
            .await
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        self.unary(Request::Status(v1::StatusRequest {}), None)
            .await
    }

    pub async fn pair_code(&self, req: PairCodeRequest) -> Result<PairCode, ClientError> {
        self.unary(Request::CreatePairCode(req), None).await
    }

    pub async fn pair_list(&self) -> Result<PairList, ClientError> {
        self.unary(Request::ListPairings(v1::PairListRequest {}), None)
            .await
    }

    pub async fn pair_approve(&self, code_id: u32) -> Result<PairRecord, ClientError> {
        let req = v1::PairApproveRequest { code_id };
        self.unary(Request::ApprovePairing(req), None).await
    }

    pub async fn pair_reject(&self, code_id: u32) -> Result<PairRecord, ClientError> {
        let req = v1::PairRejectRequest { code_id };
        self.unary(Request::RejectPairing(req), None).await
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
    /// by the daemon) whose ids sort after `after` (empty for the first page).
    pub async fn list_nodes_page(
        &self,
        after: impl Into<String>,
        limit: u32,
    ) -> Result<NodeList, ClientError> {
        let req = v1::ListNodesRequest {
            after: after.into(),
            limit: Some(limit),
        };
        self.unary(Request::ListNodes(req), None).await
    }

    pub async fn show_node(&self, id: impl Into<String>) -> Result<Node, ClientError> {
        let req = v1::ShowNodeRequest { id: id.into() };
        self.unary(Request::ShowNode(req), None).await
    }

    /// One call's record.
    pub async fn show_call(&self, id: u64) -> Result<CallResult, ClientError> {
        self.unary(Request::ShowCall(v1::ShowCallRequest { id }), None)
            .await
    }

    /// One page of past calls, newest first.
    pub async fn list_calls(&self, req: ListCallsRequest) -> Result<CallList, ClientError> {
        self.unary(Request::ListCalls(req), None).await
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
        self.unary(Request::Call(req), Some(timeout)).await
    }

    pub async fn revoke(
        &self,
        node: impl Into<String>,
        reason: impl Into<String>,
    ) -> Result<Revoked, ClientError> {
        let req = v1::RevokeRequest {
            node: node.into(),
            reason: reason.into(),
        };
        self.unary(Request::Revoke(req), None).await
    }

    pub async fn add_operator(
        &self,
        req: AddOperatorRequest,
    ) -> Result<OperatorIdentity, ClientError> {
        self.unary(Request::AddOperator(req), None).await
    }

    pub async fn list_operators(&self) -> Result<OperatorList, ClientError> {
        self.unary(Request::ListOperators(v1::ListOperatorsRequest {}), None)
            .await
    }

    pub async fn revoke_operator(
        &self,
        name: impl Into<String>,
    ) -> Result<OperatorRecord, ClientError> {
        let req = v1::RevokeOperatorRequest { name: name.into() };
        self.unary(Request::RevokeOperator(req), None).await
    }

    /// Starts an event stream; read it with [`EventStream::next`]. Dropping the stream
    /// closes it on the daemon.
    pub async fn events(&self, req: EventsRequest) -> Result<EventStream, ClientError> {
        let next_seq = req.from_seq;
        let req = Request::Events(req);
        let exchange = self.exchange(&req);
        let body = tokio::time::timeout(self.config.request_timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                after: self.config.request_timeout,
            })??;
        Ok(EventStream {
            inner: MessageStream::new(body, Method::Events.descriptor().output()),
            next_seq,
        })
    }

    /// A call's record now and at each change until it is final.
    pub async fn watch_call(&self, id: u64) -> Result<MessageStream<CallResult>, ClientError> {
        let req = Request::WatchCall(v1::ShowCallRequest { id });
        let exchange = self.exchange(&req);
        let body = tokio::time::timeout(self.config.request_timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                after: self.config.request_timeout,
            })??;
        Ok(MessageStream::new(
            body,
            Method::WatchCall.descriptor().output(),
        ))
    }

    /// Sends `req` and reads its one answer.
    async fn unary<T: Message + Default>(
        &self,
        req: Request,
        timeout: Option<Duration>,
    ) -> Result<T, ClientError> {
        let after = timeout.unwrap_or(self.config.request_timeout);
        let output = req.method().descriptor().output();
        let answer = async {
            let body = self.exchange(&req).await?;
            let bytes = Limited::new(body, 4 * MAX_BODY)
                .collect()
                .await
                .map_err(|e| ClientError::Disconnected {
                    detail: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            from_json::<T>(&output, &bytes).map_err(|e| ClientError::Protocol(e.message))
        };
        tokio::time::timeout(after, answer)
            .await
            .map_err(|_| ClientError::Timeout { after })?
    }

    /// Sends `req`; the body of a successful answer, or the daemon's error.
    async fn exchange(&self, req: &Request) -> Result<Incoming, ClientError> {
        let method = req.method();
        let http_req = http::Request::post(method.path())
            .header(header::HOST, self.host())
            .header(header::CONTENT_TYPE, "application/json")
            .header(CONTRACT_HEADER, CONTRACT_VERSION)
            .body(Full::new(Bytes::from(req.encode())))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let endpoint = self.endpoint.to_string();
        // The caller bounds the whole exchange; connecting has its own, shorter bound.
        let resp = self.connect_and_send(http_req).await?;
        if resp.status().is_success() {
            return Ok(resp.into_body());
        }
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let error: v1::Error =
            from_json(&message("tern.operator.v1.Error"), &bytes).map_err(|_| {
                ClientError::Protocol(format!(
                    "{endpoint} answered HTTP {status} without an error"
                ))
            })?;
        if error.code == ErrorCode::ContractMismatch as i32 {
            return Err(ClientError::ContractMismatch {
                client: CONTRACT_VERSION,
                daemon: error.daemon_contract_version,
            });
        }
        Err(ClientError::Server(ApiError::from_proto(error)))
    }

    fn host(&self) -> String {
        match &*self.endpoint {
            Endpoint::Unix(_) => "localhost".to_owned(),
            Endpoint::Remote { addr, .. } => addr.clone(),
        }
    }

    async fn connect_and_send(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let endpoint = self.endpoint.to_string();
        let after = self.config.connect_timeout;
        match (&*self.endpoint, &self.tls) {
            (Endpoint::Unix(path), _) => {
                let connect = async {
                    UnixStream::connect(path).await.map_err(|e| match e.kind() {
                        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                            endpoint: endpoint.clone(),
                            detail: e.to_string(),
                        },
                        _ => ClientError::NotRunning {
                            endpoint: endpoint.clone(),
                            source: e,
                        },
                    })
                };
                let stream = bounded(after, connect).await?;
                send(stream, req, &endpoint).await
            }
            (Endpoint::Remote { addr, .. }, Some(tls)) => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| ClientError::Identity(format!("address {addr:?}: {e}")))?;
                let connect = async {
                    let tcp = TcpStream::connect(addr.as_str()).await.map_err(|e| {
                        ClientError::NotRunning {
                            endpoint: endpoint.clone(),
                            source: e,
                        }
                    })?;
                    tls.connect(name, tcp)
                        .await
                        .map_err(|e| refused_or_io(&endpoint, e))
                };
                let stream = bounded(after, connect).await?;
                send(stream, req, &endpoint).await
            }
            (Endpoint::Remote { .. }, None) => {
                Err(ClientError::Identity("no TLS configuration".to_owned()))
            }
        }
    }
}

/// `connect` within `after`.
async fn bounded<T>(
    after: Duration,
    connect: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(after, connect)
        .await
        .map_err(|_| ClientError::Timeout { after })?
}

async fn send<S>(
    stream: S,
    req: http::Request<Full<Bytes>>,
    endpoint: &str,
) -> Result<http::Response<Incoming>, ClientError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_error(endpoint, &e))?;
    let conn = tokio::spawn(conn);
    match sender.send_request(req).await {
        Ok(resp) => Ok(resp),
        // The request is cancelled when the connection fails; the connection's own
        // error says why (a TLS alert: the daemon refused the certificate).
        Err(e) => match tokio::time::timeout(Duration::from_secs(1), conn).await {
            Ok(Ok(Err(conn_error))) => Err(hyper_error(endpoint, &conn_error)),
            _ => Err(hyper_error(endpoint, &e)),
        },
    }
}

/// A TLS alert from the daemon during or right after the handshake means it refused
/// the certificate.
fn hyper_error(endpoint: &str, e: &hyper::Error) -> ClientError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return refused_or_io(endpoint, io::Error::new(io.kind(), io.to_string()));
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return refused(endpoint, tls);
        }
        source = err.source();
    }
    ClientError::Disconnected {
        detail: e.to_string(),
    }
}

fn refused_or_io(endpoint: &str, e: io::Error) -> ClientError {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return refused(endpoint, tls);
    }
    if e.to_string().contains("alert") {
        return ClientError::PermissionDenied {
            endpoint: endpoint.to_owned(),
            detail: format!(
                "the daemon refused the TLS connection ({e}): is this an operator identity it issued?"
            ),
        };
    }
    ClientError::Io(e)
}

fn refused(endpoint: &str, e: &rustls::Error) -> ClientError {
    match e {
        rustls::Error::AlertReceived(_) => ClientError::PermissionDenied {
            endpoint: endpoint.to_owned(),
            detail: format!(
                "the daemon refused the certificate ({e}): is this an operator identity it issued?"
            ),
        },
        _ => ClientError::Identity(format!("TLS with {endpoint}: {e}")),
    }
}

/// A stream of messages, one JSON object per line. `next()` yields them until the
/// stream ends (`None`) or fails.
pub struct MessageStream<T> {
    body: Incoming,
    buf: BytesMut,
    desc: prost_reflect::MessageDescriptor,
    done: bool,
    _of: std::marker::PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for MessageStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageStream")
            .field("of", &self.desc.full_name())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T: Message + Default> MessageStream<T> {
    fn new(body: Incoming, desc: prost_reflect::MessageDescriptor) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            desc,
            done: false,
            _of: std::marker::PhantomData,
        }
    }

    /// The next message; `None` once the daemon ended the stream (or after an error).
    pub async fn next(&mut self) -> Option<Result<T, ClientError>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(at + 1);
                let item = from_json::<T>(&self.desc, &line[..at]).map_err(|e| {
                    self.done = true;
                    ClientError::Protocol(e.message)
                });
                return Some(item);
            }
            if self.buf.len() > MAX_BODY {
                self.done = true;
                return Some(Err(ClientError::Protocol(format!(
                    "a line of the stream exceeds {MAX_BODY} bytes"
                ))));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(ClientError::Disconnected {
                        detail: format!("the stream broke: {e}"),
                    }));
                }
                None => {
                    self.done = true;
                    return None;
                }
            }
        }
    }
}

/// An event stream, which knows where to resume.
#[derive(Debug)]
pub struct EventStream {
    inner: MessageStream<Event>,
    next_seq: u64,
}

impl EventStream {
    /// The next event; `None` once the daemon ended the stream (or after an error).
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        let item = self.inner.next().await;
        if let Some(Ok(event)) = &item {
            self.next_seq = event.seq.saturating_add(1);
        }
        item
    }

    /// The seq to resume from after this stream: one past the last event read.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}
