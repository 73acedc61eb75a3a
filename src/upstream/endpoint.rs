//! One backend address: its connection pool, the load the balancer reads
//! (calls in flight, a peak-EWMA latency estimate) and its call counters.
//!
//! Everything the picker reads is an atomic, so every worker thread shares
//! one view of the load without a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::uri::Authority;

use super::call::Outcome;
use super::clock::Clock;
use super::outlier::{OutlierDetector, OutlierState, Standing};
use super::pool::Pool;

/// How fast the latency estimate forgets old samples (Linkerd and Finagle use 10 s).
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// The cost of an endpoint with no latency sample that already has a call in
/// flight: a new endpoint gets one call at a time until its first answer
/// gives it an estimate, so it is tried at once but never flooded.
const UNMEASURED_BUSY_PENALTY: f64 = 1e12;

/// What active health checks last concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// No health check configured, or none finished yet: takes traffic.
    Unknown = 0,
    Healthy = 1,
    /// Failed `unhealthy_threshold` checks in a row: takes no traffic.
    Unhealthy = 2,
}

/// A backend endpoint.
pub(crate) struct Endpoint {
    /// `host:port` as configured or discovered; what we connect to.
    pub(crate) target: Arc<str>,
    /// The `:authority` sent upstream.
    pub(crate) authority: Authority,
    pub(crate) pool: Arc<Pool>,
    pub(crate) outlier: OutlierState,
    detector: Arc<OutlierDetector>,
    clock: Clock,
    health: AtomicU8,
    /// Removed by discovery: takes no new calls, finishes the ones it has.
    draining: AtomicBool,
    in_flight: AtomicU32,
    rtt: PeakEwma,
    calls: AtomicU64,
    failures: AtomicU64,
    /// Finished calls by the gRPC code they ended with.
    codes: [AtomicU64; 17],
}

impl Endpoint {
    pub(crate) fn new(
        target: Arc<str>,
        authority: Authority,
        pool: Arc<Pool>,
        detector: Arc<OutlierDetector>,
        clock: Clock,
    ) -> Self {
        Self {
            target,
            authority,
            pool,
            outlier: OutlierState::default(),
            detector,
            clock,
            health: AtomicU8::new(Health::Unknown as u8),
            draining: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            rtt: PeakEwma::default(),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            codes: Default::default(),
        }
    }

