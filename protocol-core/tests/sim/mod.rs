//! Deterministic simulation: one daemon-role peer (a session per node, journaled) and
//! several node-role peers over an in-memory network, with a simulated clock and one
//! seed for every random choice.
//!
//! Fault model. In production a session rides on a reliable ordered transport (a QUIC
//! stream, TLS over TCP); what fails there is the *connection*. The simulated link is
//! harsher: within a connection it drops, duplicates, delays and reorders frames, and it
//! cuts connections at random. The session treats what a reliable transport would never
//! produce as a broken connection: a duplicate seq is dropped, a seq beyond the next one
//! (a hole) closes the connection with an error, and the next connection resumes from
//! the receiver's position. On top of that the daemon restarts (every session rebuilt
//! from its journal) and microcontroller nodes restart (their RAM is gone).

pub mod check;
pub mod journal;
pub mod rng;

use std::collections::BTreeMap;

use protocol_core::frame::{FrameDecoder, HEADER_LEN};
use protocol_core::session::{
    CallState, Config, Event, Input, Instant, NotRun, Output, Overflow, Session,
};
use protocol_core::wire::{
    self, Body, CallId, Capabilities, CapabilityDescriptor, Message, Outcome, Payload, Register,
    RejectCode, Stage,
};

use check::{Checker, StreamKey, fingerprint, outcome_kind};
use journal::MemJournal;
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
    /// Per simulated second.
    pub daemon_restart_per_s: f64,
    /// Per microcontroller node and simulated second.
    pub node_restart_per_s: f64,
}

pub const DEFAULT_FAULTS: Faults = Faults {
    loss: 0.10,
    duplicate: 0.05,
    reorder: 0.05,
    reorder_extra_ms: 150,
    delay_ms: (1, 40),
    disconnect_per_s: 0.05,
    daemon_restart_per_s: 0.03,
    node_restart_per_s: 0.02,
};

const CALM: Faults = Faults {
    loss: 0.0,
    duplicate: 0.0,
    reorder: 0.0,
    reorder_extra_ms: 0,
    delay_ms: (1, 40),
    disconnect_per_s: 0.0,
    daemon_restart_per_s: 0.0,
    node_restart_per_s: 0.0,
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
    pub sim_ms: u64,
    /// Stream messages accepted by the senders' APIs, both directions.
    pub messages: u64,
    pub frames: u64,
    pub frames_lost: u64,
    pub calls: u64,
    pub connections: u64,
    pub daemon_restarts: u32,
    pub node_restarts: u32,
    pub gaps: u64,
    pub full: u64,
    /// Renumbered frames the planted bug fed to the daemon.
    pub planted_hits: u32,
    /// Digest of every frame on the wire with its time: equal digests, equal runs.
    pub digest: u64,
    /// Final call states seen by the daemon application, by kind.
    pub finals: BTreeMap<String, u64>,
    pub cancels: u64,
    pub node_timeouts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Keeps its state across restarts of its process (modelled as: never loses it).
    Linux,
    /// RAM-only, refuses new messages when its replay buffer is full.
    Mcu,
    /// RAM-only, evicts its oldest telemetry when full.
    McuEvict,
}

const MAX_FRAME_DAEMON: u32 = 16 * 1024;
const OUT_BUF: usize = 17 * 1024;

fn config(kind: Option<Kind>) -> Config {
    let mut c = Config::server(4096);
    c.max_frame = MAX_FRAME_DAEMON;
    c.idle_timeout_ms = 3_000;
    c.keep_alive_ms = 1_000;
    c.handshake_timeout_ms = 1_000;
    c.ack_timeout_ms = 1_500;
    match kind {
        None => {}
        Some(Kind::Linux) => c.replay_bytes = 8192,
        Some(Kind::Mcu) => {
            c.max_frame = 2048;
            c.replay_bytes = 1024;
        }
        Some(Kind::McuEvict) => {
            c.max_frame = 2048;
            c.replay_bytes = 700;
            c.overflow = Overflow::EvictOldest;
        }
    }
    c
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
    session: Session<Vec<u8>>,
    incarnation: u32,
    link: Option<u64>,
    reconnect_at: Option<u64>,
    next_send_at: u64,
    registered: bool,
    counter: u64,
    running: Vec<Running>,
    timeout: Instant,
    links_made: u64,
    /// Fingerprint of each call's answer, for answers the session repeats.
    answered: BTreeMap<CallId, String>,
}

