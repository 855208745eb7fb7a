//! The operator API as the daemon reads a request: the input is `[method][body]`, the
//! first byte picking one of the `Operator` service's methods (`POST /api/v1/<Method>`)
//! and the rest being the body a client posted. The body goes through the server's
//! decoding (`Request::decode`, the contract's proto3 JSON mapping) and, once decoded,
//! the argument checks every request passes before a handler sees it (`check_request`).
//!
//! Checked beyond "no panic": a body that does not decode is `MALFORMED`, a request the
//! checks refuse is `INVALID_ARGUMENT`, every error message stays short whatever the
//! input (a rejected value is quoted truncated), a decoded request re-encodes to a body
//! that decodes to the same request (and encodes the same again), and a request that
//! passes the checks holds what the handlers rely on.
#![no_main]

use daemon::api::v1::{CallState, ErrorCode, Role};
use daemon::api::{
    ApiError, MAX_BODY, MAX_CALL_TIMEOUT_MS, MAX_CSR_LEN, MAX_NAME_LEN, MAX_REASON_LEN, Method,
    Request, check_request,
};
use daemon::ca::MAX_DEVICE_ID_LEN;
use libfuzzer_sys::fuzz_target;
use protocol_core::pairing::{MAX_CODE_ID, MAX_CODE_LIFETIME_MS, MIN_CODE_LIFETIME_MS};

/// An error quotes at most a few hundred characters of what it refuses; anything near
/// this bound means some input is echoed whole.
const MAX_MESSAGE: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    // The server refuses a larger body before it decodes anything.
    if body.len() > MAX_BODY {
        return;
    }
    let method = Method::ALL[usize::from(selector) % Method::ALL.len()];
    let request = match Request::decode(method, body) {
        Ok(request) => request,
        Err(e) => {
            assert_eq!(e.code, ErrorCode::Malformed, "{method:?}: {e}");
            bounded(&e);
            return;
        }
    };
    assert_eq!(request.method(), method);
    round_trip(&request);
    match check_request(&request) {
        Ok(()) => passed(&request),
        Err(e) => {
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{method:?}: {e}");
            bounded(&e);
        }
    }
});

/// What a client sends for a request reads back as that request, and the encoding is
/// stable: the body of the decoded copy is the same bytes.
fn round_trip(request: &Request) {
    let body = request.encode();
    let again = Request::decode(request.method(), &body).unwrap_or_else(|e| {
        panic!(
            "{request:?} encodes to {:?}, which does not decode: {e}",
            String::from_utf8_lossy(&body)
        )
    });
    assert_eq!(&again, request, "{:?}", String::from_utf8_lossy(&body));
    assert_eq!(
        again.encode(),
        body,
        "the encoding of {request:?} is not stable"
    );
}

fn bounded(e: &ApiError) {
    assert!(!e.message.is_empty(), "an error without a message");
    let len = e.message.len();
    assert!(len < MAX_MESSAGE, "an error message of {len} bytes: {e}");
    let proto = e.to_proto();
    assert_eq!(proto.code, e.code as i32);
    assert_eq!(proto.message, e.message);
}

/// A node id, device id or operator name as the handlers and the CA take it.
fn id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What the handlers take for granted once the checks passed.
fn passed(request: &Request) {
    let code_id_ok = |id: u32| u16::try_from(id).is_ok_and(|id| id <= MAX_CODE_ID);
    match request {
        Request::ApprovePairing(r) => assert!(code_id_ok(r.code_id), "{r:?}"),
        Request::RejectPairing(r) => assert!(code_id_ok(r.code_id), "{r:?}"),
        Request::ShowNode(r) => assert!(id_ok(&r.id), "{r:?}"),
        Request::ListNodes(r) => assert!(r.after.len() <= MAX_DEVICE_ID_LEN, "{r:?}"),
        Request::Call(r) => {
            assert!(id_ok(&r.node), "{r:?}");
            assert!(
                (1..=MAX_NAME_LEN).contains(&r.capability.len())
                    && r.capability.bytes().all(|b| b.is_ascii_graphic()),
                "{r:?}"
            );
            assert!(
                (1..=MAX_NAME_LEN).contains(&r.content_type.len())
                    && r.content_type
                        .bytes()
                        .all(|b| b.is_ascii_graphic() || b == b' '),
                "{r:?}"
            );
            assert!(r.timeout_ms <= MAX_CALL_TIMEOUT_MS, "{r:?}");
        }
        Request::Revoke(r) => {
            assert!(id_ok(&r.node), "{r:?}");
            assert!(r.reason.len() <= MAX_REASON_LEN, "{r:?}");
            assert!(!r.reason.chars().any(char::is_control), "{r:?}");
        }
        Request::Events(r) => assert!(r.node.as_deref().is_none_or(id_ok), "{r:?}"),
        Request::CreatePairCode(r) => {
            assert!(r.device_id.is_empty() || id_ok(&r.device_id), "{r:?}");
            let ms = u64::from(r.ttl_seconds) * 1000;
            assert!(
                r.ttl_seconds == 0 || (MIN_CODE_LIFETIME_MS..=MAX_CODE_LIFETIME_MS).contains(&ms),
                "{r:?}"
            );
        }
        Request::ListCalls(r) => {
            assert!(r.node.as_deref().is_none_or(id_ok), "{r:?}");
            assert!(
                r.state.is_none_or(|s| CallState::try_from(s).is_ok()),
                "{r:?}"
            );
            assert!(r.until_ms == 0 || r.until_ms > r.since_ms, "{r:?}");
        }
        Request::AddOperator(r) => {
            assert!(id_ok(&r.name), "{r:?}");
            assert!(
                matches!(Role::try_from(r.role), Ok(Role::Viewer | Role::Admin)),
                "{r:?}"
            );
            assert!((1..=MAX_CSR_LEN).contains(&r.csr_der.len()), "{r:?}");
        }
        Request::RevokeOperator(r) => assert!(id_ok(&r.name), "{r:?}"),
        Request::Status(_)
        | Request::WhoAmI(_)
        | Request::ListPairings(_)
        | Request::ShowCall(_)
        | Request::WatchCall(_)
        | Request::ListOperators(_) => {}
    }
}
