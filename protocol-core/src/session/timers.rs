//! Time as a value: the session never reads a clock, the caller passes `now` in.

/// A point in time in milliseconds on the caller's monotonic clock.
///
/// Only differences matter, except on the daemon: call deadlines are journaled as
/// instants, so a restarted daemon must keep counting from where it stood (wall-clock
/// milliseconds are fine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);
    /// A deadline that never comes.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Earliest(Instant);

impl Earliest {
    pub(crate) const fn new() -> Self {
        Earliest(Instant::NEVER)
    }

    pub(crate) fn add(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.0 = self.0.min(at);
        }
    }

    pub(crate) fn get(self) -> Instant {
        self.0
    }
}
