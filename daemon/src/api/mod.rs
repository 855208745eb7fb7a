//! The operator API: the `tern.operator.v1` contract served over HTTP, with its proto3
//! JSON mapping, to the CLI, the web console and any HTTP client.
//!
//! [`contract`] reads the service, its methods, their roles and the JSON mapping from
//! the compiled `.proto`; [`server`] serves it on the Unix socket (the daemon's own user)
//! and on TCP with TLS (operator identities, the console's sessions); [`client`] is the
//! CLI's side. The HTTP mapping is documented in the `.proto` file
//! (`proto/tern/operator/v1/operator.proto`) and served as OpenAPI ([`openapi`]).

pub mod client;
pub mod contract;
pub mod identity;
pub mod openapi;
mod request;
pub mod server;
mod validate;

use std::fmt;

pub use client::{ApiClient, ClientError, Endpoint, EventStream, MessageStream};
pub use contract::Method;
pub use proto::{CONTRACT_VERSION, v1};
pub use request::Request;
pub use server::{
    ApiServer, BindError, EventSink, OperatorApi, OperatorListener, ServerConfig, Sink, SinkError,
};
pub use validate::{MAX_CALL_TIMEOUT_MS, MAX_CSR_LEN, MAX_NAME_LEN, MAX_REASON_LEN, check_request};

use v1::{ErrorCode, Role};

/// Where every method lives: `POST /api/v1/<Method>`.
pub const API_PREFIX: &str = "/api/v1/";

/// The header a client names its contract version in, and the daemon its own.
pub const CONTRACT_HEADER: &str = "tern-contract";

/// Largest request body the daemon reads, and answer body the client reads (an event
/// stream's lines each).
pub const MAX_BODY: usize = 1024 * 1024;

/// Nodes in a `ListNodes` page when the request's `limit` is 0.
pub const DEFAULT_NODE_PAGE: u32 = 500;

/// Most nodes in a `ListNodes` page; a larger `limit` is taken as this.
pub const MAX_NODE_PAGE: u32 = 1000;

/// Most bytes the nodes of one `ListNodes` page take (encoded as protobuf; the JSON
/// answer is at most about twice that). A page holds fewer nodes than asked when the
/// next one would pass this. One node always fits: its capabilities came in one
/// `Register` message of at most the session's frame limit (512 KiB), and the rest of it
/// is ids, an address and a fingerprint.
pub const NODE_PAGE_BYTES: usize = MAX_BODY - 1024;

/// Calls in a `ListCalls` page when the request's `limit` is 0, and the most.
pub const DEFAULT_CALL_PAGE: u32 = 100;
pub const MAX_CALL_PAGE: u32 = 500;

/// The file name of the socket inside the daemon's state directory.
pub const SOCKET_NAME: &str = "operator.sock";

/// The software version the daemon reports.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The daemon's own user (or root) on the Unix socket.
    UnixSocket,
    /// An operator certificate, on the TLS listener.
    Certificate,
    /// The web console's session cookie.
    ConsoleSession,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::UnixSocket => "unix-socket",
            Via::Certificate => "certificate",
            Via::ConsoleSession => "console-session",
        }
    }
}

/// Who sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The operator identity's name; `local` on the Unix socket.
    pub name: String,
    pub role: Role,
    pub via: Via,
}

impl Caller {
    /// Whether this caller may use `method`.
    pub fn may(&self, method: Method) -> bool {
        role_rank(self.role) >= role_rank(method.required_role())
    }
}

fn role_rank(role: Role) -> u8 {
    match role {
        Role::Unspecified => 0,
        Role::Viewer => 1,
        Role::Admin => 2,
    }
}

/// A typed failure of one request, as the daemon reports it and the client receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, message)
    }

    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Rejected, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Malformed, message)
    }

    /// The HTTP status it is answered with.
    pub fn http_status(&self) -> u16 {
        match self.code {
            ErrorCode::InvalidArgument
            | ErrorCode::Malformed
            | ErrorCode::ContractMismatch
            | ErrorCode::Unspecified => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound | ErrorCode::Unimplemented => 404,
            ErrorCode::FailedPrecondition | ErrorCode::Rejected => 409,
            ErrorCode::FrameTooLarge => 413,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::Cancelled => 499,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
        }
    }

    /// The wire form.
    pub fn to_proto(&self) -> v1::Error {
        v1::Error {
            code: self.code as i32,
            message: self.message.clone(),
            daemon_contract_version: if self.code == ErrorCode::ContractMismatch {
                CONTRACT_VERSION
            } else {
                0
            },
        }
    }

    /// From the wire form; a code this build does not know reads as `Unspecified`.
    pub fn from_proto(e: v1::Error) -> Self {
        Self {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            message: e.message,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code.as_str_name();
        let code = code.strip_prefix("ERROR_CODE_").unwrap_or(code);
        write!(f, "{code}: {}", self.message)
    }
}

impl std::error::Error for ApiError {}
