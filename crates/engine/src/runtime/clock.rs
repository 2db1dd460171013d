//! The runtime's clock: tokio time mapped onto the core's [`Time`], so paused tokio time and
//! turmoil's simulated clock drive the core unchanged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::core::Time;

/// An epoch on tokio's clock plus the wall-clock time it corresponds to (for DLQ timestamps).
#[derive(Copy, Clone, Debug)]
pub struct Clock {
    epoch: tokio::time::Instant,
    epoch_wall_ms: u64,
}

impl Clock {
    /// Starts the clock now; wall time from the system clock.
    pub fn start() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Clock::with_wall_ms(u64::try_from(wall.as_millis()).unwrap_or(u64::MAX))
    }

    /// Starts the clock now with a given wall-clock epoch (simulations pin it for determinism).
    pub fn with_wall_ms(epoch_wall_ms: u64) -> Clock {
        Clock {
            epoch: tokio::time::Instant::now(),
            epoch_wall_ms,
        }
    }

    /// Now, as core time.
    pub fn now(&self) -> Time {
        self.time_of(tokio::time::Instant::now())
    }

    /// A tokio instant (read from tokio's clock already) as core time.
    pub(crate) fn time_of(&self, at: tokio::time::Instant) -> Time {
        let d = at.saturating_duration_since(self.epoch);
        Time::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// A core time as a tokio instant (for `sleep_until`).
    pub fn instant(&self, t: Time) -> tokio::time::Instant {
        self.epoch + Duration::from_nanos(t.as_nanos())
    }

    /// Wall-clock milliseconds of the epoch.
    pub fn epoch_wall_ms(&self) -> u64 {
        self.epoch_wall_ms
    }
}
