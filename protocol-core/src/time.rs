//! Time as a value: no state machine here reads a clock; the caller passes `now` in.

/// A point in time in milliseconds on the caller's clock.
///
/// Only differences matter, with one exception: records that outlive a process (a
/// daemon's call deadlines, pairing codes) are kept as instants, so a daemon passes
/// wall-clock milliseconds (Unix time) and a restarted daemon keeps counting from where
/// it stood. A microcontroller may pass milliseconds since boot.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Instant(u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);
    /// Later than every deadline.
    pub const NEVER: Instant = Instant(u64::MAX);

    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + ms`, saturating at [`Instant::NEVER`].
    pub const fn plus_ms(self, ms: u64) -> Self {
        Instant(self.0.saturating_add(ms))
    }

    /// Milliseconds from `self` until `later` (0 if `later` is not later).
    pub const fn ms_until(self, later: Instant) -> u64 {
        later.0.saturating_sub(self.0)
    }
}

/// The earliest of several optional deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Earliest(Option<Instant>);

impl Earliest {
    pub(crate) const fn new() -> Self {
        Earliest(None)
    }

    pub(crate) fn add(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.0 = Some(self.0.map_or(at, |cur| cur.min(at)));
        }
    }

    pub(crate) fn get(self) -> Option<Instant> {
        self.0
    }
}
