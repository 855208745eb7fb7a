//! The node host's capabilities: descriptors, handlers and the registry that holds them.
//!
//! A capability takes its input bytes (JSON here) and answers with output bytes or a
//! typed [`CapabilityError`], which maps onto the protocol's outcome (rejected with a
//! code, or failed with a reason). Built in:
//!
//! - `echo`: the input back, once it is known to be JSON;
//! - `system.health`: uptime, load, memory and disk figures read from the system;
//! - `desktop.open_url`: opens an http(s) URL with the desktop's opener, only when the
//!   [`UrlPolicy`] allows it, asking a local person through a [`Prompter`] if it says so.
//!
//! Their names, descriptors and the health answer are the node contract's
//! (`node_contract`), which every kind of node shares.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use node_contract::descriptors;
use node_contract::health::{Disk, Health, LoadAverage, Memory};
use protocol_core::session::{OwnedOutcome, OwnedPayload};
use protocol_core::wire::{CapabilityDescriptor, MAX_CAPABILITIES, RejectCode, Stage};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Longest capability name accepted into a registry.
pub const MAX_CAPABILITY_NAME: usize = 64;

/// Longest URL `desktop.open_url` accepts.
pub const MAX_URL_LEN: usize = 8 * 1024;

/// What the stage report of a call waiting for a person says.
pub const AWAITING_APPROVAL: &str = "awaiting local approval";

/// Why a capability did not produce an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapabilityError {
    /// No capability of this name is registered.
    UnknownCapability(String),
    /// The input is not what the capability takes.
    BadInput(String),
    /// The capability needs a local person's approval and the policy does not allow it.
    NeedsApproval,
    /// A local person refused.
    Denied,
    /// It ran and failed.
    Failed(String),
}

impl fmt::Display for CapabilityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapabilityError::UnknownCapability(name) => write!(f, "unknown capability {name:?}"),
            CapabilityError::BadInput(why) => write!(f, "bad input: {why}"),
            CapabilityError::NeedsApproval => f.write_str("needs local approval"),
            CapabilityError::Denied => f.write_str("refused by the local user"),
            CapabilityError::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl std::error::Error for CapabilityError {}

impl CapabilityError {
    /// The answer the daemon gets for this failure.
    pub fn to_outcome(&self) -> OwnedOutcome {
        let rejected = |code| OwnedOutcome::Rejected {
            code,
            reason: self.to_string(),
        };
        match self {
            CapabilityError::UnknownCapability(_) => rejected(RejectCode::UnknownCapability),
            CapabilityError::BadInput(_) => rejected(RejectCode::BadInput),
            CapabilityError::NeedsApproval | CapabilityError::Denied => {
                rejected(RejectCode::Denied)
            }
            CapabilityError::Failed(why) => OwnedOutcome::Failed {
                reason: why.clone(),
            },
        }
    }
}

/// A capability as the node describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Dotted name, e.g. `system.health`.
    pub name: String,
    pub version: u32,
    /// Content type of the input.
    pub input: String,
    /// Content type of the output.
    pub output: String,
    /// One line for people listing a node's capabilities.
    pub description: String,
    /// A local person must approve each call.
    pub needs_approval: bool,
}

impl Descriptor {
    /// A JSON-in, JSON-out capability, version 1.
    pub fn json(name: &str, description: &str, needs_approval: bool) -> Self {
        Self {
            name: name.to_owned(),
            version: 1,
            input: node_contract::JSON.to_owned(),
            output: node_contract::JSON.to_owned(),
            description: description.to_owned(),
            needs_approval,
        }
    }

    /// The descriptor as it goes into a registration.
    pub fn wire(&self) -> CapabilityDescriptor<'_> {
        CapabilityDescriptor {
            name: &self.name,
            version: self.version,
            input: &self.input,
            output: &self.output,
            needs_approval: self.needs_approval,
        }
    }
}

impl From<node_contract::Descriptor> for Descriptor {
    fn from(d: node_contract::Descriptor) -> Self {
        Self {
            name: d.name.to_owned(),
            version: d.version,
            input: d.input.to_owned(),
            output: d.output.to_owned(),
            description: d.description.to_owned(),
            needs_approval: d.needs_approval,
        }
    }
}

/// An interim stage a running call reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    pub detail: String,
}

/// What a handler gets besides its input: where to report its progress.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    progress: Option<mpsc::Sender<Progress>>,
}

impl CallContext {
    /// A context whose progress reports go nowhere.
    pub fn detached() -> Self {
        Self::default()
    }

