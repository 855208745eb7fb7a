//! The clock a driver passes to sessions.

use protocol_core::session::Instant;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch, as a session [`Instant`].
///
/// The daemon stores call deadlines as instants, so its clock must survive a restart:
/// wall-clock time does, a process-relative monotonic clock would not. Sessions tolerate
/// a clock that steps back (`SANS_IO.md`, "Time and deadlines").
pub fn now() -> Instant {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Instant::from_millis(ms)
}

/// How long from now until `at` (zero if it has passed).
pub fn until(at: Instant) -> Duration {
    Duration::from_millis(now().ms_until(at))
}
