//! The rapid-reset guard (CVE-2023-44487). A client that opens HTTP/2
//! streams and resets them at once makes the gateway start, and cancel, an
//! upstream call for each; `max_concurrent_streams` does not bound that,
//! because every reset frees its slot, and the stream flood reaches the
//! backends, whose own guards may then close connections other clients'
//! calls share.
//!
//! The rule is Envoy's premature-reset rule: a client connection is closed
//! with GOAWAY(ENHANCE_YOUR_CALM) once more than half of its streams were
//! reset early, judged over at least `premature_reset_streams` streams (so a
//! connection is also closed at its first half of that many early resets,
//! however many streams it opened). A reset is early when the client sends
//! it while the answer is still going, within `premature_reset_min_lifetime`
//! of opening the stream. One difference: a reset at about the deadline the
//! client declared in `grpc-timeout` is its own deadline firing, not an
//! attack, and never counts, so a client with short deadlines in front of a
//! slow backend keeps its connection. An attacker who declares deadlines is
//! then held to the pace a well-behaved client with those deadlines has.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::sync::Notify;

/// One connection's early resets, noted by its stream tasks and judged by
/// its connection task.
pub(super) struct EarlyResets {
    count: AtomicU32,
    noted: Notify,
    min_lifetime: Duration,
}

impl EarlyResets {
    pub(super) fn new(min_lifetime: Duration) -> Self {
        Self {
            count: AtomicU32::new(0),
            noted: Notify::new(),
            min_lifetime,
        }
    }

    /// Notes that the client reset, before its answer ended, a stream it
    /// opened at `opened` with `declared_timeout` as its `grpc-timeout`.
    pub(super) fn client_reset(&self, opened: Instant, declared_timeout: Option<&HeaderValue>) {
        if is_early(opened.elapsed(), self.min_lifetime, declared_timeout) {
            self.count.fetch_add(1, Ordering::Relaxed);
            self.noted.notify_one();
        }
    }

    /// Waits for the next early reset, and returns how many there were.
    pub(super) async fn next(&self) -> u32 {
        self.noted.notified().await;
        self.count.load(Ordering::Relaxed)
    }
}

/// Whether `early` early resets among `streams` streams are too many, with
/// at least `judged_over` streams counted (zero: never too many).
pub(crate) fn too_many(early: u32, streams: u64, judged_over: u32) -> bool {
    judged_over != 0 && u64::from(early) * 2 > streams.max(u64::from(judged_over))
}

fn is_early(lifetime: Duration, min_lifetime: Duration, declared_timeout: Option<&HeaderValue>) -> bool {
    let declared = declared_timeout.and_then(|value| crate::grpc_timeout::parse(value.as_bytes()).ok());
    is_early_reset(lifetime, min_lifetime, declared)
}

/// Whether a client's reset of a stream that lived `lifetime` counts as
/// early, given the timeout the client declared for it.
pub(crate) fn is_early_reset(lifetime: Duration, min_lifetime: Duration, declared: Option<Duration>) -> bool {
    if lifetime >= min_lifetime {
        return false;
    }
    // The client starts its clock before sending and sends what is left, so
    // its deadline fires about `timeout` after the stream reached us; allow
    // a tenth for its own scheduling.
    match declared {
        Some(timeout) => lifetime < timeout - timeout / 10,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_reset_is_early_only_when_young_and_well_before_the_declared_deadline() {
        let ms = Duration::from_millis;
        let timeout = |text: &'static str| Some(HeaderValue::from_static(text));
        assert!(is_early(ms(1), SECOND, None));
        assert!(!is_early(SECOND, SECOND, None));
        assert!(!is_early(ms(1500), SECOND, None));
        // At (about) the client's own deadline: not early.
        assert!(!is_early(ms(100), SECOND, timeout("100m").as_ref()));
        assert!(!is_early(ms(95), SECOND, timeout("100m").as_ref()));
        // Long before it: early.
        assert!(is_early(ms(2), SECOND, timeout("100m").as_ref()));
        assert!(is_early(ms(2), SECOND, timeout("10S").as_ref()));
        // A deadline that cannot be read is no excuse.
        assert!(is_early(ms(2), SECOND, timeout("soon").as_ref()));
        assert!(is_early(ms(2), SECOND, timeout("").as_ref()));
    }

    #[test]
    fn more_than_half_of_at_least_the_judged_number_is_too_many() {
        // Before the judged number is reached, half of it is the bar.
        assert!(!too_many(250, 260, 500));
        assert!(too_many(251, 260, 500));
        // After it, half of all streams.
        assert!(!too_many(500, 1000, 500));
        assert!(too_many(501, 1000, 500));
        // Exactly half is not.
        assert!(!too_many(5000, 10_000, 500));
        // Off.
        assert!(!too_many(u32::MAX, 1, 0));
    }

    #[tokio::test]
    async fn stream_tasks_wake_the_judge_with_the_running_count() {
        let resets = EarlyResets::new(SECOND);
        let long_ago = Instant::now() - Duration::from_secs(5);
        resets.client_reset(long_ago, None);
        resets.client_reset(Instant::now(), None);
        resets.client_reset(Instant::now(), None);
        assert_eq!(resets.next().await, 2);
    }
}
