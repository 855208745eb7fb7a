//! Delays between a node's reconnection attempts: exponential, capped, with full jitter,
//! so a fleet cut off at once does not come back at once.
//!
//! Milliseconds, like [`crate::time::Instant`]; each driver converts to its own clock's
//! duration where it sleeps. A driver counts its attempts from 0, draws one random
//! `u64` per delay, and starts the count over after a connection that lasted
//! [`Backoff::reset_after_ms`] ([`Backoff::starts_over`]):
//!
//! ```
//! # use protocol_core::backoff::Backoff;
//! let backoff = Backoff::default();
//! let mut attempt = 0u32;
//! # let (lasted_ms, random) = (1_000, 0x5eed);
//! // ... a connection ended after `lasted_ms` ...
//! if backoff.starts_over(lasted_ms) {
//!     attempt = 0;
//! }
//! let sleep_ms = backoff.delay_ms(attempt, random);
//! attempt = attempt.saturating_add(1);
//! # assert!(sleep_ms <= backoff.ceiling_ms(0));
//! ```

/// Reconnection delays, in milliseconds; see [`Backoff::delay_ms`]. Any field values are
/// accepted: the computations saturate and never panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backoff {
    /// The ceiling of the first delay.
    pub initial_ms: u64,
    /// The largest ceiling.
    pub max_ms: u64,
    /// A connection that lasted this long starts the sequence over.
    pub reset_after_ms: u64,
}

impl Default for Backoff {
    /// 500 ms, doubling up to 30 s; a connection of a minute starts over.
    fn default() -> Self {
        Self {
            initial_ms: 500,
            max_ms: 30_000,
            reset_after_ms: 60_000,
        }
    }
}

impl Backoff {
    /// The ceiling before attempt `attempt` (0-based): `initial_ms * 2^attempt`,
    /// saturating, capped at `max_ms`.
    pub const fn ceiling_ms(&self, attempt: u32) -> u64 {
        let factor = match 1u64.checked_shl(attempt) {
            Some(factor) => factor,
            None => u64::MAX,
        };
        let ceiling = self.initial_ms.saturating_mul(factor);
        if ceiling < self.max_ms {
            ceiling
        } else {
            self.max_ms
        }
    }

    /// The delay before attempt `attempt`: uniform in `0..=ceiling_ms(attempt)` ("full
    /// jitter"), drawn from `random` (one draw of the caller's RNG). The modulo bias is
    /// negligible while the ceiling is far below 2^64 (30 s is under 2^15 ms).
    pub fn delay_ms(&self, attempt: u32, random: u64) -> u64 {
        match self.ceiling_ms(attempt).checked_add(1) {
            Some(choices) => random % choices,
            // A ceiling of u64::MAX: every u64 is a delay in range.
            None => random,
        }
    }

    /// Whether a connection that lasted `lasted_ms` starts the attempts over (at 0).
    pub const fn starts_over(&self, lasted_ms: u64) -> bool {
        lasted_ms >= self.reset_after_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_is_half_a_second_up_to_thirty_and_a_minute_to_start_over() {
        let b = Backoff::default();
        assert_eq!(
            (b.initial_ms, b.max_ms, b.reset_after_ms),
            (500, 30_000, 60_000)
        );
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.ceiling_ms(0), 500);
        assert_eq!(b.ceiling_ms(1), 1_000);
        assert_eq!(b.ceiling_ms(5), 16_000);
        assert_eq!(b.ceiling_ms(6), 30_000);
        assert_eq!(b.ceiling_ms(u32::MAX), 30_000);

        let b = Backoff {
            initial_ms: 100,
            ..Backoff::default()
        };
        assert_eq!(b.ceiling_ms(0), 100);
        assert_eq!(b.ceiling_ms(3), 800);
        assert_eq!(b.ceiling_ms(20), 30_000);
        assert_eq!(b.ceiling_ms(u32::MAX), 30_000);
    }

