//! The fleet load generator end to end with a few nodes: a real `ternd` (built here if
//! it is not next to the test binary), pairing, calls, events, `kill -9` and restart.
//! Only correctness is asserted; the timings it prints are not checked. The runs on a
//! shared PostgreSQL store need a server: `TERN_TEST_POSTGRES` names it (an admin URL
//! whose user may create databases); without it they say so and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use benches::fleet::{Options, Setup, Transport, run, ternd};
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
    quick_on(transport, Setup::SQLITE, None);
}

/// The admin URL of the PostgreSQL server the tests may use, if one is named.
fn postgres() -> Option<String> {
    let url = std::env::var("TERN_TEST_POSTGRES").ok();
    if url.is_none() {
        eprintln!("TERN_TEST_POSTGRES is not set: fleet run on PostgreSQL skipped");
    }
    url
}

fn quick_on(transport: Transport, setup: Setup, postgres: Option<String>) {
    let quick = Options::quick(transport);
    let options = Options {
        ternd: Some(ternd_binary()),
        setup,
        postgres: postgres.unwrap_or(quick.postgres.clone()),
        ..quick
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
    if setup.daemons > 1 {
        // One daemon was killed: the other holds every node's session.
        assert_eq!(report.failed_over, Some(options.nodes / 2));
        assert_eq!(report.owners_after, vec![("fleet-b".into(), options.nodes)]);
    }
}

#[test]
fn twenty_nodes_over_tcp() {
    quick(Transport::Tcp);
}

#[test]
fn twenty_nodes_over_quic() {
    quick(Transport::Quic);
}

#[test]
fn twenty_nodes_over_tcp_on_postgres() {
    if let Some(url) = postgres() {
        quick_on(Transport::Tcp, Setup::POSTGRES, Some(url));
    }
}

#[test]
fn twenty_nodes_over_tcp_on_two_daemons_sharing_postgres() {
    if let Some(url) = postgres() {
        quick_on(Transport::Tcp, Setup::POSTGRES_TWO_DAEMONS, Some(url));
    }
}
