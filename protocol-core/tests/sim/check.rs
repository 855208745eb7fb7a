//! The invariant checker. It sees only what the applications saw (what each sender's API
//! accepted, what each receiver was handed) and judges the run afterwards.

use std::collections::BTreeMap;

use protocol_core::session::CallState;
use protocol_core::wire::{Body, CallId, Outcome, Seq, SessionId};

/// One direction of one session, as the applications know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StreamKey {
    /// Node -> daemon, for one life of the node (a RAM-only restart starts a new one).
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
    log: Vec<Item>,
    /// The sender evicts old messages when full: gaps are legitimate.
    gaps_allowed: bool,
    /// The sender lost its memory (a RAM-only node restarted).
    sender_restarted: bool,
    /// The receiver was told the sender's messages from here on are gone.
    reported_lost_from: Option<Seq>,
    /// The sender was told its messages in this range will never be delivered.
    reported_unacked: Option<(Seq, Seq)>,
}

#[derive(Debug, Default)]
struct CallTrack {
    finals: Vec<CallState>,
    executed: u32,
}

#[derive(Debug, Default)]
pub struct Checker {
    streams: BTreeMap<StreamKey, Stream>,
    calls: BTreeMap<(usize, CallId), CallTrack>,
    violations: Vec<String>,
}

/// What identifies a stream message's content for the checker.
pub fn fingerprint(body: &Body<'_>) -> String {
    match body {
        Body::Register(r) => format!("register:{}", r.capabilities.len()),
        Body::Call(c) => format!("call:{}", c.call_id),
        Body::Progress(p) => format!("progress:{}:{:?}", p.call_id, p.stage),
        Body::Result(r) => format!("result:{}:{}", r.call_id, outcome_kind(&r.outcome)),
        Body::Cancel(c) => format!("cancel:{}", c.call_id),
        Body::Event(e) => format!("event:{}:{:?}", e.name, e.payload.data),
    }
}

pub fn outcome_kind(o: &Outcome<'_>) -> &'static str {
    match o {
        Outcome::Success(_) => "success",
        Outcome::Failed { .. } => "failed",
        Outcome::Rejected { .. } => "rejected",
        Outcome::Cancelled => "cancelled",
        Outcome::TimedOut => "timed-out",
    }
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

    pub fn call_issued(&mut self, node: usize, id: CallId) {
        if self
            .calls
            .insert((node, id), CallTrack::default())
            .is_some()
        {
            self.violation(format!("node {node}: call id {id} issued twice"));
        }
    }

    pub fn call_executed(&mut self, node: usize, id: CallId) {
        let t = self.calls.entry((node, id)).or_default();
        t.executed += 1;
        if t.executed > 1 {
            self.violation(format!("node {node}: call {id} executed twice"));
        }
    }

    pub fn call_update(&mut self, node: usize, id: CallId, state: CallState) {
        let Some(t) = self.calls.get_mut(&(node, id)) else {
            return self.violation(format!("node {node}: update for unknown call {id}"));
        };
        let after_final = !t.finals.is_empty();
        if state.is_final() {
            t.finals.push(state);
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
        for (key, s) in &self.streams {
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
                            return v;
                        }
                        match s.accepted.get(seq) {
                            Some(want) if want == fp => {}
                            Some(want) => {
                                v.push(format!(
                                    "{key:?}: seq {seq} delivered as {fp}, sent as {want}"
                                ));
                                return v;
                            }
                            None => {
                                v.push(format!(
                                    "{key:?}: seq {seq} delivered ({fp}) but never sent"
                                ));
                                return v;
                            }
                        }
                        expected += 1;
                    }
                    Item::Gap(from, to) => {
                        if *from != expected || to < from {
                            v.push(format!(
                                "{key:?}: gap {from}..={to}, expected it to start at {expected}"
                            ));
                            return v;
                        }
                        if !s.gaps_allowed {
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
            match t.finals.as_slice() {
                [] => v.push(format!(
                    "node {node}: call {id} never reached a final state"
                )),
                [CallState::Succeeded | CallState::Failed] if t.executed == 0 => v.push(format!(
                    "node {node}: call {id} reported done but never executed"
                )),
                [_] => {}
                more => v.push(format!("node {node}: call {id} has final states {more:?}")),
            }
        }
        v
    }
}
