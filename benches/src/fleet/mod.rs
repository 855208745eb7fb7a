//! The fleet load generator (`cargo run --release -p benches --bin fleet`): a real
//! `ternd serve` process, N nodes enrolled through the real pairing path and held over
//! QUIC or TCP + TLS from one process, and one table of what the daemon did with them.
//!
//! Phases, in order: start the daemon (baseline RSS); enrol the nodes in waves of
//! codes; connect them all at once (full mutual-TLS handshakes: the daemon issues no
//! tickets); idle (RSS per node, CPU); calls at a set rate through the operator socket;
//! numbered events from every node, until every one is acknowledged (the daemon
//! acknowledges after its store commits); `kill -9` of the daemon and a restart on the
//! same state directory and ports, until every node is back online; then the events
//! in the store are counted, so a loss across the kill shows.

pub mod enrol;
pub mod node;
pub mod ternd;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use daemon::api::ApiClient;
use daemon::api::v1::{self, CallRequest, EventsRequest};
use rand_core::{Rng, SeedableRng};
use tokio::task::JoinSet;

use crate::transports::BenchError;
use node::{Fleet, NodeCommand};
use ternd::{DaemonSettings, Ternd};

/// The node plane under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Quic,
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Quic => "QUIC",
            Transport::Tcp => "TCP + TLS",
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub transport: Transport,
    /// Calls per second through the operator socket.
    pub call_rate: u32,
    pub call_time: Duration,
    /// How long the idle CPU is measured.
    pub idle_time: Duration,
    /// Events each node sends.
    pub events: u64,
    /// Connection attempts in flight at once across the fleet.
    pub dials_in_flight: usize,
    /// How long each wait (connect, events, restart) may take before the run fails.
    pub patience: Duration,
    /// The `ternd` binary (found next to this executable when unset).
    pub ternd: Option<PathBuf>,
}

impl Options {
    /// The full run.
    pub fn full(nodes: usize, transport: Transport) -> Self {
        Self {
            nodes,
            transport,
            call_rate: 1_000,
            call_time: Duration::from_secs(10),
            idle_time: Duration::from_secs(10),
            events: 10,
            dials_in_flight: 256,
            patience: Duration::from_secs(300),
            ternd: None,
        }
    }

    /// A run of a few seconds, for tests and a first look.
    pub fn quick(transport: Transport) -> Self {
        Self {
            nodes: 20,
            call_rate: 100,
            call_time: Duration::from_secs(1),
            idle_time: Duration::from_secs(1),
            events: 5,
            patience: Duration::from_secs(60),
            ..Self::full(20, transport)
        }
    }
}

/// Call latencies at the set rate.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    pub issued: usize,
    pub failed: usize,
    /// The most frequent reason among the failed calls.
    pub failure: Option<(String, usize)>,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
}

/// Everything measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub transport: Option<Transport>,
    pub nodes: usize,
    pub held: usize,
    pub sources: usize,
    pub enrol_time: Duration,
    /// Pairing runs retried after a network failure.
    pub pairing_retries: usize,
    pub rss_baseline_kib: u64,
    pub rss_held_kib: u64,
    pub idle_cpu_percent: f64,
    pub connect_time: Duration,
    pub failed_dials: usize,
    pub call_rate: u32,
    pub calls: Calls,
    pub events_per_node: u64,
    pub events_time: Duration,
    pub events_stored: usize,
    pub events_lost: usize,
    pub events_duplicated: usize,
    /// A few of the lost events, as (node, seq).
    pub events_missing: Vec<(String, u64)>,
    /// Connections opened again while the events were sent (none if nothing dropped).
    pub reconnects_during_events: usize,
    /// Sessions the daemon could not resume over the whole run, and the node messages
    /// they declared lost.
    pub session_resets: usize,
    pub reset_unacked: usize,
    /// The most frequent reason the nodes' sessions gave for a disconnect from the
    /// start of the run until the kill, and its count.
    pub events_disconnect: Option<(String, usize)>,
    /// Numbered events in the store before the kill (the final count is after it).
    pub events_before_kill: usize,
    /// From the kill until every node was online again, and from the restarted daemon
    /// answering until then.
    pub back_after_kill: Duration,
    /// After the kill: how the nodes' connections ended (most frequent first) and the
    /// dial attempts that failed until every node was back.
    pub restart_ends: Vec<(String, usize)>,
    pub restart_failed_dials: usize,
    pub back_after_start: Duration,
    pub gave_up: usize,
    /// The phase that failed, if one did (the figures after it are missing).
    pub error: Option<String>,
}

