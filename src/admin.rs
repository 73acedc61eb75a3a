//! The admin listener (`admin.listen`): what the gateway believes, for the
//! operator at 3am and for orchestrators.
//!
//! - `GET /healthz`: the process is up (always 200).
//! - `GET /readyz`: 200 once descriptors are loaded and the main listener is
//!   up; 503 before that and while shutting down.
//! - `GET /upstreams`: every upstream and endpoint — state (healthy, ejected
//!   for how long and why, probing, unhealthy, draining, backing off), calls in
//!   flight, latency estimate, connections and their streams, ejections, last
//!   error, limits and retries. Text for curl; JSON with `?format=json` or
//!   `Accept: application/json`.
//! - `GET /config`: the effective configuration as JSON (defaults filled in,
//!   paths resolved). It holds file paths but no secret material.
//! - `GET /certs`: every loaded certificate (role, file, subject, serial,
//!   not-after), the generation in use and reload successes and errors.
//! - `GET /routes`: the route table, as `grpc-edge routes` prints it.
//! - `GET /metrics`: Prometheus text format, or OpenMetrics when asked for
//!   with `Accept: application/openmetrics-text`.
//!
//! It serves HTTP/1.1 only and never touches the proxy's hot path.

use std::convert::Infallible;
use std::fmt::Write as _;

use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::Body;
use crate::gateway::Gateway;
use crate::upstream::ClusterSnapshot;

/// Serves the admin endpoints until `stopped` turns true.
pub(crate) async fn serve(gateway: Gateway, listener: TcpListener, mut stopped: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(answer(&gateway, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

pub(crate) fn answer<B>(gateway: &Gateway, request: &Request<B>) -> Response<Body> {
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the admin endpoints answer GET only\n".into(),
        );
    }
    let wants_json = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "format=json"))
        || request
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if gateway.is_ready() => text(StatusCode::OK, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/config" => json(&gateway.config()),
        "/certs" => json(&gateway.certs()),
        "/metrics" => metrics(gateway, request),
        "/routes" => text(StatusCode::OK, crate::report::route_lines(gateway).join("\n") + "\n"),
        "/upstreams" if wants_json => json(&gateway.upstream_snapshot()),
        "/upstreams" => text(StatusCode::OK, upstreams_text(&gateway.upstream_snapshot())),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz, /upstreams, /certs, /config, /routes\n".into(),
        ),
    }
}

/// Prometheus text format by default; OpenMetrics when the scraper asks for it.
fn metrics<B>(gateway: &Gateway, request: &Request<B>) -> Response<Body> {
    let openmetrics = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let mut response = Response::new(Body::full(gateway.render_metrics(openmetrics)));
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn json<T: serde::Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut response = Response::new(Body::full(body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render: {e}\n")),
    }
}

/// The readable form of `/upstreams`.
pub(crate) fn upstreams_text(clusters: &[ClusterSnapshot]) -> String {
    let mut out = String::new();
    for cluster in clusters {
        let overflows: Vec<String> = cluster
            .overflows
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(limit, n)| format!("{limit} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "upstream {}: {} unary + {} streaming in flight, {} pending; overflows: {}; retries {} (refused by budget {})",
            cluster.name,
            cluster.unary_in_flight,
            cluster.streams_in_flight,
            cluster.pending,
            if overflows.is_empty() {
                "none".to_string()
            } else {
                overflows.join(", ")
            },
            cluster.retries,
            cluster.retries_refused_by_budget,
        );
        if let Some(discovery) = &cluster.discovery {
            let _ = writeln!(
                out,
                "  dns {} every {}{}",
                discovery.name,
                discovery.refresh,
                discovery
                    .last_error
                    .as_deref()
                    .map(|e| format!(" — last error: {e}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "  {:<24} {:<12} {:<9} {:>8} {:>9} {:>10} {:>10}  CONNECTIONS (streams) / EJECTIONS / LAST ERROR",
            "ENDPOINT", "STATE", "HEALTH", "IN-FLIGHT", "RTT ms", "CALLS", "FAILURES"
        );
        for e in &cluster.endpoints {
            let mut state = e.state.to_string();
            if let Some(secs) = e.ejected_for_seconds {
                state = format!("ejected {secs:.0}s");
            }
            let mut notes = format!(
                "{} ({}) / {} now, {} total",
                e.connections.len(),
                e.connections
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                e.times_ejected,
                e.total_ejections
            );
            if let Some(reason) = &e.ejection_reason {
                let _ = write!(notes, " — {reason}");
            }
            if let Some(error) = &e.last_error {
                let _ = write!(notes, " — {error}");
            }
            let _ = writeln!(
                out,
                "  {:<24} {:<12} {:<9} {:>8} {:>9.2} {:>10} {:>10}  {}",
                e.target, state, e.health, e.in_flight, e.rtt_ms, e.calls, e.failures, notes
            );
        }
    }
    out
}
