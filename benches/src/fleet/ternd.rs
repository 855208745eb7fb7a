//! The daemon under test: a real `ternd serve` process on its own state directory, and
//! what `/proc` says about it.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daemon::api::{ApiClient, SOCKET_NAME};

use crate::transports::BenchError;

/// How long a start may take before the daemon answers on its operator socket (it
/// restores every node's session from the store first).
const START_WAIT: Duration = Duration::from_secs(120);

/// Finds the `ternd` binary: `explicit`, else `$TERND`, else next to this executable
/// (`target/<profile>/`, or its parent for a test in `target/<profile>/deps/`).
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("TERND") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join("ternd");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(BenchError(
        "no ternd binary next to this one: run `cargo build --release -p daemon --bin ternd` \
         first, or pass --ternd PATH"
            .into(),
    ))
}

/// A port free on 127.0.0.1 for both TCP and UDP (the daemon listens on both).
pub fn free_port() -> Result<u16, BenchError> {
    for _ in 0..64 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(BenchError("no port free for both TCP and UDP".into()))
}

/// Settings the daemon is started with.
#[derive(Clone)]
pub struct DaemonSettings {
    pub exe: PathBuf,
    pub state_dir: PathBuf,
    pub port: u16,
    pub max_connections: usize,
    /// Daemon-wide pairing burst (the per-address limit keeps its default).
    pub pairing_burst: u32,
    /// A shared store (`postgres://...`, handed over in `TERN_STORE`) and this daemon's
    /// name among those sharing it; `None`: SQLite in the state directory.
    pub store: Option<SharedStore>,
}

/// A store several daemons may share.
#[derive(Clone)]
pub struct SharedStore {
    pub url: String,
    pub daemon_id: String,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("url", &super::pg::redact(&self.url))
            .field("daemon_id", &self.daemon_id)
            .finish()
    }
}

impl std::fmt::Debug for DaemonSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The store URL holds a password.
        f.debug_struct("DaemonSettings")
            .field("exe", &self.exe)
            .field("state_dir", &self.state_dir)
            .field("port", &self.port)
            .field("daemon_id", &self.store.as_ref().map(|s| &s.daemon_id))
            .finish_non_exhaustive()
    }
}

/// A running (or killed) `ternd serve`.
#[derive(Debug)]
pub struct Ternd {
    settings: DaemonSettings,
    child: Option<Child>,
}

impl Drop for Ternd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Ternd {
    /// Starts the daemon and waits until its operator socket answers.
    pub async fn start(settings: DaemonSettings) -> Result<(Self, ApiClient), BenchError> {
        let mut d = Self {
            settings,
            child: None,
        };
        let api = d.restart().await?;
        Ok((d, api))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.settings.port))
    }

    pub fn socket(&self) -> PathBuf {
        self.settings.state_dir.join(SOCKET_NAME)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The name it shares the store under, if it does.
    pub fn daemon_id(&self) -> Option<&str> {
        self.settings.store.as_ref().map(|s| s.daemon_id.as_str())
    }

    /// Starts the daemon again on the same state directory and ports; returns a client
    /// once the operator socket answers.
    pub async fn restart(&mut self) -> Result<ApiClient, BenchError> {
        let s = &self.settings;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.state_dir.join("ternd.log"))?;
        let listen = format!("127.0.0.1:{}", s.port);
        let mut command = Command::new(&s.exe);
        match &s.store {
            Some(store) => command
                .env("TERN_STORE", &store.url)
                .env("TERN_DAEMON_ID", &store.daemon_id),
            None => command
                .env_remove("TERN_STORE")
                .env_remove("TERN_DAEMON_ID"),
        };
        let child = command
            .arg("serve")
            .args(["--listen-quic", &listen, "--listen-tcp", &listen])
            .args(["--public-names", "127.0.0.1"])
            .args(["--max-connections", &s.max_connections.to_string()])
            // Enrolment is not throttled daemon-wide; the per-address limit stays at
            // its default and the generator spreads nodes over source addresses.
            .args(["--pairing-burst", &s.pairing_burst.to_string()])
            .args(["--pairing-refill", "1ms"])
            .env("TERN_STATE_DIR", &s.state_dir)
            .env(
                "RUST_LOG",
                std::env::var("FLEET_TERND_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError(format!("starting {}: {e}", s.exe.display())))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(BenchError(format!(
                    "ternd exited at start ({status}); see {}",
                    self.settings.state_dir.join("ternd.log").display()
                )));
            }
            if let Ok(api) = ApiClient::connect(self.socket()).await
                && api.status().await.is_ok()
            {
                return Ok(api);
            }
            if started.elapsed() > START_WAIT {
                return Err(BenchError("ternd did not answer in time".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) -> Result<(), BenchError> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

/// CPU time (user + system) of `pid` so far.
pub fn cpu_time(pid: u32) -> Result<Duration, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError("unreadable /proc stat".into()))?;
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, BenchError> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| BenchError("unreadable /proc stat".into()))
    };
    let total = ticks(11)? + ticks(12)?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_nanos(
        total.saturating_mul(1_000_000_000) / hz,
    ))
}