impl Report {
    pub fn rss_per_node_kib(&self) -> f64 {
        self.rss_held_kib.saturating_sub(self.rss_baseline_kib) as f64 / self.held.max(1) as f64
    }

    pub fn handshakes_per_second(&self) -> f64 {
        self.held as f64 / self.connect_time.as_secs_f64().max(1e-9)
    }

    pub fn events_per_second(&self) -> f64 {
        (self.nodes as u64 * self.events_per_node) as f64 / self.events_time.as_secs_f64().max(1e-9)
    }

    /// The table, markdown.
    pub fn table(&self) -> String {
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
        let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        let transport = self.transport.map_or("?".into(), |t| t.to_string());
        let rows: Vec<(String, String, &str)> = vec![
            (
                "nodes held".into(),
                format!("{} of {}", self.held, self.nodes),
                "10,000",
            ),
            (
                "enrolment (pairing over the transport)".into(),
                format!(
                    "{} ({:.0} nodes/s, {} source addresses, {} runs retried)",
                    s(self.enrol_time),
                    self.nodes as f64 / self.enrol_time.as_secs_f64().max(1e-9),
                    self.sources,
                    self.pairing_retries
                ),
                "",
            ),
            (
                "daemon RSS per idle node".into(),
                format!(
                    "{:.1} KiB ({} → {} KiB)",
                    self.rss_per_node_kib(),
                    self.rss_baseline_kib,
                    self.rss_held_kib
                ),
                "≤ 64 KiB",
            ),
            (
                "daemon CPU while idle".into(),
                format!("{:.1} % of one core", self.idle_cpu_percent),
                "",
            ),
            (
                "full mTLS handshakes/s (all nodes at once)".into(),
                format!(
                    "{:.0} /s ({} for {}; {} failed attempts)",
                    self.handshakes_per_second(),
                    s(self.connect_time),
                    self.held,
                    self.failed_dials
                ),
                "≥ 1,000 /s",
            ),
            (
                format!(
                    "call latency p50 / p99 / p999 at {} calls/s",
                    self.call_rate
                ),
                format!(
                    "{} / {} / {} ({} calls, {} failed)",
                    ms(self.calls.p50),
                    ms(self.calls.p99),
                    ms(self.calls.p999),
                    self.calls.issued,
                    self.calls.failed
                ),
                "p99 < 20 ms",
            ),
            (
                "durable events/s".into(),
                format!(
                    "{:.0} /s ({} × {} in {})",
                    self.events_per_second(),
                    self.nodes,
                    self.events_per_node,
                    s(self.events_time)
                ),
                "≥ 20,000 /s",
            ),
            (
                "events lost / duplicated (counted after the restart)".into(),
                format!(
                    "{} / {} ({} stored; {} reconnects while sending{})",
                    self.events_lost,
                    self.events_duplicated,
                    self.events_stored,
                    self.reconnects_during_events,
                    if self.events_missing.is_empty() {
                        String::new()
                    } else {
                        format!("; missing {:?}", self.events_missing)
                    }
                ),
                "0 / 0",
            ),
            (
                "all nodes back online after kill -9".into(),
                format!(
                    "{} after the kill ({} after the daemon answered)",
                    s(self.back_after_kill),
                    s(self.back_after_start)
                ),
                "≤ 30 s",
            ),
            ("nodes that gave up".into(), self.gave_up.to_string(), "0"),
            (
                "sessions the daemon could not resume (node messages they dropped)".into(),
                format!("{} ({})", self.session_resets, self.reset_unacked),
                "0",
            ),
        ];
        let mut out = format!(
            "fleet: {} nodes over {transport}\n\n| measure | value | goal |\n|---|---|---|\n",
            self.nodes
        );
        for (k, v, g) in rows {
            out.push_str(&format!("| {k} | {v} | {g} |\n"));
        }
        out.push_str(&format!(
            "\nnumbered events stored before the kill: {}\n",
            self.events_before_kill
        ));
        if let Some((why, count)) = &self.events_disconnect {
            out.push_str(&format!(
                "most frequent disconnect before the kill ({count}): {why}\n"
            ));
        }
        if !self.restart_ends.is_empty() || self.restart_failed_dials > 0 {
            let ends: Vec<String> = self
                .restart_ends
                .iter()
                .map(|(why, n)| format!("{n} × {why}"))
                .collect();
            out.push_str(&format!(
                "after the kill: connections ended by {}; {} dial attempts failed\n",
                ends.join(", "),
                self.restart_failed_dials
            ));
        }
        if let Some((why, count)) = &self.calls.failure {
            out.push_str(&format!("\nmost failed calls ({count}): {why}\n"));
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("\nstopped early: {e}\n"));
        }
        out
    }
}

