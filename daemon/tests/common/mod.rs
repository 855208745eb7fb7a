//! What the end-to-end and fault tests share: real `ternd` processes (the daemon, the
//! operator's CLI, Linux node hosts) on loopback, each with its own state directory.
// Each test binary uses a part of this.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TERND: &str = env!("CARGO_BIN_EXE_ternd");
pub const WAIT: Duration = Duration::from_secs(20);

/// A scratch directory, kept after the test when `TERN_E2E_KEEP` is set (the daemon's
/// and nodes' logs are in it).
pub fn scratch() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("TERN_E2E_KEEP").is_some() {
        eprintln!("keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills the process (SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn kill9(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// The exit code once it exits by itself.
    pub fn exit_code(&mut self) -> i32 {
        wait_until("the process to exit", || {
            self.0.try_wait().unwrap().map(|s| s.code().unwrap_or(-1))
        })
    }
}

pub struct Daemon {
    pub dir: PathBuf,
    pub port: u16,
    pub proc: Option<Proc>,
    /// More `ternd serve` flags.
    pub extra: Vec<String>,
    /// More environment for `ternd serve`.
    pub env: Vec<(String, String)>,
}

impl Daemon {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// A daemon with more `ternd serve` flags.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(dir, extra, &[])
    }

    /// A daemon with more `ternd serve` flags and environment.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut d = Self {
            dir: dir.to_owned(),
            port: free_port(),
            proc: None,
            extra: extra.iter().map(|&a| a.to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        d.restart();
        d
    }

    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let child = Command::new(TERND)
            .args(["serve", "--listen-quic"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--listen-tcp")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--public-names", "127.0.0.1", "--metrics", "127.0.0.1:0"])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("TERN_STATE_DIR", &self.dir)
            .env(
                "RUST_LOG",
                std::env::var("TERN_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        wait_until("the daemon to answer", || {
            self.cli(&["status"]).status.success().then_some(())
        });
    }

    pub fn kill9(&mut self) {
        self.proc.take().unwrap().kill9();
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(TERND)
            .args(args)
            .env("TERN_STATE_DIR", &self.dir)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "ternd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn pair_uri(&self, extra: &[&str]) -> String {
        let mut args = vec!["pair", "code"];
        args.extend_from_slice(extra);
        self.json(&args)["uri"].as_str().unwrap().to_owned()
    }

    pub fn node_state(&self, id: &str) -> String {
        self.json(&["node", "show", id])["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Every stored event (`ternd events --json`).
    pub fn events(&self) -> Vec<Value> {
        let out = self.cli(&["--json", "events"]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A node host process with its own state directory.
pub fn node(dir: &Path, pair: Option<&str>, extra: &[&str]) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .unwrap();
    let mut cmd = Command::new(TERND);
    cmd.args(["node", "run", "--node-state-dir"])
        .arg(dir)
        .args(["--health-every", "1"])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("TERN_E2E_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(uri) = pair {
        cmd.args(["--uri", uri]);
    }
    Proc(cmd.spawn().unwrap())
}

/// The device id a node host paired as.
pub fn node_id(dir: &Path) -> String {
    wait_until("the node to pair", || {
        let text = std::fs::read_to_string(dir.join("node.toml")).ok()?;
        let v: toml::Value = toml::from_str(&text).ok()?;
        v.get("paired")?;
        v.get("device_id")?.as_str().map(str::to_owned)
    })
}

pub fn online(d: &Daemon, id: &str) {
    wait_until("the node to be online", || {
        (d.node_state(id) == "online").then_some(())
    });
}

/// A node host whose `desktop.open_url` records each URL it opens in `opened`.
pub fn recording_node(dir: &Path, daemon: &Daemon, uri: Option<&str>, opened: &Path) -> Proc {
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "daemon = \"127.0.0.1:{}\"\nstate_dir = {:?}\nurl_policy = \"allow\"\nopener = [\"/bin/sh\", \"-c\", \"echo \\\"$1\\\" >> {}\", \"opener\"]\nheartbeat_secs = 1\n",
            daemon.port,
            dir.display().to_string(),
            opened.display()
        ),
    )
    .unwrap();
    node(dir, uri, &["--config", config.to_str().unwrap()])
}

pub fn opened_counts(opened: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(opened).unwrap_or_default().lines() {
        *counts.entry(line.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Checks the daemon's events: seqs 1..=n in order, and no event stored twice (each
/// health event carries the node's uptime at that second).
pub fn assert_events_once(events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(seqs, sorted, "event seqs in order, each once");
    let mut seen = std::collections::HashSet::new();
    for e in events.iter().filter(|e| e["name"] == "health") {
        let key = (e["node"].to_string(), e["body"]["uptime_s"].to_string());
        assert!(seen.insert(key), "event stored twice: {e}");
    }
}
