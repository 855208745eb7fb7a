//! Properties of framing and message encoding.
#![allow(clippy::unwrap_used)]

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
            let list: std::vec::Vec<_> = caps
                .iter()
                .map(
                    |(name, version, input, output, needs_approval)| CapabilityDescriptor {
                        name,
                        version: *version,
                        input,
                        output,
                        needs_approval: *needs_approval,
                    },
                )
                .collect();
            // Test-only: the message borrows the list for the rest of the test.
            let capabilities = Capabilities::new(list.leak()).unwrap();
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
fn capability_list_is_bounded_and_decodes_lazily() {
    let caps: std::vec::Vec<_> = (0..=MAX_CAPABILITIES as u32)
        .map(|version| CapabilityDescriptor {
            name: "echo",
            version,
            input: "application/json",
            output: "application/json",
            needs_approval: false,
        })
        .collect();
    assert_eq!(
        Capabilities::new(&caps).unwrap_err(),
        TooManyCapabilities {
            count: MAX_CAPABILITIES + 1
        }
    );
    let ok = Capabilities::new(&caps[..3]).unwrap();
    let msg = Message::Data(Data {
        seq: 1,
        ack: 0,
        body: Body::Register(Register { capabilities: ok }),
    });
    let mut buf = [0u8; 512];
    let n = encode_payload(&msg, &mut buf).unwrap();
    let Message::Data(Data {
        body: Body::Register(r),
        ..
    }) = decode_message(&buf[..n]).unwrap()
    else {
        panic!("not a register")
    };
    assert_eq!(r.capabilities.len(), 3);
    assert_eq!(
        r.capabilities
            .iter()
            .map(|c| c.version)
            .collect::<std::vec::Vec<_>>(),
        [0, 1, 2]
    );
    // A message stays small: the list is a slice of the frame, not an inline array.
    assert!(
        core::mem::size_of::<Message<'_>>() <= 160,
        "{}",
        core::mem::size_of::<Message<'_>>()
    );

    // A list with one descriptor too many is refused when decoded, not when iterated.
    let mut wire = std::vec::Vec::new();
    for c in &caps {
        wire.extend(postcard::to_allocvec(c).unwrap());
    }
    let mut payload = vec![2, 1, 0, 0]; // Data, seq 1, ack 0, Register
    payload.extend(postcard::to_allocvec(&serde_bytes::Bytes::new(&wire)).unwrap());
    assert!(matches!(
        decode_message(&payload),
        Err(DecodeError::Malformed { .. })
    ));
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

/// A `Data` event whose encoding is `EVENT_OVERHEAD + data.len()` bytes (for 128..16384
/// data bytes).
fn event(data: &[u8]) -> Message<'_> {
    Message::Data(Data {
        seq: 1,
        ack: 0,
        body: Body::Event(Event {
            name: "n",
            payload: Payload {
                content_type: "b",
                data,
            },
        }),
    })
}

/// Tag, seq, ack, body tag, name, content type, and a two-byte data length.
const EVENT_OVERHEAD: usize = 4 + 2 + 2 + 2;

fn payload_len(msg: &Message<'_>) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    encode_payload(msg, &mut buf).unwrap()
}

