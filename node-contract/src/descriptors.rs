//! The built-in capabilities as a node registers them.
//!
//! The wire carries a descriptor's name, version, content types and approval flag; the
//! description stays on the node, for people listing what it offers. A node registers
//! only the built-ins it implements: a Linux host has no LED, a microcontroller no
//! desktop.

use crate::names;

/// A capability as a node describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Dotted name, e.g. `system.health`.
    pub name: &'static str,
    /// Raised when the input or output changes incompatibly.
    pub version: u32,
    /// Content type of the input.
    pub input: &'static str,
    /// Content type of the output.
    pub output: &'static str,
    /// One line for people listing a node's capabilities.
    pub description: &'static str,
    /// A local person must approve each call.
    pub needs_approval: bool,
}

impl Descriptor {
    /// A JSON-in, JSON-out capability, version 1.
    pub const fn json(name: &'static str, description: &'static str, needs_approval: bool) -> Self {
        Self {
            name,
            version: 1,
            input: names::JSON,
            output: names::JSON,
            description,
            needs_approval,
        }
    }
}

/// `echo`.
pub const ECHO: Descriptor =
    Descriptor::json(names::ECHO, "answers with its JSON input unchanged", false);

/// `system.health`.
pub const SYSTEM_HEALTH: Descriptor = Descriptor::json(
    names::SYSTEM_HEALTH,
    "uptime and memory figures of the node; load and disk on a host",
    false,
);

/// `desktop.open_url`. A host whose policy opens URLs without asking registers it with
/// `needs_approval: false`.
pub const DESKTOP_OPEN_URL: Descriptor = Descriptor::json(
    names::DESKTOP_OPEN_URL,
    "opens an http(s) URL in the desktop's browser, with local approval",
    true,
);

/// `tern.certificate`.
pub const INSTALL_CERTIFICATE: Descriptor = Descriptor::json(
    names::INSTALL_CERTIFICATE,
    "installs a certificate the daemon renewed for this node",
    false,
);

/// `board.led`.
pub const BOARD_LED: Descriptor = Descriptor::json(
    names::BOARD_LED,
    "switches the board's LED on or off",
    false,
);

/// Every built-in descriptor.
pub const BUILTIN: [Descriptor; 5] = [
    ECHO,
    SYSTEM_HEALTH,
    DESKTOP_OPEN_URL,
    INSTALL_CERTIFICATE,
    BOARD_LED,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_named_once_and_validly() {
        for (i, d) in BUILTIN.iter().enumerate() {
            assert!(!d.name.is_empty() && d.name.len() <= 64, "{d:?}");
            assert!(
                d.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)),
                "{d:?}"
            );
            assert_eq!(
                (d.input, d.output, d.version),
                (names::JSON, names::JSON, 1)
            );
            assert!(BUILTIN[i + 1..].iter().all(|o| o.name != d.name), "{d:?}");
        }
    }
}