pub(crate) fn log(what: &str) {
    eprintln!("[fleet] {what}");
}

/// Waits until `f` holds, checking every `every`; fails after `patience`.
async fn wait_for(
    what: &str,
    patience: Duration,
    every: Duration,
    mut f: impl AsyncFnMut() -> Result<bool, BenchError>,
) -> Result<Duration, BenchError> {
    let start = Instant::now();
    loop {
        if f().await? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > patience {
            return Err(BenchError(format!("{what}: not done in {patience:?}")));
        }
        tokio::time::sleep(every).await;
    }
}

/// Nodes online in the daemon's view. From `status`, not `list_nodes`: one small
/// answer, where the node list takes a request per page of nodes.
async fn online(api: &ApiClient) -> Result<usize, BenchError> {
    let status = api
        .status()
        .await
        .map_err(BenchError::context("daemon status"))?;
    Ok(status.nodes.map_or(0, |c| c.online as usize))
}

/// Runs the whole thing; the state directory is removed afterwards. A phase that fails
/// ends the run; what was measured before it stays in the report, with `error` set.
pub async fn run(options: &Options) -> Report {
    let mut report = Report {
        transport: Some(options.transport),
        nodes: options.nodes,
        call_rate: options.call_rate,
        events_per_node: options.events,
        ..Report::default()
    };
    if let Err(e) = phases(options, &mut report).await {
        report.error = Some(e.to_string());
    }
    report
}

