//! CORS at the gateway: preflights answered by the gateway itself (never
//! forwarded) for gRPC-Web and REST paths alike, allowed and disallowed
//! origins, `*` against exact origins, credentials, max-age, and the headers
//! real answers carry so a browser can read the gRPC status.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use support::*;

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example.net";
const UNARY: &str = "/testing.v1.Echo/Unary";

/// The testing config with a `cors` section after the routes.
fn cors_yaml(backend: SocketAddr, cors: &str) -> String {
    format!("{}cors:\n{cors}", config_yaml(&[backend], "", ""))
}

const EXACT: &str = "  allow_origins: [\"https://app.example.com\"]
  allow_credentials: true
  allow_headers: [x-request-id]
  expose_headers: [x-served-by]
  max_age: 90s
";

const ANY: &str = "  allow_origins: [\"*\"]\n";

async fn gateway_with(cors: &str) -> (Backend, GatewayHandle) {
    let backend = Backend::start("b1").await;
    let gateway = start_gateway(&cors_yaml(backend.addr, cors)).await;
    (backend, gateway)
}

async fn preflight(addr: SocketAddr, transport: Transport, path: &str, origin: &str) -> HttpReply {
    let mut conn = HttpConn::connect(addr, transport).await;
    let request = conn.request(
        "OPTIONS",
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type,x-grpc-web,x-user-agent,grpc-timeout",
            ),
        ],
        full_body(Bytes::new()),
    );
    conn.exchange(request).await
}

fn cors_headers(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn list(reply: &HttpReply, name: &str) -> Vec<String> {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name}: {reply:?}"))
        .split(',')
        .map(|item| item.trim().to_string())
        .collect()
}