    /// A context whose progress reports arrive on the returned receiver (`capacity` of
    /// them at a time; a handler waits for room rather than lose one).
    pub fn with_progress(capacity: usize) -> (Self, mpsc::Receiver<Progress>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { progress: Some(tx) }, rx)
    }

    /// Reports a stage of the call.
    pub async fn progress(&self, stage: Stage, detail: &str) {
        if let Some(tx) = &self.progress {
            // A receiver that is gone means nobody waits for the call any more.
            let _ = tx
                .send(Progress {
                    stage,
                    detail: detail.to_owned(),
                })
                .await;
        }
    }
}

/// The future a handler returns: the output bytes, or why there are none.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, CapabilityError>> + Send>>;

/// A capability: its descriptor and its handler.
pub trait Capability: Send + Sync + 'static {
    fn descriptor(&self) -> &Descriptor;

    /// Runs one call. `input` has the descriptor's input content type.
    fn call(&self, input: Vec<u8>, ctx: CallContext) -> CallFuture;
}

/// A capability could not join a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// A capability of this name is registered already.
    Duplicate(String),
    /// The protocol carries at most [`MAX_CAPABILITIES`] per node.
    TooMany,
    /// A name that is empty, too long, or has characters outside `[a-z0-9._-]`.
    BadName(String),
    /// An empty content type.
    BadContentType(String),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Duplicate(n) => write!(f, "capability {n:?} is registered already"),
            RegistryError::TooMany => {
                write!(
                    f,
                    "a node announces at most {MAX_CAPABILITIES} capabilities"
                )
            }
            RegistryError::BadName(n) => write!(
                f,
                "capability name {n:?} must be 1-{MAX_CAPABILITY_NAME} characters of [a-z0-9._-]"
            ),
            RegistryError::BadContentType(n) => {
                write!(f, "capability {n:?} needs input and output content types")
            }
        }
    }
}

impl std::error::Error for RegistryError {}

/// The node's capabilities, in the order they are announced.
#[derive(Clone, Default)]
pub struct Registry {
    capabilities: Vec<Arc<dyn Capability>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.capabilities.iter().map(|c| &c.descriptor().name))
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in capabilities: `echo`, `system.health`, `desktop.open_url`.
    pub fn builtin(open_url: OpenUrlOptions) -> Self {
        let mut r = Self::new();
        let builtins: [Arc<dyn Capability>; 3] = [
            Arc::new(Echo::new()),
            Arc::new(SystemHealth::new()),
            Arc::new(OpenUrl::new(open_url)),
        ];
        for cap in builtins {
            // Three fixed, valid, distinct names cannot fail.
            let _ = r.add_shared(cap);
        }
        r
    }

    /// Adds a capability.
    pub fn add(&mut self, capability: impl Capability) -> Result<(), RegistryError> {
        self.add_shared(Arc::new(capability))
    }

    /// Adds a capability that is shared with other owners.
    pub fn add_shared(&mut self, capability: Arc<dyn Capability>) -> Result<(), RegistryError> {
        let d = capability.descriptor();
        let name_ok = !d.name.is_empty()
            && d.name.len() <= MAX_CAPABILITY_NAME
            && d.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !name_ok {
            return Err(RegistryError::BadName(d.name.clone()));
        }
        if d.input.is_empty() || d.output.is_empty() {
            return Err(RegistryError::BadContentType(d.name.clone()));
        }
        if self.get(&d.name).is_some() {
            return Err(RegistryError::Duplicate(d.name.clone()));
        }
        if self.capabilities.len() >= MAX_CAPABILITIES {
            return Err(RegistryError::TooMany);
        }
        self.capabilities.push(capability);
        Ok(())
    }

    /// The capability named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Capability>> {
        self.capabilities
            .iter()
            .find(|c| c.descriptor().name == name)
    }

    /// Every descriptor, in announcement order.
    pub fn descriptors(&self) -> impl Iterator<Item = &Descriptor> {
        self.capabilities.iter().map(|c| c.descriptor())
    }

    /// The capability list a registration carries.
    pub fn wire_descriptors(&self) -> Vec<CapabilityDescriptor<'_>> {
        self.descriptors().map(Descriptor::wire).collect()
    }

    /// Starts a call: finds the capability and checks the input's content type. The
    /// returned future runs the handler.
    pub fn call(
        &self,
        name: &str,
        content_type: &str,
        input: Vec<u8>,
        ctx: CallContext,
    ) -> Result<CallFuture, CapabilityError> {
        let cap = self
            .get(name)
            .ok_or_else(|| CapabilityError::UnknownCapability(name.to_owned()))?;
        let d = cap.descriptor();
        if content_type != d.input {
            return Err(CapabilityError::BadInput(format!(
                "{name} takes {}, not {content_type:?}",
                d.input
            )));
        }
        Ok(cap.call(input, ctx))
    }

    /// Runs a call to the end.
    pub async fn invoke(
        &self,
        name: &str,
        content_type: &str,
        input: Vec<u8>,
        ctx: CallContext,
    ) -> Result<Vec<u8>, CapabilityError> {
        self.call(name, content_type, input, ctx)?.await
    }
}

