//! Native gRPC through the gateway: every call kind, metadata and trailers,
//! unknown methods, malformed requests, deadlines.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;
use tokio_stream::StreamExt;

async fn one_backend() -> (Backend, GatewayHandle) {
    let backend = Backend::start("b1").await;
    let gateway = start_gateway(&config_yaml(&[backend.addr], "", "")).await;
    (backend, gateway)
}

#[tokio::test]
async fn unary_carries_metadata_both_ways() {
    let (_backend, gateway) = one_backend().await;
    let mut client = client(gateway.addr).await;
    let mut request = tonic::Request::new(echo("hello"));
    request
        .metadata_mut()
        .insert("x-request-id", "abc-123".parse().unwrap());
    request.metadata_mut().insert_bin(
        "x-trace-bin",
        tonic::metadata::MetadataValue::from_bytes(b"\x00\x01\xff"),
    );
    let response = client.unary(request).await.unwrap();
    assert_eq!(response.metadata().get("x-served-by").unwrap(), "b1");
    let body = response.into_inner();
    assert_eq!(body.message, "hello");
    assert_eq!(body.metadata["x-request-id"], "abc-123");
    assert_eq!(body.metadata["x-forwarded-proto"], "http");
    assert_eq!(body.metadata["x-forwarded-for"], "127.0.0.1");
    assert_eq!(body.metadata["x-trace-bin"], "AAH/", "binary metadata passes unchanged");
}