#[test]
fn over_limit_message_is_too_large_whatever_the_buffer() {
    let peer_max = 256u32;
    let max = peer_max as usize;
    let data = [7u8; 300];
    let msg = event(&data);
    assert_eq!(payload_len(&msg), EVENT_OVERHEAD + 300);
    let mut out = vec![0u8; max + HEADER_LEN];
    // Exactly the room the peer accepts: the body is cut to the limit, which the message
    // exceeds. A bigger buffer would not help, so this is not `BufferTooSmall`.
    assert_eq!(
        encode_message(&msg, peer_max, &mut out),
        Err(EncodeError::TooLarge { max: peer_max })
    );
    // Shorter buffers too: the message is what cannot be sent.
    for len in [max + HEADER_LEN - 1, HEADER_LEN + 10, HEADER_LEN, 2, 0] {
        assert_eq!(
            encode_message(&msg, peer_max, &mut out[..len]),
            Err(EncodeError::TooLarge { max: peer_max }),
            "buffer of {len} bytes"
        );
    }
    // One more byte of room changes nothing either.
    let mut bigger = vec![0u8; max + HEADER_LEN + 1];
    assert_eq!(
        encode_message(&msg, peer_max, &mut bigger),
        Err(EncodeError::TooLarge { max: peer_max })
    );

    // A message of exactly the limit fits that buffer exactly, and not one byte less.
    let data = [7u8; 256 - EVENT_OVERHEAD];
    let msg = event(&data);
    assert_eq!(payload_len(&msg), max);
    assert_eq!(
        encode_message(&msg, peer_max, &mut out),
        Ok(max + HEADER_LEN)
    );
    assert_eq!(
        encode_message(&msg, peer_max, &mut out[..max + HEADER_LEN - 1]),
        Err(EncodeError::BufferTooSmall {
            available: max + HEADER_LEN - 1
        })
    );
    assert_eq!(
        encode_message(&msg, peer_max, &mut out[..2]),
        Err(EncodeError::BufferTooSmall { available: 2 })
    );

    // The raw frame encoder draws the same line.
    let payload = [1u8; 257];
    assert_eq!(
        encode_frame(&payload, peer_max, &mut out),
        Err(FrameError::TooLarge {
            len: 257,
            max: peer_max
        })
    );
    assert_eq!(encode_frame(&payload[..256], peer_max, &mut out), Ok(260));
    assert_eq!(
        encode_frame(&payload[..256], peer_max, &mut out[..2]),
        Err(FrameError::BufferTooSmall {
            needed: 260,
            available: 2
        })
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `TooLarge` exactly when the message is above the peer's limit, whatever the buffer;
    /// `BufferTooSmall` exactly when it is within the limit and the buffer cannot hold it.
    #[test]
    fn encode_errors_name_the_limit_that_was_hit(
        peer_max in 256u32..600,
        around in 0usize..48,
        near in -12i64..12,
        anywhere in proptest::option::of(0usize..700),
    ) {
        let max = peer_max as usize;
        // An encoding 30 bytes below the limit to 17 above it.
        let data = vec![7u8; max + around - 30 - EVENT_OVERHEAD];
        let msg = event(&data);
        let whole = payload_len(&msg);
        prop_assert_eq!(whole, data.len() + EVENT_OVERHEAD);
        // Mostly buffers within a few bytes of `peer_max + HEADER_LEN`.
        let buf_len = anywhere.unwrap_or((max + HEADER_LEN).saturating_add_signed(near as isize));
        let mut out = vec![0u8; buf_len];

        let got = encode_message(&msg, peer_max, &mut out);
        if whole > max && buf_len >= max + HEADER_LEN {
            prop_assert_eq!(got, Err(EncodeError::TooLarge { max: peer_max }));
        }
        let want = if whole > max {
            Err(EncodeError::TooLarge { max: peer_max })
        } else if buf_len < whole + HEADER_LEN {
            Err(EncodeError::BufferTooSmall { available: buf_len })
        } else {
            Ok(whole + HEADER_LEN)
        };
        prop_assert_eq!(got, want);
        if let Ok(n) = got {
            prop_assert_eq!(decode_message(&out[HEADER_LEN..n]).unwrap(), msg.clone());
        }

        // The raw frame encoder, given the same bytes, agrees.
        let mut payload = vec![0u8; whole];
        encode_payload(&msg, &mut payload).unwrap();
        let want = if whole > max {
            Err(FrameError::TooLarge { len: whole as u32, max: peer_max })
        } else if buf_len < whole + HEADER_LEN {
            Err(FrameError::BufferTooSmall { needed: whole + HEADER_LEN, available: buf_len })
        } else {
            Ok(whole + HEADER_LEN)
        };
        prop_assert_eq!(encode_frame(&payload, peer_max, &mut out), want);
    }
}

/// Every message has exactly one encoding: a varint padded with a continuation byte and a
/// zero (`80 00` for 0) still reads as the same number, and must be refused.
#[test]
fn padded_varints_are_refused() {
    const NON_CANONICAL: DecodeError = DecodeError::Malformed {
        reason: "non-canonical encoding",
    };
    // Data { seq: 1, ack: 0, Event { name: "up", payload: {"t", [09]} } }, as in WIRE.md.
    let event = [2, 1, 0, 5, 2, b'u', b'p', 1, b't', 1, 9];
    assert!(decode_message(&event).is_ok());
    // HelloAck { version: 1, max_frame: 256, idle_timeout_ms: 0, session: [0; 16],
    // resumed: false, received: 0 }, from its first two fields' encoding.
    let hello_ack = |head: &[u8]| [head, &[0; 19]].concat();
    let cases: &[(&str, &[u8])] = &[
        (
            "message tag",
            &[0x82, 0x00, 1, 0, 5, 2, b'u', b'p', 1, b't', 1, 9],
        ),
        ("message tag, two bytes of padding", &[0x85, 0x80, 0x00, 0]),
        // A padded tag is no tag at all, not even an unknown one.
        ("unknown message tag", &[0x89, 0x00]),
        ("unknown body tag", &[2, 1, 0, 0x86, 0x00]),
        (
            "data seq",
            &[2, 0x81, 0x00, 0, 5, 2, b'u', b'p', 1, b't', 1, 9],
        ),
        (
            "data ack",
            &[2, 1, 0x80, 0x00, 5, 2, b'u', b'p', 1, b't', 1, 9],
        ),
        (
            "body tag",
            &[2, 1, 0, 0x85, 0x00, 2, b'u', b'p', 1, b't', 1, 9],
        ),
        (
            "string length",
            &[2, 1, 0, 5, 0x82, 0x00, b'u', b'p', 1, b't', 1, 9],
        ),
        (
            "byte string length",
            &[2, 1, 0, 5, 2, b'u', b'p', 1, b't', 0x81, 0x00, 9],
        ),
        ("u64 field", &[5, 0xac, 0x82, 0x00]),
        ("u64 zero", &[3, 0x80, 0x00]),
        // Gap { from: 1, to: 2 }, `to` padded.
        ("second u64 field", &[4, 1, 0x82, 0x00]),
        ("u16 field", &hello_ack(&[1, 0x81, 0x00, 0x80, 0x02])),
        ("u32 field", &hello_ack(&[1, 1, 0x80, 0x82, 0x00])),
        // Goodbye { Restart (padded), "" }.
        ("inner enum tag", &[8, 0x81, 0x00, 0]),
        // Error { FrameTooLarge { len: 1, max: 2 } (tag padded), "" }.
        ("error code tag", &[7, 0x81, 0x00, 1, 2, 0]),
    ];
    for (what, bytes) in cases {
        assert_eq!(
            decode_message(bytes),
            Err(NON_CANONICAL),
            "{what}: {bytes:02x?}"
        );
    }
    // The unpadded forms decode: the cases above differ from valid messages only there.
    for ok in [
        &[5, 0xac, 0x02][..],
        &[3, 0],
        &[4, 1, 2],
        &[8, 1, 0],
        &[7, 1, 1, 2, 0],
        &hello_ack(&[1, 1, 0x80, 0x02]),
    ] {
        assert!(decode_message(ok).is_ok(), "{ok:02x?}");
    }
    assert_eq!(NON_CANONICAL.code(), ErrorCode::Malformed);
    assert_eq!(
        std::format!("{NON_CANONICAL}"),
        "malformed message: non-canonical encoding"
    );
}

#[test]
fn padded_varint_inside_a_capability_descriptor_is_refused() {
    let descriptor = CapabilityDescriptor {
        name: "echo",
        version: 3,
        input: "a",
        output: "b",
        needs_approval: false,
    };
    let canonical = postcard::to_allocvec(&descriptor).unwrap();
    assert_eq!(
        canonical,
        [4, b'e', b'c', b'h', b'o', 3, 1, b'a', 1, b'b', 0]
    );
    // The same descriptor with its version, then its name's length, padded.
    let padded_version = [4, b'e', b'c', b'h', b'o', 0x83, 0x00, 1, b'a', 1, b'b', 0];
    let padded_name = [0x84, 0x00, b'e', b'c', b'h', b'o', 3, 1, b'a', 1, b'b', 0];
    let register = |descriptors: &[&[u8]]| {
        let list: std::vec::Vec<u8> = descriptors.concat();
        let mut payload = vec![2, 1, 0, 0]; // Data, seq 1, ack 0, Register
        payload.extend(postcard::to_allocvec(&serde_bytes::Bytes::new(&list)).unwrap());
        payload
    };
    let ok = register(&[&canonical, &canonical]);
    let Message::Data(Data {
        body: Body::Register(r),
        ..
    }) = decode_message(&ok).unwrap()
    else {
        panic!("not a register")
    };
    assert_eq!(
        r.capabilities.iter().collect::<std::vec::Vec<_>>(),
        [descriptor; 2]
    );
    for bad in [
        register(&[&padded_version]),
        register(&[&canonical, &padded_name]),
        register(&[&padded_name, &canonical]),
    ] {
        assert!(
            matches!(decode_message(&bad), Err(DecodeError::Malformed { .. })),
            "{bad:02x?}"
        );
    }
}

/// A varint of an encoding: the index of its last byte, and whether it is as long as its
/// type allows.
type VarintAt = (usize, bool);

/// Walks a message's encoding by the schema in WIRE.md, noting where its varints are.
struct Walk<'a> {
    bytes: &'a [u8],
    pos: usize,
    varints: std::vec::Vec<VarintAt>,
}

