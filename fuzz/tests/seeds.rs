//! The committed seed corpora in `fuzz/seeds/<target>/`: well-formed inputs for every
//! fuzz target, extreme values included (longest names, `u64::MAX` and `MAX_SEQ`
//! positions, the largest frames a limit allows), so a run starts past the decoders'
//! first checks. `cargo test -p fuzz --test seeds` checks the files are what this file
//! generates; `TERN_WRITE_SEEDS=1 cargo test -p fuzz --test seeds` rewrites them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use daemon::api::v1::{self, request};
use daemon::api::{CONTRACT_VERSION, MAX_CALL_TIMEOUT_MS, MAX_NAME_LEN, MAX_REASON_LEN};
use prost::Message as _;
use protocol_core::frame::HEADER_LEN;
use protocol_core::pairing::{
    Abort, Challenge, Confirm, PairingCode, PairingError, PairingMessage, PairingUri, Sealed,
    Start, encode_pairing,
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

/// A client's byte stream: `Hello` first, then requests.
fn operator_stream(requests: &[request::Kind]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut frame = |req: v1::Request| {
        let body = req.encode_to_vec();
        out.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
        out.extend_from_slice(&body);
    };
    frame(v1::Request {
        id: 1,
        kind: Some(request::Kind::Hello(v1::Hello {
            contract_version: CONTRACT_VERSION,
            software_version: "0.1.0".into(),
        })),
    });
    for (i, kind) in requests.iter().enumerate() {
        let id = if i == 0 { u64::MAX } else { 2 + i as u64 };
        frame(v1::Request {
            id,
            kind: Some(kind.clone()),
        });
    }
    out
}

fn operator_api() -> Corpus {
    use request::Kind as K;
    let node = "n".repeat(daemon::ca::MAX_DEVICE_ID_LEN);
    let mut c = Corpus::new();
    let mut add = |name: &str, kinds: Vec<K>| {
        c.insert(name.to_owned(), operator_stream(&kinds));
    };
    add("hello_only", vec![]);
    add("status", vec![K::Status(v1::StatusRequest {})]);
    add(
        "pairing",
        vec![
            K::PairCode(v1::PairCodeRequest {
                ttl_seconds: 24 * 3600,
                require_approval: Some(true),
                device_id: node.clone(),
            }),
            K::PairList(v1::PairListRequest {}),
            K::PairApprove(v1::PairApproveRequest { code_id: 9999 }),
            K::PairReject(v1::PairRejectRequest { code_id: u32::MAX }),
        ],
    );
    add(
        "nodes",
        vec![
            K::ListNodes(v1::ListNodesRequest::default()),
            K::ListNodes(v1::ListNodesRequest {
                after: node.clone(),
                limit: Some(u32::MAX),
            }),
            K::ShowNode(v1::ShowNodeRequest { id: node.clone() }),
        ],
    );
    add(
        "call_extremes",
        vec![K::Call(v1::CallRequest {
            node: node.clone(),
            capability: "c".repeat(MAX_NAME_LEN),
            input: vec![b'x'; 2048],
            content_type: "application/json; charset=utf-8".into(),
            timeout_ms: MAX_CALL_TIMEOUT_MS,
        })],
    );
    add(
        "call_cancel",
        vec![
            K::Call(v1::CallRequest {
                node: "node-1".into(),
                capability: "echo".into(),
                input: b"{}".to_vec(),
                content_type: "application/json".into(),
                timeout_ms: 0,
            }),
            K::Cancel(v1::CancelRequest { target: u64::MAX }),
        ],
    );
    add(
        "events_follow",
        vec![K::Events(v1::EventsRequest {
            node: Some(node.clone()),
            from_seq: u64::MAX,
            follow: true,
        })],
    );
    add(
        "revoke",
        vec![K::Revoke(v1::RevokeRequest {
            node,
            reason: "r".repeat(MAX_REASON_LEN),
        })],
    );
    // A second Hello, and one from a newer contract.
    add(
        "hello_twice",
        vec![K::Hello(v1::Hello {
            contract_version: u32::MAX,
            software_version: String::new(),
        })],
    );
    // A prefix at the 1 MiB limit with no body after it, and one beyond.
    let mut at_limit = operator_stream(&[]);
    at_limit.extend_from_slice(&daemon::api::MAX_FRAME.to_be_bytes());
    c.insert("prefix_at_limit".into(), at_limit);
    let mut over = operator_stream(&[]);
    over.extend_from_slice(&u32::MAX.to_be_bytes());
    c.insert("prefix_u32_max".into(), over);
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
