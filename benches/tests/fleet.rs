//! The fleet load generator end to end with a few nodes: a real `ternd` (built here if
//! it is not next to the test binary), pairing, calls, events, `kill -9` and restart.
//! Only correctness is asserted; the timings it prints are not checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use benches::fleet::{Options, Transport, run, ternd};
use benches::transports::memory::runtime;

/// `ternd` of this build profile: found next to the test binary, else built.
fn ternd_binary() -> PathBuf {
    if let Ok(p) = ternd::locate(None) {
        return p;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "daemon", "--bin", "ternd"]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "cargo build -p daemon --bin ternd failed");
    ternd::locate(None).expect("ternd after building it")
}

fn quick(transport: Transport) {
    let options = Options {
        ternd: Some(ternd_binary()),
        ..Options::quick(transport)
    };
    let report = runtime().unwrap().block_on(run(&options));
    eprintln!("{}", report.table());
    assert_eq!(report.error, None);
    assert_eq!(report.held, options.nodes);
    assert_eq!(report.calls.failed, 0);
    assert_eq!(
        report.events_stored,
        options.nodes * options.events as usize
    );
    assert_eq!(report.events_lost, 0);
    assert_eq!(report.events_duplicated, 0);
    assert_eq!(report.gave_up, 0);
}

#[test]
fn twenty_nodes_over_tcp() {
    quick(Transport::Tcp);
}

#[test]
fn twenty_nodes_over_quic() {
    quick(Transport::Quic);
}
