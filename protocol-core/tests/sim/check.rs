//! The invariant checker. It sees only what the applications committed (what each
//! sender's API accepted, what each receiver was handed, what each call ended as) plus
//! the side effects that cannot be rolled back (call executions), and judges the run
//! afterwards.

use std::collections::{BTreeMap, BTreeSet};

use protocol_core::session::CallState;
use protocol_core::wire::{CallId, RejectCode, Seq, SessionId, Stage};

/// One direction of one session, as the applications know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StreamKey {
    /// Node -> daemon, for one life of the node's memory (a microcontroller reboot
    /// starts a new one; a Linux node keeps its stream across restarts).
    Up { node: usize, incarnation: u32 },
    /// Daemon -> node, for one daemon session id.
    Down { node: usize, session: SessionId },
}

#[derive(Debug, Clone)]
enum Item {
    Msg(Seq, String),
    Gap(Seq, Seq),
}

#[derive(Debug, Default)]
struct Stream {
    accepted: BTreeMap<Seq, String>,
    /// Accepted messages larger than the receiver accepts: they may arrive as a gap.
    oversized: BTreeSet<Seq>,
    log: Vec<Item>,
    /// The sender evicts old messages when full: gaps are legitimate.
    gaps_allowed: bool,
    /// The sender lost its memory (a microcontroller rebooted).
    sender_restarted: bool,
    /// The receiver was told the sender's messages from here on are gone.
    reported_lost_from: Option<Seq>,
    /// The sender was told its messages in this range will never be delivered.
    reported_unacked: Option<(Seq, Seq)>,
}

/// A call's final state as the daemon application committed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Final {
    pub state: CallState,
    /// A `Failed` answer a restored node gave for a call it was running when it stopped.
    pub interrupted: bool,
}

#[derive(Debug, Default)]
struct CallTrack {
    issued: bool,
    oversized: bool,
    finals: Vec<Final>,
    executed: u32,
    dispatched: bool,
}

#[derive(Debug, Default)]
pub struct Checker {
    streams: BTreeMap<StreamKey, Stream>,
    calls: BTreeMap<(usize, CallId), CallTrack>,
    violations: Vec<String>,
}

pub fn stage_fp(call_id: CallId, stage: Stage) -> String {
    format!("progress:{call_id}:{stage:?}")
}

pub fn event_fp(name: &str, data: &[u8]) -> String {
    format!("event:{name}:{data:?}")
}

pub fn result_fp(call_id: CallId, kind: &str) -> String {
    format!("result:{call_id}:{kind}")
}

impl Checker {
    fn stream(&mut self, key: StreamKey) -> &mut Stream {
        self.streams.entry(key).or_default()
    }

    pub fn violation(&mut self, v: String) {
        self.violations.push(v);
    }

    pub fn allow_gaps(&mut self, key: StreamKey) {
        self.stream(key).gaps_allowed = true;
    }

    pub fn accepted(&mut self, key: StreamKey, seq: Seq, fp: String) {
        if self.stream(key).accepted.insert(seq, fp).is_some() {
            self.violation(format!("{key:?}: seq {seq} accepted twice by the sender"));
        }
    }

    pub fn oversized(&mut self, key: StreamKey, seq: Seq) {
        self.stream(key).oversized.insert(seq);
    }

    pub fn delivered(&mut self, key: StreamKey, seq: Seq, fp: String) {
        self.stream(key).log.push(Item::Msg(seq, fp));
    }

    pub fn gap(&mut self, key: StreamKey, from: Seq, to: Seq) {
        self.stream(key).log.push(Item::Gap(from, to));
    }

    pub fn sender_restarted(&mut self, key: StreamKey) {
        self.stream(key).sender_restarted = true;
    }

    pub fn reported_lost_from(&mut self, key: StreamKey, from: Seq) {
        self.stream(key).reported_lost_from = Some(from);
    }

    pub fn reported_unacked(&mut self, key: StreamKey, range: Option<(Seq, Seq)>) {
        self.stream(key).reported_unacked = range;
    }

    pub fn call_issued(&mut self, node: usize, id: CallId, oversized: bool) {
        let t = self.calls.entry((node, id)).or_default();
        let twice = t.issued;
        t.issued = true;
        t.oversized = oversized;
        if twice {
            self.violation(format!("node {node}: call id {id} issued twice"));
        }
    }

    /// A node application ran the call: a side effect no restart takes back.
    pub fn call_executed(&mut self, node: usize, id: CallId) {
        let t = self.calls.entry((node, id)).or_default();
        t.executed += 1;
        if t.executed > 1 {
            self.violation(format!("node {node}: call {id} executed twice"));
        }
    }

