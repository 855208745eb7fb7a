//! The operator API's transport over a real Unix socket: a test handler stands in for the
//! daemon, and the real client (or a raw socket, for what a client never sends) talks to
//! the real server.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use daemon::api::v1::{
    self, CallRequest, CallResult, CallState, ErrorCode, Event, EventsRequest, ListNodesRequest,
    Node, NodeList, NodeState, PairApproveRequest, PairCode, PairCodeRequest, PairList, PairRecord,
    PairRejectRequest, PairState, Request, Response, RevokeRequest, Revoked, ShowCallRequest,
    ShowNodeRequest, Status, request, response,
};
use daemon::api::{
    ApiClient, ApiError, ApiServer, BindError, CONTRACT_VERSION, ClientConfig, ClientError,
    EventSink, MAX_FRAME, OperatorApi, ServerConfig, decode_request, decode_response,
    server::serve_connection,
};
use proptest::prelude::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Counts a handler future's drops, to see that cancelling reaches the daemon's code.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A daemon stand-in whose answers echo the requests, so a round trip shows every field
/// made it both ways.
#[derive(Default)]
struct TestApi {
    handled: AtomicUsize,
    dropped: Arc<AtomicUsize>,
}

fn node(id: &str) -> Node {
    Node {
        id: id.to_owned(),
        state: NodeState::Online as i32,
        last_seen_ms: 1_700_000_000_123,
        capabilities: vec![v1::Capability {
            name: "system.health".into(),
            version: 2,
            input_content_type: "application/json".into(),
            output_content_type: "application/cbor".into(),
            needs_approval: true,
        }],
        address: "10.0.0.7:51000".into(),
        certificate_fingerprint: "ab".repeat(32),
        certificate_not_after_ms: 1_800_000_000_000,
    }
}

fn record(code_id: u32, state: PairState) -> PairRecord {
    PairRecord {
        code_id,
        state: state as i32,
        created_at_ms: 1_000,
        expires_at_ms: 601_000,
        device_id: "sensor-1".into(),
        approval_required: true,
        awaiting_decision: state == PairState::Pending,
        used: true,
    }
}

