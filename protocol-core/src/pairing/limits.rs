//! Limits on pairing attempts: code lifetime, the failed-attempt window, and a token
//! bucket on pairing starts. All driven by `now` (the daemon's wall clock in Unix
//! milliseconds, since records outlive restarts) and plain serde data the store persists
//! (instants are stored as milliseconds).

use serde::{Deserialize, Serialize};

use super::PairingError;
use crate::time::Instant;

/// Default lifetime of a code.
pub const DEFAULT_CODE_LIFETIME_MS: u64 = 10 * 60 * 1000;
/// Shortest lifetime an operator may set.
pub const MIN_CODE_LIFETIME_MS: u64 = 30 * 1000;
/// Longest lifetime an operator may set.
pub const MAX_CODE_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;
/// Failed attempts after which a code's window closes, even for the right code.
pub const MAX_FAILED_ATTEMPTS: u8 = 20;

/// A setting outside what the limits allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    /// A code lifetime outside [`MIN_CODE_LIFETIME_MS`]..=[`MAX_CODE_LIFETIME_MS`].
    LifetimeOutOfRange { ms: u64 },
    /// A token bucket with no capacity or no refill.
    BadRate,
}

impl core::fmt::Display for LimitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LimitError::LifetimeOutOfRange { ms } => write!(
                f,
                "code lifetime of {ms} ms is outside {MIN_CODE_LIFETIME_MS}..={MAX_CODE_LIFETIME_MS} ms"
            ),
            LimitError::BadRate => f.write_str("rate limit needs a capacity and a refill period"),
        }
    }
}

impl core::error::Error for LimitError {}

/// A validated code lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeLifetime(u64);

impl CodeLifetime {
    pub fn from_millis(ms: u64) -> Result<Self, LimitError> {
        if (MIN_CODE_LIFETIME_MS..=MAX_CODE_LIFETIME_MS).contains(&ms) {
            Ok(Self(ms))
        } else {
            Err(LimitError::LifetimeOutOfRange { ms })
        }
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }
}

impl Default for CodeLifetime {
    fn default() -> Self {
        Self(DEFAULT_CODE_LIFETIME_MS)
    }
}

/// The attempt window of one code.
///
/// An attempt counts as failed from the moment the daemon answers with its share: a
/// prover that learns from the daemon's confirmation that its guess was wrong could
/// otherwise just hang up and never be counted. Only a confirmed run takes the count
/// back, and it also uses the code up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeWindow {
    /// When the code was created (stored as `created_ms`).
    #[serde(rename = "created_ms", with = "super::serde_instant")]
    pub created: Instant,
    /// When the code expires (stored as `expires_ms`).
    #[serde(rename = "expires_ms", with = "super::serde_instant")]
    pub expires: Instant,
    pub failures: u8,
    pub used: bool,
}

impl CodeWindow {
    pub fn new(now: Instant, lifetime: CodeLifetime) -> Self {
        Self {
            created: now,
            expires: now.plus_ms(lifetime.as_millis()),
            failures: 0,
            used: false,
        }
    }

    /// Whether a new attempt may run now; says why not.
    pub fn check(&self, now: Instant) -> Result<(), PairingError> {
        if self.used {
            Err(PairingError::AlreadyUsed)
        } else if self.failures >= MAX_FAILED_ATTEMPTS {
            Err(PairingError::WindowClosed)
        } else if now >= self.expires {
            Err(PairingError::Expired)
        } else {
            Ok(())
        }
    }

    /// Starts an attempt, counted as failed until [`Self::confirmed`].
    pub fn begin_attempt(&mut self, now: Instant) -> Result<(), PairingError> {
        self.check(now)?;
        self.failures += 1;
        Ok(())
    }

    /// The attempt begun last proved the code: take its count back and use the code up.
    pub fn confirmed(&mut self) {
        self.failures = self.failures.saturating_sub(1);
        self.used = true;
    }

    /// A run proved the code but ended without a certificate (its CSR was refused, or its
    /// connection closed while an operator decided): the code may be used again, within
    /// its lifetime.
    pub fn reopen(&mut self) {
        self.used = false;
    }

    pub fn is_closed(&self, now: Instant) -> bool {
        self.check(now).is_err()
    }
}

/// A token bucket on pairing starts: `capacity` starts at once, then one every
/// `refill_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    capacity: u32,
    refill_ms: u64,
    tokens: u32,
    /// When the last token was credited (or the bucket was created).
    #[serde(rename = "last_ms", with = "super::serde_instant")]
    last: Instant,
}