/// Output of a successful call as the protocol carries it.
pub fn success(descriptor: &Descriptor, output: Vec<u8>) -> OwnedOutcome {
    OwnedOutcome::Success(OwnedPayload {
        content_type: descriptor.output.clone(),
        data: output,
    })
}

fn parse_json<'a, T: Deserialize<'a>>(input: &'a [u8]) -> Result<T, CapabilityError> {
    serde_json::from_slice(input).map_err(|e| CapabilityError::BadInput(format!("not JSON: {e}")))
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, CapabilityError> {
    serde_json::to_vec(value).map_err(|e| CapabilityError::Failed(format!("encoding output: {e}")))
}

// ----- echo -----

/// Checks `echo`'s input: any JSON value.
pub fn echo_input(input: &[u8]) -> Result<(), CapabilityError> {
    parse_json::<serde::de::IgnoredAny>(input).map(drop)
}

/// `echo`: answers with its input, which must be JSON.
#[derive(Debug)]
pub struct Echo {
    descriptor: Descriptor,
}

impl Echo {
    pub fn new() -> Self {
        Self {
            descriptor: descriptors::ECHO.into(),
        }
    }
}

impl Default for Echo {
    fn default() -> Self {
        Self::new()
    }
}

impl Capability for Echo {
    fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    fn call(&self, input: Vec<u8>, _: CallContext) -> CallFuture {
        Box::pin(async move {
            echo_input(&input)?;
            Ok(input)
        })
    }
}

// ----- system.health -----

/// What a Linux host reads for `system.health`: the figures, and the text the
/// contract's [`Health`] borrows.
#[derive(Debug, Clone, PartialEq)]
pub struct HostHealth {
    pub hostname: String,
    /// Seconds since boot.
    pub uptime_s: f64,
    pub load: LoadAverage,
    pub memory: Memory,
    /// The filesystem reported on.
    pub disk_path: String,
    pub disk_total_bytes: u64,
    /// Available to unprivileged users.
    pub disk_available_bytes: u64,
}

impl HostHealth {
    /// The answer as the contract words it; the microcontroller figures stay out.
    pub fn health(&self) -> Health<'_> {
        Health {
            hostname: Some(&self.hostname),
            load: Some(self.load),
            memory: Some(self.memory),
            disk: Some(Disk {
                path: &self.disk_path,
                total_bytes: self.disk_total_bytes,
                available_bytes: self.disk_available_bytes,
            }),
            ..Health::new(self.uptime_s)
        }
    }
}

/// `system.health`'s input: `{}` (the root filesystem) or `{"path": "/var"}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthInput {
    path: Option<PathBuf>,
}

/// Reads `system.health`'s input: the filesystem to report on, absolute (`/` when the
/// input is `null`, `{}` or names no path).
pub fn health_input(input: &[u8]) -> Result<PathBuf, CapabilityError> {
    let args: Option<HealthInput> = parse_json(input)?;
    let path = args.and_then(|a| a.path).unwrap_or_else(|| "/".into());
    if !path.is_absolute() {
        return Err(CapabilityError::BadInput(format!(
            "path must be absolute: {}",
            path.display()
        )));
    }
    Ok(path)
}

/// A system file that does not read as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub file: &'static str,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.reason)
    }
}

impl std::error::Error for ParseError {}

fn bad(file: &'static str, reason: impl Into<String>) -> ParseError {
    ParseError {
        file,
        reason: reason.into(),
    }
}

