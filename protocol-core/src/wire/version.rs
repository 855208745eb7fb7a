//! Protocol version negotiation: the client offers a range, the server picks the highest
//! version both speak, or both sides learn both ranges from an explicit error.

use serde::{Deserialize, Serialize};

/// An inclusive range of protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: u16,
    pub max: u16,
}

impl VersionRange {
    pub const fn new(min: u16, max: u16) -> Self {
        Self { min, max }
    }

    /// A range whose `min` exceeds its `max` speaks nothing.
    pub const fn is_empty(&self) -> bool {
        self.min > self.max
    }

    pub const fn contains(&self, version: u16) -> bool {
        self.min <= version && version <= self.max
    }
}

impl core::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// The versions this build speaks.
pub const PROTOCOL_VERSIONS: VersionRange = VersionRange::new(1, 1);

/// No version is spoken by both sides. Carries both ranges so each side can say why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionMismatch {
    pub client: VersionRange,
    pub server: VersionRange,
}

impl core::fmt::Display for VersionMismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "no common protocol version: client speaks {}, server speaks {}",
            self.client, self.server
        )
    }
}

impl core::error::Error for VersionMismatch {}

/// The highest version in both ranges.
pub fn negotiate(client: VersionRange, server: VersionRange) -> Result<u16, VersionMismatch> {
    let high = client.max.min(server.max);
    let low = client.min.max(server.min);
    if client.is_empty() || server.is_empty() || low > high {
        return Err(VersionMismatch { client, server });
    }
    Ok(high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range() -> impl Strategy<Value = VersionRange> {
        (0u16..20, 0u16..20).prop_map(|(a, b)| VersionRange::new(a, b))
    }

    proptest! {
        #[test]
        fn picks_highest_common_or_names_both(client in range(), server in range()) {
            let common = (0u16..20).filter(|v| client.contains(*v) && server.contains(*v)).max();
            match (negotiate(client, server), common) {
                (Ok(v), Some(best)) => prop_assert_eq!(v, best),
                (Err(e), None) => prop_assert_eq!(e, VersionMismatch { client, server }),
                (got, want) => prop_assert!(false, "got {:?}, want {:?}", got, want),
            }
        }

        #[test]
        fn symmetric(a in range(), b in range()) {
            prop_assert_eq!(negotiate(a, b).ok(), negotiate(b, a).ok());
        }
    }

    #[test]
    fn mismatch_message_names_both_ranges() {
        let e = negotiate(VersionRange::new(3, 4), VersionRange::new(1, 2)).unwrap_err();
        let text = std::format!("{e}");
        assert!(text.contains("3..=4") && text.contains("1..=2"), "{text}");
    }
}