impl TokenBucket {
    pub fn new(now: Instant, capacity: u32, refill_ms: u64) -> Result<Self, LimitError> {
        if capacity == 0 || refill_ms == 0 {
            return Err(LimitError::BadRate);
        }
        Ok(Self {
            capacity,
            refill_ms,
            tokens: capacity,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        // A clock that steps back credits nothing rather than underflowing.
        let elapsed = self.last.ms_until(now);
        let earned = elapsed / self.refill_ms;
        if earned == 0 {
            return;
        }
        let room = u64::from(self.capacity - self.tokens);
        self.tokens += earned.min(room) as u32;
        self.last = if self.tokens == self.capacity {
            now
        } else {
            self.last.plus_ms(earned * self.refill_ms)
        };
    }

    /// Takes one token, or says how long until the next.
    pub fn try_take(&mut self, now: Instant) -> Result<(), PairingError> {
        self.refill(now);
        if self.tokens > 0 {
            self.tokens -= 1;
            if self.tokens + 1 == self.capacity {
                self.last = now;
            }
            Ok(())
        } else {
            let next = self.last.plus_ms(self.refill_ms);
            Err(PairingError::RateLimited {
                retry_after_ms: now.ms_until(next),
            })
        }
    }

    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn lifetime_bounds_are_typed() {
        assert_eq!(CodeLifetime::default().as_millis(), 600_000);
        assert!(CodeLifetime::from_millis(30_000).is_ok());
        assert!(CodeLifetime::from_millis(86_400_000).is_ok());
        assert_eq!(
            CodeLifetime::from_millis(29_999),
            Err(LimitError::LifetimeOutOfRange { ms: 29_999 })
        );
        assert_eq!(
            CodeLifetime::from_millis(86_400_001),
            Err(LimitError::LifetimeOutOfRange { ms: 86_400_001 })
        );
    }

    #[test]
    fn window_expires_and_closes() {
        let mut w = CodeWindow::new(at(1_000), CodeLifetime::from_millis(60_000).unwrap());
        assert_eq!(w.expires, at(61_000));
        assert_eq!(w.check(at(60_999)), Ok(()));
        assert_eq!(w.check(at(61_000)), Err(PairingError::Expired));
        for _ in 0..MAX_FAILED_ATTEMPTS {
            w.begin_attempt(at(2_000)).unwrap();
        }
        assert_eq!(w.begin_attempt(at(2_000)), Err(PairingError::WindowClosed));
        assert_eq!(w.failures, MAX_FAILED_ATTEMPTS);
    }

    #[test]
    fn confirmed_attempt_uses_the_code() {
        let mut w = CodeWindow::new(at(0), CodeLifetime::default());
        w.begin_attempt(at(1)).unwrap();
        w.confirmed();
        assert_eq!(w.failures, 0);
        assert_eq!(w.check(at(2)), Err(PairingError::AlreadyUsed));
        w.reopen();
        assert_eq!(w.check(at(2)), Ok(()));
    }

    #[test]
    fn bucket_refills_over_time() {
        let mut b = TokenBucket::new(at(0), 3, 1_000).unwrap();
        for _ in 0..3 {
            b.try_take(at(0)).unwrap();
        }
        assert_eq!(
            b.try_take(at(400)),
            Err(PairingError::RateLimited {
                retry_after_ms: 600
            })
        );
        b.try_take(at(1_000)).unwrap();
        assert!(b.try_take(at(1_500)).is_err());
        assert_eq!(b.available(at(10_000)), 3);
        // A clock that steps back credits nothing.
        b.try_take(at(10_000)).unwrap();
        assert_eq!(b.available(at(5_000)), 2);
        assert_eq!(TokenBucket::new(at(0), 0, 1), Err(LimitError::BadRate));
    }

    proptest! {
        /// Over any schedule of requests, no more starts succeed than the bucket allows.
        #[test]
        fn bucket_never_exceeds_its_rate(steps in proptest::collection::vec(0u64..700, 1..200)) {
            let (cap, refill) = (5u32, 1_000u64);
            let mut b = TokenBucket::new(at(0), cap, refill).unwrap();
            let (mut now, mut granted) = (0u64, 0u64);
            for s in steps {
                now += s;
                if b.try_take(at(now)).is_ok() {
                    granted += 1;
                }
                prop_assert!(granted <= u64::from(cap) + now / refill);
            }
        }
    }
}