impl OperatorApi for TestApi {
    async fn status(&self) -> Result<Status, ApiError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(Status {
            listen_addresses: vec!["0.0.0.0:7443".into(), "quic://[::]:7443".into()],
            mtls_enforced: true,
            ca: Some(v1::CertificateAuthority {
                fingerprint_sha256: "cd".repeat(32),
                not_after_ms: 2_000_000_000_000,
            }),
            pairing: Some(v1::PairingPolicy {
                default_ttl_seconds: 600,
                approval_required: true,
            }),
            nodes: Some(v1::NodeCounts {
                paired: 5,
                online: 3,
                revoked: 1,
            }),
            started_at_ms: 42,
        })
    }

    async fn pair_code(&self, req: PairCodeRequest) -> Result<PairCode, ApiError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(PairCode {
            code: "0042-1234-5678".into(),
            uri: "tern://pair?v=1&c=0042-1234-5678".into(),
            code_id: 42,
            expires_at_ms: u64::from(req.ttl_seconds) * 1000,
            device_id: req.device_id,
            approval_required: req.require_approval.unwrap_or(false),
        })
    }

    async fn pair_list(&self) -> Result<PairList, ApiError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(PairList {
            records: vec![
                record(42, PairState::Pending),
                record(7, PairState::Completed),
            ],
        })
    }

    async fn pair_approve(&self, req: PairApproveRequest) -> Result<PairRecord, ApiError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        if req.code_id == 7 {
            return Err(ApiError::failed_precondition(
                "a pairing cannot go from Completed to Approved",
            ));
        }
        Ok(record(req.code_id, PairState::Approved))
    }

    async fn pair_reject(&self, req: PairRejectRequest) -> Result<PairRecord, ApiError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(record(req.code_id, PairState::Rejected))
    }

    /// Pages of one node when the request pages, so a listing takes several requests.
    async fn list_nodes(&self, req: ListNodesRequest) -> Result<NodeList, ApiError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        let mut nodes: Vec<Node> = ["sensor-1", "sensor-2"]
            .into_iter()
            .filter(|id| *id > req.after.as_str())
            .map(node)
            .collect();
        let mut next_after = String::new();
        if req.limit.is_some() && nodes.len() > 1 {
            nodes.truncate(1);
            next_after = nodes[0].id.clone();
        }
        Ok(NodeList { nodes, next_after })
    }

    async fn show_call(&self, req: ShowCallRequest) -> Result<CallResult, ApiError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Err(ApiError::not_found(format!("no call {}", req.id)))
    }

    async fn show_node(&self, req: ShowNodeRequest) -> Result<Node, ApiError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        if req.id == "ghost" {
            return Err(ApiError::not_found("no node ghost"));
        }
        Ok(node(&req.id))
    }

    async fn call(&self, req: CallRequest) -> Result<CallResult, ApiError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        let _guard = DropCount(self.dropped.clone());
        match req.capability.as_str() {
            "test.hang" => std::future::pending().await,
            "test.panic" => panic!("handler bug"),
            "test.slow" => tokio::time::sleep(Duration::from_millis(150)).await,
            "test.huge" => {
                return Ok(CallResult {
                    output: vec![0; MAX_FRAME as usize + 1],
                    ..CallResult::default()
                });
            }
            _ => {}
        }
        Ok(CallResult {
            call_id: 9,
            state: CallState::Succeeded as i32,
            output: req.input,
            content_type: req.content_type,
            message: format!(
                "{} on {} within {} ms",
                req.capability, req.node, req.timeout_ms
            ),
            ..CallResult::default()
        })
    }

    async fn events(&self, req: EventsRequest, mut sink: EventSink) -> Result<(), ApiError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        let _guard = DropCount(self.dropped.clone());
        let node = req.node.unwrap_or_else(|| "sensor-1".into());
        if node == "ghost" {
            return Err(ApiError::not_found("no node ghost"));
        }
        let mut seq = req.from_seq;
        loop {
            let event = Event {
                seq,
                node: node.clone(),
                name: "temperature".into(),
                body: format!("{{\"c\":{seq}}}").into_bytes(),
                content_type: "application/json".into(),
                at_ms: 1_000 + seq,
            };
            sink.send(event)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            seq += 1;
            if !req.follow && seq >= req.from_seq + 3 {
                return Ok(());
            }
            if req.follow {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    async fn revoke(&self, req: RevokeRequest) -> Result<Revoked, ApiError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(Revoked {
            node: req.node,
            revoked_at_ms: req.reason.len() as u64,
            connections_closed: 2,
        })
    }
}

struct Daemon {
    dir: tempfile::TempDir,
    path: PathBuf,
    api: Arc<TestApi>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Daemon {
    /// Stops the server; hands back its directory, still there.
    async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
        self.dir
    }
}

fn start() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.sock");
    start_at(dir, path, ServerConfig::default())
}

fn start_at(dir: tempfile::TempDir, path: PathBuf, config: ServerConfig) -> Daemon {
    let server = ApiServer::bind_with(&path, config).unwrap();
    let api = Arc::new(TestApi::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(api.clone(), async {
        let _ = stopped.await;
    }));
    Daemon {
        dir,
        path,
        api,
        stop: Some(stop),
        task,
    }
}

fn frame(msg: &impl Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

async fn read_response(stream: &mut UnixStream) -> Option<Response> {
    let mut header = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return None,
        Err(_) => panic!("no response within 5 s"),
    }
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).await.unwrap();
    Some(decode_response(&body).unwrap())
}

