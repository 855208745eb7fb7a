//! Wire-layer throughput against two baselines measured in the same run on the same bytes:
//! a plain `memcpy` of every payload (the physical limit of handing payloads over) and
//! `tokio_util::codec::LengthDelimitedCodec` (what a Rust user would otherwise pick).
//!
//! `cargo bench -p benches` runs everything and ends with a table of ratios.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use protocol_core::frame::{DEFAULT_MAX_FRAME, FrameDecoder, HEADER_LEN, encode_frame};
use protocol_core::wire::{
    Body, Call, Data, Event, Message, Payload, decode_message, encode_message,
};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

const SIZES: [usize; 4] = [64, 1024, 64 * 1024, 512 * 1024];
/// Bytes of payload per measured batch, so every size does comparable work.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Read size of the "chunked" variants: input arriving as a socket would deliver it.
const READ_CHUNK: usize = 16 * 1024;

struct Corpus {
    size: usize,
    payloads: Vec<Vec<u8>>,
    /// The payloads framed back to back: identical bytes for both codecs (u32 BE prefix).
    stream: Vec<u8>,
}

impl Corpus {
    fn new(size: usize) -> Self {
        let count = (BATCH_BYTES / size).max(8);
        let payloads: Vec<Vec<u8>> = (0..count)
            .map(|i| (0..size).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let mut stream = Vec::with_capacity(count * (size + HEADER_LEN));
        let mut out = vec![0u8; size + HEADER_LEN];
        for p in &payloads {
            let n = encode_frame(p, DEFAULT_MAX_FRAME, &mut out).expect("within limit");
            stream.extend_from_slice(&out[..n]);
        }
        Self {
            size,
            payloads,
            stream,
        }
    }

    fn payload_bytes(&self) -> u64 {
        (self.payloads.len() * self.size) as u64
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(DEFAULT_MAX_FRAME as usize)
        .new_codec()
}

fn tern_decode(dec: &mut FrameDecoder<Vec<u8>>, input: &[u8], chunk: usize) -> usize {
    let mut total = 0;
    for mut piece in input.chunks(chunk) {
        while !piece.is_empty() {
            let p = dec.decode(piece).expect("valid stream");
            if let Some(f) = p.frame {
                total += black_box(f).len();
            }
            piece = &piece[p.consumed..];
        }
    }
    total
}

/// Decodes every frame already in `buf`.
fn ldc_drain(codec: &mut LengthDelimitedCodec, buf: &mut BytesMut) -> usize {
    let mut total = 0;
    while let Some(f) = codec.decode(buf).expect("valid stream") {
        total += black_box(f).len();
    }
    total
}

/// Appends `input` to `buf` in reads of `chunk` bytes, decoding after each read.
fn ldc_decode(
    codec: &mut LengthDelimitedCodec,
    buf: &mut BytesMut,
    input: &[u8],
    chunk: usize,
) -> usize {
    let mut total = 0;
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        total += ldc_drain(codec, buf);
    }
    total
}

fn frames(c: &mut Criterion) {
    for size in SIZES {
        let corpus = Corpus::new(size);
        let mut g = c.benchmark_group(format!("frame/{size}"));
        g.throughput(Throughput::Bytes(corpus.payload_bytes()));

        let mut dst = vec![0u8; size];
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                for p in &corpus.payloads {
                    dst.copy_from_slice(black_box(p));
                    black_box(&dst);
                }
            })
        });

        // Decoding: the whole stream in one buffer, and the same stream in 16 KiB reads.
        for (label, chunk) in [("whole", corpus.stream.len()), ("16k-reads", READ_CHUNK)] {
            let mut dec =
                FrameDecoder::new(vec![0u8; DEFAULT_MAX_FRAME as usize], DEFAULT_MAX_FRAME)
                    .expect("buffer holds the limit");
            g.bench_function(BenchmarkId::new("tern-decode", label), |b| {
                b.iter(|| tern_decode(&mut dec, black_box(&corpus.stream), chunk))
            });
            let mut codec = codec();
            if label == "whole" {
                // Bytes already sit in the codec's buffer; filling it is not timed.
                g.bench_function(BenchmarkId::new("ldc-decode", label), |b| {
                    b.iter_batched_ref(
                        || BytesMut::from(&corpus.stream[..]),
                        |buf| ldc_drain(&mut codec, buf),
                        BatchSize::LargeInput,
                    )
                });
            } else {
                let mut buf = BytesMut::with_capacity(2 * DEFAULT_MAX_FRAME as usize);
                g.bench_function(BenchmarkId::new("ldc-decode", label), |b| {
                    b.iter(|| ldc_decode(&mut codec, &mut buf, black_box(&corpus.stream), chunk))
                });
            }
        }

        let mut out = vec![0u8; corpus.stream.len()];
        g.bench_function("tern-encode", |b| {
            b.iter(|| {
                let mut at = 0;
                for p in &corpus.payloads {
                    at += encode_frame(black_box(p), DEFAULT_MAX_FRAME, &mut out[at..])
                        .expect("fits");
                }
                black_box(at)
            })
        });
        let mut codec = codec();
        let mut buf = BytesMut::with_capacity(corpus.stream.len());
        g.bench_function("ldc-encode", |b| {
            b.iter(|| {
                buf.clear();
                for p in &corpus.payloads {
                    // LDC takes `Bytes`; building one from the slice is the copy it needs.
                    codec
                        .encode(bytes::Bytes::copy_from_slice(black_box(p)), &mut buf)
                        .expect("fits");
                }
                black_box(buf.len())
            })
        });
        g.finish();
    }
}

