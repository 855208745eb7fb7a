//! One HTTP request: routed, its caller authenticated and checked against the method's
//! role, its body decoded and checked, then run on the [`OperatorApi`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{Method as HttpMethod, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use rustls::pki_types::CertificateDer;
use tracing::debug;

use super::OperatorApi;
use super::Sink;
use super::console::Console;
use crate::api::contract::{Method, message, to_json};

use crate::api::request::Request as ApiRequest;
use crate::api::v1::{self, ErrorCode, Role};
use crate::api::{
    API_PREFIX, ApiError, CONTRACT_HEADER, CONTRACT_VERSION, Caller, MAX_BODY, Via, check_request,
    openapi,
};

pub(super) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Who is at the other end of a connection, as the listener found it.
pub(super) enum Peer {
    /// The daemon's user on the Unix socket.
    Unix,
    /// Someone the Unix socket does not serve: every request gets this error.
    Refused(ApiError),
    /// A TLS client, with the certificate it presented (the operator CA's, checked).
    Tls {
        cert: Option<CertificateDer<'static>>,
    },
}

pub(super) struct Conn {
    pub peer: Peer,
    /// The web console, on the TLS listener only.
    pub console: Option<Arc<Console>>,
}

/// Content-Security-Policy of every answer: the console's own files, nothing inline.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The hyper service of one connection.
pub(super) fn service<H: OperatorApi>(
    handler: Arc<H>,
    conn: Arc<Conn>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Send {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        let conn = conn.clone();
        async move {
            let mut resp = route(handler, conn, req)
                .await
                .unwrap_or_else(|e| error_response(&e));
            secure_headers(resp.headers_mut());
            Ok(resp)
        }
    })
}

async fn route<H: OperatorApi>(
    handler: Arc<H>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if let Peer::Refused(e) = &conn.peer {
        return Err(e.clone());
    }
    check_contract(&req)?;
    let path = req.uri().path().to_owned();
    if req.method() == HttpMethod::GET && path == "/api/v1/openapi.json" {
        return Ok(bytes_response(
            StatusCode::OK,
            "application/json",
            openapi::document().to_owned().into_bytes(),
        ));
    }
    if req.method() == HttpMethod::GET && path == "/api/v1/operator.proto" {
        return Ok(bytes_response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            proto::OPERATOR_PROTO.as_bytes().to_vec(),
        ));
    }
    if let Some(name) = path.strip_prefix(API_PREFIX) {
        let method = Method::from_name(name).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unimplemented,
                format!("no method {:?} in this contract", truncate(name)),
            )
        })?;
        if req.method() != HttpMethod::POST {
            return Err(ApiError::new(
                ErrorCode::Unimplemented,
                format!("{} takes POST", method.path()),
            ));
        }
        // The body is read before any refusal, so the connection stays usable after one.
        let (parts, body) = req.into_parts();
        let body = read_body(body).await?;
        let req = Request::from_parts(parts, ());
        let caller = authenticate(&*handler, &conn, &req)?;
        if !caller.may(method) {
            return Err(ApiError::permission_denied(format!(
                "{} {:?} may not use {}: it needs {}",
                role_name(caller.role),
                caller.name,
                method.name(),
                role_name(method.required_role())
            )));
        }
        let request = ApiRequest::decode(method, &body)?;
        check_request(&request)?;
        return run(handler, caller, request).await;
    }
    match &conn.console {
        Some(console) => console.route(&*handler, req).await,
        None => Err(ApiError::not_found(format!(
            "nothing at {}",
            truncate(&path)
        ))),
    }
}

/// The caller of an API request.
fn authenticate<H: OperatorApi, B>(
    handler: &H,
    conn: &Conn,
    req: &Request<B>,
) -> Result<Caller, ApiError> {
    match &conn.peer {
        Peer::Unix => Ok(Caller {
            name: "local".to_owned(),
            role: Role::Admin,
            via: Via::UnixSocket,
        }),
        Peer::Refused(e) => Err(e.clone()),
        Peer::Tls { cert: Some(cert) } => {
            let mut caller = handler.authenticate(cert)?;
            caller.via = Via::Certificate;
            Ok(caller)
        }
        Peer::Tls { cert: None } => match &conn.console {
            Some(console) => console.caller(handler, req),
            None => Err(ApiError::unauthenticated("no operator identity")),
        },
    }
}

fn check_contract<B>(req: &Request<B>) -> Result<(), ApiError> {
    let Some(value) = req.headers().get(CONTRACT_HEADER) else {
        return Ok(());
    };
    let named = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok());
    if named == Some(CONTRACT_VERSION) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::ContractMismatch,
        format!(
            "the client speaks operator contract {}, this daemon speaks {CONTRACT_VERSION}",
            named.map_or_else(|| "(unreadable)".to_owned(), |v| v.to_string())
        ),
    ))
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
pub(super) async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            ErrorCode::FrameTooLarge,
            format!("the body exceeds {MAX_BODY} bytes"),
        )),
        Err(e) => Err(ApiError::malformed(format!(
            "the body could not be read: {e}"
        ))),
    }
}

