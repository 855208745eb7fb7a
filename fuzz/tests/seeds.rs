//! The committed seed corpora in `fuzz/seeds/<target>/`: well-formed inputs for every
//! fuzz target, extreme values included (longest names, `u64::MAX` and `MAX_SEQ`
//! positions, the largest frames a limit allows), so a run starts past the decoders'
//! first checks. `cargo test -p fuzz --test seeds` checks the files are what this file
//! generates; `TERN_WRITE_SEEDS=1 cargo test -p fuzz --test seeds` rewrites them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use daemon::api::v1;
use daemon::api::{
    MAX_CALL_TIMEOUT_MS, MAX_CSR_LEN, MAX_NAME_LEN, MAX_REASON_LEN, Method, Request,
};
use daemon::ca::MAX_DEVICE_ID_LEN;
use protocol_core::frame::HEADER_LEN;
use protocol_core::pairing::{
    Abort, Challenge, Confirm, MAX_CODE_ID, PairingCode, PairingError, PairingMessage, PairingUri,
    Sealed, Start, encode_pairing,
};
use protocol_core::session::MAX_SEQ;
use protocol_core::wire::{
    Ack, Body, Data, ErrorCode, ErrorFrame, Event, Gap, Goodbye, GoodbyeReason, Hello, HelloAck,
    Message, Payload, Ping, Resume, VersionRange, encode_message,
};

type Corpus = BTreeMap<String, Vec<u8>>;

fn corpora() -> BTreeMap<&'static str, Corpus> {
    let mut all = BTreeMap::new();
    all.insert("frame_decoder", frame_decoder());
    all.insert("message_decode", message_decode());
    all.insert("pairing_decode", pairing_decode());
    all.insert("pairing", pairing());
    all.insert("session", steering());
    all.insert("session_hostile", steering());
    all.insert("node_records", node_records());
    all.insert("operator_api", operator_api());
    all.insert("node_capabilities", node_capabilities());
    all
}

/// Node-plane messages, each with values at the edges of what is valid.
fn messages() -> Vec<(&'static str, Vec<u8>)> {
    let long = "n".repeat(64);
    let big = vec![0xA5u8; 3000];
    let hello = |resume| {
        Message::Hello(Hello {
            versions: VersionRange::new(1, u16::MAX),
            max_frame: u32::MAX,
            idle_timeout_ms: u32::MAX,
            node_id: &long,
            platform: "linux-x86_64",
            resume,
        })
    };
    let data = |seq, ack, body| Message::Data(Data { seq, ack, body });
    let event = |data: &'static [u8]| {
        Body::Event(Event {
            name: "health",
            payload: Payload {
                content_type: "application/json",
                data,
            },
        })
    };
    let list: Vec<(&str, Message<'_>)> = vec![
        ("hello", hello(None)),
        (
            "hello_resume_max",
            hello(Some(Resume {
                session: [0xFF; 16],
                received: MAX_SEQ,
            })),
        ),
        (
            "hello_ack",
            Message::HelloAck(HelloAck {
                version: 1,
                max_frame: 4096,
                idle_timeout_ms: 0,
                session: [7; 16],
                resumed: true,
                received: u64::MAX,
            }),
        ),
        ("data_event", data(1, 0, event(b"{\"uptime_s\":1.5}"))),
        ("data_event_max_seq", data(MAX_SEQ, MAX_SEQ, event(b"{}"))),
        ("data_u64_max", data(u64::MAX, u64::MAX, event(b"null"))),
        ("ack_max", Message::Ack(Ack { received: u64::MAX })),
        (
            "gap",
            Message::Gap(Gap {
                from: 1,
                to: MAX_SEQ,
            }),
        ),
        (
            "gap_reversed",
            Message::Gap(Gap {
                from: u64::MAX,
                to: 0,
            }),
        ),
        ("ping", Message::Ping(Ping { nonce: u64::MAX })),
        ("pong", Message::Pong(Ping { nonce: 0 })),
        (
            "error_too_large",
            Message::Error(ErrorFrame {
                code: ErrorCode::FrameTooLarge {
                    len: u32::MAX,
                    max: 4096,
                },
                reason: "frame too large",
            }),
        ),
        (
            "error_revoked",
            Message::Error(ErrorFrame {
                code: ErrorCode::Revoked,
                reason: "",
            }),
        ),
        (
            "goodbye",
            Message::Goodbye(Goodbye {
                reason: GoodbyeReason::Replaced,
                detail: &long,
            }),
        ),
    ];
    let mut out: Vec<(&'static str, Vec<u8>)> = list
        .iter()
        .map(|(name, msg)| (*name, encode(msg)))
        .collect();
    let leaked: &'static [u8] = Box::leak(big.into_boxed_slice());
    out.push(("data_event_large", encode(&data(2, 1, event(leaked)))));
    out
}