#[tokio::test]
async fn error_status_and_its_trailer_metadata_pass_through() {
    let (_backend, gateway) = one_backend().await;
    let mut client = client(gateway.addr).await;
    let status = client
        .unary(EchoRequest {
            fail_code: 5,
            ..echo("x")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "failure requested from b1");
    assert_eq!(status.metadata().get("x-failed-by").unwrap(), "b1");
}

#[tokio::test]
async fn server_streaming_delivers_every_message_then_the_trailers() {
    let (_backend, gateway) = one_backend().await;
    let mut client = client(gateway.addr).await;
    let response = client
        .server_stream(EchoRequest {
            repeat: 50,
            ..echo("s")
        })
        .await
        .unwrap();
    assert_eq!(response.metadata().get("x-served-by").unwrap(), "b1");
    let messages: Vec<_> = response.into_inner().collect::<Result<Vec<_>, _>>().await.unwrap();
    assert_eq!(messages.len(), 50);
    assert!(messages.iter().enumerate().all(|(i, m)| m.sequence == i as u32));
}

#[tokio::test]
async fn an_error_after_the_first_stream_message_arrives_in_trailers() {
    let (_backend, gateway) = one_backend().await;
    let mut client = client(gateway.addr).await;
    let mut stream = client
        .server_stream(EchoRequest {
            repeat: 5,
            fail_code: 14,
            fail_after_first: true,
            ..echo("s")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().sequence, 0);
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.metadata().get("x-failed-by").unwrap(), "b1");
}

#[tokio::test]
async fn client_streaming_counts_every_message() {
    let (_backend, gateway) = one_backend().await;
    let mut client = client(gateway.addr).await;
    let requests = tokio_stream::iter((0..200).map(|i| echo(&format!("m{i}"))));
    let response = client.client_stream(requests).await.unwrap().into_inner();
    assert_eq!(response.received, 200);
    assert_eq!(response.message, "m199");
}

#[tokio::test]
async fn bidi_streaming_interleaves_requests_and_responses() {
    let (_backend, gateway) = one_backend().await;
    let mut client = client(gateway.addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut responses = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Each answer must arrive before the next request is sent: nothing is buffered whole.
    for i in 0..20 {
        tx.send(echo(&format!("ping {i}"))).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), responses.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(answer.message, format!("ping {i}"));
        assert_eq!(answer.sequence, i);
    }
    drop(tx);
    assert!(responses.next().await.is_none());
}

#[tokio::test]
async fn unknown_service_and_method_get_unimplemented_trailers_only() {
    let (backend, gateway) = one_backend().await;
    let frame = grpc_frame(&echo("x"));
    let headers = [("content-type", "application/grpc"), ("te", "trailers")];
    let response = raw_h2_call(gateway.addr, "/nope.v1.Missing/Call", &headers, frame.clone()).await;
    assert_eq!(response.status, 200);
    assert!(
        response.trailers.is_none(),
        "trailers-only: the status is in the headers"
    );
    assert_eq!(response.grpc_status().as_deref(), Some("12"));
    assert!(
        response.grpc_message().contains("unknown service nope.v1.Missing"),
        "{}",
        response.grpc_message()
    );
    // A method the descriptors do not know, on a routed service, still reaches the
    // backend (passthrough needs no descriptors), which answers UNIMPLEMENTED.
    let response = raw_h2_call(gateway.addr, "/testing.v1.Echo/Nope", &headers, frame).await;
    assert_eq!(response.grpc_status().as_deref(), Some("12"));
    assert_eq!(backend.calls(), 0);
}

#[tokio::test]
async fn malformed_paths_and_timeouts_are_clear_errors() {
    let (backend, gateway) = one_backend().await;
    let frame = grpc_frame(&echo("x"));
    let grpc = [("content-type", "application/grpc")];
    for path in ["/", "/testing.v1.Echo", "/testing.v1.Echo/", "/a/b/c", "/%00/x"] {
        let response = raw_h2_call(gateway.addr, path, &grpc, frame.clone()).await;
        assert_eq!(response.grpc_status().as_deref(), Some("12"), "{path}");
    }
    for bad in ["abc", "100", "123456789m", "1x", "-5m"] {
        let headers = [("content-type", "application/grpc"), ("grpc-timeout", bad)];
        let response = raw_h2_call(gateway.addr, "/testing.v1.Echo/Unary", &headers, frame.clone()).await;
        assert_eq!(response.grpc_status().as_deref(), Some("3"), "{bad}");
        assert!(
            response.grpc_message().contains("malformed grpc-timeout"),
            "{}",
            response.grpc_message()
        );
    }
    assert_eq!(backend.calls(), 0, "bad requests never reach the backend");
    // And the gateway still serves good ones.
    let mut client = client(gateway.addr).await;
    client.unary(echo("still fine")).await.unwrap();
}

#[tokio::test]
async fn client_deadline_ends_a_slow_call_and_travels_upstream_reduced() {
    let (backend, gateway) = one_backend().await;
    // A raw client, so that only the gateway enforces the deadline (tonic's
    // client would also cancel on its own at the same moment).
    let headers = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "100m"),
    ];
    let body = grpc_frame(&EchoRequest {
        delay_ms: 1000,
        ..echo("slow")
    });
    let started = Instant::now();
    let response = raw_h2_call(gateway.addr, "/testing.v1.Echo/Unary", &headers, body).await;
    let took = started.elapsed();
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
    let seen = backend.seen.last_grpc_timeout.lock().unwrap().clone().unwrap();
    let upstream = grpc_timeout_of(&seen);
    assert!(
        upstream <= Duration::from_millis(100) && upstream > Duration::from_millis(50),
        "upstream saw {seen}"
    );
}

