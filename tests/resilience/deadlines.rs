//! Deadlines: a client's `grpc-timeout` ends a slow call on time, travels
//! upstream reduced, and is never held against the backend; streams run as
//! long as they keep moving, and a silent one ends at `stream_idle_timeout`.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;

use crate::support::faults::FaultBackend;
use crate::support::faults::raw_grpc;
use crate::support::{EchoRequest, echo, grpc_frame, grpc_timeout_of, server_stream_all};
use crate::{edge, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_deadline_ends_slow_calls_on_time_and_never_ejects() {
    let backend = FaultBackend::start("slow").await;
    backend.set_latency(Duration::from_secs(1));
    let edge = edge(&[&backend], "outlier_detection:\n  interval: 200ms", "").await;
    // A raw client, so that only the gateway enforces the deadline.
    let headers = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "100m"),
        ("x-call-id", "deadline"),
    ];
    let addr = edge.addr;
    for _wave in 0..3 {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..10 {
            calls.spawn(async move {
                let started = Instant::now();
                let response = raw_grpc(addr, "/testing.v1.Echo/Unary", &headers, grpc_frame(&echo("x"))).await;
                (response, started.elapsed())
            });
        }
        while let Some(done) = calls.join_next().await {
            let (response, took) = done.unwrap();
            assert_eq!(response.grpc_status().as_deref(), Some("4"), "{response:?}");
            assert!(
                response.grpc_message().contains("client's grpc-timeout"),
                "{}",
                response.grpc_message()
            );
            assert!(
                took >= Duration::from_millis(95) && took < Duration::from_millis(400),
                "took {took:?}"
            );
        }
    }
    let log = backend.log();
    assert_eq!(log.len(), 30);
    for record in &log {
        let seen = grpc_timeout_of(record.grpc_timeout.as_deref().unwrap());
        assert!(
            seen < Duration::from_millis(100) && seen > Duration::from_millis(50),
            "the backend was told {seen:?}"
        );
    }
    // The backend was cancelled, and is in good standing.
    wait_for(
        &edge,
        "cancelled calls to leave the backend",
        Duration::from_secs(2),
        || backend.in_flight() == 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(450)).await; // two evaluations
    let seen = edge.endpoint(&backend);
    assert_eq!(seen.state, "healthy", "{seen:#?}");
    assert_eq!((seen.failures, seen.total_ejections), (0, 0), "{seen:#?}");
    let json = edge.admin_endpoint(&backend).await;
    assert_eq!(json["total_ejections"], 0);
}

/// The issue asks for a 60 s server stream; this one runs 2 s, ten times
/// the route's 200 ms unary `timeout`, which is what the case is about: a
/// stream has no overall deadline, only an idle one (300 ms here, never
/// reached by messages 100 ms apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_completes_and_an_idle_one_ends_at_the_idle_timeout() {
    let backend = FaultBackend::start("a").await;
    let edge = edge(&[&backend], "", "timeout: 200ms\nstream_idle_timeout: 300ms").await;
    let mut client = edge.client().await;
    let started = Instant::now();
    let messages: Vec<_> = server_stream_all(
        &mut client,
        EchoRequest {
            repeat: 20,
            delay_ms: 100,
            ..echo("long")
        },
    )
    .await;
    let took = started.elapsed();
    assert_eq!(messages.len(), 20);
    assert!(took >= Duration::from_secs(2), "took {took:?}");
    // A unary call of the same length is cut by the route timeout.
    let status = client
        .unary(EchoRequest {
            delay_ms: 2000,
            ..echo("slow")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);

    // One message each way, then silence: the stream ends at the idle timeout.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(echo("only")).await.unwrap();
    let mut responses = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    responses.next().await.unwrap().unwrap();
    let quiet = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(3), responses.next())
        .await
        .expect("the idle stream was never ended");
    let idle = quiet.elapsed();
    let status = ended.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(status.message().contains("stream_idle_timeout"), "{}", status.message());
    assert!(
        idle >= Duration::from_millis(280) && idle < Duration::from_millis(800),
        "ended after {idle:?}"
    );
    drop(tx);
    wait_for(&edge, "the stream to leave the backend", Duration::from_secs(2), || {
        backend.in_flight() == 0 && edge.cluster("echo").streams_in_flight == 0
    })
    .await;
}

/// Streams that are quiet by nature (watches, subscriptions) end at the
/// route's `stream_idle_timeout`; that is the gateway's policy, not a fault
/// of the backend, and must not eject it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_timeouts_do_not_count_against_the_backend() {
    let backend = FaultBackend::start("a").await;
    let edge = edge(
        &[&backend],
        "outlier_detection:\n  interval: 200ms\n  base_ejection_time: 30s",
        "stream_idle_timeout: 200ms",
    )
    .await;
    let mut client = edge.client().await;
    for i in 0..6 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let ended = match client.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner().next().await.unwrap().unwrap_err(),
            Err(status) => panic!(
                "stream {i} was refused ({status:?}) after {i} idle timeouts:\n{}",
                edge.upstreams_text().await
            ),
        };
        assert!(ended.message().contains("stream_idle_timeout"), "{ended:?}");
        drop(tx);
    }
    let seen = edge.endpoint(&backend);
    assert_eq!(
        (seen.state, seen.failures, seen.total_ejections),
        ("healthy", 0, 0),
        "{seen:#?}"
    );
    client.unary(echo("still served")).await.unwrap();
}
