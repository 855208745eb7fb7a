//! Hostile input against the real daemon's operator API: the daemon runs in this
//! process (`serve::run` on a state directory of its own), and every method gets
//! generated bodies: well-formed messages with extreme values (64-bit limits and beyond,
//! negative and fractional numbers, huge and empty strings, ids at and past their limit,
//! unicode and control characters, invalid base64, unknown enum names and numbers,
//! unknown fields, wrong types, null, deep nesting) and random bytes; then random bytes
//! in place of a whole request.
//!
//! Properties: every answer is 200 or a typed `Error` whose status is its code's, and no
//! code is INTERNAL (no 5xx but 503 and 504); the daemon keeps serving (`Status` succeeds
//! after each case); nothing in the daemon panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use daemon::api::Method;
use daemon::api::v1::ErrorCode;
use daemon::serve::Settings;
use http_body_util::BodyExt as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Generated requests, one method each (`TERN_HOSTILE_CASES` asks for more, for a
/// longer run by hand).
const BODY_CASES: u32 = 224;
/// Random bytes in place of a whole request.
const GARBAGE_CASES: u32 = 32;
/// How long an answer may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long a (follow) event stream is read before the client hangs up.
const STREAM_READ: Duration = Duration::from_millis(200);

/// Panics anywhere in this process (the daemon's tasks included).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

// ---------------------------------------------------------------------------------------
// The daemon

struct Live {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), daemon::serve::ServeError>>>,
}

impl Live {
    /// The daemon on its own runtime and thread, its node plane on loopback ports of
    /// the system's choice; returns once it answers `Status`.
    fn start(client: &tokio::runtime::Runtime) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::defaults(dir.path().join("state"));
        settings.listen_quic = Some("127.0.0.1:0".parse().unwrap());
        settings.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
        let socket = settings.socket_path();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(daemon::serve::run(settings, async {
                let _ = stopped.await;
            }))
        });
        let live = Self {
            _dir: dir,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        };
        let start = Instant::now();
        loop {
            assert!(live.alive(), "the daemon stopped while starting");
            if live.socket.exists() && client.block_on(status_ok(&live.socket)).is_ok() {
                return live;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the daemon never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let thread = self.thread.take().unwrap();
        let start = Instant::now();
        while !thread.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the daemon does not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        thread.join().unwrap().unwrap();
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP, with hyper's client: any path, header and body

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request on a connection of its own. A stream is read for [`STREAM_READ`], then
/// the client hangs up (a follow stream never ends).
async fn exchange(
    socket: &Path,
    path: &str,
    contract: Option<&str>,
    body: &[u8],
) -> Result<Answer, String> {
    let answer = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = http::Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json");
        if let Some(v) = contract {
            req = req.header("tern-contract", v);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                body,
            )))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let streams = headers
            .get("content-type")
            .is_some_and(|v| v == "application/x-ndjson");
        let mut body = resp.into_body();
        let mut out = Vec::new();
        let until = Instant::now() + STREAM_READ;
        loop {
            let frame = if streams {
                match tokio::time::timeout(
                    until.saturating_duration_since(Instant::now()),
                    body.frame(),
                )
                .await
                {
                    Ok(frame) => frame,
                    Err(_) => break,
                }
            } else {
                body.frame().await
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        out.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(format!("the body broke: {e}")),
                None => break,
            }
        }
        Ok(Answer {
            status,
            headers,
            body: out,
        })
    };
    tokio::time::timeout(WAIT, answer)
        .await
        .map_err(|_| format!("no answer within {WAIT:?}"))?
}

async fn status_ok(socket: &Path) -> Result<(), String> {
    let a = exchange(socket, "/api/v1/Status", None, b"{}").await?;
    let v: Value = serde_json::from_slice(&a.body).map_err(|e| e.to_string())?;
    if a.status == 200 && v["ca"]["fingerprintSha256"].is_string() {
        Ok(())
    } else {
        Err(format!("Status answered {} {v}", a.status))
    }
}

