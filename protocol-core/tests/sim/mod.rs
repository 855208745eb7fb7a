//! Deterministic simulation: one daemon-role peer (a journaled `DaemonSession` per node)
//! and several node-role peers over an in-memory network, with a simulated clock, stores
//! with latency, failures and outages, process crashes, and one seed for every random
//! choice.
//!
//! Every session is driven through `protocol_core::pump`, as every real driver is: one
//! `Pump` per side of a link (and one between connections), the bytes the network
//! delivered in a per-side input queue (`drive::Received`), the frames the pump writes
//! cut back into frames by their length prefixes before the lossy network takes them,
//! journal batches staged with `Batch::stage` and confirmed later by the id it returned,
//! and buffers lent from the process's pools (`drive::Pools`; `pump::Slots` on a
//! microcontroller). The application takes its events and gives its commands at the
//! pump's `Events` step, so a command never meets `NoStorage`.
//!
//! Fault model. In production a session rides on a reliable ordered transport (a QUIC
//! stream, TLS over TCP); what fails there is the *connection*. The simulated link is
//! harsher: within a connection it drops, duplicates, delays and reorders frames, and it
//! cuts connections at random. The session treats what a reliable transport would never
//! produce as a broken connection: a duplicate seq is dropped, a seq beyond the next one
//! (a hole) closes the connection with an error, and the next connection resumes from
//! the receiver's position. Stores are slow, sometimes fail a batch, and now and then
//! fail every batch for a while (an outage); a failed batch must come back once its
//! retry deadline passed, not before. A store also confirms late and twice: the session
//! must refuse such a confirmation and change nothing. The daemon and Linux nodes crash
//! (their sessions are rebuilt from what their journals committed; batches in flight
//! commit or not), and microcontrollers reboot (their RAM is gone). A Linux node may
//! find a corrupt or foreign journal when it restarts: `restore` must refuse it with a
//! typed error, and the node starts over as one that lost its memory.
//!
//! Two profiles. `Standard`: Linux nodes with 8 KiB frames. `Microcontroller`: every
//! node has 2 KiB frames and a one-frame inbox, the daemon's calls are often large,
//! frames reach nodes in bursts (a radio that wakes every `BURST_MS`) and are read in
//! small chunks, so inboxes refuse frames (backpressure) and the pump holds them.
//!
//! Durability of what the applications learn. The daemon application commits what it
//! learns from events together with the next journal batch of that session (one
//! transaction holds the application's effect and the session's position), and so does a
//! Linux node's application; until then it is pending and a crash discards it. Running a
//! call is a side effect no crash takes back. A microcontroller's application acts at
//! once (it has no store).

pub mod check;
pub mod corrupt;
pub mod drive;
pub mod journal;
pub mod rng;

use std::collections::{BTreeMap, BTreeSet};

use protocol_core::frame::HEADER_LEN;
use protocol_core::pump::Slots;
use protocol_core::session::{
    BatchId, CallState, Config, DaemonSession, INTERRUPTED, Instant, JournalRead, MemJournal,
    NodeSession, NotRun, Overflow, OwnedDaemonEvent, OwnedLateAnswer, OwnedNodeEvent, OwnedOutcome,
    SessionError, SetupError, Slot,
};
use protocol_core::wire::{
    self, CallId, Capabilities, CapabilityDescriptor, Message, Outcome, Payload, Register,
    RejectCode, Seq, SessionId, Stage,
};

use check::{Checker, StreamKey, event_fp, result_fp, stage_fp};
use drive::{Did, End, NodeBufs, Offers, Pools};
use journal::{Batch, OwnedOp};
use rng::SimRng;

/// Fault rates. Per frame unless said otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub loss: f64,
    pub duplicate: f64,
    /// A frame delayed by up to `reorder_extra_ms` more, so later frames overtake it.
    pub reorder: f64,
    pub reorder_extra_ms: u64,
    pub delay_ms: (u64, u64),
    /// Per node and simulated second.
    pub disconnect_per_s: f64,
    /// Per simulated second: the daemon process crashes and restarts.
    pub daemon_restart_per_s: f64,
    /// Per Linux node and simulated second: the node process crashes and restarts.
    pub linux_restart_per_s: f64,
    /// Per microcontroller and simulated second: it reboots, RAM gone.
    pub mcu_reboot_per_s: f64,
    /// Per journal batch (the daemon's group commit fails as a whole).
    pub journal_fail: f64,
    /// Time from a batch reaching the store to its commit or failure.
    pub store_latency_ms: (u64, u64),
    /// Per Linux-node batch and per daemon group commit: the process crashes while it
    /// is in flight; the batch committed or not at even odds.
    pub crash_in_flight: f64,
    /// Per store (the daemon's, each Linux node's) and simulated second: an outage of
    /// `outage_ms` starts, in which every batch fails.
    pub outage_per_s: f64,
    pub outage_ms: (u64, u64),
    /// Per Linux-node restart: the journal it finds is corrupt or foreign.
    pub corrupt_journal: f64,
    /// Per daemon restart and session: a corrupt copy of the session's journal is
    /// offered to `restore` before the real one.
    pub journal_probe: f64,
    /// Per confirmation: first a late one naming the batch before, then a duplicate.
    pub stale_confirmation: f64,
}

pub const DEFAULT_FAULTS: Faults = Faults {
    loss: 0.10,
    duplicate: 0.05,
    reorder: 0.05,
    reorder_extra_ms: 150,
    delay_ms: (1, 40),
    disconnect_per_s: 0.05,
    daemon_restart_per_s: 0.03,
    linux_restart_per_s: 0.03,
    mcu_reboot_per_s: 0.02,
    journal_fail: 0.02,
    store_latency_ms: (0, 20),
    crash_in_flight: 0.001,
    outage_per_s: 0.02,
    outage_ms: (200, 10_000),
    corrupt_journal: 0.25,
    journal_probe: 0.2,
    stale_confirmation: 0.05,
};

const CALM: Faults = Faults {
    loss: 0.0,
    duplicate: 0.0,
    reorder: 0.0,
    reorder_extra_ms: 0,
    delay_ms: (1, 40),
    disconnect_per_s: 0.0,
    daemon_restart_per_s: 0.0,
    linux_restart_per_s: 0.0,
    mcu_reboot_per_s: 0.0,
    journal_fail: 0.0,
    store_latency_ms: (0, 20),
    crash_in_flight: 0.0,
    outage_per_s: 0.0,
    outage_ms: (0, 0),
    corrupt_journal: 0.0,
    journal_probe: 0.0,
    stale_confirmation: 0.0,
};

/// What the nodes are and how their frames arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub enum Profile {
    /// Linux nodes with 8 KiB frames; every frame arrives on its own.
    #[default]
    Standard,
    /// Every node with 2 KiB frames and a one-frame inbox, large calls, frames to nodes
    /// in bursts and read in small chunks.
    Microcontroller,
}

#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub seed: u64,
    pub faults: Faults,
    /// A harness fault: once, on a resumed connection, drop one node->daemon data frame
    /// and renumber the following ones so the receiver cannot notice the hole.
    pub planted_bug: bool,
    /// `None`: drawn from the seed (one run in three is `Microcontroller`).
    pub profile: Option<Profile>,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            faults: DEFAULT_FAULTS,
            planted_bug: false,
            profile: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub seed: u64,
    pub profile: Profile,
    pub violations: Vec<String>,
    pub nodes: usize,
    pub linux_nodes: usize,
    pub sim_ms: u64,
    /// Stream messages accepted by the senders' APIs and committed, both directions.
    pub messages: u64,
    pub frames: u64,
    pub frames_lost: u64,
    pub calls: u64,
    pub connections: u64,
    pub daemon_restarts: u32,
    pub linux_restarts: u32,
    pub mcu_reboots: u32,
    /// Crashes that found a journal batch in flight.
    pub crashes_in_flight: u32,
    pub batches: u64,
    pub failed_batches: u64,
    /// `JournalFailed` events the applications saw.
    pub journal_failed_events: u64,
    /// Storage lent from and given back to the pools (Linux nodes and the daemon).
    pub lends: u64,
    pub reclaims: u64,
    pub gaps: u64,
    pub full: u64,
    /// Frames a session refused with `InboxFull` (backpressure): the pump offered them
    /// again later.
    pub inbox_refusals: u64,
    /// Frames taken ahead of a refused one (the acknowledgement it may wait for).
    pub taken_ahead: u64,
    /// Times a pump waited without reading while received bytes were waiting.
    pub backpressure_waits: u64,
    /// Longest a pump held received bytes back before it read again, and how often the
    /// connection ended while it held some.
    pub longest_hold_ms: u64,
    pub holds_cut: u64,
    /// Linux-node restarts that found a corrupt or foreign journal: refused, and the
    /// node started a new session.
    pub corrupt_journals: u64,
    /// Daemon restarts: corrupt copies of a session's journal `restore` refused.
    pub journal_probes: u64,
    /// What `restore` said about each refused journal, by corruption.
    pub refused_journals: BTreeMap<String, u64>,
    /// Late and duplicate confirmations the sessions refused.
    pub stale_confirmations: u64,
    pub outages: u64,
    /// Batches failed because their store was in an outage.
    pub outage_failures: u64,
    /// Failed batches emitted again after their retry deadline.
    pub retries: u64,
    /// Longest wait of a failed batch for its retry.
    pub longest_retry_ms: u64,
    /// Committed deliveries of frames the planted bug renumbered.
    pub planted_hits: u32,
    /// Digest of every frame on the wire and every committed journal op, with times:
    /// equal digests, equal runs.
    pub digest: u64,
    /// Final call states the daemon application committed, by kind.
    pub finals: BTreeMap<String, u64>,
    pub cancels: u64,
    pub node_timeouts: u64,
    pub interrupted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Journaled: a restart rebuilds its session from what its store committed.
    Linux,
    /// RAM-only, refuses new messages when its replay buffer is full.
    Mcu,
    /// RAM-only, evicts its oldest telemetry when full.
    McuEvict,
}

