//! Pairing starts rate-limited per peer address, so one host cannot use up the
//! daemon's global budget of code guesses (the pairing service keeps its own global
//! limit and each code's attempt window).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use protocol_core::pairing::{PairingError, TokenBucket};
use protocol_core::time::Instant;

/// Default pairing starts one address may make at once...
pub const DEFAULT_PAIRING_BURST: u32 = 5;
/// ...then one per this long.
pub const DEFAULT_PAIRING_REFILL: Duration = Duration::from_secs(12);
/// Addresses tracked at most; past it, those whose bucket is full again are forgotten
/// first (they carry no state worth keeping), then the whole table.
const MAX_ADDRESSES: usize = 4_096;

/// Per-address token buckets on pairing starts.
#[derive(Debug)]
pub(crate) struct PairingStarts {
    burst: u32,
    refill_ms: u64,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl PairingStarts {
    pub(crate) fn new(burst: u32, refill: Duration) -> Self {
        Self {
            burst: burst.max(1),
            refill_ms: u64::try_from(refill.as_millis()).unwrap_or(u64::MAX).max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one start for `peer`, or says when to retry.
    pub(crate) fn try_start(&self, peer: IpAddr, now: Instant) -> Result<(), PairingError> {
        let key = source(peer);
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !buckets.contains_key(&key) && buckets.len() >= MAX_ADDRESSES {
            buckets.retain(|_, b| b.available(now) < self.burst);
            if buckets.len() >= MAX_ADDRESSES {
                buckets.clear();
            }
        }
        let bucket = match buckets.get_mut(&key) {
            Some(b) => b,
            None => {
                let fresh = TokenBucket::new(now, self.burst, self.refill_ms)
                    .map_err(|_| PairingError::Internal)?;
                buckets.entry(key).or_insert(fresh)
            }
        };
        bucket.try_take(now)
    }
}

/// The key an address is limited under: an IPv4 address, or an IPv6 /64 (one host
/// commonly holds a whole /64).
fn source(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_budget() {
        let starts = PairingStarts::new(2, Duration::from_secs(10));
        let t0 = Instant::from_millis(1_000);
        let a: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "192.0.2.2".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(starts.try_start(a, t0), Ok(()));
        assert_eq!(starts.try_start(a, t0), Ok(()));
        assert_eq!(
            starts.try_start(a, t0),
            Err(PairingError::RateLimited {
                retry_after_ms: 10_000
            })
        );
        assert_eq!(
            starts.try_start(b, t0),
            Ok(()),
            "another address is not held back"
        );
        assert_eq!(starts.try_start(a, t0.plus_ms(10_000)), Ok(()), "refilled");
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_64() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let same: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert_eq!(source(one), source(same));
        assert_ne!(source(one), source(other));
        let mapped: IpAddr = "::ffff:192.0.2.7"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        assert_eq!(
            source(mapped),
            "192.0.2.7".parse().unwrap_or(IpAddr::from([0; 4]))
        );
    }
}
