//! Observability, as the acceptance tests: real tonic backends, the
//! real gateway (in-process, or the built binary), real clients of every
//! protocol, and what the gateway reports about them — `/metrics` parsed by
//! a strict exposition parser and checked series by series, and the access
//! log checked field by field, both as the binary writes it (JSON and text
//! on stderr) and as the `tracing` event a library host receives.
//!
//! - `exposition`: the Prometheus text 0.0.4 / OpenMetrics parser, and tests
//!   showing it refuses what it must.
//! - `calls`: the per-method call families (`grpc_server_*`), exactly, for
//!   REST, gRPC-Web (binary and text) and native gRPC; the upstream families
//!   (calls by code, failures, in flight, connections, ejections by reason,
//!   retries, overflows by limit); `observability.metrics: false`; the
//!   example alert rules and dashboard reading only exported families.
//! - `access_log`: the `grpc-edge` binary's access lines, JSON and text, and
//!   the switches that silence them (`enabled`, `sample_successes`, `RUST_LOG`).
//! - `events`: the `tracing` event of a gateway embedded as a library, its
//!   switches, and the TLS peer identity of a client certificate.
//!
//! Every wait is a bounded poll of a condition; every gateway is fresh, so
//! every count starts at zero.

mod support;

#[path = "observability/access_log.rs"]
mod access_log;
#[path = "observability/calls.rs"]
mod calls;
#[path = "observability/events.rs"]
mod events;
#[path = "observability/exposition.rs"]
mod exposition;

use std::time::Duration;

use exposition::{Exposition, Format, must_parse};
use support::faults::Edge;

/// The gRPC service every test routes.
const ECHO: &str = "testing.v1.Echo";

/// `GET /metrics` asking for `accept`: its text, once it answered 200 with
/// `content_type`.
async fn get_metrics(edge: &Edge, accept: &str, content_type: &str) -> String {
    let response = edge.admin_get("/metrics", accept).await;
    assert_eq!(
        response.status,
        200,
        "expected /metrics to answer 200: {}",
        response.text()
    );
    assert_eq!(
        response.header("content-type"),
        Some(content_type),
        "expected the content type for {accept}"
    );
    response.text()
}

/// `GET /metrics` in the Prometheus text format, parsed strictly.
async fn scrape(edge: &Edge) -> Exposition {
    let text = get_metrics(edge, "text/plain", "text/plain; version=0.0.4; charset=utf-8").await;
    must_parse(&text, Format::Text)
}

/// `GET /metrics` asking for OpenMetrics, parsed strictly.
async fn scrape_open_metrics(edge: &Edge) -> (Exposition, String) {
    let text = get_metrics(
        edge,
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
    .await;
    assert!(
        text.ends_with("# EOF\n"),
        "expected OpenMetrics to end with \"# EOF\": ...{:?}",
        &text[text.len().saturating_sub(80)..]
    );
    (must_parse(&text, Format::OpenMetrics), text)
}

/// Scrapes until `ready` holds for the scrape (or fails after `limit`, showing the last one).
async fn scrape_until(edge: &Edge, what: &str, limit: Duration, ready: impl Fn(&Exposition) -> bool) -> Exposition {
    let started = std::time::Instant::now();
    loop {
        let scraped = scrape(edge).await;
        if ready(&scraped) {
            return scraped;
        }
        if started.elapsed() > limit {
            let text = edge.admin_get("/metrics", "text/plain").await.text();
            panic!("expected {what} within {limit:?}; the last scrape:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
