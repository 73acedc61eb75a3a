//! Telemetry that speaks gRPC: per-method call metrics with gRPC codes,
//! upstream, certificate and process metrics read at scrape time, one access
//! log line per call, and W3C trace-context propagation.
//!
//! - `access_log`: the access log line, written directly by the binary.
//! - `metrics`: the call metric families and per-method handles.
//! - `record`: one call's measurement, and the body observer feeding it.
//! - `collector`: metrics computed at scrape time (upstreams, process).
//! - `trace`: `traceparent` parsing and propagation.
//!
//! Nothing here is needed to serve a call; with access logs off, a call
//! costs a handful of atomic additions.

pub(crate) mod access_log;
pub(crate) mod collector;
pub(crate) mod metrics;
pub(crate) mod otlp;
pub(crate) mod record;
pub(crate) mod trace;

use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;

use crate::config::{AccessLog, Observability};
use crate::descriptors::Registry as MethodRegistry;

pub(crate) use metrics::Protocol;
pub(crate) use record::{CallRecord, CallStart, Observer, Served};

/// The gateway's telemetry state.
pub(crate) struct Telemetry {
    registry: Mutex<Registry>,
    /// Calls started and not yet finished, across every front end.
    pub(crate) in_flight: std::sync::atomic::AtomicUsize,
    pub(crate) calls: metrics::CallMetrics,
    /// Whether per-method call metrics are counted.
    pub(crate) metrics: bool,
    pub(crate) access_log: AccessLog,
    pub(crate) tracing: crate::config::Tracing,
    /// Span export, when a collector is configured.
    pub(crate) exporter: Option<otlp::Exporter>,
}

/// The exposition format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text format 0.0.4 (what Prometheus asks for by default).
    Text,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Telemetry {
    pub(crate) fn new(observability: &Observability, methods: &MethodRegistry) -> Arc<Self> {
        let mut registry = Registry::default();
        let calls = metrics::CallMetrics::new(&mut registry, methods);
        Arc::new(Self {
            registry: Mutex::new(registry),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            calls,
            metrics: observability.metrics,
            access_log: observability.access_log.clone(),
            tracing: observability.tracing.clone(),
            exporter: (!observability.tracing.otlp_endpoint.is_empty())
                .then(|| {
                    otlp::Exporter::start(
                        &observability.tracing.otlp_endpoint,
                        &observability.tracing.service_name,
                    )
                })
                .flatten(),
        })
    }

    /// Adds a collector read at every scrape.
    pub(crate) fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register_collector(collector);
        }
    }

    /// Renders every metric.
    pub(crate) fn render(&self, format: Format) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Ok(registry) = self.registry.lock()
            && let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry)
        {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        match format {
            Format::OpenMetrics => out,
            Format::Text => openmetrics_to_text(&out),
        }
    }
}

/// What a front end says about a call it is about to make.
pub(crate) struct CallInfo<'a> {
    pub(crate) protocol: Protocol,
    /// `/pkg.Service/Method`, for the metric labels.
    pub(crate) grpc_path: &'a str,
    /// What the client sent, for the access log.
    pub(crate) http_method: &'a http::Method,
    pub(crate) http_path: &'a str,
    pub(crate) streaming: bool,
    /// When the request arrived.
    pub(crate) received: std::time::Instant,
}

/// Starts measuring a routed call: continues its trace (rewriting
/// `traceparent` in the upstream metadata), counts it as started, and
/// watches the upstream request body.
pub(crate) fn begin(
    gateway: &crate::gateway::Gateway,
    info: CallInfo<'_>,
    upstream_headers: &mut http::HeaderMap,
    upstream_extensions: &mut http::Extensions,
    upstream_body: &mut crate::body::Body,
    conn: &crate::gateway::ConnInfo,
) -> CallRecord {
    let telemetry = gateway.telemetry();
    let start_new = (!telemetry.tracing.otlp_endpoint.is_empty()).then_some(telemetry.tracing.sample_ratio);
    let trace = trace::propagate(upstream_headers, start_new);
    if let (Some(context), Some(exporter)) = (trace, &telemetry.exporter)
        && context.sampled
    {
        upstream_extensions.insert(AttemptTracer {
            context,
            exporter: exporter.clone(),
        });
    }
    let peer = conn
        .client_identity
        .as_ref()
        .map(|p| p.common_name.clone().unwrap_or_else(|| p.subject.clone()));
    let record = CallRecord::start(
        telemetry,
        CallStart {
            protocol: info.protocol,
            grpc_path: info.grpc_path,
            http_method: info.http_method,
            http_path: info.http_path,
            client: conn.remote,
            peer: peer.as_deref(),
            trace,
            streaming: info.streaming,
            started: info.received,
        },
    );
    upstream_body.observe(Observer::new(record.clone(), true));
    record
}

/// Put in an upstream request's extensions when its trace is exported: the
/// upstream side makes a client span per attempt, child of the call's span.
#[derive(Clone)]
pub(crate) struct AttemptTracer {
    context: trace::TraceContext,
    exporter: otlp::Exporter,
}

/// One upstream attempt being traced.
pub(crate) struct AttemptSpan {
    tracer: AttemptTracer,
    span_id: [u8; 8],
    start: std::time::SystemTime,
}

