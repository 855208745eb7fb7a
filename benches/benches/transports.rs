//! Transports compared in one run, on loopback, with the same TLS (the project's rustls
//! configurations: ring, TLS 1.3, mutual authentication under a test CA):
//!
//! - **QUIC driver**: protocol-core sessions over `transport_tokio::quic`;
//! - **quinn**: raw length-prefixed frames over the `quinn` crate used the usual way
//!   (one bidirectional stream per connection, `write_all` / `read_exact`);
//! - **TCP + TLS**: the same sessions over `transport_tokio::tcp`.
//!
//! Measured: the round trip of 64 B (p50, p99) — over the sessions a capability call
//! (the daemon's application calls `echo` with 64 B, the node answers with the same
//! 64 B), over quinn an echoed 64 B frame; the bulk throughput of 64 KiB frames (node ->
//! daemon, payload MB/s the daemon's application receives: session events, or frames);
//! and the daemon's resident memory per idle node, with the daemon alone in a child
//! process and 1,000 nodes (own certificate each) that exchanged a few 64 KiB frames
//! (see `benches::transports::memory`).
//!
//! `cargo bench -p benches --bench transports` ends with one table of ratios and the
//! goals. Without `--bench` (as `cargo test --benches` runs it) it makes a short smoke
//! run of every step. Idle memory is measured twice per transport: after the nodes only
//! connected (no frames: what an idle connection costs) and after each sent a burst of
//! 64 KiB frames (what the burst leaves behind). `-- --memory-only` measures only that.
//! Every transport runs on the allocator `ternd` ships with (jemalloc, purging freed
//! pages after a second: `.cargo/config.toml`), so the figures are what is held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use benches::transports::certs::{self, DaemonIdentity, Leaf};
use benches::transports::memory::{self, IdleMemory};
use benches::transports::raw_quinn::{self, MODE_ECHO, MODE_SINK};
use benches::transports::sessions::{Daemon, DaemonCommand, Fleet, NodeCommand, Ready};
use benches::transports::stats::{Latency, throughput};
use benches::transports::{BULK_PAYLOAD, BenchError, RTT_PAYLOAD, Transport};
use tokio::sync::oneshot;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// What one run measures.
struct Plan {
    /// Rounds that alternate between the transports.
    rounds: usize,
    warm_up_trips: usize,
    round_trips: usize,
    bulk_warm_up: Duration,
    bulk_window: Duration,
    nodes: usize,
    frames_per_node: usize,
    idle: Duration,
}

const FULL: Plan = Plan {
    rounds: 5,
    warm_up_trips: 200,
    round_trips: 2_000,
    bulk_warm_up: Duration::from_millis(200),
    bulk_window: Duration::from_secs(2),
    nodes: 1_000,
    frames_per_node: 4,
    idle: Duration::from_secs(2),
};

const SMOKE: Plan = Plan {
    rounds: 2,
    warm_up_trips: 10,
    round_trips: 100,
    bulk_warm_up: Duration::from_millis(100),
    bulk_window: Duration::from_millis(300),
    nodes: 20,
    frames_per_node: 2,
    idle: Duration::from_millis(500),
};

const WAIT: Duration = Duration::from_secs(60);
/// Pause after a bulk round, for the frames in flight to drain.
const DRAIN: Duration = Duration::from_millis(200);
/// Descriptors for 1,000 connections and what the runtime needs besides.
const OPEN_FILES: u64 = 4_096;
/// Goal: daemon memory per idle node.
const IDLE_GOAL_KIB: f64 = 64.0;

/// One transport's results.
struct Measured {
    rtt: Latency,
    bulk_mb_s: f64,
    /// After a burst of frames.
    idle: IdleMemory,
    /// Without one.
    quiet: IdleMemory,
}

fn main() {
    if let Some(ended) = memory::run_child_if_asked() {
        if let Err(e) = ended {
            eprintln!("daemon process: {e}");
            std::process::exit(1);
        }
        return;
    }
    let plan = if std::env::args().any(|a| a == "--bench") {
        FULL
    } else {
        SMOKE
    };
    match run(&plan) {
        Ok((results, open_files)) => report(&plan, &results, open_files),
        Err(e) => {
            eprintln!("transports bench: {e}");
            std::process::exit(1);
        }
    }
}

