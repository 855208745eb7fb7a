//! Deterministic simulation: one daemon-role peer (a journaled `DaemonSession` per node)
//! and several node-role peers over an in-memory network, with a simulated clock, stores
//! with latency and failures, process crashes, and one seed for every random choice.
//!
//! Every session is driven the way a real driver drives it: after each input the
//! application takes the events, the journal ops go to the store as one batch (confirmed
//! later with `handle_journal_committed` or `handle_journal_failed`), frames go to the
//! link, the timer is re-armed from `poll_timeout`, and storage is lent on demand and
//! reclaimed whenever the session holds no message.
//!
//! Fault model. In production a session rides on a reliable ordered transport (a QUIC
//! stream, TLS over TCP); what fails there is the *connection*. The simulated link is
//! harsher: within a connection it drops, duplicates, delays and reorders frames, and it
//! cuts connections at random. The session treats what a reliable transport would never
//! produce as a broken connection: a duplicate seq is dropped, a seq beyond the next one
//! (a hole) closes the connection with an error, and the next connection resumes from
//! the receiver's position. Stores are slow and sometimes fail a batch. The daemon and
//! Linux nodes crash (their sessions are rebuilt from what their journals committed;
//! batches in flight commit or not), and microcontrollers reboot (their RAM is gone).
//!
//! Durability of what the applications learn. The daemon application commits what it
//! learns from events together with the next journal batch of that session (one
//! transaction holds the application's effect and the session's position), and so does a
//! Linux node's application; until then it is pending and a crash discards it. Running a
//! call is a side effect no crash takes back. A microcontroller's application acts at
//! once (it has no store).

pub mod check;
pub mod journal;
pub mod rng;

use std::collections::{BTreeMap, BTreeSet};

use protocol_core::frame::{FrameDecoder, FrameError, HEADER_LEN};
use protocol_core::session::{
    CallState, Config, DaemonSession, INTERRUPTED, Instant, JournalRead, MemJournal, NodeSession,
    NotRun, Overflow, OwnedDaemonEvent, OwnedLateAnswer, OwnedNodeEvent, OwnedOutcome,
    SessionError, SetupError, Slot, Transmit,
};
use protocol_core::wire::{
    self, CallId, Capabilities, CapabilityDescriptor, Message, Outcome, Payload, Register,
    RejectCode, Seq, SessionId, Stage,
};

use check::{Checker, StreamKey, event_fp, result_fp, stage_fp};
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
};

#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub seed: u64,
    pub faults: Faults,
    /// A harness fault: once, on a resumed connection, drop one node->daemon data frame
    /// and renumber the following ones so the receiver cannot notice the hole.
    pub planted_bug: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            faults: DEFAULT_FAULTS,
            planted_bug: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub seed: u64,
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
    pub lends: u64,
    pub reclaims: u64,
    pub gaps: u64,
    pub full: u64,
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
const OUT_BUF: usize = MAX_FRAME_DAEMON as usize + HEADER_LEN;
/// Polls of one drain before a session that keeps producing output is a violation.
const DRAIN_LIMIT: usize = 10_000;
/// Payload of the occasional call too large for a microcontroller's frames.
const BIG_PAYLOAD: usize = 3_000;

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

