//! The daemon's side of the operator API: where it listens and who may call.
//!
//! [`ApiServer`] is the Unix socket in the state directory (mode 0600; only the daemon's
//! user or root is served, as an administrator). [`OperatorListener`] is TCP with TLS,
//! where operators present certificates of the daemon's operator CA and the web console
//! is served (its login turns an identity into a session cookie). Both speak HTTP/1.1;
//! `http` routes a request, authenticates its caller, checks its role and arguments
//! and runs it on the [`OperatorApi`].

mod console;
mod http;
mod listen;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

use super::v1::{
    AddOperatorRequest, CallList, CallRequest, CallResult, Event, EventsRequest, ListCallsRequest,
    ListNodesRequest, Node, NodeList, OperatorIdentity, OperatorList, OperatorRecord,
    PairApproveRequest, PairCode, PairCodeRequest, PairList, PairRecord, PairRejectRequest,
    RevokeOperatorRequest, RevokeRequest, Revoked, ShowCallRequest, ShowNodeRequest, Status,
};
use super::{ApiError, Caller};

pub use listen::{ApiServer, BindError, OperatorListener};

/// What the daemon does for each request. The server has authenticated the caller,
/// checked its role and validated every argument (ids, names, ranges: see the `.proto`
/// file) before a method is called.
///
/// A request's future is dropped when its client goes away.
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

    /// The calls that match, newest first, one page.
    fn list_calls(
        &self,
        req: ListCallsRequest,
    ) -> impl Future<Output = Result<CallList, ApiError>> + Send;

    /// A call's record now, then again at each change of its state, until it is final
    /// (returning ends the stream). `NOT_FOUND` before anything is sent for an unknown
    /// call.
    fn watch_call(
        &self,
        req: ShowCallRequest,
        sink: Sink<CallResult>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Runs a capability call to its final state. A call that ends badly on the node
    /// (failed, rejected, timed out...) is an `Ok` [`CallResult`] with that state; an
    /// `Err` means the call could not be placed (unknown node, daemon shutting down).
    fn call(&self, req: CallRequest) -> impl Future<Output = Result<CallResult, ApiError>> + Send;

    /// Sends the events asked for into `sink`; returning ends the stream (an `Err` cuts
    /// it short). A follow stream returns only when the daemon stops following (its
    /// future is dropped when the client goes away).
    fn events(
        &self,
        req: EventsRequest,
        sink: EventSink,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    fn revoke(&self, req: RevokeRequest) -> impl Future<Output = Result<Revoked, ApiError>> + Send;

    /// Issues an operator identity for the request's key.
    fn add_operator(
        &self,
        req: AddOperatorRequest,
    ) -> impl Future<Output = Result<OperatorIdentity, ApiError>> + Send;

    fn list_operators(&self) -> impl Future<Output = Result<OperatorList, ApiError>> + Send;

    /// Revokes an operator identity: its next request is refused, its console sessions
    /// end.
    fn revoke_operator(
        &self,
        req: RevokeOperatorRequest,
    ) -> impl Future<Output = Result<OperatorRecord, ApiError>> + Send;

    /// The operator a certificate names, if the operator CA issued it to an operator
    /// that is not revoked and it has not expired: `UNAUTHENTICATED` otherwise. Asked on
    /// every request, so a revocation holds from the next one.
    fn authenticate(&self, cert_der: &[u8]) -> Result<Caller, ApiError>;
}

/// Server limits. The defaults suit one daemon with a handful of operators.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once on each listener; more are closed at once.
    pub max_connections: usize,
    /// How long a TLS client may take to finish its handshake.
    pub handshake_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long connections get to finish their requests when the daemon stops.
    pub shutdown_grace: Duration,
    /// How long a console session lasts after its login.
    pub session_lifetime: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(2),
            session_lifetime: Duration::from_secs(12 * 60 * 60),
        }
    }
}

/// Why [`EventSink::send`] could not send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// The client is gone.
    Closed,
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the operator's stream is closed")
    }
}

impl std::error::Error for SinkError {}

/// Where a streaming handler puts the messages of one stream.
#[derive(Debug)]
pub struct Sink<T> {
    out: mpsc::Sender<T>,
}

/// The sink of an [`OperatorApi::events`] stream.
pub type EventSink = Sink<Event>;

impl<T> Sink<T> {
    /// A sink and the receiving end the server streams from (also for tests).
    pub fn channel(depth: usize) -> (Self, mpsc::Receiver<T>) {
        let (out, rx) = mpsc::channel(depth);
        (Self { out }, rx)
    }

    /// Sends one message, waiting while the client is slower than the daemon.
    pub async fn send(&mut self, message: T) -> Result<(), SinkError> {
        self.out.send(message).await.map_err(|_| SinkError::Closed)
    }
}