/// What every answer must be: 200 with JSON, or a typed error that is no daemon fault.
fn check_answer(method: Method, a: &Answer) -> Result<(), String> {
    if a.header("tern-contract") != Some("1") {
        return Err("no tern-contract header".to_owned());
    }
    if a.status == 200 {
        if method.streams() {
            for l in a.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                serde_json::from_slice::<Value>(l).map_err(|e| format!("an event line: {e}"))?;
            }
        } else {
            let v: Value =
                serde_json::from_slice(&a.body).map_err(|e| format!("a 200 body: {e}"))?;
            if !v.is_object() {
                return Err(format!("a 200 body that is no message: {v}"));
            }
        }
        return Ok(());
    }
    let v: Value = serde_json::from_slice(&a.body).map_err(|e| {
        format!(
            "a {} without an Error: {e}: {:?}",
            a.status,
            String::from_utf8_lossy(&a.body)
        )
    })?;
    let code = v["code"]
        .as_str()
        .and_then(ErrorCode::from_str_name)
        .ok_or_else(|| format!("a {} with no error code: {v}", a.status))?;
    if !v["message"].is_string() {
        return Err(format!("an error without a message: {v}"));
    }
    if code == ErrorCode::Internal || code == ErrorCode::Unspecified {
        return Err(format!("the daemon failed: {} {v}", a.status));
    }
    if (500..600).contains(&a.status) && a.status != 503 && a.status != 504 {
        return Err(format!("the daemon failed: {} {v}", a.status));
    }
    if a.status != daemon::api::ApiError::new(code, "").http_status() {
        return Err(format!("status {} for {code:?}: {v}", a.status));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// What is sent

/// One generated request.
#[derive(Clone)]
struct Case {
    method: Method,
    contract: Option<String>,
    body: Vec<u8>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(&self.body);
        let shown: String = text.chars().take(600).collect();
        write!(
            f,
            "POST {} (tern-contract {:?}), {} bytes: {shown:?}{}",
            self.method.path(),
            self.contract,
            self.body.len(),
            if shown.len() < text.len() { "..." } else { "" }
        )
    }
}

fn nested(depth: usize, open: &str, close: &str) -> String {
    format!("{}{}", open.repeat(depth), close.repeat(depth))
}

fn nested_value(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!([inner]))
}

/// Any JSON value of the wrong kind for most fields.
fn wrong_type() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(true)),
        Just(json!([])),
        Just(json!([1, "a", null])),
        Just(json!({})),
        Just(json!({"a": {"b": []}})),
        Just(nested_value(100)),
        Just(nested_value(200)),
        any::<f64>().prop_map(|f| json!(f)),
    ]
    .boxed()
}

/// Numbers for a field of `kind`: mostly in its range (as a number or a string), often
/// at or past its limits, or no number at all.
fn numbers(kind: &Kind) -> BoxedStrategy<Value> {
    let in_range = match kind {
        Kind::Uint32 | Kind::Fixed32 => prop_oneof![
            (0u32..100_000).prop_map(|n| json!(n)),
            any::<u32>().prop_map(|n| json!(n)),
            any::<u32>().prop_map(|n| json!(n.to_string())),
        ]
        .boxed(),
        Kind::Uint64 | Kind::Fixed64 => prop_oneof![
            (0u64..100_000).prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n.to_string())),
            Just(json!(u64::MAX)),
            Just(json!(u64::MAX.to_string())),
        ]
        .boxed(),
        _ => any::<i32>().prop_map(|n| json!(n)).boxed(),
    };
    prop_oneof![3 => in_range, 2 => hostile_numbers()].boxed()
}

fn hostile_numbers() -> BoxedStrategy<Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(-1),
            json!(29),
            json!(30),
            json!(9999),
            json!(10000),
            json!(86400),
            json!(86401),
            json!(86_400_000),
            json!(86_400_001),
            json!(u32::MAX),
            json!(u64::from(u32::MAX) + 1),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(f64::MIN_POSITIVE),
            json!("0"),
            json!("42"),
            json!("18446744073709551615"),
            json!("18446744073709551616"),
            json!("340282366920938463463374607431768211456"),
            json!("-1"),
            json!("1.5"),
            json!("1e3"),
            json!(" 1"),
            json!(""),
            json!("NaN"),
            json!("Infinity"),
            json!("-Infinity"),
            json!("0x1f"),
            json!("9".repeat(400)),
        ]),
        any::<u64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n.to_string())),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u32>().prop_map(|n| json!(n)),
    ]
    .boxed()
}