fn error_of(resp: &Response) -> (ErrorCode, String) {
    match &resp.kind {
        Some(response::Kind::Error(e)) => (e.code(), e.message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn hello_request(id: u64, version: u32) -> Request {
    Request {
        id,
        kind: Some(request::Kind::Hello(v1::Hello {
            contract_version: version,
            software_version: "raw-test".into(),
        })),
    }
}

/// A raw connection past the `Hello`.
async fn raw_session(path: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(path).await.unwrap();
    stream
        .write_all(&frame(&hello_request(1, CONTRACT_VERSION)))
        .await
        .unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert!(
        matches!(resp.kind, Some(response::Kind::Hello(_))),
        "{resp:?}"
    );
    stream
}

fn status_request(id: u64) -> Request {
    Request {
        id,
        kind: Some(request::Kind::Status(v1::StatusRequest {})),
    }
}

async fn assert_status_served(stream: &mut UnixStream, id: u64) {
    stream.write_all(&frame(&status_request(id))).await.unwrap();
    let resp = read_response(stream).await.unwrap();
    assert_eq!(resp.id, id);
    assert!(
        matches!(resp.kind, Some(response::Kind::Status(_))),
        "{resp:?}"
    );
}

#[tokio::test]
async fn every_request_round_trips() {
    let daemon = start();
    let client = ApiClient::connect(&daemon.path).await.unwrap();
    assert_eq!(client.daemon_hello().contract_version, CONTRACT_VERSION);
    assert_eq!(
        client.daemon_hello().software_version,
        env!("CARGO_PKG_VERSION")
    );

    let status = client.status().await.unwrap();
    assert_eq!(status, daemon.api.status().await.unwrap());

    let code = client
        .pair_code(PairCodeRequest {
            ttl_seconds: 120,
            require_approval: Some(true),
            device_id: "sensor-9".into(),
        })
        .await
        .unwrap();
    assert_eq!(code.code, "0042-1234-5678");
    assert_eq!(code.code_id, 42);
    assert_eq!(code.expires_at_ms, 120_000);
    assert_eq!(code.device_id, "sensor-9");
    assert!(code.approval_required);

    let list = client.pair_list().await.unwrap();
    assert_eq!(list.records.len(), 2);
    assert_eq!(list.records[0].state(), PairState::Pending);
    assert!(list.records[0].awaiting_decision);

    let approved = client.pair_approve(42).await.unwrap();
    assert_eq!(
        (approved.code_id, approved.state()),
        (42, PairState::Approved)
    );
    let rejected = client.pair_reject(43).await.unwrap();
    assert_eq!(
        (rejected.code_id, rejected.state()),
        (43, PairState::Rejected)
    );

    let before = daemon.api.handled.load(Ordering::SeqCst);
    let nodes = client.list_nodes().await.unwrap();
    assert_eq!(nodes.nodes, vec![node("sensor-1"), node("sensor-2")]);
    assert_eq!(nodes.next_after, "");
    // One request a page.
    assert_eq!(daemon.api.handled.load(Ordering::SeqCst) - before, 2);
    let page = client.list_nodes_page("", 7).await.unwrap();
    assert_eq!(
        (page.nodes, page.next_after.as_str()),
        (vec![node("sensor-1")], "sensor-1")
    );
    let page = client.list_nodes_page("sensor-1", 7).await.unwrap();
    assert_eq!(
        (page.nodes, page.next_after.as_str()),
        (vec![node("sensor-2")], "")
    );
    let shown = client.show_node("sensor-2").await.unwrap();
    assert_eq!(shown, node("sensor-2"));
    assert_eq!(
        shown.capabilities[0].output_content_type,
        "application/cbor"
    );

    let result = client
        .call(CallRequest {
            node: "sensor-1".into(),
            capability: "system.health".into(),
            input: br#"{"verbose":true}"#.to_vec(),
            content_type: "application/json".into(),
            timeout_ms: 2_000,
        })
        .await
        .unwrap();
    assert_eq!(result.state(), CallState::Succeeded);
    assert_eq!(result.call_id, 9);
    assert_eq!(result.output, br#"{"verbose":true}"#);
    assert_eq!(result.content_type, "application/json");
    assert_eq!(result.message, "system.health on sensor-1 within 2000 ms");

    let mut events = client
        .events(EventsRequest {
            node: Some("sensor-3".into()),
            from_seq: 10,
            follow: false,
        })
        .await
        .unwrap();
    let mut seqs = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        assert_eq!(event.node, "sensor-3");
        assert_eq!(event.body, format!("{{\"c\":{}}}", event.seq).into_bytes());
        seqs.push(event.seq);
    }
    assert_eq!(seqs, vec![10, 11, 12]);
    assert_eq!(events.next_seq(), 13);

    let revoked = client.revoke("sensor-2", "lost in transit").await.unwrap();
    assert_eq!(revoked.node, "sensor-2");
    assert_eq!(revoked.revoked_at_ms, "lost in transit".len() as u64);
    assert_eq!(revoked.connections_closed, 2);

    daemon.stop().await;
}

#[tokio::test]
async fn handler_errors_arrive_typed() {
    let daemon = start();
    let client = ApiClient::connect(&daemon.path).await.unwrap();

    let err = client.show_node("ghost").await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::NotFound), "{err}");
    let err = client.pair_approve(7).await.unwrap_err();
    assert_eq!(
        err.server_code(),
        Some(ErrorCode::FailedPrecondition),
        "{err}"
    );
    assert!(err.to_string().contains("Completed to Approved"), "{err}");

    let mut events = client
        .events(EventsRequest {
            node: Some("ghost".into()),
            ..EventsRequest::default()
        })
        .await
        .unwrap();
    let err = events.next().await.unwrap().unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::NotFound));
    assert!(events.next().await.is_none());

    // A handler that panics fails its request only.
    let err = client
        .call(CallRequest {
            node: "sensor-1".into(),
            capability: "test.panic".into(),
            content_type: "application/json".into(),
            ..CallRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::Internal), "{err}");
    // An answer larger than a frame becomes an error rather than a broken stream.
    let err = client
        .call(CallRequest {
            node: "sensor-1".into(),
            capability: "test.huge".into(),
            content_type: "application/json".into(),
            ..CallRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::Internal), "{err}");
    assert!(client.status().await.is_ok());
    daemon.stop().await;
}

