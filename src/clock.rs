//! Wall-clock time behind a trait.
//!
//! Everything that stamps or compares calendar time takes a `Clock` instead of calling
//! `Utc::now()`, so tests can pin or move time. Monotonic waits use `tokio::time` directly,
//! which tests control with `tokio::time::pause()`.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

/// A source of the current UTC instant.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The shared handle the rest of onair passes around.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // This is the one place that reads the real clock.
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self { now: Mutex::new(start) }
    }

    /// Moves the clock forward (or backward, for a negative duration).
    pub fn advance(&self, by: Duration) {
        let mut now = crate::sync::lock(&self.now);
        *now += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        *crate::sync::lock(&self.now) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *crate::sync::lock(&self.now)
    }
}

/// The system clock shifted by a fixed offset: it runs at real speed and reads `offset` ahead (or
/// behind). Tests use it to put a daemon shortly before a step without waiting for it.
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock {
    offset: Duration,
}

impl OffsetClock {
    pub fn new(offset: Duration) -> Self {
        Self { offset }
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        SystemClock.now() + self.offset
    }
}

/// The system clock as a shared handle.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Formats an instant the way Azure Resource Manager does: seven fractional digits and `Z`.
pub fn arm_timestamp(at: DateTime<Utc>) -> String {
    use chrono::Timelike;
    // chrono's `%.Nf` has no seven-digit form; ARM counts in 100 ns ticks.
    format!("{}.{:07}Z", at.format("%Y-%m-%dT%H:%M:%S"), at.nanosecond() % 1_000_000_000 / 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = Utc.with_ymd_and_hms(2026, 11, 24, 18, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::seconds(90));
        assert_eq!(clock.now(), start + Duration::seconds(90));
    }

    #[test]
    fn arm_timestamps_have_seven_fractional_digits() {
        let at = Utc.with_ymd_and_hms(2018, 3, 3, 2, 25, 6).unwrap() + Duration::microseconds(98275);
        assert_eq!(arm_timestamp(at), "2018-03-03T02:25:06.0982750Z");
    }
}
