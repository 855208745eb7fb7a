//! Properties of framing and message encoding.

use heapless::Vec as HVec;
use proptest::collection::vec;
use proptest::prelude::*;
use protocol_core::frame::{DEFAULT_MAX_FRAME, FrameDecoder, FrameError, HEADER_LEN, encode_frame};
use protocol_core::wire::*;

// Owned shadows of the borrowed messages, so proptest can generate them.
#[derive(Debug, Clone)]
enum Owned {
    Hello(u16, u16, u32, u32, String, String, Option<([u8; 16], u64)>),
    HelloAck(HelloAck),
    Register(u64, u64, std::vec::Vec<(String, u32, String, String, bool)>),
    Call(u64, u64, u64, String, u32, String, std::vec::Vec<u8>),
    Progress(u64, u64, u64, bool, String),
    Result(u64, u64, u64, u8, String, std::vec::Vec<u8>),
    Cancel(u64, u64, u64),
    Event(u64, u64, String, String, std::vec::Vec<u8>),
    Ack(u64),
    Gap(u64, u64),
    Ping(u64),
    Pong(u64),
    Error(u8, u32, u32, String),
    Goodbye(u8, String),
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn bytes() -> impl Strategy<Value = std::vec::Vec<u8>> {
    vec(any::<u8>(), 0..300)
}

fn owned() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            text(),
            text(),
            any::<Option<([u8; 16], u64)>>()
        )
            .prop_map(|(a, b, c, d, e, f, g)| Owned::Hello(a, b, c, d, e, f, g)),
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(
                |(version, max_frame, idle_timeout_ms, session, resumed, received)| {
                    Owned::HelloAck(HelloAck {
                        version,
                        max_frame,
                        idle_timeout_ms,
                        session,
                        resumed,
                        received,
                    })
                }
            ),
        (
            any::<u64>(),
            any::<u64>(),
            vec(
                (text(), any::<u32>(), text(), text(), any::<bool>()),
                0..=MAX_CAPABILITIES
            )
        )
            .prop_map(|(s, a, c)| Owned::Register(s, a, c)),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            text(),
            any::<u32>(),
            text(),
            bytes()
        )
            .prop_map(|(s, a, id, cap, t, ct, d)| Owned::Call(s, a, id, cap, t, ct, d)),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            text()
        )
            .prop_map(|(s, a, id, st, d)| Owned::Progress(s, a, id, st, d)),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            0u8..8,
            text(),
            bytes()
        )
            .prop_map(|(s, a, id, k, t, d)| Owned::Result(s, a, id, k, t, d)),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(s, a, id)| Owned::Cancel(s, a, id)),
        (any::<u64>(), any::<u64>(), text(), text(), bytes())
            .prop_map(|(s, a, n, ct, d)| Owned::Event(s, a, n, ct, d)),
        any::<u64>().prop_map(Owned::Ack),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Owned::Gap(a, b)),
        any::<u64>().prop_map(Owned::Ping),
        any::<u64>().prop_map(Owned::Pong),
        (0u8..9, any::<u32>(), any::<u32>(), text())
            .prop_map(|(c, a, b, r)| Owned::Error(c, a, b, r)),
        (0u8..5, text()).prop_map(|(r, d)| Owned::Goodbye(r, d)),
    ]
}

fn payload<'a>(content_type: &'a str, data: &'a [u8]) -> Payload<'a> {
    Payload { content_type, data }
}