#[tokio::test]
async fn bad_arguments_never_reach_the_handler() {
    let daemon = start();
    let client = ApiClient::connect(&daemon.path).await.unwrap();
    let before = daemon.api.handled.load(Ordering::SeqCst);

    let call = |node: &str, capability: &str, content_type: &str, timeout_ms| CallRequest {
        node: node.into(),
        capability: capability.into(),
        content_type: content_type.into(),
        timeout_ms,
        input: Vec::new(),
    };
    let bad_calls = [
        call("", "system.health", "application/json", 0),
        call("bad id!", "system.health", "application/json", 0),
        call("sensor-1", "", "application/json", 0),
        call("sensor-1", "has space", "application/json", 0),
        call("sensor-1", "system.health", "", 0),
        call(
            "sensor-1",
            "system.health",
            "application/json",
            24 * 3600 * 1000 + 1,
        ),
    ];
    for req in bad_calls {
        let err = client.call(req.clone()).await.unwrap_err();
        assert_eq!(
            err.server_code(),
            Some(ErrorCode::InvalidArgument),
            "{req:?}: {err}"
        );
    }
    let err = client.pair_approve(10_000).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::InvalidArgument));
    assert!(err.to_string().contains("code_id 10000"), "{err}");
    let err = client.pair_reject(99_999).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::InvalidArgument));
    for ttl_seconds in [29, 86_401] {
        let err = client
            .pair_code(PairCodeRequest {
                ttl_seconds,
                ..PairCodeRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.server_code(), Some(ErrorCode::InvalidArgument), "{err}");
    }
    let err = client.show_node("x".repeat(65)).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::InvalidArgument));
    let err = client.list_nodes_page("x".repeat(65), 0).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::InvalidArgument));
    assert!(err.to_string().contains("after"), "{err}");
    let err = client.revoke("sensor-1", "a\nb").await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::InvalidArgument));
    let err = client
        .revoke("sensor-1", "r".repeat(513))
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::InvalidArgument));
    let mut events = client
        .events(EventsRequest {
            node: Some("../etc".into()),
            ..EventsRequest::default()
        })
        .await
        .unwrap();
    let err = events.next().await.unwrap().unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::InvalidArgument));

    assert_eq!(daemon.api.handled.load(Ordering::SeqCst), before);
    // The limits' edges pass.
    client
        .pair_code(PairCodeRequest {
            ttl_seconds: 30,
            ..PairCodeRequest::default()
        })
        .await
        .unwrap();
    client.pair_approve(9_999).await.unwrap();
    client
        .list_nodes_page("x".repeat(64), u32::MAX)
        .await
        .unwrap();
    daemon.stop().await;
}