fn strings() -> BoxedStrategy<Value> {
    prop_oneof![
        2 => prop::sample::select(vec![
            String::new(),
            "n".into(),
            "node-1".into(),
            "sensor.2_b-C".into(),
            "a".repeat(64),
            "a".repeat(65),
            "x".repeat(100_000),
            "ünïcødé 漢字 🦀".into(),
            "\u{0}\u{1}\n\t\u{7f}\u{85}\u{1b}[31m".into(),
            "\u{202e}evil\u{200b}".into(),
            "../../etc/passwd".into(),
            "'; DROP TABLE calls; --".into(),
            "%00%2e%2e".into(),
            "ROLE_ADMIN".into(),
            "application/json; charset=utf-8".into(),
            "text/plain\r\nx-injected: 1".into(),
        ])
        .prop_map(Value::String),
        1 => any::<String>().prop_map(Value::String),
        3 => "[A-Za-z0-9._-]{1,70}".prop_map(Value::String),
    ]
    .boxed()
}

fn bytes_values() -> BoxedStrategy<Value> {
    use base64::Engine as _;
    prop_oneof![
        2 => prop::sample::select(vec![
            String::new(),
            "aGk=".into(),
            "aGk".into(),
            "-_-_".into(),
            "!!!".into(),
            "a".into(),
            "====".into(),
            "aGk=aGk=".into(),
            "aG k=".into(),
            "A".repeat(800_000),
        ])
        .prop_map(Value::String),
        3 => prop::collection::vec(any::<u8>(), 0..5000)
            .prop_map(|b| { Value::String(base64::engine::general_purpose::STANDARD.encode(b)) }),
        1 => any::<String>().prop_map(Value::String),
    ]
    .boxed()
}

fn bools() -> BoxedStrategy<Value> {
    prop::sample::select(vec![
        json!(true),
        json!(false),
        json!("true"),
        json!(0),
        json!(1),
        Value::Null,
    ])
    .boxed()
}

fn enums(names: Vec<String>) -> BoxedStrategy<Value> {
    prop_oneof![
        4 => prop::sample::select(names.clone()).prop_map(Value::String),
        1 => prop::sample::select(names).prop_map(|n| Value::String(n.to_lowercase())),
        2 => prop::sample::select(vec![
            json!("ROLE_ROOT"),
            json!("NOPE"),
            json!(""),
            json!(0),
            json!(1),
            json!(2),
            json!(8),
            json!(99),
            json!(-1),
            json!(2_147_483_648_u64),
            json!(4_294_967_296_u64),
            json!(1.5),
            json!("1"),
        ]),
    ]
    .boxed()
}

fn field_value(field: &FieldDescriptor, depth: usize) -> BoxedStrategy<Value> {
    let one = match field.kind() {
        Kind::Double
        | Kind::Float
        | Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Fixed32
        | Kind::Fixed64
        | Kind::Sfixed32
        | Kind::Sfixed64 => numbers(&field.kind()),
        Kind::Bool => bools(),
        Kind::String => strings(),
        Kind::Bytes => bytes_values(),
        Kind::Enum(e) => enums(e.values().map(|v| v.name().to_owned()).collect()),
        Kind::Message(m) if depth < 2 => message(&m, depth + 1),
        Kind::Message(_) => Just(json!({})).boxed(),
    };
    let one = if field.cardinality() == Cardinality::Repeated {
        prop::collection::vec(one, 0..4)
            .prop_map(Value::Array)
            .boxed()
    } else {
        one
    };
    // Mostly a value of the field's kind; sometimes one of another.
    prop_oneof![12 => one, 1 => wrong_type()].boxed()
}

/// A message of `desc` in JSON: each field present or not, by its JSON name or its
/// proto name, and maybe a field the contract does not have.
fn message(desc: &MessageDescriptor, depth: usize) -> BoxedStrategy<Value> {
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = desc
        .fields()
        .map(|f| {
            let names = vec![f.json_name().to_owned(), f.name().to_owned()];
            prop::option::weighted(0.7, (prop::sample::select(names), field_value(&f, depth)))
                .boxed()
        })
        .collect();
    let unknown = prop::option::weighted(
        0.2,
        (
            prop::sample::select(vec!["later", "@type", "", "__proto__", "node\u{0}"]),
            prop_oneof![strings(), hostile_numbers(), wrong_type()],
        ),
    );
    (fields, unknown)
        .prop_map(|(fields, unknown)| {
            let mut map = Map::new();
            if let Some((name, value)) = unknown {
                map.insert(name.to_owned(), value);
            }
            for (name, value) in fields.into_iter().flatten() {
                map.insert(name, value);
            }
            Value::Object(map)
        })
        .boxed()
}

