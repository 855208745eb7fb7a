//! `ternd node install` and the service commands: the node's config file, its systemd
//! unit, and `start|stop|restart|status` through `systemctl`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::addrs::parse_addrs;
use super::capabilities::UrlPolicy;
use super::identity::{IdentityError, write_atomic};

/// The unit's file name.
pub const UNIT_NAME: &str = "tern-node.service";
/// Where system units go by default.
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
/// Where the node's config file goes by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tern/node.toml";

/// Why a service operation failed.
#[derive(Debug)]
pub enum ServiceError {
    /// This machine does not run systemd (or `systemctl` is not installed).
    NoSystemd,
    /// A path that cannot be written into a unit (not absolute, not UTF-8, or holding
    /// control characters).
    BadPath(PathBuf),
    /// The config file does not parse.
    BadConfig { path: PathBuf, reason: String },
    /// `systemctl` ran and failed.
    Systemctl {
        command: String,
        status: Option<i32>,
        stderr: String,
    },
    /// Reading a file, or running `systemctl`, failed.
    Io { path: PathBuf, source: io::Error },
    /// Writing a file failed.
    Write(IdentityError),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::NoSystemd => f.write_str(
                "systemd is not running on this machine; start `ternd node run` another way",
            ),
            ServiceError::BadPath(p) => write!(
                f,
                "{} cannot go into a systemd unit: it must be an absolute UTF-8 path without control characters",
                p.display()
            ),
            ServiceError::BadConfig { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
            ServiceError::Systemctl {
                command,
                status,
                stderr,
            } => write!(
                f,
                "systemctl {command} failed ({}): {}",
                status.map_or("killed".to_owned(), |c| format!("exit {c}")),
                stderr.trim()
            ),
            ServiceError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ServiceError::Write(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServiceError {}

impl From<IdentityError> for ServiceError {
    fn from(e: IdentityError) -> Self {
        ServiceError::Write(e)
    }
}

/// The node's config file (TOML), what `ternd node run --config` reads.
///
/// The daemon's addresses are `daemons = ["a.example:7443", "b.example:7443"]` (an entry
/// may hold several separated by commas); a file with the older single
/// `daemon = "host:port"` still reads, and both may be given (that one first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ConfigText")]
pub struct NodeConfigFile {
    /// The daemons' addresses, `host:port` each; empty to use those the node kept at
    /// pairing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub daemons: Vec<String>,
    /// The node's state directory.
    pub state_dir: PathBuf,
    /// Whether `desktop.open_url` may open URLs.
    #[serde(default)]
    pub url_policy: UrlPolicy,
    /// The URL opener and its first arguments (default `xdg-open`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opener: Option<Vec<String>>,
    /// Seconds between health events (default 60; 0 turns them off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u64>,
}

/// The file as written, before its addresses are checked and merged.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigText {
    #[serde(default)]
    daemon: Option<String>,
    #[serde(default)]
    daemons: Vec<String>,
    state_dir: PathBuf,
    #[serde(default)]
    url_policy: UrlPolicy,
    #[serde(default)]
    opener: Option<Vec<String>>,
    #[serde(default)]
    heartbeat_secs: Option<u64>,
}

impl TryFrom<ConfigText> for NodeConfigFile {
    type Error = super::addrs::AddrError;

    fn try_from(text: ConfigText) -> Result<Self, Self::Error> {
        Ok(Self {
            daemons: parse_addrs(text.daemon.iter().chain(&text.daemons))?,
            state_dir: text.state_dir,
            url_policy: text.url_policy,
            opener: text.opener,
            heartbeat_secs: text.heartbeat_secs,
        })
    }
}

impl NodeConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ServiceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServiceError::Io {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ServiceError::BadConfig {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Writes it to `path` atomically (its directory is made if absent).
    pub fn save(&self, path: &Path) -> Result<(), ServiceError> {
        let text = toml::to_string(self).map_err(|e| ServiceError::BadConfig {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ServiceError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        write_atomic(path, text.as_bytes(), 0o644)?;
        Ok(())
    }
}

/// Where `install` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// The directory of the unit (default [`DEFAULT_UNIT_DIR`]).
    pub unit_dir: PathBuf,
    /// The config file's path (default [`DEFAULT_CONFIG_PATH`]).
    pub config_path: PathBuf,
    /// The program the unit starts (default: this executable).
    pub exe: PathBuf,
}

impl InstallOptions {
    /// The defaults, with this executable.
    pub fn new() -> Result<Self, ServiceError> {
        let exe = std::env::current_exe().map_err(|source| ServiceError::Io {
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        Ok(Self {
            unit_dir: PathBuf::from(DEFAULT_UNIT_DIR),
            config_path: PathBuf::from(DEFAULT_CONFIG_PATH),
            exe,
        })
    }
}

/// What `install` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub unit_path: PathBuf,
    pub config_path: PathBuf,
}

/// Writes the config file and the unit. Run `systemctl daemon-reload` (see
/// [`daemon_reload`]) and `enable` afterwards to use it.
pub fn install(
    config: &NodeConfigFile,
    options: &InstallOptions,
) -> Result<Installed, ServiceError> {
    let unit = render_unit(&options.exe, &options.config_path)?;
    config.save(&options.config_path)?;
    std::fs::create_dir_all(&options.unit_dir).map_err(|source| ServiceError::Io {
        path: options.unit_dir.clone(),
        source,
    })?;
    let unit_path = options.unit_dir.join(UNIT_NAME);
    write_atomic(&unit_path, unit.as_bytes(), 0o644)?;
    Ok(Installed {
        unit_path,
        config_path: options.config_path.clone(),
    })
}

/// The unit file's text.
pub fn render_unit(exe: &Path, config_path: &Path) -> Result<String, ServiceError> {
    let exe = unit_arg(exe)?;
    let config = unit_arg(config_path)?;
    Ok(format!(
        "[Unit]\n\
         Description=Tern node host\n\
         Documentation=man:ternd(8)\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exe} node run --config {config}\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    ))
}

/// A path quoted for `ExecStart=`: systemd expands `%` specifiers and `$` variables,
/// and splits on spaces, so those are escaped and the word is quoted.
fn unit_arg(path: &Path) -> Result<String, ServiceError> {
    let bad = || ServiceError::BadPath(path.to_owned());
    let text = path.to_str().ok_or_else(bad)?;
    if !path.is_absolute() || text.chars().any(char::is_control) {
        return Err(bad());
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// A service command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
    Status,
}

impl ServiceAction {
    fn verb(self) -> &'static str {
        match self {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
            ServiceAction::Status => "is-active",
        }
    }
}

/// What `status` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// `systemctl is-active`'s word: `active`, `inactive`, `failed`, `activating`, ...
    pub state: String,
}

impl ServiceStatus {
    pub fn is_active(&self) -> bool {
        self.state == "active"
    }
}

/// Whether this machine runs systemd (`sd_booted`: `/run/systemd/system` exists).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Runs `systemctl ACTION tern-node.service`; `Status` answers the unit's state.
pub fn systemctl(action: ServiceAction) -> Result<ServiceStatus, ServiceError> {
    if !systemd_running() {
        return Err(ServiceError::NoSystemd);
    }
    let out = run_systemctl(&[action.verb(), UNIT_NAME])?;
    let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match action {
        // `is-active` exits non-zero for every state but active; the word says which.
        ServiceAction::Status if !state.is_empty() => Ok(ServiceStatus { state }),
        _ if out.status.success() => Ok(ServiceStatus {
            state: if action == ServiceAction::Stop {
                "inactive".to_owned()
            } else {
                "active".to_owned()
            },
        }),
        _ => Err(ServiceError::Systemctl {
            command: format!("{} {UNIT_NAME}", action.verb()),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
    }
}

/// `systemctl daemon-reload`, after installing the unit.
pub fn daemon_reload() -> Result<(), ServiceError> {
    if !systemd_running() {
        return Err(ServiceError::NoSystemd);
    }
    let out = run_systemctl(&["daemon-reload"])?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ServiceError::Systemctl {
            command: "daemon-reload".to_owned(),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn run_systemctl(args: &[&str]) -> Result<std::process::Output, ServiceError> {
    match Command::new("systemctl").args(args).output() {
        Ok(out) => Ok(out),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ServiceError::NoSystemd),
        Err(source) => Err(ServiceError::Io {
            path: PathBuf::from("systemctl"),
            source,
        }),
    }
}
