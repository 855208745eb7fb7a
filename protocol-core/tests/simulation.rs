//! Deterministic simulation of one daemon and several nodes over a faulty network.
//!
//! `TERN_SIM_SEEDS=<n>` runs seeds `0..n` (default 500); `TERN_SIM_SEED=<s>` runs only
//! seed `s`, exactly as it ran before.

mod sim;

use sim::{Report, SimConfig, World};

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("TERN_SIM_SEED") {
        return vec![s.trim().parse().expect("TERN_SIM_SEED is a number")];
    }
    let n = std::env::var("TERN_SIM_SEEDS").ok().map_or(500, |s| {
        s.trim().parse().expect("TERN_SIM_SEEDS is a number")
    });
    (0..n).collect()
}

#[test]
fn every_seed_keeps_the_invariants() {
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    let mut longest = Report::default();
    let (mut messages, mut frames, mut lost, mut restarts, mut gaps) = (0, 0, 0, 0, 0);
    let mut finals = std::collections::BTreeMap::<String, u64>::new();
    let (mut cancels, mut node_timeouts) = (0, 0);
    let seeds = seeds();
    for &seed in &seeds {
        let r = World::new(SimConfig::new(seed)).run();
        if !r.violations.is_empty() {
            eprintln!(
                "seed {seed} FAILED ({} violations), first: {}\n  replay: TERN_SIM_SEED={seed} cargo test -p protocol-core --test simulation",
                r.violations.len(),
                r.violations[0]
            );
            if seeds.len() == 1 {
                for v in &r.violations {
                    eprintln!("  {v}");
                }
            }
            failed.push(seed);
        }
        messages += r.messages;
        frames += r.frames;
        lost += r.frames_lost;
        restarts += u64::from(r.daemon_restarts + r.node_restarts);
        gaps += r.gaps;
        cancels += r.cancels;
        node_timeouts += r.node_timeouts;
        for (k, n) in &r.finals {
            *finals.entry(k.clone()).or_default() += n;
        }
        if r.sim_ms > longest.sim_ms
            || (r.sim_ms == longest.sim_ms && r.messages > longest.messages)
        {
            longest = r;
        }
    }
    eprintln!(
        "{} seeds in {:.1?}: {messages} stream messages, {frames} frames ({lost} lost), {restarts} restarts, {gaps} gaps; longest run: seed {} with {} nodes, {} ms simulated, {} messages, {} frames, {} calls, {} daemon / {} node restarts",
        seeds.len(),
        started.elapsed(),
        longest.seed,
        longest.nodes,
        longest.sim_ms,
        longest.messages,
        longest.frames,
        longest.calls,
        longest.daemon_restarts,
        longest.node_restarts,
    );
    eprintln!(
        "call outcomes: {finals:?}; {cancels} cancels sent; {node_timeouts} calls timed out on nodes"
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}

#[test]
fn a_seed_replays_identically() {
    let a = World::new(SimConfig::new(42)).run();
    let b = World::new(SimConfig::new(42)).run();
    assert!(a.frames > 100, "the run did something: {a:?}");
    assert_eq!(a, b);
}

/// The checker must fail a run whose replay skips a message and renumbers the rest.
#[test]
fn checker_catches_a_replay_that_skips_a_message() {
    let mut triggered = 0;
    for seed in 0..30 {
        let mut cfg = SimConfig::new(seed);
        cfg.planted_bug = true;
        let r = World::new(cfg).run();
        if r.planted_hits > 0 {
            triggered += 1;
            assert!(
                !r.violations.is_empty(),
                "seed {seed}: the planted bug went unnoticed"
            );
        }
    }
    eprintln!("the planted bug fired in {triggered} of 30 runs; each was caught");
    assert!(
        triggered >= 10,
        "the planted bug fired in only {triggered} runs"
    );
}