struct DaemonSide {
    sessions: Vec<Session<Vec<u8>, MemJournal>>,
    journals: Vec<MemJournal>,
    timeouts: Vec<Instant>,
    /// The node life whose frames this session saw last (attributes its deliveries).
    view_inc: Vec<u32>,
    /// Session id and node life before the input being handled (a reset replaces both).
    pre_session: Vec<Option<[u8; 16]>>,
    pre_inc: Vec<u32>,
    open_calls: Vec<Vec<CallId>>,
    next_call_at: Vec<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
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
    nodes: Vec<Node>,
    daemon: DaemonSide,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    next_order: u64,
    checker: Checker,
    report: Report,
    /// Output buffers (draining one session may drain another).
    bufs: Vec<Vec<u8>>,
    planted_armed: bool,
    calm: bool,
    trace: Option<usize>,
}

fn storage(c: &Config) -> Vec<u8> {
    vec![0; c.storage_needed()]
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

impl World {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = SimRng::new(cfg.seed);
        let net_rng = rng.fork();
        let n = rng.range(2, 6) as usize;
        let mut nodes = Vec::new();
        let mut daemon = DaemonSide {
            sessions: Vec::new(),
            journals: Vec::new(),
            timeouts: Vec::new(),
            view_inc: Vec::new(),
            pre_session: Vec::new(),
            pre_inc: Vec::new(),
            open_calls: Vec::new(),
            next_call_at: Vec::new(),
        };
        let mut checker = Checker::default();
        for i in 0..n {
            let kind = *rng.pick(&[Kind::Linux, Kind::Mcu, Kind::McuEvict]);
            let name = format!("node-{i}");
            let c = config(Some(kind));
            let session = Session::node(c, &name, "sim", storage(&c)).expect("node session");
            let journal = MemJournal::default();
            let dc = config(None);
            let ds = Session::daemon(dc, &name, storage(&dc), journal.clone(), &mut rng)
                .expect("daemon session");
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
                timeout: Instant::NEVER,
                links_made: 0,
                answered: BTreeMap::new(),
            });
            daemon.sessions.push(ds);
            daemon.journals.push(journal);
            daemon.timeouts.push(Instant::NEVER);
            daemon.view_inc.push(0);
            daemon.pre_session.push(None);
            daemon.pre_inc.push(0);
            daemon.open_calls.push(Vec::new());
            daemon.next_call_at.push(rng.range(0, 800));
        }
        World {
            cfg,
            now: 0,
            rng,
            net_rng,
            nodes,
            daemon,
            links: BTreeMap::new(),
            next_link: 1,
            next_order: 0,
            checker,
            report: Report {
                seed: cfg.seed,
                nodes: n,
                ..Report::default()
            },
            bufs: Vec::new(),
            planted_armed: cfg.planted_bug,
            calm: false,
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
        while self.now <= end {
            let faulty = self.now < faulty_until;
            self.calm = !faulty;
            self.deliver_due();
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
        let violations = std::mem::take(&mut self.checker).finish();
        self.report.violations = violations;
        self.report
    }

    fn next_time(&self) -> u64 {
        let mut t = u64::MAX;
        for l in self.links.values() {
            for f in l.to_daemon.iter().chain(&l.to_node) {
                t = t.min(f.at);
            }
        }
        for n in &self.nodes {
            t = t.min(n.timeout.as_millis());
            t = t.min(n.reconnect_at.unwrap_or(u64::MAX));
            t = t.min(n.next_send_at);
            for r in &n.running {
                t = t.min(r.done_at).min(r.progress_at.unwrap_or(u64::MAX));
            }
        }
        for (i, to) in self.daemon.timeouts.iter().enumerate() {
            t = t.min(to.as_millis()).min(self.daemon.next_call_at[i]);
        }
        t
    }

    // ----- network -----

    fn trace(&self, node: usize, what: std::fmt::Arguments<'_>) {
        if self.trace == Some(node) {
            eprintln!("{:>7} n{node} {what}", self.now);
        }
    }

    fn transmit(&mut self, link_id: u64, dir: Dir, bytes: &[u8]) {
        if let Some(l) = self.links.get(&link_id) {
            let node = l.node;
            let d = if dir == Dir::ToDaemon { "->" } else { "<-" };
            let m = wire::decode_message(&bytes[HEADER_LEN..]);
            self.trace(node, format_args!("L{link_id} {d} {m:?}"));
        }
        self.report.frames += 1;
        self.report.digest = mix(self.report.digest ^ self.now, bytes);
        // The calm phase has a perfect network: everything left must get through.
        let f = if self.calm { CALM } else { self.cfg.faults };
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
        let mut inputs: Vec<Result<Vec<u8>, protocol_core::frame::FrameError>> = Vec::new();
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
        for input in inputs {
            if !self.links.contains_key(&link_id) {
                return;
            }
            let input = match &input {
                Ok(f) => Input::Frame(f),
                Err(e) => Input::FrameError(*e),
            };
            match dir {
                Dir::ToDaemon => {
                    // Count the renumbered frames the daemon will take as the next message.
                    if renumbered
                        && let Input::Frame(f) = input
                        && let Ok(Message::Data(d)) = wire::decode_message(f)
                        && d.seq == self.daemon.sessions[node].delivered() + 1
                    {
                        self.report.planted_hits += 1;
                    }
                    self.daemon.pre_session[node] = self.daemon.sessions[node].session_id();
                    self.daemon.pre_inc[node] = self.daemon.view_inc[node];
                    self.daemon.view_inc[node] = incarnation;
                    self.daemon.sessions[node].handle_input(at(self.now), input);
                    self.drain_daemon(node);
                }
                Dir::ToNode => {
                    self.nodes[node].session.handle_input(at(self.now), input);
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
        let node_max = n.session_config_max();
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
        n.session.handle_input(at(self.now), Input::Connected);
        self.daemon.sessions[node].handle_input(at(self.now), Input::Connected);
        self.drain_node(node);
        self.drain_daemon(node);
    }

    /// Ends a connection; each side that still used it hears of it.
    fn disconnect(&mut self, link_id: u64) {
        let Some(link) = self.links.remove(&link_id) else {
            return;
        };
        let node = link.node;
        if self.nodes[node].link == Some(link_id) {
            self.nodes[node].link = None;
            self.nodes[node].reconnect_at = Some(self.now + self.rng.range(20, 600));
            self.nodes[node]
                .session
                .handle_input(at(self.now), Input::Disconnected);
            self.drain_node(node);
        }
        self.daemon.sessions[node].handle_input(at(self.now), Input::Disconnected);
        self.drain_daemon(node);
    }

    // ----- draining sessions -----

    fn drain_node(&mut self, i: usize) {
        let mut buf = self.bufs.pop().unwrap_or_else(|| vec![0; OUT_BUF]);
        for _ in 0..100_000 {
            let now = at(self.now);
            let out = match self.nodes[i].session.poll_output(now, &mut buf) {
                Output::Transmit(bytes) => Owned::Transmit(bytes.to_vec()),
                Output::Close => Owned::Close,
                Output::Timeout(t) => Owned::Timeout(t),
                Output::Event(ev) => Owned::Event(NodeEv::from(&ev)),
            };
            match out {
                Owned::Transmit(bytes) => {
                    if let Some(link) = self.nodes[i].link {
                        self.transmit(link, Dir::ToDaemon, &bytes);
                    }
                }
                Owned::Close => {
                    if let Some(link) = self.nodes[i].link {
                        self.disconnect(link);
                    }
                }
                Owned::Timeout(t) => {
                    self.nodes[i].timeout = t;
                    break;
                }
                Owned::Event(ev) => self.node_event(i, ev),
            }
        }
        self.bufs.push(buf);
    }

    fn drain_daemon(&mut self, i: usize) {
        let mut buf = self.bufs.pop().unwrap_or_else(|| vec![0; OUT_BUF]);
        for _ in 0..100_000 {
            let now = at(self.now);
            let out = match self.daemon.sessions[i].poll_output(now, &mut buf) {
                Output::Transmit(bytes) => Owned::Transmit(bytes.to_vec()),
                Output::Close => Owned::Close,
                Output::Timeout(t) => Owned::Timeout(t),
                Output::Event(ev) => Owned::Event(DaemonEv::from(&ev)),
            };
            match out {
                Owned::Transmit(bytes) => {
                    if let Some(link) = self.nodes[i].link {
                        self.transmit(link, Dir::ToNode, &bytes);
                    }
                }
                Owned::Close => {
                    if let Some(link) = self.nodes[i].link {
                        self.disconnect(link);
                    }
                }
                Owned::Timeout(t) => {
                    self.daemon.timeouts[i] = t;
                    break;
                }
                Owned::Event(ev) => self.daemon_event(i, ev),
            }
        }
        self.bufs.push(buf);
    }

    fn fire_timeouts(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].timeout.as_millis() <= self.now {
                self.nodes[i]
                    .session
                    .handle_input(at(self.now), Input::Timeout);
                self.drain_node(i);
            }
            if self.daemon.timeouts[i].as_millis() <= self.now {
                self.daemon.sessions[i].handle_input(at(self.now), Input::Timeout);
                self.drain_daemon(i);
            }
        }
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
            if faulty && self.nodes[i].next_send_at <= self.now {
                self.node_send(i);
                self.nodes[i].next_send_at = self.now + self.rng.range(30, 400);
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
            }
            self.drain_node(i);
        }
    }

    fn node_send(&mut self, i: usize) {
        let key = self.up_key(i);
        let n = &mut self.nodes[i];
        let res = if !n.registered {
            const CAPABILITIES: &[CapabilityDescriptor<'static>] = &[
                capability("sys.health", false),
                capability("url.open", true),
                capability("slow.job", false),
            ];
            let capabilities = Capabilities::new(CAPABILITIES).expect("within the limit");
            let body = Body::Register(Register { capabilities });
            n.session.send(&body).map(|seq| (seq, fingerprint(&body)))
        } else {
            n.counter += 1;
            let data = format!("{}:{}:{}", n.name, n.incarnation, n.counter).into_bytes();
            let body = Body::Event(protocol_core::wire::Event {
                name: "reading",
                payload: Payload {
                    content_type: "text/plain",
                    data: &data,
                },
            });
            n.session.send(&body).map(|seq| (seq, fingerprint(&body)))
        };
        match res {
            Ok((seq, fp)) => {
                n.registered = true;
                self.report.messages += 1;
                self.checker.accepted(key, seq, fp);
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
            let body = Body::Progress(protocol_core::wire::CallProgress {
                call_id,
                stage,
                detail: "",
            });
            match self.nodes[i].session.progress(call_id, stage, "") {
                Ok(seq) => {
                    self.report.messages += 1;
                    self.checker.accepted(key, seq, fingerprint(&body));
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
        let fp = format!("result:{call_id}:{}", outcome_kind(&outcome));
        match self.nodes[i].session.complete(call_id, outcome) {
            Ok(seq) => {
                self.report.messages += 1;
                self.checker.accepted(key, seq, fp.clone());
                self.nodes[i].answered.insert(call_id, fp);
                self.nodes[i].running.remove(k);
            }
            Err(protocol_core::session::SessionError::Full) => {
                self.report.full += 1;
                self.nodes[i].running[k].done_at = now + 50;
            }
            Err(_) => {
                self.nodes[i].running.remove(k);
            }
        }
    }

    fn node_event(&mut self, i: usize, ev: NodeEv) {
        self.trace(i, format_args!("node event {ev:?}"));
        let down = self.nodes[i]
            .session
            .session_id()
            .map(|session| StreamKey::Down { node: i, session });
        let deliver = |checker: &mut Checker, seq, fp: String| match down {
            Some(key) => checker.delivered(key, seq, fp),
            None => checker.violation(format!("node {i}: delivery before a session")),
        };
        match ev {
            NodeEv::Call { seq, call_id } => {
                deliver(&mut self.checker, seq, format!("call:{call_id}"));
                self.checker.call_executed(i, call_id);
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
            NodeEv::Duplicate {
                seq,
                call_id,
                answer,
            } => {
                deliver(&mut self.checker, seq, format!("call:{call_id}"));
                if let Some(answer) = answer {
                    let fp = self.nodes[i]
                        .answered
                        .get(&call_id)
                        .cloned()
                        .unwrap_or_else(|| format!("progress:{call_id}:{:?}", Stage::Running));
                    self.checker.accepted(self.up_key(i), answer, fp);
                }
            }
            NodeEv::NotRun {
                seq,
                call_id,
                answer,
                fp,
            } => {
                deliver(&mut self.checker, seq, format!("call:{call_id}"));
                self.checker.accepted(self.up_key(i), answer, fp);
            }
            NodeEv::Cancel {
                seq,
                call_id,
                active,
            } => {
                deliver(&mut self.checker, seq, format!("cancel:{call_id}"));
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
            NodeEv::Message { seq, fp } => deliver(&mut self.checker, seq, fp),
            NodeEv::Gap { from, to } => {
                self.report.gaps += 1;
                if let Some(key) = down {
                    self.checker.gap(key, from, to);
                }
            }
            NodeEv::Expired { call_id, answer } => {
                self.report.node_timeouts += 1;
                let fp = format!("result:{call_id}:timed-out");
                self.nodes[i].answered.insert(call_id, fp.clone());
                self.checker.accepted(self.up_key(i), answer, fp);
                self.nodes[i].running.retain(|r| r.call_id != call_id);
            }
            NodeEv::Reset => self
                .checker
                .violation(format!("node {i}: the daemon lost its session")),
            NodeEv::Other(_) => {}
        }
    }

    fn daemon_app(&mut self, faulty: bool) {
        for i in 0..self.nodes.len() {
            if !faulty || self.daemon.next_call_at[i] > self.now {
                continue;
            }
            self.daemon.next_call_at[i] = self.now + self.rng.range(50, 700);
            let s = &mut self.daemon.sessions[i];
            let Some(session) = s.session_id() else {
                continue;
            };
            let key = StreamKey::Down { node: i, session };
            if self.rng.chance(0.15) {
                // Cancel the oldest open call.
                if let Some(&id) = self.daemon.open_calls[i].first()
                    && let Ok(seq) = s.cancel(id)
                {
                    self.report.messages += 1;
                    self.checker.accepted(key, seq, format!("cancel:{id}"));
                    self.report.cancels += 1;
                }
                self.drain_daemon(i);
                continue;
            }
            let cap = *self.rng.pick(&["sys.health", "url.open", "slow.job"]);
            let timeout = self.rng.range(300, 10_000) as u32;
            match s.call(
                at(self.now),
                cap,
                Payload {
                    content_type: "application/json",
                    data: b"{\"q\":1}",
                },
                timeout,
            ) {
                Ok(id) => {
                    let seq = s.last_sent();
                    self.report.messages += 1;
                    self.report.calls += 1;
                    self.checker.call_issued(i, id);
                    self.daemon.open_calls[i].push(id);
                    self.checker.accepted(key, seq, format!("call:{id}"));
                }
                Err(_) => self.report.full += 1,
            }
            self.drain_daemon(i);
        }
    }

    fn daemon_event(&mut self, i: usize, ev: DaemonEv) {
        self.trace(i, format_args!("daemon event {ev:?}"));
        let up = StreamKey::Up {
            node: i,
            incarnation: self.daemon.view_inc[i],
        };
        match ev {
            DaemonEv::Update { id, state, seq, fp } => {
                if let Some(seq) = seq {
                    self.checker.delivered(up, seq, fp);
                }
                self.checker.call_update(i, id, state);
                if state.is_final() {
                    let kind = format!("{state:?}");
                    *self.report.finals.entry(kind).or_default() += 1;
                }
                if state.is_final() {
                    self.daemon.open_calls[i].retain(|c| *c != id);
                }
            }
            DaemonEv::Message { seq, fp } => self.checker.delivered(up, seq, fp),
            DaemonEv::Gap { from, to } => {
                self.report.gaps += 1;
                self.checker.gap(up, from, to);
            }
            DaemonEv::Reset {
                unacked,
                peer_lost_from,
            } => {
                let prev_inc = self.daemon.pre_inc[i];
                let old_session = self.daemon.pre_session[i];
                self.checker.reported_lost_from(
                    StreamKey::Up {
                        node: i,
                        incarnation: prev_inc,
                    },
                    peer_lost_from,
                );
                if let Some(session) = old_session {
                    self.checker
                        .reported_unacked(StreamKey::Down { node: i, session }, unacked);
                }
            }
            DaemonEv::Other(_) => {}
        }
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
            if self.nodes[i].kind != Kind::Linux && self.rng.chance(f.node_restart_per_s * scale) {
                self.restart_node(i);
            }
        }
        if self.rng.chance(f.daemon_restart_per_s * scale) {
            self.restart_daemon();
        }
    }

    /// A microcontroller reboots: its session and its running calls are gone.
    fn restart_node(&mut self, i: usize) {
        self.report.node_restarts += 1;
        self.trace(i, format_args!("node restarts"));
        let old = self.up_key(i);
        self.checker.sender_restarted(old);
        if let Some(link) = self.nodes[i].link {
            self.disconnect(link);
        }
        let n = &mut self.nodes[i];
        let c = config(Some(n.kind));
        n.session = Session::node(c, &n.name, "sim", storage(&c)).expect("node session");
        n.incarnation += 1;
        n.registered = false;
        n.running.clear();
        n.answered.clear();
        n.timeout = Instant::NEVER;
        n.reconnect_at = Some(self.now + self.rng.range(50, 1_000));
        if n.kind == Kind::McuEvict {
            let key = self.up_key(i);
            self.checker.allow_gaps(key);
        }
    }

    /// The daemon process restarts: every session is rebuilt from its journal.
    fn restart_daemon(&mut self) {
        self.report.daemon_restarts += 1;
        for i in 0..self.nodes.len() {
            self.trace(i, format_args!("daemon restarts"));
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
                n.session.handle_input(at(self.now), Input::Disconnected);
                self.drain_node(link.node);
            }
        }
        let dc = config(None);
        for i in 0..self.nodes.len() {
            let journal = self.daemon.journals[i].clone();
            self.daemon.sessions[i] = Session::restore_daemon(
                dc,
                &self.nodes[i].name,
                storage(&dc),
                journal,
                &mut self.rng,
            )
            .expect("restore from journal");
            self.daemon.timeouts[i] = Instant::ZERO;
        }
    }
}

impl Node {
    fn session_config_max(&self) -> u32 {
        config(Some(self.kind)).max_frame
    }
}

/// One output, detached from the output buffer.
enum Owned<E> {
    Transmit(Vec<u8>),
    Close,
    Timeout(Instant),
    Event(E),
}

/// A node event, detached from the output buffer.
#[derive(Debug)]
enum NodeEv {
    Call {
        seq: u64,
        call_id: CallId,
    },
    Duplicate {
        seq: u64,
        call_id: CallId,
        answer: Option<u64>,
    },
    NotRun {
        seq: u64,
        call_id: CallId,
        answer: u64,
        fp: String,
    },
    Cancel {
        seq: u64,
        call_id: CallId,
        active: bool,
    },
    Message {
        seq: u64,
        fp: String,
    },
    Gap {
        from: u64,
        to: u64,
    },
    Expired {
        call_id: CallId,
        answer: u64,
    },
    Reset,
    Other(#[allow(dead_code)] String),
}

impl From<&Event<'_>> for NodeEv {
    fn from(ev: &Event<'_>) -> Self {
        match ev {
            Event::Call { seq, call, .. } => NodeEv::Call {
                seq: *seq,
                call_id: call.call_id,
            },
            Event::DuplicateCall {
                seq,
                call_id,
                answer,
            } => NodeEv::Duplicate {
                seq: *seq,
                call_id: *call_id,
                answer: *answer,
            },
            Event::CallNotRun {
                seq,
                call_id,
                why,
                answer,
            } => NodeEv::NotRun {
                seq: *seq,
                call_id: *call_id,
                answer: *answer,
                fp: match why {
                    NotRun::Busy => format!("result:{call_id}:rejected"),
                    NotRun::Expired => format!("result:{call_id}:timed-out"),
                },
            },
            Event::Cancel {
                seq,
                call_id,
                active,
            } => NodeEv::Cancel {
                seq: *seq,
                call_id: *call_id,
                active: *active,
            },
            Event::Message { seq, body } => NodeEv::Message {
                seq: *seq,
                fp: fingerprint(body),
            },
            Event::Gap { from, to } => NodeEv::Gap {
                from: *from,
                to: *to,
            },
            Event::CallExpired { call_id, answer } => NodeEv::Expired {
                call_id: *call_id,
                answer: *answer,
            },
            Event::SessionReset { .. } => NodeEv::Reset,
            Event::BufferTooSmall { needed } => panic!("output buffer too small: {needed}"),
            other => NodeEv::Other(format!("{other:?}")),
        }
    }
}

/// A daemon event, detached from the output buffer.
#[derive(Debug)]
enum DaemonEv {
    Update {
        id: CallId,
        state: CallState,
        seq: Option<u64>,
        fp: String,
    },
    Message {
        seq: u64,
        fp: String,
    },
    Gap {
        from: u64,
        to: u64,
    },
    Reset {
        unacked: Option<(u64, u64)>,
        peer_lost_from: u64,
    },
    Other(#[allow(dead_code)] String),
}

impl From<&Event<'_>> for DaemonEv {
    fn from(ev: &Event<'_>) -> Self {
        match ev {
            Event::CallUpdate {
                call_id,
                state,
                seq,
                outcome,
            } => {
                let fp = match (outcome, state) {
                    (Some(o), _) => format!("result:{call_id}:{}", outcome_kind(o)),
                    (None, CallState::AwaitingApproval) => {
                        format!("progress:{call_id}:{:?}", Stage::AwaitingApproval)
                    }
                    (None, _) => format!("progress:{call_id}:{:?}", Stage::Running),
                };
                DaemonEv::Update {
                    id: *call_id,
                    state: *state,
                    seq: *seq,
                    fp,
                }
            }
            Event::Message { seq, body } => DaemonEv::Message {
                seq: *seq,
                fp: fingerprint(body),
            },
            Event::Gap { from, to } => DaemonEv::Gap {
                from: *from,
                to: *to,
            },
            Event::SessionReset {
                unacked,
                peer_lost_from,
            } => DaemonEv::Reset {
                unacked: *unacked,
                peer_lost_from: *peer_lost_from,
            },
            Event::BufferTooSmall { needed } => panic!("output buffer too small: {needed}"),
            other => DaemonEv::Other(format!("{other:?}")),
        }
    }
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