/// One message as a frame, prefix included.
fn encode(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let n = encode_message(msg, u32::MAX, &mut buf).expect("the seed message encodes");
    buf.truncate(n);
    buf
}

fn frame_decoder() -> Corpus {
    let mut c = Corpus::new();
    let all: Vec<u8> = messages().into_iter().flat_map(|(_, f)| f).collect();
    // The first byte sets the read size: 1 byte at a time, and 64.
    c.insert("stream_chunk1".into(), [&[0u8][..], &all].concat());
    c.insert("stream_chunk64".into(), [&[63u8][..], &all].concat());
    // The largest frame the target's 4096-byte limit takes, and one byte more.
    let mut at_limit = vec![17u8];
    at_limit.extend_from_slice(&4096u32.to_be_bytes());
    at_limit.extend(std::iter::repeat_n(0u8, 4096));
    c.insert("frame_at_limit".into(), at_limit);
    let mut over = vec![5u8];
    over.extend_from_slice(&4097u32.to_be_bytes());
    c.insert("prefix_over_limit".into(), over);
    let mut max = vec![0u8];
    max.extend_from_slice(&u32::MAX.to_be_bytes());
    c.insert("prefix_u32_max".into(), max);
    c
}

fn message_decode() -> Corpus {
    messages()
        .into_iter()
        .map(|(name, frame)| (name.to_owned(), frame[HEADER_LEN..].to_vec()))
        .collect()
}

fn pairing_messages() -> Vec<(&'static str, Vec<u8>)> {
    let share = [0x04u8; 65];
    let confirm = [0xC0u8; 32];
    let sealed = vec![0x5Eu8; 1500];
    let list = [
        (
            "start",
            PairingMessage::Start(Start {
                version: 1,
                code_id: 9999,
                share_p: &share,
            }),
        ),
        (
            "start_max",
            PairingMessage::Start(Start {
                version: u16::MAX,
                code_id: u16::MAX,
                share_p: &share,
            }),
        ),
        (
            "challenge",
            PairingMessage::Challenge(Challenge {
                share_v: &share,
                confirm_v: &confirm,
            }),
        ),
        (
            "confirm",
            PairingMessage::Confirm(Confirm {
                confirm_p: &confirm,
                sealed_csr: &sealed,
            }),
        ),
        (
            "sealed_seq_max",
            PairingMessage::Sealed(Sealed {
                seq: u32::MAX,
                ciphertext: &sealed,
            }),
        ),
        (
            "abort",
            PairingMessage::Abort(Abort {
                error: PairingError::WrongCode,
            }),
        ),
    ];
    list.iter()
        .map(|(name, msg)| {
            let mut buf = vec![0u8; 4096];
            let n = encode_pairing(msg, u32::MAX, &mut buf).expect("the seed message encodes");
            buf.truncate(n);
            (*name, buf)
        })
        .collect()
}

fn pairing_decode() -> Corpus {
    let mut c: Corpus = pairing_messages()
        .into_iter()
        .map(|(name, frame)| (name.to_owned(), frame[HEADER_LEN..].to_vec()))
        .collect();
    let code = PairingCode::new(9999, 99_999_999).expect("a valid code");
    c.insert("code".into(), code.display().to_string().into_bytes());
    let low = PairingCode::new(0, 0).expect("a valid code");
    c.insert("code_zero".into(), low.display().to_string().into_bytes());
    for (name, addr) in [
        ("uri", "192.168.1.20:4433"),
        ("uri_v6", "[fe80::1]:65535"),
        ("uri_name", "tern-daemon.example.org:1"),
    ] {
        let uri = PairingUri::new(addr, code.clone(), [0xAB; 32]).expect("a valid URI");
        c.insert(name.into(), uri.to_string().into_bytes());
    }
    c
}

fn pairing() -> Corpus {
    // `[seed][mode][len/4][chunk]...`: the right code (even mode) and a wrong one, then
    // genuine-looking frames to inject at the stages the later bytes choose.
    let mut c = Corpus::new();
    for (mode, name) in [
        (0u8, "right_code"),
        (1, "wrong_code"),
        (0xFE, "right_code_late"),
    ] {
        let mut input = vec![7, mode];
        for (_, frame) in pairing_messages().into_iter().take(3) {
            let len = frame.len().div_ceil(4).min(255);
            input.push(u8::try_from(len).expect("fits"));
            input.extend_from_slice(&frame);
            input.resize(input.len() + (len * 4 - frame.len().min(len * 4)), 0);
        }
        c.insert(name.into(), input);
    }
    c
}

