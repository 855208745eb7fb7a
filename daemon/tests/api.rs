//! The operator API's transport, over real sockets: a test handler stands in for the
//! daemon, and the real client (or hand-written HTTP/1.1, for what the client never
//! sends and to see statuses and headers) talks to the real server, on the Unix socket
//! and on the TLS listener with operator certificates and the console's login.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use daemon::api::client::ClientConfig;
use daemon::api::identity::{IdentityFile, render};
use daemon::api::v1::{
    self, AddOperatorRequest, CallList, CallRequest, CallResult, CallState, ErrorCode, Event,
    EventsRequest, ListCallsRequest, ListNodesRequest, Node, NodeList, NodeState, OperatorIdentity,
    OperatorList, OperatorRecord, PairApproveRequest, PairCode, PairCodeRequest, PairList,
    PairRecord, PairRejectRequest, PairState, RevokeOperatorRequest, RevokeRequest, Revoked, Role,
    ShowCallRequest, ShowNodeRequest, Status,
};
use daemon::api::{
    ApiClient, ApiError, ApiServer, BindError, CONTRACT_VERSION, Caller, ClientError, Endpoint,
    EventSink, MAX_BODY, MAX_CALL_TIMEOUT_MS, Method, OperatorApi, OperatorListener, Request,
    ServerConfig, Via,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest any single exchange in these tests may take.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The stand-in daemon

/// Counts a handler future's drops, to see that cancelling reaches the daemon's code.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A daemon stand-in: it records every request it is handed and answers with fixtures
/// that set every field (or echo the request), so a round trip shows every field made it
/// both ways.
#[derive(Default)]
struct TestApi {
    handled: AtomicUsize,
    dropped: Arc<AtomicUsize>,
    seen: Mutex<Vec<Request>>,
    /// Operator names (certificate common names) revoked with `RevokeOperator`.
    revoked: Mutex<HashSet<String>>,
}

impl TestApi {
    fn enter(&self, req: Request) {
        self.handled.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(req);
    }

    fn handled(&self) -> usize {
        self.handled.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    fn last(&self) -> Request {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

const UNICODE: &str = "ünïcødé 漢字 🦀 \u{202e}rtl";

fn all_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

fn status_fixture() -> Status {
    Status {
        listen_addresses: vec!["tcp://0.0.0.0:7443".into(), "quic://[::]:7443".into()],
        mtls_enforced: true,
        ca: Some(v1::CertificateAuthority {
            fingerprint_sha256: "cd".repeat(32),
            not_after_ms: u64::MAX,
        }),
        pairing: Some(v1::PairingPolicy {
            default_ttl_seconds: 600,
            approval_required: true,
        }),
        nodes: Some(v1::NodeCounts {
            paired: 5,
            online: 3,
            revoked: u32::MAX,
        }),
        started_at_ms: 1_700_000_000_123,
        operator_addresses: vec!["https://127.0.0.1:7444".into()],
        software_version: "9.8.7-test".into(),
        store: "postgres://tern@db/tern".into(),
        daemon_id: UNICODE.into(),
    }
}

fn node(id: &str) -> Node {
    Node {
        id: id.to_owned(),
        state: NodeState::Online as i32,
        last_seen_ms: 1_700_000_000_123,
        capabilities: vec![
            v1::Capability {
                name: "system.health".into(),
                version: 2,
                input_content_type: "application/json".into(),
                output_content_type: "application/cbor".into(),
                needs_approval: true,
            },
            v1::Capability {
                name: "desktop.open_url".into(),
                version: u32::MAX,
                input_content_type: "text/plain; charset=utf-8".into(),
                output_content_type: String::new(),
                needs_approval: false,
            },
        ],
        address: "quic://10.0.0.7:51000".into(),
        certificate_fingerprint: "ab".repeat(32),
        certificate_not_after_ms: u64::MAX,
        transport: "quic".into(),
        platform: "linux-x86_64".into(),
    }
}

const NODES: [&str; 3] = ["sensor-1", "sensor-2", "sensor-3"];

fn record(code_id: u32, state: PairState) -> PairRecord {
    PairRecord {
        code_id,
        state: state as i32,
        created_at_ms: 1_000,
        expires_at_ms: u64::MAX,
        device_id: "sensor-1".into(),
        approval_required: true,
        awaiting_decision: state == PairState::Pending,
        used: true,
    }
}

fn call_fixture(id: u64) -> CallResult {
    CallResult {
        call_id: id,
        state: CallState::Failed as i32,
        output: all_bytes(),
        content_type: "application/octet-stream".into(),
        message: UNICODE.into(),
        node: "sensor-1".into(),
        capability: "system.health".into(),
        created_at_ms: 1,
        updated_at_ms: 2,
        deadline_ms: u64::MAX - 1,
        timed_out_at_ms: u64::MAX,
    }
}

fn operator_record(name: &str, role: i32) -> OperatorRecord {
    OperatorRecord {
        name: name.to_owned(),
        role,
        certificate_fingerprint: "ef".repeat(32),
        created_at_ms: 1_700_000_000_000,
        not_after_ms: u64::MAX,
        revoked_at_ms: 0,
    }
}

/// The error `ShowCall` answers for call ids `1000 + code`.
const ERROR_CALL_IDS: u64 = 1000;

fn common_name(cert_der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

impl OperatorApi for TestApi {
    async fn status(&self) -> Result<Status, ApiError> {
        self.enter(Request::Status(v1::StatusRequest {}));
        Ok(status_fixture())
    }

    async fn pair_code(&self, req: PairCodeRequest) -> Result<PairCode, ApiError> {
        self.enter(Request::CreatePairCode(req.clone()));
        Ok(PairCode {
            code: "0042-1234-5678".into(),
            uri: "tern://pair?v=1&c=0042-1234-5678".into(),
            code_id: 42,
            expires_at_ms: u64::MAX - u64::from(req.ttl_seconds),
            device_id: req.device_id,
            approval_required: req.require_approval.unwrap_or(false),
        })
    }

    async fn pair_list(&self) -> Result<PairList, ApiError> {
        self.enter(Request::ListPairings(v1::PairListRequest {}));
        Ok(PairList {
            records: vec![
                record(42, PairState::Pending),
                record(9999, PairState::Completed),
            ],
        })
    }

    async fn pair_approve(&self, req: PairApproveRequest) -> Result<PairRecord, ApiError> {
        self.enter(Request::ApprovePairing(req));
        if req.code_id == 7 {
            return Err(ApiError::failed_precondition(
                "a pairing cannot go from Completed to Approved",
            ));
        }
        Ok(record(req.code_id, PairState::Approved))
    }

    async fn pair_reject(&self, req: PairRejectRequest) -> Result<PairRecord, ApiError> {
        self.enter(Request::RejectPairing(req));
        Ok(record(req.code_id, PairState::Rejected))
    }

    /// Pages of `limit` nodes (two for 0, all of them when unset).
    async fn list_nodes(&self, req: ListNodesRequest) -> Result<NodeList, ApiError> {
        self.enter(Request::ListNodes(req.clone()));
        let after: Vec<&str> = NODES
            .into_iter()
            .filter(|id| *id > req.after.as_str())
            .collect();
        let limit = match req.limit {
            None => usize::MAX,
            Some(0) => 2,
            Some(n) => n as usize,
        };
        let nodes: Vec<Node> = after.iter().take(limit).map(|id| node(id)).collect();
        let next_after = if after.len() > nodes.len() {
            nodes.last().map(|n| n.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(NodeList { nodes, next_after })
    }

    async fn show_node(&self, req: ShowNodeRequest) -> Result<Node, ApiError> {
        self.enter(Request::ShowNode(req.clone()));
        if req.id == "ghost" {
            return Err(ApiError::not_found("no node ghost"));
        }
        Ok(node(&req.id))
    }

    /// Call ids `1000 + code` answer with that error code.
    async fn show_call(&self, req: ShowCallRequest) -> Result<CallResult, ApiError> {
        self.enter(Request::ShowCall(req));
        if let Some(code) = req
            .id
            .checked_sub(ERROR_CALL_IDS)
            .and_then(|c| i32::try_from(c).ok())
            .and_then(|c| ErrorCode::try_from(c).ok())
        {
            return Err(ApiError::new(code, format!("error {} ({UNICODE})", req.id)));
        }
        Ok(call_fixture(req.id))
    }

    /// Two records: pending, then the final one.
    async fn watch_call(
        &self,
        req: ShowCallRequest,
        mut sink: daemon::api::Sink<CallResult>,
    ) -> Result<(), ApiError> {
        self.enter(Request::WatchCall(req));
        let mut pending = call_fixture(req.id);
        pending.state = CallState::Pending as i32;
        let _ = sink.send(pending).await;
        let _ = sink.send(call_fixture(req.id)).await;
        Ok(())
    }

    async fn list_calls(&self, req: ListCallsRequest) -> Result<CallList, ApiError> {
        self.enter(Request::ListCalls(req.clone()));
        Ok(CallList {
            calls: vec![call_fixture(u64::MAX), call_fixture(3)],
            next_before_id: 3,
        })
    }

    async fn call(&self, req: CallRequest) -> Result<CallResult, ApiError> {
        self.enter(Request::Call(req.clone()));
        let _guard = DropCount(self.dropped.clone());
        match req.capability.as_str() {
            "test.hang" => std::future::pending().await,
            "test.slow" => tokio::time::sleep(Duration::from_millis(150)).await,
            _ => {}
        }
        Ok(CallResult {
            call_id: 9,
            state: CallState::Succeeded as i32,
            output: req.input,
            content_type: req.content_type,
            message: format!("{} on {}", req.capability, req.node),
            node: req.node,
            capability: req.capability,
            created_at_ms: 10,
            updated_at_ms: 11,
            deadline_ms: u64::from(req.timeout_ms),
            timed_out_at_ms: 0,
        })
    }

    /// Three events from `from_seq` (or a follow stream); node `ghost` is unknown, and
    /// node `broken`'s stream breaks after one event.
    async fn events(&self, req: EventsRequest, mut sink: EventSink) -> Result<(), ApiError> {
        self.enter(Request::Events(req.clone()));
        let _guard = DropCount(self.dropped.clone());
        let node = req.node.clone().unwrap_or_else(|| "sensor-1".into());
        if node == "ghost" {
            return Err(ApiError::not_found("no node ghost"));
        }
        let event = |seq: u64| Event {
            seq,
            node: node.clone(),
            name: "temperature".into(),
            body: if seq.is_multiple_of(2) {
                format!("{{\"c\":{seq}}}").into_bytes()
            } else {
                all_bytes()
            },
            content_type: "application/json".into(),
            at_ms: u64::MAX - seq,
        };
        let closed = |e: daemon::api::SinkError| ApiError::unavailable(e.to_string());
        if node == "broken" {
            sink.send(event(req.from_seq)).await.map_err(closed)?;
            return Err(ApiError::internal("the store went away"));
        }
        if !req.follow {
            for i in 0..3 {
                sink.send(event(req.from_seq.saturating_add(i)))
                    .await
                    .map_err(closed)?;
            }
            return Ok(());
        }
        let mut seq = req.from_seq;
        loop {
            sink.send(event(seq)).await.map_err(closed)?;
            seq += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn revoke(&self, req: RevokeRequest) -> Result<Revoked, ApiError> {
        self.enter(Request::Revoke(req.clone()));
        Ok(Revoked {
            node: req.node,
            revoked_at_ms: req.reason.len() as u64,
            connections_closed: u32::MAX,
        })
    }

    async fn add_operator(&self, req: AddOperatorRequest) -> Result<OperatorIdentity, ApiError> {
        self.enter(Request::AddOperator(req.clone()));
        Ok(OperatorIdentity {
            operator: Some(OperatorRecord {
                certificate_fingerprint: format!("{:02x}", req.csr_der.len()),
                ..operator_record(&req.name, req.role)
            }),
            certificate_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
                .into(),
            server_ca_pem: "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n".into(),
        })
    }

    async fn list_operators(&self) -> Result<OperatorList, ApiError> {
        self.enter(Request::ListOperators(v1::ListOperatorsRequest {}));
        Ok(OperatorList {
            operators: vec![
                operator_record("admin-ann", Role::Admin as i32),
                OperatorRecord {
                    revoked_at_ms: u64::MAX,
                    ..operator_record("viewer-bob", Role::Viewer as i32)
                },
            ],
        })
    }

    async fn revoke_operator(
        &self,
        req: RevokeOperatorRequest,
    ) -> Result<OperatorRecord, ApiError> {
        self.enter(Request::RevokeOperator(req.clone()));
        match req.name.as_str() {
            "root" => Err(ApiError::permission_denied("root is not to be revoked")),
            "nobody" => Err(ApiError::not_found("no operator nobody")),
            name => {
                self.revoked.lock().unwrap().insert(name.to_owned());
                Ok(OperatorRecord {
                    revoked_at_ms: 77,
                    ..operator_record(name, Role::Viewer as i32)
                })
            }
        }
    }

    /// The certificate's common name says the role: `viewer-*`, `admin-*`; anything
    /// else (or a revoked name) is no operator.
    fn authenticate(&self, cert_der: &[u8]) -> Result<Caller, ApiError> {
        let name = common_name(cert_der)
            .ok_or_else(|| ApiError::unauthenticated("no common name in the certificate"))?;
        if self.revoked.lock().unwrap().contains(&name) {
            return Err(ApiError::unauthenticated(format!("{name} is revoked")));
        }
        let role = if name.starts_with("viewer-") {
            Role::Viewer
        } else if name.starts_with("admin-") {
            Role::Admin
        } else {
            return Err(ApiError::unauthenticated(format!("{name} is no operator")));
        };
        Ok(Caller {
            name,
            role,
            via: Via::Certificate,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Serving it

/// The server on a Unix socket in a fresh directory.
struct Daemon {
    dir: tempfile::TempDir,
    path: PathBuf,
    api: Arc<TestApi>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Daemon {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.sock");
        Self::start_at(dir, path)
    }

    fn start_at(dir: tempfile::TempDir, path: PathBuf) -> Self {
        let server = ApiServer::bind(&path).unwrap();
        assert_eq!(server.path(), path);
        let api = Arc::new(TestApi::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(api.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            dir,
            path,
            api,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> ApiClient {
        ApiClient::connect(&self.path).await.unwrap()
    }

    async fn raw(&self) -> Raw<UnixStream> {
        Raw::new(UnixStream::connect(&self.path).await.unwrap(), "localhost")
    }

    /// Stops the server; hands back its directory, still there.
    async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
        self.dir
    }
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
}

/// Waits until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    within(what, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Hand-written HTTP/1.1

/// An answer as it came on the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `Error` the body holds: its code, message and contract version.
    fn error(&self) -> (ErrorCode, String, u64) {
        let v = self.json();
        let code = v["code"].as_str().unwrap_or_else(|| panic!("no code: {v}"));
        let code = ErrorCode::from_str_name(code).unwrap_or_else(|| panic!("code {code}"));
        (
            code,
            v["message"].as_str().unwrap().to_owned(),
            v["daemonContractVersion"].as_u64().unwrap(),
        )
    }

    /// Checks an error answer: its status, its code, and its headers.
    #[track_caller]
    fn assert_error(&self, status: u16, code: ErrorCode) -> String {
        assert_eq!(
            (self.status, self.error().0),
            (status, code),
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_secure_headers(self);
        self.error().1
    }
}

/// What every answer carries, whatever it answers.
#[track_caller]
fn assert_secure_headers(a: &Answer) {
    assert_eq!(a.header("tern-contract"), Some("1"), "{:?}", a.headers);
    let csp = a.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(a.header("x-frame-options"), Some("DENY"));
}

/// One HTTP/1.1 connection, written by hand.
struct Raw<S> {
    io: BufReader<S>,
    host: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    async fn post(&mut self, path: &str, body: &[u8]) -> Answer {
        self.send("POST", path, &[], body).await
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        self.write(method, path, headers, body).await;
        within(&format!("{method} {path}"), self.read_answer()).await
    }

    async fn write(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.host,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("content-type: application/json\r\n");
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        // In one write, as clients send a small request.
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let io = self.io.get_mut();
        io.write_all(&request).await.unwrap();
        io.flush().await.unwrap();
    }
}

impl<S: AsyncRead + Unpin> Raw<S> {
    fn new(stream: S, host: &str) -> Self {
        Self {
            io: BufReader::new(stream),
            host: host.to_owned(),
        }
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        self.io.read_line(&mut line).await.unwrap();
        assert!(line.ends_with("\r\n"), "cut short: {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    /// The status and headers of the next answer.
    async fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line:?}");
        let status = parts.next().unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return (status, headers);
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }

    /// The next chunk of a chunked body; `None` at its end.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let size = self.line().await;
        let size = size.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            while !self.line().await.is_empty() {}
            return None;
        }
        let mut data = vec![0; size + 2];
        self.io.read_exact(&mut data).await.unwrap();
        assert_eq!(&data[size..], b"\r\n");
        data.truncate(size);
        Some(data)
    }

    async fn read_answer(&mut self) -> Answer {
        let (status, headers) = self.read_head().await;
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = answer.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            self.io.read_exact(&mut body).await.unwrap();
            answer.body = body;
        } else if answer.header("transfer-encoding") == Some("chunked") {
            while let Some(chunk) = self.chunk().await {
                answer.body.extend(chunk);
            }
        } else {
            self.io.read_to_end(&mut answer.body).await.unwrap();
        }
        answer
    }
}

// ---------------------------------------------------------------------------------------
// Round trips

#[tokio::test]
async fn every_method_round_trips_through_the_client() {
    let daemon = Daemon::start();
    let api = daemon.api.clone();
    let client = daemon.client().await;
    // Connecting asks who this is: the daemon's own user, an administrator.
    assert_eq!(api.handled(), 0, "WhoAmI is the server's own");
    let me = client.whoami().await.unwrap();
    assert_eq!(
        (me.name.as_str(), me.role(), me.via.as_str()),
        ("local", Role::Admin, "unix-socket")
    );

    assert_eq!(client.status().await.unwrap(), status_fixture());
    assert_eq!(api.last(), Request::Status(v1::StatusRequest {}));

    let req = PairCodeRequest {
        ttl_seconds: 86_400,
        require_approval: Some(true),
        device_id: "a".repeat(64),
    };
    let code = client.pair_code(req.clone()).await.unwrap();
    assert_eq!(api.last(), Request::CreatePairCode(req));
    assert_eq!(
        code,
        PairCode {
            code: "0042-1234-5678".into(),
            uri: "tern://pair?v=1&c=0042-1234-5678".into(),
            code_id: 42,
            expires_at_ms: u64::MAX - 86_400,
            device_id: "a".repeat(64),
            approval_required: true,
        }
    );
    // Unset and false are told apart.
    let req = PairCodeRequest {
        require_approval: Some(false),
        ..PairCodeRequest::default()
    };
    client.pair_code(req.clone()).await.unwrap();
    assert_eq!(api.last(), Request::CreatePairCode(req));
    client.pair_code(PairCodeRequest::default()).await.unwrap();
    assert_eq!(
        api.last(),
        Request::CreatePairCode(PairCodeRequest::default())
    );

    assert_eq!(
        client.pair_list().await.unwrap().records,
        vec![
            record(42, PairState::Pending),
            record(9999, PairState::Completed)
        ]
    );
    assert_eq!(
        client.pair_approve(9999).await.unwrap(),
        record(9999, PairState::Approved)
    );
    assert_eq!(
        api.last(),
        Request::ApprovePairing(PairApproveRequest { code_id: 9999 })
    );
    assert_eq!(
        client.pair_reject(0).await.unwrap(),
        record(0, PairState::Rejected)
    );
    assert_eq!(
        api.last(),
        Request::RejectPairing(PairRejectRequest { code_id: 0 })
    );

    // The whole listing is the pages one after the other, one request a page.
    let before = api.handled();
    let nodes = client.list_nodes().await.unwrap();
    assert_eq!(
        nodes,
        NodeList {
            nodes: NODES.into_iter().map(node).collect(),
            next_after: String::new(),
        }
    );
    assert_eq!(api.handled() - before, 2);
    let page = client.list_nodes_page("", 1).await.unwrap();
    assert_eq!(
        api.last(),
        Request::ListNodes(ListNodesRequest {
            after: String::new(),
            limit: Some(1),
        })
    );
    assert_eq!(
        (page.nodes, page.next_after.as_str()),
        (vec![node("sensor-1")], "sensor-1")
    );
    let page = client.list_nodes_page("sensor-1", 5).await.unwrap();
    assert_eq!(
        (page.nodes, page.next_after.as_str()),
        (vec![node("sensor-2"), node("sensor-3")], "")
    );
    assert_eq!(
        client.show_node("sensor-2").await.unwrap(),
        node("sensor-2")
    );
    assert_eq!(
        api.last(),
        Request::ShowNode(ShowNodeRequest {
            id: "sensor-2".into()
        })
    );

    let req = CallRequest {
        node: "sensor-1".into(),
        capability: "system.health".into(),
        input: all_bytes(),
        content_type: "application/octet-stream; x=\"a b\"".into(),
        timeout_ms: MAX_CALL_TIMEOUT_MS,
    };
    let result = client.call(req.clone()).await.unwrap();
    assert_eq!(api.last(), Request::Call(req.clone()));
    assert_eq!(result.state(), CallState::Succeeded);
    assert_eq!(result.output, all_bytes());
    assert_eq!(result.content_type, req.content_type);
    assert_eq!(result.deadline_ms, u64::from(MAX_CALL_TIMEOUT_MS));

    assert_eq!(
        client.show_call(u64::MAX).await.unwrap(),
        call_fixture(u64::MAX)
    );
    assert_eq!(
        api.last(),
        Request::ShowCall(ShowCallRequest { id: u64::MAX })
    );

    let req = ListCallsRequest {
        node: Some("sensor-1".into()),
        state: Some(CallState::TimedOut as i32),
        since_ms: 1,
        until_ms: u64::MAX,
        before_id: u64::MAX - 1,
        limit: u32::MAX,
    };
    let calls = client.list_calls(req.clone()).await.unwrap();
    assert_eq!(api.last(), Request::ListCalls(req));
    assert_eq!(
        calls,
        CallList {
            calls: vec![call_fixture(u64::MAX), call_fixture(3)],
            next_before_id: 3,
        }
    );
    // Unset filters stay unset.
    client
        .list_calls(ListCallsRequest::default())
        .await
        .unwrap();
    assert_eq!(api.last(), Request::ListCalls(ListCallsRequest::default()));

    let revoked = client.revoke("sensor-3", UNICODE).await.unwrap();
    assert_eq!(
        api.last(),
        Request::Revoke(RevokeRequest {
            node: "sensor-3".into(),
            reason: UNICODE.into()
        })
    );
    assert_eq!(
        revoked,
        Revoked {
            node: "sensor-3".into(),
            revoked_at_ms: UNICODE.len() as u64,
            connections_closed: u32::MAX,
        }
    );

    let req = AddOperatorRequest {
        name: "admin-ann".into(),
        role: Role::Admin as i32,
        csr_der: all_bytes(),
    };
    let identity = client.add_operator(req.clone()).await.unwrap();
    assert_eq!(api.last(), Request::AddOperator(req));
    let op = identity.operator.unwrap();
    assert_eq!(
        (
            op.name.as_str(),
            op.role(),
            op.certificate_fingerprint.as_str()
        ),
        ("admin-ann", Role::Admin, "100")
    );
    assert_eq!(op.not_after_ms, u64::MAX);
    assert!(identity.certificate_pem.contains("AAAA"));
    assert!(identity.server_ca_pem.contains("BBBB"));
    let req = AddOperatorRequest {
        name: "viewer-bob".into(),
        role: Role::Viewer as i32,
        csr_der: vec![0x30],
    };
    client.add_operator(req.clone()).await.unwrap();
    assert_eq!(api.last(), Request::AddOperator(req));

    let ops = client.list_operators().await.unwrap().operators;
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[1].revoked_at_ms, u64::MAX);
    assert_eq!(ops[1].role(), Role::Viewer);
    let op = client.revoke_operator("viewer-bob").await.unwrap();
    assert_eq!(
        api.last(),
        Request::RevokeOperator(RevokeOperatorRequest {
            name: "viewer-bob".into()
        })
    );
    assert_eq!((op.name.as_str(), op.revoked_at_ms), ("viewer-bob", 77));

    // An event stream without follow ends cleanly after its events.
    let req = EventsRequest {
        node: Some("sensor-2".into()),
        from_seq: u64::MAX - 2,
        follow: false,
    };
    let mut stream = client.events(req.clone()).await.unwrap();
    let mut got = Vec::new();
    while let Some(event) = within("an event", stream.next()).await {
        got.push(event.unwrap());
    }
    assert_eq!(api.last(), Request::Events(req));
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [u64::MAX - 2, u64::MAX - 1, u64::MAX]);
    assert_eq!(got[0].node, "sensor-2");
    assert_eq!(got[0].body, all_bytes());
    assert_eq!(
        got[1].body,
        format!("{{\"c\":{}}}", u64::MAX - 1).into_bytes()
    );
    assert_eq!(got[0].at_ms, 2);
    assert_eq!(stream.next_seq(), u64::MAX);
    assert!(stream.next().await.is_none(), "an ended stream stays ended");
    // From the oldest, every node.
    let mut stream = client.events(EventsRequest::default()).await.unwrap();
    let mut n = 0;
    while let Some(event) = within("an event", stream.next()).await {
        assert_eq!(event.unwrap().seq, n);
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(api.last(), Request::Events(EventsRequest::default()));

    // A call's progress: pending, then final, then the stream ends.
    let mut watch = client.watch_call(7).await.unwrap();
    let first = within("a record", watch.next()).await.unwrap().unwrap();
    assert_eq!(first.state, CallState::Pending as i32);
    let last = within("a record", watch.next()).await.unwrap().unwrap();
    assert_eq!(last, call_fixture(7));
    assert!(within("the end", watch.next()).await.is_none());

    // Every method of the contract was asked once at least (WhoAmI is the server's).
    let asked: HashSet<Method> = api
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(Request::method)
        .collect();
    for m in Method::ALL {
        assert!(
            m == Method::WhoAmI || asked.contains(&m),
            "{m:?} not tested"
        );
    }
    daemon.stop().await;
}

/// The JSON on the wire is the proto3 mapping: camelCase names, 64-bit integers as
/// strings, enums by name, bytes in base64, every field present.
#[tokio::test]
async fn the_wire_is_the_proto3_json_mapping() {
    let daemon = Daemon::start();
    let mut raw = daemon.raw().await;
    let a = raw
        .post("/api/v1/ShowCall", br#"{"id":"18446744073709551615"}"#)
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_secure_headers(&a);
    let v = a.json();
    assert_eq!(v["callId"], "18446744073709551615");
    assert_eq!(v["state"], "CALL_STATE_FAILED");
    assert_eq!(
        v["output"],
        base64::engine::general_purpose::STANDARD.encode(all_bytes())
    );
    assert_eq!(v["timedOutAtMs"], "18446744073709551615");
    assert_eq!(v["message"], UNICODE);

    // A number is taken for a 64-bit field too, and the proto field name for the JSON one.
    let a = raw.post("/api/v1/ShowCall", br#"{"id":12}"#).await;
    assert_eq!((a.status, a.json()["callId"].as_str()), (200, Some("12")));
    let a = raw
        .post(
            "/api/v1/Call",
            br#"{"node":"n","capability":"c","content_type":"t","timeout_ms":5}"#,
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.json());
    assert_eq!(
        daemon.api.last(),
        Request::Call(CallRequest {
            node: "n".into(),
            capability: "c".into(),
            input: Vec::new(),
            content_type: "t".into(),
            timeout_ms: 5,
        })
    );
    // Defaults are written out.
    let v = a.json();
    assert_eq!(v["output"], "");
    assert_eq!(v["timedOutAtMs"], "0");
    // Enums by name or number; an unknown field is refused, naming it; an empty body
    // is `{}`.
    let a = raw
        .post("/api/v1/ListCalls", br#"{"limit":3,"later":{"x":[1]}}"#)
        .await;
    assert_eq!(a.status, 400, "{:?}", a.json());
    assert!(a.json()["message"].as_str().unwrap().contains("later"));
    let a = raw
        .post(
            "/api/v1/ListCalls",
            br#"{"state":"CALL_STATE_LOST","limit":3}"#,
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.json());
    assert_eq!(
        daemon.api.last(),
        Request::ListCalls(ListCallsRequest {
            state: Some(CallState::Lost as i32),
            limit: 3,
            ..ListCallsRequest::default()
        })
    );
    let a = raw.post("/api/v1/ListCalls", br#"{"state":2}"#).await;
    assert_eq!(a.status, 200, "{:?}", a.json());
    assert_eq!(
        daemon.api.last(),
        Request::ListCalls(ListCallsRequest {
            state: Some(CallState::Failed as i32),
            ..ListCallsRequest::default()
        })
    );
    let a = raw.post("/api/v1/Status", b"").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["ca"]["notAfterMs"], "18446744073709551615");
    assert_eq!(a.json()["daemonId"], UNICODE);
    let a = raw.post("/api/v1/WhoAmI", b" \n ").await;
    assert_eq!(
        a.json(),
        json!({"name": "local", "role": "ROLE_ADMIN", "via": "unix-socket"})
    );
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------
// Errors

fn server_error<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ApiError {
    match r {
        Err(ClientError::Server(e)) => e,
        other => panic!("expected the daemon's error, got {other:?}"),
    }
}

/// The status each code is answered with, as the `.proto` file's HTTP mapping says.
const STATUSES: [(ErrorCode, u16); 16] = [
    (ErrorCode::Unspecified, 400),
    (ErrorCode::InvalidArgument, 400),
    (ErrorCode::NotFound, 404),
    (ErrorCode::Timeout, 504),
    (ErrorCode::Rejected, 409),
    (ErrorCode::ContractMismatch, 400),
    (ErrorCode::Unavailable, 503),
    (ErrorCode::Internal, 500),
    (ErrorCode::Malformed, 400),
    (ErrorCode::Unimplemented, 404),
    (ErrorCode::FrameTooLarge, 413),
    (ErrorCode::PermissionDenied, 403),
    (ErrorCode::Cancelled, 499),
    (ErrorCode::FailedPrecondition, 409),
    (ErrorCode::ResourceExhausted, 429),
    (ErrorCode::Unauthenticated, 401),
];

#[tokio::test]
async fn handler_errors_arrive_typed_with_their_status() {
    let daemon = Daemon::start();
    let client = daemon.client().await;

    let e = server_error(client.show_node("ghost").await);
    assert_eq!(e, ApiError::not_found("no node ghost"));
    let e = server_error(client.pair_approve(7).await);
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
    assert_eq!(e.message, "a pairing cannot go from Completed to Approved");
    let e = server_error(client.revoke_operator("root").await);
    assert_eq!(e, ApiError::permission_denied("root is not to be revoked"));
    let e = server_error(client.revoke_operator("nobody").await);
    assert_eq!(e.code, ErrorCode::NotFound);
    // A stream's answer starts before its handler runs: one that fails before its first
    // event is cut short like one that fails later (its code does not reach the client).
    let mut stream = client
        .events(EventsRequest {
            node: Some("ghost".into()),
            ..EventsRequest::default()
        })
        .await
        .unwrap();
    let end = within("the failed stream", stream.next()).await;
    assert!(
        matches!(end, Some(Err(ClientError::Disconnected { .. }))),
        "{end:?}"
    );
    // One that fails later is cut short: the client sees it broke, not a clean end.
    let mut stream = client
        .events(EventsRequest {
            node: Some("broken".into()),
            from_seq: 5,
            follow: false,
        })
        .await
        .unwrap();
    // (The event sent just before the failure may be lost with it: see
    // `events_sent_before_a_stream_breaks_reach_the_client`.)
    let end = loop {
        match within("the broken stream", stream.next()).await {
            Some(Ok(event)) => assert_eq!(event.seq, 5),
            end => break end,
        }
    };
    assert!(
        matches!(end, Some(Err(ClientError::Disconnected { .. }))),
        "{end:?}"
    );

    // Every code, through the client and on the wire.
    let mut raw = daemon.raw().await;
    for (code, status) in STATUSES {
        let id = ERROR_CALL_IDS + code as u64;
        let message = format!("error {id} ({UNICODE})");
        match client.show_call(id).await {
            Err(ClientError::ContractMismatch { client, daemon }) => {
                assert_eq!(code, ErrorCode::ContractMismatch);
                assert_eq!((client, daemon), (CONTRACT_VERSION, CONTRACT_VERSION));
            }
            r => assert_eq!(server_error(r), ApiError::new(code, message.clone())),
        }
        let a = raw
            .post(
                "/api/v1/ShowCall",
                format!("{{\"id\":\"{id}\"}}").as_bytes(),
            )
            .await;
        assert_eq!(a.assert_error(status, code), message);
        let version = a.error().2;
        let expected = if code == ErrorCode::ContractMismatch {
            1
        } else {
            0
        };
        assert_eq!(version, expected, "{code:?}");
    }
    // Every code of the contract has its status here.
    for n in 0..64 {
        if let Ok(code) = ErrorCode::try_from(n) {
            assert!(STATUSES.iter().any(|(c, _)| *c == code), "{code:?}");
        }
    }
    daemon.stop().await;
}

#[tokio::test]
async fn bad_arguments_never_reach_the_handler() {
    let daemon = Daemon::start();
    let api = daemon.api.clone();
    let client = daemon.client().await;
    let call = |node: &str, capability: &str, content_type: &str, timeout_ms: u32| CallRequest {
        node: node.into(),
        capability: capability.into(),
        input: b"{}".to_vec(),
        content_type: content_type.into(),
        timeout_ms,
    };
    let add = |name: &str, role: i32, csr_der: Vec<u8>| AddOperatorRequest {
        name: name.into(),
        role,
        csr_der,
    };
    let long_id = "a".repeat(65);
    let before = api.handled();
    let refusals: Vec<(&str, Result<(), ClientError>)> = vec![
        ("empty node id", client.show_node("").await.map(drop)),
        (
            "space in a node id",
            client.show_node("bad id").await.map(drop),
        ),
        (
            "slash in a node id",
            client.show_node("../etc").await.map(drop),
        ),
        ("NUL in a node id", client.show_node("a\0b").await.map(drop)),
        ("unicode node id", client.show_node("nöde").await.map(drop)),
        (
            "65-byte node id",
            client.show_node(long_id.as_str()).await.map(drop),
        ),
        ("code id 10000", client.pair_approve(10_000).await.map(drop)),
        (
            "code id u32::MAX",
            client.pair_reject(u32::MAX).await.map(drop),
        ),
        (
            "ttl below 30 s",
            client
                .pair_code(PairCodeRequest {
                    ttl_seconds: 29,
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "ttl above a day",
            client
                .pair_code(PairCodeRequest {
                    ttl_seconds: 86_401,
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "bad device id",
            client
                .pair_code(PairCodeRequest {
                    device_id: "a b".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "65-byte after",
            client.list_nodes_page(long_id.as_str(), 0).await.map(drop),
        ),
        (
            "timeout above 24 h",
            client
                .call(call("n1", "echo", "text/plain", MAX_CALL_TIMEOUT_MS + 1))
                .await
                .map(drop),
        ),
        (
            "timeout u32::MAX",
            client
                .call(call("n1", "echo", "text/plain", u32::MAX))
                .await
                .map(drop),
        ),
        (
            "call to a bad node id",
            client
                .call(call("n 1", "echo", "text/plain", 0))
                .await
                .map(drop),
        ),
        (
            "empty capability",
            client.call(call("n1", "", "text/plain", 0)).await.map(drop),
        ),
        (
            "space in a capability",
            client
                .call(call("n1", "a b", "text/plain", 0))
                .await
                .map(drop),
        ),
        (
            "129-byte capability",
            client
                .call(call("n1", &"c".repeat(129), "text/plain", 0))
                .await
                .map(drop),
        ),
        (
            "control char in a content type",
            client
                .call(call("n1", "echo", "text/plain\n", 0))
                .await
                .map(drop),
        ),
        (
            "empty content type",
            client.call(call("n1", "echo", "", 0)).await.map(drop),
        ),
        (
            "newline in a reason",
            client.revoke("n1", "stolen\nreally").await.map(drop),
        ),
        (
            "DEL in a reason",
            client.revoke("n1", "stolen\u{7f}").await.map(drop),
        ),
        (
            "C1 control in a reason",
            client.revoke("n1", "stolen\u{85}").await.map(drop),
        ),
        (
            "513-byte reason",
            client.revoke("n1", "r".repeat(513)).await.map(drop),
        ),
        (
            "revoke a bad node id",
            client.revoke("", "why").await.map(drop),
        ),
        (
            "unspecified role",
            client.add_operator(add("ann", 0, vec![1])).await.map(drop),
        ),
        (
            "unknown role number",
            client.add_operator(add("ann", 7, vec![1])).await.map(drop),
        ),
        (
            "negative role",
            client.add_operator(add("ann", -1, vec![1])).await.map(drop),
        ),
        (
            "empty CSR",
            client
                .add_operator(add("ann", 1, Vec::new()))
                .await
                .map(drop),
        ),
        (
            "4097-byte CSR",
            client
                .add_operator(add("ann", 1, vec![0; 4097]))
                .await
                .map(drop),
        ),
        (
            "bad operator name",
            client
                .add_operator(add("ann smith", 1, vec![1]))
                .await
                .map(drop),
        ),
        (
            "revoke a bad operator name",
            client.revoke_operator("").await.map(drop),
        ),
        (
            "unknown call state",
            client
                .list_calls(ListCallsRequest {
                    state: Some(99),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "until before since",
            client
                .list_calls(ListCallsRequest {
                    since_ms: 10,
                    until_ms: 10,
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "calls of a bad node id",
            client
                .list_calls(ListCallsRequest {
                    node: Some(String::new()),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "events of a bad node id",
            client
                .events(EventsRequest {
                    node: Some("x/y".into()),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
    ];
    for (what, r) in refusals {
        let e = server_error(r);
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{what}: {e}");
    }
    assert_eq!(api.handled(), before, "a bad argument reached the handler");

    // On the wire: an unknown enum name is no role; a role by number is checked as one.
    let mut raw = daemon.raw().await;
    for body in [
        r#"{"name":"ann","role":"ROLE_ROOT","csrDer":"AQ=="}"#,
        r#"{"name":"ann","role":3,"csrDer":"AQ=="}"#,
        r#"{"name":"ann","role":"ROLE_UNSPECIFIED","csrDer":"AQ=="}"#,
        r#"{"name":"ann","role":"ROLE_ADMIN","csrDer":"not base64!"}"#,
    ] {
        let a = raw.post("/api/v1/AddOperator", body.as_bytes()).await;
        assert!(
            matches!(
                a.error().0,
                ErrorCode::InvalidArgument | ErrorCode::Malformed
            ),
            "{body}: {:?}",
            a.error()
        );
        assert_eq!(a.status, 400);
    }
    assert_eq!(api.handled(), before, "a bad argument reached the handler");

    // The limits themselves are accepted.
    let max_id = "z".repeat(64);
    client.show_node(max_id.as_str()).await.unwrap();
    client.pair_approve(9999).await.unwrap();
    client
        .call(call(
            "n1",
            &"c".repeat(128),
            "text/plain; charset=utf-8",
            MAX_CALL_TIMEOUT_MS,
        ))
        .await
        .unwrap();
    client.revoke("n1", "r".repeat(512)).await.unwrap();
    client
        .add_operator(add("a.b_c-D9", Role::Viewer as i32, vec![0; 4096]))
        .await
        .unwrap();
    client
        .pair_code(PairCodeRequest {
            ttl_seconds: 30,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(api.handled(), before + 6);
    daemon.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_typed_errors_and_the_connection_keeps_serving() {
    let daemon = Daemon::start();
    let api = daemon.api.clone();
    let mut raw = daemon.raw().await;
    let before = api.handled();
    let malformed: [(&str, &[u8]); 16] = [
        ("Status", b"{"),
        ("Status", b"[]"),
        ("Status", b"\"x\""),
        ("Status", b"{} {}"),
        ("Status", b"\xff\xfe"),
        ("Call", br#"{"timeoutMs":"x"}"#),
        ("Call", br#"{"node":5}"#),
        ("Call", br#"{"timeoutMs":-1}"#),
        ("Call", br#"{"timeoutMs":4294967296}"#),
        ("Call", br#"{"timeoutMs":1.5}"#),
        ("Call", br#"{"input":"%%%"}"#),
        ("ShowCall", br#"{"id":"18446744073709551616"}"#),
        ("ShowCall", br#"{"id":"-1"}"#),
        ("ShowCall", br#"{"id":1e20}"#),
        ("ShowCall", br#"{"id":-0.5}"#),
        ("Call", br#"{"timeoutMs":4294967296.0}"#),
    ];
    for (method, body) in malformed {
        let a = raw.post(&format!("/api/v1/{method}"), body).await;
        let message = a.assert_error(400, ErrorCode::Malformed);
        assert!(
            message.contains("JSON") || message.contains("body"),
            "{message}"
        );
        // The same connection goes on.
        assert_eq!(raw.post("/api/v1/Status", b"{}").await.status, 200);
    }
    let a = raw.post("/api/v1/Nope", b"{}").await;
    let message = a.assert_error(404, ErrorCode::Unimplemented);
    assert!(message.contains("Nope"), "{message}");
    assert_eq!(raw.post("/api/v1/Status", b"").await.status, 200);
    for method in ["GET", "PUT", "DELETE"] {
        let a = raw.send(method, "/api/v1/Status", &[], b"").await;
        let message = a.assert_error(404, ErrorCode::Unimplemented);
        assert!(message.contains("POST"), "{message}");
        assert_eq!(raw.post("/api/v1/Status", b"").await.status, 200);
    }
    // Nothing else is served on the socket (the console is the TLS listener's).
    for path in ["/", "/console/challenge", "/api/v2/Status", "/api/v1"] {
        let a = raw.post(path, b"").await;
        assert_eq!(a.status, 404, "{path}");
        assert_secure_headers(&a);
    }
    let a = raw.post("/api/v1/Status", b"{}").await;
    assert_eq!(a.status, 200);
    // Only the Status requests reached the handler.
    let statuses = malformed.len() + 1 + 3 + 1;
    assert_eq!(api.handled() - before, statuses);
    daemon.stop().await;
}

/// A body above the limit is refused without being read whole; the daemon goes on.
#[tokio::test]
async fn an_oversize_body_is_refused_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start();
    let before = daemon.api.handled();
    for declared in [MAX_BODY + 1, 4 * MAX_BODY] {
        let stream = UnixStream::connect(&daemon.path).await.unwrap();
        let (read, mut write) = stream.into_split();
        // Written while the answer is read: the daemon may answer before reading it all.
        let writer = tokio::spawn(async move {
            let head = format!(
                "POST /api/v1/Call HTTP/1.1\r\nhost: localhost\r\ncontent-length: {declared}\r\n\r\n"
            );
            let mut body = b"{\"node\":\"".to_vec();
            body.resize(declared - 2, b'a');
            body.extend_from_slice(b"\"}");
            let _ = write.write_all(head.as_bytes()).await;
            let _ = write.write_all(&body).await;
            write
        });
        let mut raw = Raw::new(read, "localhost");
        let a = within("the oversize answer", raw.read_answer()).await;
        let message = a.assert_error(413, ErrorCode::FrameTooLarge);
        assert!(message.contains(&MAX_BODY.to_string()), "{message}");
        writer.abort();
    }
    // A body of exactly the limit is read (and found to be no message).
    let mut raw = daemon.raw().await;
    let mut body = b"{\"node\":\"".to_vec();
    body.resize(MAX_BODY - 2, b'a');
    body.extend_from_slice(b"\"}");
    let a = raw.post("/api/v1/Call", &body).await;
    assert_ne!(a.status, 413, "{:?}", a.error());
    assert_eq!(daemon.api.handled(), before, "nothing reached the handler");
    let client = daemon.client().await;
    assert_eq!(client.status().await.unwrap(), status_fixture());
    daemon.stop().await;
}

#[tokio::test]
async fn another_contract_version_is_refused_and_every_answer_names_the_daemons() {
    let daemon = Daemon::start();
    let mut raw = daemon.raw().await;
    for named in ["2", "0", "x", "1.0", "18446744073709551617"] {
        let a = raw
            .send("POST", "/api/v1/Status", &[("Tern-Contract", named)], b"{}")
            .await;
        a.assert_error(400, ErrorCode::ContractMismatch);
        assert_eq!(a.error().2, 1, "daemonContractVersion");
        assert_eq!(a.json()["daemonContractVersion"], 1);
    }
    // Checked before anything else, even routing.
    let a = raw
        .send(
            "GET",
            "/api/v1/openapi.json",
            &[("Tern-Contract", "2")],
            b"",
        )
        .await;
    a.assert_error(400, ErrorCode::ContractMismatch);
    let a = raw
        .send("POST", "/api/v1/Status", &[("Tern-Contract", " 1 ")], b"{}")
        .await;
    assert_eq!(a.status, 200);
    assert_secure_headers(&a);
    // Without the header: served.
    let a = raw.post("/api/v1/Status", b"{}").await;
    assert_eq!(a.status, 200);
    assert_secure_headers(&a);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    // A stream carries them too.
    let a = raw.post("/api/v1/Events", b"{}").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/x-ndjson"));
    assert_secure_headers(&a);
    let lines: Vec<Value> = a
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["seq"], "2");
    assert_eq!(
        daemon.api.handled(),
        3,
        "the mismatched requests were not handled"
    );
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------
// Streams and cancellation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_stream_streams_beside_a_call_and_dropping_it_drops_the_handler() {
    let daemon = Daemon::start();
    let api = daemon.api.clone();
    let client = daemon.client().await;
    let mut stream = client
        .events(EventsRequest {
            node: None,
            from_seq: 100,
            follow: true,
        })
        .await
        .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().seq, 100);
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call(CallRequest {
                    node: "sensor-1".into(),
                    capability: "test.slow".into(),
                    input: b"x".to_vec(),
                    content_type: "text/plain".into(),
                    timeout_ms: 1_000,
                })
                .await
        })
    };
    // Events keep coming while the call runs on its own connection...
    let mut next = 101;
    while !call.is_finished() {
        let event = within("an event", stream.next()).await.unwrap().unwrap();
        assert_eq!(event.seq, next);
        next += 1;
    }
    assert!(
        next > 102,
        "only {} events during a 150 ms call",
        next - 101
    );
    assert_eq!(call.await.unwrap().unwrap().output, b"x");
    // ... and after it.
    for _ in 0..3 {
        let event = within("an event", stream.next()).await.unwrap().unwrap();
        assert_eq!(event.seq, next);
        next += 1;
    }
    assert_eq!(stream.next_seq(), next);
    // The call's handler is done; the stream's goes when the client drops the stream.
    assert_eq!(api.dropped(), 1);
    drop(stream);
    eventually("the stream's handler to be dropped", || api.dropped() == 2).await;
    daemon.stop().await;
}

/// A client that gives up on a request (its future dropped, the connection closed) has
/// the daemon drop the handler's future too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_has_its_request_cancelled() {
    let daemon = Daemon::start();
    let api = daemon.api.clone();
    let client = daemon.client().await;
    let hang = CallRequest {
        node: "sensor-1".into(),
        capability: "test.hang".into(),
        input: Vec::new(),
        content_type: "text/plain".into(),
        timeout_ms: 0,
    };
    let gave_up = tokio::time::timeout(Duration::from_millis(300), client.call(hang.clone())).await;
    assert!(gave_up.is_err(), "the call hangs");
    assert_eq!(api.handled(), 1);
    eventually("the call's handler to be dropped", || api.dropped() == 1).await;

    // The same by hand: the connection closes mid-request.
    let mut raw = daemon.raw().await;
    raw.write(
        "POST",
        "/api/v1/Call",
        &[],
        br#"{"node":"n1","capability":"test.hang","contentType":"text/plain"}"#,
    )
    .await;
    eventually("the call to reach the handler", || api.handled() == 2).await;
    drop(raw);
    eventually("the call's handler to be dropped", || api.dropped() == 2).await;
    // The daemon serves on.
    assert_eq!(client.status().await.unwrap(), status_fixture());
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------
// The socket

#[tokio::test]
async fn the_socket_is_private_and_removed_at_shutdown() {
    let daemon = Daemon::start();
    let path = daemon.path.clone();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // A second daemon on the same socket is refused, and the first serves on.
    match ApiServer::bind(&path) {
        Err(BindError::AlreadyRunning { path: p }) => assert_eq!(p, path),
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    daemon.client().await.status().await.unwrap();
    let dir = daemon.stop().await;
    assert!(!path.exists(), "the socket is removed at shutdown");
    assert!(dir.path().exists());
}

#[tokio::test]
async fn a_client_without_a_daemon_gets_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.sock");
    match ApiClient::connect(&path).await {
        Err(ClientError::NotRunning { endpoint, .. }) => {
            assert!(endpoint.contains("operator.sock"), "{endpoint}");
        }
        other => panic!("expected NotRunning, got {other:?}"),
    }
    // A socket nobody accepts on (a daemon that died) is no daemon either.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(path.exists());
    assert!(matches!(
        ApiClient::connect(&path).await,
        Err(ClientError::NotRunning { .. })
    ));
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_other_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.sock");
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    let daemon = Daemon::start_at(dir, path.clone());
    daemon.client().await.status().await.unwrap();
    let dir = daemon.stop().await;

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"precious").unwrap();
    match ApiServer::bind(&file) {
        Err(BindError::NotASocket { path: p }) => assert_eq!(p, file),
        other => panic!("expected NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    assert!(matches!(
        ApiServer::bind(&sub),
        Err(BindError::NotASocket { .. })
    ));
    assert!(sub.is_dir());
}

/// Stopping the daemon ends a follow stream (cut short) and removes the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let daemon = Daemon::start();
    let api = daemon.api.clone();
    let path = daemon.path.clone();
    let client = daemon.client().await;
    let mut stream = client
        .events(EventsRequest {
            follow: true,
            ..EventsRequest::default()
        })
        .await
        .unwrap();
    stream.next().await.unwrap().unwrap();
    daemon.stop().await;
    assert!(!path.exists());
    // Events still buffered, then the end.
    while let Some(Ok(_)) = within("the stream to end", stream.next()).await {}
    eventually("the stream's handler to be dropped", || api.dropped() == 1).await;
}

// ---------------------------------------------------------------------------------------
// Self-description

#[tokio::test]
async fn the_openapi_document_names_every_method() {
    let daemon = Daemon::start();
    let mut raw = daemon.raw().await;
    let a = raw.send("GET", "/api/v1/openapi.json", &[], b"").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_secure_headers(&a);
    let doc = a.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["info"]["version"], CONTRACT_VERSION.to_string());
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), Method::ALL.len());
    for m in Method::ALL {
        let op = &doc["paths"][format!("/api/v1/{}", m.name())]["post"];
        assert_eq!(op["operationId"], m.name(), "{m:?}");
        let role = match m.required_role() {
            Role::Viewer => "viewer",
            _ => "admin",
        };
        assert_eq!(op["x-tern-role"], role, "{m:?}");
    }
    assert!(doc["components"]["schemas"]["Error"].is_object());
    let a = raw.send("GET", "/api/v1/operator.proto", &[], b"").await;
    assert_eq!(a.status, 200);
    let text = String::from_utf8(a.body).unwrap();
    assert!(text.contains("service Operator"), "{text}");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------
// TLS: operator certificates, roles, the console

/// A CA of the test's own, the listener's certificate and operators' certificates.
struct Pki {
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
}

/// An operator's certificate and key.
struct Operator {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_der: cert.der().clone(),
            ca_pem: cert.pem(),
            ca: Issuer::new(params, key),
        }
    }

    fn leaf(&self, cn: &str, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Operator {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Operator {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key,
        }
    }

    fn operator(&self, cn: &str) -> Operator {
        self.leaf(cn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// The listener's TLS: its certificate from this CA, client certificates from this
    /// CA taken but not required.
    fn server_config(&self) -> rustls::ServerConfig {
        let server = self.leaf(
            "tern test daemon",
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server.cert_der, self.ca_der.clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }

    /// A client of the listener with `op`'s identity, written to a file and read back.
    async fn client(
        &self,
        dir: &Path,
        addr: SocketAddr,
        op: &Operator,
    ) -> Result<ApiClient, ClientError> {
        let file = dir.join(format!("{}.pem", common_name(&op.cert_der).unwrap()));
        let text = render(
            "test",
            "admin",
            &op.cert_pem,
            &op.key.serialize_pem(),
            &self.ca_pem,
        );
        std::fs::write(&file, text).unwrap();
        let identity = IdentityFile::read(&file).unwrap();
        assert_eq!(identity.certificate, op.cert_der);
        assert_eq!(identity.server_ca, self.ca_der);
        ApiClient::open(
            Endpoint::Remote {
                addr: addr.to_string(),
                identity,
            },
            ClientConfig::default(),
        )
        .await
    }

    /// A hand-written HTTP/1.1 connection over TLS, with `op`'s certificate or none.
    async fn raw(
        &self,
        addr: SocketAddr,
        op: Option<&Operator>,
    ) -> Raw<tokio_rustls::client::TlsStream<TcpStream>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match op {
            Some(op) => builder
                .with_client_auth_cert(
                    vec![op.cert_der.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(op.key.serialize_der())),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Raw::new(tls, &addr.to_string())
    }
}

struct TlsDaemon {
    addr: SocketAddr,
    api: Arc<TestApi>,
    pki: Pki,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TlsDaemon {
    async fn start() -> Self {
        let pki = Pki::new("tern test operator CA");
        let listener = OperatorListener::bind(
            "127.0.0.1:0".parse().unwrap(),
            pki.server_config(),
            ServerConfig::default(),
        )
        .await
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let api = Arc::new(TestApi::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(listener.serve(api.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            api,
            pki,
            dir: tempfile::tempdir().unwrap(),
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self, op: &Operator) -> Result<ApiClient, ClientError> {
        self.pki.client(self.dir.path(), self.addr, op).await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("the listener to stop", &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn slow_call(node: &str) -> CallRequest {
    CallRequest {
        node: node.into(),
        capability: "echo".into(),
        input: b"{\"by\":\"test\"}".to_vec(),
        content_type: "application/json".into(),
        timeout_ms: 1_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_over_tls_come_from_the_contract() {
    let d = TlsDaemon::start().await;
    let api = d.api.clone();

    // A viewer reads...
    let viewer_op = d.pki.operator("viewer-ann");
    let viewer = d.client(&viewer_op).await.unwrap();
    let me = viewer.whoami().await.unwrap();
    assert_eq!(
        (me.name.as_str(), me.role(), me.via.as_str()),
        ("viewer-ann", Role::Viewer, "certificate")
    );
    assert_eq!(viewer.list_nodes().await.unwrap().nodes.len(), NODES.len());
    viewer.status().await.unwrap();
    let mut events = viewer.events(EventsRequest::default()).await.unwrap();
    while let Some(e) = events.next().await {
        e.unwrap();
    }
    // ... and is refused what needs an administrator, before the handler.
    let before = api.handled();
    let e = server_error(viewer.call(slow_call("sensor-1")).await);
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    assert!(e.message.contains("needs admin"), "{e}");
    for m in Method::ALL {
        if m.required_role() != Role::Admin {
            continue;
        }
        let mut raw = d.pki.raw(d.addr, Some(&viewer_op)).await;
        let a = raw.post(&m.path(), b"{}").await;
        a.assert_error(403, ErrorCode::PermissionDenied);
    }
    assert_eq!(
        api.handled(),
        before,
        "a viewer's admin request reached the handler"
    );

    // An administrator's call reaches it.
    let admin = d.client(&d.pki.operator("admin-bob")).await.unwrap();
    let me = admin.whoami().await.unwrap();
    assert_eq!((me.name.as_str(), me.role()), ("admin-bob", Role::Admin));
    let result = admin.call(slow_call("sensor-1")).await.unwrap();
    assert_eq!(result.output, b"{\"by\":\"test\"}");
    assert_eq!(api.handled(), before + 1);
    assert!(matches!(api.last(), Request::Call(_)));

    // A certificate of the CA that names no operator is unauthenticated.
    let stranger = d.pki.operator("stranger-eve");
    let e = server_error(d.client(&stranger).await);
    assert_eq!(e.code, ErrorCode::Unauthenticated);
    let mut raw = d.pki.raw(d.addr, Some(&stranger)).await;
    raw.post("/api/v1/Status", b"{}")
        .await
        .assert_error(401, ErrorCode::Unauthenticated);
    // A revoked operator is refused from its next request.
    admin.revoke_operator("viewer-ann").await.unwrap();
    let e = server_error(viewer.status().await);
    assert_eq!(e.code, ErrorCode::Unauthenticated);
    assert_eq!(api.handled(), before + 2, "only the revocation was handled");

    // Without a certificate: no API, but the console's page.
    let mut raw = d.pki.raw(d.addr, None).await;
    for m in Method::ALL {
        raw.post(&m.path(), b"{}")
            .await
            .assert_error(401, ErrorCode::Unauthenticated);
    }
    let a = raw.send("GET", "/", &[], b"").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
    assert_secure_headers(&a);
    assert!(
        a.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(String::from_utf8_lossy(&a.body).contains("<html"));
    for path in ["/assets/app.js", "/assets/style.css", "/index.html"] {
        let a = raw.send("GET", path, &[], b"").await;
        assert_eq!(a.status, 200, "{path}");
        assert_secure_headers(&a);
    }
    raw.send("GET", "/nothing-here", &[], b"")
        .await
        .assert_error(404, ErrorCode::NotFound);
    // The description is served to anyone.
    let a = raw.send("GET", "/api/v1/openapi.json", &[], b"").await;
    assert_eq!(a.status, 200);
    assert_eq!(api.handled(), before + 2);
    d.stop().await;
}

/// What the console's page does to log in: sign the challenge with the identity's key.
fn sign_login(key: &KeyPair, challenge: &str) -> String {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
            .unwrap();
    let message = format!("tern-console-login\n{challenge}");
    let signature = pair.sign(&rng, message.as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(signature.as_ref())
}

async fn challenge<S: AsyncRead + AsyncWrite + Unpin>(raw: &mut Raw<S>) -> String {
    let a = raw.post("/console/challenge", b"").await;
    assert_eq!(a.status, 200, "{:?}", a.json());
    assert_secure_headers(&a);
    a.json()["challenge"].as_str().unwrap().to_owned()
}

fn login_body(op: &Operator, challenge: &str, signature: &str) -> Vec<u8> {
    json!({
        "certificatePem": op.cert_pem,
        "challenge": challenge,
        "signature": signature,
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_logs_in_with_a_signed_challenge() {
    let d = TlsDaemon::start().await;
    let api = d.api.clone();
    let admin = d.pki.operator("admin-carol");
    let other = d.pki.operator("admin-dave");
    let mut raw = d.pki.raw(d.addr, None).await;
    let origin = format!("https://{}", d.addr);

    // Log in.
    let c = challenge(&mut raw).await;
    let a = raw
        .send(
            "POST",
            "/console/login",
            &[("origin", origin.as_str())],
            &login_body(&admin, &c, &sign_login(&admin.key, &c)),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
    assert_secure_headers(&a);
    let cookie = a.header("set-cookie").unwrap().to_owned();
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(&attribute), "{cookie}");
    }
    let session = attributes[0].to_owned();
    assert!(
        session.starts_with("tern_session=") && session.len() > 40,
        "{session}"
    );
    let v = a.json();
    assert_eq!(v["operator"], "admin-carol");
    assert_eq!(v["role"], "ROLE_ADMIN");
    let csrf = v["csrfToken"].as_str().unwrap().to_owned();
    assert!(csrf.len() >= 32, "{csrf}");

    // An API call with the cookie needs the CSRF token too.
    let before = api.handled();
    let a = raw
        .send(
            "POST",
            "/api/v1/Status",
            &[("cookie", session.as_str())],
            b"{}",
        )
        .await;
    a.assert_error(403, ErrorCode::PermissionDenied);
    let a = raw
        .send(
            "POST",
            "/api/v1/Status",
            &[("cookie", &session), ("x-tern-csrf", "wrong")],
            b"{}",
        )
        .await;
    a.assert_error(403, ErrorCode::PermissionDenied);
    assert_eq!(api.handled(), before);
    let with_session = [("cookie", session.as_str()), ("x-tern-csrf", csrf.as_str())];
    let a = raw
        .send("POST", "/api/v1/Status", &with_session, b"{}")
        .await;
    assert_eq!(a.status, 200);
    assert_secure_headers(&a);
    assert_eq!(api.handled(), before + 1);
    let a = raw.send("POST", "/api/v1/WhoAmI", &with_session, b"").await;
    assert_eq!(
        a.json(),
        json!({"name": "admin-carol", "role": "ROLE_ADMIN", "via": "console-session"})
    );
    // Its own origin is fine; another is refused, cookie or not.
    let mut same_origin = with_session.to_vec();
    same_origin.push(("origin", origin.as_str()));
    let a = raw
        .send("POST", "/api/v1/Status", &same_origin, b"{}")
        .await;
    assert_eq!(a.status, 200);
    let mut cross = with_session.to_vec();
    cross.push(("origin", "https://evil.example"));
    raw.send(
        "POST",
        "/api/v1/Call",
        &cross,
        &serde_json::to_vec(&json!({
            "node": "n1", "capability": "echo", "contentType": "text/plain"
        }))
        .unwrap(),
    )
    .await
    .assert_error(403, ErrorCode::PermissionDenied);
    raw.send(
        "POST",
        "/console/challenge",
        &[("origin", "https://evil.example")],
        b"",
    )
    .await
    .assert_error(403, ErrorCode::PermissionDenied);
    raw.send(
        "POST",
        "/console/login",
        &[("origin", format!("http://{}", d.addr).as_str())],
        &login_body(&admin, "x", "y"),
    )
    .await
    .assert_error(403, ErrorCode::PermissionDenied);
    assert_eq!(api.handled(), before + 2);
    // The page reads its session back (a read: no CSRF token needed).
    let a = raw
        .send(
            "GET",
            "/console/session",
            &[("cookie", session.as_str())],
            b"",
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["csrfToken"], csrf.as_str());
    assert_eq!(a.json()["operator"], "admin-carol");

    // A challenge is good once.
    let a = raw
        .post(
            "/console/login",
            &login_body(&admin, &c, &sign_login(&admin.key, &c)),
        )
        .await;
    a.assert_error(401, ErrorCode::Unauthenticated);
    // A made-up one is no challenge.
    raw.post(
        "/console/login",
        &login_body(&admin, "made-up", &sign_login(&admin.key, "made-up")),
    )
    .await
    .assert_error(401, ErrorCode::Unauthenticated);
    // A signature by another key proves nothing.
    let c2 = challenge(&mut raw).await;
    raw.post(
        "/console/login",
        &login_body(&admin, &c2, &sign_login(&other.key, &c2)),
    )
    .await
    .assert_error(401, ErrorCode::Unauthenticated);
    // Nor one of another text.
    let c3 = challenge(&mut raw).await;
    raw.post(
        "/console/login",
        &login_body(&admin, &c3, &sign_login(&admin.key, "something else")),
    )
    .await
    .assert_error(401, ErrorCode::Unauthenticated);
    // A certificate that names no operator does not log in.
    let stranger = d.pki.operator("stranger-eve");
    let c4 = challenge(&mut raw).await;
    raw.post(
        "/console/login",
        &login_body(&stranger, &c4, &sign_login(&stranger.key, &c4)),
    )
    .await
    .assert_error(401, ErrorCode::Unauthenticated);
    // A body that is no login.
    let a = raw.post("/console/login", b"{\"certificatePem\":1}").await;
    assert_eq!(a.status, 400);
    assert_secure_headers(&a);

    // Logging out ends the session.
    let a = raw
        .send("POST", "/console/logout", &with_session, b"")
        .await;
    assert_eq!(a.status, 200);
    let cleared = a.header("set-cookie").unwrap();
    assert!(cleared.starts_with("tern_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    raw.send("POST", "/api/v1/Status", &with_session, b"{}")
        .await
        .assert_error(401, ErrorCode::Unauthenticated);
    raw.send(
        "GET",
        "/console/session",
        &[("cookie", session.as_str())],
        b"",
    )
    .await
    .assert_error(401, ErrorCode::Unauthenticated);

    // A new session ends when its operator is revoked.
    let c5 = challenge(&mut raw).await;
    let a = raw
        .post(
            "/console/login",
            &login_body(&other, &c5, &sign_login(&other.key, &c5)),
        )
        .await;
    assert_eq!(a.status, 200);
    let session = a
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = a.json()["csrfToken"].as_str().unwrap().to_owned();
    let with_session = [("cookie", session.as_str()), ("x-tern-csrf", csrf.as_str())];
    let a = raw
        .send(
            "POST",
            "/api/v1/RevokeOperator",
            &with_session,
            br#"{"name":"admin-dave"}"#,
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.json());
    raw.send("POST", "/api/v1/Status", &with_session, b"{}")
        .await
        .assert_error(401, ErrorCode::Unauthenticated);
    d.stop().await;
}

/// A certificate of another CA does not get through the handshake, and the client says
/// the daemon refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused() {
    let d = TlsDaemon::start().await;
    let foreign = Pki::new("someone else's CA").operator("admin-mallory");
    match d.client(&foreign).await {
        Err(ClientError::PermissionDenied { .. }) => {}
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert_eq!(d.api.handled(), 0);
    d.stop().await;
}

/// An enum name the contract does not have is no filter: it is refused, not dropped
/// (which would list every call).
#[tokio::test]
async fn an_unknown_state_name_is_refused_rather_than_ignored() {
    let daemon = Daemon::start();
    let mut raw = daemon.raw().await;
    let a = raw
        .post("/api/v1/ListCalls", br#"{"state":"CALL_STATE_NOPE"}"#)
        .await;
    let seen = daemon.api.seen.lock().unwrap().last().cloned();
    assert_eq!(a.status, 400, "the handler was asked {seen:?}");
    a.assert_error(400, ErrorCode::Malformed);
    daemon.stop().await;
}

/// The events a handler sent before its stream broke reach the client before the break
/// (a client resumes from the last one it read, so a lost one is sent again, but
/// `ternd events` without `--follow` shows fewer than were sent).
#[tokio::test]
async fn events_sent_before_a_stream_breaks_reach_the_client() {
    let daemon = Daemon::start();
    let client = daemon.client().await;
    let mut stream = client
        .events(EventsRequest {
            node: Some("broken".into()),
            from_seq: 5,
            follow: false,
        })
        .await
        .unwrap();
    let first = within("the first event", stream.next()).await;
    assert!(matches!(&first, Some(Ok(e)) if e.seq == 5), "{first:?}");
    daemon.stop().await;
}

/// 2^64 and the numbers that round to it as a double are past a 64-bit field: refused,
/// not read as u64::MAX.
#[tokio::test]
async fn a_number_past_u64_is_refused() {
    let daemon = Daemon::start();
    let mut raw = daemon.raw().await;
    for body in [
        r#"{"id":18446744073709551616}"#,
        r#"{"id":18446744073709552000}"#,
    ] {
        let a = raw.post("/api/v1/ShowCall", body.as_bytes()).await;
        let seen = daemon.api.seen.lock().unwrap().last().cloned();
        assert_eq!(a.status, 400, "{body}: the handler was asked {seen:?}");
        a.assert_error(400, ErrorCode::Malformed);
    }
    daemon.stop().await;
}
