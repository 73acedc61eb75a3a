//! W3C trace context through the gateway, and span export over OTLP/HTTP.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::*;

const CLIENT_PARENT: &str = "00f067aa0ba902b7";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CLIENT_PARENT}-01")
}

#[tokio::test]
async fn the_backend_sees_a_child_of_the_clients_span() {
    let backend = Backend::start("b1").await;
    let gateway = start_gateway(&config_yaml(&[backend.addr], "", "")).await;
    let mut client = client(gateway.addr).await;
    let mut request = tonic::Request::new(echo("traced"));
    request
        .metadata_mut()
        .insert("traceparent", traceparent().parse().unwrap());
    request.metadata_mut().insert("tracestate", "vendor=x".parse().unwrap());
    let seen = client.unary(request).await.unwrap().into_inner().metadata;
    let upstream = &seen["traceparent"];
    assert!(upstream.starts_with(&format!("00-{TRACE_ID}-")), "{upstream}");
    assert_ne!(
        &upstream[36..52],
        CLIENT_PARENT,
        "the gateway's span is the backend's parent"
    );
    assert!(upstream.ends_with("-01"));
    assert_eq!(seen["tracestate"], "vendor=x");
    // Without a traceparent and without a collector, no trace is started.
    let seen = client.unary(echo("untraced")).await.unwrap().into_inner().metadata;
    assert!(!seen.contains_key("traceparent"));
    // An invalid one (an all-zero parent) is not passed on; the call is served.
    let mut request = tonic::Request::new(echo("bad trace"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-0000000000000000-01").parse().unwrap(),
    );
    let seen = client.unary(request).await.unwrap().into_inner().metadata;
    assert!(!seen.contains_key("traceparent"), "{seen:?}");
}

/// A fake OTLP/HTTP collector that keeps every request body.
async fn collector() -> (std::net::SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    async move {
                        assert_eq!(request.uri().path(), "/v1/traces");
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        sink.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, received)
}

fn spans(batches: &[serde_json::Value]) -> Vec<serde_json::Value> {
    batches
        .iter()
        .flat_map(|b| {
            b["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn spans_for_the_call_and_each_attempt_are_exported() {
    let (collector, received) = collector().await;
    let backend = Backend::start("b1").await;
    let yaml = config_yaml(&[backend.addr], "", "").replace(
        "routes:",
        &format!(
            "observability:\n  tracing:\n    otlp_endpoint: http://{collector}\n    service_name: edge-test\nroutes:"
        ),
    );
    let gateway = start_gateway(&yaml).await;
    let mut client = client(gateway.addr).await;
    let mut request = tonic::Request::new(echo("traced"));
    request
        .metadata_mut()
        .insert("traceparent", traceparent().parse().unwrap());
    let seen = client.unary(request).await.unwrap().into_inner().metadata;
    let backend_parent = seen["traceparent"][36..52].to_string();
    // A call without a traceparent starts a trace, since spans are exported.
    let seen = client.unary(echo("new trace")).await.unwrap().into_inner().metadata;
    assert!(seen.contains_key("traceparent"));

    let mut all = Vec::new();
    for _ in 0..50 {
        all = spans(&received.lock().unwrap());
        if all.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ours: Vec<_> = all.iter().filter(|s| s["traceId"] == TRACE_ID).collect();
    assert_eq!(ours.len(), 2, "one server span and one attempt span: {all:#?}");
    let server = ours.iter().find(|s| s["kind"] == 2).unwrap();
    let attempt = ours.iter().find(|s| s["kind"] == 3).unwrap();
    assert_eq!(server["parentSpanId"], CLIENT_PARENT);
    assert_eq!(server["name"], "testing.v1.Echo/Unary");
    assert_eq!(attempt["parentSpanId"], server["spanId"]);
    assert_eq!(
        attempt["spanId"],
        backend_parent.as_str(),
        "the backend's parent is the attempt span"
    );
    assert_eq!(
        received.lock().unwrap()[0]["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
        "edge-test"
    );
}
