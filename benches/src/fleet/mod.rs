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
//!
//! The store is SQLite in the daemon's state directory, or a PostgreSQL database made
//! for the run ([`pg`]) and shared by one or two daemons ([`Setup`]). With two, the
//! nodes pair with and connect to each in turn, know both addresses, and calls go
//! through either daemon's operator socket, half of them through the daemon that does
//! not hold the node; the kill phase kills one daemon, and its nodes come back on the
//! other (no restart). [`compare`] runs the three set-ups one after another and
//! [`compare_table`] puts them side by side.

pub mod enrol;
pub mod node;
pub mod pg;
pub mod ternd;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use daemon::api::ApiClient;
use daemon::api::v1::{self, CallRequest, EventsRequest};
use rand_core::{Rng, SeedableRng};
use tokio::task::JoinSet;

use crate::transports::BenchError;
use node::{Fleet, NodeCommand};
use ternd::{DaemonSettings, SharedStore, Ternd};

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

/// Where the daemons keep their state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// SQLite in the daemon's state directory.
    Sqlite,
    /// A PostgreSQL database made for the run.
    Postgres,
}

/// The store and how many daemons share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub store: Store,
    pub daemons: usize,
}

impl Setup {
    pub const SQLITE: Self = Self {
        store: Store::Sqlite,
        daemons: 1,
    };
    pub const POSTGRES: Self = Self {
        store: Store::Postgres,
        daemons: 1,
    };
    pub const POSTGRES_TWO_DAEMONS: Self = Self {
        store: Store::Postgres,
        daemons: 2,
    };
    /// What [`compare`] runs, in order.
    pub const COMPARED: [Self; 3] = [Self::SQLITE, Self::POSTGRES, Self::POSTGRES_TWO_DAEMONS];

