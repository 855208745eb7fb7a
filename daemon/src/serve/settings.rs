//! The daemon's settings: defaults, then a TOML file, then the environment and flags
//! (`ternd serve --help` lists them; each flag has a `TERN_*` variable).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default port of both listeners (UDP for QUIC, TCP for TCP + TLS).
pub const DEFAULT_PORT: u16 = 4433;
/// The database's name in the state directory.
pub const DATABASE_NAME: &str = "tern.db";
/// The settings file looked for in the state directory when `--config` is not given.
pub const CONFIG_NAME: &str = "ternd.toml";

/// Everything `ternd serve` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub state_dir: PathBuf,
    /// QUIC (UDP); `None` turns QUIC off.
    pub listen_quic: Option<SocketAddr>,
    /// TCP + TLS; `None` turns it off.
    pub listen_tcp: Option<SocketAddr>,
    /// Names and addresses the server certificate is issued for, and the address nodes
    /// are told to dial in pairing URIs (the first one).
    pub public_names: Vec<String>,
    /// Prometheus metrics on this address (off unless set).
    pub metrics: Option<SocketAddr>,
    /// The operator API and web console over TLS on this address (off unless set).
    pub operator_listen: Option<SocketAddr>,
    pub max_connections: usize,
    /// How long a node connection may take to finish its handshake, on both transports;
    /// one that takes longer is cut and its slot freed.
    pub handshake_timeout: Duration,
    pub pairing: PairingPolicy,
    pub events_retention: Retention,
    /// Where the state is kept: `None`, SQLite in the state directory.
    pub store: Option<crate::store::StoreLocation>,
    /// This daemon's name among several sharing one store (default: host name and
    /// listen port); it is recorded as the owner of the sessions it holds.
    pub daemon_id: Option<String>,
}

/// How codes are handed out, and how fast pairing runs may start.
///
/// Two token buckets limit pairing starts, both before a code is even looked up (so
/// probing unknown code ids is limited too): one per source address (an IPv6 /64) on
/// each listener, so one host cannot spend the whole daemon's budget, and one for the
/// whole daemon, which bounds the rate of code guesses from everywhere at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairingPolicy {
    pub default_ttl: Duration,
    /// Every pairing waits for an operator's approval unless a code says otherwise.
    pub approval_required: bool,
    /// Pairing starts one source address may make at once...
    pub address_burst: u32,
    /// ...then one per this long.
    pub address_refill: Duration,
    /// Pairing starts the whole daemon accepts at once...
    pub starts_burst: u32,
    /// ...then one per this long.
    pub starts_refill: Duration,
}

impl PairingPolicy {
    /// Refuses a bucket that would never admit a start (zero burst or refill).
    pub fn check(&self) -> Result<(), String> {
        if self.address_burst == 0 || self.starts_burst == 0 {
            return Err("a pairing burst must be at least 1".into());
        }
        if self.address_refill.is_zero() || self.starts_refill.is_zero() {
            return Err("a pairing refill interval must be at least 1 ms".into());
        }
        Ok(())
    }
}