/// Seconds since boot, from `/proc/uptime` ("12345.67 54321.00").
pub fn parse_uptime(text: &str) -> Result<f64, ParseError> {
    let first = text
        .split_whitespace()
        .next()
        .ok_or_else(|| bad("/proc/uptime", "empty"))?;
    let v: f64 = first
        .parse()
        .map_err(|_| bad("/proc/uptime", format!("not a number: {first:?}")))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad("/proc/uptime", format!("not a duration: {first:?}")));
    }
    Ok(v)
}

/// Load averages from `/proc/loadavg` ("0.52 0.58 0.59 1/467 12345").
pub fn parse_loadavg(text: &str) -> Result<LoadAverage, ParseError> {
    let mut fields = text.split_whitespace().map(|f| {
        f.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| bad("/proc/loadavg", format!("not a load average: {f:?}")))
    });
    let mut next = || {
        fields
            .next()
            .unwrap_or_else(|| Err(bad("/proc/loadavg", "fewer than three fields")))
    };
    Ok(LoadAverage {
        one: next()?,
        five: next()?,
        fifteen: next()?,
    })
}

/// Total and available memory from `/proc/meminfo` (values in kB).
pub fn parse_meminfo(text: &str) -> Result<Memory, ParseError> {
    let field = |name: &str| -> Result<u64, ParseError> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .ok_or_else(|| bad("/proc/meminfo", format!("no {name} line")))?;
        let mut parts = line.split_whitespace();
        let kb: u64 = parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("/proc/meminfo", format!("{name} is not a number")))?;
        match parts.next() {
            Some("kB") => kb
                .checked_mul(1024)
                .ok_or_else(|| bad("/proc/meminfo", format!("{name} overflows"))),
            _ => Err(bad("/proc/meminfo", format!("{name} is not in kB"))),
        }
    };
    Ok(Memory {
        total_bytes: field("MemTotal")?,
        available_bytes: field("MemAvailable")?,
    })
}

/// Size and free space of the filesystem holding `path`.
pub fn disk_usage(path: &str) -> Result<Disk<'_>, CapabilityError> {
    let st = rustix::fs::statvfs(path)
        .map_err(|e| CapabilityError::Failed(format!("statvfs {path}: {e}")))?;
    Ok(Disk {
        path,
        total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
        available_bytes: st.f_bavail.saturating_mul(st.f_frsize),
    })
}

/// The machine's host name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Reads every figure `system.health` reports, for the filesystem holding `path`.
pub fn read_health(path: &Path) -> Result<HostHealth, CapabilityError> {
    let read = |file: &'static str| {
        std::fs::read_to_string(file)
            .map_err(|e| CapabilityError::Failed(format!("reading {file}: {e}")))
    };
    let failed = |e: ParseError| CapabilityError::Failed(e.to_string());
    // The answer is JSON text: a path that is not UTF-8 has no place in it.
    let path = path
        .to_str()
        .ok_or_else(|| CapabilityError::Failed(format!("{} is not UTF-8", path.display())))?;
    let disk = disk_usage(path)?;
    Ok(HostHealth {
        hostname: hostname(),
        uptime_s: parse_uptime(&read("/proc/uptime")?).map_err(failed)?,
        load: parse_loadavg(&read("/proc/loadavg")?).map_err(failed)?,
        memory: parse_meminfo(&read("/proc/meminfo")?).map_err(failed)?,
        disk_path: path.to_owned(),
        disk_total_bytes: disk.total_bytes,
        disk_available_bytes: disk.available_bytes,
    })
}

/// `system.health`: real figures from `/proc` and `statvfs`.
#[derive(Debug)]
pub struct SystemHealth {
    descriptor: Descriptor,
}

impl SystemHealth {
    pub fn new() -> Self {
        Self {
            descriptor: descriptors::SYSTEM_HEALTH.into(),
        }
    }
}

impl Default for SystemHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl Capability for SystemHealth {
    fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    fn call(&self, input: Vec<u8>, _: CallContext) -> CallFuture {
        Box::pin(async move {
            let path = health_input(&input)?;
            // statvfs can block for long on a network filesystem: off the runtime.
            let health = tokio::task::spawn_blocking(move || read_health(&path))
                .await
                .map_err(|e| CapabilityError::Failed(format!("health reader: {e}")))??;
            to_json(&health.health())
        })
    }
}

// ----- desktop.open_url -----

/// Whether `desktop.open_url` may open URLs on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UrlPolicy {
    /// Refused: "needs local approval".
    #[default]
    Deny,
    /// Opened without asking.
    Allow,
    /// A local person is asked each time.
    Prompt,
}

/// What a person is asked to approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    pub capability: String,
    pub url: String,
    /// The question to show.
    pub question: String,
}

