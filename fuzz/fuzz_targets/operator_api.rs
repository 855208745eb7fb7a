//! The operator socket as the daemon reads it: the input is the byte stream a client
//! writes. It is cut into frames by the server's own reader (`read_frame`, under the
//! real 1 MiB limit and under a small one), the first frame goes through the `Hello`
//! check, every later one through the server's decode and sorting (`screen`) and, for a
//! request the handler would run, the argument checks (`check_request`).
//!
//! Checked beyond "no panic": every answer fits in a frame and stays small whatever the
//! input (a rejected value is quoted truncated), and a request that passes the checks
//! holds what the handler relies on.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use daemon::api::v1::request::Kind;
use daemon::api::v1::{ErrorCode, Response, response};
use daemon::api::{
    HelloAnswer, MAX_CALL_TIMEOUT_MS, MAX_FRAME, MAX_NAME_LEN, MAX_REASON_LEN, ReadError, Screened,
    check_request, read_frame, screen, screen_hello,
};
use daemon::ca::MAX_DEVICE_ID_LEN;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// An answer quotes at most 80 characters of what it refuses; anything near this bound
/// means some input is echoed whole.
const MAX_ANSWER: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    serve(data, MAX_FRAME);
    serve(data, 64);
});

fn serve(mut stream: &[u8], max: u32) {
    let mut first = true;
    loop {
        // A slice never waits: the reader finishes in one poll.
        let frame = match poll_once(read_frame(&mut stream, max)) {
            Ok(frame) => frame,
            Err(ReadError::TooLarge { len, .. }) => {
                assert!(len > max, "a frame within the limit was refused");
                return;
            }
            Err(ReadError::Closed | ReadError::Io(_)) => return,
        };
        assert!(
            frame.len() <= max as usize,
            "a frame beyond the limit was read"
        );
        if first {
            first = false;
            match screen_hello(&frame, "fuzz") {
                HelloAnswer::Serve(hello) => {
                    assert!(matches!(hello.kind, Some(response::Kind::Hello(_))));
                    bounded(&hello);
                }
                HelloAnswer::Close(close) => {
                    error_code(&close);
                    bounded(&close);
                    return;
                }
            }
            continue;
        }
        match screen(&frame) {
            Screened::Answer(answer) => {
                error_code(&answer);
                bounded(&answer);
            }
            Screened::Cancel { .. } => {}
            Screened::Run { id, kind } => {
                assert_ne!(id, 0, "request id 0 is reserved");
                assert!(!matches!(kind, Kind::Hello(_) | Kind::Cancel(_)));
                match check_request(&kind) {
                    Ok(()) => passed(&kind),
                    Err(e) => {
                        assert_eq!(e.code, ErrorCode::InvalidArgument);
                        bounded(&Response {
                            id,
                            kind: Some(response::Kind::Error(e.to_proto())),
                        });
                    }
                }
            }
        }
    }
}

/// What the handlers take for granted once the checks passed.
fn passed(kind: &Kind) {
    let id_ok = |id: &str| {
        !id.is_empty()
            && id.len() <= MAX_DEVICE_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    match kind {
        Kind::PairApprove(r) => assert!(u16::try_from(r.code_id).is_ok()),
        Kind::PairReject(r) => assert!(u16::try_from(r.code_id).is_ok()),
        Kind::ShowNode(r) => assert!(id_ok(&r.id)),
        Kind::Call(r) => {
            assert!(id_ok(&r.node));
            assert!(!r.capability.is_empty() && r.capability.len() <= MAX_NAME_LEN);
            assert!(r.content_type.len() <= MAX_NAME_LEN);
            assert!(r.timeout_ms <= MAX_CALL_TIMEOUT_MS);
        }
        Kind::Revoke(r) => {
            assert!(id_ok(&r.node));
            assert!(r.reason.len() <= MAX_REASON_LEN);
            assert!(!r.reason.chars().any(char::is_control));
        }
        Kind::Events(r) => assert!(r.node.as_deref().is_none_or(id_ok)),
        Kind::PairCode(r) => assert!(r.device_id.is_empty() || id_ok(&r.device_id)),
        _ => {}
    }
}

fn error_code(answer: &Response) {
    match &answer.kind {
        Some(response::Kind::Error(e)) => {
            let code = ErrorCode::try_from(e.code).expect("a known error code");
            assert_ne!(code, ErrorCode::Unspecified);
        }
        other => panic!("a refusal that is not an error: {other:?}"),
    }
}

fn bounded(answer: &Response) {
    let len = answer.encoded_len();
    assert!(len <= MAX_ANSWER, "an answer of {len} bytes");
}

fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("reading from a slice waited"),
    }
}