/// Runs one checked request.
async fn run<H: OperatorApi>(
    handler: Arc<H>,
    caller: Caller,
    request: ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let method = request.method();
    let out = method.descriptor().output();
    let json = match request {
        ApiRequest::Status(_) => to_json(&out, &handler.status().await?),
        ApiRequest::WhoAmI(_) => to_json(
            &out,
            &v1::WhoAmI {
                name: caller.name,
                role: caller.role as i32,
                via: caller.via.as_str().to_owned(),
            },
        ),
        ApiRequest::CreatePairCode(r) => to_json(&out, &handler.pair_code(r).await?),
        ApiRequest::ListPairings(_) => to_json(&out, &handler.pair_list().await?),
        ApiRequest::ApprovePairing(r) => to_json(&out, &handler.pair_approve(r).await?),
        ApiRequest::RejectPairing(r) => to_json(&out, &handler.pair_reject(r).await?),
        ApiRequest::ListNodes(r) => to_json(&out, &handler.list_nodes(r).await?),
        ApiRequest::ShowNode(r) => to_json(&out, &handler.show_node(r).await?),
        ApiRequest::Revoke(r) => to_json(&out, &handler.revoke(r).await?),
        ApiRequest::Call(r) => to_json(&out, &handler.call(r).await?),
        ApiRequest::ShowCall(r) => to_json(&out, &handler.show_call(r).await?),
        ApiRequest::ListCalls(r) => to_json(&out, &handler.list_calls(r).await?),
        ApiRequest::AddOperator(r) => to_json(&out, &handler.add_operator(r).await?),
        ApiRequest::ListOperators(_) => to_json(&out, &handler.list_operators().await?),
        ApiRequest::RevokeOperator(r) => to_json(&out, &handler.revoke_operator(r).await?),
        ApiRequest::Events(r) => {
            return Ok(ndjson_stream(out, move |sink| {
                tokio::spawn(async move { handler.events(r, sink).await })
            }));
        }
        ApiRequest::WatchCall(r) => {
            // An unknown call is an error status, not an empty stream.
            handler.show_call(r).await?;
            return Ok(ndjson_stream(out, move |sink| {
                tokio::spawn(async move { handler.watch_call(r, sink).await })
            }));
        }
    };
    Ok(bytes_response(StatusCode::OK, "application/json", json))
}

/// Aborts the task that feeds a stream when the stream's body is dropped (the client
/// went away).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A stream as `application/x-ndjson`: one message per line, as the handler `feed`
/// produces them into its sink; the handler runs on a task of its own, aborted when the
/// client goes away (the body is dropped).
fn ndjson_stream<M, F>(desc: prost_reflect::MessageDescriptor, feed: F) -> Response<Body>
where
    M: prost::Message + Send + 'static,
    F: FnOnce(Sink<M>) -> tokio::task::JoinHandle<Result<(), ApiError>>,
{
    let (sink, rx) = Sink::channel(64);
    let task = feed(sink);
    let guard = AbortOnDrop(task.abort_handle());
    let lines =
        futures_util::stream::unfold((rx, Some(task), guard), move |(mut rx, task, guard)| {
            let desc = desc.clone();
            async move {
                if let Some(message) = rx.recv().await {
                    let mut line = to_json(&desc, &message);
                    line.push(b'\n');
                    return Some((Ok(Frame::data(Bytes::from(line))), (rx, task, guard)));
                }
                // The handler is done: a clean end, or the stream is cut short.
                let outcome = task?.await;
                let error = match outcome {
                    Ok(Ok(())) => return None,
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                debug!(%error, "stream failed");
                // Give the connection a turn to send the lines before it: an error drops
                // what hyper has not written yet.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Some((Err(std::io::Error::other(error)), (rx, None, guard)))
            }
        })
        .fuse();
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(lines)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

pub(super) fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Body> {
    let body = Full::new(Bytes::from(body)).map_err(|e: Infallible| match e {});
    let mut resp = Response::new(BodyExt::boxed_unsync(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The answer to a failed request: its status, and the `Error` message as JSON.
pub(super) fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let json = to_json(&message("tern.operator.v1.Error"), &e.to_proto());
    bytes_response(status, "application/json", json)
}

fn secure_headers(headers: &mut http::HeaderMap) {
    let set = |h: &mut http::HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    headers.insert(CONTRACT_HEADER, HeaderValue::from(CONTRACT_VERSION));
    set(headers, "content-security-policy", CSP);
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    set(headers, "referrer-policy", "no-referrer");
    set(headers, "cross-origin-opener-policy", "same-origin");
    set(headers, "cross-origin-resource-policy", "same-origin");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
}

pub(super) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
        Role::Unspecified => "no role",
    }
}

pub(super) fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}