/// Asks a local person; the CLI supplies a terminal prompt, tests a scripted one.
pub trait Prompter: Send + Sync + 'static {
    /// True if the person allows it. A call whose deadline passes first is stopped.
    fn confirm(&self, request: ApprovalRequest) -> Pin<Box<dyn Future<Output = bool> + Send>>;
}

/// Settings of `desktop.open_url`.
#[derive(Clone)]
pub struct OpenUrlOptions {
    pub policy: UrlPolicy,
    /// Asked under [`UrlPolicy::Prompt`]; without one such calls are refused.
    pub prompter: Option<Arc<dyn Prompter>>,
    /// The opener: a program and its first arguments; the URL is added as the last
    /// argument (no shell is involved).
    pub opener: Vec<String>,
}

impl Default for OpenUrlOptions {
    fn default() -> Self {
        Self {
            policy: UrlPolicy::Deny,
            prompter: None,
            opener: vec!["xdg-open".to_owned()],
        }
    }
}

impl fmt::Debug for OpenUrlOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenUrlOptions")
            .field("policy", &self.policy)
            .field("prompter", &self.prompter.is_some())
            .field("opener", &self.opener)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenUrlInput {
    url: String,
}

/// What a successful `desktop.open_url` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    pub url: String,
    pub opener: String,
    pub exit_code: i32,
}

/// Checks a URL for `desktop.open_url`: http or https with a host; returns it
/// normalised.
pub fn check_url(raw: &str) -> Result<url::Url, CapabilityError> {
    if raw.len() > MAX_URL_LEN {
        return Err(CapabilityError::BadInput(format!(
            "URL longer than {MAX_URL_LEN} bytes"
        )));
    }
    let url =
        url::Url::parse(raw).map_err(|e| CapabilityError::BadInput(format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(CapabilityError::BadInput(format!(
            "only http and https URLs are opened, not {}:",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(CapabilityError::BadInput("the URL has no host".to_owned()));
    }
    Ok(url)
}

/// Reads `desktop.open_url`'s input (`{"url": "..."}`) and checks the URL
/// ([`check_url`]); nothing is opened.
pub fn open_url_input(input: &[u8]) -> Result<url::Url, CapabilityError> {
    let args: OpenUrlInput = parse_json(input)?;
    check_url(&args.url)
}

/// `desktop.open_url`: opens an http(s) URL on the desktop, with local approval.
#[derive(Debug)]
pub struct OpenUrl {
    descriptor: Descriptor,
    options: OpenUrlOptions,
}

impl OpenUrl {
    pub fn new(options: OpenUrlOptions) -> Self {
        Self {
            descriptor: Descriptor {
                needs_approval: options.policy != UrlPolicy::Allow,
                ..descriptors::DESKTOP_OPEN_URL.into()
            },
            options,
        }
    }
}

impl Capability for OpenUrl {
    fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    fn call(&self, input: Vec<u8>, ctx: CallContext) -> CallFuture {
        let options = self.options.clone();
        let name = self.descriptor.name.clone();
        Box::pin(async move {
            let url = open_url_input(&input)?;
            match options.policy {
                UrlPolicy::Deny => return Err(CapabilityError::NeedsApproval),
                UrlPolicy::Allow => {}
                UrlPolicy::Prompt => {
                    let prompter = options.prompter.ok_or(CapabilityError::NeedsApproval)?;
                    ctx.progress(Stage::AwaitingApproval, AWAITING_APPROVAL)
                        .await;
                    let request = ApprovalRequest {
                        capability: name,
                        url: url.to_string(),
                        question: format!("Open {url} in the browser?"),
                    };
                    if !prompter.confirm(request).await {
                        return Err(CapabilityError::Denied);
                    }
                    ctx.progress(Stage::Running, "approved").await;
                }
            }
            let (program, first_args) = options
                .opener
                .split_first()
                .ok_or_else(|| CapabilityError::Failed("no opener configured".to_owned()))?;
            let status = tokio::process::Command::new(program)
                .args(first_args)
                .arg(url.as_str())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                // A cancelled call stops its opener too.
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| CapabilityError::Failed(format!("could not run {program}: {e}")))?;
            match status.code() {
                Some(0) => to_json(&Opened {
                    url: url.to_string(),
                    opener: program.clone(),
                    exit_code: 0,
                }),
                _ => Err(CapabilityError::Failed(format!("{program} {status}"))),
            }
        })
    }
}