fn run(plan: &Plan) -> Result<([Measured; 3], u64), BenchError> {
    // Before the runtime and the children start, so every thread and child inherits it.
    let open_files = memory::raise_open_files(OPEN_FILES)?;
    if open_files < plan.nodes as u64 + 256 {
        return Err(BenchError(format!(
            "{} connections need more than the {open_files} open files allowed",
            plan.nodes
        )));
    }
    let rt = memory::runtime()?;
    let started = Instant::now();
    let (identity, leaves) = certs::fleet(plan.nodes)?;
    println!(
        "transports: {} node certificates in {:.1?}",
        leaves.len(),
        started.elapsed()
    );
    if std::env::args().any(|a| a == "--memory-only") {
        idle_memory(&rt, &identity, &leaves, plan)?;
        std::process::exit(0);
    }
    let links = rt.block_on(links(&identity, &leaves[0], plan))?;
    for (t, (rtt, bulk)) in Transport::ALL.iter().zip(&links) {
        println!(
            "transports: {:<12} RTT p50 {:>7.1} us  p99 {:>7.1} us  bulk {:>7.1} MB/s",
            t.name(),
            micros(rtt.p50),
            micros(rtt.p99),
            bulk
        );
    }
    let (idles, quiets) = idle_memory(&rt, &identity, &leaves, plan)?;
    let results = [0, 1, 2].map(|i| Measured {
        rtt: links[i].0,
        bulk_mb_s: links[i].1,
        idle: idles[i],
        quiet: quiets[i],
    });
    Ok((results, open_files))
}

/// The daemon's resident memory per idle node for every transport: (after a burst of
/// `frames_per_node` frames, without one).
fn idle_memory(
    rt: &tokio::runtime::Runtime,
    identity: &DaemonIdentity,
    leaves: &[Leaf],
    plan: &Plan,
) -> Result<(Vec<IdleMemory>, Vec<IdleMemory>), BenchError> {
    // `TERN_BENCH_TRANSPORTS=quic-driver,...`: only these (the others read as NaN).
    let only = std::env::var("TERN_BENCH_TRANSPORTS").ok();
    let (mut idles, mut quiets) = (Vec::new(), Vec::new());
    for t in Transport::ALL {
        let skip = only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|n| n == t.name()));
        for (frames, into) in [(plan.frames_per_node, &mut idles), (0, &mut quiets)] {
            let measured = if skip {
                Err(BenchError("not asked for".into()))
            } else {
                memory::measure(rt, t, identity, leaves, frames, plan.idle)
            };
            let m = match measured {
                Ok(m) => m,
                // One transport's failure leaves the others' figures standing.
                Err(e) => {
                    println!(
                        "transports: {:<12} idle memory after {frames} frames: {e}",
                        t.name()
                    );
                    IdleMemory {
                        nodes: 0,
                        before_kib: 0,
                        after_kib: 0,
                    }
                }
            };
            println!(
                "transports: {:<12} daemon RSS {} KiB -> {} KiB with {} idle nodes after {frames} frames each: {:.1} KiB per node",
                t.name(),
                m.before_kib,
                m.after_kib,
                m.nodes,
                m.per_node_kib()
            );
            into.push(m);
        }
    }
    Ok((idles, quiets))
}

/// One transport's connection(s) between a daemon and one node, kept up for the whole
/// run so the transports' rounds can alternate.
enum Link {
    Sessions {
        daemon: Daemon,
        fleet: Fleet,
        node: Ready,
    },
    Quinn {
        server: raw_quinn::Server,
        client: raw_quinn::Client,
        echo: raw_quinn::RawStream,
        /// The bulk stream, between rounds.
        sink: Option<raw_quinn::RawStream>,
    },
}

impl Link {
    async fn open(
        transport: Transport,
        identity: &DaemonIdentity,
        leaf: &Leaf,
    ) -> Result<Self, BenchError> {
        if transport == Transport::Quinn {
            let server = raw_quinn::Server::start(identity)?;
            let client = raw_quinn::Client::new()?;
            let tls = leaf.client(identity.pin())?;
            let echo = client.open(server.addr, tls.clone(), MODE_ECHO).await?;
            let sink = client.open(server.addr, tls, MODE_SINK).await?;
            return Ok(Link::Quinn {
                server,
                client,
                echo,
                sink: Some(sink),
            });
        }
        let mut daemon = Daemon::start(transport, identity).await?;
        let fleet = Fleet::connect(
            transport,
            daemon.addr,
            identity.pin(),
            std::slice::from_ref(leaf),
            1,
        )
        .await?;
        let node = daemon.next_ready(WAIT).await?;
        Ok(Link::Sessions {
            daemon,
            fleet,
            node,
        })
    }