fn node_config(kind: Kind) -> Config {
    match kind {
        Kind::Linux => timers(Config::server(4096).with_max_frame(8 * 1024)),
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

/// Storage buffers of one process, lent to sessions and reclaimed from them.
#[derive(Debug)]
struct Pool {
    len: usize,
    free: Vec<Vec<u8>>,
    /// Buffers lent out.
    out: usize,
}

impl Pool {
    fn new(len: usize) -> Self {
        Pool {
            len,
            free: Vec::new(),
            out: 0,
        }
    }

    fn take(&mut self) -> Vec<u8> {
        self.out += 1;
        self.free.pop().unwrap_or_else(|| vec![0; self.len])
    }

    fn put(&mut self, buf: Vec<u8>) {
        self.out -= 1;
        self.free.push(buf);
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
    /// Lives of the node's memory: a microcontroller reboot starts a new stream.
    incarnation: u32,
    link: Option<u64>,
    reconnect_at: Option<u64>,
    next_send_at: u64,
    registered: bool,
    counter: u64,
    running: Vec<Running>,
    timeout: u64,
    links_made: u64,
    /// What the node answers to a replay of each call (its progress or its result).
    answer_fp: BTreeMap<CallId, String>,
    /// Linux: the committed journal, the batch in flight (due at), what the
    /// application learned since the last batch, and storage to lend.
    journal: MemJournal,
    batch: Option<(u64, Batch<Obs>)>,
    pending: Vec<Obs>,
    refailed: bool,
    pool: Pool,
}

struct DaemonSide {
    sessions: Vec<DaemonSession<Vec<u8>>>,
    journals: Vec<MemJournal>,
    timeouts: Vec<u64>,
    /// What the application learned from each session since its last batch.
    pending: Vec<Vec<Obs>>,
    /// A batch of this session is in the store.
    in_flight: Vec<bool>,
    /// The last batch failed: the next poll must emit it again.
    refailed: Vec<bool>,
    /// Batches waiting for the next group commit, and when it happens.
    staged: Vec<(usize, Batch<Obs>)>,
    flush_at: Option<u64>,
    /// The node life whose frames this session saw last (attributes its deliveries).
    view_inc: Vec<u32>,
    /// The session id before the input being handled (a reset replaces it).
    pre_session: Vec<SessionId>,
    /// Committed: the node life whose stream this session carries.
    stream_inc: Vec<u32>,
    /// Committed: calls the application knows open.
    open_calls: Vec<Vec<CallId>>,
    next_call_at: Vec<u64>,
    pool: Pool,
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
    dec_daemon: FrameDecoder<Vec<u8>>,
    dec_node: FrameDecoder<Vec<u8>>,
    /// Delivery time of the last in-order frame, per direction.
    last_at_daemon: u64,
    last_at_node: u64,
    /// Planted bug: data frames on this link are renumbered down by one.
    renumber: bool,
}

pub struct World {
    cfg: SimConfig,
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
    /// Transmit buffers (draining one session may drain another).
    bufs: Vec<Vec<u8>>,
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

fn new_node_session(kind: Kind, name: &str) -> NodeSession<Vec<u8>> {
    let c = node_config(kind);
    // A microcontroller lends its static buffer for good; a Linux node lends on demand.
    let storage = (kind != Kind::Linux).then(|| vec![0; c.storage_len()]);
    NodeSession::new(c, name, "sim", storage).expect("node session")
}

impl World {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = SimRng::new(cfg.seed);
        let net_rng = rng.fork();
        let store_rng = rng.fork();
        let n = rng.range(2, 6) as usize;
        let dc = daemon_config();
        let mut nodes = Vec::new();
        let mut daemon = DaemonSide {
            sessions: Vec::new(),
            journals: Vec::new(),
            timeouts: Vec::new(),
            pending: Vec::new(),
            in_flight: Vec::new(),
            refailed: Vec::new(),
            staged: Vec::new(),
            flush_at: None,
            view_inc: Vec::new(),
            pre_session: Vec::new(),
            stream_inc: Vec::new(),
            open_calls: Vec::new(),
            next_call_at: Vec::new(),
            pool: Pool::new(dc.storage_len()),
        };
        let mut checker = Checker::default();
        let mut linux_nodes = 0;
        for i in 0..n {
            let kind = *rng.pick(&[Kind::Linux, Kind::Mcu, Kind::McuEvict]);
            if kind == Kind::Linux {
                linux_nodes += 1;
            }
            let name = format!("node-{i}");
            let session = new_node_session(kind, &name);
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
                incarnation: 0,
                link: None,
                reconnect_at: Some(rng.range(0, 200)),
                next_send_at: rng.range(0, 500),
                registered: false,
                counter: 0,
                running: Vec::new(),
                timeout: 0,
                links_made: 0,
                answer_fp: BTreeMap::new(),
                journal: MemJournal::new(),
                batch: None,
                pending: Vec::new(),
                refailed: false,
                pool: Pool::new(node_config(kind).storage_len()),
            });
            daemon.pre_session.push(ds.session_id());
            daemon.sessions.push(ds);
            daemon.journals.push(MemJournal::new());
            daemon.timeouts.push(0);
            daemon.pending.push(Vec::new());
            daemon.in_flight.push(false);
            daemon.refailed.push(false);
            daemon.view_inc.push(0);
            daemon.stream_inc.push(0);
            daemon.open_calls.push(Vec::new());
            daemon.next_call_at.push(rng.range(0, 800));
        }
        World {
            cfg,
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
                nodes: n,
                linux_nodes,
                ..Report::default()
            },
            bufs: Vec::new(),
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
        for (i, to) in self.daemon.timeouts.iter().enumerate() {
            t = t.min(*to).min(self.daemon.next_call_at[i]);
        }
        t.min(self.daemon.flush_at.unwrap_or(u64::MAX))
    }

    /// Checks that only hold once the calm phase is over.
    fn final_checks(&mut self) {
        for i in 0..self.nodes.len() {
            let d = &mut self.daemon.sessions[i];
            if let Some(b) = d.reclaim() {
                self.daemon.pool.put(b);
            }
            if d.has_storage() || d.unacked() > 0 {
                let v = format!("daemon session {i} still holds messages at the end: {d:?}");
                self.checker.violation(v);
            }
            if !self.daemon.pending[i].is_empty() || self.daemon.in_flight[i] {
                let v = format!("daemon session {i}: observations never committed");
                self.checker.violation(v);
            }
            let n = &mut self.nodes[i];
            let empty = match n.kind {
                Kind::Linux => {
                    if let Some(b) = n.session.reclaim() {
                        n.pool.put(b);
                    }
                    !n.session.has_storage() && n.pool.out == 0
                }
                _ => match n.session.reclaim() {
                    Some(b) => n.session.lend(b).is_ok(),
                    None => false,
                },
            };
            if !empty || n.session.unacked() > 0 {
                let v = format!("node {i} still holds messages at the end: {:?}", n.session);
                self.checker.violation(v);
            }
            if !n.pending.is_empty() || n.batch.is_some() {
                let v = format!("node {i}: observations never committed");
                self.checker.violation(v);
            }
        }
        if self.daemon.pool.out != 0 {
            let v = format!("{} daemon storage buffers still lent", self.daemon.pool.out);
            self.checker.violation(v);
        }
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
            // In order unless this frame is the one held back, which later ones overtake.
            let at = if self.net_rng.chance(f.reorder) {
                self.now + delay + self.net_rng.range(1, f.reorder_extra_ms)
            } else {
                let at = (self.now + delay).max(*last);
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

    fn deliver_due(&mut self) {
        loop {
            let mut best: Option<(u64, u64, u64, Dir)> = None;
            for (id, l) in &self.links {
                for (dir, q) in [(Dir::ToDaemon, &l.to_daemon), (Dir::ToNode, &l.to_node)] {
                    for f in q {
                        if f.at <= self.now && best.is_none_or(|b| (f.at, f.order) < (b.0, b.1)) {
                            best = Some((f.at, f.order, *id, dir));
                        }
                    }
                }
            }
            let Some((_, order, id, dir)) = best else {
                return;
            };
            let link = self.links.get_mut(&id).expect("link");
            let q = match dir {
                Dir::ToDaemon => &mut link.to_daemon,
                Dir::ToNode => &mut link.to_node,
            };
            let pos = q.iter().position(|f| f.order == order).expect("frame");
            let frame = q.remove(pos);
            self.feed(id, dir, &frame.bytes);
        }
    }

    /// Runs bytes through the receiving side's frame decoder and session.
    fn feed(&mut self, link_id: u64, dir: Dir, bytes: &[u8]) {
        let Some(link) = self.links.get_mut(&link_id) else {
            return;
        };
        let node = link.node;
        let incarnation = link.incarnation;
        let renumbered = link.renumber;
        let dec = match dir {
            Dir::ToDaemon => &mut link.dec_daemon,
            Dir::ToNode => &mut link.dec_node,
        };
        let mut inputs: Vec<Result<Vec<u8>, FrameError>> = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            match dec.decode(rest) {
                Ok(p) => {
                    if let Some(f) = p.frame {
                        inputs.push(Ok(f.to_vec()));
                    }
                    rest = &rest[p.consumed..];
                }
                Err(e) => {
                    inputs.push(Err(e));
                    break;
                }
            }
        }
        let now = at(self.now);
        for input in inputs {
            if !self.links.contains_key(&link_id) {
                return;
            }
            match dir {
                Dir::ToDaemon => {
                    // Note the renumbered frames the daemon takes as its next message.
                    if renumbered
                        && let Ok(f) = &input
                        && let Ok(Message::Data(d)) = wire::decode_message(f)
                        && d.seq == self.daemon.sessions[node].delivered() + 1
                    {
                        self.planted.insert((node, d.seq));
                    }
                    self.daemon.pre_session[node] = self.daemon.sessions[node].session_id();
                    self.daemon.view_inc[node] = incarnation;
                    match &input {
                        Ok(f) => {
                            if self.daemon.sessions[node].handle_frame(now, f)
                                == Err(SessionError::NoStorage)
                            {
                                self.lend_daemon(node);
                                if let Err(e) = self.daemon.sessions[node].handle_frame(now, f) {
                                    let v = format!("daemon session {node}: frame refused: {e}");
                                    self.checker.violation(v);
                                }
                            }
                        }
                        Err(e) => self.daemon.sessions[node].handle_frame_error(now, *e),
                    }
                    self.drain_daemon(node);
                }
                Dir::ToNode => {
                    match &input {
                        Ok(f) => {
                            if self.nodes[node].session.handle_frame(now, f)
                                == Err(SessionError::NoStorage)
                            {
                                self.lend_node(node);
                                if let Err(e) = self.nodes[node].session.handle_frame(now, f) {
                                    let v = format!("node {node}: frame refused: {e}");
                                    self.checker.violation(v);
                                }
                            }
                        }
                        Err(e) => self.nodes[node].session.handle_frame_error(now, *e),
                    }
                    self.drain_node(node);
                }
            }
        }
    }

    fn connect(&mut self, node: usize) {
        let id = self.next_link;
        self.next_link += 1;
        self.report.connections += 1;
        let n = &mut self.nodes[node];
        let node_max = node_config(n.kind).max_frame;
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
                dec_daemon: FrameDecoder::new(vec![0; MAX_FRAME_DAEMON as usize], MAX_FRAME_DAEMON)
                    .expect("decoder"),
                dec_node: FrameDecoder::new(vec![0; node_max as usize], node_max).expect("decoder"),
                renumber: false,
                last_at_daemon: 0,
                last_at_node: 0,
            },
        );
        n.link = Some(id);
        n.reconnect_at = None;
        let now = at(self.now);
        n.session.handle_connected(now);
        self.daemon.sessions[node].handle_connected(now);
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
            self.drain_node(node);
        }
        self.daemon.sessions[node].handle_disconnected(now);
        self.drain_daemon(node);
    }

    // ----- storage -----

    fn lend_daemon(&mut self, i: usize) {
        let buf = self.daemon.pool.take();
        self.report.lends += 1;
        if let Err(buf) = self.daemon.sessions[i].lend(buf) {
            self.daemon.pool.put(buf);
            self.checker.violation(format!(
                "daemon session {i}: lend refused while it has none"
            ));
        }
    }

    fn lend_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.kind != Kind::Linux {
            let v = format!("node {i}: a microcontroller lost its static storage");
            return self.checker.violation(v);
        }
        let buf = n.pool.take();
        self.report.lends += 1;
        if let Err(buf) = n.session.lend(buf) {
            n.pool.put(buf);
            self.checker
                .violation(format!("node {i}: lend refused while it has none"));
        }
    }

    /// Runs a node command, lending storage and trying again if it asks for some.
    fn node_cmd<T>(
        &mut self,
        i: usize,
        mut cmd: impl FnMut(&mut NodeSession<Vec<u8>>) -> Result<T, SessionError>,
    ) -> Result<T, SessionError> {
        match cmd(&mut self.nodes[i].session) {
            Err(SessionError::NoStorage) => {
                self.lend_node(i);
                cmd(&mut self.nodes[i].session)
            }
            r => r,
        }
    }

    fn daemon_cmd<T>(
        &mut self,
        i: usize,
        mut cmd: impl FnMut(&mut DaemonSession<Vec<u8>>) -> Result<T, SessionError>,
    ) -> Result<T, SessionError> {
        match cmd(&mut self.daemon.sessions[i]) {
            Err(SessionError::NoStorage) => {
                self.lend_daemon(i);
                cmd(&mut self.daemon.sessions[i])
            }
            r => r,
        }
    }

    // ----- draining sessions -----

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
                    self.daemon.stream_inc[node] = incarnation;
                }
                if planted {
                    self.report.planted_hits += 1;
                }
                self.checker.delivered(key, seq, fp);
            }
            Obs::Gap { key, from, to } => {
                if let StreamKey::Up { node, incarnation } = key {
                    self.daemon.stream_inc[node] = incarnation;
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
                self.daemon.open_calls[node].push(id);
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
                    self.daemon.open_calls[node].retain(|c| *c != id);
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
                    incarnation: self.daemon.stream_inc[node],
                };
                self.checker.reported_lost_from(old, peer_lost_from);
                let down = StreamKey::Down {
                    node,
                    session: old_session,
                };
                self.checker.reported_unacked(down, unacked);
                self.daemon.stream_inc[node] = new_inc;
            }
        }
    }

    /// Frames a journaled side sends may only carry what its journal committed.
    fn check_durable(&mut self, i: usize, dir: Dir, frame: &[u8]) {
        let journal = match dir {
            Dir::ToNode => &self.daemon.journals[i],
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

    /// Polls the daemon session's journal ops into a batch for the store's next group
    /// commit. True if there was one.
    fn stage_daemon(&mut self, i: usize) -> bool {
        if self.daemon.in_flight[i] {
            if self.daemon.sessions[i].poll_journal().is_some() {
                let v = format!("daemon session {i}: a journal op while a batch is in flight");
                self.checker.violation(v);
            }
            return false;
        }
        let mut ops = Vec::new();
        while let Some(op) = self.daemon.sessions[i].poll_journal() {
            ops.push(OwnedOp::from(&op));
        }
        let refailed = std::mem::take(&mut self.daemon.refailed[i]);
        if ops.is_empty() {
            if refailed {
                let v = format!("daemon session {i}: a failed batch was not emitted again");
                self.checker.violation(v);
            }
            return false;
        }
        self.trace(i, format_args!("daemon batch {} ops", ops.len()));
        self.report.batches += 1;
        let obs = std::mem::take(&mut self.daemon.pending[i]);
        self.daemon.staged.push((i, Batch { ops, obs }));
        self.daemon.in_flight[i] = true;
        if self.daemon.flush_at.is_none() {
            let (lo, hi) = self.faults().store_latency_ms;
            self.daemon.flush_at = Some(self.now + self.store_rng.range(lo, hi));
        }
        true
    }

    fn stage_node(&mut self, i: usize) -> bool {
        if self.nodes[i].kind != Kind::Linux {
            if self.nodes[i].session.poll_journal().is_some() {
                let v = format!("node {i}: a journal op from a session without a journal");
                self.checker.violation(v);
            }
            return false;
        }
        if self.nodes[i].batch.is_some() {
            if self.nodes[i].session.poll_journal().is_some() {
                let v = format!("node {i}: a journal op while a batch is in flight");
                self.checker.violation(v);
            }
            return false;
        }
        let mut ops = Vec::new();
        while let Some(op) = self.nodes[i].session.poll_journal() {
            ops.push(OwnedOp::from(&op));
        }
        let refailed = std::mem::take(&mut self.nodes[i].refailed);
        if ops.is_empty() {
            if refailed {
                let v = format!("node {i}: a failed batch was not emitted again");
                self.checker.violation(v);
            }
            return false;
        }
        self.trace(i, format_args!("node batch {} ops", ops.len()));
        self.report.batches += 1;
        let (lo, hi) = self.faults().store_latency_ms;
        let due = self.now + self.store_rng.range(lo, hi);
        let n = &mut self.nodes[i];
        let obs = std::mem::take(&mut n.pending);
        n.batch = Some((due, Batch { ops, obs }));
        true
    }

    fn drain_node(&mut self, i: usize) {
        let mut buf = self.bufs.pop().unwrap_or_else(|| vec![0; OUT_BUF]);
        let mut settled = false;
        for _ in 0..DRAIN_LIMIT {
            let mut progress = false;
            while let Some(ev) = self.nodes[i].session.poll_event() {
                let ev: OwnedNodeEvent = ev.into();
                self.node_event(i, ev);
                progress = true;
            }
            progress |= self.stage_node(i);
            loop {
                match self.nodes[i].session.poll_transmit(at(self.now), &mut buf) {
                    Ok(Some(Transmit::Frame(n))) => {
                        progress = true;
                        self.check_durable(i, Dir::ToDaemon, &buf[..n]);
                        if let Some(link) = self.nodes[i].link {
                            self.transmit(link, Dir::ToDaemon, &buf[..n]);
                        }
                    }
                    Ok(Some(Transmit::Close)) => {
                        progress = true;
                        if let Some(link) = self.nodes[i].link {
                            self.disconnect(link);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.checker.violation(format!("node {i}: transmit: {e}"));
                        break;
                    }
                }
            }
            if !progress {
                settled = true;
                break;
            }
        }
        if !settled {
            self.checker
                .violation(format!("node {i}: the session never came to rest"));
        }
        let n = &mut self.nodes[i];
        n.timeout = n
            .session
            .poll_timeout()
            .map_or(u64::MAX, Instant::as_millis);
        if n.kind == Kind::Linux
            && let Some(b) = n.session.reclaim()
        {
            n.pool.put(b);
            self.report.reclaims += 1;
        }
        self.bufs.push(buf);
    }

    fn drain_daemon(&mut self, i: usize) {
        let mut buf = self.bufs.pop().unwrap_or_else(|| vec![0; OUT_BUF]);
        let mut settled = false;
        for _ in 0..DRAIN_LIMIT {
            let mut progress = false;
            while let Some(ev) = self.daemon.sessions[i].poll_event() {
                let ev: OwnedDaemonEvent = ev.into();
                self.daemon_event(i, ev);
                progress = true;
            }
            progress |= self.stage_daemon(i);
            loop {
                match self.daemon.sessions[i].poll_transmit(at(self.now), &mut buf) {
                    Ok(Some(Transmit::Frame(n))) => {
                        progress = true;
                        self.check_durable(i, Dir::ToNode, &buf[..n]);
                        if let Some(link) = self.nodes[i].link {
                            self.transmit(link, Dir::ToNode, &buf[..n]);
                        }
                    }
                    Ok(Some(Transmit::Close)) => {
                        progress = true;
                        if let Some(link) = self.nodes[i].link {
                            self.disconnect(link);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.checker
                            .violation(format!("daemon session {i}: transmit: {e}"));
                        break;
                    }
                }
            }
            if !progress {
                settled = true;
                break;
            }
        }
        if !settled {
            self.checker.violation(format!(
                "daemon session {i}: the session never came to rest"
            ));
        }
        let d = &mut self.daemon.sessions[i];
        self.daemon.timeouts[i] = d.poll_timeout().map_or(u64::MAX, Instant::as_millis);
        if let Some(b) = d.reclaim() {
            self.daemon.pool.put(b);
            self.report.reclaims += 1;
        }
        self.bufs.push(buf);
    }

    fn fire_timeouts(&mut self) {
        let now = at(self.now);
        for i in 0..self.nodes.len() {
            if self.nodes[i].timeout <= self.now {
                self.nodes[i].session.handle_timeout(now);
                self.drain_node(i);
            }
            if self.daemon.timeouts[i] <= self.now {
                self.daemon.sessions[i].handle_timeout(now);
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

    /// The daemon's store commits every staged batch in one transaction.
    fn daemon_flush(&mut self) {
        self.daemon.flush_at = None;
        let f = self.faults();
        if self.store_rng.chance(f.crash_in_flight) {
            let committed = self.store_rng.chance(0.5);
            self.restart_daemon(Some(committed));
            return;
        }
        let fail = self.store_rng.chance(f.journal_fail);
        let group = std::mem::take(&mut self.daemon.staged);
        let now = at(self.now);
        for (i, batch) in group {
            self.daemon.in_flight[i] = false;
            if fail {
                self.trace(i, format_args!("daemon batch failed"));
                self.report.failed_batches += 1;
                let mut obs = batch.obs;
                obs.append(&mut self.daemon.pending[i]);
                self.daemon.pending[i] = obs;
                self.daemon.refailed[i] = true;
                self.daemon.sessions[i].handle_journal_failed(now);
            } else {
                self.trace(i, format_args!("daemon batch committed"));
                batch.apply(&mut self.daemon.journals[i]);
                self.commit_ops(&batch);
                for o in batch.obs {
                    self.apply_obs(o);
                }
                self.daemon.sessions[i].handle_journal_committed(now);
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
        if self.store_rng.chance(f.journal_fail) {
            self.trace(i, format_args!("node batch failed"));
            self.report.failed_batches += 1;
            let n = &mut self.nodes[i];
            let mut obs = batch.obs;
            obs.append(&mut n.pending);
            n.pending = obs;
            n.refailed = true;
            n.session.handle_journal_failed(now);
        } else {
            self.trace(i, format_args!("node batch committed"));
            batch.apply(&mut self.nodes[i].journal);
            self.commit_ops(&batch);
            for o in batch.obs {
                self.apply_obs(o);
            }
            self.nodes[i].session.handle_journal_committed(now);
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

    fn node_apps(&mut self, faulty: bool) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].link.is_none()
                && self.nodes[i].reconnect_at.is_some_and(|t| t <= self.now)
            {
                self.connect(i);
            }
            let mut acted = false;
            if faulty && self.nodes[i].next_send_at <= self.now {
                self.node_send(i);
                self.nodes[i].next_send_at = self.now + self.rng.range(30, 400);
                acted = true;
            }
            let now = self.now;
            let due: Vec<usize> = (0..self.nodes[i].running.len())
                .filter(|k| {
                    let r = &self.nodes[i].running[*k];
                    r.done_at <= now || r.progress_at.is_some_and(|p| p <= now)
                })
                .collect();
            for k in due.into_iter().rev() {
                self.step_call(i, k);
                acted = true;
            }
            // Commands queue output: the driver polls after them.
            if acted {
                self.drain_node(i);
            }
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
            let stage = if call_id % 3 == 0 {
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
                1 if call_id % 3 == 0 => Outcome::Rejected {
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

    fn daemon_app(&mut self, faulty: bool) {
        for i in 0..self.nodes.len() {
            if !faulty || self.daemon.next_call_at[i] > self.now {
                continue;
            }
            self.daemon.next_call_at[i] = self.now + self.rng.range(50, 700);
            let key = StreamKey::Down {
                node: i,
                session: self.daemon.sessions[i].session_id(),
            };
            if self.rng.chance(0.15) {
                // Cancel the oldest open call.
                if let Some(&id) = self.daemon.open_calls[i].first()
                    && let Ok(seq) = self.daemon_cmd(i, |s| s.cancel(id))
                {
                    self.report.cancels += 1;
                    self.daemon.pending[i].push(Obs::Accepted {
                        key,
                        seq,
                        fp: format!("cancel:{id}"),
                        oversized: false,
                    });
                }
                self.drain_daemon(i);
                continue;
            }
            let cap = *self.rng.pick(&["sys.health", "url.open", "slow.job"]);
            let timeout = self.rng.range(300, 10_000) as u32;
            // Now and then a call too large for a microcontroller's frames.
            let big = self.rng.chance(0.02);
            let data: Vec<u8> = if big {
                vec![b'x'; BIG_PAYLOAD]
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
                    let seq = self.daemon.sessions[i].last_sent();
                    let oversized =
                        big && node_config(self.nodes[i].kind).max_frame < BIG_PAYLOAD as u32;
                    let p = &mut self.daemon.pending[i];
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
            self.drain_daemon(i);
        }
    }

    fn daemon_event(&mut self, i: usize, ev: OwnedDaemonEvent) {
        self.trace(i, format_args!("daemon event {ev:?}"));
        let key = StreamKey::Up {
            node: i,
            incarnation: self.daemon.view_inc[i],
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
                if self.nodes[i].kind == Kind::Linux {
                    let v = format!(
                        "node {i}: a Linux node's session was reset, as if it had lost its journal"
                    );
                    self.checker.violation(v);
                }
                vec![Obs::Reset {
                    node: i,
                    new_inc: self.daemon.view_inc[i],
                    unacked,
                    peer_lost_from,
                    old_session: self.daemon.pre_session[i],
                }]
            }
            OwnedDaemonEvent::JournalFailed => {
                self.report.journal_failed_events += 1;
                Vec::new()
            }
            OwnedDaemonEvent::Connected { .. } | OwnedDaemonEvent::Disconnected(_) => Vec::new(),
        };
        self.daemon.pending[i].extend(obs);
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
        if self.rng.chance(f.daemon_restart_per_s * scale) {
            self.restart_daemon(None);
        }
    }

    /// A microcontroller reboots: its session and its running calls are gone.
    fn reboot_mcu(&mut self, i: usize) {
        self.report.mcu_reboots += 1;
        self.trace(i, format_args!("microcontroller reboots"));
        let old = self.up_key(i);
        self.checker.sender_restarted(old);
        if let Some(link) = self.nodes[i].link {
            self.disconnect(link);
        }
        let n = &mut self.nodes[i];
        n.session = new_node_session(n.kind, &n.name);
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

    /// A Linux node's process crashes: the session object, the application's running
    /// calls and everything not committed are gone (a batch in flight commits or not);
    /// the session is rebuilt from the journal.
    fn restart_linux(&mut self, i: usize, in_flight_commits: Option<bool>) {
        self.report.linux_restarts += 1;
        let batch = self.nodes[i].batch.take();
        if let Some((_, batch)) = batch {
            self.report.crashes_in_flight += 1;
            let commits = in_flight_commits.unwrap_or_else(|| self.store_rng.chance(0.5));
            self.trace(
                i,
                format_args!("node crashes, batch in flight commits: {commits}"),
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
            self.daemon.sessions[i].handle_disconnected(at(self.now));
            self.drain_daemon(i);
        }
        let n = &mut self.nodes[i];
        n.pending.clear();
        n.refailed = false;
        n.running.clear();
        n.registered = false;
        n.timeout = 0;
        n.reconnect_at = Some(self.now + self.rng.range(50, 1_000));
        let c = node_config(Kind::Linux);
        n.pool = Pool::new(c.storage_len());
        let restored = match NodeSession::restore(c, &n.name, "sim", None, &n.journal) {
            Err(SetupError::StorageNeeded) => {
                self.report.lends += 1;
                let buf = n.pool.take();
                NodeSession::restore(c, &n.name, "sim", Some(buf), &n.journal)
            }
            r => r,
        };
        // A call still running in the journal is answered from it if replayed (its
        // progress as journaled), whatever the lost process had answered.
        let _ = n.journal.seen(&mut |_, c| {
            if let Slot::Active { stage, .. } = c.slot {
                let fp = stage_fp(c.id, stage.unwrap_or(Stage::Running));
                n.answer_fp.insert(c.id, fp);
            }
        });
        match restored {
            Ok(s) => n.session = s,
            Err(e) => {
                let v = format!(
                    "node {i}: restore from the journal failed: {e}; journal {}",
                    describe(&n.journal)
                );
                self.checker.violation(v);
                self.aborted = true;
            }
        }
    }

    /// The daemon process crashes: every session, the application's uncommitted
    /// knowledge and the staged group commit (committed or not) are gone; every session
    /// is rebuilt from its journal.
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
                    batch.apply(&mut self.daemon.journals[i]);
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
            let n = &mut self.nodes[link.node];
            if n.link == Some(id) {
                n.link = None;
                n.reconnect_at = Some(self.now + self.rng.range(100, 1_500));
                n.session.handle_disconnected(at(self.now));
                self.drain_node(link.node);
            }
        }
        let dc = daemon_config();
        self.daemon.pool = Pool::new(dc.storage_len());
        for i in 0..self.nodes.len() {
            self.daemon.pending[i].clear();
            self.daemon.in_flight[i] = false;
            self.daemon.refailed[i] = false;
            let journal = &self.daemon.journals[i];
            let name = &self.nodes[i].name;
            let restored = match DaemonSession::restore(dc, name, None, journal, &mut self.rng) {
                Err(SetupError::StorageNeeded) => {
                    self.report.lends += 1;
                    let buf = self.daemon.pool.take();
                    DaemonSession::restore(dc, name, Some(buf), journal, &mut self.rng)
                }
                r => r,
            };
            match restored {
                Ok(s) => self.daemon.sessions[i] = s,
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
            self.daemon.timeouts[i] = 0;
        }
    }
}
