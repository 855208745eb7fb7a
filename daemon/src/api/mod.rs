//! The operator API: the daemon's side ([`ApiServer`], driven by an [`OperatorApi`]
//! implementation) and the CLI's side ([`ApiClient`]) of the `tern.operator.v1` contract,
//! over a Unix socket in the daemon's state directory.
//!
//! Frames are the protocol's own: a 4-byte big-endian length, then one protobuf
//! `Request` or `Response` ([`MAX_FRAME`] at most, checked on the prefix before the body
//! is read). Requests are multiplexed by id over one connection, so an event stream can
//! run beside a call. The conversation itself is documented in the `.proto` file
//! (`proto/tern/operator/v1/operator.proto`).

pub mod client;
mod framing;
pub mod server;
mod validate;

use std::fmt;

pub use client::{ApiClient, ClientConfig, ClientError, EventStream};
pub use framing::{ReadError, decode_request, decode_response, read_frame};
pub use proto::{CONTRACT_VERSION, v1};
pub use server::{
    ApiServer, BindError, EventSink, HelloAnswer, OperatorApi, Screened, ServerConfig, SinkError,
    screen, screen_hello,
};
pub use validate::{MAX_CALL_TIMEOUT_MS, MAX_NAME_LEN, MAX_REASON_LEN, check_request};

use v1::ErrorCode;

/// Largest frame payload either side sends or accepts: 1 MiB.
pub const MAX_FRAME: u32 = 1024 * 1024;

/// Nodes in a `ListNodes` page when the request's `limit` is 0.
pub const DEFAULT_NODE_PAGE: u32 = 500;

/// Most nodes in a `ListNodes` page; a larger `limit` is taken as this.
pub const MAX_NODE_PAGE: u32 = 1000;

/// Most bytes the nodes of one `ListNodes` page take in its frame: the rest of
/// [`MAX_FRAME`] is headroom for the `Response` around them (request id, lengths) and
/// `next_after` (a node id), under 100 bytes. A page holds fewer nodes than asked when
/// the next one would pass this. One node always fits: its capabilities came in one
/// `Register` message of at most the session's frame limit (512 KiB), and the rest of it
/// is ids, an address and a fingerprint.
pub const NODE_PAGE_BYTES: usize = MAX_FRAME as usize - 1024;

/// The file name of the socket inside the daemon's state directory.
pub const SOCKET_NAME: &str = "operator.sock";

/// The software version both sides announce in their `Hello`.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

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

    /// The wire form.
    pub fn to_proto(&self) -> v1::Error {
        v1::Error {
            code: self.code as i32,
            message: self.message.clone(),
            daemon_contract_version: 0,
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
