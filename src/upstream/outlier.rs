//! Outlier detection: passive health from the outcome of every call.
//!
//! An endpoint is ejected (gets no traffic) after `consecutive_failures`
//! failures in a row, or when its failure rate in one `interval` exceeds
//! `failure_percentage` over at least `failure_percentage_min_requests`
//! calls. Failures are what `call::Outcome` says they are — UNAVAILABLE,
//! INTERNAL, UNKNOWN, DATA_LOSS and transport failures, whether the status
//! came in headers or in trailers — never UNIMPLEMENTED, a client's cancel
//! or deadline, or our own overflow.
//!
//! An ejection lasts `base_ejection_time` × times ejected (capped at
//! `max_ejection_time`, ±10% jitter); the multiplier decays by one for every
//! interval the endpoint stays in service. When the time is up the endpoint
//! gets exactly one probe call: success readmits it (with a short slow start
//! in the balancer's cost), failure ejects it again for longer. No more than
//! `max_ejection_percent` of the endpoints are ejected at once, and one
//! always may be. While active health checks hold endpoints out, an ejection
//! must also leave at least one endpoint that is neither ejected nor
//! unhealthy: together the two mechanisms may not take the last endpoint in
//! service away. When no endpoint in service is left for a call all the same
//! (an upstream with one endpoint, or the others refused its connection),
//! the picker sends it to an ejected one (see `dispatch`), so ejections
//! alone never take a cluster dark.
//!
//! All state is atomics read on the hot path; only the reason text takes a
//! lock, when an ejection happens.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::call::Outcome;

/// After readmission the balancer sees the endpoint as costlier, ramping
/// down to normal over this window, so a recovering backend is not flooded.
pub(crate) const SLOW_START: Duration = Duration::from_secs(10);

/// `upstreams.*.outlier_detection`, in the units the detector uses.
#[derive(Clone, Debug)]
pub(crate) struct OutlierSettings {
    pub(crate) consecutive_failures: u32,
    pub(crate) failure_percentage: u32,
    pub(crate) min_requests: u32,
    pub(crate) interval: Duration,
    pub(crate) base_ejection: Duration,
    pub(crate) max_ejection: Duration,
    pub(crate) max_ejection_percent: u32,
}

impl OutlierSettings {
    pub(crate) fn from_config(config: &crate::config::OutlierDetection) -> Self {
        Self {
            consecutive_failures: config.consecutive_failures,
            failure_percentage: config.failure_percentage,
            min_requests: config.failure_percentage_min_requests,
            interval: config.interval.get(),
            base_ejection: config.base_ejection_time.get(),
            max_ejection: config.max_ejection_time.get(),
            max_ejection_percent: config.max_ejection_percent,
        }
    }
}

/// Where an endpoint stands with the detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Takes traffic.
    InService,
    /// Ejected; its time is not up.
    Ejected { until_nanos: u64 },
    /// Ejection time is up: the next call may be its probe.
    ProbeDue,
    /// Its probe call is in flight.
    Probing,
}

/// One endpoint's outlier state.
#[derive(Default)]
pub(crate) struct OutlierState {
    consecutive: AtomicU32,
    window_calls: AtomicU32,
    window_failures: AtomicU32,
    /// Clock nanos when the ejection ends; 0 when in service.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    total_ejections: AtomicU64,
    probing: AtomicBool,
    readmitted_at: AtomicU64,
    reason: Mutex<Option<String>>,
    /// Ejections by why: consecutive failures, failure percentage, failed probe.
    by_reason: [AtomicU64; 3],
}

/// Why an endpoint was ejected, for metrics (the text reason says more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EjectionReason {
    ConsecutiveFailures = 0,
    FailurePercentage = 1,
    ProbeFailed = 2,
}

impl EjectionReason {
    pub(crate) const ALL: [EjectionReason; 3] = [
        EjectionReason::ConsecutiveFailures,
        EjectionReason::FailurePercentage,
        EjectionReason::ProbeFailed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EjectionReason::ConsecutiveFailures => "consecutive_failures",
            EjectionReason::FailurePercentage => "failure_percentage",
            EjectionReason::ProbeFailed => "probe_failed",
        }
    }
}