    /// Counts a finished call under its gRPC code.
    pub(crate) fn count_code(&self, code: crate::status::Code) {
        self.codes[code as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Finished calls per gRPC code.
    pub(crate) fn code_counts(&self) -> [u64; 17] {
        std::array::from_fn(|i| self.codes[i].load(Ordering::Relaxed))
    }

    /// Whether normal calls may be sent here now (probes are chosen separately).
    pub(crate) fn in_service(&self, now: u64) -> bool {
        self.in_service_if_ejections_ignored() && self.outlier.standing(now) == Standing::InService
    }

    /// Whether it would be in service were it not ejected.
    pub(crate) fn in_service_if_ejections_ignored(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.health() != Health::Unhealthy
    }

    /// Whether this endpoint's single probe call is due and may be claimed.
    pub(crate) fn claim_probe(&self, now: u64) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.health() != Health::Unhealthy && self.outlier.claim_probe(now)
    }

    pub(crate) fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    pub(crate) fn set_health(&self, health: Health) {
        let was = self.health.swap(health as u8, Ordering::AcqRel);
        let (was_out, now_out) = (was == Health::Unhealthy as u8, health == Health::Unhealthy);
        if was_out != now_out && !self.is_draining() {
            self.detector.health_changed(now_out);
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Takes the endpoint out of service for good (discovery removed it).
    pub(crate) fn drain(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) && self.health() == Health::Unhealthy {
            self.detector.health_changed(false);
        }
        self.detector.forget(&self.outlier);
        self.pool.close();
    }

    /// Calls in flight on this endpoint.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn begin_call(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends a call, feeding its outcome to outlier detection.
    pub(crate) fn end_call(&self, outcome: Outcome, probe: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if outcome == Outcome::Failure {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.detector
            .record(&self.outlier, outcome, probe, self.clock.now_nanos());
    }

    /// Gives back a probe claimed by a pick whose call went elsewhere
    /// (another endpoint may now be probed, or this one by the next call).
    pub(crate) fn release_probe(&self) {
        self.detector
            .record(&self.outlier, Outcome::Neutral, true, self.clock.now_nanos());
    }

    /// Records the round trip of a call sent at `sent`, answered now.
    pub(crate) fn observe_rtt_since(&self, sent: tokio::time::Instant) {
        // One clock read for both the round trip and when it was seen.
        let now = crate::turn::now();
        let rtt = now.saturating_duration_since(sent);
        self.rtt.observe(self.clock.nanos_at(now), rtt.as_nanos() as f64);
    }

    /// The current latency estimate (decayed to now).
    pub(crate) fn rtt_estimate(&self, clock: &Clock) -> Duration {
        Duration::from_nanos(self.rtt.estimate(clock.now_nanos()) as u64)
    }

    /// Peak-EWMA cost: latency estimate × (calls in flight + 1), raised for
    /// an endpoint in slow start after an ejection.
    pub(crate) fn ewma_cost(&self, now_nanos: u64) -> f64 {
        let in_flight = self.in_flight();
        let cost = match self.rtt.estimate(now_nanos) {
            rtt if rtt > 0.0 => rtt * f64::from(in_flight + 1),
            _ if in_flight == 0 => 0.0,
            _ => UNMEASURED_BUSY_PENALTY * f64::from(in_flight),
        };
        cost * self.outlier.warmup_factor(now_nanos)
    }

    /// Least-request cost: calls in flight, raised during slow start.
    pub(crate) fn load_cost(&self, now_nanos: u64) -> f64 {
        f64::from(self.in_flight()) * self.outlier.warmup_factor(now_nanos)
    }

    /// Calls started and calls that failed, since start.
    pub(crate) fn counters(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

/// A latency estimate that jumps up to any higher sample at once (the "peak")
/// and otherwise moves by an exponentially weighted average whose weight
/// depends on the time since the last sample. Between samples it decays
/// towards zero, so an endpoint that was slow once is tried again later.
///
/// The value and its timestamp are two atomics; a race between two updates
/// loses one sample, which an estimate can afford.
#[derive(Default)]
struct PeakEwma {
    rtt_nanos: AtomicU64,
    stamp_nanos: AtomicU64,
}

impl PeakEwma {
    fn decay_weight(elapsed_nanos: u64) -> f64 {
        (-(elapsed_nanos as f64) / EWMA_DECAY.as_nanos() as f64).exp()
    }

    fn estimate(&self, now: u64) -> f64 {
        let rtt = f64::from_bits(self.rtt_nanos.load(Ordering::Relaxed));
        let stamp = self.stamp_nanos.load(Ordering::Relaxed);
        rtt * Self::decay_weight(now.saturating_sub(stamp))
    }

    fn observe(&self, now: u64, sample: f64) {
        let previous = self.estimate(now);
        let next = if sample > previous {
            sample
        } else {
            let stamp = self.stamp_nanos.load(Ordering::Relaxed);
            let w = Self::decay_weight(now.saturating_sub(stamp));
            previous * w + sample * (1.0 - w)
        };
        self.rtt_nanos.store(next.to_bits(), Ordering::Relaxed);
        self.stamp_nanos.store(now, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1_000_000.0;
    const SEC: u64 = 1_000_000_000;

    #[test]
    fn peak_is_taken_at_once_and_lower_samples_average_in() {
        let ewma = PeakEwma::default();
        ewma.observe(SEC, 10.0 * MS);
        assert_eq!(ewma.estimate(SEC), 10.0 * MS);
        ewma.observe(SEC, 50.0 * MS);
        assert_eq!(ewma.estimate(SEC), 50.0 * MS, "a higher sample is the new estimate");
        ewma.observe(SEC + SEC / 10, 10.0 * MS);
        let after = ewma.estimate(SEC + SEC / 10);
        assert!(after < 50.0 * MS && after > 40.0 * MS, "{after}");
    }

    #[test]
    fn estimate_decays_between_samples() {
        let ewma = PeakEwma::default();
        ewma.observe(0, 100.0 * MS);
        let later = ewma.estimate(10 * SEC);
        assert!((later - 100.0 * MS / std::f64::consts::E).abs() < MS, "{later}");
    }
}
