//! The daemon's memory per idle node, measured alone: the daemon runs in a child process
//! (this same executable, started again with [`ROLE_ENV`] naming the transport), the
//! nodes in the parent. The child prints its address, then answers `status` lines on
//! stdin with its live connections and its resident set (`VmRSS` of
//! `/proc/self/status`), and exits when stdin closes. The parent reads the resident set
//! before any node connects and after N nodes have connected, exchanged a few 64 KiB
//! frames and sat idle: (after - before) / N.
//!
//! 1,000 connections need more descriptors than the usual soft limit of 1,024: both
//! processes raise `RLIMIT_NOFILE` ([`raise_open_files`]; up to the hard limit, beyond
//! it as root).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use super::certs::{DaemonIdentity, Leaf};
use super::raw_quinn::{self, MODE_ECHO};
use super::sessions::{Daemon, Fleet, NodeCommand};
use super::{BULK_PAYLOAD, BenchError, Transport};

/// Set (to a transport's name) in the environment of the child that runs the daemon.
pub const ROLE_ENV: &str = "TERN_BENCH_DAEMON";
/// Set to a program (a heap profiler) that runs the daemon's process: `$WRAP <exe>`.
pub const WRAP_ENV: &str = "TERN_BENCH_DAEMON_WRAP";
/// Client endpoints the QUIC nodes share (each node has its own connection).
pub const NODE_ENDPOINTS: usize = 4;
/// Connections set up at once by the quinn baseline's nodes.
const QUINN_CONNECTS_IN_FLIGHT: usize = 32;
/// Time allowed for every node to connect and exchange its frames.
const EXCHANGE_WAIT: Duration = Duration::from_secs(120);

/// The runtime both processes use: two workers, as many as the machine has cores.
pub fn runtime() -> Result<Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(BenchError::context("tokio runtime"))
}

