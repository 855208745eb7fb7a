//! Session-layer cost against the wire codec alone, measured in the same run on the same
//! messages: how much the sans-IO session (sequencing, replay buffer, inbox, acks,
//! events, journal ops) adds to encoding and decoding the frames themselves.
//!
//! `cargo bench -p benches --bench session` ends with a table of ratios.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use protocol_core::frame::{FrameDecoder, HEADER_LEN};
use protocol_core::session::{
    Config, DaemonEvent, DaemonSession, Instant, MemJournal, NodeSession, Session, Transmit,
};
use protocol_core::wire::{Body, Data, Event, Message, Payload, decode_message, encode_message};

/// Messages per measured batch.
const BATCH: usize = 256;
const PAYLOADS: [usize; 2] = [64, 1024];
const JSON: &str = "application/json";
const NOW: Instant = Instant::from_millis(1_000);

struct Rng(u64);

impl rand_core::TryRng for Rng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        Ok(self.0)
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for b in dst {
            *b = self.try_next_u64()? as u8;
        }
        Ok(())
    }
}

/// A node and a daemon connected through byte streams, as drivers would run them.
struct Pair {
    node: NodeSession<Vec<u8>>,
    daemon: DaemonSession<Vec<u8>>,
    journal: MemJournal,
    node_journal: MemJournal,
    node_dec: FrameDecoder<Vec<u8>>,
    daemon_dec: FrameDecoder<Vec<u8>>,
    wire: Vec<u8>,
    tx: Vec<u8>,
}

fn config(durable: bool) -> Config {
    let mut c = Config::server(1 << 20).with_max_frame(64 * 1024);
    c.durable = durable;
    c
}

impl Pair {
    fn new(durable: bool) -> Self {
        let c = config(durable);
        let node =
            NodeSession::new(c, "bench", "bench", Some(vec![0; c.storage_len()])).expect("node");
        let mut daemon = DaemonSession::new(c, "bench", &mut Rng(1)).expect("daemon");
        daemon.lend(vec![0; c.storage_len()]).expect("lend");
        let max = c.max_frame;
        let mut p = Pair {
            node,
            daemon,
            journal: MemJournal::new(),
            node_journal: MemJournal::new(),
            node_dec: FrameDecoder::new(vec![0; max as usize], max).expect("decoder"),
            daemon_dec: FrameDecoder::new(vec![0; max as usize], max).expect("decoder"),
            wire: Vec::new(),
            tx: vec![0; c.transmit_len()],
        };
        p.node.handle_connected(NOW);
        p.daemon.handle_connected(NOW);
        for _ in 0..8 {
            p.node_to_daemon();
            p.daemon_side();
        }
        assert!(p.node.is_connected() && p.daemon.is_connected());
        p
    }

    /// Everything the node has to send, delivered to the daemon's session, whose
    /// application takes each event as it comes (as a driver polls after every input);
    /// returns the events taken.
    fn node_to_daemon(&mut self) -> usize {
        commit(&mut self.node, &mut self.node_journal);
        self.wire.clear();
        while let Ok(Some(Transmit::Frame(n))) = self.node.poll_transmit(NOW, &mut self.tx) {
            self.wire.extend_from_slice(&self.tx[..n]);
        }
        let mut events = 0;
        let mut input = &self.wire[..];
        while !input.is_empty() {
            let p = self.daemon_dec.decode(input).expect("frames");
            if let Some(frame) = p.frame {
                self.daemon.handle_frame(NOW, frame).expect("storage lent");
                while let Some(ev) = self.daemon.poll_event() {
                    if let DaemonEvent::Event { event, .. } = ev {
                        black_box(event.payload.data);
                        events += 1;
                    }
                }
            }
            input = &input[p.consumed..];
        }
        events
    }

    /// The daemon's store commits the batch, its acks go back to the node.
    fn daemon_side(&mut self) {
        commit(&mut self.daemon, &mut self.journal);
        self.wire.clear();
        while let Ok(Some(Transmit::Frame(n))) = self.daemon.poll_transmit(NOW, &mut self.tx) {
            self.wire.extend_from_slice(&self.tx[..n]);
        }
        feed(&mut self.node, &mut self.node_dec, &self.wire);
        while self.node.poll_event().is_some() {}
    }