/// A value the daemon takes for a field of this kind (an id-like string, a small number,
/// a known enum name...).
fn plausible(field: &FieldDescriptor) -> BoxedStrategy<Value> {
    use base64::Engine as _;
    let one = match field.kind() {
        Kind::Uint32 | Kind::Fixed32 => (0u32..100).prop_map(|n| json!(n)).boxed(),
        Kind::Uint64 | Kind::Fixed64 => any::<u64>().prop_map(|n| json!(n.to_string())).boxed(),
        Kind::Bool => any::<bool>().prop_map(|b| json!(b)).boxed(),
        Kind::String => "[a-z0-9-]{1,20}".prop_map(Value::String).boxed(),
        Kind::Bytes => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| Value::String(base64::engine::general_purpose::STANDARD.encode(b)))
            .boxed(),
        Kind::Enum(e) => {
            let names: Vec<String> = e
                .values()
                .filter(|v| v.number() != 0)
                .map(|v| v.name().to_owned())
                .collect();
            prop::sample::select(names).prop_map(Value::String).boxed()
        }
        Kind::Message(_) => Just(json!({})).boxed(),
        _ => any::<i32>().prop_map(|n| json!(n)).boxed(),
    };
    if field.cardinality() == Cardinality::Repeated {
        prop::collection::vec(one, 0..3)
            .prop_map(Value::Array)
            .boxed()
    } else {
        one
    }
}

/// A message of `desc` the daemon would take but for one field, which gets any of the
/// values above: each field's checks are reached, past the others'.
fn one_hostile(desc: &MessageDescriptor) -> BoxedStrategy<Value> {
    let fields: Vec<FieldDescriptor> = desc.fields().collect();
    if fields.is_empty() {
        return message(desc, 0);
    }
    (0..fields.len())
        .prop_flat_map(move |hostile| {
            let values: Vec<BoxedStrategy<(String, Value)>> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let name = f.json_name().to_owned();
                    let value = if i == hostile {
                        field_value(f, 0)
                    } else {
                        plausible(f)
                    };
                    value.prop_map(move |v| (name.clone(), v)).boxed()
                })
                .collect();
            values.prop_map(|pairs| Value::Object(pairs.into_iter().collect()))
        })
        .boxed()
}

/// Number literals a `serde_json::Value` cannot hold, written into the text itself.
fn raw_literals(desc: &MessageDescriptor) -> BoxedStrategy<Vec<u8>> {
    let names: Vec<String> = desc.fields().map(|f| f.json_name().to_owned()).collect();
    if names.is_empty() {
        return Just(b"{\"x\":18446744073709551616}".to_vec()).boxed();
    }
    let literals = vec![
        "18446744073709551616",
        "36893488147419103232",
        "-18446744073709551616",
        "1e400",
        "-1e400",
        "-0",
        "1.0",
        "1E2",
        "0.0000001",
        "4294967296",
        "4294967295.0",
        "9007199254740993",
        "00012",
        "0x10",
        "NaN",
        "Infinity",
        "1_000",
        "\"\\ud800\"",
        "\"\\u0000\"",
        "\"a\" \"b\"",
        "tru",
    ];
    (prop::sample::select(names), prop::sample::select(literals))
        .prop_map(|(name, literal)| format!("{{\"{name}\":{literal}}}").into_bytes())
        .boxed()
}

/// Whole bodies that are no message, or no JSON.
fn odd_bodies(desc: &MessageDescriptor) -> BoxedStrategy<Vec<u8>> {
    let first = desc
        .fields()
        .next()
        .map_or_else(|| "x".to_owned(), |f| f.json_name().to_owned());
    let dup = format!("{{\"{first}\":1,\"{first}\":\"a\"}}");
    prop::sample::select(vec![
        "null".to_owned(),
        "[]".into(),
        "1".into(),
        "\"x\"".into(),
        "true".into(),
        "{".into(),
        "}".into(),
        "{}{}".into(),
        "{} x".into(),
        "{\"a\":".into(),
        "\u{feff}{}".into(),
        "  \n\t ".into(),
        "{\"a\":NaN}".into(),
        "{'a':1}".into(),
        "{\"a\":1,}".into(),
        nested(10_000, "[", "]"),
        nested(200, "{\"x\":", "}"),
        format!("{{\"a\":{}}}", nested(127, "[", "]")),
        dup,
    ])
    .prop_map(String::into_bytes)
    .boxed()
}