#[tokio::test]
async fn route_timeout_applies_to_unary_calls_without_a_client_deadline() {
    let backend = Backend::start("b1").await;
    let gateway = start_gateway(&config_yaml(&[backend.addr], "", "timeout: 200ms")).await;
    let mut client = client(gateway.addr).await;
    let started = Instant::now();
    let status = client
        .unary(EchoRequest {
            delay_ms: 2000,
            ..echo("slow")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(status.message().contains("route's timeout"), "{}", status.message());
    assert!(started.elapsed() < Duration::from_millis(800));
    // The route timeout is also what the backend is told.
    let seen = backend.seen.last_grpc_timeout.lock().unwrap().clone().unwrap();
    assert!(grpc_timeout_of(&seen) <= Duration::from_millis(200), "{seen}");
}

#[tokio::test]
async fn streams_have_no_overall_timeout_only_an_idle_one() {
    let backend = Backend::start("b1").await;
    let gateway = start_gateway(&config_yaml(
        &[backend.addr],
        "",
        "timeout: 100ms\nstream_idle_timeout: 300ms",
    ))
    .await;
    let mut client = client(gateway.addr).await;
    // 10 messages 80 ms apart: 800 ms in all, longer than the unary timeout, never idle.
    let messages: Vec<_> = server_stream_all(
        &mut client,
        EchoRequest {
            repeat: 10,
            delay_ms: 80,
            ..echo("s")
        },
    )
    .await;
    assert_eq!(messages.len(), 10);
    // One message, then silence: the idle timeout ends it with a clear status.
    let mut stream = client
        .server_stream(EchoRequest {
            repeat: 2,
            delay_ms: 1000,
            ..echo("s")
        })
        .await
        .unwrap()
        .into_inner();
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(status.message().contains("stream_idle_timeout"), "{}", status.message());
}

#[tokio::test]
async fn a_large_unary_message_passes_intact() {
    let (_backend, gateway) = one_backend().await;
    let mut client = client(gateway.addr).await;
    let payload = Bytes::from(vec![7u8; 3 << 20]);
    let response = client
        .unary(EchoRequest {
            payload: payload.to_vec(),
            response_size: 3 << 20,
            ..echo("big")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.payload.len(), 3 << 20);
}

/// A client connection with no call for `idle_timeout` is closed with a
/// GOAWAY (gRPC clients reconnect for their next call); one with a stream in
/// flight stays open, however long the stream lasts.
#[tokio::test]
async fn idle_client_connections_are_closed_busy_ones_are_not() {
    let backend = Backend::start("b1").await;
    let mut options = grpc_edge::ServeOptions::default();
    options.limits.idle_timeout = Duration::from_millis(200);
    let gateway = start_gateway_with(&config_yaml(&[backend.addr], "", ""), options).await;
    let (mut send, mut closed) = h2_connection(gateway.addr).await;
    // Five messages 150 ms apart: the stream lasts several idle periods.
    slow_server_stream(&mut send, gateway.addr).await;
    assert!(
        tokio::time::timeout(Duration::ZERO, &mut closed).await.is_err(),
        "closed while a stream was in flight"
    );
    // Now idle: closed within two idle periods (and some slack).
    let idle = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), &mut closed)
        .await
        .expect("the idle connection was never closed")
        .unwrap()
        .unwrap();
    let after = idle.elapsed();
    assert!(after >= Duration::from_millis(150), "closed after {after:?}");
    println!("idle connection closed {after:?} after its last call");
}

/// An HTTP/1.1 connection kept alive after its request is closed when no
/// next request starts within `handshake_timeout`.
#[tokio::test]
async fn idle_http1_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backend = Backend::start("b1").await;
    let mut options = grpc_edge::ServeOptions::default();
    options.limits.handshake_timeout = Duration::from_millis(300);
    let gateway = start_gateway_with(&config_yaml(&[backend.addr], "", ""), options).await;
    let mut tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let body = r#"{"message":"hi"}"#;
    let request = format!(
        "POST /testing.v1.Echo/Unary HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let answered = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle keep-alive connection was never closed");
    let after = answered.elapsed();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"message\":\"hi\""), "{text}");
    assert!(after >= Duration::from_millis(250), "closed after {after:?}");
}

/// At `max_connections` a new connection is closed as soon as it is
/// accepted; the connections already open are served as before, and once
/// one closes a new one is served again.
#[tokio::test]
async fn connections_over_the_limit_are_closed_and_the_others_carry_on() {
    let backend = Backend::start("b1").await;
    let mut options = grpc_edge::ServeOptions::default();
    options.limits.max_connections = 2;
    let gateway = start_gateway_with(&config_yaml(&[backend.addr], "", ""), options).await;
    let mut first = client(gateway.addr).await;
    let mut second = client(gateway.addr).await;
    first.unary(echo("one")).await.unwrap();
    second.unary(echo("two")).await.unwrap();

    // The third is closed before it is read: no SETTINGS come back.
    let mut tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await;
    let mut answer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .expect("the connection over the limit was left open");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a third connection was served: {read:?}"
    );
    let metrics = gateway.gateway.render_metrics(false);
    assert!(
        metrics.contains("grpc_edge_connections_over_limit_total 1\n"),
        "{metrics}"
    );

    first.unary(echo("still one")).await.unwrap();
    second.unary(echo("still two")).await.unwrap();
    drop(first);
    let mut third = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if gateway
            .gateway
            .render_metrics(false)
            .contains("grpc_edge_open_connections 1\n")
        {
            third = Some(client(gateway.addr).await);
            break;
        }
    }
    let mut third = third.expect("the first connection never closed");
    third.unary(echo("three")).await.unwrap();
    gateway.stop().await;
}