const U16: usize = 3;
const U32: usize = 5;
const U64: usize = 10;

impl<'a> Walk<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Walk {
            bytes,
            pos: 0,
            varints: std::vec::Vec::new(),
        }
    }

    fn varint(&mut self, max: usize) -> u64 {
        let mut value = 0u64;
        for i in 0..max {
            let b = self.bytes[self.pos];
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.varints.push((self.pos - 1, i + 1 == max));
                return value;
            }
        }
        panic!("varint longer than {max} bytes");
    }

    fn tag(&mut self) -> u64 {
        self.varint(U32)
    }

    fn skip(&mut self, n: usize) {
        self.pos += n;
    }

    /// A string or byte string.
    fn bytes(&mut self) -> usize {
        let n = self.varint(U64) as usize;
        self.skip(n);
        n
    }

    fn payload(&mut self) {
        self.bytes();
        self.bytes();
    }

    fn range(&mut self) {
        self.varint(U16);
        self.varint(U16);
    }
}

/// A capability list inside an encoding: where its length starts, where its content is,
/// and its descriptors' varints (indices into the whole encoding).
struct CapabilityList {
    len_at: usize,
    content: core::ops::Range<usize>,
    varints: std::vec::Vec<VarintAt>,
}

fn varints_of(enc: &[u8]) -> (std::vec::Vec<VarintAt>, Option<CapabilityList>) {
    let mut w = Walk::new(enc);
    let mut caps = None;
    match w.tag() {
        0 => {
            w.range();
            w.varint(U32);
            w.varint(U32);
            w.bytes();
            w.bytes();
            w.skip(1);
            if enc[w.pos - 1] == 1 {
                w.skip(16);
                w.varint(U64);
            }
        }
        1 => {
            w.varint(U16);
            w.varint(U32);
            w.varint(U32);
            w.skip(16 + 1);
            w.varint(U64);
        }
        2 => {
            w.varint(U64);
            w.varint(U64);
            match w.tag() {
                0 => {
                    let len_at = w.pos;
                    let n = w.bytes();
                    let content = w.pos - n..w.pos;
                    let mut inner = Walk::new(&enc[content.clone()]);
                    while inner.pos < n {
                        inner.bytes();
                        inner.varint(U32);
                        inner.bytes();
                        inner.bytes();
                        inner.skip(1);
                    }
                    assert_eq!(inner.pos, n, "descriptors fill the list");
                    let varints = inner
                        .varints
                        .iter()
                        .map(|&(at, full)| (at + content.start, full))
                        .collect();
                    caps = Some(CapabilityList {
                        len_at,
                        content,
                        varints,
                    });
                }
                1 => {
                    w.varint(U64);
                    w.bytes();
                    w.varint(U32);
                    w.payload();
                }
                2 => {
                    w.varint(U64);
                    w.tag();
                    w.bytes();
                }
                3 => {
                    w.varint(U64);
                    match w.tag() {
                        0 => w.payload(),
                        1 => {
                            w.bytes();
                        }
                        2 => {
                            w.tag();
                            w.bytes();
                        }
                        _ => {}
                    }
                }
                4 => {
                    w.varint(U64);
                }
                5 => {
                    w.bytes();
                    w.payload();
                }
                t => panic!("body tag {t}"),
            }
        }
        3 | 5 | 6 => {
            w.varint(U64);
        }
        4 => {
            w.varint(U64);
            w.varint(U64);
        }
        7 => {
            match w.tag() {
                0 => {
                    w.range();
                    w.range();
                }
                1 => {
                    w.varint(U32);
                    w.varint(U32);
                }
                3 => {
                    w.varint(U32);
                }
                _ => {}
            }
            w.bytes();
        }
        8 => {
            w.tag();
            w.bytes();
        }
        t => panic!("tag {t}"),
    }
    assert_eq!(w.pos, enc.len(), "the schema accounts for every byte");
    (w.varints, caps)
}

