//! Capability and event names, and the content type their payloads have.
//!
//! Names are dotted, lowercase ASCII (`[a-z0-9._-]`); the `tern.` prefix is the
//! protocol's own.

/// The content type of every built-in capability's input and output and every built-in
/// event's payload.
pub const JSON: &str = "application/json";

/// Capability: answers with its input, which must be JSON.
pub const ECHO: &str = "echo";

/// Capability: the node's [`Health`](crate::Health). Input `{}`; a host may also take
/// `{"path": "<absolute path>"}` to report another filesystem.
pub const SYSTEM_HEALTH: &str = "system.health";

/// Capability: opens an http(s) URL on the desktop, after local approval. Input
/// `{"url": "<url>"}`; output `{"url", "opener", "exit_code"}`. Linux hosts only.
pub const DESKTOP_OPEN_URL: &str = "desktop.open_url";

/// Capability the daemon calls with a renewed certificate: input
/// [`Renewed`](crate::Renewed), output [`Installed`](crate::Installed).
pub const INSTALL_CERTIFICATE: &str = "tern.certificate";

/// Capability: switches a board's LED. Input [`SetLed`](crate::SetLed), output
/// [`LedState`](crate::LedState).
pub const BOARD_LED: &str = "board.led";

/// Event: a node asks for a renewed certificate; payload
/// [`RenewRequest`](crate::RenewRequest).
pub const RENEW_EVENT: &str = "tern.renew";

/// Event: the node's [`Health`](crate::Health), sent periodically.
pub const HEALTH_EVENT: &str = "health";

/// Event: a temperature reading, sent periodically; payload
/// [`Temperature`](crate::Temperature).
pub const TEMPERATURE_EVENT: &str = "sensor.temperature";
