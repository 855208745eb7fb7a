//! Argument checks the server runs on every request before a handler sees it, so the
//! daemon's code gets only well-formed ids, names and ranges. Each failure names the
//! field and the rule.

use protocol_core::pairing::{MAX_CODE_ID, MAX_CODE_LIFETIME_MS, MIN_CODE_LIFETIME_MS};

use super::ApiError;
use super::request::Request as Kind;
use crate::ca::{MAX_DEVICE_ID_LEN, check_device_id};

/// Longest capability name or content type, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Longest revocation reason, in bytes.
pub const MAX_REASON_LEN: usize = 512;

/// Longest call deadline an operator may ask for: 24 hours (a call may wait for a local
/// person's approval).
pub const MAX_CALL_TIMEOUT_MS: u32 = 24 * 60 * 60 * 1000;

/// Longest certificate signing request an operator identity may come with.
pub const MAX_CSR_LEN: usize = 4096;

/// Checks the arguments of a request, as the server does before a handler sees it.
/// Pure: it looks at the request only.
pub fn check_request(kind: &Kind) -> Result<(), ApiError> {
    match kind {
        Kind::Status(_) | Kind::WhoAmI(_) | Kind::ListPairings(_) | Kind::ListOperators(_) => {
            Ok(())
        }
        // Any id the daemon lists comes back as `after`: only its length is checked.
        Kind::ListNodes(req) => {
            if req.after.len() > MAX_DEVICE_ID_LEN {
                return Err(ApiError::invalid_argument(format!(
                    "after must be a node id of at most {MAX_DEVICE_ID_LEN} bytes (got {:?})",
                    truncate(&req.after)
                )));
            }
            Ok(())
        }
        Kind::CreatePairCode(req) => {
            if req.ttl_seconds != 0 {
                let ms = u64::from(req.ttl_seconds) * 1000;
                if !(MIN_CODE_LIFETIME_MS..=MAX_CODE_LIFETIME_MS).contains(&ms) {
                    return Err(ApiError::invalid_argument(format!(
                        "ttl_seconds {} is outside {}..={} (or 0 for the default)",
                        req.ttl_seconds,
                        MIN_CODE_LIFETIME_MS / 1000,
                        MAX_CODE_LIFETIME_MS / 1000
                    )));
                }
            }
            if !req.device_id.is_empty() {
                node_id("device_id", &req.device_id)?;
            }
            Ok(())
        }
        Kind::ApprovePairing(req) => code_id(req.code_id),
        Kind::RejectPairing(req) => code_id(req.code_id),
        Kind::ShowNode(req) => node_id("id", &req.id),
        Kind::ShowCall(_) => Ok(()),
        Kind::Call(req) => {
            node_id("node", &req.node)?;
            name("capability", &req.capability)?;
            content_type(&req.content_type)?;
            if req.timeout_ms > MAX_CALL_TIMEOUT_MS {
                return Err(ApiError::invalid_argument(format!(
                    "timeout_ms {} exceeds {MAX_CALL_TIMEOUT_MS} (24 h)",
                    req.timeout_ms
                )));
            }
            Ok(())
        }
        Kind::ListCalls(req) => {
            if let Some(node) = &req.node {
                node_id("node", node)?;
            }
            if let Some(state) = req.state
                && super::v1::CallState::try_from(state).is_err()
            {
                return Err(ApiError::invalid_argument(format!(
                    "state {state} is not a call state"
                )));
            }
            if req.until_ms != 0 && req.until_ms <= req.since_ms {
                return Err(ApiError::invalid_argument(format!(
                    "until_ms {} must be after since_ms {} (or 0 for no bound)",
                    req.until_ms, req.since_ms
                )));
            }
            Ok(())
        }
        Kind::AddOperator(req) => {
            node_id("name", &req.name)?;
            let role = super::v1::Role::try_from(req.role).unwrap_or(super::v1::Role::Unspecified);
            if role == super::v1::Role::Unspecified {
                return Err(ApiError::invalid_argument(
                    "role must be ROLE_VIEWER or ROLE_ADMIN",
                ));
            }
            if req.csr_der.is_empty() || req.csr_der.len() > MAX_CSR_LEN {
                return Err(ApiError::invalid_argument(format!(
                    "csr_der must be a certificate signing request of 1..={MAX_CSR_LEN} bytes"
                )));
            }
            Ok(())
        }
        Kind::RevokeOperator(req) => node_id("name", &req.name),
        Kind::Events(req) => match &req.node {
            Some(node) => node_id("node", node),
            None => Ok(()),
        },
        Kind::Revoke(req) => {
            node_id("node", &req.node)?;
            if req.reason.len() > MAX_REASON_LEN {
                return Err(ApiError::invalid_argument(format!(
                    "reason of {} bytes exceeds {MAX_REASON_LEN}",
                    req.reason.len()
                )));
            }
            if req.reason.chars().any(char::is_control) {
                return Err(ApiError::invalid_argument(
                    "reason must not contain control characters",
                ));
            }
            Ok(())
        }
    }
}

fn node_id(field: &str, id: &str) -> Result<(), ApiError> {
    check_device_id(id).map_err(|_| {
        ApiError::invalid_argument(format!(
            "{field} must be 1..={MAX_DEVICE_ID_LEN} characters of A-Z a-z 0-9 . _ - (got {:?})",
            truncate(id)
        ))
    })
}

fn code_id(id: u32) -> Result<(), ApiError> {
    if id > u32::from(MAX_CODE_ID) {
        return Err(ApiError::invalid_argument(format!(
            "code_id {id} is outside 0..={MAX_CODE_ID}"
        )));
    }
    Ok(())
}

fn name(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_argument(format!(
            "{field} must be 1..={MAX_NAME_LEN} printable ASCII characters without spaces (got {:?})",
            truncate(value)
        )))
    }
}

fn content_type(value: &str) -> Result<(), ApiError> {
    // Parameters such as `; charset=utf-8` may hold spaces; nothing else unprintable.
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_argument(format!(
            "content_type must be 1..={MAX_NAME_LEN} printable ASCII characters (got {:?})",
            truncate(value)
        )))
    }
}

/// At most 80 characters of a rejected value, so an error stays readable.
fn truncate(value: &str) -> String {
    value.chars().take(80).collect()
}