fn borrow(o: &Owned) -> Message<'_> {
    let data = |seq, ack, body| Message::Data(Data { seq, ack, body });
    match o {
        Owned::Hello(min, max, mf, idle, id, plat, resume) => Message::Hello(Hello {
            versions: VersionRange::new(*min, *max),
            max_frame: *mf,
            idle_timeout_ms: *idle,
            node_id: id,
            platform: plat,
            resume: resume.map(|(session, received)| Resume { session, received }),
        }),
        Owned::HelloAck(a) => Message::HelloAck(*a),
        Owned::Register(s, a, caps) => {
            let mut capabilities = HVec::new();
            for (name, version, input, output, needs_approval) in caps {
                capabilities
                    .push(CapabilityDescriptor {
                        name,
                        version: *version,
                        input,
                        output,
                        needs_approval: *needs_approval,
                    })
                    .expect("at most MAX_CAPABILITIES");
            }
            data(*s, *a, Body::Register(Register { capabilities }))
        }
        Owned::Call(s, a, call_id, cap, t, ct, d) => data(
            *s,
            *a,
            Body::Call(Call {
                call_id: *call_id,
                capability: cap,
                timeout_ms: *t,
                input: payload(ct, d),
            }),
        ),
        Owned::Progress(s, a, call_id, st, detail) => data(
            *s,
            *a,
            Body::Progress(CallProgress {
                call_id: *call_id,
                stage: if *st {
                    Stage::AwaitingApproval
                } else {
                    Stage::Running
                },
                detail,
            }),
        ),
        Owned::Result(s, a, call_id, k, t, d) => {
            let outcome = match k {
                0 => Outcome::Success(payload(t, d)),
                1 => Outcome::Failed { reason: t },
                2 => Outcome::Rejected {
                    code: RejectCode::UnknownCapability,
                    reason: t,
                },
                3 => Outcome::Rejected {
                    code: RejectCode::Denied,
                    reason: t,
                },
                4 => Outcome::Rejected {
                    code: RejectCode::BadInput,
                    reason: t,
                },
                5 => Outcome::Rejected {
                    code: RejectCode::Busy,
                    reason: t,
                },
                6 => Outcome::Cancelled,
                _ => Outcome::TimedOut,
            };
            data(
                *s,
                *a,
                Body::Result(CallResult {
                    call_id: *call_id,
                    outcome,
                }),
            )
        }
        Owned::Cancel(s, a, call_id) => data(*s, *a, Body::Cancel(Cancel { call_id: *call_id })),
        Owned::Event(s, a, name, ct, d) => data(
            *s,
            *a,
            Body::Event(Event {
                name,
                payload: payload(ct, d),
            }),
        ),
        Owned::Ack(r) => Message::Ack(Ack { received: *r }),
        Owned::Gap(from, to) => Message::Gap(Gap {
            from: *from,
            to: *to,
        }),
        Owned::Ping(n) => Message::Ping(Ping { nonce: *n }),
        Owned::Pong(n) => Message::Pong(Ping { nonce: *n }),
        Owned::Error(c, a, b, reason) => {
            let r = VersionRange::new(*a as u16, *b as u16);
            let code = match c {
                0 => ErrorCode::VersionMismatch {
                    client: r,
                    server: r,
                },
                1 => ErrorCode::FrameTooLarge { len: *a, max: *b },
                2 => ErrorCode::Malformed,
                3 => ErrorCode::UnknownMessage { tag: *a },
                4 => ErrorCode::UnexpectedMessage,
                5 => ErrorCode::Unauthorized,
                6 => ErrorCode::Revoked,
                7 => ErrorCode::Overloaded,
                _ => ErrorCode::Internal,
            };
            Message::Error(ErrorFrame { code, reason })
        }
        Owned::Goodbye(r, detail) => {
            let reason = [
                GoodbyeReason::Shutdown,
                GoodbyeReason::Restart,
                GoodbyeReason::IdleTimeout,
                GoodbyeReason::Replaced,
                GoodbyeReason::Revoked,
            ][*r as usize];
            Message::Goodbye(Goodbye { reason, detail })
        }
    }
}

