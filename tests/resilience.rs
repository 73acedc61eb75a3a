//! Upstream resilience, as the acceptance tests: real tonic backends
//! on loopback whose faults each test switches while it runs (see
//! `support::faults`), the real gateway in front of them, real clients, and
//! what the gateway reports about it — `Gateway::upstream_snapshot()` and the
//! admin `GET /upstreams` — checked as it happens.
//!
//! Intervals are short (outlier `interval: 200ms`, ejections from 300 ms,
//! health checks every 100 ms) so the whole file runs in seconds; every loop
//! and every wait is bounded.
//!
//! - `outlier`: ejection by consecutive failures, by failure percentage, from
//!   trailers; growing ejections and the single probe; the ejection cap.
//! - `limits`: fail-fast overflow (unary, streams, pending, REST); 2,000
//!   streams beside unary load.
//! - `connections`: GOAWAY under load; a small MAX_CONCURRENT_STREAMS.
//! - `retries`: the retry budget, other endpoints, pushback.
//! - `deadlines`: client deadlines, long and idle streams.
//! - `health`: active health checks.
//! - `discovery`: DNS records appearing, disappearing, and the resolver failing.
//! - `balancing`: latency-aware balancing.
//! - `resets`: the rapid-reset guard, and the clients it leaves alone.
//! - `admin`: the text form of `/upstreams`, `/readyz`, `/config`.

mod support;

#[path = "resilience/admin.rs"]
mod admin;
#[path = "resilience/balancing.rs"]
mod balancing;
#[path = "resilience/connections.rs"]
mod connections;
#[path = "resilience/deadlines.rs"]
mod deadlines;
#[path = "resilience/discovery.rs"]
mod discovery;
#[path = "resilience/health.rs"]
mod health;
#[path = "resilience/limits.rs"]
mod limits;
#[path = "resilience/outlier.rs"]
mod outlier;
#[path = "resilience/resets.rs"]
mod resets;
#[path = "resilience/retries.rs"]
mod retries;

use std::time::Duration;

use support::faults::{Edge, FaultBackend};

/// Outlier detection fast enough for tests; `extra` lines are added to the
/// `outlier_detection` section (a key given twice is an error, so callers
/// pass only keys not set here).
fn fast_outlier(extra: &str) -> String {
    let mut section = String::from("outlier_detection:\n  interval: 200ms\n");
    if !extra.contains("base_ejection_time") {
        section.push_str("  base_ejection_time: 300ms\n");
    }
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        section.push_str("  ");
        section.push_str(line.trim());
        section.push('\n');
    }
    section
}

/// The gateway in front of `backends` (one upstream `echo`, every
/// `testing.v1.Echo` method routed to it).
async fn edge(backends: &[&FaultBackend], upstream: &str, route: &str) -> Edge {
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    Edge::start(&support::config_yaml(&addrs, upstream, route)).await
}

async fn three(names: [&str; 3]) -> [FaultBackend; 3] {
    [
        FaultBackend::start(names[0]).await,
        FaultBackend::start(names[1]).await,
        FaultBackend::start(names[2]).await,
    ]
}

/// Waits for `check`, or fails with what the gateway believes.
async fn wait_for(edge: &Edge, what: &str, limit: Duration, check: impl FnMut() -> bool) -> Duration {
    match support::faults::wait_until(limit, check).await {
        Some(took) => took,
        None => panic!(
            "timed out after {limit:?} waiting for {what}; /upstreams:\n{}",
            edge.upstreams_text().await
        ),
    }
}

/// A unary request the client tags, so backends' logs can be matched to it.
fn tagged(id: &str) -> tonic::Request<support::EchoRequest> {
    let mut request = tonic::Request::new(support::echo("tagged"));
    request.metadata_mut().insert("x-call-id", id.parse().unwrap());
    request
}
