//! The fleet load generator: a real `ternd serve`, N nodes paired and held from this
//! process, one table of what the daemon did. See `benches::fleet`.
//!
//! ```sh
//! cargo build --release -p daemon --bin ternd
//! cargo run --release -p benches --bin fleet -- --nodes 10000 --transport quic
//! # SQLite, PostgreSQL with one daemon and with two, side by side:
//! cargo run --release -p benches --bin fleet -- --nodes 10000 --compare
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use benches::fleet::{Options, Setup, Store, Transport, compare, compare_table, run};
use benches::transports::memory::{raise_open_files, runtime};

// The nodes' side on the daemon's allocator: the generator shares the machine with the
// daemon, and glibc spent a seventh of its time clearing fresh pages.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "usage: fleet [--quick] [--nodes N] [--transport quic|tcp] \
[--store sqlite|postgres] [--daemons 1|2] [--compare] [--postgres URL] [--call-rate R] \
[--call-secs S] [--idle-secs S] [--events K] [--dials D] [--ternd PATH]

--store postgres runs the daemons on a database made for the run on the PostgreSQL
server --postgres names (an admin URL whose user may create databases; default
$TERN_FLEET_POSTGRES, else postgres://tern:tern@127.0.0.1/tern); --daemons 2 shares
it between two daemons (PostgreSQL only). --compare runs SQLite, PostgreSQL and
PostgreSQL with two daemons one after another and prints one table.";

/// The options, and whether to compare the set-ups.
fn parse(args: &[String]) -> Result<(Options, bool), String> {
    let mut o = Options::full(1_000, Transport::Quic);
    if args.iter().any(|a| a == "--quick") {
        o = Options::quick(Transport::Quic);
    }
    let compare = args.iter().any(|a| a == "--compare");
    let (mut store, mut daemons) = (None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--quick" || flag == "--compare" {
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--nodes" => o.nodes = num(value)?.max(1) as usize,
            "--transport" => {
                o.transport = match value.as_str() {
                    "quic" => Transport::Quic,
                    "tcp" => Transport::Tcp,
                    v => return Err(format!("--transport: {v:?} is not quic or tcp")),
                }
            }
            "--store" => {
                store = Some(match value.as_str() {
                    "sqlite" => Store::Sqlite,
                    "postgres" => Store::Postgres,
                    v => return Err(format!("--store: {v:?} is not sqlite or postgres")),
                })
            }
            "--daemons" => daemons = Some(num(value)? as usize),
            "--postgres" => o.postgres = value.clone(),
            "--call-rate" => o.call_rate = u32::try_from(num(value)?.max(1)).unwrap_or(u32::MAX),
            "--call-secs" => o.call_time = Duration::from_secs(num(value)?),
            "--idle-secs" => o.idle_time = Duration::from_secs(num(value)?),
            "--events" => o.events = num(value)?,
            "--dials" => o.dials_in_flight = num(value)?.max(1) as usize,
            "--ternd" => o.ternd = Some(PathBuf::from(value)),
            f => return Err(format!("unknown flag {f}\n{USAGE}")),
        }
    }
    if compare && (store.is_some() || daemons.is_some()) {
        return Err("--compare runs every set-up: no --store or --daemons with it".into());
    }
    let daemons = daemons.unwrap_or(1);
    // Two daemons share a store: PostgreSQL unless told otherwise.
    let store = store.unwrap_or(if daemons > 1 {
        Store::Postgres
    } else {
        Store::Sqlite
    });
    o.setup = Setup::new(store, daemons)?;
    Ok((o, compare))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (options, comparing) = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // A TCP run holds a socket per node in this process.
    if let Err(e) = raise_open_files(options.nodes as u64 * 2 + 4_096) {
        eprintln!("open-file limit: {e}");
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let failed = if comparing {
        let reports = rt.block_on(compare(&options));
        println!("{}", compare_table(&reports));
        reports.iter().any(|r| r.error.is_some())
    } else {
        let report = rt.block_on(run(&options));
        println!("{}", report.table());
        report.error.is_some()
    };
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