    /// `count` round trips of 64 B, one after another.
    async fn round_trips(&mut self, count: usize) -> Result<Vec<Duration>, BenchError> {
        match self {
            Link::Sessions { node, .. } => {
                let (done, result) = oneshot::channel();
                let command = DaemonCommand::RoundTrips {
                    count,
                    input: vec![0x5a; RTT_PAYLOAD],
                    done,
                };
                node.commands
                    .send(command)
                    .await
                    .map_err(BenchError::context("daemon command"))?;
                tokio::time::timeout(WAIT, result)
                    .await
                    .map_err(|_| BenchError("round trips did not finish in time".into()))?
                    .map_err(|_| BenchError("the daemon's connection ended".into()))?
                    .map_err(BenchError)
            }
            Link::Quinn { echo, .. } => {
                let frame = raw_quinn::frame(RTT_PAYLOAD);
                let mut reply = vec![0u8; frame.len()];
                let mut samples = Vec::with_capacity(count);
                for _ in 0..count {
                    let t = Instant::now();
                    echo.round_trip(&frame, &mut reply).await?;
                    samples.push(t.elapsed());
                }
                Ok(samples)
            }
        }
    }

    /// Payload MB/s of 64 KiB frames node -> daemon over `window`, after `warm_up`.
    async fn bulk(&mut self, warm_up: Duration, window: Duration) -> Result<f64, BenchError> {
        match self {
            Link::Sessions { daemon, fleet, .. } => {
                let sender = fleet
                    .commands
                    .first()
                    .ok_or_else(|| BenchError("no node".into()))?;
                sender
                    .send(NodeCommand::Bulk(true))
                    .await
                    .map_err(BenchError::context("node command"))?;
                let registry = daemon.registry.clone();
                let rate = throughput(|| registry.received(), warm_up, window).await;
                sender
                    .send(NodeCommand::Bulk(false))
                    .await
                    .map_err(BenchError::context("node command"))?;
                // What is in flight drains before the next measurement.
                tokio::time::sleep(DRAIN).await;
                match fleet.stats.failure() {
                    Some(f) => Err(BenchError(format!("the node failed: {f}"))),
                    None => Ok(rate),
                }
            }
            Link::Quinn { server, sink, .. } => {
                let mut stream = sink
                    .take()
                    .ok_or_else(|| BenchError("the bulk stream was lost".into()))?;
                let stop = Arc::new(AtomicBool::new(false));
                let sending = tokio::spawn({
                    let stop = stop.clone();
                    async move {
                        let frame = raw_quinn::frame(BULK_PAYLOAD);
                        while !stop.load(Ordering::Relaxed) {
                            stream.send(&frame).await?;
                        }
                        Ok::<_, BenchError>(stream)
                    }
                });
                let rate = throughput(|| server.received(), warm_up, window).await;
                stop.store(true, Ordering::Relaxed);
                *sink = Some(
                    sending
                        .await
                        .map_err(BenchError::context("bulk sender"))??,
                );
                tokio::time::sleep(DRAIN).await;
                Ok(rate)
            }
        }
    }

    async fn close(self) {
        match self {
            Link::Sessions { daemon, fleet, .. } => {
                fleet.shutdown().await;
                daemon.shutdown().await;
            }
            Link::Quinn {
                server,
                client,
                echo,
                sink,
            } => {
                echo.close();
                sink.iter().for_each(raw_quinn::RawStream::close);
                client.close();
                server.shutdown();
            }
        }
    }
}