/// How long events are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_events: u64,
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_events: 1_000_000,
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl Settings {
    /// The defaults for `state_dir`.
    pub fn defaults(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            listen_quic: Some(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
            listen_tcp: Some(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
            public_names: vec!["localhost".into(), "127.0.0.1".into()],
            metrics: None,
            operator_listen: None,
            max_connections: transport_tokio::quic::DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: transport_tokio::tcp::DEFAULT_HANDSHAKE_TIMEOUT,
            pairing: PairingPolicy {
                default_ttl: Duration::from_secs(600),
                approval_required: false,
                address_burst: transport_tokio::tcp::DEFAULT_PAIRING_BURST,
                address_refill: transport_tokio::tcp::DEFAULT_PAIRING_REFILL,
                starts_burst: crate::pairing::DEFAULT_STARTS_BURST,
                starts_refill: Duration::from_millis(crate::pairing::DEFAULT_STARTS_REFILL_MS),
            },
            events_retention: Retention::default(),
            store: None,
            daemon_id: None,
        }
    }

    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join(crate::api::SOCKET_NAME)
    }

    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join(DATABASE_NAME)
    }

    /// The store this daemon opens.
    pub fn store_location(&self) -> crate::store::StoreLocation {
        self.store
            .clone()
            .unwrap_or_else(|| crate::store::StoreLocation::Sqlite(self.state_dir.clone()))
    }

    /// Applies a TOML settings file over these.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let file: FileSettings =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(v) = file.store {
            self.store = Some(crate::store::StoreLocation::parse(&v)?);
        }
        if let Some(v) = file.daemon_id {
            self.daemon_id = Some(v);
        }
        if let Some(v) = file.listen_quic {
            self.listen_quic = parse_listen(&v)?;
        }
        if let Some(v) = file.listen_tcp {
            self.listen_tcp = parse_listen(&v)?;
        }
        if let Some(v) = file.public_names {
            self.public_names = v;
        }
        if let Some(v) = file.metrics {
            self.metrics = parse_listen(&v)?;
        }
        if let Some(v) = file.operator_listen {
            self.operator_listen = parse_listen(&v)?;
        }
        if let Some(v) = file.max_connections {
            self.max_connections = v;
        }
        if let Some(ms) = file.handshake_timeout_ms {
            self.handshake_timeout = Duration::from_millis(ms);
        }
        if let Some(p) = file.pairing {
            if let Some(s) = p.default_ttl_seconds {
                self.pairing.default_ttl = Duration::from_secs(s);
            }
            if let Some(a) = p.approval_required {
                self.pairing.approval_required = a;
            }
            if let Some(n) = p.address_burst {
                self.pairing.address_burst = n;
            }
            if let Some(ms) = p.address_refill_ms {
                self.pairing.address_refill = Duration::from_millis(ms);
            }
            if let Some(n) = p.burst {
                self.pairing.starts_burst = n;
            }
            if let Some(ms) = p.refill_ms {
                self.pairing.starts_refill = Duration::from_millis(ms);
            }
        }
        if let Some(e) = file.events {
            if let Some(n) = e.max_events {
                self.events_retention.max_events = n;
            }
            if let Some(d) = e.max_age_days {
                self.events_retention.max_age = Duration::from_secs(d.saturating_mul(24 * 3600));
            }
        }
        Ok(())
    }
}

/// An address to listen on, or `off`.
pub fn parse_listen(v: &str) -> Result<Option<SocketAddr>, String> {
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|e| format!("{v:?} is not an address (host:port) or \"off\": {e}"))
}

/// The settings file: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    store: Option<String>,
    daemon_id: Option<String>,
    listen_quic: Option<String>,
    listen_tcp: Option<String>,
    public_names: Option<Vec<String>>,
    metrics: Option<String>,
    operator_listen: Option<String>,
    max_connections: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    pairing: Option<FilePairing>,
    events: Option<FileEvents>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePairing {
    default_ttl_seconds: Option<u64>,
    approval_required: Option<bool>,
    address_burst: Option<u32>,
    address_refill_ms: Option<u64>,
    burst: Option<u32>,
    refill_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEvents {
    max_events: Option<u64>,
    max_age_days: Option<u64>,
}

/// The default state directory: `$TERN_STATE_DIR`, else `$XDG_STATE_HOME/ternd`, else
/// `~/.local/state/ternd`, else `/var/lib/ternd` (root without a home).
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("ternd");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/state/ternd");
    }
    PathBuf::from("/var/lib/ternd")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "listen_quic = \"off\"\nlisten_tcp = \"127.0.0.1:9000\"\noperator_listen = \"127.0.0.2:7444\"\n[pairing]\napproval_required = true\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut s = Settings::defaults(dir.path().to_owned());
        assert_eq!(s.operator_listen, None, "remote operators only when asked");
        s.apply_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.listen_quic, None);
        assert_eq!(
            s.operator_listen,
            Some("127.0.0.2:7444".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        assert_eq!(
            s.listen_tcp,
            Some("127.0.0.1:9000".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        assert!(s.pairing.approval_required);
        std::fs::write(
            &path,
            "[pairing]\naddress_burst = 50\naddress_refill_ms = 250\nburst = 20000\nrefill_ms = 1\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        s.apply_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.pairing.address_burst, 50);
        assert_eq!(s.pairing.address_refill, Duration::from_millis(250));
        assert_eq!(s.pairing.starts_burst, 20_000);
        assert_eq!(s.pairing.starts_refill, Duration::from_millis(1));
        assert_eq!(s.pairing.check(), Ok(()));
        s.pairing.starts_burst = 0;
        assert!(s.pairing.check().is_err());
        std::fs::write(&path, "listen = \"x\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(s.apply_file(&path).unwrap_err().contains("unknown field"));
    }
}