const MAX_FRAME_DAEMON: u32 = 16 * 1024;
/// Every node's frame limit in the `Microcontroller` profile.
const SMALL_FRAME: u32 = 2048;
/// Polls of one drain before a session that keeps producing output is a violation.
const DRAIN_LIMIT: usize = 10_000;
/// Payload of the occasional call too large for a microcontroller's frames.
const BIG_PAYLOAD: usize = 3_000;
/// `Microcontroller`: payloads of the large calls that still fit a frame (most of the
/// one-frame inbox), and how often a call is one.
const LARGE_CALL: (u64, u64) = (300, 1_700);
const LARGE_CALL_SHARE: f64 = 0.3;
/// `Microcontroller`: frames reach nodes at multiples of this, and are read in chunks of
/// at most `RX_CHUNK` bytes.
const BURST_MS: u64 = 25;
const RX_CHUNK: u64 = 512;

fn timers(mut c: Config) -> Config {
    c.idle_timeout_ms = 3_000;
    c.keep_alive_ms = 1_000;
    c.handshake_timeout_ms = 1_000;
    c.ack_timeout_ms = 1_500;
    c
}

fn daemon_config() -> Config {
    timers(Config::server(4096).with_max_frame(MAX_FRAME_DAEMON))
}

fn node_config(kind: Kind, profile: Profile) -> Config {
    match kind {
        Kind::Linux => {
            let frame = match profile {
                Profile::Standard => 8 * 1024,
                Profile::Microcontroller => SMALL_FRAME,
            };
            timers(Config::server(4096).with_max_frame(frame))
        }
        Kind::Mcu => timers(Config::embedded(1024)),
        Kind::McuEvict => {
            let mut c = timers(Config::embedded(700));
            c.overflow = Overflow::EvictOldest;
            c
        }
    }
}

/// What an application learned or did that its store commits with the session's next
/// journal batch.
#[derive(Debug, Clone)]
enum Obs {
    Accepted {
        key: StreamKey,
        seq: Seq,
        fp: String,
        oversized: bool,
    },
    Delivered {
        key: StreamKey,
        seq: Seq,
        fp: String,
        planted: bool,
    },
    Gap {
        key: StreamKey,
        from: Seq,
        to: Seq,
    },
    CallIssued {
        node: usize,
        id: CallId,
        oversized: bool,
    },
    CallUpdate {
        node: usize,
        id: CallId,
        state: CallState,
        interrupted: bool,
    },
    /// The daemon started a new session for a node that came back without its memory.
    Reset {
        node: usize,
        new_inc: u32,
        unacked: Option<(Seq, Seq)>,
        peer_lost_from: Seq,
        old_session: SessionId,
    },
}

/// A store's account of one session's batches: failures in a row, when a failed batch
/// may come back, and the last batch confirmed (for late and duplicate confirmations).
#[derive(Debug, Clone, Copy, Default)]
struct Retry {
    fails: u32,
    failed_at: u64,
    due: Option<u64>,
    last: Option<BatchId>,
}

/// The retry delay `SANS_IO.md` states: 50 ms, doubling with every failure in a row,
/// at most 5 s.
fn retry_delay(fails: u32) -> u64 {
    (50u64 << (fails.saturating_sub(1)).min(16)).min(5_000)
}

impl Retry {
    fn failed(&mut self, now: u64) {
        self.fails += 1;
        self.failed_at = now;
        self.due = Some(now + retry_delay(self.fails));
    }

    fn committed(&mut self) {
        self.fails = 0;
    }

    /// A batch was staged at `now`: if a failed one waited, its deadline must have
    /// passed. Returns how long it waited.
    fn staged(&mut self, now: u64) -> Result<Option<u64>, String> {
        match self.due.take() {
            Some(due) if now < due => Err(format!(
                "a failed batch came back {} ms before its retry deadline ({} failures in a row)",
                due - now,
                self.fails
            )),
            Some(_) => Ok(Some(now - self.failed_at)),
            None => Ok(None),
        }
    }
}

struct Running {
    call_id: CallId,
    progress_at: Option<u64>,
    done_at: u64,
    cancelled: bool,
}

struct Node {
    kind: Kind,
    name: String,
    session: NodeSession<Vec<u8>>,
    /// The pump of the current link (or of the time between links) and its input.
    end: End,
    bufs: NodeBufs,
    /// Lives of the node's memory: a microcontroller reboot, or a Linux node that found
    /// its journal unusable, starts a new stream.
    incarnation: u32,
    link: Option<u64>,
    reconnect_at: Option<u64>,
    next_send_at: u64,
    /// The application has commands to give at the next `Events` step.
    app_due: bool,
    registered: bool,
    counter: u64,
    running: Vec<Running>,
    timeout: u64,
    links_made: u64,
    /// What the node answers to a replay of each call (its progress or its result).
    answer_fp: BTreeMap<CallId, String>,
    /// Linux: the committed journal, the batch in flight (due at), what the
    /// application learned since the last batch, the store's retry account and its
    /// outage.
    journal: MemJournal,
    batch: Option<(u64, Batch<Obs>)>,
    pending: Vec<Obs>,
    retry: Retry,
    store_down_until: u64,
}

/// The daemon's side of one node.
struct DSession {
    session: DaemonSession<Vec<u8>>,
    end: End,
    journal: MemJournal,
    timeout: u64,
    /// What the application learned from the session since its last batch.
    pending: Vec<Obs>,
    /// A batch of this session is in the store.
    in_flight: bool,
    retry: Retry,
    /// The node life whose frames this session saw last (attributes its deliveries).
    view_inc: u32,
    /// The session id before the input being handled (a reset replaces it).
    pre_session: SessionId,
    /// Committed: the node life whose stream this session carries.
    stream_inc: u32,
    /// Committed: calls the application knows open.
    open_calls: Vec<CallId>,
    next_call_at: u64,
    app_due: bool,
}

struct DaemonSide {
    s: Vec<DSession>,
    /// Batches waiting for the next group commit, and when it happens.
    staged: Vec<(usize, Batch<Obs>)>,
    flush_at: Option<u64>,
    bufs: Pools,
    store_down_until: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToDaemon,
    ToNode,
}

struct InFlight {
    at: u64,
    order: u64,
    bytes: Vec<u8>,
}

struct Link {
    node: usize,
    incarnation: u32,
    /// Ordinal of this connection for its node.
    ordinal: u64,
    to_daemon: Vec<InFlight>,
    to_node: Vec<InFlight>,
    /// Delivery time of the last in-order frame, per direction.
    last_at_daemon: u64,
    last_at_node: u64,
    /// Planted bug: data frames on this link are renumbered down by one.
    renumber: bool,
}

pub struct World {
    cfg: SimConfig,
    profile: Profile,
    now: u64,
    rng: SimRng,
    net_rng: SimRng,
    store_rng: SimRng,
    nodes: Vec<Node>,
    daemon: DaemonSide,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    next_order: u64,
    checker: Checker,
    report: Report,
    planted_armed: bool,
    /// Renumbered frames the daemon took as its next message: (node, seq).
    planted: BTreeSet<(usize, Seq)>,
    calm: bool,
    /// A session could not be rebuilt: the run stops.
    aborted: bool,
    trace: Option<usize>,
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn mix(digest: u64, bytes: &[u8]) -> u64 {
    let mut h = digest;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3);
    }
    h
}

fn outcome_kind(o: &Outcome<'_>) -> &'static str {
    match o {
        Outcome::Success(_) => "success",
        Outcome::Failed { .. } => "failed",
        Outcome::Rejected { .. } => "rejected",
        Outcome::Cancelled => "cancelled",
        Outcome::TimedOut => "timed-out",
    }
}

fn owned_kind(o: &OwnedOutcome) -> &'static str {
    outcome_kind(&o.as_outcome())
}

/// A journal's positions, stored seqs, calls and call window, for a failure message.
fn describe(j: &MemJournal) -> String {
    let mut seqs = Vec::new();
    let _ = j.messages(&mut |seq, _| seqs.push(seq));
    let mut calls = Vec::new();
    let _ = j.calls(&mut |c| calls.push((c.id, c.seq, c.state)));
    let mut seen = Vec::new();
    let _ = j.seen(&mut |slot, c| seen.push((slot, c.id, c.slot)));
    format!(
        "meta {:?}, messages {seqs:?}, calls {calls:?}, window {seen:?}",
        j.stored_meta()
    )
}