/// The session targets read their choices through `arbitrary`: runs of 0x00 take every
/// first choice and the smallest numbers (the proper hello exchange, then quiet), runs
/// of 0xFF the last choices and the largest numbers, and the patterns between mix them.
fn steering() -> Corpus {
    let mut c = Corpus::new();
    c.insert("zeros".into(), vec![0; 512]);
    c.insert("ones".into(), vec![0xFF; 512]);
    c.insert("counting".into(), (0..=255u8).cycle().take(1024).collect());
    c.insert("alternating".into(), [0x00, 0xFF].repeat(256));
    c.insert("sparse".into(), [1, 0, 0, 0, 2, 0, 0, 0x80].repeat(96));
    c
}

fn node_records() -> Corpus {
    let mut c = Corpus::new();
    let key = transport_embedded::NodeKey::from_bytes(&[7; 32]).expect("a valid scalar");
    let identity = transport_embedded::Identity::new(
        &"n".repeat(64),
        key,
        &[0x30, 0x03, 0x02, 0x01, 0x00],
        &[],
        transport_embedded::tls::Fingerprint([0xFF; 32]),
        "[fe80::1]:65535",
    )
    .expect("a valid identity");
    let mut record = [0u8; transport_embedded::identity::RECORD_LEN];
    identity.encode(&mut record);
    c.insert("record".into(), record.to_vec());
    c.insert(
        "renewed".into(),
        format!(r#"{{"cert":"{}"}}"#, "30".repeat(512)).into_bytes(),
    );
    c.insert("set_led".into(), br#"{"on":true}"#.to_vec());
    let code = PairingCode::new(42, 12_345_678).expect("a valid code");
    let uri = PairingUri::new("10.42.0.1:4433", code.clone(), [0x11; 32]).expect("a valid URI");
    c.insert("invitation_uri".into(), uri.to_string().into_bytes());
    c.insert(
        "invitation_code".into(),
        format!("  {}@10.42.0.1:4433\n", code.display()).into_bytes(),
    );
    c
}

/// A request as the server reads it: the method's index in `Method::ALL`, then the body.
fn operator_request(method: Method, body: &[u8]) -> Vec<u8> {
    let index = Method::ALL
        .iter()
        .position(|m| *m == method)
        .expect("every method is in ALL");
    [&[u8::try_from(index).expect("16 methods")][..], body].concat()
}

/// One request per seed: every method well-formed (as a client encodes it, at the edges
/// of valid), then one past each limit, and bodies no client of ours writes: numbers out
/// of range or of the wrong form, proto field names, unknown fields and enum values,
/// wrong types, deep nesting, an empty body, trailing data, invalid UTF-8.
fn operator_api() -> Corpus {
    use Request as R;
    let node = "n".repeat(MAX_DEVICE_ID_LEN);
    let mut c = Corpus::new();
    // Well-formed requests, as a client encodes them, with values at the edges of valid.
    let mut typed = |name: &str, request: Request| {
        c.insert(
            name.to_owned(),
            operator_request(request.method(), &request.encode()),
        );
    };
    typed("status", R::Status(v1::StatusRequest {}));
    typed("who_am_i", R::WhoAmI(v1::WhoAmIRequest {}));
    typed(
        "create_pair_code",
        R::CreatePairCode(v1::PairCodeRequest {
            ttl_seconds: 24 * 3600,
            require_approval: Some(true),
            device_id: node.clone(),
        }),
    );
    typed("list_pairings", R::ListPairings(v1::PairListRequest {}));
    typed(
        "approve_pairing",
        R::ApprovePairing(v1::PairApproveRequest {
            code_id: MAX_CODE_ID.into(),
        }),
    );
    typed(
        "reject_pairing",
        R::RejectPairing(v1::PairRejectRequest { code_id: 0 }),
    );
    typed(
        "list_nodes",
        R::ListNodes(v1::ListNodesRequest {
            after: node.clone(),
            limit: Some(u32::MAX),
        }),
    );
    typed(
        "show_node",
        R::ShowNode(v1::ShowNodeRequest { id: node.clone() }),
    );
    typed(
        "revoke",
        R::Revoke(v1::RevokeRequest {
            node: node.clone(),
            reason: "r".repeat(MAX_REASON_LEN),
        }),
    );
    typed(
        "call",
        R::Call(v1::CallRequest {
            node: node.clone(),
            capability: "c".repeat(MAX_NAME_LEN),
            input: vec![b'x'; 2048],
            content_type: "application/json; charset=utf-8".into(),
            timeout_ms: MAX_CALL_TIMEOUT_MS,
        }),
    );
    typed(
        "show_call",
        R::ShowCall(v1::ShowCallRequest { id: u64::MAX }),
    );
    typed(
        "watch_call",
        R::WatchCall(v1::ShowCallRequest { id: u64::MAX }),
    );
    typed(
        "list_calls",
        R::ListCalls(v1::ListCallsRequest {
            node: Some(node.clone()),
            state: Some(v1::CallState::Succeeded as i32),
            since_ms: u64::MAX - 1,
            until_ms: u64::MAX,
            before_id: u64::MAX,
            limit: u32::MAX,
        }),
    );
    typed(
        "events",
        R::Events(v1::EventsRequest {
            node: Some(node.clone()),
            from_seq: u64::MAX,
            follow: true,
        }),
    );
    typed(
        "add_operator",
        R::AddOperator(v1::AddOperatorRequest {
            name: node.clone(),
            role: v1::Role::Admin as i32,
            csr_der: vec![0x30; MAX_CSR_LEN],
        }),
    );
    typed(
        "list_operators",
        R::ListOperators(v1::ListOperatorsRequest {}),
    );
    typed(
        "revoke_operator",
        R::RevokeOperator(v1::RevokeOperatorRequest { name: node.clone() }),
    );
    // One past each limit.
    let long = format!("{node}n");
    typed(
        "show_node_id_over",
        R::ShowNode(v1::ShowNodeRequest { id: long }),
    );
    typed(
        "call_capability_over",
        R::Call(v1::CallRequest {
            node: "node-1".into(),
            capability: "c".repeat(MAX_NAME_LEN + 1),
            input: Vec::new(),
            content_type: "t".repeat(MAX_NAME_LEN + 1),
            timeout_ms: MAX_CALL_TIMEOUT_MS + 1,
        }),
    );
    typed(
        "call_timeout_over",
        R::Call(v1::CallRequest {
            node: "node-1".into(),
            capability: "echo".into(),
            input: b"{}".to_vec(),
            content_type: "t".repeat(MAX_NAME_LEN),
            timeout_ms: MAX_CALL_TIMEOUT_MS + 1,
        }),
    );
    typed(
        "revoke_reason_over",
        R::Revoke(v1::RevokeRequest {
            node: "node-1".into(),
            reason: "r".repeat(MAX_REASON_LEN + 1),
        }),
    );
    typed(
        "add_operator_csr_over",
        R::AddOperator(v1::AddOperatorRequest {
            name: "ops".into(),
            role: v1::Role::Viewer as i32,
            csr_der: vec![0x30; MAX_CSR_LEN + 1],
        }),
    );
    typed(
        "list_calls_empty_range",
        R::ListCalls(v1::ListCallsRequest {
            since_ms: 7,
            until_ms: 7,
            ..Default::default()
        }),
    );
    typed(
        "create_pair_code_ttl_over",
        R::CreatePairCode(v1::PairCodeRequest {
            ttl_seconds: 24 * 3600 + 1,
            require_approval: None,
            device_id: String::new(),
        }),
    );
    // Bodies no client of ours writes.
    let mut raw = |name: &str, method: Method, body: &[u8]| {
        c.insert(name.to_owned(), operator_request(method, body));
    };
    raw(
        "show_call_u64_max_number",
        Method::ShowCall,
        br#"{"id":18446744073709551615}"#,
    );
    raw(
        "show_call_u64_over",
        Method::ShowCall,
        br#"{"id":"18446744073709551616"}"#,
    );
    raw(
        "events_negative",
        Method::Events,
        br#"{"fromSeq":"-1","follow":true}"#,
    );
    raw(
        "approve_negative",
        Method::ApprovePairing,
        br#"{"codeId":-1}"#,
    );
    raw(
        "approve_code_id_over",
        Method::ApprovePairing,
        br#"{"codeId":10000}"#,
    );
    raw(
        "reject_u32_over",
        Method::RejectPairing,
        br#"{"codeId":4294967296}"#,
    );
    raw(
        "call_proto_names_unknown_fields",
        Method::Call,
        br#"{"node":"n1","later":{"a":[1,2.5e308,{"b":null}]},"capability":"echo","input":"e30=","content_type":"application/json","timeout_ms":1e3}"#,
    );
    raw(
        "call_wrong_types",
        Method::Call,
        br#"{"node":5,"capability":["x"],"input":"not base64!","timeoutMs":"x"}"#,
    );
    raw(
        "list_calls_enums",
        Method::ListCalls,
        br#"{"node":null,"state":99,"sinceMs":"0","untilMs":1}"#,
    );
    raw(
        "add_operator_role_names",
        Method::AddOperator,
        br#"{"name":"ops","role":"ROLE_ROOT","csrDer":"MA=="}"#,
    );
    raw(
        "deep_nesting",
        Method::Status,
        &[&b"{\"x\":"[..], &b"[".repeat(200), &b"]".repeat(200), b"}"].concat(),
    );
    raw("empty_body", Method::Call, b"");
    raw("trailing", Method::WhoAmI, b"{} {}");
    raw(
        "invalid_utf8",
        Method::ShowNode,
        b"{\"id\":\"n\xff\xfe\xc0\x80\"}",
    );
    raw(
        "revoke_escapes",
        Method::Revoke,
        br#"{"node":"node-1","reason":"a\u0000b\ud83d\ude00\n"}"#,
    );
    c
}

fn node_capabilities() -> Corpus {
    // `[selector][input]`: the low bits pick the capability, bit 4 the content type.
    let mut c = Corpus::new();
    let mut add = |name: &str, selector: u8, input: &[u8]| {
        c.insert(name.to_owned(), [&[selector][..], input].concat());
    };
    add("echo", 0, br#"{"a":[1,2.5e308,-0,"\u0000"],"b":null}"#);
    add(
        "echo_deep",
        0,
        &[b"[".repeat(120), b"]".repeat(120)].concat(),
    );
    add("health_default", 1, b"{}");
    add("health_null", 1, b"null");
    add("health_path", 1, br#"{"path":"/var/lib/ternd"}"#);
    add("health_relative", 1, br#"{"path":"var"}"#);
    add("open_url", 2, br#"{"url":"https://example.com/a?b=c#d"}"#);
    add(
        "open_url_idn_v6",
        2,
        br#"{"url":"http://[::ffff:127.0.0.1]:65535/\u00e9t\u00e9"}"#,
    );
    let long = format!(
        r#"{{"url":"https://example.com/{}"}}"#,
        "a".repeat(capabilities_max_url() - "https://example.com/".len())
    );
    add("open_url_max_len", 2, long.as_bytes());
    add("open_url_file", 2, br#"{"url":"file:///etc/passwd"}"#);
    add(
        "certificate",
        3,
        format!(r#"{{"cert":"{}"}}"#, "30".repeat(600)).as_bytes(),
    );
    add("wrong_content_type", 0x10, b"{}");
    add("unknown", 4, b"{}");
    add("proc_uptime", 4, b"12345.67 54321.00\n");
    add("proc_loadavg", 4, b"0.52 0.58 0.59 1/467 12345\n");
    add(
        "proc_meminfo",
        4,
        b"MemTotal:       16314660 kB\nMemFree:  1 kB\nMemAvailable:   18014398509481983 kB\n",
    );
    c
}

fn capabilities_max_url() -> usize {
    daemon::node_host::capabilities::MAX_URL_LEN
}

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds")
}

#[test]
fn committed_seeds_are_current() {
    let write = std::env::var_os("TERN_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for (target, corpus) in corpora() {
        assert!(
            (1..=40).contains(&corpus.len()),
            "{target}: a handful to a few dozen seeds"
        );
        let dir = seeds_dir().join(target);
        if write {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        on_disk.sort();
        for (name, bytes) in &corpus {
            let path = dir.join(name);
            if write {
                std::fs::write(&path, bytes).unwrap();
            } else if std::fs::read(&path).ok().as_ref() != Some(bytes) {
                stale.push(path.display().to_string());
            }
        }
        if !write {
            let names: Vec<&String> = corpus.keys().collect();
            for extra in on_disk.iter().filter(|n| !names.contains(n)) {
                stale.push(dir.join(extra).display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "seed files differ from what fuzz/tests/seeds.rs generates \
         (TERN_WRITE_SEEDS=1 cargo test -p fuzz --test seeds rewrites them): {stale:?}"
    );
}

#[test]
fn every_target_has_seeds() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let corpora = corpora();
    for line in manifest.lines() {
        if let Some(name) = line
            .strip_prefix("name = \"")
            .and_then(|l| l.strip_suffix('"'))
            && name != "fuzz"
        {
            assert!(
                corpora.contains_key(name),
                "no seeds for fuzz target {name}"
            );
        }
    }
}