impl OutlierState {
    pub(crate) fn standing(&self, now: u64) -> Standing {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            Standing::InService
        } else if now < until {
            Standing::Ejected { until_nanos: until }
        } else if self.probing.load(Ordering::Acquire) {
            Standing::Probing
        } else {
            Standing::ProbeDue
        }
    }

    /// Claims the single probe call of an endpoint whose ejection is over.
    pub(crate) fn claim_probe(&self, now: u64) -> bool {
        self.standing(now) == Standing::ProbeDue
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Cost multiplier for the balancer: 10× right after readmission, down to 1× over `SLOW_START`.
    pub(crate) fn warmup_factor(&self, now: u64) -> f64 {
        let since = self.readmitted_at.load(Ordering::Relaxed);
        if since == 0 {
            return 1.0;
        }
        let elapsed = now.saturating_sub(since) as f64 / SLOW_START.as_nanos() as f64;
        if elapsed >= 1.0 {
            1.0
        } else {
            1.0 + 9.0 * (1.0 - elapsed)
        }
    }

    pub(crate) fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    pub(crate) fn total_ejections(&self) -> u64 {
        self.total_ejections.load(Ordering::Relaxed)
    }

    /// Ejections since start-up, by reason.
    pub(crate) fn ejections_by_reason(&self) -> [(EjectionReason, u64); 3] {
        EjectionReason::ALL.map(|r| (r, self.by_reason[r as usize].load(Ordering::Relaxed)))
    }

    pub(crate) fn reason(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}

/// The cluster-wide side: ejection decisions and the ejection budget.
pub(crate) struct OutlierDetector {
    pub(crate) settings: OutlierSettings,
    ejected: AtomicU32,
    endpoints: AtomicU32,
    /// Endpoints active health checks hold out of service.
    unhealthy: AtomicU32,
}

impl OutlierDetector {
    pub(crate) fn new(settings: OutlierSettings, endpoints: usize) -> Self {
        Self {
            settings,
            ejected: AtomicU32::new(0),
            endpoints: AtomicU32::new(u32::try_from(endpoints).unwrap_or(u32::MAX)),
            unhealthy: AtomicU32::new(0),
        }
    }

    /// An endpoint's health checks took it out of service (`true`) or put
    /// it back (`false`).
    pub(crate) fn health_changed(&self, unhealthy: bool) {
        if unhealthy {
            self.unhealthy.fetch_add(1, Ordering::AcqRel);
        } else {
            let _ = self
                .unhealthy
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    pub(crate) fn set_endpoint_count(&self, n: usize) {
        self.endpoints
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Whether any endpoint is ejected (the picker looks for due probes only then).
    pub(crate) fn any_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed) > 0
    }

    /// Records a finished call.
    pub(crate) fn record(&self, state: &OutlierState, outcome: Outcome, probe: bool, now: u64) {
        if probe {
            match outcome {
                Outcome::Success => self.readmit(state, now),
                Outcome::Failure => self.extend(state, now, "its probe call failed"),
                // A cancelled probe says nothing: let another call probe.
                Outcome::Neutral => state.probing.store(false, Ordering::Release),
            }
            return;
        }
        match outcome {
            Outcome::Success => {
                state.consecutive.store(0, Ordering::Relaxed);
                state.window_calls.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failure => {
                state.window_calls.fetch_add(1, Ordering::Relaxed);
                state.window_failures.fetch_add(1, Ordering::Relaxed);
                let run = state.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                let limit = self.settings.consecutive_failures;
                if limit > 0 && run >= limit && state.ejected_until.load(Ordering::Acquire) == 0 {
                    let reason = format!("{run} consecutive failures");
                    self.eject(state, now, reason, EjectionReason::ConsecutiveFailures);
                }
            }
            Outcome::Neutral => {}
        }
    }

    /// The periodic pass: failure percentages over the closing interval, and
    /// the decay of the ejection multiplier for endpoints that stayed in service.
    pub(crate) fn evaluate<'a>(&self, states: impl Iterator<Item = &'a OutlierState>, now: u64) {
        for state in states {
            let calls = state.window_calls.swap(0, Ordering::Relaxed);
            let failures = state.window_failures.swap(0, Ordering::Relaxed);
            if state.ejected_until.load(Ordering::Acquire) != 0 {
                continue;
            }
            let threshold = self.settings.failure_percentage;
            if threshold > 0
                && calls >= self.settings.min_requests.max(1)
                // At or above the threshold, as Envoy's `failure_percentage_threshold`.
                && u64::from(failures) * 100 >= u64::from(threshold) * u64::from(calls)
            {
                let percent = u64::from(failures) * 100 / u64::from(calls);
                self.eject(
                    state,
                    now,
                    format!("{percent}% of {calls} calls failed in {:?}", self.settings.interval),
                    EjectionReason::FailurePercentage,
                );
            } else {
                let _ = state
                    .times_ejected
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
        }
    }

    /// The most endpoints that may be ejected at once (at least one).
    fn ejection_budget(&self) -> u32 {
        let n = self.endpoints.load(Ordering::Relaxed);
        (n.saturating_mul(self.settings.max_ejection_percent) / 100).max(1)
    }

    fn eject(&self, state: &OutlierState, now: u64, reason: String, kind: EjectionReason) -> bool {
        let budget = self.ejection_budget();
        let unhealthy = self.unhealthy.load(Ordering::Acquire);
        let endpoints = self.endpoints.load(Ordering::Relaxed);
        // With health checks holding some out, one endpoint must stay in service.
        let allowed = |ejected: u32| ejected < budget && (unhealthy == 0 || ejected + unhealthy + 1 < endpoints);
        if self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| allowed(n).then_some(n + 1))
            .is_err()
        {
            tracing::debug!(%reason, budget, unhealthy, "not ejecting: max_ejection_percent reached, or it would leave no endpoint in service");
            return false;
        }
        let until = now + self.ejection_time(state).as_nanos() as u64;
        if state
            .ejected_until
            .compare_exchange(0, until.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread ejected it first.
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        state.total_ejections.fetch_add(1, Ordering::Relaxed);
        state.by_reason[kind as usize].fetch_add(1, Ordering::Relaxed);
        state.consecutive.store(0, Ordering::Relaxed);
        state.readmitted_at.store(0, Ordering::Relaxed);
        tracing::warn!(%reason, ejection = ?Duration::from_nanos(until - now), "endpoint ejected");
        if let Ok(mut slot) = state.reason.lock() {
            *slot = Some(reason);
        }
        true
    }

    /// A failed probe: eject again, for longer (the endpoint stays counted as ejected).
    fn extend(&self, state: &OutlierState, now: u64, reason: &str) {
        let until = now + self.ejection_time(state).as_nanos() as u64;
        state.ejected_until.store(until.max(1), Ordering::Release);
        state.total_ejections.fetch_add(1, Ordering::Relaxed);
        state.by_reason[EjectionReason::ProbeFailed as usize].fetch_add(1, Ordering::Relaxed);
        state.probing.store(false, Ordering::Release);
        if let Ok(mut slot) = state.reason.lock() {
            *slot = Some(reason.to_string());
        }
    }

    fn readmit(&self, state: &OutlierState, now: u64) {
        if state.ejected_until.swap(0, Ordering::AcqRel) != 0 {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
        }
        state.probing.store(false, Ordering::Release);
        state.consecutive.store(0, Ordering::Relaxed);
        state.readmitted_at.store(now.max(1), Ordering::Relaxed);
        tracing::info!("ejected endpoint readmitted after a successful probe");
    }

    /// Base × times ejected (this one included), capped, ±10% jitter.
    fn ejection_time(&self, state: &OutlierState) -> Duration {
        let times = state.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let raw = self
            .settings
            .base_ejection
            .saturating_mul(times)
            .min(self.settings.max_ejection);
        raw.mul_f64(0.9 + fastrand::f64() * 0.2)
    }

    /// Forgets an endpoint that left the cluster while ejected.
    pub(crate) fn forget(&self, state: &OutlierState) {
        if state.ejected_until.swap(0, Ordering::AcqRel) != 0 {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn detector(endpoints: usize) -> OutlierDetector {
        OutlierDetector::new(
            OutlierSettings {
                consecutive_failures: 5,
                failure_percentage: 50,
                min_requests: 20,
                interval: Duration::from_secs(10),
                base_ejection: Duration::from_secs(30),
                max_ejection: Duration::from_secs(300),
                max_ejection_percent: 50,
            },
            endpoints,
        )
    }

    #[test]
    fn five_failures_in_a_row_eject_and_a_success_resets_the_run() {
        let d = detector(3);
        let s = OutlierState::default();
        for _ in 0..4 {
            d.record(&s, Outcome::Failure, false, SEC);
        }
        d.record(&s, Outcome::Success, false, SEC);
        for _ in 0..4 {
            d.record(&s, Outcome::Failure, false, SEC);
        }
        assert_eq!(s.standing(SEC), Standing::InService);
        d.record(&s, Outcome::Failure, false, SEC);
        assert!(matches!(s.standing(SEC), Standing::Ejected { .. }));
        assert!(s.reason().unwrap().contains("5 consecutive failures"));
    }

    #[test]
    fn ejections_never_take_the_last_endpoint_health_checks_left_in_service() {
        // Four endpoints, two failing health checks: the 50% cap alone would
        // allow ejecting the other two.
        let d = detector(4);
        d.health_changed(true);
        d.health_changed(true);
        let (a, b) = (OutlierState::default(), OutlierState::default());
        for _ in 0..5 {
            d.record(&a, Outcome::Failure, false, SEC);
            d.record(&b, Outcome::Failure, false, SEC);
        }
        assert!(matches!(a.standing(SEC), Standing::Ejected { .. }), "one may go");
        assert_eq!(b.standing(SEC), Standing::InService, "the last one in service stays");

        // One endpoint healthy again: now b may go too (the cap allows two).
        d.health_changed(false);
        d.record(&b, Outcome::Failure, false, SEC);
        assert!(matches!(b.standing(SEC), Standing::Ejected { .. }));
    }

    #[test]
    fn neutral_outcomes_never_count() {
        let d = detector(3);
        let s = OutlierState::default();
        for _ in 0..100 {
            d.record(&s, Outcome::Neutral, false, SEC);
        }
        d.evaluate(std::iter::once(&s), SEC);
        assert_eq!(s.standing(SEC), Standing::InService);
    }

    #[test]
    fn failure_percentage_ejects_at_the_interval() {
        let d = detector(3);
        let s = OutlierState::default();
        for i in 0..40 {
            let outcome = if i % 3 == 0 { Outcome::Success } else { Outcome::Failure };
            d.record(&s, outcome, false, SEC);
            if outcome == Outcome::Failure {
                d.record(&s, Outcome::Success, false, SEC); // keep runs short
            }
        }
        assert_eq!(s.standing(SEC), Standing::InService);
        // 26 failures of 66 calls is under 50%: no ejection.
        d.evaluate(std::iter::once(&s), SEC);
        assert_eq!(s.standing(SEC), Standing::InService);
        for _ in 0..20 {
            d.record(&s, Outcome::Failure, false, SEC);
            d.record(&s, Outcome::Failure, false, SEC);
            d.record(&s, Outcome::Success, false, SEC);
        }
        d.evaluate(std::iter::once(&s), SEC);
        assert!(matches!(s.standing(SEC), Standing::Ejected { .. }), "{:?}", s.reason());
    }

    #[test]
    fn failing_exactly_the_threshold_ejects() {
        let d = detector(3);
        let s = OutlierState::default();
        for _ in 0..50 {
            d.record(&s, Outcome::Failure, false, SEC);
            d.record(&s, Outcome::Success, false, SEC);
        }
        d.evaluate(std::iter::once(&s), SEC);
        assert!(
            matches!(s.standing(SEC), Standing::Ejected { .. }),
            "50% of calls failed"
        );
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_is_capped() {
        let d = detector(3);
        let s = OutlierState::default();
        let mut now = SEC;
        let mut lengths = Vec::new();
        for _ in 0..12 {
            for _ in 0..5 {
                d.record(&s, Outcome::Failure, false, now);
            }
            let Standing::Ejected { until_nanos } = s.standing(now) else {
                panic!("not ejected")
            };
            lengths.push((until_nanos - now) as f64 / SEC as f64);
            now = until_nanos;
            assert!(s.claim_probe(now));
            assert!(!s.claim_probe(now), "exactly one probe");
            d.record(&s, Outcome::Success, true, now);
            assert_eq!(s.standing(now), Standing::InService);
        }
        for (i, secs) in lengths.iter().enumerate() {
            let expected = (30.0 * (i + 1) as f64).min(300.0);
            assert!(
                (secs - expected).abs() <= expected * 0.1 + 0.001,
                "ejection {i}: {secs}s, expected ~{expected}s"
            );
        }
    }

    #[test]
    fn a_failed_probe_ejects_again_for_longer() {
        let d = detector(3);
        let s = OutlierState::default();
        for _ in 0..5 {
            d.record(&s, Outcome::Failure, false, SEC);
        }
        let Standing::Ejected { until_nanos } = s.standing(SEC) else {
            panic!()
        };
        assert!(s.claim_probe(until_nanos));
        d.record(&s, Outcome::Failure, true, until_nanos);
        let Standing::Ejected { until_nanos: again } = s.standing(until_nanos) else {
            panic!()
        };
        assert!(again - until_nanos > 50 * SEC, "second ejection ~60 s");
    }

    #[test]
    fn never_more_than_the_budget_but_always_one() {
        let d = detector(3);
        let states: Vec<OutlierState> = (0..3).map(|_| OutlierState::default()).collect();
        for s in &states {
            for _ in 0..5 {
                d.record(s, Outcome::Failure, false, SEC);
            }
        }
        let ejected = states.iter().filter(|s| s.standing(SEC) != Standing::InService).count();
        assert_eq!(ejected, 1, "50% of 3 rounds down, but one may always be ejected");
    }

    #[test]
    fn slow_start_ramps_the_cost_down() {
        let d = detector(3);
        let s = OutlierState::default();
        for _ in 0..5 {
            d.record(&s, Outcome::Failure, false, SEC);
        }
        let Standing::Ejected { until_nanos } = s.standing(SEC) else {
            panic!()
        };
        assert!(s.claim_probe(until_nanos));
        d.record(&s, Outcome::Success, true, until_nanos);
        assert!((s.warmup_factor(until_nanos) - 10.0).abs() < 0.01);
        assert!(s.warmup_factor(until_nanos + 5 * SEC) < 6.0);
        assert_eq!(s.warmup_factor(until_nanos + 11 * SEC), 1.0);
    }
}
