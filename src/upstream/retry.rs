//! Retries of calls that reached a backend and failed with a code the
//! operator opted into (`retry.on`). Calls that provably never reached a
//! backend are retried without any of this (see `dispatch`).
//!
//! A retry happens only before any response byte went to the client — the
//! upstream answered trailers-only — and only when the request is still in
//! the replay buffer. Each is on another endpoint where one exists, after a
//! full-jitter backoff (or the server's `grpc-retry-pushback-ms`), and only
//! while retries in flight stay within the budget: `budget_percent` of the
//! calls in flight, and at least 3.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderMap;

use crate::config::{RetryPolicy, RetryableCode};
use crate::status::Code;

/// Retries allowed in flight whatever the traffic.
const MIN_CONCURRENT_RETRIES: u32 = 3;

/// The retry policy of one cluster, and its budget.
pub(crate) struct Retries {
    codes: Vec<Code>,
    pub(crate) max_attempts: u32,
    budget_percent: u32,
    base: Duration,
    max: Duration,
    in_flight: AtomicU32,
    /// Retries made, and retries refused by the budget (for introspection and metrics).
    pub(crate) made: AtomicU64,
    pub(crate) refused_by_budget: AtomicU64,
}

/// What the server's `grpc-retry-pushback-ms` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// No header: use the backoff.
    None,
    /// Wait this long before retrying.
    Wait(Duration),
    /// Negative or malformed: do not retry.
    Stop,
}

impl Retries {
    pub(crate) fn new(policy: &RetryPolicy) -> Arc<Self> {
        Arc::new(Self {
            codes: policy.on.iter().map(|c| code_of(*c)).collect(),
            max_attempts: policy.max_attempts,
            budget_percent: policy.budget_percent,
            base: policy.backoff.base.get(),
            max: policy.backoff.max.get(),
            in_flight: AtomicU32::new(0),
            made: AtomicU64::new(0),
            refused_by_budget: AtomicU64::new(0),
        })
    }

    /// Whether any answer's code is retried (else only calls that never
    /// reached a backend are).
    pub(crate) fn retries_any_code(&self) -> bool {
        !self.codes.is_empty()
    }

    /// Whether a failure with this code may be retried at all.
    pub(crate) fn retries_code(&self, code: Code) -> bool {
        self.codes.contains(&code)
    }

    /// Takes a place in the retry budget, given the calls in flight.
    pub(crate) fn take_budget(self: &Arc<Self>, active_calls: u32) -> Option<RetryToken> {
        let allowed = (active_calls.saturating_mul(self.budget_percent) / 100).max(MIN_CONCURRENT_RETRIES);
        match self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < allowed).then_some(n + 1))
        {
            Ok(_) => {
                self.made.fetch_add(1, Ordering::Relaxed);
                Some(RetryToken { retries: self.clone() })
            }
            Err(_) => {
                self.refused_by_budget.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Full-jitter exponential backoff before retry number `retry` (1-based).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(16);
        let cap = self.base.saturating_mul(1 << exponent).min(self.max);
        cap.mul_f64(fastrand::f64())
    }
}

/// A retry counted against the budget until dropped.
pub(crate) struct RetryToken {
    retries: Arc<Retries>,
}

impl Drop for RetryToken {
    fn drop(&mut self) {
        self.retries.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads `grpc-retry-pushback-ms`.
pub(crate) fn pushback(headers: &HeaderMap) -> Pushback {
    match headers.get("grpc-retry-pushback-ms") {
        None => Pushback::None,
        Some(value) => match value.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()) {
            Some(ms) if ms >= 0 => Pushback::Wait(Duration::from_millis(ms as u64)),
            _ => Pushback::Stop,
        },
    }
}

fn code_of(code: RetryableCode) -> Code {
    match code {
        RetryableCode::Cancelled => Code::Cancelled,
        RetryableCode::Unknown => Code::Unknown,
        RetryableCode::DeadlineExceeded => Code::DeadlineExceeded,
        RetryableCode::ResourceExhausted => Code::ResourceExhausted,
        RetryableCode::Aborted => Code::Aborted,
        RetryableCode::Internal => Code::Internal,
        RetryableCode::Unavailable => Code::Unavailable,
        RetryableCode::DataLoss => Code::DataLoss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: u32) -> Arc<Retries> {
        Retries::new(&RetryPolicy {
            on: vec![RetryableCode::Unavailable],
            budget_percent: percent,
            ..RetryPolicy::default()
        })
    }

    #[test]
    fn budget_is_a_share_of_active_calls_but_at_least_three() {
        let retries = policy(20);
        let tokens: Vec<_> = (0..3).filter_map(|_| retries.take_budget(1)).collect();
        assert_eq!(tokens.len(), 3);
        assert!(retries.take_budget(1).is_none());
        drop(tokens);
        let tokens: Vec<_> = (0..100).filter_map(|_| retries.take_budget(100)).collect();
        assert_eq!(tokens.len(), 20);
        assert_eq!(retries.refused_by_budget.load(Ordering::Relaxed), 81);
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_cap() {
        let retries = policy(20);
        for retry in 1..10 {
            let cap = Duration::from_millis(25 * (1 << (retry - 1))).min(Duration::from_millis(250));
            for _ in 0..50 {
                assert!(retries.backoff(retry) <= cap);
            }
        }
    }

    #[test]
    fn pushback_header_is_honoured_or_stops_retries() {
        let mut headers = HeaderMap::new();
        assert_eq!(pushback(&headers), Pushback::None);
        headers.insert("grpc-retry-pushback-ms", "150".parse().unwrap());
        assert_eq!(pushback(&headers), Pushback::Wait(Duration::from_millis(150)));
        headers.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        assert_eq!(pushback(&headers), Pushback::Stop);
        headers.insert("grpc-retry-pushback-ms", "soon".parse().unwrap());
        assert_eq!(pushback(&headers), Pushback::Stop);
        assert!(policy(20).retries_code(Code::Unavailable) && !policy(20).retries_code(Code::Internal));
    }
}