    #[test]
    fn delays_stay_within_their_ceiling_and_reach_both_ends() {
        let b = Backoff::default();
        for attempt in [0, 1, 3, 10, 63, 64, 65, u32::MAX] {
            let ceiling = b.ceiling_ms(attempt);
            for random in [0, 1, 7, 1 << 20, u64::MAX / 3, u64::MAX - 1, u64::MAX] {
                assert!(b.delay_ms(attempt, random) <= ceiling);
            }
            assert_eq!(b.delay_ms(attempt, 0), 0);
            assert_eq!(b.delay_ms(attempt, ceiling), ceiling);
            assert_eq!(b.delay_ms(attempt, ceiling + 1), 0);
        }
        let b = Backoff {
            initial_ms: 100,
            ..Backoff::default()
        };
        assert_eq!(b.delay_ms(3, 800), 800);
        assert_eq!(b.delay_ms(3, 801), 0);
        for random in [1, 12_345, u64::MAX] {
            assert!(b.delay_ms(40, random) <= 30_000);
        }
    }

    #[test]
    fn a_zero_ceiling_gives_no_delay() {
        let b = Backoff {
            initial_ms: 0,
            ..Backoff::default()
        };
        assert_eq!(b.ceiling_ms(u32::MAX), 0);
        assert_eq!(b.delay_ms(3, u64::MAX), 0);
    }

    #[test]
    fn the_largest_values_saturate() {
        let b = Backoff {
            initial_ms: u64::MAX,
            max_ms: u64::MAX,
            reset_after_ms: u64::MAX,
        };
        assert_eq!(b.ceiling_ms(0), u64::MAX);
        assert_eq!(b.ceiling_ms(u32::MAX), u64::MAX);
        assert_eq!(b.delay_ms(u32::MAX, u64::MAX), u64::MAX);
        assert_eq!(b.delay_ms(0, 12_345), 12_345);
        let b = Backoff {
            initial_ms: 1,
            max_ms: u64::MAX,
            reset_after_ms: 0,
        };
        assert_eq!(b.ceiling_ms(63), 1 << 63);
        assert_eq!(b.ceiling_ms(64), u64::MAX);
    }

    #[test]
    fn a_connection_of_reset_after_starts_over() {
        let b = Backoff::default();
        assert!(!b.starts_over(0));
        assert!(!b.starts_over(59_999));
        assert!(b.starts_over(60_000));
        assert!(b.starts_over(u64::MAX));
        let always = Backoff {
            reset_after_ms: 0,
            ..b
        };
        assert!(always.starts_over(0));
    }

    /// Edge values more often than a uniform draw would give them.
    fn ms() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(1 << 63),
            0..100_000u64,
            any::<u64>(),
        ]
    }

    fn attempt() -> impl Strategy<Value = u32> {
        prop_oneof![Just(u32::MAX), 0..70u32, any::<u32>()]
    }

    /// `min(initial * 2^attempt, max)` computed wide.
    fn ceiling_model(b: &Backoff, attempt: u32) -> u64 {
        let doubled = if attempt >= 64 {
            if b.initial_ms == 0 { 0 } else { u128::MAX }
        } else {
            u128::from(b.initial_ms) << attempt
        };
        let doubled = u64::try_from(doubled).unwrap_or(u64::MAX);
        doubled.min(b.max_ms)
    }

    proptest! {
        #[test]
        fn any_input_stays_within_its_bounds(
            initial_ms in ms(),
            max_ms in ms(),
            reset_after_ms in ms(),
            attempt in attempt(),
            random in ms(),
        ) {
            let b = Backoff { initial_ms, max_ms, reset_after_ms };
            let ceiling = b.ceiling_ms(attempt);
            prop_assert_eq!(ceiling, ceiling_model(&b, attempt));
            prop_assert!(ceiling <= max_ms);
            let delay = b.delay_ms(attempt, random);
            prop_assert!(delay <= ceiling);
            prop_assert!(delay <= max_ms);
            // The sequence never shrinks as attempts go on.
            prop_assert!(b.ceiling_ms(attempt.saturating_add(1)) >= ceiling);
        }
    }
}