    /// One batch of events from the node's application to the daemon's.
    fn round(&mut self, payload: &[u8]) {
        for _ in 0..BATCH {
            self.node
                .send_event(
                    "reading",
                    Payload {
                        content_type: JSON,
                        data: payload,
                    },
                )
                .expect("room");
        }
        let got = self.node_to_daemon();
        self.daemon_side();
        // The acknowledgement may wait for its delay; force it so the replay buffer
        // empties every round.
        self.daemon.handle_timeout(NOW.plus_ms(1_000));
        self.wire.clear();
        while let Ok(Some(Transmit::Frame(n))) =
            self.daemon.poll_transmit(NOW.plus_ms(1_000), &mut self.tx)
        {
            self.wire.extend_from_slice(&self.tx[..n]);
        }
        feed(&mut self.node, &mut self.node_dec, &self.wire);
        assert_eq!(got, BATCH);
        assert_eq!(self.node.unacked(), 0, "acknowledged");
    }
}

/// The store: one batch, applied and confirmed by the id its closing named.
fn commit<S: Session>(s: &mut S, journal: &mut MemJournal) {
    while let Some(op) = s.poll_journal() {
        journal.apply(&op);
    }
    if let Some(batch) = s.closed_batch() {
        s.handle_journal_committed(NOW, batch)
            .expect("the batch just closed");
    }
}

fn feed<S: Session>(s: &mut S, dec: &mut FrameDecoder<Vec<u8>>, mut input: &[u8]) {
    while !input.is_empty() {
        let p = dec.decode(input).expect("frames");
        if let Some(frame) = p.frame {
            s.handle_frame(NOW, frame).expect("storage lent");
        }
        input = &input[p.consumed..];
    }
}

/// The same messages through the codec only: encode each `Data` frame, cut and decode.
fn wire_only(payload: &[u8], stream: &mut Vec<u8>, tx: &mut [u8], dec: &mut FrameDecoder<Vec<u8>>) {
    stream.clear();
    for seq in 1..=BATCH as u64 {
        let msg = Message::Data(Data {
            seq,
            ack: 0,
            body: Body::Event(Event {
                name: "reading",
                payload: Payload {
                    content_type: JSON,
                    data: payload,
                },
            }),
        });
        let n = encode_message(&msg, 64 * 1024, tx).expect("fits");
        stream.extend_from_slice(&tx[..n]);
    }
    let mut input = &stream[..];
    let mut count = 0;
    while !input.is_empty() {
        let p = dec.decode(input).expect("frames");
        if let Some(frame) = p.frame {
            black_box(decode_message(frame).expect("decodes"));
            count += 1;
        }
        input = &input[p.consumed..];
    }
    assert_eq!(count, BATCH);
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(BATCH as u64));
    for size in PAYLOADS {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        g.bench_function(BenchmarkId::new("wire-only", size), |b| {
            let mut stream = Vec::new();
            let mut tx = vec![0u8; HEADER_LEN + 64 * 1024];
            let mut dec = FrameDecoder::new(vec![0; 64 * 1024], 64 * 1024).expect("decoder");
            b.iter(|| wire_only(&payload, &mut stream, &mut tx, &mut dec));
        });
        g.bench_function(BenchmarkId::new("session-ram", size), |b| {
            let mut p = Pair::new(false);
            b.iter(|| p.round(&payload));
        });
        g.bench_function(BenchmarkId::new("session-journaled", size), |b| {
            let mut p = Pair::new(true);
            b.iter(|| p.round(&payload));
        });
    }
    g.finish();
}

/// Mean time of one benchmark, from criterion's estimates of this run.
fn mean_ns(dir: &Path, id: &str) -> Option<f64> {
    let path = dir.join("session").join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn report(dir: &Path) {
    println!("\nEvents node -> daemon, M msg/s, and session time / wire-only time, this run:");
    println!(
        "{:>8} | {:>10} | {:>12} {:>7} | {:>17} {:>7}",
        "payload", "wire-only", "session RAM", "ratio", "session journaled", "ratio"
    );
    for size in PAYLOADS {
        let get = |id: &str| mean_ns(dir, &format!("{id}/{size}"));
        let (Some(w), Some(r), Some(j)) = (
            get("wire-only"),
            get("session-ram"),
            get("session-journaled"),
        ) else {
            println!("{size:>8} | (not measured in this run)");
            continue;
        };
        let rate = |ns: f64| BATCH as f64 / ns * 1e3;
        println!(
            "{:>6} B | {:>10.2} | {:>12.2} {:>6.2}x | {:>17.2} {:>6.2}x",
            size,
            rate(w),
            rate(r),
            r / w,
            rate(j),
            j / w
        );
    }
    println!(
        "\n'ratio' = session time / wire-only time for the same {BATCH} events: what sequencing, \
         replay, inbox, acks, events and (journaled) the in-memory journal add to the codec."
    );
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
    benches(&mut c);
    c.final_summary();
    report(&dir);
}