#[tokio::test]
async fn preflights_from_an_allowed_origin_are_answered_by_the_gateway_for_any_path() {
    let (backend, gateway) = gateway_with(EXACT).await;
    for transport in TRANSPORTS {
        for path in [UNARY, "/v1/echo/hello", "/"] {
            let case = format!("{transport:?} {path}");
            let reply = preflight(gateway.addr, transport, path, APP).await;
            assert_eq!(reply.status, 204, "{case}");
            assert!(reply.body.is_empty(), "{case}");
            assert_eq!(reply.header("access-control-allow-origin"), Some(APP), "{case}");
            assert_eq!(reply.header("access-control-allow-credentials"), Some("true"), "{case}");
            assert_eq!(reply.header("access-control-max-age"), Some("90"), "{case}");
            assert_eq!(reply.header("vary"), Some("origin"), "{case}");
            let methods = list(&reply, "access-control-allow-methods");
            for method in ["POST", "GET", "PUT", "PATCH", "DELETE"] {
                assert!(methods.iter().any(|m| m == method), "{case}: {methods:?}");
            }
            let headers = list(&reply, "access-control-allow-headers");
            for header in [
                "x-grpc-web",
                "x-user-agent",
                "grpc-timeout",
                "content-type",
                "authorization",
                "x-request-id",
            ] {
                assert!(headers.iter().any(|h| h == header), "{case}: {headers:?}");
            }
        }
    }
    assert_eq!(backend.calls(), 0, "preflights are never forwarded");
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_headers_and_its_preflight_is_not_forwarded() {
    let (backend, gateway) = gateway_with(EXACT).await;
    for transport in TRANSPORTS {
        for origin in [EVIL, "https://app.example.com:8443", "null"] {
            let reply = preflight(gateway.addr, transport, UNARY, origin).await;
            assert_eq!(reply.status, 204, "{transport:?} {origin}");
            assert!(cors_headers(&reply.headers).is_empty(), "{origin}: {reply:?}");
        }
        // An actual call from it is served (the browser enforces CORS), without CORS headers.
        let mut client = WebClient::connect(gateway.addr, transport, WebEncoding::Binary).await;
        let reply = client.call(UNARY, &[("origin", EVIL)], &echo("x")).await;
        assert_eq!(reply.grpc_status().as_deref(), Some("0"));
        let names: Vec<_> = reply.headers.keys().map(|k| k.as_str()).collect();
        assert!(names.iter().all(|k| !k.starts_with("access-control-")), "{names:?}");
        assert_eq!(reply.header("vary"), Some("origin"));
    }
    assert_eq!(backend.calls(), 2, "only the two actual calls reached the backend");
}

#[tokio::test]
async fn answers_to_an_allowed_origin_expose_the_grpc_status_headers() {
    let (_backend, gateway) = gateway_with(EXACT).await;
    for (transport, encoding) in [
        (Transport::Http1, WebEncoding::Text),
        (Transport::Http2, WebEncoding::Binary),
    ] {
        let mut client = WebClient::connect(gateway.addr, transport, encoding).await;
        let ok = client.call(UNARY, &[("origin", APP)], &echo("x")).await;
        // A gateway-made, trailers-only error too: the browser must be able to read it.
        let unknown = client
            .call("/nope.v1.Missing/Call", &[("origin", APP)], &echo("x"))
            .await;
        assert_eq!(unknown.grpc_status().as_deref(), Some("12"));
        for reply in [ok, unknown] {
            assert_eq!(reply.header("access-control-allow-origin"), Some(APP));
            assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
            assert_eq!(reply.header("vary"), Some("origin"));
            let exposed: Vec<_> = reply
                .header("access-control-expose-headers")
                .unwrap()
                .split(", ")
                .collect();
            assert_eq!(
                exposed,
                ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-served-by"]
            );
            assert!(reply.header("access-control-allow-methods").is_none(), "preflight only");
        }
    }
}

#[tokio::test]
async fn a_wildcard_allows_every_origin_with_a_star_and_no_credentials() {
    let (backend, gateway) = gateway_with(ANY).await;
    for transport in TRANSPORTS {
        for origin in [APP, EVIL, "null"] {
            let reply = preflight(gateway.addr, transport, UNARY, origin).await;
            assert_eq!(reply.status, 204);
            assert_eq!(reply.header("access-control-allow-origin"), Some("*"), "{origin}");
            assert!(reply.header("access-control-allow-credentials").is_none());
            assert_eq!(reply.header("access-control-max-age"), Some("600"), "default max_age");
            let headers = list(&reply, "access-control-allow-headers");
            assert!(!headers.iter().any(|h| h == "x-request-id"), "nothing configured");
        }
        let mut client = WebClient::connect(gateway.addr, transport, WebEncoding::Text).await;
        let reply = client.call(UNARY, &[("origin", EVIL)], &echo("x")).await;
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
        assert_eq!(
            reply.header("access-control-expose-headers"),
            Some("grpc-status, grpc-message, grpc-status-details-bin")
        );
        assert!(reply.header("access-control-allow-credentials").is_none());
    }
    assert_eq!(backend.calls(), 2);
}

#[tokio::test]
async fn options_without_a_request_method_is_not_a_preflight() {
    let (_backend, gateway) = gateway_with(EXACT).await;
    let mut conn = HttpConn::connect(gateway.addr, Transport::Http1).await;
    let request = conn.request("OPTIONS", "/v1/echo/hello", &[("origin", APP)], full_body(Bytes::new()));
    let reply = conn.exchange(request).await;
    assert_ne!(reply.status, 204, "dispatched as an ordinary request: {reply:?}");
    assert!(reply.header("access-control-allow-methods").is_none());
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some(APP),
        "still decorated"
    );
}

#[tokio::test]
async fn without_a_cors_section_nothing_is_added_and_native_grpc_is_unaffected_with_one() {
    let backend = Backend::start("b1").await;
    let plain = start_gateway(&config_yaml(&[backend.addr], "", "")).await;
    let reply = preflight(plain.addr, Transport::Http1, UNARY, APP).await;
    assert!(cors_headers(&reply.headers).is_empty(), "{reply:?}");
    assert!(reply.header("vary").is_none());
    let mut web = WebClient::connect(plain.addr, Transport::Http1, WebEncoding::Binary).await;
    let reply = web.call(UNARY, &[("origin", APP)], &echo("x")).await;
    assert_eq!(reply.grpc_status().as_deref(), Some("0"));
    assert!(reply.header("access-control-allow-origin").is_none());

    let with_cors = start_gateway(&cors_yaml(backend.addr, EXACT)).await;
    let mut native = client(with_cors.addr).await;
    let response = native.unary(echo("native")).await.unwrap();
    assert_eq!(response.into_inner().message, "native");
}

#[test]
fn a_bad_header_name_in_the_cors_section_is_refused_at_start_up() {
    let yaml = cors_yaml(
        "127.0.0.1:1".parse().unwrap(),
        "  allow_origins: [\"https://app.example.com\"]\n  expose_headers: [\"bad header\"]\n",
    );
    let config = grpc_edge::config::Config::from_yaml(&yaml).unwrap();
    let error = grpc_edge::Gateway::from_config(config).unwrap_err().to_string();
    assert!(error.contains("cors.expose_headers[0]"), "{error}");
}