fn case() -> impl Strategy<Value = Case> {
    let contract = prop::option::weighted(
        0.05,
        prop_oneof![Just("1".to_owned()), Just("2".to_owned()), "[ -~]{0,12}"],
    );
    (prop::sample::select(Method::ALL.to_vec()), contract).prop_flat_map(|(method, contract)| {
        let input = method.descriptor().input();
        let body = prop_oneof![
            6 => message(&input, 0).prop_map(|v| serde_json::to_vec(&v).unwrap()),
            6 => one_hostile(&input).prop_map(|v| serde_json::to_vec(&v).unwrap()),
            2 => prop::collection::vec(any::<u8>(), 0..512),
            2 => raw_literals(&input),
            2 => odd_bodies(&input),
        ];
        body.prop_map(move |body| Case {
            method,
            contract: contract.clone(),
            body,
        })
    })
}

/// Bytes in place of a request: random ones, or a request line followed by them.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1024),
        (
            prop::sample::select(Method::ALL.to_vec()),
            prop::collection::vec(any::<u8>(), 0..512)
        )
            .prop_map(|(m, junk)| {
                let mut out = format!("POST {} HTTP/1.1\r\n", m.path()).into_bytes();
                out.extend(junk);
                out.extend_from_slice(b"\r\n\r\n");
                out
            }),
    ]
}

// ---------------------------------------------------------------------------------------
// The test

/// After each case: the daemon serves, and nothing panicked.
fn still_serving(rt: &tokio::runtime::Runtime, live: &Live) -> Result<(), TestCaseError> {
    prop_assert!(live.alive(), "the daemon stopped");
    prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    rt.block_on(status_ok(&live.socket))
        .map_err(|e| TestCaseError::fail(format!("Status after it failed: {e}")))
}

#[test]
fn hostile_requests_get_typed_answers_and_the_daemon_serves_on() {
    count_panics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let live = Live::start(&rt);
    let started = Instant::now();
    let config = |cases| Config {
        cases,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..Config::default()
    };

    let answered = Arc::new(AtomicUsize::new(0));
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let body_cases = std::env::var("TERN_HOSTILE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(BODY_CASES);
    let mut runner = TestRunner::new(config(body_cases));
    let result = runner.run(&case(), |case| {
        let answer = rt
            .block_on(exchange(
                &live.socket,
                &case.method.path(),
                case.contract.as_deref(),
                &case.body,
            ))
            .map_err(TestCaseError::fail)?;
        if answer.status == 200 {
            answered.fetch_add(1, Ordering::SeqCst);
        }
        let code = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
            .unwrap_or_default();
        *seen
            .lock()
            .unwrap()
            .entry(format!("{} {} {code}", case.method.name(), answer.status))
            .or_default() += 1;
        check_answer(case.method, &answer).map_err(TestCaseError::fail)?;
        still_serving(&rt, &live)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Not all refused: the generator reaches the handlers too.
    assert!(
        answered.load(Ordering::SeqCst) > 0,
        "no generated request was served"
    );

    let mut runner = TestRunner::new(config(GARBAGE_CASES));
    let result = runner.run(&garbage(), |bytes| {
        let answer = rt.block_on(async {
            let mut stream = UnixStream::connect(&live.socket).await.unwrap();
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
            out
        });
        // An answer, if any, is no daemon fault.
        if let Some(status) = answer
            .strip_prefix(b"HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
        {
            prop_assert!(
                status < 500 || status == 503 || status == 504,
                "answered {status}: {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
        still_serving(&rt, &live)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    for (what, n) in seen.lock().unwrap().iter() {
        eprintln!("{n:4} {what}");
    }
    eprintln!(
        "{} cases in {:?}",
        body_cases + GARBAGE_CASES,
        started.elapsed()
    );
    live.shutdown();
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
}