    /// A set-up that can run: SQLite has one daemon, PostgreSQL one or two.
    pub fn new(store: Store, daemons: usize) -> Result<Self, String> {
        match (store, daemons) {
            (Store::Sqlite, 1) | (Store::Postgres, 1 | 2) => Ok(Self { store, daemons }),
            (Store::Sqlite, _) => Err("SQLite is one daemon's store: --daemons 1".into()),
            _ => Err(format!("--daemons {daemons}: one or two")),
        }
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self::SQLITE
    }
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.store, self.daemons) {
            (Store::Sqlite, _) => f.write_str("SQLite"),
            (Store::Postgres, 1) => f.write_str("PostgreSQL"),
            (Store::Postgres, d) => write!(f, "PostgreSQL, {d} daemons"),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub transport: Transport,
    pub setup: Setup,
    /// A PostgreSQL URL whose user may create databases: each run on PostgreSQL makes
    /// one of its own there and drops it afterwards.
    pub postgres: String,
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
            setup: Setup::SQLITE,
            postgres: pg::admin_from_env(),
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
    pub setup: Setup,
    pub nodes: usize,
    pub held: usize,
    /// With several daemons: the nodes connected to each once all were.
    pub held_by_daemon: Vec<usize>,
    pub sources: usize,
    pub enrol_time: Duration,
    /// Pairing runs retried after a network failure.
    pub pairing_retries: usize,
    pub rss_baseline_kib: u64,
    pub rss_held_kib: u64,
    pub idle_cpu_percent: f64,
    /// PostgreSQL: CPU of the server processes serving the run's database while idle.
    pub store_cpu_percent: Option<f64>,
    pub connect_time: Duration,
    pub failed_dials: usize,
    pub call_rate: u32,
    pub calls: Calls,
    /// With several daemons: the calls made through the daemon holding the node, and
    /// through one that did not (they go through the shared store).
    pub calls_held_here: Option<Calls>,
    pub calls_elsewhere: Option<Calls>,
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
    /// answering until then (none when the nodes moved to another daemon instead).
    pub back_after_kill: Duration,
    /// With several daemons: the nodes the killed daemon held, which came back on the
    /// other one, and how long after the kill the last of their connections ended.
    pub failed_over: Option<usize>,
    pub all_cut_off: Option<Duration>,
    /// PostgreSQL: the sessions each daemon owned in the store before the kill and once
    /// every node was back.
    pub owners_before_kill: Vec<(String, usize)>,
    pub owners_after: Vec<(String, usize)>,
    /// After the kill: how the nodes' connections ended (most frequent first) and the
    /// dial attempts that failed until every node was back.
    pub restart_ends: Vec<(String, usize)>,
    pub restart_failed_dials: usize,
    pub back_after_start: Option<Duration>,
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

    /// The table's rows: measure, value (`None`: not measured in this set-up), goal.
    fn rows(&self) -> Vec<(String, Option<String>, &'static str)> {
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
        let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        let several = self.setup.daemons > 1;
        let latency = |c: &Calls| {
            format!(
                "{} / {} / {} ({} calls, {} failed)",
                ms(c.p50),
                ms(c.p99),
                ms(c.p999),
                c.issued,
                c.failed
            )
        };
        vec![
            (
                "nodes held".into(),
                Some(if several {
                    let each: Vec<String> = self
                        .held_by_daemon
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    format!(
                        "{} of {} ({} on the {} daemons)",
                        self.held,
                        self.nodes,
                        each.join(" + "),
                        self.setup.daemons
                    )
                } else {
                    format!("{} of {}", self.held, self.nodes)
                }),
                "10,000",
            ),
            (
                "enrolment (pairing over the transport)".into(),
                Some(format!(
                    "{} ({:.0} nodes/s, {} source addresses, {} runs retried)",
                    s(self.enrol_time),
                    self.nodes as f64 / self.enrol_time.as_secs_f64().max(1e-9),
                    self.sources,
                    self.pairing_retries
                )),
                "",
            ),
            (
                "daemon RSS per idle node".into(),
                Some(format!(
                    "{:.1} KiB ({} → {} KiB{})",
                    self.rss_per_node_kib(),
                    self.rss_baseline_kib,
                    self.rss_held_kib,
                    if several {
                        ", the daemons together"
                    } else {
                        ""
                    }
                )),
                "≤ 64 KiB",
            ),
            (
                "daemon CPU while idle".into(),
                Some(format!(
                    "{:.1} % of one core{}",
                    self.idle_cpu_percent,
                    if several {
                        " (the daemons together)"
                    } else {
                        ""
                    }
                )),
                "",
            ),
            (
                "PostgreSQL server CPU while idle (the run's connections)".into(),
                self.store_cpu_percent
                    .map(|p| format!("{p:.1} % of one core")),
                "",
            ),
            (
                "full mTLS handshakes/s (all nodes at once)".into(),
                Some(format!(
                    "{:.0} /s ({} for {}; {} failed attempts)",
                    self.handshakes_per_second(),
                    s(self.connect_time),
                    self.held,
                    self.failed_dials
                )),
                "≥ 1,000 /s",
            ),
            (
                format!(
                    "call latency p50 / p99 / p999 at {} calls/s",
                    self.call_rate
                ),
                Some(latency(&self.calls)),
                "p99 < 20 ms",
            ),
            (
                "of those, through the daemon holding the node".into(),
                self.calls_held_here.as_ref().map(latency),
                "",
            ),
            (
                "of those, through the other daemon (via the store)".into(),
                self.calls_elsewhere.as_ref().map(latency),
                "",
            ),
            (
                "durable events/s".into(),
                Some(format!(
                    "{:.0} /s ({} × {} in {})",
                    self.events_per_second(),
                    self.nodes,
                    self.events_per_node,
                    s(self.events_time)
                )),
                "≥ 20,000 /s",
            ),
            (
                "events lost / duplicated (counted after the restart)".into(),
                Some(format!(
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
                )),
                "0 / 0",
            ),
            (
                "all nodes back online after kill -9".into(),
                Some(match (self.failed_over, self.back_after_start) {
                    (Some(moved), _) => format!(
                        "{} after the kill ({moved} nodes moved to the other daemon; their \
                         connections all ended {} after the kill)",
                        s(self.back_after_kill),
                        self.all_cut_off.map_or("?".into(), s)
                    ),
                    (None, Some(after)) => format!(
                        "{} after the kill ({} after the daemon answered)",
                        s(self.back_after_kill),
                        s(after)
                    ),
                    (None, None) => format!("{} after the kill", s(self.back_after_kill)),
                }),
                "≤ 30 s",
            ),
            (
                "nodes that gave up".into(),
                Some(self.gave_up.to_string()),
                "0",
            ),
            (
                "sessions the daemon could not resume (node messages they dropped)".into(),
                Some(format!("{} ({})", self.session_resets, self.reset_unacked)),
                "0",
            ),
        ]
    }

    /// What the table does not hold: counts before the kill, why connections ended,
    /// why calls failed, who owned the sessions, the phase that failed.
    fn notes(&self) -> String {
        let mut out = format!(
            "numbered events stored before the kill: {}\n",
            self.events_before_kill
        );
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
        let owners = |o: &[(String, usize)]| {
            let each: Vec<String> = o.iter().map(|(d, n)| format!("{d} {n}")).collect();
            if each.is_empty() {
                "none".to_owned()
            } else {
                each.join(", ")
            }
        };
        if self.setup.store == Store::Postgres {
            out.push_str(&format!(
                "sessions owned in the store before the kill: {}; after: {}\n",
                owners(&self.owners_before_kill),
                owners(&self.owners_after)
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

    /// The table, markdown.
    pub fn table(&self) -> String {
        let transport = self.transport.map_or("?".into(), |t| t.to_string());
        let mut out = if self.setup == Setup::SQLITE {
            format!("fleet: {} nodes over {transport}\n\n", self.nodes)
        } else {
            format!(
                "fleet: {} nodes over {transport}, store: {}\n\n",
                self.nodes, self.setup
            )
        };
        out.push_str("| measure | value | goal |\n|---|---|---|\n");
        for (k, v, g) in self.rows() {
            if let Some(v) = v {
                out.push_str(&format!("| {k} | {v} | {g} |\n"));
            }
        }
        out.push('\n');
        out.push_str(&self.notes());
        out
    }
}

/// Several reports (the same nodes and transport, one per set-up) side by side, a
/// column each, markdown; each one's notes follow under its name.
pub fn compare_table(reports: &[Report]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let transport = first.transport.map_or("?".into(), |t| t.to_string());
    let names: Vec<String> = reports.iter().map(|r| r.setup.to_string()).collect();
    let mut out = format!(
        "fleet: {} nodes over {transport}, {}\n\n| measure | {} | goal |\n|---|{}---|\n",
        first.nodes,
        names.join(" / "),
        names.join(" | "),
        "---|".repeat(reports.len())
    );
    let rows: Vec<_> = reports.iter().map(Report::rows).collect();
    for (i, (k, _, g)) in rows[0].iter().enumerate() {
        let values: Vec<String> = rows
            .iter()
            .map(|r| {
                r.get(i)
                    .and_then(|(_, v, _)| v.clone())
                    .unwrap_or("—".into())
            })
            .collect();
        out.push_str(&format!("| {k} | {} | {g} |\n", values.join(" | ")));
    }
    for (name, r) in names.iter().zip(reports) {
        out.push_str(&format!("\n{name}:\n{}", r.notes()));
    }
    out
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

/// Online nodes in the daemons' views, added up: each counts the nodes connected to it.
async fn online_all(apis: &[ApiClient]) -> Result<usize, BenchError> {
    let mut total = 0;
    for api in apis {
        total += online(api).await?;
    }
    Ok(total)
}

/// The daemons' resident sets, added up.
fn rss_all(daemons: &[Ternd]) -> Result<u64, BenchError> {
    let mut total = 0;
    for d in daemons {
        let pid = d
            .pid()
            .ok_or_else(|| BenchError("a daemon is not running".into()))?;
        total += crate::transports::memory::rss_kib(Some(pid))?;
    }
    Ok(total)
}

/// The daemons' CPU time so far, added up.
fn cpu_all(daemons: &[Ternd]) -> Result<Duration, BenchError> {
    let mut total = Duration::ZERO;
    for d in daemons {
        let pid = d
            .pid()
            .ok_or_else(|| BenchError("a daemon is not running".into()))?;
        total += ternd::cpu_time(pid)?;
    }
    Ok(total)
}

/// CPU time so far of each server process serving the run's database.
async fn store_cpu(db: &pg::Database) -> Result<HashMap<u32, Duration>, BenchError> {
    Ok(db
        .backends()
        .await?
        .into_iter()
        .filter_map(|pid| ternd::cpu_time(pid).ok().map(|t| (pid, t)))
        .collect())
}

/// The daemons' names in a shared store.
fn daemon_name(k: usize) -> String {
    format!("fleet-{}", (b'a' + (k % 26) as u8) as char)
}

/// Runs the whole thing in `options.setup`; the state directories (and the PostgreSQL
/// database) are removed afterwards. A phase that fails ends the run; what was
/// measured before it stays in the report, with `error` set.
pub async fn run(options: &Options) -> Report {
    let mut report = Report {
        transport: Some(options.transport),
        setup: options.setup,
        nodes: options.nodes,
        call_rate: options.call_rate,
        events_per_node: options.events,
        ..Report::default()
    };
    let db = match options.setup.store {
        Store::Sqlite => None,
        Store::Postgres => match pg::Database::create(&options.postgres).await {
            Ok(db) => {
                log(&format!("database {}", db.name));
                Some(db)
            }
            Err(e) => {
                report.error = Some(e.to_string());
                return report;
            }
        },
    };
    if let Err(e) = phases(options, &mut report, db.as_ref()).await {
        report.error = Some(e.to_string());
    }
    if let Some(db) = db
        && let Err(e) = db.drop_database().await
    {
        log(&format!("{e}"));
    }
    report
}

/// Runs every set-up of [`Setup::COMPARED`] in turn with the same options, one report
/// each (a failed one does not stop the next).
pub async fn compare(options: &Options) -> Vec<Report> {
    let mut reports = Vec::new();
    for setup in Setup::COMPARED {
        log(&format!("set-up: {setup}"));
        let options = Options {
            setup,
            ..options.clone()
        };
        reports.push(run(&options).await);
    }
    reports
}

async fn phases(
    options: &Options,
    report: &mut Report,
    db: Option<&pg::Database>,
) -> Result<(), BenchError> {
    let n = options.nodes;
    let count = options.setup.daemons.max(1);
    let exe = ternd::locate(options.ternd.as_deref())?;
    let mut states = Vec::with_capacity(count);
    for _ in 0..count {
        let mut state = tempfile::Builder::new().prefix("fleet-").tempdir()?;
        // The daemon's log and store, for a look after the run.
        if std::env::var_os("FLEET_KEEP").is_some() {
            state.disable_cleanup(true);
            log(&format!("keeping {}", state.path().display()));
        }
        states.push(state);
    }
    let mut daemons = Vec::with_capacity(count);
    let mut apis = Vec::with_capacity(count);
    for (k, state) in states.iter().enumerate() {
        let settings = DaemonSettings {
            exe: exe.clone(),
            state_dir: state.path().to_owned(),
            port: ternd::free_port()?,
            // Pairing connections and reconnects overlap held ones (with several
            // daemons, one may end up holding every node).
            max_connections: 2 * n + 1_000,
            pairing_burst: u32::try_from(n + 1_000).unwrap_or(u32::MAX),
            store: db.map(|db| SharedStore {
                url: db.url.clone(),
                daemon_id: daemon_name(k),
            }),
        };
        log(&format!("starting {}", settings.exe.display()));
        // One after the other: the first creates the CA and the server identity the
        // others read.
        let (daemon, api) = Ternd::start(settings).await?;
        daemons.push(daemon);
        apis.push(api);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.rss_baseline_kib = rss_all(&daemons)?;

    // Enrolment: the default per-address burst, never exceeded.
    let per_address = transport_tokio::tcp::DEFAULT_PAIRING_BURST as usize;
    report.sources = enrol::sources_for(n, per_address);
    log(&format!(
        "enrolling {n} nodes from {} addresses",
        report.sources
    ));
    let targets: Vec<(ApiClient, std::net::SocketAddr)> = apis
        .iter()
        .cloned()
        .zip(daemons.iter().map(Ternd::addr))
        .collect();
    let started = Instant::now();
    let (enrolled, retries) = enrol::enrol(&targets, options.transport, n, report.sources).await?;
    report.enrol_time = started.elapsed();
    report.pairing_retries = retries;

    // Every node connects at once.
    log("connecting");
    let started = Instant::now();
    let addresses: Vec<std::net::SocketAddr> = daemons.iter().map(Ternd::addr).collect();
    let fleet = Fleet::start(
        options.transport,
        &addresses,
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
    // Online in the daemons' own view too (the registration has landed).
    wait_for(
        "every node online",
        options.patience,
        Duration::from_millis(200),
        async || Ok(online_all(&apis).await? >= n),
    )
    .await?;
    if count > 1 {
        report.held_by_daemon = (0..count).map(|d| fleet.stats.connected_to(d)).collect();
    }

    // Idle.
    log("idle");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = cpu_all(&daemons)?;
    let store0 = match db {
        Some(db) => Some(store_cpu(db).await?),
        None => None,
    };
    let t0 = Instant::now();
    tokio::time::sleep(options.idle_time).await;
    let cpu = cpu_all(&daemons)?.saturating_sub(cpu0);
    let idle = t0.elapsed().as_secs_f64();
    report.idle_cpu_percent = 100.0 * cpu.as_secs_f64() / idle;
    if let (Some(db), Some(before)) = (db, store0) {
        let after = store_cpu(db).await?;
        // A process gone meanwhile drops out; one started meanwhile counts whole.
        let spent: Duration = after
            .iter()
            .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or_default()))
            .sum();
        report.store_cpu_percent = Some(100.0 * spent.as_secs_f64() / idle);
    }
    report.rss_held_kib = rss_all(&daemons)?;
    report.held = fleet.connected();

    // Calls at a set rate to random nodes, through every daemon in turn.
    log("calls");
    let mut clients = Vec::with_capacity(CALL_CONNECTIONS * count);
    for k in 0..CALL_CONNECTIONS * count {
        let d = k % count;
        clients.push((
            d,
            ApiClient::connect(daemons[d].socket())
                .await
                .map_err(BenchError::context("operator socket"))?,
        ));
    }
    let (all, here, elsewhere) = calls(&clients, &fleet, n, options).await?;
    report.calls = all;
    if count > 1 {
        report.calls_held_here = Some(here);
        report.calls_elsewhere = Some(elsewhere);
    }
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
    report.events_before_kill = count_events(&apis[0], n, options.events).await?.0;
    if let Some(db) = db {
        report.owners_before_kill = db.owners().await?;
    }

    // kill -9: a restart of the only daemon, or the nodes of one of two moving to the
    // other.
    log("kill -9");
    lock_ends(&fleet).clear();
    let failed_before_kill = fleet
        .stats
        .failed_dials
        .load(std::sync::atomic::Ordering::Relaxed);
    let (api, back) = if count == 1 {
        drop(apis);
        let daemon = &mut daemons[0];
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
        report.back_after_start = Some(answered.elapsed());
        (api, back)
    } else {
        // The first daemon goes; the nodes it held come back on the last one.
        let (victim, survivor) = (0, count - 1);
        let api = apis[survivor].clone();
        drop(apis);
        report.failed_over = Some(fleet.stats.connected_to(victim));
        let killed = Instant::now();
        daemons[victim].kill9()?;
        let mut cut_off = None;
        let back = wait_for(
            "every node back online on the other daemon",
            options.patience,
            Duration::from_millis(100),
            async || {
                if cut_off.is_none() && fleet.stats.connected_to(victim) == 0 {
                    cut_off = Some(killed.elapsed());
                }
                Ok(fleet.stats.connected_to(survivor) >= n
                    && fleet.connected() >= n
                    && online(&api).await? >= n)
            },
        )
        .await;
        report.back_after_kill = killed.elapsed();
        report.all_cut_off = cut_off;
        (api, back)
    };
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
    if let Some(db) = db {
        report.owners_after = db.owners().await?;
    }
    back?;

    // What the store holds.
    log("counting events");
    let (stored, missing, dup) = count_events(&api, n, options.events).await?;
    report.events_stored = stored;
    report.events_lost = missing.len();
    report.events_missing = missing.into_iter().take(10).collect();
    report.events_duplicated = dup;

    fleet.shutdown().await;
    drop(daemons);
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Operator connections the calls are spread over, per daemon: the daemon lets one
/// connection have 64 requests in flight, which a latency spike at 1,000 calls/s
/// exceeds.
const CALL_CONNECTIONS: usize = 8;

/// Latencies and failures of a set of calls.
#[derive(Default)]
struct Tally {
    issued: usize,
    samples: Vec<Duration>,
    failed: HashMap<String, usize>,
}

impl Tally {
    fn summary(mut self) -> Calls {
        self.samples.sort_unstable();
        Calls {
            issued: self.issued,
            failed: self.failed.values().sum(),
            p50: percentile(&self.samples, 0.50),
            p99: percentile(&self.samples, 0.99),
            p999: percentile(&self.samples, 0.999),
            failure: self.failed.into_iter().max_by_key(|(_, n)| *n),
        }
    }
}

/// Issues `call_rate` calls per second for `call_time` to random nodes over `clients`
/// (each with the daemon it is connected to) in turn, each timed from its request to
/// its answer on the operator socket. Returns every call's figures, then those of the
/// calls made through the daemon the node was connected to, and through another.
async fn calls(
    clients: &[(usize, ApiClient)],
    fleet: &Fleet,
    n: usize,
    options: &Options,
) -> Result<(Calls, Calls, Calls), BenchError> {
    // [through the node's daemon, through another]
    let tallies = Arc::new(Mutex::new([Tally::default(), Tally::default()]));
    let mut rng = chacha20::ChaCha20Rng::seed_from_u64(7);
    let total = (f64::from(options.call_rate) * options.call_time.as_secs_f64()) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(options.call_rate.max(1)),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    for k in 0..total {
        tick.tick().await;
        let i = rng.next_u64() as usize % n;
        let node = enrol::device_id(i);
        let (via, api) = &clients[k % clients.len()];
        let elsewhere = usize::from(fleet.daemon_of(i) != *via);
        let (api, tallies) = (api.clone(), tallies.clone());
        tallies.lock().unwrap_or_else(PoisonError::into_inner)[elsewhere].issued += 1;
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
            let mut tallies = tallies.lock().unwrap_or_else(PoisonError::into_inner);
            let tally = &mut tallies[elsewhere];
            match r {
                Ok(res) if res.state == v1::CallState::Succeeded as i32 && res.output == input => {
                    tally.samples.push(took);
                }
                other => {
                    let why = match other {
                        Ok(res) if res.state == v1::CallState::Succeeded as i32 => {
                            "succeeded with another output".to_owned()
                        }
                        Ok(res) => format!("state {} ({})", res.state, res.message),
                        Err(e) => e.to_string(),
                    };
                    *tally.failed.entry(why).or_default() += 1;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let [here, there] =
        std::mem::take(&mut *tallies.lock().unwrap_or_else(PoisonError::into_inner));
    let mut all = Tally {
        issued: here.issued + there.issued,
        samples: [here.samples.as_slice(), there.samples.as_slice()].concat(),
        failed: here.failed.clone(),
    };
    for (why, count) in &there.failed {
        *all.failed.entry(why.clone()).or_default() += count;
    }
    Ok((all.summary(), here.summary(), there.summary()))
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
    // A stream that breaks (the daemon cut it) is resumed where it stopped.
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
                Err(daemon::api::ClientError::Disconnected { .. })
                    if stream.next_seq() > from_seq =>
                {
                    from_seq = stream.next_seq();
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