    pub fn call_update(&mut self, node: usize, id: CallId, state: CallState, interrupted: bool) {
        let Some(t) = self.calls.get_mut(&(node, id)).filter(|t| t.issued) else {
            return self.violation(format!("node {node}: update for unknown call {id}"));
        };
        let after_final = !t.finals.is_empty();
        if state.is_final() {
            t.finals.push(Final { state, interrupted });
        }
        if state == CallState::Dispatched {
            t.dispatched = true;
        }
        if after_final {
            self.violation(format!(
                "node {node}: call {id} changed to {state:?} after its final state"
            ));
        }
    }

    /// Judges the run; returns every violation found.
    pub fn finish(mut self) -> Vec<String> {
        let mut v = std::mem::take(&mut self.violations);
        let verbose = std::env::var_os("TERN_SIM_VERBOSE").is_some();
        'streams: for (key, s) in &self.streams {
            if verbose {
                eprintln!(
                    "{key:?}: accepted {} (last {:?}), delivered {}, restarted {}, lost_from {:?}, unacked {:?}",
                    s.accepted.len(),
                    s.accepted.keys().last(),
                    s.log.len(),
                    s.sender_restarted,
                    s.reported_lost_from,
                    s.reported_unacked
                );
            }
            let mut expected: Seq = 1;
            for item in &s.log {
                match item {
                    Item::Msg(seq, fp) => {
                        if *seq != expected {
                            v.push(format!("{key:?}: delivered seq {seq}, expected {expected}"));
                            continue 'streams;
                        }
                        match s.accepted.get(seq) {
                            Some(want) if want == fp => {}
                            Some(want) => {
                                v.push(format!(
                                    "{key:?}: seq {seq} delivered as {fp}, sent as {want}"
                                ));
                                continue 'streams;
                            }
                            None => {
                                v.push(format!(
                                    "{key:?}: seq {seq} delivered ({fp}) but never sent"
                                ));
                                continue 'streams;
                            }
                        }
                        expected += 1;
                    }
                    Item::Gap(from, to) => {
                        if *from != expected || to < from {
                            v.push(format!(
                                "{key:?}: gap {from}..={to}, expected it to start at {expected}"
                            ));
                            continue 'streams;
                        }
                        // A sender that never evicts reports only what it could never
                        // send: a message larger than the receiver accepts.
                        let explained =
                            s.gaps_allowed || (*from..=*to).all(|seq| s.oversized.contains(&seq));
                        if !explained {
                            v.push(format!(
                                "{key:?}: gap {from}..={to} from a sender that never evicts"
                            ));
                        }
                        expected = to + 1;
                    }
                }
            }
            if let Some(from) = s.reported_lost_from
                && from != expected
            {
                v.push(format!(
                    "{key:?}: loss reported from {from}, but delivery stood at {expected}"
                ));
            }
            for seq in s.accepted.range(expected..).map(|(seq, _)| *seq) {
                let excused = s.sender_restarted
                    || s.reported_unacked
                        .is_some_and(|(a, b)| a <= seq && seq <= b);
                if !excused {
                    v.push(format!(
                        "{key:?}: seq {seq} accepted but never delivered nor reported lost"
                    ));
                    break;
                }
            }
        }
        for ((node, id), t) in &self.calls {
            if !t.issued {
                v.push(format!(
                    "node {node}: call {id} executed but the daemon never committed issuing it"
                ));
                continue;
            }
            if t.oversized && t.dispatched {
                v.push(format!(
                    "node {node}: call {id} is larger than the node accepts, yet reported dispatched"
                ));
            }
            let Some(f) = t.finals.first() else {
                v.push(format!(
                    "node {node}: call {id} never reached a final state"
                ));
                continue;
            };
            if t.finals.len() > 1 {
                v.push(format!(
                    "node {node}: call {id} has final states {:?}",
                    t.finals
                ));
                continue;
            }
            // How often the node may have run it, given how it ended.
            let (lo, hi) = match f.state {
                CallState::Succeeded | CallState::Cancelled => (1, 1),
                CallState::Failed if f.interrupted => (0, 1),
                CallState::Failed => (1, 1),
                CallState::Rejected(RejectCode::Busy) => (0, 0),
                CallState::Rejected(_) => (1, 1),
                CallState::Undeliverable => (0, 0),
                CallState::TimedOut | CallState::Lost => (0, 1),
                other => {
                    v.push(format!(
                        "node {node}: call {id} ended in a non-final state {other:?}"
                    ));
                    continue;
                }
            };
            if t.executed < lo || t.executed > hi {
                v.push(format!(
                    "node {node}: call {id} ended {f:?} but was executed {} times",
                    t.executed
                ));
            }
        }
        v
    }
}