impl AttemptTracer {
    /// Starts an attempt's span and points the upstream's `traceparent` at it.
    pub(crate) fn start(&self, headers: &mut http::HeaderMap) -> AttemptSpan {
        let span_id = trace::child_of(headers, &self.context);
        AttemptSpan {
            tracer: self.clone(),
            span_id,
            start: std::time::SystemTime::now(),
        }
    }
}

impl AttemptSpan {
    /// Ends the span with the attempt's result.
    pub(crate) fn end(self, endpoint: &str, status: Option<&crate::status::Status>) {
        let code = status.map_or(crate::status::Code::Ok, |s| s.code);
        self.tracer.exporter.export(otlp::Span {
            trace_id: self.tracer.context.trace_id,
            span_id: self.span_id,
            parent_id: Some(self.tracer.context.span_id),
            name: format!("upstream {endpoint}"),
            kind: otlp::SpanKind::Client,
            start: self.start,
            end: std::time::SystemTime::now(),
            attributes: vec![
                ("server.address", serde_json::Value::String(endpoint.to_string())),
                ("rpc.grpc.status_code", serde_json::Value::from(code.as_i32())),
            ],
            error: status
                .filter(|s| s.code != crate::status::Code::Ok)
                .map(ToString::to_string),
        });
    }
}

/// `begin` for a request forwarded as it came (native gRPC, gRPC-Web).
pub(crate) fn begin_forward(
    gateway: &crate::gateway::Gateway,
    protocol: Protocol,
    request: http::Request<crate::body::Body>,
    conn: &crate::gateway::ConnInfo,
    streaming: bool,
    received: std::time::Instant,
) -> (http::Request<crate::body::Body>, CallRecord) {
    let (mut parts, mut body) = request.into_parts();
    let info = CallInfo {
        protocol,
        grpc_path: parts.uri.path(),
        http_method: &parts.method,
        http_path: parts.uri.path(),
        streaming,
        received,
    };
    let record = begin(
        gateway,
        info,
        &mut parts.headers,
        &mut parts.extensions,
        &mut body,
        conn,
    );
    (http::Request::from_parts(parts, body), record)
}

/// Measures a call's response: its final status from trailers-only headers
/// now, or from the trailers as they pass.
pub(crate) fn watch_response(record: CallRecord, response: &mut http::Response<crate::body::Body>) {
    record.set_served(response.extensions().get::<Served>());
    if !record.finish_if_status_in(response.headers()) {
        response.body_mut().observe(Observer::new(record, false));
    }
}

/// What a refused call's record needs from its request.
#[derive(Clone, Copy)]
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a http::Method,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a http::HeaderMap,
}

impl<'a, B> From<&'a http::Request<B>> for RequestHead<'a> {
    fn from(request: &'a http::Request<B>) -> Self {
        Self {
            method: request.method(),
            path: request.uri().path(),
            headers: request.headers(),
        }
    }
}

impl<'a> From<&'a http::request::Parts> for RequestHead<'a> {
    fn from(parts: &'a http::request::Parts) -> Self {
        Self {
            method: &parts.method,
            path: parts.uri.path(),
            headers: &parts.headers,
        }
    }
}

/// Counts a call the gateway answered without routing it (no route, bad
/// input), under the client's trace if it sent one.
pub(crate) fn refused(
    gateway: &crate::gateway::Gateway,
    protocol: Protocol,
    request: RequestHead<'_>,
    conn: &crate::gateway::ConnInfo,
    status: &crate::status::Status,
    http_status: u16,
) {
    let RequestHead {
        method: http_method,
        path: http_path,
        headers,
    } = request;
    let record = CallRecord::start(
        gateway.telemetry(),
        CallStart {
            protocol,
            grpc_path: http_path,
            http_method,
            http_path,
            client: conn.remote,
            peer: None,
            // The client's trace, so its refused call can be found by trace id.
            trace: trace::continued(headers),
            streaming: false,
            started: crate::turn::now().into_std(),
        },
    );
    record.set_http_status(http_status);
    record.finish(status);
}

/// Turns OpenMetrics text into Prometheus text format 0.0.4: metadata names
/// counters by their `_total` samples and info metrics become gauges; `# UNIT`
/// and `# EOF` lines go.
pub(crate) fn openmetrics_to_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut kinds: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            kinds.insert(name, kind);
        }
    }
    let renamed = |name: &str| match kinds.get(name) {
        Some(&"counter") => format!("{name}_total"),
        Some(&"info") => format!("{name}_info"),
        _ => name.to_string(),
    };
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            let kind = if kind == "info" { "gauge" } else { kind };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(name)));
        } else if let Some(rest) = line.strip_prefix("# HELP ")
            && let Some((name, help)) = rest.split_once(' ')
        {
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let open = "# HELP calls Calls.\n# TYPE calls counter\ncalls_total{a=\"b\"} 1\n# HELP build Build.\n# TYPE build info\nbuild_info{version=\"1\"} 1\n# UNIT x seconds\n# EOF\n";
        assert_eq!(
            super::openmetrics_to_text(open),
            "# HELP calls_total Calls.\n# TYPE calls_total counter\ncalls_total{a=\"b\"} 1\n# HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{version=\"1\"} 1\n"
        );
    }
}
