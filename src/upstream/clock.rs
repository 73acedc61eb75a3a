//! A monotonic clock in nanoseconds since the cluster started, so that times
//! fit in one atomic. It follows tokio's clock, so tests with paused time
//! drive it too.

use tokio::time::Instant;

/// Nanoseconds since a fixed epoch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self { epoch: Instant::now() }
    }

    pub(crate) fn now_nanos(&self) -> u64 {
        self.nanos_at(crate::turn::now())
    }

    pub(crate) fn nanos_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn instant_at(&self, nanos: u64) -> Instant {
        self.epoch + std::time::Duration::from_nanos(nanos)
    }
}
