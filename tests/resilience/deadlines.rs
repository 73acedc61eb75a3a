//! Deadlines: a client's `grpc-timeout` ends a slow call on time, travels
//! upstream reduced, and is never held against the backend; streams run as
//! long as they keep moving, and a silent one ends at `stream_idle_timeout`.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;

use crate::support::faults::raw_grpc;
use crate::support::faults::{Edge, FaultBackend};
use crate::support::{EchoRequest, echo, grpc_frame, grpc_timeout_of, server_stream_all};
use crate::{edge, support, wait_for};

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

/// A client that stops reading a server stream stalls it: its window fills,
/// then the gateway's buffer, then the backend's sends wait. Nothing moves,
/// so the stream is idle and must end at `stream_idle_timeout`, upstream
/// too, rather than hold the backend's stream for as long as the client's
/// connection lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stopped_reading_ends_at_the_idle_timeout() {
    let backend = FaultBackend::start("a").await;
    let edge = edge(&[&backend], "", "stream_idle_timeout: 300ms").await;
    let message = EchoRequest {
        repeat: 10_000,
        response_size: 4096,
        ..echo("flood")
    };
    let mut recv = support::call_without_reading(edge.addr, "ServerStream", &message).await;
    let ended_after = until_the_stalled_stream_ends(&edge, &backend, Duration::from_secs(3)).await;
    assert!(ended_after < Duration::from_millis(1500), "ended after {ended_after:?}");
    // The client, reading at last, gets what fit in its window and then the end.
    let mut received = 0;
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(chunk) = recv.data().await {
            match chunk {
                Ok(chunk) => {
                    received += chunk.len();
                    let _ = recv.flow_control().release_capacity(chunk.len());
                }
                Err(e) => return Err(e),
            }
        }
        recv.trailers().await
    })
    .await
    .expect("the client's stream was never ended");
    // Its response cannot end with trailers: they would follow the data that
    // is waiting for its window. The stream is reset.
    let error = ended.expect_err("the stalled stream ended normally");
    assert_eq!(error.reason(), Some(h2::Reason::CANCEL), "{error:?}");
    assert!(received < 10_000 * 4096, "received {received} bytes");
    println!("stalled stream ended {ended_after:?} after the backend had it; the client read {received} bytes first");
}

/// A unary answer larger than the client's window, which the client never
/// reads: it is given up at the call's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_answer_the_client_does_not_read_is_given_up_at_the_deadline() {
    let backend = FaultBackend::start("a").await;
    let edge = edge(&[&backend], "", "timeout: 300ms").await;
    let message = EchoRequest {
        response_size: 64 << 10,
        ..echo("large")
    };
    let started = Instant::now();
    let mut recv = support::call_without_reading(edge.addr, "Unary", &message).await;
    wait_for(&edge, "the call to end at the gateway", Duration::from_secs(3), || {
        edge.cluster("echo").unary_in_flight == 0
    })
    .await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "ended after {took:?}");
    let error = loop {
        match recv.data().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("the answer arrived whole through a shut window"),
        }
    };
    assert_eq!(error.reason(), Some(h2::Reason::CANCEL), "{error:?}");
}

/// The same over HTTP/1.1, for REST (NDJSON) and gRPC-Web: the client's TCP
/// buffer fills and the gateway's writes wait. HTTP/1.1 has no way to end
/// one response early but to close the connection, which the gateway does
/// at the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_stream_whose_client_stopped_reading_ends_at_the_idle_timeout() {
    let json = r#"{"message":"flood","repeat":10000,"responseSize":4096}"#;
    let rest_lines = http1_stream_without_reading("application/json", json.as_bytes()).await;
    let rest_messages = rest_lines
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"{\"result\""))
        .count();
    assert!(rest_messages < 10_000, "all {rest_messages} messages arrived");
    let message = EchoRequest {
        repeat: 10_000,
        response_size: 4096,
        ..echo("flood")
    };
    let web = http1_stream_without_reading("application/grpc-web+proto", &grpc_frame(&message)).await;
    // Each message is a 5-byte frame header and a bit more than its payload.
    assert!(web.len() < 10_000 * 4096, "all {} bytes arrived", web.len());
}

/// Sends a `testing.v1.Echo/ServerStream` request (`body`, as
/// `content_type`) over HTTP/1.1 from a client with a small receive buffer,
/// reads nothing until the gateway has ended the call, then reads what was
/// sent (until the connection closes) and returns it.
async fn http1_stream_without_reading(content_type: &str, body: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backend = FaultBackend::start("a").await;
    let edge = edge(&[&backend], "", "stream_idle_timeout: 300ms").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive buffer, so the stall comes soon.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(edge.addr).await.unwrap();
    let head = format!(
        "POST /testing.v1.Echo/ServerStream HTTP/1.1\r\nhost: edge\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    let ended_after = until_the_stalled_stream_ends(&edge, &backend, Duration::from_secs(5)).await;
    // Reading at last: what was buffered, then the end of the connection.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
        .await
        .expect("the connection was never closed")
        .unwrap();
    println!(
        "stalled HTTP/1.1 {content_type} stream ended {ended_after:?} after the backend had it; {} bytes had arrived",
        rest.len()
    );
    rest
}

/// Waits for the stream to reach the backend, then (at most `limit`) for
/// the gateway to end it; returns how long the second wait took.
async fn until_the_stalled_stream_ends(edge: &Edge, backend: &FaultBackend, limit: Duration) -> Duration {
    wait_for(edge, "the stream to reach the backend", Duration::from_secs(2), || {
        backend.in_flight() == 1
    })
    .await;
    let stalled = Instant::now();
    wait_for(edge, "the stalled stream to leave the backend", limit, || {
        backend.in_flight() == 0 && edge.cluster("echo").streams_in_flight == 0
    })
    .await;
    stalled.elapsed()
}