/// Round trips and bulk over every transport, in rounds that alternate between them so
/// that whatever else the machine runs weighs on all alike.
async fn links(
    identity: &DaemonIdentity,
    leaf: &Leaf,
    plan: &Plan,
) -> Result<Vec<(Latency, f64)>, BenchError> {
    let mut links = Vec::new();
    for t in Transport::ALL {
        let mut link = Link::open(t, identity, leaf).await?;
        link.round_trips(plan.warm_up_trips).await?;
        links.push(link);
    }
    let mut samples = vec![Vec::with_capacity(plan.round_trips); links.len()];
    let mut rates = vec![Vec::with_capacity(plan.rounds); links.len()];
    for round in 0..plan.rounds {
        for ((link, samples), t) in links.iter_mut().zip(&mut samples).zip(Transport::ALL) {
            let trips = link
                .round_trips(plan.round_trips / plan.rounds)
                .await
                .map_err(|e| BenchError(format!("{} round trips, round {round}: {e}", t.name())))?;
            samples.extend(trips);
        }
        for ((link, rates), t) in links.iter_mut().zip(&mut rates).zip(Transport::ALL) {
            let rate = link
                .bulk(plan.bulk_warm_up, plan.bulk_window / plan.rounds as u32)
                .await
                .map_err(|e| BenchError(format!("{} bulk, round {round}: {e}", t.name())))?;
            rates.push(rate);
        }
    }
    for link in links {
        link.close().await;
    }
    samples
        .into_iter()
        .zip(rates)
        .map(|(s, r)| {
            let rtt = Latency::of(s).ok_or_else(|| BenchError("no round trips".into()))?;
            Ok((rtt, median(r)))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(plan: &Plan, r: &[Measured; 3], open_files: u64) {
    let [driver, quinn, tcp] = r;
    let nodes = driver.idle.nodes;
    println!(
        "\nTransports on loopback, this run: same rustls configurations (ring, TLS 1.3, mTLS), \
         {} round trips of {RTT_PAYLOAD} B and {:.0?} of {} KiB frames per transport in {} alternating rounds (bulk: median round), {nodes} idle nodes \
         ({} frames of 64 KiB each first; RLIMIT_NOFILE {open_files}).",
        plan.round_trips,
        plan.bulk_window,
        BULK_PAYLOAD / 1024,
        plan.rounds,
        plan.frames_per_node,
    );
    println!(
        "Every ratio is 'better than quinn' when > 1.0: quinn/x for times and memory, x/quinn for throughput."
    );
    println!(
        "{:<32} | {:>11} | {:>11} | {:>11} | {:>12} | {:>9}",
        "metric", "QUIC driver", "quinn", "TCP+TLS", "driver/quinn", "TCP/quinn"
    );
    let lower_better = |name: &str, f: &dyn Fn(&Measured) -> f64| {
        let (d, q, t) = (f(driver), f(quinn), f(tcp));
        println!(
            "{name:<32} | {d:>11.1} | {q:>11.1} | {t:>11.1} | {:>12.2} | {:>9.2}",
            q / d,
            q / t
        );
    };
    lower_better("RTT p50 (us)", &|m| micros(m.rtt.p50));
    lower_better("RTT p99 (us)", &|m| micros(m.rtt.p99));
    let (d, q, t) = (driver.bulk_mb_s, quinn.bulk_mb_s, tcp.bulk_mb_s);
    println!(
        "{:<32} | {d:>11.1} | {q:>11.1} | {t:>11.1} | {:>12.2} | {:>9.2}",
        "bulk 64 KiB frames (MB/s)",
        d / q,
        t / q
    );
    lower_better("daemon RSS per idle node (KiB)", &|m| m.idle.per_node_kib());
    lower_better("  the same without a burst (KiB)", &|m| {
        m.quiet.per_node_kib()
    });

    println!("\nGoals:");
    let goal = |what: &str, value: f64, met: bool| {
        println!(
            "  {what:<46} {value:>8.2}  {}",
            if met { "PASS" } else { "MISS" }
        );
    };
    let rtt50 = micros(quinn.rtt.p50) / micros(driver.rtt.p50);
    let rtt99 = micros(quinn.rtt.p99) / micros(driver.rtt.p99);
    let bulk = driver.bulk_mb_s / quinn.bulk_mb_s;
    goal(
        "driver RTT p50 vs quinn (ratio >= 1.0)",
        rtt50,
        rtt50 >= 1.0,
    );
    goal(
        "driver RTT p99 vs quinn (ratio >= 1.0)",
        rtt99,
        rtt99 >= 1.0,
    );
    goal("driver bulk vs quinn (ratio >= 1.0)", bulk, bulk >= 1.0);
    for (name, m) in [("driver", driver), ("TCP+TLS", tcp)] {
        let kib = m.idle.per_node_kib();
        goal(
            &format!("{name} KiB per idle node (<= {IDLE_GOAL_KIB})"),
            kib,
            kib <= IDLE_GOAL_KIB,
        );
    }
}