#[tokio::test]
async fn a_follow_stream_keeps_streaming_while_a_call_completes() {
    let daemon = start();
    let client = ApiClient::connect(&daemon.path).await.unwrap();
    let mut events = client
        .events(EventsRequest {
            node: None,
            from_seq: 100,
            follow: true,
        })
        .await
        .unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.seq, 100);

    // The stream is read on its own task while the call runs on the same connection.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if seen_tx.send(event.unwrap().seq).is_err() {
                break;
            }
        }
    });
    let result = client
        .call(CallRequest {
            node: "sensor-1".into(),
            capability: "test.slow".into(),
            content_type: "application/json".into(),
            ..CallRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(result.state(), CallState::Succeeded);

    let mut during = Vec::new();
    while let Ok(seq) = seen_rx.try_recv() {
        during.push(seq);
    }
    // 150 ms of call at one event per 10 ms: the stream did not wait for the call.
    assert!(during.len() >= 3, "events during the call: {during:?}");
    let after = tokio::time::timeout(Duration::from_secs(2), seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let mut all = during.clone();
    all.push(after);
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "gapless: {all:?}");
    assert_eq!(all[0], 101);

    // Dropping the stream cancels it on the daemon: the handler's future is dropped.
    reader.abort();
    let _ = reader.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while daemon.api.dropped.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(client.status().await.is_ok());
    daemon.stop().await;
}

#[tokio::test]
async fn a_timed_out_request_is_cancelled_on_the_daemon() {
    let daemon = start();
    let config = ClientConfig {
        request_timeout: Duration::from_millis(100),
        ..ClientConfig::default()
    };
    let client = ApiClient::connect_with(&daemon.path, config).await.unwrap();
    let err = client
        .call(CallRequest {
            node: "sensor-1".into(),
            capability: "test.hang".into(),
            content_type: "application/json".into(),
            timeout_ms: 50,
            ..CallRequest::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while daemon.api.dropped.load(Ordering::SeqCst) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "call not cancelled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(client.status().await.is_ok());
    daemon.stop().await;
}

#[tokio::test]
async fn garbage_and_unknown_requests_get_typed_errors_and_the_connection_goes_on() {
    let daemon = start();
    let mut stream = raw_session(&daemon.path).await;

    // Not a protobuf message: a field with wire type 7.
    let garbage = [0, 0, 0, 3, 0xff, 0xff, 0xff];
    stream.write_all(&garbage).await.unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert_eq!(resp.id, 0);
    let (code, message) = error_of(&resp);
    assert_eq!(code, ErrorCode::Malformed);
    assert!(message.contains("3 bytes"), "{message}");
    assert_status_served(&mut stream, 2).await;

    // A request kind from a newer contract: `id = 5`, then field 99 (an empty message).
    let unknown = [0x08, 0x05, 0x9a, 0x06, 0x00];
    let decoded = decode_request(&unknown).unwrap();
    assert_eq!((decoded.id, decoded.kind), (5, None));
    stream
        .write_all(&[0, 0, 0, unknown.len() as u8])
        .await
        .unwrap();
    stream.write_all(&unknown).await.unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert_eq!(resp.id, 5);
    assert_eq!(error_of(&resp).0, ErrorCode::Unimplemented);
    assert_status_served(&mut stream, 6).await;

    // Id 0 is the connection's own; a second Hello is out of place.
    stream.write_all(&frame(&status_request(0))).await.unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert_eq!(
        (resp.id, error_of(&resp).0),
        (0, ErrorCode::InvalidArgument)
    );
    stream
        .write_all(&frame(&hello_request(7, CONTRACT_VERSION)))
        .await
        .unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert_eq!(
        (resp.id, error_of(&resp).0),
        (7, ErrorCode::FailedPrecondition)
    );

    // A second connection is served throughout.
    let other = ApiClient::connect(&daemon.path).await.unwrap();
    assert!(other.status().await.is_ok());
    assert_status_served(&mut stream, 8).await;
    daemon.stop().await;
}

#[tokio::test]
async fn an_oversize_prefix_gets_an_error_then_a_close() {
    let daemon = start();
    let mut stream = raw_session(&daemon.path).await;
    let watcher = ApiClient::connect(&daemon.path).await.unwrap();

    stream
        .write_all(&(MAX_FRAME + 1).to_be_bytes())
        .await
        .unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert_eq!(resp.id, 0);
    let (code, message) = error_of(&resp);
    assert_eq!(code, ErrorCode::FrameTooLarge);
    assert!(message.contains(&(MAX_FRAME + 1).to_string()), "{message}");
    assert!(
        read_response(&mut stream).await.is_none(),
        "connection closed"
    );

    // At the limit exactly the frame is read (and is not a valid request).
    let mut stream = raw_session(&daemon.path).await;
    stream.write_all(&MAX_FRAME.to_be_bytes()).await.unwrap();
    stream
        .write_all(&vec![0xff; MAX_FRAME as usize])
        .await
        .unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert_eq!(error_of(&resp).0, ErrorCode::Malformed);
    assert_status_served(&mut stream, 2).await;

    assert!(watcher.status().await.is_ok());
    daemon.stop().await;
}

#[tokio::test]
async fn a_contract_mismatch_names_both_versions() {
    let daemon = start();
    let mut stream = UnixStream::connect(&daemon.path).await.unwrap();
    stream
        .write_all(&frame(&hello_request(1, 99)))
        .await
        .unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert_eq!(resp.id, 1);
    let Some(response::Kind::Error(error)) = &resp.kind else {
        panic!("expected an error, got {resp:?}");
    };
    assert_eq!(error.code(), ErrorCode::ContractMismatch);
    assert_eq!(error.daemon_contract_version, CONTRACT_VERSION);
    assert!(error.message.contains("version 99"), "{}", error.message);
    assert!(
        error
            .message
            .contains(&format!("version {CONTRACT_VERSION}")),
        "{}",
        error.message
    );
    assert!(
        read_response(&mut stream).await.is_none(),
        "connection closed"
    );

    // A first request that is not a Hello is refused the same way.
    let mut stream = UnixStream::connect(&daemon.path).await.unwrap();
    stream.write_all(&frame(&status_request(1))).await.unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert_eq!(error_of(&resp).0, ErrorCode::FailedPrecondition);
    assert!(read_response(&mut stream).await.is_none());
    daemon.stop().await;
}

#[tokio::test]
async fn the_client_reports_a_mismatch_with_both_versions() {
    // A daemon of another contract, played by hand.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let fake = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        stream.read_exact(&mut body).await.unwrap();
        let hello = decode_request(&body).unwrap();
        let resp = Response {
            id: hello.id,
            kind: Some(response::Kind::Error(v1::Error {
                code: ErrorCode::ContractMismatch as i32,
                message: "client speaks 1, daemon speaks 7".into(),
                daemon_contract_version: 7,
            })),
        };
        stream.write_all(&frame(&resp)).await.unwrap();
    });
    let err = ApiClient::connect(&path).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::ContractMismatch {
                client: CONTRACT_VERSION,
                daemon: 7
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("version 1") && text.contains("version 7"),
        "{text}"
    );
    fake.await.unwrap();
}

#[tokio::test]
async fn the_socket_is_private_and_cleaned_up() {
    let daemon = start();
    let mode = std::fs::metadata(&daemon.path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second daemon on the same socket refuses to start.
    match ApiServer::bind(&daemon.path) {
        Err(BindError::AlreadyRunning { path }) => assert_eq!(path, daemon.path),
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    // Stopping tells a following client why its stream ends.
    let client = ApiClient::connect(&daemon.path).await.unwrap();
    let mut events = client
        .events(EventsRequest {
            follow: true,
            ..EventsRequest::default()
        })
        .await
        .unwrap();
    assert!(events.next().await.unwrap().is_ok());
    let path = daemon.path.clone();
    let dir = daemon.stop().await;
    assert!(dir.path().exists());
    assert!(!path.exists(), "socket removed on shutdown");
    let end = loop {
        match events.next().await.unwrap() {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(end, ClientError::Disconnected { .. }), "{end:?}");
    assert!(end.to_string().contains("shutting down"), "{end}");
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn a_client_without_a_daemon_gets_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.sock");
    let err = ApiClient::connect(&path).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
    assert!(err.to_string().contains("not running"), "{err}");

    // A socket file nobody listens on (a dead daemon's) reads the same.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let err = ApiClient::connect(&path).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_other_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let daemon = start_at(dir, path, ServerConfig::default());
    let client = ApiClient::connect(&daemon.path).await.unwrap();
    assert!(client.status().await.is_ok());
    daemon.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.sock");
    std::fs::write(&path, b"not a socket").unwrap();
    assert!(matches!(
        ApiServer::bind(&path),
        Err(BindError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_hello_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.sock");
    let config = ServerConfig {
        hello_timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let daemon = start_at(dir, path, config);
    let mut stream = UnixStream::connect(&daemon.path).await.unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert_eq!(error_of(&resp).0, ErrorCode::Timeout);
    assert!(read_response(&mut stream).await.is_none());
    daemon.stop().await;
}

#[tokio::test]
async fn too_many_connections_are_refused_with_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.sock");
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let daemon = start_at(dir, path, config);
    let first = ApiClient::connect(&daemon.path).await.unwrap();
    let err = ApiClient::connect(&daemon.path).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::Unavailable), "{err:?}");
    drop(first);
    // The slot frees once the first connection's task ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match ApiClient::connect(&daemon.path).await {
            Ok(client) => {
                assert!(client.status().await.is_ok());
                break;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "slot not freed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    daemon.stop().await;
}

/// Runs the server's connection loop over an in-memory pipe on `input`, then returns
/// what it wrote; panics (failing the case) if the server panicked or hung.
fn serve_bytes(input: Vec<u8>) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let config = Arc::new(ServerConfig {
            hello_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        });
        let task = tokio::spawn(serve_connection(
            server,
            Arc::new(TestApi::default()),
            config,
        ));
        client.write_all(&input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut output = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut output))
            .await
            .expect("the server closes")
            .unwrap();
        task.await.expect("the server does not panic");
        output
    })
}

fn responses(mut output: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    while !output.is_empty() {
        let len = u32::from_be_bytes(output[..4].try_into().unwrap()) as usize;
        assert!(len <= MAX_FRAME as usize);
        out.push(decode_response(&output[4..4 + len]).expect("the server writes valid frames"));
        output = &output[4 + len..];
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever arrives first, the server answers with errors only, or closes.
    #[test]
    fn random_bytes_never_panic_the_server(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        let out = responses(&serve_bytes(input));
        prop_assert!(out.len() <= 1);
        for resp in out {
            let is_hello = matches!(resp.kind, Some(response::Kind::Hello(_)));
            let is_error = matches!(resp.kind, Some(response::Kind::Error(_)));
            prop_assert!(is_error || is_hello, "{:?}", resp);
        }
    }

    /// After a good Hello, random frames each get a response (an answer or an error),
    /// every undecodable one a MALFORMED error, and nothing panics.
    #[test]
    fn random_frames_get_typed_errors(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
    ) {
        let mut input = frame(&hello_request(1, CONTRACT_VERSION));
        let mut malformed = 0;
        for p in &payloads {
            if decode_request(p).is_err() {
                malformed += 1;
            }
            input.extend_from_slice(&(p.len() as u32).to_be_bytes());
            input.extend_from_slice(p);
        }
        let out = responses(&serve_bytes(input));
        prop_assert!(matches!(out[0].kind, Some(response::Kind::Hello(_))));
        let malformed_errors = out
            .iter()
            .filter(|r| matches!(&r.kind, Some(response::Kind::Error(e)) if e.code() == ErrorCode::Malformed))
            .count();
        prop_assert_eq!(malformed_errors, malformed);
    }

    /// The server's decoder on its own: any bytes give a request or an error.
    #[test]
    fn the_request_decoder_never_panics(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(&input);
    }
}

#[tokio::test]
async fn an_unread_stream_ends_lagged_without_stalling_the_connection() {
    let daemon = start();
    let config = ClientConfig {
        stream_buffer: 4,
        ..ClientConfig::default()
    };
    let client = ApiClient::connect_with(&daemon.path, config).await.unwrap();
    let mut events = client
        .events(EventsRequest {
            from_seq: 50,
            follow: true,
            ..EventsRequest::default()
        })
        .await
        .unwrap();
    // Not read while more than its buffer arrives; other requests still get through.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(client.status().await.is_ok());
    let mut seqs = Vec::new();
    let end = loop {
        match events.next().await.unwrap() {
            Ok(event) => seqs.push(event.seq),
            Err(e) => break e,
        }
    };
    assert_eq!(seqs, vec![50, 51, 52, 53]);
    assert!(
        matches!(end, ClientError::Lagged { next_seq: 54 }),
        "{end:?}"
    );
    assert!(events.next().await.is_none());
    // The daemon dropped the stream's handler.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while daemon.api.dropped.load(Ordering::SeqCst) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.stop().await;
}

/// The server's pure checks sort frames as a connection answers them.
#[test]
fn screening_sorts_frames_without_a_connection() {
    use daemon::api::v1::{request, response};
    use daemon::api::{HelloAnswer, Screened, check_request, screen, screen_hello};

    let frame = |id, kind| {
        daemon::api::v1::Request {
            id,
            kind: Some(kind),
        }
        .encode_to_vec()
    };
    let hello = |version| {
        request::Kind::Hello(daemon::api::v1::Hello {
            contract_version: version,
            software_version: "t".into(),
        })
    };
    assert!(matches!(
        screen_hello(&frame(1, hello(daemon::api::CONTRACT_VERSION)), "v"),
        HelloAnswer::Serve(r) if matches!(r.kind, Some(response::Kind::Hello(_)))
    ));
    assert!(matches!(
        screen_hello(&frame(1, hello(u32::MAX)), "v"),
        HelloAnswer::Close(_)
    ));
    assert!(matches!(
        screen_hello(&[0xFF; 3], "v"),
        HelloAnswer::Close(_)
    ));

    assert!(matches!(screen(&[0xFF; 3]), Screened::Answer(_)));
    let status = request::Kind::Status(daemon::api::v1::StatusRequest {});
    assert!(matches!(screen(&frame(0, status.clone())), Screened::Answer(r) if r.id == 0));
    assert!(matches!(screen(&frame(7, hello(1))), Screened::Answer(r) if r.id == 7));
    let cancel = request::Kind::Cancel(daemon::api::v1::CancelRequest { target: 3 });
    assert!(matches!(
        screen(&frame(8, cancel)),
        Screened::Cancel { target: 3 }
    ));
    let Screened::Run { id: 9, kind } = screen(&frame(9, status)) else {
        panic!("a status request runs");
    };
    assert!(check_request(&kind).is_ok());
    let show = request::Kind::ShowNode(daemon::api::v1::ShowNodeRequest {
        id: "bad id!".into(),
    });
    let e = check_request(&show).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
}
