//! Malformed gRPC-Web requests: bad base64, truncated and oversized frames,
//! empty bodies, wrong content types and methods. Each gets a clear answer
//! naming what was wrong (a gRPC-Web error, or a plain 4xx when the request
//! is not a gRPC-Web call at all), never a panic or a stuck connection, and
//! the calls that follow on the same connection still work.

use std::time::Duration;

use bytes::Bytes;

use super::{UNARY, every_client, one_backend, yaml};
use crate::support::*;

/// A malformed request and what it must be answered with.
struct Malformed {
    name: &'static str,
    encoding: WebEncoding,
    body: fn() -> WebBody,
    code: &'static str,
    says: String,
}

fn malformed_cases() -> Vec<Malformed> {
    use WebEncoding::{Binary, Text};
    // A good frame (12 base64 characters), then one character too many.
    let good_text_len = Text.encode(&grpc_frame(&echo("x"))).len();
    vec![
        Malformed {
            name: "bad base64",
            encoding: Text,
            body: || full_body(Bytes::from_static(b"AAAA!AAA")),
            code: "3",
            says: "invalid base64 at byte offset 4".into(),
        },
        Malformed {
            name: "bad base64 in a later chunk",
            encoding: Text,
            body: || {
                let pieces = vec![Bytes::from_static(b"AAAAAAVo"), Bytes::from_static(b"ZW*sbw==")];
                chunked_body(pieces, Duration::from_millis(5))
            },
            code: "3",
            says: "byte offset 10".into(),
        },
        Malformed {
            name: "a lone base64 character at the end",
            encoding: Text,
            body: || {
                let mut text = WebEncoding::Text.encode(&grpc_frame(&echo("x"))).to_vec();
                text.push(b'A');
                full_body(text)
            },
            code: "3",
            says: format!("ends inside a base64 group at byte offset {good_text_len}"),
        },
        Malformed {
            name: "truncated frame",
            encoding: Binary,
            body: || full_body(Bytes::from_static(b"\x00\x00\x00\x00\x0a\x01\x02\x03")),
            code: "3",
            says: "8 of 15 bytes at byte offset 0".into(),
        },
        Malformed {
            name: "truncated header",
            encoding: Binary,
            body: || full_body(Bytes::from_static(b"\x00\x00\x00")),
            code: "3",
            says: "3 of 5 bytes".into(),
        },
        Malformed {
            name: "trailer flag in a request",
            encoding: Binary,
            body: || full_body(Bytes::from_static(b"\x80\x00\x00\x00\x00")),
            code: "3",
            says: "flags 0x80".into(),
        },
        Malformed {
            name: "oversized length prefix",
            encoding: Binary,
            body: || full_body(Bytes::from_static(b"\x00\xff\xff\xff\xff")),
            code: "8",
            says: "exceeds the limit of 4194304 bytes".into(),
        },
        Malformed {
            name: "oversized length prefix, text",
            encoding: Text,
            body: || full_body(WebEncoding::Text.encode(b"\x00\xff\xff\xff\xff")),
            code: "8",
            says: "exceeds the limit of 4194304 bytes".into(),
        },
        Malformed {
            name: "empty body",
            encoding: Binary,
            body: || full_body(Bytes::new()),
            code: "3",
            says: "request body is empty".into(),
        },
        Malformed {
            name: "empty chunked body",
            encoding: Text,
            body: || chunked_body(Vec::new(), Duration::ZERO),
            code: "3",
            says: "request body is empty".into(),
        },
    ]
}

#[tokio::test]
async fn malformed_bodies_get_clear_errors_and_the_gateway_carries_on() {
    let (backend, gateway) = one_backend().await;
    for transport in TRANSPORTS {
        // Every bad call on one connection, which must stay usable.
        let mut client = WebClient::connect(gateway.addr, transport, WebEncoding::Binary).await;
        for case in malformed_cases() {
            let what = format!("{transport:?}: {}", case.name);
            client.encoding = case.encoding;
            let reply = client.start_raw(UNARY, &[], (case.body)()).await.finish().await;
            assert_eq!(reply.status, 200, "{what}");
            assert!(reply.is_trailers_only(), "{what}: {reply:?}");
            assert_eq!(reply.grpc_status().as_deref(), Some(case.code), "{what}");
            assert!(
                reply.grpc_message().contains(&case.says),
                "{what}: {:?}",
                reply.grpc_message()
            );
            assert_eq!(
                reply.header("content-type"),
                Some(case.encoding.content_type()),
                "{what}"
            );
        }
        client.encoding = WebEncoding::Text;
        let reply = client.unary(echo("after")).await;
        assert_eq!(
            reply.grpc_status().as_deref(),
            Some("0"),
            "{transport:?}: good call after"
        );
    }
    assert_eq!(backend.calls(), 2, "only the two good calls reached the backend");
    for (transport, encoding) in every_client() {
        let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
        assert_eq!(client.unary(echo("fine")).await.grpc_status().as_deref(), Some("0"));
    }
}

#[tokio::test]
async fn requests_above_max_request_body_are_resource_exhausted() {
    let backend = Backend::start("b1").await;
    let config = yaml(&[backend.addr], "", "transcoding:\n  max_request_body: 1KiB\n");
    let gateway = start_gateway(&config).await;
    for (transport, encoding) in every_client() {
        let case = format!("{transport:?} {encoding:?}");
        let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
        let big = EchoRequest {
            payload: vec![1; 2048],
            ..echo("big")
        };
        let reply = client.unary(big).await;
        assert_eq!(reply.grpc_status().as_deref(), Some("8"), "{case}: {reply:?}");
        assert!(reply.grpc_message().contains("limit of 1024 bytes"), "{case}");
        let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
        let small = EchoRequest {
            payload: vec![1; 512],
            ..echo("small")
        };
        assert_eq!(client.unary(small).await.grpc_status().as_deref(), Some("0"), "{case}");
    }
    assert_eq!(backend.calls(), 4);
}

#[tokio::test]
async fn requests_that_are_not_grpc_web_calls_get_plain_http_errors() {
    let (backend, gateway) = one_backend().await;
    for transport in TRANSPORTS {
        let mut conn = HttpConn::connect(gateway.addr, transport).await;
        let frame = grpc_frame(&echo("x"));
        let wrong_type = conn.request(
            "POST",
            UNARY,
            &[("content-type", "application/grpc-webby")],
            full_body(frame.clone()),
        );
        let reply = conn.exchange(wrong_type).await;
        assert_eq!(reply.status, 415, "{transport:?}");
        let mut conn = HttpConn::connect(gateway.addr, transport).await;
        let get = conn.request(
            "GET",
            UNARY,
            &[("content-type", "application/grpc-web")],
            full_body(Bytes::new()),
        );
        let reply = conn.exchange(get).await;
        assert_eq!(reply.status, 405, "{transport:?}");
        assert_eq!(reply.header("allow"), Some("POST"));
    }
    assert_eq!(backend.calls(), 0);
}
