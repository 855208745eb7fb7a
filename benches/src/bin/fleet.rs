//! The fleet load generator: a real `ternd serve`, N nodes paired and held from this
//! process, one table of what the daemon did. See `benches::fleet`.
//!
//! ```sh
//! cargo build --release -p daemon --bin ternd
//! cargo run --release -p benches --bin fleet -- --nodes 10000 --transport quic
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use benches::fleet::{Options, Transport, run};
use benches::transports::memory::{raise_open_files, runtime};

// The nodes' side on the daemon's allocator: the generator shares the machine with the
// daemon, and glibc spent a seventh of its time clearing fresh pages.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "usage: fleet [--quick] [--nodes N] [--transport quic|tcp] [--call-rate R] \
[--call-secs S] [--idle-secs S] [--events K] [--dials D] [--ternd PATH]";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::full(1_000, Transport::Quic);
    if args.iter().any(|a| a == "--quick") {
        o = Options::quick(Transport::Quic);
    }
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--quick" {
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
            "--call-rate" => o.call_rate = u32::try_from(num(value)?.max(1)).unwrap_or(u32::MAX),
            "--call-secs" => o.call_time = Duration::from_secs(num(value)?),
            "--idle-secs" => o.idle_time = Duration::from_secs(num(value)?),
            "--events" => o.events = num(value)?,
            "--dials" => o.dials_in_flight = num(value)?.max(1) as usize,
            "--ternd" => o.ternd = Some(PathBuf::from(value)),
            f => return Err(format!("unknown flag {f}\n{USAGE}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
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
    let report = rt.block_on(run(&options));
    println!("{}", report.table());
    if report.error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
