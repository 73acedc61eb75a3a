//! gRPC-Web through the gateway, with a real gRPC-Web client over HTTP/1.1
//! and HTTP/2, binary and text: unary and server-streaming calls, errors
//! after a message and trailers-only answers, metadata both ways, deadlines,
//! gateway-made errors, and malformed bodies that must get a clear gRPC-Web
//! error without hurting the calls that follow.

mod support;

#[path = "grpc_web/malformed.rs"]
mod malformed;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;

const UNARY: &str = "/testing.v1.Echo/Unary";
const SERVER_STREAM: &str = "/testing.v1.Echo/ServerStream";

/// Every transport with every encoding.
fn every_client() -> Vec<(Transport, WebEncoding)> {
    TRANSPORTS
        .iter()
        .flat_map(|t| ENCODINGS.iter().map(move |e| (*t, *e)))
        .collect()
}

/// The testing config, with top-level sections appended after the routes.
fn yaml(backends: &[SocketAddr], route_extra: &str, top_level: &str) -> String {
    format!("{}{top_level}", config_yaml(backends, "", route_extra))
}

async fn one_backend() -> (Backend, GatewayHandle) {
    let backend = Backend::start("b1").await;
    let gateway = start_gateway(&yaml(&[backend.addr], "", "")).await;
    (backend, gateway)
}

fn trailer<'a>(reply: &'a WebReply, name: &str) -> Option<&'a str> {
    reply.trailers.as_ref()?.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn unary_calls_work_in_every_encoding_over_both_transports() {
    let (_backend, gateway) = one_backend().await;
    for (transport, encoding) in every_client() {
        let case = format!("{transport:?} {encoding:?}");
        let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
        // Two calls on one connection: the connection stays usable.
        for round in 0..2 {
            let headers = [("x-request-id", "abc-123"), ("x-trace-bin", "AAH/")];
            let reply = client.call(UNARY, &headers, &echo("hello")).await;
            assert_eq!(reply.status, 200, "{case}");
            assert_eq!(reply.header("content-type"), Some(encoding.content_type()), "{case}");
            assert_eq!(reply.header("x-served-by"), Some("b1"), "{case}: response metadata");
            assert_eq!(reply.grpc_status().as_deref(), Some("0"), "{case} round {round}");
            assert!(reply.trailers.is_some(), "{case}: status in the trailer frame");
            let responses = reply.responses();
            assert_eq!(responses.len(), 1, "{case}");
            let metadata = &responses[0].metadata;
            assert_eq!(metadata["x-request-id"], "abc-123", "{case}");
            assert_eq!(metadata["x-trace-bin"], "AAH/", "{case}: binary metadata unchanged");
            assert_eq!(metadata["x-user-agent"], "grpc-web-rust-test/0.1", "{case}");
            assert_eq!(metadata["x-forwarded-for"], "127.0.0.1", "{case}");
            assert_eq!(metadata["x-forwarded-proto"], "http", "{case}");
            for gone in ["x-grpc-web", "accept", "content-length", "host", "connection"] {
                assert!(!metadata.contains_key(gone), "{case}: {gone} reached the backend");
            }
        }
    }
}

#[tokio::test]
async fn server_streams_deliver_every_message_then_the_trailer_frame() {
    let (_backend, gateway) = one_backend().await;
    for (transport, encoding) in every_client() {
        let case = format!("{transport:?} {encoding:?}");
        let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
        let reply = client
            .server_stream(EchoRequest {
                repeat: 20,
                ..echo("s")
            })
            .await;
        assert_eq!(reply.header("x-served-by"), Some("b1"), "{case}");
        assert_eq!(reply.grpc_status().as_deref(), Some("0"), "{case}");
        let sequences: Vec<u32> = reply.responses().iter().map(|r| r.sequence).collect();
        assert_eq!(sequences, (0..20).collect::<Vec<_>>(), "{case}");
    }
}

