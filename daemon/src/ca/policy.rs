//! How long certificates live and when they are renewed.

use serde::{Deserialize, Serialize};

pub const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Validity and rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuancePolicy {
    /// Lifetime of a node's client certificate.
    pub client_validity_ms: u64,
    /// Lifetime of the daemon's server certificate.
    pub server_validity_ms: u64,
    /// Lifetime of the CA certificate.
    pub ca_validity_ms: u64,
    /// A certificate is renewed once less than this is left.
    pub rotate_before_ms: u64,
    /// `notBefore` is set this far back, for clocks slightly behind the daemon's.
    pub backdate_ms: u64,
}

impl Default for IssuancePolicy {
    fn default() -> Self {
        Self {
            client_validity_ms: 90 * DAY_MS,
            server_validity_ms: 90 * DAY_MS,
            ca_validity_ms: 10 * 365 * DAY_MS,
            rotate_before_ms: 30 * DAY_MS,
            backdate_ms: 5 * 60 * 1000,
        }
    }
}

impl IssuancePolicy {
    /// Whether a certificate valid until `not_after_ms` should be renewed at `now_ms`.
    pub fn needs_rotation(&self, not_after_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_add(self.rotate_before_ms) >= not_after_ms
    }
}
