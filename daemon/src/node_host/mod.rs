//! The Linux node host: the runtime behind `ternd node run`.
//!
//! A paired Linux machine keeps its identity in a state directory ([`identity`]),
//! connects to the daemon with mutual TLS and a pinned server certificate at one of its
//! addresses ([`addrs`]), keeps one journaled session across connections and reconnects
//! with backoff ([`connect`]), answers capability calls with built-in handlers
//! ([`capabilities`]) through the session's application ([`runtime`]), and installs
//! itself as a systemd service ([`service`]).

pub mod addrs;
pub mod capabilities;
pub mod connect;
pub mod identity;
pub mod quic;
pub mod renewal;
pub mod runtime;
pub mod service;

pub use addrs::{AddrError, DaemonAddrs};
pub use capabilities::{
    CallContext, Capability, CapabilityError, Descriptor, OpenUrlOptions, Prompter, Registry,
    RegistryError, UrlPolicy,
};
pub use connect::{Backoff, Dialer, HostError, NodeHost, NodeHostConfig, TcpDialer};
pub use identity::{IdentityError, NodeIdentity};
pub use runtime::{EventError, HostApp, HostCommand, LinkStatus, NodeHandle};
pub use service::{NodeConfigFile, ServiceAction, ServiceError};