#[tokio::test]
async fn stream_messages_arrive_as_they_are_sent_and_each_text_chunk_is_valid_base64() {
    let (_backend, gateway) = one_backend().await;
    for (transport, encoding) in every_client() {
        let case = format!("{transport:?} {encoding:?}");
        let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
        let started = Instant::now();
        let request = EchoRequest {
            repeat: 3,
            delay_ms: 300,
            ..echo("slow")
        };
        let mut stream = client.start(SERVER_STREAM, &[], &request).await;
        let Some(WebFrame::Message(_)) = stream.next_frame().await else {
            panic!("{case}: no first message");
        };
        let first = started.elapsed();
        let reply = stream.finish().await;
        let all = started.elapsed();
        assert!(
            first < Duration::from_millis(700),
            "{case}: first message after {first:?}"
        );
        assert!(all >= Duration::from_millis(850), "{case}: whole stream took {all:?}");
        assert_eq!(reply.messages.len(), 2, "{case}: the other two");
        assert_eq!(reply.grpc_status().as_deref(), Some("0"), "{case}");
        if encoding == WebEncoding::Text {
            for chunk in &reply.chunks {
                decode_base64_groups(chunk);
            }
        }
    }
}

#[tokio::test]
async fn an_error_after_a_message_arrives_in_the_trailer_frame_with_its_metadata() {
    let (_backend, gateway) = one_backend().await;
    for (transport, encoding) in every_client() {
        let case = format!("{transport:?} {encoding:?}");
        let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
        let reply = client
            .server_stream(EchoRequest {
                repeat: 5,
                fail_code: 14,
                fail_after_first: true,
                ..echo("s")
            })
            .await;
        assert_eq!(reply.status, 200, "{case}");
        assert_eq!(reply.messages.len(), 1, "{case}");
        assert_eq!(trailer(&reply, "grpc-status"), Some("14"), "{case}");
        assert_eq!(reply.grpc_message(), "failure requested from b1", "{case}");
        assert_eq!(trailer(&reply, "x-failed-by"), Some("b1"), "{case}");
    }
}

#[tokio::test]
async fn trailers_only_answers_stay_trailers_only() {
    let (_backend, gateway) = one_backend().await;
    for (transport, encoding) in every_client() {
        let case = format!("{transport:?} {encoding:?}");
        let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
        let failing = EchoRequest {
            fail_code: 5,
            ..echo("x")
        };
        for reply in [
            client.unary(failing.clone()).await,
            client.server_stream(failing.clone()).await,
        ] {
            assert_eq!(reply.status, 200, "{case}");
            assert!(reply.is_trailers_only(), "{case}: {reply:?}");
            assert!(reply.chunks.iter().all(|c| c.is_empty()), "{case}: empty body");
            assert_eq!(reply.header("grpc-status"), Some("5"), "{case}");
            assert_eq!(reply.header("x-failed-by"), Some("b1"), "{case}");
            assert_eq!(reply.header("content-type"), Some(encoding.content_type()), "{case}");
        }
    }
}

#[tokio::test]
async fn accept_text_selects_a_text_answer_to_a_binary_request() {
    let (_backend, gateway) = one_backend().await;
    for transport in TRANSPORTS {
        let mut client = WebClient::connect(gateway.addr, transport, WebEncoding::Binary).await;
        let accept = [("accept", "application/grpc-web-text")];
        let reply = client.call(UNARY, &accept, &echo("t")).await;
        assert_eq!(reply.header("content-type"), Some("application/grpc-web-text+proto"));
        assert_eq!(reply.responses()[0].message, "t", "{transport:?}");
        assert_eq!(reply.grpc_status().as_deref(), Some("0"));
    }
}

#[tokio::test]
async fn a_text_body_split_anywhere_with_padding_mid_stream_is_decoded() {
    let (_backend, gateway) = one_backend().await;
    let frame = grpc_frame(&EchoRequest {
        payload: vec![9; 1000],
        ..echo("split")
    });
    // The header and the message encoded on their own: padding mid-stream.
    let mut text = WebEncoding::Text.encode(&frame[..5]).to_vec();
    assert!(text.ends_with(b"="));
    text.extend_from_slice(&WebEncoding::Text.encode(&frame[5..]));
    // Pieces of 1, 2, 3, 5, 7 … characters: most end inside a 4-character group.
    let mut pieces = Vec::new();
    let mut rest = &text[..];
    for size in [1, 2, 3, 5, 7, 11, 13].into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        pieces.push(Bytes::copy_from_slice(piece));
        rest = tail;
        if pieces.len() == 12 {
            pieces.push(Bytes::copy_from_slice(rest));
            break;
        }
    }
    for transport in TRANSPORTS {
        let mut client = WebClient::connect(gateway.addr, transport, WebEncoding::Text).await;
        let body = chunked_body(pieces.clone(), Duration::from_millis(3));
        let reply = client.start_raw(UNARY, &[], body).await.finish().await;
        assert_eq!(reply.grpc_status().as_deref(), Some("0"), "{transport:?}: {reply:?}");
        let response = &reply.responses()[0];
        assert_eq!(response.message, "split");
    }
}