const fn capability(name: &'static str, needs_approval: bool) -> CapabilityDescriptor<'static> {
    CapabilityDescriptor {
        name,
        version: 1,
        input: "application/json",
        output: "application/json",
        needs_approval,
    }
}

const CAPABILITIES: &[CapabilityDescriptor<'static>] = &[
    capability("sys.health", false),
    capability("url.open", true),
    capability("slow.job", false),
];

fn new_node_session(kind: Kind, profile: Profile, name: &str) -> NodeSession<Vec<u8>> {
    let c = node_config(kind, profile);
    // A microcontroller hands its static buffer over at boot; the pump takes it back
    // into its slot whenever the session holds nothing, and lends it again. A Linux
    // node's pump lends from the pool on demand.
    let storage = (kind != Kind::Linux).then(|| vec![0; c.storage_len()]);
    NodeSession::new(c, name, "sim", storage).expect("node session")
}

fn node_bufs(kind: Kind, profile: Profile) -> NodeBufs {
    let c = node_config(kind, profile);
    match kind {
        Kind::Linux => NodeBufs::Pooled(Pools::default()),
        Kind::Mcu | Kind::McuEvict => NodeBufs::Static(Slots::new(
            None,
            vec![0; c.max_frame as usize],
            vec![0; c.transmit_len()],
        )),
    }
}

/// Restores a node from `journal`, lending storage if it holds messages.
fn restore_node(
    c: Config,
    name: &str,
    journal: &MemJournal,
    storage: impl FnOnce() -> Vec<u8>,
) -> Result<NodeSession<Vec<u8>>, SetupError> {
    match NodeSession::restore(c, name, "sim", None, journal) {
        Err(SetupError::StorageNeeded) => {
            NodeSession::restore(c, name, "sim", Some(storage()), journal)
        }
        r => r,
    }
}

impl World {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = SimRng::new(cfg.seed);
        let net_rng = rng.fork();
        let store_rng = rng.fork();
        let profile = cfg.profile.unwrap_or_else(|| {
            if rng.chance(1.0 / 3.0) {
                Profile::Microcontroller
            } else {
                Profile::Standard
            }
        });
        let n = rng.range(2, 6) as usize;
        let dc = daemon_config();
        let mut nodes = Vec::new();
        let mut daemon = DaemonSide {
            s: Vec::new(),
            staged: Vec::new(),
            flush_at: None,
            bufs: Pools::default(),
            store_down_until: 0,
        };
        let mut checker = Checker::default();
        let mut linux_nodes = 0;
        for i in 0..n {
            let kind = *rng.pick(&[Kind::Linux, Kind::Mcu, Kind::McuEvict]);
            if kind == Kind::Linux {
                linux_nodes += 1;
            }
            let name = format!("node-{i}");
            let session = new_node_session(kind, profile, &name);
            let ds = DaemonSession::new(dc, &name, &mut rng).expect("daemon session");
            if kind == Kind::McuEvict {
                checker.allow_gaps(StreamKey::Up {
                    node: i,
                    incarnation: 0,
                });
            }
            nodes.push(Node {
                kind,
                name,
                session,
                end: End::new(),
                bufs: node_bufs(kind, profile),
                incarnation: 0,
                link: None,
                reconnect_at: Some(rng.range(0, 200)),
                next_send_at: rng.range(0, 500),
                app_due: false,
                registered: false,
                counter: 0,
                running: Vec::new(),
                timeout: 0,
                links_made: 0,
                answer_fp: BTreeMap::new(),
                journal: MemJournal::new(),
                batch: None,
                pending: Vec::new(),
                retry: Retry::default(),
                store_down_until: 0,
            });
            daemon.s.push(DSession {
                pre_session: ds.session_id(),
                session: ds,
                end: End::new(),
                journal: MemJournal::new(),
                timeout: 0,
                pending: Vec::new(),
                in_flight: false,
                retry: Retry::default(),
                view_inc: 0,
                stream_inc: 0,
                open_calls: Vec::new(),
                next_call_at: rng.range(0, 800),
                app_due: false,
            });
        }
        World {
            cfg,
            profile,
            now: 0,
            rng,
            net_rng,
            store_rng,
            nodes,
            daemon,
            links: BTreeMap::new(),
            next_link: 1,
            next_order: 0,
            checker,
            report: Report {
                seed: cfg.seed,
                profile,
                nodes: n,
                linux_nodes,
                ..Report::default()
            },
            planted_armed: cfg.planted_bug,
            planted: BTreeSet::new(),
            calm: false,
            aborted: false,
            trace: std::env::var("TERN_SIM_TRACE")
                .ok()
                .and_then(|s| s.parse().ok()),
        }
    }

    /// Runs a faulty phase, then a calm one long enough for every deadline to pass and
    /// every stream to drain, then checks the invariants.
    pub fn run(mut self) -> Report {
        let faulty_until = self.rng.range(20_000, 60_000);
        let end = faulty_until + 30_000;
        while self.now <= end && !self.aborted {
            let faulty = self.now < faulty_until;
            self.calm = !faulty;
            self.check_retries();
            self.deliver_due();
            self.store_due();
            self.fire_timeouts();
            self.node_apps(faulty);
            self.daemon_app(faulty);
            let next = self.next_time();
            let step = next.saturating_sub(self.now).clamp(1, 50);
            if faulty {
                self.step_faults(step);
            }
            self.now += step;
        }
        self.report.sim_ms = self.now;
        if !self.aborted {
            self.final_checks();
        }
        if self.report.journal_failed_events != self.report.failed_batches {
            self.checker.violation(format!(
                "{} batches failed, {} JournalFailed events",
                self.report.failed_batches, self.report.journal_failed_events
            ));
        }
        let violations = std::mem::take(&mut self.checker).finish();
        self.report.violations = violations;
        self.report
    }

    fn faults(&self) -> Faults {
        // The calm phase has a perfect network and reliable stores.
        if self.calm { CALM } else { self.cfg.faults }
    }

    fn next_time(&self) -> u64 {
        let mut t = u64::MAX;
        for l in self.links.values() {
            for f in l.to_daemon.iter().chain(&l.to_node) {
                t = t.min(f.at);
            }
        }
        for n in &self.nodes {
            t = t.min(n.timeout);
            t = t.min(n.reconnect_at.unwrap_or(u64::MAX));
            t = t.min(n.next_send_at);
            t = t.min(n.batch.as_ref().map_or(u64::MAX, |(due, _)| *due));
            for r in &n.running {
                t = t.min(r.done_at).min(r.progress_at.unwrap_or(u64::MAX));
            }
        }
        for d in &self.daemon.s {
            t = t.min(d.timeout).min(d.next_call_at);
        }
        t.min(self.daemon.flush_at.unwrap_or(u64::MAX))
    }

    /// A failed batch comes back at its retry deadline: the session's `poll_timeout`
    /// names it, and handling it opens the batch. One still missing a tick later is
    /// stuck.
    fn check_retries(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(due) = self.nodes[i].retry.due.filter(|due| *due < self.now) {
                self.nodes[i].retry.due = None;
                let v = format!(
                    "node {i}: a failed batch did not come back at its retry deadline {due}"
                );
                self.checker.violation(v);
            }
            if let Some(due) = self.daemon.s[i].retry.due.filter(|due| *due < self.now) {
                self.daemon.s[i].retry.due = None;
                let v = format!(
                    "daemon session {i}: a failed batch did not come back at its retry deadline {due}"
                );
                self.checker.violation(v);
            }
        }
    }

    /// Checks that only hold once the calm phase is over: every pump is at rest, so
    /// every buffer nobody needs is back with its lender.
    fn final_checks(&mut self) {
        for i in 0..self.nodes.len() {
            let d = &self.daemon.s[i];
            if d.session.has_storage() || d.session.unacked() > 0 {
                let v = format!(
                    "daemon session {i} still holds messages at the end: {:?}",
                    d.session
                );
                self.checker.violation(v);
            }
            if !d.pending.is_empty() || d.in_flight || d.retry.due.is_some() {
                let v = format!("daemon session {i}: observations never committed");
                self.checker.violation(v);
            }
            let n = &self.nodes[i];
            if n.session.has_storage() || n.session.unacked() > 0 {
                let v = format!("node {i} still holds messages at the end: {:?}", n.session);
                self.checker.violation(v);
            }
            if let NodeBufs::Pooled(p) = &n.bufs {
                let (out, strays) = p.outstanding();
                if out > 0 || strays > 0 {
                    let v =
                        format!("node {i}: {out} buffers still lent, {strays} given back twice");
                    self.checker.violation(v);
                }
            }
            if !n.pending.is_empty() || n.batch.is_some() || n.retry.due.is_some() {
                let v = format!("node {i}: observations never committed");
                self.checker.violation(v);
            }
        }
        let (out, strays) = self.daemon.bufs.outstanding();
        if out > 0 || strays > 0 {
            let v = format!("daemon: {out} buffers still lent, {strays} given back twice");
            self.checker.violation(v);
        }
        for i in 0..self.nodes.len() {
            if let NodeBufs::Pooled(p) = &self.nodes[i].bufs {
                self.report.lends += p.storage.taken;
                self.report.reclaims += p.storage.returned;
            }
        }
        self.report.lends += self.daemon.bufs.storage.taken;
        self.report.reclaims += self.daemon.bufs.storage.returned;
    }

    /// Counts the storage lends of pools a crash throws away.
    fn retire(&mut self, p: &Pools) {
        self.report.lends += p.storage.taken;
        self.report.reclaims += p.storage.returned;
    }

    // ----- tracing -----

    fn trace(&self, node: usize, what: std::fmt::Arguments<'_>) {
        if self.trace == Some(node) {
            eprintln!("{:>7} n{node} {what}", self.now);
        }
    }

    // ----- network -----

    fn transmit(&mut self, link_id: u64, dir: Dir, bytes: &[u8]) {
        if let Some(l) = self.links.get(&link_id) {
            let node = l.node;
            let d = if dir == Dir::ToDaemon { "->" } else { "<-" };
            if self.trace == Some(node) {
                let m = wire::decode_message(&bytes[HEADER_LEN..]);
                self.trace(node, format_args!("L{link_id} {d} {m:?}"));
            }
        }
        self.report.frames += 1;
        self.report.digest = mix(self.report.digest ^ self.now, bytes);
        let f = self.faults();
        let bursts = self.profile == Profile::Microcontroller && dir == Dir::ToNode;
        let mut bytes = bytes.to_vec();
        let Some(link) = self.links.get_mut(&link_id) else {
            return;
        };
        if dir == Dir::ToDaemon && (self.planted_armed || link.renumber) {
            let is_data = matches!(
                wire::decode_message(&bytes[HEADER_LEN..]),
                Ok(Message::Data(_))
            );
            if is_data {
                if link.renumber {
                    let renumbered = {
                        let Ok(Message::Data(mut d)) = wire::decode_message(&bytes[HEADER_LEN..])
                        else {
                            unreachable!("decoded just above")
                        };
                        d.seq -= 1;
                        let mut out = vec![0; bytes.len() + 16];
                        let n = wire::encode_message(&Message::Data(d), u32::MAX, &mut out)
                            .expect("re-encode");
                        out.truncate(n);
                        out
                    };
                    bytes = renumbered;
                } else if link.ordinal >= 2 {
                    // The planted bug: this frame vanishes, the rest close ranks.
                    self.planted_armed = false;
                    link.renumber = true;
                    return;
                }
            }
        }
        let copies = if self.net_rng.chance(f.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.net_rng.chance(f.loss) {
                self.report.frames_lost += 1;
                continue;
            }
            let delay = self.net_rng.range(f.delay_ms.0, f.delay_ms.1);
            let last = match dir {
                Dir::ToDaemon => &mut link.last_at_daemon,
                Dir::ToNode => &mut link.last_at_node,
            };
            // A radio that wakes every `BURST_MS` hands over what came meanwhile at once.
            let arrival = |t: u64| {
                if bursts {
                    t.div_ceil(BURST_MS) * BURST_MS
                } else {
                    t
                }
            };
            // In order unless this frame is the one held back, which later ones overtake.
            let at = if self.net_rng.chance(f.reorder) {
                arrival(self.now + delay + self.net_rng.range(1, f.reorder_extra_ms))
            } else {
                let at = arrival((self.now + delay).max(*last));
                *last = at;
                at
            };
            self.next_order += 1;
            let item = InFlight {
                at,
                order: self.next_order,
                bytes: bytes.clone(),
            };
            match dir {
                Dir::ToDaemon => link.to_daemon.push(item),
                Dir::ToNode => link.to_node.push(item),
            }
        }
    }

    /// Hands every frame due now to the side that receives it: each side gets its
    /// frames in order, as the bytes its transport read, then its pump runs.
    fn deliver_due(&mut self) {
        let now = self.now;
        let mut sides = Vec::new();
        for (id, l) in &mut self.links {
            for dir in [Dir::ToDaemon, Dir::ToNode] {
                let q = match dir {
                    Dir::ToDaemon => &mut l.to_daemon,
                    Dir::ToNode => &mut l.to_node,
                };
                if !q.iter().any(|f| f.at <= now) {
                    continue;
                }
                let (mut due, rest): (Vec<InFlight>, Vec<InFlight>) =
                    std::mem::take(q).into_iter().partition(|f| f.at <= now);
                *q = rest;
                due.sort_by_key(|f| (f.at, f.order));
                let first = (due[0].at, due[0].order);
                let frames: Vec<Vec<u8>> = due.into_iter().map(|f| f.bytes).collect();
                sides.push((first, *id, dir, frames));
            }
        }
        sides.sort_by_key(|s| s.0);
        for (_, id, dir, frames) in sides {
            self.receive(id, dir, frames);
        }
    }

    /// Puts received frames into one side's input and runs its pump.
    fn receive(&mut self, link_id: u64, dir: Dir, frames: Vec<Vec<u8>>) {
        // A drain before this one may have closed the link.
        let Some(link) = self.links.get(&link_id) else {
            return;
        };
        let node = link.node;
        if self.nodes[node].link != Some(link_id) {
            return;
        }
        match dir {
            Dir::ToDaemon => {
                let input = &mut self.daemon.s[node].end.input;
                for f in frames {
                    input.push(f);
                }
                self.drain_daemon(node);
            }
            Dir::ToNode => {
                if self.profile == Profile::Microcontroller {
                    // A small receive buffer: the burst comes in reads that cut frames.
                    let mut bytes = frames.concat();
                    while !bytes.is_empty() {
                        let n = (self.net_rng.range(1, RX_CHUNK) as usize).min(bytes.len());
                        let rest = bytes.split_off(n);
                        self.nodes[node].end.input.push(bytes);
                        bytes = rest;
                    }
                } else {
                    for f in frames {
                        self.nodes[node].end.input.push(f);
                    }
                }
                self.drain_node(node);
            }
        }
    }

    fn connect(&mut self, node: usize) {
        let id = self.next_link;
        self.next_link += 1;
        self.report.connections += 1;
        let n = &mut self.nodes[node];
        n.links_made += 1;
        let ordinal = n.links_made;
        self.links.insert(
            id,
            Link {
                node,
                incarnation: n.incarnation,
                ordinal,
                to_daemon: Vec::new(),
                to_node: Vec::new(),
                renumber: false,
                last_at_daemon: 0,
                last_at_node: 0,
            },
        );
        n.link = Some(id);
        n.reconnect_at = None;
        let now = at(self.now);
        n.session.handle_connected(now);
        self.daemon.s[node].session.handle_connected(now);
        self.new_node_end(node);
        self.new_daemon_end(node);
        self.drain_node(node);
        self.drain_daemon(node);
    }

    /// Ends a connection; each side that still used it hears of it.
    fn disconnect(&mut self, link_id: u64) {
        let Some(link) = self.links.remove(&link_id) else {
            return;
        };
        let node = link.node;
        let now = at(self.now);
        if self.nodes[node].link == Some(link_id) {
            self.nodes[node].link = None;
            self.nodes[node].reconnect_at = Some(self.now + self.rng.range(20, 600));
            self.nodes[node].session.handle_disconnected(now);
            self.new_node_end(node);
            self.drain_node(node);
        }
        self.daemon.s[node].session.handle_disconnected(now);
        self.new_daemon_end(node);
        self.drain_daemon(node);
    }

    /// The connection's pump is released (its buffers go back, with the session's
    /// storage if it holds nothing); a new one drives the session from here.
    fn new_node_end(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let mut old = std::mem::replace(&mut n.end, End::new());
        old.pump.release(&mut n.session, &mut n.bufs);
        self.cut(old.held_since);
    }

    fn new_daemon_end(&mut self, i: usize) {
        let d = &mut self.daemon.s[i];
        let mut old = std::mem::replace(&mut d.end, End::new());
        old.pump.release(&mut d.session, &mut self.daemon.bufs);
        self.cut(old.held_since);
    }

    /// A connection ended while its pump held received bytes back.
    fn cut(&mut self, held_since: Option<u64>) {
        if let Some(since) = held_since {
            self.report.holds_cut += 1;
            self.held(Some(self.now - since));
        }
    }

    // ----- applications -----

    /// Runs a node command at the application's turn: storage is lent by then.
    fn node_cmd<T>(
        &mut self,
        i: usize,
        cmd: impl FnOnce(&mut NodeSession<Vec<u8>>) -> Result<T, SessionError>,
    ) -> Result<T, SessionError> {
        let r = cmd(&mut self.nodes[i].session);
        if matches!(r, Err(SessionError::NoStorage)) {
            let v = format!("node {i}: a command met NoStorage at the application's turn");
            self.checker.violation(v);
        }
        r
    }

    fn daemon_cmd<T>(
        &mut self,
        i: usize,
        cmd: impl FnOnce(&mut DaemonSession<Vec<u8>>) -> Result<T, SessionError>,
    ) -> Result<T, SessionError> {
        let r = cmd(&mut self.daemon.s[i].session);
        if matches!(r, Err(SessionError::NoStorage)) {
            let v =
                format!("daemon session {i}: a command met NoStorage at the application's turn");
            self.checker.violation(v);
        }
        r
    }

    // ----- draining sessions -----

    /// What the pump hid: refused frames (counted; a refusal must move nothing, and
    /// `NoStorage` cannot happen, since the pump lends first) and the data frames the
    /// daemon took as its next message (for the planted bug).
    fn take_offers(&mut self, offers: &mut Offers, node: usize, daemon: bool) {
        let who = if daemon {
            format!("daemon session {node}")
        } else {
            format!("node {node}")
        };
        self.report.inbox_refusals += std::mem::take(&mut offers.inbox_full);
        self.report.taken_ahead += std::mem::take(&mut offers.ahead);
        if std::mem::take(&mut offers.no_storage) > 0 {
            let v = format!("{who}: a frame met NoStorage though the pump lends first");
            self.checker.violation(v);
        }
        for v in std::mem::take(&mut offers.moved) {
            self.checker.violation(format!("{who}: {v}"));
        }
        for seq in std::mem::take(&mut offers.next_data) {
            self.planted.insert((node, seq));
        }
    }

    /// Runs the node's pump until it waits: the application's turns, journal batches,
    /// frames in and out.
    fn drain_node(&mut self, i: usize) {
        let now = at(self.now);
        let mut offers = Offers::default();
        for _ in 0..DRAIN_LIMIT {
            let did = {
                let n = &mut self.nodes[i];
                drive::poll(now, &mut n.end, &mut n.session, &mut n.bufs, &mut offers)
            };
            self.take_offers(&mut offers, i, false);
            match did {
                Did::Events => {
                    while let Some(ev) = self.nodes[i].session.poll_event() {
                        let ev: OwnedNodeEvent = ev.into();
                        self.node_event(i, ev);
                    }
                    if std::mem::take(&mut self.nodes[i].app_due) {
                        self.node_act(i);
                    }
                }
                Did::Journal(id, ops) => self.stage_node(i, id, ops),
                Did::Out { bytes, close } => self.write(i, Dir::ToDaemon, &bytes, close),
                Did::Wait(w) => {
                    let n = &mut self.nodes[i];
                    n.timeout = w.deadline.map_or(u64::MAX, Instant::as_millis);
                    let held = n.end.waits(self.now, &w);
                    if n.end.held_since.is_some() {
                        self.report.backpressure_waits += 1;
                    }
                    self.held(held);
                    return;
                }
            }
        }
        self.checker
            .violation(format!("node {i}: the session never came to rest"));
    }

    fn drain_daemon(&mut self, i: usize) {
        let now = at(self.now);
        let link = self.nodes[i].link.and_then(|l| self.links.get(&l));
        let mut offers = Offers {
            watch_data: link.is_some_and(|l| l.renumber),
            ..Offers::default()
        };
        let incarnation = link.map(|l| l.incarnation);
        for _ in 0..DRAIN_LIMIT {
            let did = {
                let d = &mut self.daemon.s[i];
                d.pre_session = d.session.session_id();
                if let Some(inc) = incarnation {
                    d.view_inc = inc;
                }
                drive::poll(
                    now,
                    &mut d.end,
                    &mut d.session,
                    &mut self.daemon.bufs,
                    &mut offers,
                )
            };
            self.take_offers(&mut offers, i, true);
            match did {
                Did::Events => {
                    while let Some(ev) = self.daemon.s[i].session.poll_event() {
                        let ev: OwnedDaemonEvent = ev.into();
                        self.daemon_event(i, ev);
                    }
                    if std::mem::take(&mut self.daemon.s[i].app_due) {
                        self.daemon_act(i);
                    }
                }
                Did::Journal(id, ops) => self.stage_daemon(i, id, ops),
                Did::Out { bytes, close } => self.write(i, Dir::ToNode, &bytes, close),
                Did::Wait(w) => {
                    let d = &mut self.daemon.s[i];
                    d.timeout = w.deadline.map_or(u64::MAX, Instant::as_millis);
                    let held = d.end.waits(self.now, &w);
                    if d.end.held_since.is_some() {
                        self.report.backpressure_waits += 1;
                    }
                    self.held(held);
                    return;
                }
            }
        }
        self.checker.violation(format!(
            "daemon session {i}: the session never came to rest"
        ));
    }

    fn held(&mut self, ms: Option<u64>) {
        if let Some(ms) = ms {
            self.report.longest_hold_ms = self.report.longest_hold_ms.max(ms);
        }
    }

    /// Writes what a pump handed over: cut into frames for the network, each checked;
    /// with `close`, the connection ends after them.
    fn write(&mut self, i: usize, dir: Dir, bytes: &[u8], close: bool) {
        let (who, counts) = match dir {
            Dir::ToDaemon => (format!("node {i}"), self.nodes[i].end.pump.take_counts()),
            Dir::ToNode => (
                format!("daemon session {i}"),
                self.daemon.s[i].end.pump.take_counts(),
            ),
        };
        let frames = drive::split_frames(bytes).unwrap_or_else(|e| {
            self.checker
                .violation(format!("{who}: the pump wrote broken frames: {e}"));
            Vec::new()
        });
        if counts.frames_out != frames.len() as u64 || counts.bytes_out != bytes.len() as u64 {
            let v = format!(
                "{who}: the pump counted {counts:?} for {} frames of {} bytes",
                frames.len(),
                bytes.len()
            );
            self.checker.violation(v);
        }
        for f in &frames {
            self.check_durable(i, dir, f);
            if let Some(link) = self.nodes[i].link {
                self.transmit(link, dir, f);
            }
        }
        if close && let Some(link) = self.nodes[i].link {
            self.disconnect(link);
        }
    }

    /// What the application learned: pending until the next batch commits on a
    /// journaled node, acted on at once on a microcontroller.
    fn node_obs(&mut self, i: usize, obs: Obs) {
        if self.nodes[i].kind == Kind::Linux {
            self.nodes[i].pending.push(obs);
        } else {
            self.apply_obs(obs);
        }
    }

    fn apply_obs(&mut self, obs: Obs) {
        match obs {
            Obs::Accepted {
                key,
                seq,
                fp,
                oversized,
            } => {
                self.report.messages += 1;
                if oversized {
                    self.checker.oversized(key, seq);
                }
                self.checker.accepted(key, seq, fp);
            }
            Obs::Delivered {
                key,
                seq,
                fp,
                planted,
            } => {
                if let StreamKey::Up { node, incarnation } = key {
                    self.daemon.s[node].stream_inc = incarnation;
                }
                if planted {
                    self.report.planted_hits += 1;
                }
                self.checker.delivered(key, seq, fp);
            }
            Obs::Gap { key, from, to } => {
                if let StreamKey::Up { node, incarnation } = key {
                    self.daemon.s[node].stream_inc = incarnation;
                }
                self.report.gaps += 1;
                self.checker.gap(key, from, to);
            }
            Obs::CallIssued {
                node,
                id,
                oversized,
            } => {
                self.report.calls += 1;
                self.daemon.s[node].open_calls.push(id);
                self.checker.call_issued(node, id, oversized);
            }
            Obs::CallUpdate {
                node,
                id,
                state,
                interrupted,
            } => {
                self.checker.call_update(node, id, state, interrupted);
                if state.is_final() {
                    let kind = match state {
                        CallState::Failed if interrupted => "Failed(interrupted)".to_string(),
                        CallState::Rejected(code) => format!("Rejected({code:?})"),
                        other => format!("{other:?}"),
                    };
                    *self.report.finals.entry(kind).or_default() += 1;
                    self.daemon.s[node].open_calls.retain(|c| *c != id);
                }
            }
            Obs::Reset {
                node,
                new_inc,
                unacked,
                peer_lost_from,
                old_session,
            } => {
                let old = StreamKey::Up {
                    node,
                    incarnation: self.daemon.s[node].stream_inc,
                };
                self.checker.reported_lost_from(old, peer_lost_from);
                let down = StreamKey::Down {
                    node,
                    session: old_session,
                };
                self.checker.reported_unacked(down, unacked);
                self.daemon.s[node].stream_inc = new_inc;
            }
        }
    }

    /// Frames a journaled side sends may only carry what its journal committed.
    fn check_durable(&mut self, i: usize, dir: Dir, frame: &[u8]) {
        let journal = match dir {
            Dir::ToNode => &self.daemon.s[i].journal,
            Dir::ToDaemon if self.nodes[i].kind == Kind::Linux => &self.nodes[i].journal,
            Dir::ToDaemon => return,
        };
        let meta = journal.stored_meta();
        let (sent, received, session) =
            meta.map_or((0, 0, None), |m| (m.last_sent, m.received, m.session));
        let msg = match wire::decode_message(&frame[HEADER_LEN..]) {
            Ok(m) => m,
            Err(e) => {
                let v = format!("node {i}: {dir:?} frame does not decode: {e:?}");
                return self.checker.violation(v);
            }
        };
        let problem = match &msg {
            Message::Data(d) if d.seq > sent => "a message not yet journaled",
            Message::Data(d) if d.ack > received => "an ack beyond the journaled position",
            Message::Ack(a) if a.received > received => "an ack beyond the journaled position",
            Message::HelloAck(a) if Some(a.session) != session => "a session id not journaled",
            Message::HelloAck(a) if a.received > received => "a position not journaled",
            Message::Hello(h) => match h.resume {
                Some(r) if Some(r.session) != session => "a session id not journaled",
                Some(r) if r.received > received => "a position not journaled",
                _ => return,
            },
            _ => return,
        };
        let v = format!("node {i}: {dir:?} sent {problem} ({msg:?}; journal {meta:?})");
        self.checker.violation(v);
    }

    /// A batch the daemon session's pump staged goes into the store's next group
    /// commit, with what the application learned since the last one.
    fn stage_daemon(&mut self, i: usize, id: Option<BatchId>, ops: Vec<OwnedOp>) {
        let Some(id) = id.filter(|_| !ops.is_empty()) else {
            let v = format!(
                "daemon session {i}: a batch of {} ops staged as {id:?}",
                ops.len()
            );
            return self.checker.violation(v);
        };
        let d = &mut self.daemon.s[i];
        if d.in_flight {
            let v = format!("daemon session {i}: a second batch while one is in flight");
            return self.checker.violation(v);
        }
        match d.retry.staged(self.now) {
            Ok(Some(waited)) => {
                self.report.retries += 1;
                self.report.longest_retry_ms = self.report.longest_retry_ms.max(waited);
            }
            Ok(None) => {}
            Err(v) => self.checker.violation(format!("daemon session {i}: {v}")),
        }
        self.trace(i, format_args!("daemon {id}: {} ops", ops.len()));
        self.report.batches += 1;
        let d = &mut self.daemon.s[i];
        let obs = std::mem::take(&mut d.pending);
        d.in_flight = true;
        self.daemon.staged.push((i, Batch { id, ops, obs }));
        if self.daemon.flush_at.is_none() {
            let (lo, hi) = self.faults().store_latency_ms;
            self.daemon.flush_at = Some(self.now + self.store_rng.range(lo, hi));
        }
    }

    fn stage_node(&mut self, i: usize, id: Option<BatchId>, ops: Vec<OwnedOp>) {
        if self.nodes[i].kind != Kind::Linux {
            let v = format!("node {i}: a journal batch from a session without a journal");
            return self.checker.violation(v);
        }
        let Some(id) = id.filter(|_| !ops.is_empty()) else {
            let v = format!("node {i}: a batch of {} ops staged as {id:?}", ops.len());
            return self.checker.violation(v);
        };
        if self.nodes[i].batch.is_some() {
            let v = format!("node {i}: a second batch while one is in flight");
            return self.checker.violation(v);
        }
        match self.nodes[i].retry.staged(self.now) {
            Ok(Some(waited)) => {
                self.report.retries += 1;
                self.report.longest_retry_ms = self.report.longest_retry_ms.max(waited);
            }
            Ok(None) => {}
            Err(v) => self.checker.violation(format!("node {i}: {v}")),
        }
        self.trace(i, format_args!("node {id}: {} ops", ops.len()));
        self.report.batches += 1;
        let (lo, hi) = self.faults().store_latency_ms;
        let due = self.now + self.store_rng.range(lo, hi);
        let n = &mut self.nodes[i];
        let obs = std::mem::take(&mut n.pending);
        n.batch = Some((due, Batch { id, ops, obs }));
    }

    fn fire_timeouts(&mut self) {
        let now = at(self.now);
        for i in 0..self.nodes.len() {
            if self.nodes[i].timeout <= self.now {
                self.nodes[i].session.handle_timeout(now);
                self.drain_node(i);
            }
            if self.daemon.s[i].timeout <= self.now {
                self.daemon.s[i].session.handle_timeout(now);
                self.drain_daemon(i);
            }
        }
    }

    // ----- stores -----

    fn store_due(&mut self) {
        if self.daemon.flush_at.is_some_and(|t| t <= self.now) {
            self.daemon_flush();
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i]
                .batch
                .as_ref()
                .is_some_and(|(due, _)| *due <= self.now)
            {
                self.node_store(i);
            }
        }
    }

    fn commit_ops(&mut self, batch: &Batch<Obs>) {
        for op in &batch.ops {
            self.report.digest = mix(self.report.digest ^ self.now, &op.digest_bytes());
        }
    }

    /// Whether the store fails this batch: in an outage it fails every one.
    fn store_fails(&mut self, down_until: u64) -> bool {
        if !self.calm && self.now < down_until {
            self.report.outage_failures += 1;
            return true;
        }
        let p = self.faults().journal_fail;
        self.store_rng.chance(p)
    }

    /// A store confirms late or twice (`named` is a batch confirmed before): refused,
    /// and nothing changes.
    fn stale_node(&mut self, i: usize, named: BatchId) {
        let failed = self.store_rng.chance(0.5);
        let r = drive::bogus_confirmation(&mut self.nodes[i].session, at(self.now), named, failed);
        match r {
            Ok(()) => self.report.stale_confirmations += 1,
            Err(v) => self.checker.violation(format!("node {i}: {v}")),
        }
    }

    fn stale_daemon(&mut self, i: usize, named: BatchId) {
        let failed = self.store_rng.chance(0.5);
        let r =
            drive::bogus_confirmation(&mut self.daemon.s[i].session, at(self.now), named, failed);
        match r {
            Ok(()) => self.report.stale_confirmations += 1,
            Err(v) => self.checker.violation(format!("daemon session {i}: {v}")),
        }
    }

    /// The daemon's store commits every staged batch in one transaction.
    fn daemon_flush(&mut self) {
        self.daemon.flush_at = None;
        let f = self.faults();
        if self.store_rng.chance(f.crash_in_flight) {
            let committed = self.store_rng.chance(0.5);
            self.restart_daemon(Some(committed));
            return;
        }
        let down_until = self.daemon.store_down_until;
        let fail = self.store_fails(down_until);
        let group = std::mem::take(&mut self.daemon.staged);
        let now = at(self.now);
        for (i, batch) in group {
            self.daemon.s[i].in_flight = false;
            if let Some(prev) = self.daemon.s[i].retry.last
                && self.store_rng.chance(f.stale_confirmation)
            {
                self.stale_daemon(i, prev);
            }
            if fail {
                self.trace(i, format_args!("daemon {} failed", batch.id));
                self.report.failed_batches += 1;
                let d = &mut self.daemon.s[i];
                let mut obs = batch.obs;
                obs.append(&mut d.pending);
                d.pending = obs;
                if let Err(e) = d.session.handle_journal_failed(now, batch.id) {
                    let v = format!(
                        "daemon session {i}: the failure of {} refused: {e}",
                        batch.id
                    );
                    self.checker.violation(v);
                }
                self.daemon.s[i].retry.failed(self.now);
            } else {
                self.trace(i, format_args!("daemon {} committed", batch.id));
                batch.apply(&mut self.daemon.s[i].journal);
                self.commit_ops(&batch);
                for o in batch.obs {
                    self.apply_obs(o);
                }
                let d = &mut self.daemon.s[i];
                if let Err(e) = d.session.handle_journal_committed(now, batch.id) {
                    let v = format!(
                        "daemon session {i}: the commit of {} refused: {e}",
                        batch.id
                    );
                    self.checker.violation(v);
                }
                self.daemon.s[i].retry.committed();
            }
            self.daemon.s[i].retry.last = Some(batch.id);
            if self.store_rng.chance(f.stale_confirmation) {
                self.stale_daemon(i, batch.id);
            }
            self.drain_daemon(i);
        }
    }

    fn node_store(&mut self, i: usize) {
        let f = self.faults();
        if self.store_rng.chance(f.crash_in_flight) {
            let committed = self.store_rng.chance(0.5);
            self.restart_linux(i, Some(committed));
            return;
        }
        let Some((_, batch)) = self.nodes[i].batch.take() else {
            return;
        };
        let now = at(self.now);
        if let Some(prev) = self.nodes[i].retry.last
            && self.store_rng.chance(f.stale_confirmation)
        {
            self.stale_node(i, prev);
        }
        let down_until = self.nodes[i].store_down_until;
        if self.store_fails(down_until) {
            self.trace(i, format_args!("node {} failed", batch.id));
            self.report.failed_batches += 1;
            let n = &mut self.nodes[i];
            let mut obs = batch.obs;
            obs.append(&mut n.pending);
            n.pending = obs;
            if let Err(e) = n.session.handle_journal_failed(now, batch.id) {
                let v = format!("node {i}: the failure of {} refused: {e}", batch.id);
                self.checker.violation(v);
            }
            self.nodes[i].retry.failed(self.now);
        } else {
            self.trace(i, format_args!("node {} committed", batch.id));
            batch.apply(&mut self.nodes[i].journal);
            self.commit_ops(&batch);
            for o in batch.obs {
                self.apply_obs(o);
            }
            if let Err(e) = self.nodes[i]
                .session
                .handle_journal_committed(now, batch.id)
            {
                let v = format!("node {i}: the commit of {} refused: {e}", batch.id);
                self.checker.violation(v);
            }
            self.nodes[i].retry.committed();
        }
        self.nodes[i].retry.last = Some(batch.id);
        if self.store_rng.chance(f.stale_confirmation) {
            self.stale_node(i, batch.id);
        }
        self.drain_node(i);
    }

    // ----- applications -----

    fn up_key(&self, i: usize) -> StreamKey {
        StreamKey::Up {
            node: i,
            incarnation: self.nodes[i].incarnation,
        }
    }

    /// Node applications with something to do get their turn: their pump's next
    /// `Events` step, where storage is lent.
    fn node_apps(&mut self, faulty: bool) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].link.is_none()
                && self.nodes[i].reconnect_at.is_some_and(|t| t <= self.now)
            {
                self.connect(i);
            }
            let now = self.now;
            let n = &self.nodes[i];
            let send = faulty && n.next_send_at <= now;
            let step = n
                .running
                .iter()
                .any(|r| r.done_at <= now || r.progress_at.is_some_and(|p| p <= now));
            if send || step {
                self.nodes[i].app_due = true;
                self.drain_node(i);
            }
        }
    }

    /// The node application's commands: a reading or registration, and the next step
    /// of every call due.
    fn node_act(&mut self, i: usize) {
        let now = self.now;
        if !self.calm && self.nodes[i].next_send_at <= now {
            self.node_send(i);
            self.nodes[i].next_send_at = now + self.rng.range(30, 400);
        }
        let due: Vec<usize> = (0..self.nodes[i].running.len())
            .filter(|k| {
                let r = &self.nodes[i].running[*k];
                r.done_at <= now || r.progress_at.is_some_and(|p| p <= now)
            })
            .collect();
        for k in due.into_iter().rev() {
            self.step_call(i, k);
        }
    }

    fn node_send(&mut self, i: usize) {
        let key = self.up_key(i);
        let res = if !self.nodes[i].registered {
            let capabilities = Capabilities::new(CAPABILITIES).expect("within the limit");
            let fp = format!("register:{}", capabilities.len());
            self.node_cmd(i, |s| s.register(Register { capabilities }))
                .map(|seq| (seq, fp))
        } else {
            let n = &mut self.nodes[i];
            n.counter += 1;
            let data = format!("{}:{}:{}", n.name, n.incarnation, n.counter).into_bytes();
            let fp = event_fp("reading", &data);
            self.node_cmd(i, |s| {
                s.send_event(
                    "reading",
                    Payload {
                        content_type: "text/plain",
                        data: &data,
                    },
                )
            })
            .map(|seq| (seq, fp))
        };
        match res {
            Ok((seq, fp)) => {
                self.nodes[i].registered = true;
                let obs = Obs::Accepted {
                    key,
                    seq,
                    fp,
                    oversized: false,
                };
                self.node_obs(i, obs);
            }
            Err(_) => self.report.full += 1,
        }
    }

    /// A running call reaches its next step: progress, or its outcome.
    fn step_call(&mut self, i: usize, k: usize) {
        let key = self.up_key(i);
        let now = self.now;
        let r = &mut self.nodes[i].running[k];
        let call_id = r.call_id;
        if r.progress_at.is_some_and(|p| p <= now) {
            r.progress_at = None;
            let stage = if call_id.is_multiple_of(3) {
                Stage::AwaitingApproval
            } else {
                Stage::Running
            };
            match self.node_cmd(i, |s| s.progress(call_id, stage, "")) {
                Ok(seq) => {
                    let fp = stage_fp(call_id, stage);
                    self.nodes[i].answer_fp.insert(call_id, fp.clone());
                    let obs = Obs::Accepted {
                        key,
                        seq,
                        fp,
                        oversized: false,
                    };
                    self.node_obs(i, obs);
                }
                Err(_) => self.report.full += 1,
            }
            return;
        }
        if r.done_at > now {
            return;
        }
        let outcome = if r.cancelled {
            Outcome::Cancelled
        } else {
            match call_id % 5 {
                0 => Outcome::Failed { reason: "boom" },
                1 if call_id.is_multiple_of(3) => Outcome::Rejected {
                    code: RejectCode::Denied,
                    reason: "no",
                },
                _ => Outcome::Success(Payload {
                    content_type: "application/json",
                    data: b"{}",
                }),
            }
        };
        let fp = result_fp(call_id, outcome_kind(&outcome));
        match self.node_cmd(i, |s| s.complete(call_id, outcome)) {
            Ok(seq) => {
                self.nodes[i].answer_fp.insert(call_id, fp.clone());
                self.nodes[i].running.remove(k);
                let obs = Obs::Accepted {
                    key,
                    seq,
                    fp,
                    oversized: false,
                };
                self.node_obs(i, obs);
            }
            Err(SessionError::Full) => {
                self.report.full += 1;
                self.nodes[i].running[k].done_at = now + 50;
            }
            Err(_) => {
                self.nodes[i].running.remove(k);
            }
        }
    }

    fn node_event(&mut self, i: usize, ev: OwnedNodeEvent) {
        self.trace(i, format_args!("node event {ev:?}"));
        let up = self.up_key(i);
        let down = self.nodes[i]
            .session
            .session_id()
            .map(|session| StreamKey::Down { node: i, session });
        let delivered = |seq, fp| {
            down.map(|key| Obs::Delivered {
                key,
                seq,
                fp,
                planted: false,
            })
        };
        let accepted = |seq, fp| Obs::Accepted {
            key: up,
            seq,
            fp,
            oversized: false,
        };
        let mut obs = Vec::new();
        let mut delivery = None;
        match ev {
            OwnedNodeEvent::Call { seq, call_id, .. } => {
                delivery = Some(delivered(seq, format!("call:{call_id}")));
                if self.nodes[i].kind == Kind::Linux {
                    let mut durable = false;
                    let _ = self.nodes[i]
                        .journal
                        .seen(&mut |_, c| durable |= c.id == call_id);
                    if !durable {
                        let v = format!(
                            "node {i}: call {call_id} handed out before its window entry is journaled"
                        );
                        self.checker.violation(v);
                    }
                }
                // Running it is a side effect: nothing takes it back.
                self.checker.call_executed(i, call_id);
                self.nodes[i]
                    .answer_fp
                    .insert(call_id, stage_fp(call_id, Stage::Running));
                let now = self.now;
                let done_at = now + self.rng.range(5, 1_500);
                let progress_at = self
                    .rng
                    .chance(0.5)
                    .then(|| now + self.rng.range(1, done_at - now));
                self.nodes[i].running.push(Running {
                    call_id,
                    progress_at,
                    done_at,
                    cancelled: false,
                });
            }
            OwnedNodeEvent::DuplicateCall {
                seq,
                call_id,
                answer,
            } => {
                delivery = Some(delivered(seq, format!("call:{call_id}")));
                if let Some(answer) = answer {
                    let fp = self.nodes[i]
                        .answer_fp
                        .get(&call_id)
                        .cloned()
                        .unwrap_or_else(|| stage_fp(call_id, Stage::Running));
                    obs.push(accepted(answer, fp));
                }
            }
            OwnedNodeEvent::CallNotRun {
                seq,
                call_id,
                why,
                answer,
            } => {
                delivery = Some(delivered(seq, format!("call:{call_id}")));
                let fp = match why {
                    NotRun::Busy => result_fp(call_id, "rejected"),
                    NotRun::Expired => result_fp(call_id, "timed-out"),
                };
                self.nodes[i].answer_fp.insert(call_id, fp.clone());
                if answer > 0 {
                    obs.push(accepted(answer, fp));
                }
            }
            OwnedNodeEvent::Cancel {
                seq,
                call_id,
                active,
            } => {
                delivery = Some(delivered(seq, format!("cancel:{call_id}")));
                if active && self.rng.chance(0.7) {
                    let now = self.now;
                    if let Some(r) = self.nodes[i]
                        .running
                        .iter_mut()
                        .find(|r| r.call_id == call_id)
                    {
                        r.cancelled = true;
                        r.done_at = now;
                        r.progress_at = None;
                    }
                }
            }
            OwnedNodeEvent::CallExpired { call_id, answer } => {
                self.report.node_timeouts += 1;
                let fp = result_fp(call_id, "timed-out");
                self.nodes[i].answer_fp.insert(call_id, fp.clone());
                self.nodes[i].running.retain(|r| r.call_id != call_id);
                obs.push(accepted(answer, fp));
            }
            OwnedNodeEvent::CallInterrupted { call_id, answer } => {
                self.report.interrupted += 1;
                if self.nodes[i].kind != Kind::Linux {
                    let v =
                        format!("node {i}: call {call_id} interrupted on a node without a journal");
                    self.checker.violation(v);
                }
                let fp = result_fp(call_id, "failed");
                self.nodes[i].answer_fp.insert(call_id, fp.clone());
                obs.push(accepted(answer, fp));
            }
            OwnedNodeEvent::Gap { from, to } => {
                delivery = Some(down.map(|key| Obs::Gap { key, from, to }));
            }
            OwnedNodeEvent::SessionReset { .. } => self
                .checker
                .violation(format!("node {i}: the daemon lost its session")),
            OwnedNodeEvent::JournalFailed => self.report.journal_failed_events += 1,
            OwnedNodeEvent::Connected { .. } | OwnedNodeEvent::Disconnected(_) => {}
        }
        match delivery {
            Some(Some(o)) => self.node_obs(i, o),
            Some(None) => self
                .checker
                .violation(format!("node {i}: delivery before a session")),
            None => {}
        }
        for o in obs {
            self.node_obs(i, o);
        }
    }

    /// Daemon applications due to call get their turn at their pump's next `Events`.
    fn daemon_app(&mut self, faulty: bool) {
        for i in 0..self.nodes.len() {
            if !faulty || self.daemon.s[i].next_call_at > self.now {
                continue;
            }
            self.daemon.s[i].next_call_at = self.now + self.rng.range(50, 700);
            self.daemon.s[i].app_due = true;
            self.drain_daemon(i);
        }
    }

    /// The daemon application cancels its oldest open call, or calls.
    fn daemon_act(&mut self, i: usize) {
        let key = StreamKey::Down {
            node: i,
            session: self.daemon.s[i].session.session_id(),
        };
        if self.rng.chance(0.15) {
            if let Some(&id) = self.daemon.s[i].open_calls.first()
                && let Ok(seq) = self.daemon_cmd(i, |s| s.cancel(id))
            {
                self.report.cancels += 1;
                self.daemon.s[i].pending.push(Obs::Accepted {
                    key,
                    seq,
                    fp: format!("cancel:{id}"),
                    oversized: false,
                });
            }
            return;
        }
        let cap = *self.rng.pick(&["sys.health", "url.open", "slow.job"]);
        let timeout = self.rng.range(300, 10_000) as u32;
        // Now and then a call too large for a microcontroller's frames; on small
        // frames, often one that fills most of a one-frame inbox.
        let big = self.rng.chance(0.02);
        let large =
            !big && self.profile == Profile::Microcontroller && self.rng.chance(LARGE_CALL_SHARE);
        let data: Vec<u8> = if big {
            vec![b'x'; BIG_PAYLOAD]
        } else if large {
            vec![b'l'; self.rng.range(LARGE_CALL.0, LARGE_CALL.1) as usize]
        } else {
            b"{\"q\":1}".to_vec()
        };
        let now = at(self.now);
        let res = self.daemon_cmd(i, |s| {
            s.call(
                now,
                cap,
                Payload {
                    content_type: "application/json",
                    data: &data,
                },
                timeout,
            )
        });
        match res {
            Ok(id) => {
                let seq = self.daemon.s[i].session.last_sent();
                let node_max = node_config(self.nodes[i].kind, self.profile).max_frame;
                let oversized = big && node_max < BIG_PAYLOAD as u32;
                let p = &mut self.daemon.s[i].pending;
                p.push(Obs::CallIssued {
                    node: i,
                    id,
                    oversized,
                });
                p.push(Obs::Accepted {
                    key,
                    seq,
                    fp: format!("call:{id}"),
                    oversized,
                });
            }
            Err(_) => self.report.full += 1,
        }
    }

    fn daemon_event(&mut self, i: usize, ev: OwnedDaemonEvent) {
        self.trace(i, format_args!("daemon event {ev:?}"));
        let key = StreamKey::Up {
            node: i,
            incarnation: self.daemon.s[i].view_inc,
        };
        let delivered = |seq, fp, planted| Obs::Delivered {
            key,
            seq,
            fp,
            planted,
        };
        let planted = |w: &mut Self, seq| w.planted.remove(&(i, seq));
        let obs = match ev {
            OwnedDaemonEvent::Register { seq, capabilities } => {
                let p = planted(self, seq);
                vec![delivered(
                    seq,
                    format!("register:{}", capabilities.len()),
                    p,
                )]
            }
            OwnedDaemonEvent::Event { seq, name, payload } => {
                let p = planted(self, seq);
                vec![delivered(seq, event_fp(&name, &payload.data), p)]
            }
            OwnedDaemonEvent::CallUpdate {
                call_id,
                state,
                seq,
                outcome,
            } => {
                let mut obs = Vec::new();
                if let Some(seq) = seq {
                    let fp = match (&outcome, state) {
                        (Some(o), _) => result_fp(call_id, owned_kind(o)),
                        (None, CallState::AwaitingApproval) => {
                            stage_fp(call_id, Stage::AwaitingApproval)
                        }
                        (None, _) => stage_fp(call_id, Stage::Running),
                    };
                    let p = planted(self, seq);
                    obs.push(delivered(seq, fp, p));
                }
                let interrupted = matches!(
                    &outcome,
                    Some(OwnedOutcome::Failed { reason }) if reason == INTERRUPTED
                );
                obs.push(Obs::CallUpdate {
                    node: i,
                    id: call_id,
                    state,
                    interrupted,
                });
                obs
            }
            OwnedDaemonEvent::LateAnswer { seq, answer } => {
                let fp = match answer {
                    OwnedLateAnswer::Progress { call_id, stage, .. } => stage_fp(call_id, stage),
                    OwnedLateAnswer::Result { call_id, outcome } => {
                        result_fp(call_id, owned_kind(&outcome))
                    }
                };
                let p = planted(self, seq);
                vec![delivered(seq, fp, p)]
            }
            OwnedDaemonEvent::Gap { from, to } => vec![Obs::Gap { key, from, to }],
            OwnedDaemonEvent::SessionReset {
                unacked,
                peer_lost_from,
            } => {
                // A Linux node loses its memory only with its journal: a new life of
                // the node, whose stream the daemon has not carried yet.
                let d = &self.daemon.s[i];
                if self.nodes[i].kind == Kind::Linux && d.view_inc == d.stream_inc {
                    let v = format!(
                        "node {i}: a Linux node's session was reset, though it kept its journal"
                    );
                    self.checker.violation(v);
                }
                vec![Obs::Reset {
                    node: i,
                    new_inc: self.daemon.s[i].view_inc,
                    unacked,
                    peer_lost_from,
                    old_session: self.daemon.s[i].pre_session,
                }]
            }
            OwnedDaemonEvent::JournalFailed => {
                self.report.journal_failed_events += 1;
                Vec::new()
            }
            OwnedDaemonEvent::Connected { .. } | OwnedDaemonEvent::Disconnected(_) => Vec::new(),
        };
        self.daemon.s[i].pending.extend(obs);
    }

    // ----- faults -----

    fn step_faults(&mut self, step_ms: u64) {
        let f = self.cfg.faults;
        let scale = step_ms as f64 / 1000.0;
        for i in 0..self.nodes.len() {
            if let Some(link) = self.nodes[i].link
                && self.rng.chance(f.disconnect_per_s * scale)
            {
                self.disconnect(link);
            }
            match self.nodes[i].kind {
                Kind::Linux => {
                    if self.now >= self.nodes[i].store_down_until
                        && self.rng.chance(f.outage_per_s * scale)
                    {
                        let len = self.rng.range(f.outage_ms.0, f.outage_ms.1);
                        self.nodes[i].store_down_until = self.now + len;
                        self.report.outages += 1;
                        self.trace(i, format_args!("node store down for {len} ms"));
                    }
                    if self.rng.chance(f.linux_restart_per_s * scale) {
                        self.restart_linux(i, None);
                    }
                }
                Kind::Mcu | Kind::McuEvict => {
                    if self.rng.chance(f.mcu_reboot_per_s * scale) {
                        self.reboot_mcu(i);
                    }
                }
            }
        }
        if self.now >= self.daemon.store_down_until && self.rng.chance(f.outage_per_s * scale) {
            let len = self.rng.range(f.outage_ms.0, f.outage_ms.1);
            self.daemon.store_down_until = self.now + len;
            self.report.outages += 1;
            for i in 0..self.nodes.len() {
                self.trace(i, format_args!("daemon store down for {len} ms"));
            }
        }
        if self.rng.chance(f.daemon_restart_per_s * scale) {
            self.restart_daemon(None);
        }
    }

    /// A microcontroller reboots: its session, its buffers' content and its running
    /// calls are gone.
    fn reboot_mcu(&mut self, i: usize) {
        self.report.mcu_reboots += 1;
        self.trace(i, format_args!("microcontroller reboots"));
        let old = self.up_key(i);
        self.checker.sender_restarted(old);
        if let Some(link) = self.nodes[i].link {
            self.disconnect(link);
        }
        let profile = self.profile;
        let n = &mut self.nodes[i];
        n.session = new_node_session(n.kind, profile, &n.name);
        n.bufs = node_bufs(n.kind, profile);
        n.end = End::new();
        n.app_due = false;
        n.incarnation += 1;
        n.registered = false;
        n.running.clear();
        n.answer_fp.clear();
        n.timeout = u64::MAX;
        n.reconnect_at = Some(self.now + self.rng.range(50, 1_000));
        if n.kind == Kind::McuEvict {
            let key = self.up_key(i);
            self.checker.allow_gaps(key);
        }
    }

    /// A Linux node's process crashes: the session object, its pump and buffers, the
    /// application's running calls and everything not committed are gone (a batch in
    /// flight commits or not); the session is rebuilt from the journal, unless the
    /// journal found is corrupt or foreign.
    fn restart_linux(&mut self, i: usize, in_flight_commits: Option<bool>) {
        self.report.linux_restarts += 1;
        let batch = self.nodes[i].batch.take();
        if let Some((_, batch)) = batch {
            self.report.crashes_in_flight += 1;
            let commits = in_flight_commits.unwrap_or_else(|| self.store_rng.chance(0.5));
            self.trace(
                i,
                format_args!("node crashes, {} in flight commits: {commits}", batch.id),
            );
            if commits {
                batch.apply(&mut self.nodes[i].journal);
                self.commit_ops(&batch);
                for o in batch.obs {
                    self.apply_obs(o);
                }
            }
        } else {
            self.trace(i, format_args!("node crashes"));
        }
        // The daemon sees the connection drop; the node's session object is gone.
        if let Some(link_id) = self.nodes[i].link.take() {
            self.links.remove(&link_id);
            self.daemon.s[i].session.handle_disconnected(at(self.now));
            self.new_daemon_end(i);
            self.drain_daemon(i);
        }
        let profile = self.profile;
        let old = std::mem::replace(&mut self.nodes[i].bufs, node_bufs(Kind::Linux, profile));
        if let NodeBufs::Pooled(p) = &old {
            self.retire(p);
        }
        let n = &mut self.nodes[i];
        n.end = End::new();
        n.app_due = false;
        n.pending.clear();
        n.retry = Retry::default();
        n.running.clear();
        n.registered = false;
        n.timeout = 0;
        n.reconnect_at = Some(self.now + self.rng.range(50, 1_000));
        let c = node_config(Kind::Linux, profile);
        if self.rng.chance(self.cfg.faults.corrupt_journal) {
            return self.start_over(i, c);
        }
        let Node {
            name,
            journal,
            bufs,
            answer_fp,
            session,
            ..
        } = &mut self.nodes[i];
        let restored = restore_node(c, name, journal, || match bufs {
            NodeBufs::Pooled(p) => p.storage.take(c.storage_len()),
            NodeBufs::Static(_) => vec![0; c.storage_len()],
        });
        // A call still running in the journal is answered from it if replayed (its
        // progress as journaled), whatever the lost process had answered.
        let _ = journal.seen(&mut |_, call| {
            if let Slot::Active { stage, .. } = call.slot {
                let fp = stage_fp(call.id, stage.unwrap_or(Stage::Running));
                answer_fp.insert(call.id, fp);
            }
        });
        match restored {
            Ok(s) => *session = s,
            Err(e) => {
                let v = format!(
                    "node {i}: restore from the journal failed: {e}; journal {}",
                    describe(journal)
                );
                self.checker.violation(v);
                self.aborted = true;
            }
        }
    }

    /// The restarted node finds a journal it did not write (corrupt, or another
    /// role's): `restore` must refuse it with a typed error. The node sets it aside and
    /// starts a new session: to the daemon and the checker it lost its memory, like a
    /// rebooted microcontroller.
    fn start_over(&mut self, i: usize, c: Config) {
        let what = *self.rng.pick(corrupt::NODE);
        let bad = corrupt::corrupted(
            &self.nodes[i].journal,
            &self.daemon.s[i].journal,
            true,
            what,
        );
        let r = restore_node(c, &self.nodes[i].name, &bad, || vec![0; c.storage_len()]);
        match corrupt::judge(what, r) {
            Ok(why) => {
                self.report.corrupt_journals += 1;
                let k = format!("node, {what:?}: {why}");
                *self.report.refused_journals.entry(k).or_default() += 1;
            }
            Err(v) => {
                let v = format!("node {i}: {v}; journal {}", describe(&bad));
                self.checker.violation(v);
            }
        }
        self.trace(
            i,
            format_args!("node finds its journal {what:?}, starts over"),
        );
        let old = self.up_key(i);
        self.checker.sender_restarted(old);
        let n = &mut self.nodes[i];
        n.journal = MemJournal::new();
        n.session = NodeSession::new(c, &n.name, "sim", None).expect("node session");
        n.incarnation += 1;
        n.answer_fp.clear();
    }

    /// The daemon process crashes: every session, every pump, the application's
    /// uncommitted knowledge and the staged group commit (committed or not) are gone;
    /// every session is rebuilt from its journal.
    fn restart_daemon(&mut self, in_flight_commits: Option<bool>) {
        self.report.daemon_restarts += 1;
        for i in 0..self.nodes.len() {
            self.trace(i, format_args!("daemon crashes"));
        }
        let group = std::mem::take(&mut self.daemon.staged);
        self.daemon.flush_at = None;
        if !group.is_empty() {
            self.report.crashes_in_flight += 1;
            let commits = in_flight_commits.unwrap_or_else(|| self.store_rng.chance(0.5));
            if commits {
                for (i, batch) in group {
                    batch.apply(&mut self.daemon.s[i].journal);
                    self.commit_ops(&batch);
                    for o in batch.obs {
                        self.apply_obs(o);
                    }
                }
            }
        }
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            let Some(link) = self.links.remove(&id) else {
                continue;
            };
            let node = link.node;
            if self.nodes[node].link == Some(id) {
                self.nodes[node].link = None;
                self.nodes[node].reconnect_at = Some(self.now + self.rng.range(100, 1_500));
                self.nodes[node].session.handle_disconnected(at(self.now));
                self.new_node_end(node);
                self.drain_node(node);
            }
        }
        let old = std::mem::take(&mut self.daemon.bufs);
        self.retire(&old);
        let dc = daemon_config();
        for i in 0..self.nodes.len() {
            let d = &mut self.daemon.s[i];
            d.pending.clear();
            d.in_flight = false;
            d.retry = Retry::default();
            d.app_due = false;
            d.end = End::new();
            d.timeout = 0;
            if self.rng.chance(self.cfg.faults.journal_probe) {
                self.probe_daemon_journal(i, dc);
            }
            let name = &self.nodes[i].name;
            let journal = &self.daemon.s[i].journal;
            let restored = match DaemonSession::restore(dc, name, None, journal, &mut self.rng) {
                Err(SetupError::StorageNeeded) => {
                    let buf = self.daemon.bufs.storage.take(dc.storage_len());
                    DaemonSession::restore(dc, name, Some(buf), journal, &mut self.rng)
                }
                r => r,
            };
            match restored {
                Ok(s) => self.daemon.s[i].session = s,
                Err(e) => {
                    let v = format!(
                        "daemon session {i}: restore from the journal failed: {e}; journal {}",
                        describe(journal)
                    );
                    self.checker.violation(v);
                    self.aborted = true;
                    return;
                }
            }
        }
    }

    /// Offers `restore` a corrupt copy of a daemon session's journal first: it must be
    /// refused with a typed error (the real journal is restored next).
    fn probe_daemon_journal(&mut self, i: usize, dc: Config) {
        let what = *self.rng.pick(corrupt::DAEMON);
        let bad = corrupt::corrupted(
            &self.daemon.s[i].journal,
            &self.nodes[i].journal,
            false,
            what,
        );
        let storage = Some(vec![0; dc.storage_len()]);
        let r = DaemonSession::restore(dc, &self.nodes[i].name, storage, &bad, &mut self.rng);
        match corrupt::judge(what, r) {
            Ok(why) => {
                self.report.journal_probes += 1;
                let k = format!("daemon, {what:?}: {why}");
                *self.report.refused_journals.entry(k).or_default() += 1;
            }
            Err(v) => {
                let v = format!("daemon session {i}: {v}; journal {}", describe(&bad));
                self.checker.violation(v);
            }
        }
    }
}