async fn phases(options: &Options, report: &mut Report) -> Result<(), BenchError> {
    let n = options.nodes;
    let exe = ternd::locate(options.ternd.as_deref())?;
    let mut state = tempfile::Builder::new().prefix("fleet-").tempdir()?;
    // The daemon's log and store, for a look after the run.
    if std::env::var_os("FLEET_KEEP").is_some() {
        state.disable_cleanup(true);
        log(&format!("keeping {}", state.path().display()));
    }
    let settings = DaemonSettings {
        exe,
        state_dir: state.path().to_owned(),
        port: ternd::free_port()?,
        // Pairing connections and reconnects overlap held ones.
        max_connections: 2 * n + 1_000,
        pairing_burst: u32::try_from(n + 1_000).unwrap_or(u32::MAX),
    };
    log(&format!("starting {}", settings.exe.display()));
    let (mut daemon, api) = Ternd::start(settings).await?;
    let pid = || {
        daemon
            .pid()
            .ok_or_else(|| BenchError("the daemon is not running".into()))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.rss_baseline_kib = crate::transports::memory::rss_kib(Some(pid()?))?;

    // Enrolment: the default per-address burst, never exceeded.
    let per_address = transport_tokio::tcp::DEFAULT_PAIRING_BURST as usize;
    report.sources = enrol::sources_for(n, per_address);
    log(&format!(
        "enrolling {n} nodes from {} addresses",
        report.sources
    ));
    let started = Instant::now();
    let (enrolled, retries) =
        enrol::enrol(&api, options.transport, daemon.addr(), n, report.sources).await?;
    report.enrol_time = started.elapsed();
    report.pairing_retries = retries;

    // Every node connects at once.
    log("connecting");
    let started = Instant::now();
    let fleet = Fleet::start(
        options.transport,
        daemon.addr(),
        enrolled,
        options.dials_in_flight,
    )?;
    let connect = wait_for(
        "every node connected",
        options.patience,
        Duration::from_millis(5),
        async || Ok(fleet.connected() >= n),
    )
    .await;
    report.connect_time = started.elapsed();
    report.held = fleet.connected();
    report.failed_dials = fleet
        .stats
        .failed_dials
        .load(std::sync::atomic::Ordering::Relaxed);
    connect?;
    // Online in the daemon's own view too (the registration has landed).
    wait_for(
        "every node online",
        options.patience,
        Duration::from_millis(200),
        async || Ok(online(&api).await? >= n),
    )
    .await?;

    // Idle.
    log("idle");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = ternd::cpu_time(pid()?)?;
    let t0 = Instant::now();
    tokio::time::sleep(options.idle_time).await;
    let cpu = ternd::cpu_time(pid()?)?.saturating_sub(cpu0);
    report.idle_cpu_percent = 100.0 * cpu.as_secs_f64() / t0.elapsed().as_secs_f64();
    report.rss_held_kib = crate::transports::memory::rss_kib(Some(pid()?))?;
    report.held = fleet.connected();

    // Calls at a set rate to random nodes.
    log("calls");
    let mut clients = Vec::with_capacity(CALL_CONNECTIONS);
    for _ in 0..CALL_CONNECTIONS {
        clients.push(
            ApiClient::connect(daemon.socket())
                .await
                .map_err(BenchError::context("operator socket"))?,
        );
    }
    report.calls = calls(&clients, n, options).await?;
    drop(clients);

    // Events.
    log("events");
    let opens_before = fleet.stats.opens.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let reached = fleet.broadcast(NodeCommand::Send(options.events)).await;
    if reached < n {
        return Err(BenchError(format!(
            "{reached} of {n} nodes took the send command"
        )));
    }
    let stats = fleet.stats.clone();
    report.events_time = wait_for(
        "every event acknowledged",
        options.patience,
        Duration::from_millis(5),
        async || {
            if let Some(f) = stats.failure() {
                return Err(BenchError(format!("a node failed: {f}")));
            }
            Ok(stats.settled.load(std::sync::atomic::Ordering::Relaxed) >= n)
        },
    )
    .await
    .map(|_| started.elapsed())?;
    report.reconnects_during_events = fleet
        .stats
        .opens
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(opens_before);

    report.events_disconnect = fleet
        .stats
        .disconnects
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(why, n)| (why.clone(), *n));
    log("counting events before the kill");
    report.events_before_kill = count_events(&api, n, options.events).await?.0;

    // kill -9 and restart.
    log("kill -9");
    drop(api);
    lock_ends(&fleet).clear();
    let failed_before_kill = fleet
        .stats
        .failed_dials
        .load(std::sync::atomic::Ordering::Relaxed);
    let killed = Instant::now();
    daemon.kill9()?;
    let api = daemon.restart().await?;
    let answered = Instant::now();
    let back = wait_for(
        "every node back online",
        options.patience,
        Duration::from_millis(100),
        async || Ok(online(&api).await? >= n && fleet.connected() >= n),
    )
    .await;
    report.back_after_kill = killed.elapsed();
    report.back_after_start = answered.elapsed();
    report.gave_up = n.saturating_sub(fleet.connected());
    report.restart_failed_dials = fleet
        .stats
        .failed_dials
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(failed_before_kill);
    let mut ends: Vec<(String, usize)> = lock_ends(&fleet).drain().collect();
    ends.sort_by_key(|e| std::cmp::Reverse(e.1));
    report.restart_ends = ends.into_iter().take(3).collect();
    report.session_resets = fleet
        .stats
        .resets
        .load(std::sync::atomic::Ordering::Relaxed);
    report.reset_unacked = fleet
        .stats
        .reset_unacked
        .load(std::sync::atomic::Ordering::Relaxed);
    back?;

    // What the store holds.
    log("counting events");
    let (stored, missing, dup) = count_events(&api, n, options.events).await?;
    report.events_stored = stored;
    report.events_lost = missing.len();
    report.events_missing = missing.into_iter().take(10).collect();
    report.events_duplicated = dup;

    fleet.shutdown().await;
    drop(daemon);
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Operator connections the calls are spread over: the daemon lets one connection have
/// 64 requests in flight, which a latency spike at 1,000 calls/s exceeds.
const CALL_CONNECTIONS: usize = 8;

/// Issues `call_rate` calls per second for `call_time` to random nodes over `clients`
/// in turn, each timed from its request to its answer on the operator socket.
async fn calls(clients: &[ApiClient], n: usize, options: &Options) -> Result<Calls, BenchError> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(std::collections::HashMap::<String, usize>::new()));
    let mut rng = chacha20::ChaCha20Rng::seed_from_u64(7);
    let total = (f64::from(options.call_rate) * options.call_time.as_secs_f64()) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(options.call_rate.max(1)),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    for k in 0..total {
        tick.tick().await;
        let node = enrol::device_id(rng.next_u64() as usize % n);
        let api = clients[k % clients.len()].clone();
        let (samples, failed) = (samples.clone(), failed.clone());
        tasks.spawn(async move {
            let input = format!("{{\"k\":{k}}}").into_bytes();
            let sent = Instant::now();
            let r = api
                .call(CallRequest {
                    node,
                    capability: node::CAPABILITY.into(),
                    input: input.clone(),
                    content_type: node::JSON.into(),
                    timeout_ms: 10_000,
                })
                .await;
            let took = sent.elapsed();
            match r {
                Ok(res) if res.state == v1::CallState::Succeeded as i32 && res.output == input => {
                    samples
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(took);
                }
                other => {
                    let why = match other {
                        Ok(res) if res.state == v1::CallState::Succeeded as i32 => {
                            "succeeded with another output".to_owned()
                        }
                        Ok(res) => format!("state {} ({})", res.state, res.message),
                        Err(e) => e.to_string(),
                    };
                    *failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(why)
                        .or_default() += 1;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut s = std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    s.sort_unstable();
    let failed = std::mem::take(&mut *failed.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(Calls {
        issued: total,
        failed: failed.values().sum(),
        failure: failed.into_iter().max_by_key(|(_, n)| *n),
        p50: percentile(&s, 0.50),
        p99: percentile(&s, 0.99),
        p999: percentile(&s, 0.999),
    })
}

/// Reads every stored event; returns (numbered events stored, the missing ones as
/// (node, seq), duplicates).
async fn count_events(
    api: &ApiClient,
    n: usize,
    per_node: u64,
) -> Result<(usize, Vec<(String, u64)>, usize), BenchError> {
    let mut seen = HashSet::new();
    let (mut stored, mut dup) = (0usize, 0usize);
    let mut from_seq = 0;
    // A stream that falls behind is cancelled by the client; resume where it stopped.
    'resume: loop {
        let mut stream = api
            .events(EventsRequest {
                node: None,
                from_seq,
                follow: false,
            })
            .await
            .map_err(BenchError::context("events"))?;
        while let Some(e) = stream.next().await {
            let e = match e {
                Ok(e) => e,
                Err(daemon::api::ClientError::Lagged { next_seq }) => {
                    from_seq = next_seq;
                    continue 'resume;
                }
                Err(e) => return Err(BenchError(format!("events: {e}"))),
            };
            if e.name != node::EVENT_NAME {
                continue;
            }
            stored += 1;
            let seq = std::str::from_utf8(&e.body)
                .ok()
                .and_then(|b| b.strip_prefix("{\"seq\":"))
                .and_then(|b| b.strip_suffix('}'))
                .and_then(|b| b.parse::<u64>().ok())
                .ok_or_else(|| BenchError(format!("an event body the nodes never send: {e:?}")))?;
            if !seen.insert((e.node, seq)) {
                dup += 1;
            }
        }
        break;
    }
    let missing = (0..n)
        .flat_map(|i| (0..per_node).map(move |seq| (enrol::device_id(i), seq)))
        .filter(|k| !seen.contains(k))
        .collect();
    Ok((stored, missing, dup))
}

fn lock_ends(fleet: &Fleet) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
    fleet
        .stats
        .ends
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}
