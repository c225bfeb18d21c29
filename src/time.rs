//! Wall-clock time that follows tokio's clock, so paused-time tests move certificates' "now".
//!
//! Certificates carry wall-clock validity (`SystemTime`), while the renewal worker sleeps on
//! tokio's monotonic [`Instant`]. [`TokioClock`] ties the two together: it reads the system
//! clock once, then advances with tokio's clock. Under `#[tokio::test(start_paused = true)]`
//! `tokio::time::advance` therefore moves both the timers and the wall clock that stamps and
//! checks certificates, and a day of renewals runs in milliseconds.

use std::time::{Duration, SystemTime};

use meshca_provider::Clock;
use tokio::time::Instant;

/// A [`Clock`] anchored to the system clock at creation and advancing with tokio's clock.
///
/// In production tokio's clock is the monotonic OS clock, so this drifts from `SystemTime`
/// only by NTP adjustments made after start (which certificate lifetimes of hours absorb).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: SystemTime,
    anchor: Instant,
}

impl TokioClock {
    /// A clock reading the system time now.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock that reads `wall` at this tokio instant (useful in tests).
    pub fn starting_at(wall: SystemTime) -> Self {
        Self {
            wall,
            anchor: Instant::now(),
        }
    }

    /// The tokio instant at which this clock will read `at`; now if `at` has passed.
    pub fn instant_at(&self, at: SystemTime) -> Instant {
        let now = Instant::now();
        let wall_now = self.wall_at(now);
        now + at.duration_since(wall_now).unwrap_or(Duration::ZERO)
    }

    fn wall_at(&self, instant: Instant) -> SystemTime {
        self.wall + instant.saturating_duration_since(self.anchor)
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.wall_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_the_wall_clock() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = TokioClock::starting_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(3600));
        let later = start + Duration::from_secs(7200);
        assert_eq!(
            clock.instant_at(later) - Instant::now(),
            Duration::from_secs(3600)
        );
        assert_eq!(clock.instant_at(start), Instant::now());
    }
}