/// Decodes every frame of `stream`, fed in pieces of the given sizes (cycled).
fn decode_chunked(
    stream: &[u8],
    sizes: &[usize],
    max: u32,
) -> Result<std::vec::Vec<std::vec::Vec<u8>>, FrameError> {
    let mut dec = FrameDecoder::new(vec![0u8; max as usize], max)?;
    let mut frames = std::vec::Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let size = sizes[i % sizes.len()].max(1);
        i += 1;
        let mut chunk = &stream[pos..(pos + size).min(stream.len())];
        pos += chunk.len();
        while !chunk.is_empty() {
            let p = dec.decode(chunk)?;
            if let Some(f) = p.frame {
                frames.push(f.to_vec());
            }
            chunk = &chunk[p.consumed..];
        }
    }
    assert_eq!(dec.buffered(), 0, "stream ended mid-frame");
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(o in owned()) {
        let msg = borrow(&o);
        let mut buf = vec![0u8; 64 * 1024];
        let n = encode_message(&msg, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len + HEADER_LEN, n);
        let back = decode_message(&buf[HEADER_LEN..n]).unwrap();
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn any_chunking_equals_whole(
        payloads in vec(vec(any::<u8>(), 0..700), 0..20),
        sizes in vec(1usize..900, 1..10),
    ) {
        let mut stream = std::vec::Vec::new();
        for p in &payloads {
            let mut out = vec![0u8; p.len() + HEADER_LEN];
            let n = encode_frame(p, 1024, &mut out).unwrap();
            stream.extend_from_slice(&out[..n]);
        }
        let whole = decode_chunked(&stream, &[stream.len().max(1)], 1024).unwrap();
        prop_assert_eq!(&whole, &payloads);
        let chunked = decode_chunked(&stream, &sizes, 1024).unwrap();
        prop_assert_eq!(&chunked, &payloads);
        let bytewise = decode_chunked(&stream, &[1], 1024).unwrap();
        prop_assert_eq!(&bytewise, &payloads);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in vec(any::<u8>(), 0..2048), sizes in vec(1usize..64, 1..5)) {
        let _ = decode_message(&input);
        let mut dec = FrameDecoder::new([0u8; 256], 256).unwrap();
        let mut rest = &input[..];
        let mut i = 0;
        while !rest.is_empty() {
            let take = sizes[i % sizes.len()].min(rest.len());
            i += 1;
            let mut chunk = &rest[..take];
            rest = &rest[take..];
            while !chunk.is_empty() {
                match dec.decode(chunk) {
                    Ok(p) => {
                        if let Some(f) = p.frame { let _ = decode_message(f); }
                        chunk = &chunk[p.consumed..];
                    }
                    Err(_) => { prop_assert!(dec.is_failed()); break; }
                }
            }
        }
    }

    #[test]
    fn oversize_prefix_buffers_nothing(max in 1u32..4096, extra in 1u32..100_000, split in 0usize..4) {
        let mut dec = FrameDecoder::new(vec![0u8; max as usize], max).unwrap();
        let len = max + extra;
        let mut input = len.to_be_bytes().to_vec();
        input.extend(std::iter::repeat_n(0x5a, 64));
        let first = dec.decode(&input[..split]).unwrap();
        prop_assert_eq!(first.consumed, split);
        prop_assert_eq!(dec.decode(&input[split..]), Err(FrameError::TooLarge { len, max }));
        prop_assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn encoder_respects_peer_limit(o in owned(), peer_max in 16u32..400) {
        let msg = borrow(&o);
        let mut big = vec![0u8; 64 * 1024];
        let whole = encode_message(&msg, DEFAULT_MAX_FRAME, &mut big).unwrap() - HEADER_LEN;
        match encode_message(&msg, peer_max, &mut big) {
            Ok(n) => prop_assert!(n - HEADER_LEN <= peer_max as usize && whole <= peer_max as usize),
            Err(e) => {
                prop_assert_eq!(e, EncodeError::TooLarge { max: peer_max });
                prop_assert!(whole > peer_max as usize);
            }
        }
    }
}

#[test]
fn unknown_kind_is_typed() {
    assert_eq!(
        decode_message(&[9]),
        Err(DecodeError::UnknownKind { tag: 9 })
    );
    assert_eq!(
        decode_message(&[0x80, 0x01]),
        Err(DecodeError::UnknownKind { tag: 128 })
    );
    // Data (tag 2), seq 1, ack 0, body tag 6.
    assert_eq!(
        decode_message(&[2, 1, 0, 6]),
        Err(DecodeError::UnknownBody { tag: 6 })
    );
    assert_eq!(
        decode_message(&[9]).unwrap_err().code(),
        ErrorCode::UnknownMessage { tag: 9 }
    );
}

#[test]
fn malformed_is_typed() {
    assert!(matches!(
        decode_message(&[]),
        Err(DecodeError::Malformed { .. })
    ));
    // Ping with a truncated nonce varint.
    assert!(matches!(
        decode_message(&[5, 0x80]),
        Err(DecodeError::Malformed { .. })
    ));
    // Ping 0 followed by a stray byte.
    assert_eq!(
        decode_message(&[5, 0, 0]),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
    // Goodbye with invalid UTF-8 detail.
    assert!(matches!(
        decode_message(&[8, 0, 1, 0xff]),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn tags_are_stable() {
    // These bytes are the wire contract documented in WIRE.md: changing them breaks peers.
    let mut buf = [0u8; 64];
    let n = encode_payload(&Message::Ping(Ping { nonce: 300 }), &mut buf).unwrap();
    assert_eq!(&buf[..n], &[5, 0xac, 0x02]);
    let n = encode_payload(&Message::Ack(Ack { received: 7 }), &mut buf).unwrap();
    assert_eq!(&buf[..n], &[3, 7]);
    let ev = Message::Data(Data {
        seq: 1,
        ack: 0,
        body: Body::Event(Event {
            name: "up",
            payload: Payload {
                content_type: "t",
                data: &[9],
            },
        }),
    });
    let n = encode_payload(&ev, &mut buf).unwrap();
    assert_eq!(&buf[..n], &[2, 1, 0, 5, 2, b'u', b'p', 1, b't', 1, 9]);
}

#[test]
fn microcontroller_limit_is_enforced_on_send() {
    let big = [7u8; 3000];
    let msg = Message::Data(Data {
        seq: 1,
        ack: 0,
        body: Body::Event(Event {
            name: "blob",
            payload: Payload {
                content_type: "b",
                data: &big,
            },
        }),
    });
    let mut out = vec![0u8; 8192];
    assert_eq!(
        encode_message(&msg, 2048, &mut out),
        Err(EncodeError::TooLarge { max: 2048 })
    );
    assert_eq!(
        encode_message(&msg, DEFAULT_MAX_FRAME, &mut out[..100]),
        Err(EncodeError::BufferTooSmall { available: 100 })
    );
}
