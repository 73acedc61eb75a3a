//! Per-request endpoint selection. Reads only atomics on the endpoints, so it
//! takes no lock and all worker threads share one view of the load.
//!
//! - `peak_ewma`: power of two choices (P2C) on latency estimate × (in flight + 1);
//! - `least_request`: P2C on calls in flight;
//! - `round_robin` and `random`.
//!
//! Endpoints already tried by this call, and endpoints backing off after
//! connect failures, are skipped while any other remains.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::endpoint::Endpoint;
use crate::config::BalancerKind;

/// Picks endpoints for calls.
pub(crate) struct Balancer {
    kind: BalancerKind,
    next: AtomicUsize,
}

impl Balancer {
    pub(crate) fn new(kind: BalancerKind) -> Self {
        Self {
            kind,
            // Start replicas of the gateway at different offsets.
            next: AtomicUsize::new(fastrand::usize(..1024)),
        }
    }

    /// Takes back the last pick, whose call went elsewhere: round robin
    /// gives its turn again, so turns stay exact.
    pub(crate) fn unpick(&self) {
        if self.kind == BalancerKind::RoundRobin {
            self.next.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Chooses an endpoint that `usable` accepts; `None` if there is none.
    pub(crate) fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        now_nanos: u64,
        usable: impl Fn(&Endpoint) -> bool,
    ) -> Option<&'a Arc<Endpoint>> {
        let n = endpoints.len();
        match n {
            0 => return None,
            1 => return endpoints.first().filter(|e| usable(e)),
            _ => {}
        }
        match self.kind {
            BalancerKind::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| &endpoints[(start + k) % n]).find(|e| usable(e))
            }
            BalancerKind::Random => {
                let start = fastrand::usize(..n);
                (0..n).map(|k| &endpoints[(start + k) % n]).find(|e| usable(e))
            }
            BalancerKind::PeakEwma | BalancerKind::LeastRequest => {
                let cost = |e: &Endpoint| match self.kind {
                    BalancerKind::PeakEwma => e.ewma_cost(now_nanos),
                    _ => e.load_cost(now_nanos),
                };
                let i = fastrand::usize(..n);
                let mut j = fastrand::usize(..n - 1);
                if j >= i {
                    j += 1;
                }
                let (a, b) = (&endpoints[i], &endpoints[j]);
                match (usable(a), usable(b)) {
                    (true, true) => Some(if cost(b) < cost(a) { b } else { a }),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    // Both unusable: the cheapest usable endpoint of all, if any.
                    (false, false) => endpoints
                        .iter()
                        .filter(|e| usable(e))
                        .min_by(|x, y| cost(x).total_cmp(&cost(y))),
                }
            }
        }
    }
}