/// `enc` with the varint ending at `at` padded by one byte: same number, one byte longer.
fn pad(enc: &[u8], at: usize) -> std::vec::Vec<u8> {
    let mut out = enc[..at].to_vec();
    out.extend([enc[at] | 0x80, 0x00]);
    out.extend(&enc[at + 1..]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever decodes is the encoding of what it decodes to, byte for byte: mutate a
    /// valid encoding at random and anything that still decodes re-encodes to the input.
    #[test]
    fn decoded_bytes_are_the_encoding(
        o in owned(),
        edits in vec((any::<proptest::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let msg = borrow(&o);
        let mut buf = vec![0u8; 64 * 1024];
        let n = encode_payload(&msg, &mut buf).unwrap();
        let mut bytes = buf[..n].to_vec();
        for (at, byte, how) in edits {
            let i = at.index(bytes.len() + 1);
            match how {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => bytes[i] = byte,
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => bytes.push(byte),
            }
        }
        if let Ok(decoded) = decode_message(&bytes) {
            let mut again = vec![0u8; bytes.len()];
            let n = encode_payload(&decoded, &mut again).unwrap();
            prop_assert_eq!(&again[..n], &bytes[..]);
        }
    }

    #[test]
    fn padding_any_varint_is_refused(o in owned()) {
        let msg = borrow(&o);
        let mut buf = vec![0u8; 64 * 1024];
        let n = encode_payload(&msg, &mut buf).unwrap();
        let enc = &buf[..n];
        let (varints, caps) = varints_of(enc);
        prop_assert!(!varints.is_empty());
        for &(at, full) in &varints {
            let padded = pad(enc, at);
            let got = decode_message(&padded);
            // A varint already as long as its type allows becomes too long instead.
            if full {
                prop_assert!(
                    matches!(got, Err(DecodeError::Malformed { .. })),
                    "{:?}: padding the varint at {} gave {:?}", msg, at, got
                );
            } else {
                prop_assert_eq!(
                    got,
                    Err(DecodeError::Malformed { reason: "non-canonical encoding" }),
                    "{:?}: padding the varint at {}", msg, at
                );
            }
        }
        if let Some(list) = caps {
            for &(at, _) in &list.varints {
                // Pad inside the list and give the list its new (canonical) length.
                let content = pad(&enc[list.content.clone()], at - list.content.start);
                let mut padded = enc[..list.len_at].to_vec();
                padded.extend(postcard::to_allocvec(&serde_bytes::Bytes::new(&content)).unwrap());
                padded.extend(&enc[list.content.end..]);
                let got = decode_message(&padded);
                prop_assert!(
                    matches!(got, Err(DecodeError::Malformed { .. })),
                    "{:?}: padding the descriptor varint at {} gave {:?}", msg, at, got
                );
            }
        }
    }
}