/// Raises this process's open-file limit to at least `want` if it can (the soft limit
/// up to the hard one; both as root); returns the soft limit now in force.
pub fn raise_open_files(want: u64) -> Result<u64, BenchError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current.is_none_or(|c| c >= want) {
        return Ok(now.current.unwrap_or(u64::MAX));
    }
    let both = Rlimit {
        current: Some(want),
        maximum: Some(want),
    };
    let hard_too =
        now.maximum.is_some_and(|h| h < want) && setrlimit(Resource::Nofile, both).is_ok();
    if !hard_too {
        let soft = Rlimit {
            current: Some(now.maximum.map_or(want, |h| h.min(want))),
            maximum: now.maximum,
        };
        setrlimit(Resource::Nofile, soft).map_err(BenchError::context("raise RLIMIT_NOFILE"))?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// Resident set of a process (`None`: this one) in KiB.
pub fn rss_kib(pid: Option<u32>) -> Result<u64, BenchError> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status =
        std::fs::read_to_string(&path).map_err(BenchError::context("read /proc status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError(format!("no VmRSS in {path}")))
}

/// Runs the daemon role if this process was started as one: `Some` with how it ended.
pub fn run_child_if_asked() -> Option<Result<(), BenchError>> {
    let role = std::env::var(ROLE_ENV).ok()?;
    Some(child(&role))
}

enum Served {
    Sessions(Daemon),
    Quinn(raw_quinn::Server),
}

impl Served {
    fn addr(&self) -> SocketAddr {
        match self {
            Served::Sessions(d) => d.addr,
            Served::Quinn(s) => s.addr,
        }
    }

    fn live(&self) -> usize {
        match self {
            Served::Sessions(d) => d.registry.live(),
            Served::Quinn(s) => s.live(),
        }
    }
}

fn child(role: &str) -> Result<(), BenchError> {
    let transport = Transport::from_name(role)
        .ok_or_else(|| BenchError(format!("{ROLE_ENV}={role} names no transport")))?;
    raise_open_files(4096)?;
    let identity = DaemonIdentity::from_env()?;
    let rt = runtime()?;
    let _in_runtime = rt.enter();
    let served = rt.block_on(async {
        match transport {
            Transport::Quinn => raw_quinn::Server::start(&identity).map(Served::Quinn),
            t => Daemon::start(t, &identity).await.map(Served::Sessions),
        }
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "addr {}", served.addr())?;
    out.flush()?;
    for line in std::io::stdin().lines() {
        match line?.trim() {
            "status" => {
                writeln!(out, "status {} {}", served.live(), rss_kib(None)?)?;
                out.flush()?;
            }
            other => return Err(BenchError(format!("unknown request {other:?}"))),
        }
    }
    Ok(())
}

/// The resident set of a daemon before and after `nodes` idle nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleMemory {
    pub nodes: usize,
    pub before_kib: u64,
    pub after_kib: u64,
}

impl IdleMemory {
    /// RSS growth per idle node, KiB (NaN without nodes: nothing was measured).
    pub fn per_node_kib(&self) -> f64 {
        if self.nodes == 0 {
            return f64::NAN;
        }
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.nodes as f64
    }
}

/// Starts a daemon over `transport` in a child process, connects one node per leaf
/// (each exchanges `frames` frames of 64 KiB), lets them sit idle for `idle`, and reads
/// the daemon's resident set before and after.
pub fn measure(
    rt: &Runtime,
    transport: Transport,
    identity: &DaemonIdentity,
    leaves: &[Leaf],
    frames: usize,
    idle: Duration,
) -> Result<IdleMemory, BenchError> {
    let exe = std::env::current_exe()?;
    // A profiler to run the daemon under (`heaptrack`, say): the program, then the exe.
    let mut command = match std::env::var_os(WRAP_ENV) {
        Some(wrap) => {
            let mut c = Command::new(wrap);
            c.arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = command
        .env(ROLE_ENV, transport.name())
        .envs(identity.to_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(BenchError::context("start the daemon process"))?;
    let result = drive(rt, transport, identity, leaves, frames, idle, &mut child);
    if result.is_err() {
        let _ = child.kill();
    }
    // With stdin closed the child returns; its exit status matters only on success.
    let status = child.wait()?;
    match result {
        Ok(m) if status.success() => Ok(m),
        Ok(_) => Err(BenchError(format!(
            "the daemon process ended with {status}"
        ))),
        Err(e) => Err(e),
    }
}

struct Link {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Link {
    /// The daemon's next line: one that starts with `addr ` or `status ` (a profiler
    /// running it may write lines of its own).
    fn line(&mut self) -> Result<String, BenchError> {
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                return Err(BenchError("the daemon process ended early".into()));
            }
            let line = line.trim();
            if line.starts_with("addr ") || line.starts_with("status ") {
                return Ok(line.to_owned());
            }
        }
    }

    /// (live connections, RSS KiB) of the daemon now.
    fn status(&mut self) -> Result<(usize, u64), BenchError> {
        writeln!(self.stdin, "status")?;
        self.stdin.flush()?;
        let line = self.line()?;
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("status"), Some(live), Some(rss)) => Ok((
                live.parse().map_err(BenchError::context("live count"))?,
                rss.parse().map_err(BenchError::context("RSS"))?,
            )),
            _ => Err(BenchError(format!("unexpected reply {line:?}"))),
        }
    }
}

fn drive(
    rt: &Runtime,
    transport: Transport,
    identity: &DaemonIdentity,
    leaves: &[Leaf],
    frames: usize,
    idle: Duration,
    child: &mut Child,
) -> Result<IdleMemory, BenchError> {
    let mut link = Link {
        stdin: child
            .stdin
            .take()
            .ok_or_else(|| BenchError("no stdin".into()))?,
        stdout: BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| BenchError("no stdout".into()))?,
        ),
    };
    let line = link.line()?;
    let addr: SocketAddr = line
        .strip_prefix("addr ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| BenchError(format!("expected the daemon's address, got {line:?}")))?;
    // Let the child's runtime and endpoint settle before the baseline is read.
    std::thread::sleep(Duration::from_millis(500));
    let (live, before_kib) = link.status()?;
    if live != 0 {
        return Err(BenchError(format!(
            "{live} connections before any node connected"
        )));
    }
    let nodes = rt.block_on(connect_and_exchange(
        transport, addr, identity, leaves, frames,
    ))?;
    std::thread::sleep(idle);
    let (live, after_kib) = link.status()?;
    rt.block_on(nodes.shutdown());
    if live != leaves.len() {
        return Err(BenchError(format!(
            "the daemon holds {live} connections of {} nodes",
            leaves.len()
        )));
    }
    Ok(IdleMemory {
        nodes: leaves.len(),
        before_kib,
        after_kib,
    })
}

/// Nodes kept connected while the daemon is measured.
enum Idle {
    Sessions(Fleet),
    Quinn(Vec<raw_quinn::Client>, Vec<raw_quinn::RawStream>),
}

impl Idle {
    async fn shutdown(self) {
        match self {
            Idle::Sessions(fleet) => fleet.shutdown().await,
            Idle::Quinn(clients, streams) => {
                streams.iter().for_each(raw_quinn::RawStream::close);
                clients.iter().for_each(raw_quinn::Client::close);
            }
        }
    }
}

async fn connect_and_exchange(
    transport: Transport,
    addr: SocketAddr,
    identity: &DaemonIdentity,
    leaves: &[Leaf],
    frames: usize,
) -> Result<Idle, BenchError> {
    let pin = identity.pin();
    match transport {
        Transport::Quinn => {
            let clients = (0..NODE_ENDPOINTS)
                .map(|_| raw_quinn::Client::new())
                .collect::<Result<Vec<_>, _>>()?;
            let frame = Arc::new(raw_quinn::frame(BULK_PAYLOAD));
            let mut streams = Vec::with_capacity(leaves.len());
            for (c, chunk) in leaves.chunks(QUINN_CONNECTS_IN_FLIGHT).enumerate() {
                let mut tasks = Vec::with_capacity(chunk.len());
                for (k, leaf) in chunk.iter().enumerate() {
                    let client = clients[(c + k) % clients.len()].clone();
                    let (tls, frame) = (leaf.client(pin)?, frame.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut s = client.open(addr, tls, MODE_ECHO).await?;
                        let mut reply = vec![0u8; frame.len()];
                        for _ in 0..frames {
                            s.round_trip(&frame, &mut reply).await?;
                        }
                        Ok::<_, BenchError>(s)
                    }));
                }
                for t in tasks {
                    streams.push(t.await.map_err(BenchError::context("node task"))??);
                }
            }
            Ok(Idle::Quinn(clients, streams))
        }
        t => {
            let fleet = Fleet::connect(t, addr, pin, leaves, NODE_ENDPOINTS).await?;
            fleet.broadcast(NodeCommand::Send(frames)).await?;
            fleet.settled(leaves.len(), EXCHANGE_WAIT).await?;
            Ok(Idle::Sessions(fleet))
        }
    }
}