#[tokio::test]
async fn large_messages_pass_intact_in_text_mode() {
    let (_backend, gateway) = one_backend().await;
    for transport in TRANSPORTS {
        let mut client = WebClient::connect(gateway.addr, transport, WebEncoding::Text).await;
        let reply = client
            .unary(EchoRequest {
                payload: vec![7; 1 << 20],
                response_size: 3 << 20,
                ..echo("big")
            })
            .await;
        assert_eq!(reply.grpc_status().as_deref(), Some("0"), "{transport:?}");
        assert_eq!(reply.responses()[0].payload, vec![b'x'; 3 << 20]);
    }
}

#[tokio::test]
async fn deadlines_end_calls_with_deadline_exceeded() {
    let (backend, gateway) = one_backend().await;
    for (transport, encoding) in every_client() {
        let case = format!("{transport:?} {encoding:?}");
        let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
        let started = Instant::now();
        let slow = EchoRequest {
            delay_ms: 1000,
            ..echo("slow")
        };
        let reply = client.call(UNARY, &[("grpc-timeout", "100m")], &slow).await;
        let took = started.elapsed();
        assert_eq!(reply.grpc_status().as_deref(), Some("4"), "{case}: {reply:?}");
        assert!(reply.grpc_message().contains("client's grpc-timeout"), "{case}");
        assert_eq!(reply.header("content-type"), Some(encoding.content_type()), "{case}");
        assert!(took < Duration::from_millis(600), "{case}: took {took:?}");
        let seen = backend.seen.last_grpc_timeout.lock().unwrap().clone();
        assert!(seen.is_some(), "{case}: the deadline travelled upstream");
        let bad = client.call(UNARY, &[("grpc-timeout", "soon")], &echo("x")).await;
        assert_eq!(bad.grpc_status().as_deref(), Some("3"), "{case}");
        assert!(bad.grpc_message().contains("malformed grpc-timeout"), "{case}");
    }
}

#[tokio::test]
async fn gateway_made_errors_are_grpc_web_answers() {
    let (backend, gateway) = one_backend().await;
    let closed = unused_addr().await;
    let nowhere = start_gateway(&yaml(&[closed], "", "")).await;
    for (transport, encoding) in every_client() {
        let case = format!("{transport:?} {encoding:?}");
        let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
        let reply = client.call("/nope.v1.Missing/Call", &[], &echo("x")).await;
        assert_eq!(reply.status, 200, "{case}");
        assert!(reply.is_trailers_only(), "{case}");
        assert_eq!(reply.grpc_status().as_deref(), Some("12"), "{case}");
        assert!(
            reply.grpc_message().contains("unknown service nope.v1.Missing"),
            "{case}"
        );
        assert_eq!(reply.header("content-type"), Some(encoding.content_type()), "{case}");

        let mut client = WebClient::connect(nowhere.addr, transport, encoding).await;
        let reply = client.unary(echo("x")).await;
        assert!(reply.is_trailers_only(), "{case}");
        assert_eq!(reply.grpc_status().as_deref(), Some("14"), "{case}: {reply:?}");
        assert_eq!(reply.header("content-type"), Some(encoding.content_type()), "{case}");
    }
    assert_eq!(backend.calls(), 0);
}

#[tokio::test]
async fn a_non_grpc_upstream_answer_reaches_the_client_as_grpc_web() {
    for (http_status, grpc_status) in [(503, "14"), (404, "12")] {
        let upstream = plain_http2_server(http_status).await;
        let gateway = start_gateway(&yaml(&[upstream], "", "")).await;
        for (transport, encoding) in every_client() {
            let case = format!("HTTP {http_status}, {transport:?} {encoding:?}");
            let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
            let reply = client.unary(echo("x")).await;
            assert_eq!(reply.status, 200, "{case}");
            assert!(reply.is_trailers_only(), "{case}");
            assert_eq!(reply.grpc_status().as_deref(), Some(grpc_status), "{case}");
            assert!(reply.grpc_message().contains(&format!("HTTP {http_status}")), "{case}");
            assert_eq!(reply.header("content-type"), Some(encoding.content_type()), "{case}");
        }
    }
}

/// An address nothing listens on.
async fn unused_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// An HTTP/2 server that answers every request with `status` and no gRPC.
async fn plain_http2_server(status: u16) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(move |_request| async move {
                let mut response = http::Response::new(full_body(Bytes::from_static(b"nope")));
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, std::convert::Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    addr
}