fn messages(c: &mut Criterion) {
    let data = [0x42u8; 64];
    let samples = [
        (
            "event-64B",
            Message::Data(Data {
                seq: 1_000_000,
                ack: 999_000,
                body: Body::Event(Event {
                    name: "sensor.reading",
                    payload: Payload {
                        content_type: "application/cbor",
                        data: &data,
                    },
                }),
            }),
        ),
        (
            "call-64B",
            Message::Data(Data {
                seq: 77,
                ack: 12,
                body: Body::Call(Call {
                    call_id: 123_456,
                    capability: "desktop.open_url",
                    timeout_ms: 30_000,
                    input: Payload {
                        content_type: "application/json",
                        data: &data,
                    },
                }),
            }),
        ),
    ];
    let mut g = c.benchmark_group("message");
    g.throughput(Throughput::Elements(1));
    for (name, msg) in &samples {
        let mut out = [0u8; 512];
        g.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| encode_message(black_box(msg), DEFAULT_MAX_FRAME, &mut out).expect("fits"))
        });
        let n = encode_message(msg, DEFAULT_MAX_FRAME, &mut out).expect("fits");
        let frame = out[HEADER_LEN..n].to_vec();
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| decode_message(black_box(&frame)).expect("valid"))
        });
    }
    g.finish();
}

/// Mean time of one benchmark, from criterion's estimates of this run.
fn mean_ns(dir: &Path, group: &str, id: &str) -> Option<f64> {
    let path = dir
        .join(group.replace('/', "_"))
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn report(dir: &Path) {
    let gibs = |bytes: u64, ns: f64| bytes as f64 / ns * 1e9 / (1u64 << 30) as f64;
    println!("\nFrame throughput (GiB/s of payload) and ratios, this run:");
    println!(
        "{:>8} | {:>9} | {:>11} {:>11} {:>8} {:>9} | {:>11} {:>11} {:>8} {:>9} | {:>11} {:>11} {:>8}",
        "size",
        "memcpy",
        "tern whole",
        "ldc whole",
        "vs ldc",
        "vs memcpy",
        "tern 16k",
        "ldc 16k",
        "vs ldc",
        "vs memcpy",
        "tern enc",
        "ldc enc",
        "vs ldc"
    );
    for size in SIZES {
        let corpus_bytes = Corpus::new(size).payload_bytes();
        let g = format!("frame/{size}");
        let get = |id: &str| mean_ns(dir, &g, id);
        let (Some(memcpy), Some(tw), Some(lw), Some(tc), Some(lc), Some(te), Some(le)) = (
            get("memcpy"),
            get("tern-decode/whole"),
            get("ldc-decode/whole"),
            get("tern-decode/16k-reads"),
            get("ldc-decode/16k-reads"),
            get("tern-encode"),
            get("ldc-encode"),
        ) else {
            println!("{size:>8} | (not measured in this run)");
            continue;
        };
        let t = |ns| gibs(corpus_bytes, ns);
        println!(
            "{:>8} | {:>9.2} | {:>11.2} {:>11.2} {:>7.2}x {:>8.0}% | {:>11.2} {:>11.2} {:>7.2}x {:>8.0}% | {:>11.2} {:>11.2} {:>7.2}x",
            human(size),
            t(memcpy),
            t(tw),
            t(lw),
            lw / tw,
            memcpy / tw * 100.0,
            t(tc),
            t(lc),
            lc / tc,
            memcpy / tc * 100.0,
            t(te),
            t(le),
            le / te,
        );
    }
    println!("\nMessages per second (postcard, framed):");
    for name in ["event-64B", "call-64B"] {
        let per_sec = |id: String| mean_ns(dir, "message", &id).map(|ns| 1e9 / ns / 1e6);
        if let (Some(e), Some(d)) = (
            per_sec(format!("encode/{name}")),
            per_sec(format!("decode/{name}")),
        ) {
            println!("  {name:>10}: encode {e:6.2} M msg/s, decode {d:6.2} M msg/s");
        }
    }
    println!(
        "\n'vs ldc' = LengthDelimitedCodec time / Tern time (>1: Tern faster). \
         'vs memcpy' = Tern throughput as a share of memcpy's."
    );
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1024 => format!("{} KiB", s / 1024),
        s => format!("{s} B"),
    }
}

fn main() {
    let dir: PathBuf = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("criterion");
    let mut c = Criterion::default()
        .output_directory(&dir)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    frames(&mut c);
    messages(&mut c);
    c.final_summary();
    report(&dir);
}