#[test]
fn the_default_connection_limit_follows_the_open_file_limit() {
    let before = grpc_edge::ServeOptions::default().limits.max_connections;
    assert!(before >= 100, "{before}");
    if let Some((from, to)) = grpc_edge::raise_open_file_limit() {
        assert!(to > from);
        let after = grpc_edge::ServeOptions::default().limits.max_connections;
        assert!(after > before, "{before} → {after}");
    }
}

/// At `max_connection_age` an HTTP/2 connection gets a GOAWAY: the stream in
/// flight finishes (it is not cut), no new stream is taken on it, and it
/// closes; a client that reconnects goes on calling.
#[tokio::test]
async fn old_http2_connections_are_retired_without_cutting_their_streams() {
    let backend = Backend::start("b1").await;
    let mut options = grpc_edge::ServeOptions::default();
    options.limits.max_connection_age = Duration::from_millis(300);
    let gateway = start_gateway_with(&config_yaml(&[backend.addr], "", ""), options).await;
    let (mut send, mut closed) = h2_connection(gateway.addr).await;
    let opened = Instant::now();
    // Five messages 150 ms apart: the stream outlives the connection's age.
    slow_server_stream(&mut send, gateway.addr).await;
    assert!(opened.elapsed() >= Duration::from_millis(600));
    // Retired: closed once its stream ended, and closed without an error.
    tokio::time::timeout(Duration::from_secs(2), &mut closed)
        .await
        .expect("the retired connection was never closed")
        .unwrap()
        .unwrap();
    assert!(send.ready().await.is_err(), "the retired connection took a new stream");

    // A tonic client reconnects on its own: calls over several ages all succeed.
    let mut client = client(gateway.addr).await;
    for _ in 0..8 {
        client.unary(echo("again")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway.stop().await;
}

/// At `max_connection_age` an HTTP/1.1 connection closes after the response
/// in progress, which it does not cut.
#[tokio::test]
async fn old_http1_connections_close_after_the_response_in_progress() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backend = Backend::start("b1").await;
    let mut options = grpc_edge::ServeOptions::default();
    options.limits.max_connection_age = Duration::from_millis(300);
    let gateway = start_gateway_with(&config_yaml(&[backend.addr], "", ""), options).await;
    let mut tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let body = r#"{"message":"long","repeat":5,"delayMs":150}"#;
    let request = format!(
        "POST /testing.v1.Echo/ServerStream HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let opened = Instant::now();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut seen))
        .await
        .expect("the retired connection was never closed")
        .unwrap();
    let after = opened.elapsed();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("{\"result\"").count(), 5, "{text}");
    assert!(
        after >= Duration::from_millis(600) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );
}

/// A server stream of five messages 150 ms apart, read whole; fails unless
/// it ends with every message and status OK.
async fn slow_server_stream(send: &mut h2::client::SendRequest<Bytes>, addr: std::net::SocketAddr) {
    let request = EchoRequest {
        repeat: 5,
        delay_ms: 150,
        ..echo("long")
    };
    *send = send.clone().ready().await.unwrap();
    let head = echo_call_head(addr, "ServerStream").body(()).unwrap();
    let (response, mut stream) = send.send_request(head, false).unwrap();
    stream.send_data(grpc_frame(&request), true).unwrap();
    let mut body = response.await.unwrap().into_body();
    let mut received = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
    let mut messages = 0;
    let mut rest = &received[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        rest = &rest[(5 + len).min(rest.len())..];
        messages += 1;
    }
    assert_eq!(messages, 5, "{} bytes", received.len());
}
