//! Exit codes: one per kind of failure, so scripts can tell them apart.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (for `call`: the call succeeded) |
//! | 1 | any other failure |
//! | 2 | bad command line or input |
//! | 3 | the daemon is not running |
//! | 4 | unknown node, code or call |
//! | 5 | timed out |
//! | 6 | rejected (by the operator, the node, or a policy) |
//! | 7 | the CLI and the daemon speak different operator contracts |
//! | 8 | permission denied |
//! | 10 | `call`: the call failed on the node |
//! | 11 | `call`: the call was lost, cancelled or undeliverable |

use crate::api::ClientError;
use crate::api::v1::{CallState, ErrorCode};

/// A command's failure: its exit code and what to tell the user.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: Option<String>,
}

pub const FAILURE: i32 = 1;
pub const USAGE: i32 = 2;
pub const NOT_RUNNING: i32 = 3;
pub const NOT_FOUND: i32 = 4;
pub const TIMEOUT: i32 = 5;
pub const REJECTED: i32 = 6;
pub const CONTRACT_MISMATCH: i32 = 7;
pub const PERMISSION_DENIED: i32 = 8;
pub const CALL_FAILED: i32 = 10;
pub const CALL_NOT_RUN: i32 = 11;

impl Exit {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Some(message.into()),
        }
    }

    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(FAILURE, message)
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    /// The exit of `ternd call` for a call that ended in `state` (its message is
    /// printed already).
    pub fn for_call(state: i32) -> Result<(), Exit> {
        let code = match CallState::try_from(state) {
            Ok(CallState::Succeeded) => return Ok(()),
            Ok(CallState::Failed) => CALL_FAILED,
            Ok(CallState::TimedOut) => TIMEOUT,
            Ok(CallState::Rejected) => REJECTED,
            _ => CALL_NOT_RUN,
        };
        Err(Exit {
            code,
            message: None,
        })
    }
}

/// The exit for a failure to reach or use the daemon.
pub fn from_client(e: &ClientError) -> Exit {
    let code = match e {
        ClientError::NotRunning { .. } => NOT_RUNNING,
        ClientError::ContractMismatch { .. } => CONTRACT_MISMATCH,
        ClientError::PermissionDenied { .. } => PERMISSION_DENIED,
        ClientError::Timeout { .. } => TIMEOUT,
        ClientError::Server(err) => match err.code {
            ErrorCode::NotFound => NOT_FOUND,
            ErrorCode::Timeout => TIMEOUT,
            ErrorCode::Rejected => REJECTED,
            ErrorCode::ContractMismatch => CONTRACT_MISMATCH,
            ErrorCode::PermissionDenied | ErrorCode::Unauthenticated => PERMISSION_DENIED,
            ErrorCode::InvalidArgument => USAGE,
            ErrorCode::Unavailable => NOT_RUNNING,
            _ => FAILURE,
        },
        _ => FAILURE,
    };
    Exit::new(code, e.to_string())
}
