//! Limits fail fast: a call over `max_requests`, `max_streams` or
//! `max_pending` gets UNAVAILABLE at once with `grpc-edge-overloaded`
//! naming the limit (REST: 503 with `Retry-After`), never reaches a backend
//! and never counts against an endpoint. And streams, however many, do not
//! starve unary calls.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;

use crate::support::faults::raw_grpc;
use crate::support::faults::{FaultBackend, FaultOptions, Load, LoadOptions, percentile};
use crate::support::raw_backend::RawBackend;
use crate::support::rest_client;
use crate::support::{EchoRequest, client, echo, grpc_frame, root, server_stream_all};
use crate::{edge, wait_for};

const UNARY: &str = "/testing.v1.Echo/Unary";

async fn raw_unary(addr: std::net::SocketAddr) -> (crate::support::RawResponse, Duration) {
    let started = Instant::now();
    let response = raw_grpc(
        addr,
        UNARY,
        &[("content-type", "application/grpc"), ("te", "trailers")],
        grpc_frame(&echo("x")),
    )
    .await;
    (response, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_zero_refuses_every_unary_call_at_once() {
    let backend = FaultBackend::start("a").await;
    let edge = edge(&[&backend], "limits:\n  max_requests: 0", "").await;
    let (response, took) = raw_unary(edge.addr).await;
    assert_eq!(response.grpc_status().as_deref(), Some("14"), "{response:?}");
    assert!(response.trailers.is_none(), "trailers-only");
    assert_eq!(response.headers.get("grpc-edge-overloaded").unwrap(), "max_requests");
    assert!(
        response.grpc_message().contains("max_requests"),
        "{}",
        response.grpc_message()
    );
    assert!(took < Duration::from_millis(200), "took {took:?}");

    let mut client = edge.client().await;
    for _ in 0..50 {
        let status = client.unary(echo("x")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get("grpc-edge-overloaded").unwrap(), "max_requests");
    }
    // Streams are counted apart, so they still flow.
    let messages: Vec<_> = server_stream_all(&mut client, EchoRequest { repeat: 2, ..echo("s") }).await;
    assert_eq!(messages.len(), 2);

    assert_eq!(backend.calls(), 1, "only the stream reached the backend");
    let cluster = edge.cluster("echo");
    assert!(
        cluster.overflows.contains(&("max_requests".to_string(), 51)),
        "{:?}",
        cluster.overflows
    );
    let endpoint = &cluster.endpoints[0];
    assert_eq!((endpoint.failures, endpoint.total_ejections), (0, 0), "{endpoint:#?}");
    assert_eq!(endpoint.state, "healthy");
    let json = edge.upstreams_json().await;
    assert_eq!(
        json[0]["overflows"][0],
        serde_json::json!(["max_requests", 51]),
        "{json:#}"
    );
    assert_eq!(json[0]["endpoints"][0]["total_ejections"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_refuses_the_stream_over_the_limit_but_not_unary_calls() {
    let backend = FaultBackend::start("a").await;
    let edge = edge(&[&backend], "limits:\n  max_streams: 2", "").await;
    let mut client = edge.client().await;
    let long = || EchoRequest {
        repeat: 10,
        delay_ms: 100,
        ..echo("long")
    };
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(client.server_stream(long()).await.unwrap().into_inner());
    }
    assert_eq!(edge.cluster("echo").streams_in_flight, 2);
    let started = Instant::now();
    let status = client.server_stream(long()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.metadata().get("grpc-edge-overloaded").unwrap(), "max_streams");
    // Unary calls have their own limit.
    for _ in 0..20 {
        client.unary(echo("u")).await.unwrap();
    }
    for stream in open {
        let messages: Vec<_> = stream.collect::<Result<Vec<_>, _>>().await.unwrap();
        assert_eq!(messages.len(), 10);
    }
    // Room again once they ended.
    wait_for(&edge, "streams to end", Duration::from_secs(2), || {
        edge.cluster("echo").streams_in_flight == 0
    })
    .await;
    client
        .server_stream(EchoRequest { repeat: 1, ..echo("s") })
        .await
        .unwrap();
    assert_eq!(backend.calls(), 2 + 20 + 1);
    let endpoint = edge.endpoint(&backend);
    assert_eq!((endpoint.failures, endpoint.total_ejections), (0, 0));
    assert!(edge.cluster("echo").overflows.contains(&("max_streams".to_string(), 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_refuses_a_call_when_too_many_wait_for_a_slot() {
    let backend = FaultBackend::start("a").await;
    backend.set_latency(Duration::from_millis(500));
    // One connection with one stream: the second call waits, the third overflows.
    let edge = edge(
        &[&backend],
        "pool:\n  max_connections_per_endpoint: 1\n  max_streams_per_connection: 1\nlimits:\n  max_pending: 1",
        "",
    )
    .await;
    let c = client(edge.addr).await;
    let first = tokio::spawn({
        let mut c = c.clone();
        async move { c.unary(echo("first")).await }
    });
    wait_for(&edge, "the first call in flight", Duration::from_secs(2), || {
        backend.in_flight() == 1
    })
    .await;
    let second = tokio::spawn({
        let mut c = c.clone();
        async move { c.unary(echo("second")).await }
    });
    wait_for(&edge, "the second call pending", Duration::from_secs(2), || {
        edge.cluster("echo").pending == 1
    })
    .await;
    let json = edge.upstreams_json().await;
    assert_eq!(json[0]["pending"], 1, "{json:#}");
    let (response, took) = raw_unary(edge.addr).await;
    assert_eq!(response.grpc_status().as_deref(), Some("14"), "{response:?}");
    assert_eq!(response.headers.get("grpc-edge-overloaded").unwrap(), "max_pending");
    assert!(took < Duration::from_millis(200), "took {took:?}");
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(backend.calls(), 2);
    let endpoint = edge.endpoint(&backend);
    assert_eq!((endpoint.failures, endpoint.total_ejections), (0, 0), "{endpoint:#?}");
    assert!(edge.cluster("echo").overflows.contains(&("max_pending".to_string(), 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_answers_an_overflow_with_503_retry_after_and_the_limit() {
    let backend = RawBackend::start("raw").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\ndescriptors:\n  - {}\nupstreams:\n  rest:\n    endpoints: [\"{}\"]\n    limits:\n      max_requests: 0\nroutes:\n  - match: testing.rest.v1.Rest\n    upstream: rest\n",
        root().join("descriptors/testing.binpb").display(),
        backend.addr
    );
    let edge = crate::support::faults::Edge::start(&yaml).await;
    let response = rest_client::get(edge.addr, "/v1/things/42").await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(response.header("retry-after").is_some(), "{:?}", response.headers);
    assert_eq!(response.header("grpc-edge-overloaded"), Some("max_requests"));
    let body = response.json();
    assert_eq!(body["code"], 14, "{body}");
    assert!(body["message"].as_str().unwrap().contains("max_requests"), "{body}");
    assert_eq!(backend.count(), 0);
}

/// 2,000 long-lived streams held open beside unary load: the unary calls all
/// succeed, with a latency close to what they have without the streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_open_streams_leave_unary_calls_unaffected() {
    const STREAMS: usize = 2000;
    let backends = [
        FaultBackend::start_with("a", FaultOptions::default()).await,
        FaultBackend::start("b").await,
        FaultBackend::start("c").await,
    ];
    let [a, b, c] = &backends;
    // Slots: 3 endpoints × 8 connections × 200 streams (hyper's default
    // MAX_CONCURRENT_STREAMS), well above the 2,000 streams plus unary calls.
    let edge = edge(
        &[a, b, c],
        "pool:\n  max_connections_per_endpoint: 8\n  max_streams_per_connection: 200\nlimits:\n  max_streams: 2500\n  max_requests: 1000",
        "",
    )
    .await;
    let unary = edge.client().await;
    let baseline = unary_latencies(&unary, 1000).await;

    // The gateway allows 1,000 streams per client connection: use four.
    let mut stream_clients = Vec::new();
    for _ in 0..4 {
        stream_clients.push(edge.client().await);
    }
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..STREAMS {
        let mut client = stream_clients[i % 4].clone();
        opening.spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(2);
            tx.send(echo(&format!("hello {i}"))).await.unwrap();
            let mut responses = client
                .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let first = responses.next().await.unwrap().unwrap();
            assert_eq!(first.message, format!("hello {i}"));
            (i, tx, responses)
        });
    }
    let mut open = Vec::with_capacity(STREAMS);
    let opened = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(stream) = opening.join_next().await {
            open.push(stream.unwrap());
        }
    })
    .await;
    assert!(opened.is_ok(), "opened only {} streams in 60 s", open.len());
    assert_eq!(edge.cluster("echo").streams_in_flight, STREAMS as u32);

    let loaded = unary_latencies(&unary, 2000).await;
    let (p50, p99) = (percentile(&loaded, 50.0), percentile(&loaded, 99.0));
    let (b50, b99) = (percentile(&baseline, 50.0), percentile(&baseline, 99.0));
    println!("unary without streams p50 {b50:?} p99 {b99:?}; with {STREAMS} streams p50 {p50:?} p99 {p99:?}");
    assert!(
        p99 < Duration::from_millis(300).max(b99 * 10),
        "p99 {p99:?} (baseline {b99:?})"
    );
    let json = edge.upstreams_json().await;
    assert_eq!(json[0]["streams_in_flight"], STREAMS, "{json:#}");
    let connections: usize = json[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["connections"].as_array().unwrap().len())
        .sum();
    assert!(connections >= STREAMS.div_ceil(200), "{json:#}");

    // Every stream is still alive: one more message each way.
    for (i, tx, responses) in open.iter_mut() {
        tx.send(echo(&format!("again {i}"))).await.unwrap();
        let again = tokio::time::timeout(Duration::from_secs(10), responses.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(again.message, format!("again {i}"));
    }
    drop(open);
    wait_for(&edge, "the streams to close", Duration::from_secs(10), || {
        edge.cluster("echo").streams_in_flight == 0
    })
    .await;
    let total: u64 = backends.iter().map(|b| b.calls()).sum();
    assert_eq!(total, (STREAMS + 3000) as u64);
    assert!(backends.iter().all(|b| b.failed() == 0));
}

/// `calls` unary calls from 16 tasks; every one must succeed. Latencies in µs.
async fn unary_latencies(client: &crate::support::EchoClient<tonic::transport::Channel>, calls: u64) -> Vec<u64> {
    let load = Load::start(
        client,
        LoadOptions {
            tasks: 16,
            max_calls: calls,
            ..Default::default()
        },
    );
    let stats = load.finish(Duration::from_secs(60)).await;
    let detail = stats.detail();
    assert_eq!((stats.ok(), stats.failed()), (calls, 0), "{:?}", detail.sample_errors);
    detail.latencies_us
}
