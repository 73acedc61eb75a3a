//! Span export over OTLP/HTTP with JSON encoding (`POST {endpoint}/v1/traces`),
//! when `observability.tracing.otlp_endpoint` is set. Spans are queued
//! without blocking the call (a full queue drops and counts), and a
//! background task sends them in batches — at most 512 spans or once a
//! second — so exporting never sits on the call path. Written by hand
//! because the OpenTelemetry SDK and its exporters would double the build.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::trace::hex;

/// Spans waiting to be sent; beyond this they are dropped (and counted).
const QUEUE: usize = 8192;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The kind of a span, as OTLP numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpanKind {
    Server = 2,
    Client = 3,
}

/// One finished span.
#[derive(Clone, Debug)]
pub(crate) struct Span {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent_id: Option<[u8; 8]>,
    pub(crate) name: String,
    pub(crate) kind: SpanKind,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) attributes: Vec<(&'static str, Value)>,
    /// `Some(message)` for a failed call.
    pub(crate) error: Option<String>,
}

/// The exporter's handle; cheap to clone.
#[derive(Clone)]
pub(crate) struct Exporter {
    queue: mpsc::Sender<Span>,
    pub(crate) dropped: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts the sender task (needs a tokio runtime; `None` without one).
    pub(crate) fn start(endpoint: &str, service_name: &str) -> Option<Self> {
        tokio::runtime::Handle::try_current().ok()?;
        let (queue, spans) = mpsc::channel(QUEUE);
        let target = Target::parse(endpoint)?;
        tokio::spawn(send_batches(spans, target, service_name.to_string()));
        Some(Self {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues a span; never waits.
    pub(crate) fn export(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where the collector listens.
#[derive(Clone, Debug)]
struct Target {
    authority: String,
    path: String,
}

impl Target {
    fn parse(endpoint: &str) -> Option<Self> {
        let rest = endpoint.strip_prefix("http://")?;
        let (authority, base) = rest.split_once('/').unwrap_or((rest, ""));
        let base = base.trim_end_matches('/');
        let path = if base.is_empty() {
            "/v1/traces".to_string()
        } else {
            format!("/{base}/v1/traces")
        };
        Some(Self {
            authority: authority.to_string(),
            path,
        })
    }
}

async fn send_batches(mut spans: mpsc::Receiver<Span>, target: Target, service_name: String) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = match spans.recv().await {
            Some(span) => span,
            None => return,
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&batch, &service_name);
        batch.clear();
        if let Err(e) = post(&target, body).await {
            tracing::warn!(error = %e, collector = %target.authority, "span export failed");
        }
    }
}

async fn post(target: &Target, body: Vec<u8>) -> Result<(), String> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&target.authority),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::post(&target.path)
        .header(http::header::HOST, &target.authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {}", response.status()))
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_string()
}

/// The OTLP/JSON `ExportTraceServiceRequest` for a batch.
pub(crate) fn encode(spans: &[Span], service_name: &str) -> Vec<u8> {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let attributes: Vec<Value> = s.attributes.iter().map(|(k, v)| attribute(k, v)).collect();
            let mut span = json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": s.kind as u8,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attributes,
                "status": match &s.error {
                    None => json!({"code": 1}),
                    Some(message) => json!({"code": 2, "message": message}),
                },
            });
            if let Some(parent) = s.parent_id {
                span["parentSpanId"] = Value::String(hex(&parent));
            }
            span
        })
        .collect();
    let request = json!({
        "resourceSpans": [{
            "resource": {"attributes": [attribute("service.name", &Value::String(service_name.to_string()))]},
            "scopeSpans": [{"scope": {"name": "grpc-edge", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
        }],
    });
    serde_json::to_vec(&request).unwrap_or_default()
}

fn attribute(key: &str, value: &Value) -> Value {
    let value = match value {
        Value::String(s) => json!({"stringValue": s}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n}),
        Value::Bool(b) => json!({"boolValue": b}),
        other => json!({"stringValue": other.to_string()}),
    };
    json!({"key": key, "value": value})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_encode_as_otlp_json() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let span = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            name: "demo.v1.OrderService/GetOrder".into(),
            kind: SpanKind::Server,
            start: now,
            end: now + Duration::from_millis(5),
            attributes: vec![
                ("rpc.grpc.status_code", json!(5)),
                ("rpc.service", json!("demo.v1.OrderService")),
            ],
            error: Some("NOT_FOUND: no order".into()),
        };
        let encoded: Value = serde_json::from_slice(&encode(&[span], "edge")).unwrap();
        let span = &encoded["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "01010101010101010101010101010101");
        assert_eq!(span["parentSpanId"], "0303030303030303");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["endTimeUnixNano"], "1700000000005000000");
        assert_eq!(span["attributes"][0]["value"]["intValue"], "5");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(
            encoded["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "edge"
        );
    }

    #[test]
    fn collector_paths() {
        assert_eq!(Target::parse("http://c:4318").unwrap().path, "/v1/traces");
        assert_eq!(Target::parse("http://c:4318/otlp/").unwrap().path, "/otlp/v1/traces");
        assert!(Target::parse("https://c:4318").is_none());
    }
}
