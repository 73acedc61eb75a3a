//! grpc-edge used as a library: nested in and merged with a host's axum app,
//! in-process tonic services with no backend listener, in-process and network
//! routes in one gateway, the three descriptor sources, draining with the
//! shutdown handle, and mistakes reported by `build()`.
//!
//! The examples are compiled into this test as modules (`#[path]`), so each
//! test below runs the example's own code — its builder calls, its router,
//! its tower stack, its `--once` self-check — rather than a copy of it.

// Each example declares the examples' shared `support` module, so this test
// compiles it once per example: harmless, and what lets each example stand alone.
#![allow(clippy::duplicate_mod)]

mod support;

use support::served::Served;

#[allow(dead_code)]
#[path = "../examples/custom_stack.rs"]
mod custom_stack;
#[allow(dead_code)]
#[path = "../examples/embed_axum.rs"]
mod embed_axum;
#[allow(dead_code)]
#[path = "../examples/in_process.rs"]
mod in_process;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use grpc_edge::config::{Route, Upstream};
use grpc_edge::demo::pb::order_service_client::OrderServiceClient;
use grpc_edge::demo::pb::{self as demo_pb, GetOrderRequest, Order, WatchOrderRequest};
use grpc_edge::demo::{DESCRIPTOR_SET, OrderDesk};
use grpc_edge::{BuildError, Gateway};
use http_body_util::BodyExt;
use support::rest_client::{self as rest, get as rest_get, next_chunk};
use support::{ENCODINGS, TRANSPORTS, Transport, WebClient, WebEncoding};
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tower::ServiceExt;

// ---------------------------------------------------------------------------
// Fixtures.

/// The demo backends and the gateway of `examples/embed_axum.rs`.
async fn embed_axum_setup() -> (Vec<grpc_edge::demo::Backend>, Gateway) {
    let backends = embed_axum::start_backends().await.unwrap();
    let addrs: Vec<SocketAddr> = backends.iter().map(grpc_edge::demo::Backend::addr).collect();
    let gateway = embed_axum::gateway(&addrs).unwrap();
    (backends, gateway)
}

/// A gRPC client over one HTTP/2 connection.
async fn order_client(addr: SocketAddr) -> OrderServiceClient<tonic::transport::Channel> {
    OrderServiceClient::connect(format!("http://{addr}")).await.unwrap()
}

fn get_order(name: &str) -> GetOrderRequest {
    GetOrderRequest { name: name.into() }
}

fn decode_order(message: &Bytes) -> Order {
    prost::Message::decode(message.clone()).unwrap()
}

/// A REST GET answered by the gateway's tower service, with no socket at all.
async fn oneshot_get(gateway: &Gateway, path: &str) -> (http::StatusCode, serde_json::Value) {
    let request = http::Request::get(path)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = gateway.clone().into_service().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&body)));
    (status, json)
}

fn build_error(result: Result<Gateway, BuildError>) -> String {
    match result {
        Ok(gateway) => panic!("build() accepted it: {gateway:?}"),
        Err(e) => e.to_string(),
    }
}

fn testing_descriptors() -> Vec<u8> {
    std::fs::read(support::root().join("descriptors/testing.binpb")).unwrap()
}

// ---------------------------------------------------------------------------
// The examples, as `cargo run --example X -- --once` runs them.

#[tokio::test]
async fn example_embed_axum_runs() {
    let options = embed_axum::Options::parse(["--once".to_string()]).unwrap();
    embed_axum::run(options).await.unwrap();
}

#[tokio::test]
async fn example_in_process_runs() {
    let options = in_process::Options::parse(["--once".to_string()]).unwrap();
    in_process::run(options).await.unwrap();
}

#[tokio::test]
async fn example_custom_stack_runs() {
    let args = ["--once", "--max-in-flight", "4"].map(String::from);
    custom_stack::run(custom_stack::Options::parse(args).unwrap())
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------
// Nested under a prefix, merged with host routes.

#[tokio::test]
async fn nested_under_api_rest_and_grpc_web_work_with_the_prefix() {
    let (_backends, gateway) = embed_axum_setup().await;
    let app = Served::axum(embed_axum::app(&gateway)).await;
    let a = app.addr;

    let order = rest_get(a, "/api/v1/orders/1").await;
    assert_eq!(order.status, 200, "{}", order.text());
    assert_eq!(order.json()["name"], "orders/1");
    assert!(order.json()["servedBy"].as_str().unwrap().starts_with("replica-"));
    let created = rest::post_json(a, "/api/v1/orders", r#"{"item":"mug","quantity":2}"#).await;
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(created.json()["item"], "mug");
    // The gateway answers its own errors under the prefix too.
    let missing = rest_get(a, "/api/v1/orders/404").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["code"], 5);
    // Outside the prefix the gateway serves nothing: axum's own 404, with no body.
    let outside = rest_get(a, "/v1/orders/1").await;
    assert_eq!(outside.status, 404);
    assert!(outside.body.is_empty(), "{}", outside.text());
    // The host's own routes and the admin endpoints it mounted.
    assert_eq!(rest_get(a, "/").await.text(), "the host app's own page\n");
    let upstreams = rest_get(a, "/admin/upstreams").await;
    assert_eq!(upstreams.status, 200);
    assert!(upstreams.text().contains("upstream orders"), "{}", upstreams.text());

    // gRPC-Web with base URL `/api`: both transports, both encodings.
    for transport in TRANSPORTS {
        for encoding in ENCODINGS {
            let mut client = WebClient::connect(a, transport, encoding).await;
            let reply = client
                .call("/api/demo.v1.OrderService/GetOrder", &[], &get_order("orders/2"))
                .await;
            assert_eq!(
                reply.grpc_status().as_deref(),
                Some("0"),
                "{transport:?} {encoding:?}: {reply:?}"
            );
            let order = decode_order(&reply.messages[0]);
            assert_eq!(order.item, "grinder");
            assert!(order.served_by.starts_with("replica-"));
            let events = client
                .call(
                    "/api/demo.v1.OrderService/WatchOrder",
                    &[],
                    &WatchOrderRequest {
                        name: "orders/2".into(),
                        interval_ms: 5,
                    },
                )
                .await;
            assert_eq!(events.grpc_status().as_deref(), Some("0"), "{events:?}");
            assert_eq!(events.messages.len(), 4, "{transport:?} {encoding:?}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn cors_applies_under_the_prefix() {
    let (_backends, gateway) = embed_axum_setup().await;
    let app = Served::axum(embed_axum::app(&gateway)).await;
    let preflight = rest::request(
        app.addr,
        "OPTIONS",
        "/api/demo.v1.OrderService/GetOrder",
        &[
            ("origin", embed_axum::FRONTEND_ORIGIN),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type,x-grpc-web,authorization",
            ),
        ],
        Bytes::new(),
    )
    .await;
    assert!(preflight.status.is_success(), "{preflight:?}");
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some(embed_axum::FRONTEND_ORIGIN)
    );
    let allowed = preflight
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("x-grpc-web") && allowed.contains("authorization"),
        "{allowed}"
    );

    let actual = rest::request(
        app.addr,
        "GET",
        "/api/v1/orders/1",
        &[("origin", embed_axum::FRONTEND_ORIGIN)],
        Bytes::new(),
    )
    .await;
    assert_eq!(actual.status, 200);
    assert_eq!(
        actual.header("access-control-allow-origin"),
        Some(embed_axum::FRONTEND_ORIGIN)
    );
    let stranger = rest::request(
        app.addr,
        "GET",
        "/api/v1/orders/1",
        &[("origin", "https://evil.example")],
        Bytes::new(),
    )
    .await;
    assert_eq!(stranger.header("access-control-allow-origin"), None);
    app.stop().await;
}

#[tokio::test]
async fn merged_with_host_routes_the_host_wins_its_paths_and_the_gateway_serves_the_rest() {
    let gateway = in_process::gateway().unwrap();
    let app = Router::new()
        .route("/hello", get(|| async { "hello from the host" }))
        // The same path as the gateway's GetOrder binding for orders/1.
        .route("/v1/orders/1", get(|| async { "the host's orders/1" }))
        .merge(gateway.router());
    let app = Served::axum(app).await;
    let a = app.addr;

    assert_eq!(rest_get(a, "/hello").await.text(), "hello from the host");
    assert_eq!(rest_get(a, "/v1/orders/1").await.text(), "the host's orders/1");
    let order = rest_get(a, "/v1/orders/2").await;
    assert_eq!(order.status, 200);
    assert_eq!(order.json()["servedBy"], "in-process");

    // At the root, native gRPC works too (axum serves h2c), and gRPC paths never collide with host paths.
    let mut client = order_client(a).await;
    let order = client.get_order(get_order("orders/1")).await.unwrap().into_inner();
    assert_eq!(
        (order.item.as_str(), order.served_by.as_str()),
        ("espresso beans", "in-process")
    );
    let mut web = WebClient::connect(a, Transport::Http1, WebEncoding::Text).await;
    let reply = web
        .call("/demo.v1.OrderService/GetOrder", &[], &get_order("orders/3"))
        .await;
    assert_eq!(decode_order(&reply.messages[0]).item, "kettle");
    app.stop().await;
}

#[tokio::test]
async fn a_host_route_claims_its_path_for_every_http_method() {
    // What "the host wins its paths" means with axum: a host route on a path
    // takes every method there, so the gateway's POST /v1/orders (CreateOrder)
    // is shadowed by a host GET /v1/orders: axum answers 405 itself.
    let gateway = in_process::gateway().unwrap();
    let app = Router::new()
        .route("/v1/orders", get(|| async { "the host's list" }))
        .merge(gateway.router());
    let app = Served::axum(app).await;
    assert_eq!(rest_get(app.addr, "/v1/orders").await.text(), "the host's list");
    let create = rest::post_json(app.addr, "/v1/orders", r#"{"item":"mug"}"#).await;
    assert_eq!(create.status, 405, "{}", create.text());
    app.stop().await;
}

#[test]
fn merging_with_a_host_fallback_is_refused_when_the_app_is_assembled() {
    // The gateway's router claims no path, only a fallback, so no path of
    // the host's can conflict with it. The one conflict possible is a second
    // fallback: axum refuses it when the app is put together (a panic at
    // start-up, before anything is served), with this message.
    let gateway = in_process::gateway().unwrap();
    let gateway_router = gateway.router();
    let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Router::<()>::new()
            .fallback(|| async { "the host's fallback" })
            .merge(gateway_router)
    }));
    let panic = merged.expect_err("two fallbacks were merged");
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap();
    assert!(
        message.contains("Cannot merge two `Router`s that both have a fallback"),
        "{message}"
    );

    // Nesting is fine next to a host fallback: it only covers the prefix.
    let _nested = Router::<()>::new()
        .fallback(|| async { "the host's fallback" })
        .nest("/api", gateway.router());
}

#[tokio::test]
async fn nested_gateway_leaves_other_paths_to_the_host_fallback() {
    let gateway = in_process::gateway().unwrap();
    let app = Router::new()
        .fallback(|| async { (http::StatusCode::NOT_FOUND, "the host's fallback") })
        .nest("/api", gateway.router());
    let app = Served::axum(app).await;
    assert_eq!(rest_get(app.addr, "/elsewhere").await.text(), "the host's fallback");
    let order = rest_get(app.addr, "/api/v1/orders/1").await;
    assert_eq!(order.json()["servedBy"], "in-process");
    // Inside the prefix, an unknown path gets the gateway's own 404 (a google.rpc.Status).
    let unknown = rest_get(app.addr, "/api/nothing/here").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["code"], 5, "{}", unknown.text());
    app.stop().await;
}

#[tokio::test]
async fn the_client_address_reaches_network_backends_when_embedded() {
    let backend = support::Backend::start("echo-net").await;
    let gateway = Gateway::builder()
        .descriptor_set(testing_descriptors())
        .upstream("echo", Upstream::with_endpoints([backend.addr.to_string()]))
        .route(Route::new("testing.v1.Echo", "echo"))
        .build()
        .unwrap();
    let app = Served::axum(Router::new().merge(gateway.router())).await;
    let mut client = support::client(app.addr).await;
    let reply = client.unary(support::echo("hi")).await.unwrap().into_inner();
    assert_eq!(reply.served_by, "echo-net");
    assert_eq!(
        reply.metadata.get("x-forwarded-for").map(String::as_str),
        Some("127.0.0.1")
    );
    assert_eq!(
        reply.metadata.get("x-forwarded-proto").map(String::as_str),
        Some("http")
    );
    app.stop().await;
}

/// A host's server does not know the call's stall limit; the gateway's
/// watchdog applies it: a server stream whose client stopped reading (over
/// HTTP/2 with a shut window, or HTTP/1.1 with a full socket) is cancelled
/// upstream at `stream_idle_timeout`, instead of holding the backend's
/// stream for as long as the client's connection lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_stream_whose_client_stopped_reading_releases_the_backend_at_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;

    let backend = support::faults::FaultBackend::start("flood").await;
    let yaml = support::config_yaml(&[backend.addr], "", "stream_idle_timeout: 300ms");
    let gateway = Gateway::builder()
        .config(grpc_edge::config::Config::from_yaml(&yaml).unwrap())
        .build()
        .unwrap();
    let app = Served::axum(Router::new().merge(gateway.router())).await;
    let flood = support::EchoRequest {
        repeat: 10_000,
        response_size: 4096,
        ..support::echo("flood")
    };
    let until_released = || async {
        let reached = support::faults::wait_until(Duration::from_secs(2), || backend.in_flight() == 1).await;
        assert!(reached.is_some(), "the stream never reached the backend");
        support::faults::wait_until(Duration::from_secs(3), || backend.in_flight() == 0)
            .await
            .expect("the stalled stream still holds the backend")
    };

    let unread = support::call_without_reading(app.addr, "ServerStream", &flood).await;
    let released = until_released().await;
    assert!(released < Duration::from_millis(1500), "released after {released:?}");

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(app.addr).await.unwrap();
    let body = support::grpc_frame(&flood);
    let head = format!(
        "POST /testing.v1.Echo/ServerStream HTTP/1.1\r\nhost: app\r\ncontent-type: application/grpc-web+proto\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    let released = until_released().await;
    assert!(released < Duration::from_millis(1500), "released after {released:?}");
    drop((unread, tcp));
    app.stop().await;
}

// ---------------------------------------------------------------------------
// In-process services.

#[tokio::test]
async fn in_process_service_answers_rest_grpc_web_and_grpc_with_no_backend_listener() {
    let gateway = in_process::gateway().unwrap();
    // Nothing to connect to: no upstream, and every OrderService method is served in-process.
    assert!(gateway.config().upstreams.is_empty());
    assert!(gateway.upstream_snapshot().is_empty());
    let routes = gateway.method_routes();
    let orders: Vec<_> = routes
        .iter()
        .filter(|(path, _, _)| path.starts_with("/demo.v1.OrderService/"))
        .collect();
    assert_eq!(orders.len(), 7, "{routes:?}");
    assert!(
        orders
            .iter()
            .all(|(_, upstream, _)| upstream == "in-process demo.v1.OrderService"),
        "{orders:?}"
    );
    let served = Served::gateway(gateway).await;
    let a = served.addr;

    // REST: unary, a server stream as NDJSON, client streaming from NDJSON.
    let order = rest_get(a, "/v1/orders/1").await;
    assert_eq!(order.status, 200, "{}", order.text());
    assert_eq!(order.json()["servedBy"], "in-process");
    // A path variable inside the body's message: the path says which order.
    let json = [("content-type", "application/json")];
    let patched = rest::request(a, "PATCH", "/v1/orders/2", &json, r#"{"quantity":5}"#).await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(
        (
            &patched.json()["name"],
            &patched.json()["item"],
            &patched.json()["quantity"]
        ),
        (&"orders/2".into(), &"grinder".into(), &5.into())
    );
    assert_eq!(rest_get(a, "/v1/orders/2").await.json()["quantity"], 5);
    let masked = rest::request(a, "PATCH", "/v1/orders/2?updateMask=item", &json, r#"{"quantity":9}"#).await;
    assert_eq!(masked.status, 400, "{}", masked.text());
    assert!(
        masked.json()["message"].as_str().unwrap().contains("order.item"),
        "{}",
        masked.text()
    );
    let missing = rest::request(a, "PATCH", "/v1/orders/404", &json, r#"{"quantity":1}"#).await;
    assert_eq!(missing.status, 404, "{}", missing.text());
    let events = rest_get(a, "/v1/orders/1:watch?intervalMs=5").await;
    assert_eq!(events.status, 200, "{}", events.text());
    let lines: Vec<_> = events.text().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[3].contains("DELIVERED"), "{lines:?}");
    let imported = rest::request(
        a,
        "POST",
        "/v1/orders:import",
        &[("content-type", "application/x-ndjson")],
        "{\"item\":\"a\"}\n{\"item\":\"b\"}\n",
    )
    .await;
    assert_eq!(imported.status, 200, "{}", imported.text());
    assert_eq!(imported.json()["imported"], 2);

    // gRPC-Web: unary and a server stream, both encodings.
    for encoding in ENCODINGS {
        let mut web = WebClient::connect(a, Transport::Http1, encoding).await;
        let reply = web
            .call("/demo.v1.OrderService/GetOrder", &[], &get_order("orders/2"))
            .await;
        assert_eq!(reply.grpc_status().as_deref(), Some("0"), "{reply:?}");
        assert_eq!(decode_order(&reply.messages[0]).served_by, "in-process");
        let watch = WatchOrderRequest {
            name: "orders/2".into(),
            interval_ms: 5,
        };
        let stream = web.call("/demo.v1.OrderService/WatchOrder", &[], &watch).await;
        assert_eq!(stream.messages.len(), 4, "{stream:?}");
    }

    // Native gRPC: all four call shapes.
    let mut client = order_client(a).await;
    let order = client.get_order(get_order("orders/3")).await.unwrap().into_inner();
    assert_eq!(order.served_by, "in-process");
    let watch = WatchOrderRequest {
        name: "orders/3".into(),
        interval_ms: 5,
    };
    let events: Vec<_> = client
        .watch_order(watch)
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(events.len(), 4);
    let uploads = tokio_stream::iter(["x", "y", "z"].map(|item| Order {
        item: item.into(),
        ..Default::default()
    }));
    let imported = client.import_orders(uploads).await.unwrap().into_inner();
    assert_eq!((imported.imported, imported.served_by.as_str()), (3, "in-process"));
    let said = tokio_stream::iter(["hi", "bye"].map(|text| demo_pb::ChatMessage {
        text: text.into(),
        served_by: String::new(),
    }));
    let heard: Vec<_> = client
        .chat(said)
        .await
        .unwrap()
        .into_inner()
        .map(|m| m.unwrap().text)
        .collect()
        .await;
    assert_eq!(heard, ["desk heard: hi", "desk heard: bye"]);
    // An error of the in-process service keeps its code in every protocol.
    let missing = client.get_order(get_order("orders/404")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(rest_get(a, "/v1/orders/404").await.status, 404);
    served.stop().await;
}

#[tokio::test]
async fn in_process_and_network_routes_mix_in_one_gateway() {
    let backend = support::Backend::start("echo-net").await;
    let gateway = Gateway::builder()
        .descriptor_set(DESCRIPTOR_SET)
        .descriptor_set(testing_descriptors())
        .service(OrderDesk::new("local").into_server())
        .upstream("net", Upstream::with_endpoints([backend.addr.to_string()]))
        // A catch-all: the in-process service still takes its own service's calls.
        .route(Route::new("*", "net"))
        .build()
        .unwrap();
    let routes = gateway.method_routes();
    let upstream_of = |path: &str| routes.iter().find(|(p, _, _)| p == path).map(|(_, u, _)| u.as_str());
    assert_eq!(
        upstream_of("/demo.v1.OrderService/GetOrder"),
        Some("in-process demo.v1.OrderService")
    );
    assert_eq!(upstream_of("/testing.v1.Echo/Unary"), Some("net"));
    let served = Served::gateway(gateway).await;
    let a = served.addr;

    let mut orders = order_client(a).await;
    let order = orders.get_order(get_order("orders/1")).await.unwrap().into_inner();
    assert_eq!(order.served_by, "local");
    let mut echo = support::client(a).await;
    let reply = echo
        .unary(support::echo("over the network"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.served_by, "echo-net");
    assert_eq!(backend.calls(), 1);

    assert_eq!(rest_get(a, "/v1/orders/1").await.json()["servedBy"], "local");
    let mut web = WebClient::connect(a, Transport::Http2, WebEncoding::Binary).await;
    let reply = web.unary(support::echo("web")).await;
    assert_eq!(reply.grpc_status().as_deref(), Some("0"), "{reply:?}");
    assert_eq!(reply.responses()[0].served_by, "echo-net");
    assert_eq!(backend.calls(), 2);
    served.stop().await;
}

// ---------------------------------------------------------------------------
// Descriptor sources.

#[tokio::test]
async fn builds_from_bytes_from_a_descriptor_pool_and_from_proto_files() {
    let pool = prost_reflect::DescriptorPool::decode(DESCRIPTOR_SET).unwrap();
    let builders = [
        (
            "bytes",
            Gateway::builder().descriptor_set(Bytes::from_static(DESCRIPTOR_SET)),
        ),
        ("pool", Gateway::builder().descriptor_pool(&pool)),
        (
            ".proto",
            Gateway::builder().proto_file("proto/demo/v1/orders.proto", &["proto"]),
        ),
    ];
    for (source, builder) in builders {
        let gateway = builder
            .service(OrderDesk::new(source).into_server())
            .build()
            .unwrap_or_else(|e| panic!("{source}: {e}"));
        let (status, order) = oneshot_get(&gateway, "/v1/orders/1").await;
        assert_eq!(status, 200, "{source}: {order}");
        assert_eq!(order["servedBy"], source);
        assert_eq!(
            order["createTime"], "2026-01-15T09:30:00Z",
            "{source}: well-known types resolve"
        );
        assert!(gateway.descriptors().registry().has_service("demo.v1.OrderService"));
    }
}

#[test]
fn a_proto_file_that_does_not_compile_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.proto"), "syntax = \"proto3\";\nmessage {\n").unwrap();
    let message = build_error(
        Gateway::builder()
            .proto_file(dir.path().join("broken.proto"), &[dir.path()])
            .service(OrderDesk::new("x").into_server())
            .build(),
    );
    assert!(message.contains("broken.proto"), "{message}");
}

// ---------------------------------------------------------------------------
// Draining with the shutdown handle.

/// A stream in flight completes during a drain; a call made during the drain
/// is refused in its own protocol; the drain ends when the stream does.
async fn drain_case(gateway: Gateway) {
    let app = Served::axum(Router::new().merge(gateway.router())).await;
    let a = app.addr;
    let handle = gateway.shutdown_handle();

    // Two streams in flight: native gRPC, and REST (NDJSON), 4 events 150 ms apart.
    let mut client = order_client(a).await;
    let watch = WatchOrderRequest {
        name: "orders/1".into(),
        interval_ms: 150,
    };
    let mut grpc_stream = client.watch_order(watch).await.unwrap().into_inner();
    let first = grpc_stream.next().await.unwrap().unwrap();
    let (status, _, mut rest_stream) = rest::send(a, "GET", "/v1/orders/1:watch?intervalMs=150", &[], "").await;
    assert_eq!(status, 200);
    let mut rest_lines = String::from_utf8(next_chunk(&mut rest_stream).await.unwrap().to_vec()).unwrap();
    assert!(gateway.calls_in_flight() >= 2);

    // A drain too short for them reports that calls were still running.
    assert!(!handle.drain(Duration::from_millis(50)).await);

    let started = Instant::now();
    let drain = tokio::spawn({
        let handle = handle.clone();
        async move { handle.drain(Duration::from_secs(10)).await }
    });

    // New calls during the drain: refused, in each protocol.
    let refused = client.get_order(get_order("orders/1")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let refused = rest_get(a, "/v1/orders/1").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["code"], 14);
    let mut web = WebClient::connect(a, Transport::Http1, WebEncoding::Binary).await;
    let reply = web
        .call("/demo.v1.OrderService/GetOrder", &[], &get_order("orders/1"))
        .await;
    assert_eq!(reply.grpc_status().as_deref(), Some("14"), "{reply:?}");

    // The streams in flight complete, every event, no error.
    let mut events = vec![first];
    while let Some(event) = grpc_stream.next().await {
        events.push(event.expect("the stream in flight failed during the drain"));
    }
    assert_eq!(events.len(), 4);
    assert_eq!(events[3].state, demo_pb::OrderState::Delivered as i32);
    while let Some(chunk) = next_chunk(&mut rest_stream).await {
        rest_lines.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(rest_lines.lines().count(), 4, "{rest_lines}");
    assert!(!rest_lines.contains("error"), "{rest_lines}");

    assert!(drain.await.unwrap(), "the drain timed out");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(gateway.calls_in_flight(), 0);
    assert!(!gateway.is_ready());
    app.stop().await;
}

#[tokio::test]
async fn shutdown_handle_drains_in_flight_streams_of_an_in_process_service() {
    drain_case(in_process::gateway().unwrap()).await;
}

#[tokio::test]
async fn shutdown_handle_drains_in_flight_streams_of_a_network_upstream() {
    let (_backends, gateway) = embed_axum_setup().await;
    drain_case(gateway).await;
}

// ---------------------------------------------------------------------------
// Mistakes reported by build().

#[test]
fn a_service_registered_twice_is_an_error() {
    let message = build_error(
        Gateway::builder()
            .descriptor_set(DESCRIPTOR_SET)
            .service(OrderDesk::new("a").into_server())
            .service(OrderDesk::new("b").into_server())
            .build(),
    );
    assert!(
        message.contains("demo.v1.OrderService") && message.contains("twice"),
        "{message}"
    );
}

#[test]
fn a_service_both_in_process_and_routed_to_an_upstream_is_an_error() {
    let message = build_error(
        Gateway::builder()
            .descriptor_set(DESCRIPTOR_SET)
            .service(OrderDesk::new("local").into_server())
            .upstream("orders", Upstream::with_endpoints(["127.0.0.1:1"]))
            .route(Route::new("demo.v1.OrderService", "orders"))
            .build(),
    );
    assert!(message.contains("demo.v1.OrderService"), "{message}");
}

#[test]
fn an_upstream_defined_twice_is_an_error() {
    let message = build_error(
        Gateway::builder()
            .descriptor_set(DESCRIPTOR_SET)
            .upstream("orders", Upstream::with_endpoints(["127.0.0.1:1"]))
            .upstream("orders", Upstream::with_endpoints(["127.0.0.1:2"]))
            .route(Route::new("demo.v1.OrderService", "orders"))
            .build(),
    );
    assert!(message.contains("\"orders\"") && message.contains("twice"), "{message}");
}

#[test]
fn a_route_to_an_upstream_that_does_not_exist_is_an_error() {
    let message = build_error(
        Gateway::builder()
            .descriptor_set(DESCRIPTOR_SET)
            .upstream("orders", Upstream::with_endpoints(["127.0.0.1:1"]))
            .route(Route::new("demo.v1.OrderService", "ordres"))
            .build(),
    );
    assert!(message.contains("routes[0].upstream"), "{message}");
    assert!(message.contains("\"ordres\""), "{message}");
    assert!(message.contains("did you mean \"orders\""), "{message}");
}

#[test]
fn an_in_process_service_without_its_descriptors_is_an_error() {
    // No descriptors at all, then descriptors that define other services.
    for builder in [
        Gateway::builder(),
        Gateway::builder().descriptor_set(testing_descriptors()),
    ] {
        let message = build_error(builder.service(OrderDesk::new("x").into_server()).build());
        assert!(message.contains("demo.v1.OrderService"), "{message}");
        assert!(message.contains("descriptor"), "{message}");
    }
}

#[test]
fn nothing_to_serve_is_an_error() {
    let message = build_error(Gateway::builder().descriptor_set(DESCRIPTOR_SET).build());
    assert!(message.contains("nothing to serve"), "{message}");
    let message = build_error(
        Gateway::builder()
            .upstream("orders", Upstream::with_endpoints(["127.0.0.1:1"]))
            .build(),
    );
    assert!(message.contains("nothing to serve"), "{message}");
}

// ---------------------------------------------------------------------------
// The host's tower stack (examples/custom_stack.rs).

#[tokio::test]
async fn custom_stack_refuses_calls_without_the_token_in_each_protocol() {
    let gateway = custom_stack::gateway().unwrap();
    let stack = custom_stack::stack(&gateway, "s3cret", 8);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(custom_stack::serve(listener, stack, async {
        let _ = stopped.await;
    }));

    let refused = rest_get(a, "/v1/orders/1").await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(refused.json()["code"], 16);
    let wrong = rest::request(a, "GET", "/v1/orders/1", &[("authorization", "Bearer guess")], "").await;
    assert_eq!(wrong.status, 401);
    let ok = rest::request(a, "GET", "/v1/orders/1", &[("authorization", "Bearer s3cret")], "").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["servedBy"], "behind-the-stack");

    for encoding in ENCODINGS {
        let mut web = WebClient::connect(a, Transport::Http2, encoding).await;
        let reply = web
            .call("/demo.v1.OrderService/GetOrder", &[], &get_order("orders/1"))
            .await;
        assert!(reply.is_trailers_only(), "{reply:?}");
        assert_eq!(reply.grpc_status().as_deref(), Some("16"));
        assert!(
            reply
                .header("content-type")
                .unwrap()
                .starts_with("application/grpc-web")
        );
        let reply = web
            .call(
                "/demo.v1.OrderService/GetOrder",
                &[("authorization", "Bearer s3cret")],
                &get_order("orders/1"),
            )
            .await;
        assert_eq!(reply.grpc_status().as_deref(), Some("0"), "{reply:?}");
    }

    let mut client = order_client(a).await;
    let refused = client.get_order(get_order("orders/1")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(get_order("orders/1"));
    request
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert_eq!(
        client.get_order(request).await.unwrap().into_inner().item,
        "espresso beans"
    );

    let _ = stop.send(());
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn custom_stack_sheds_calls_beyond_its_limit() {
    let gateway = custom_stack::gateway().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = listener.local_addr().unwrap();
    let server = tokio::spawn(custom_stack::serve(
        listener,
        custom_stack::stack(&gateway, "t", 2),
        std::future::pending(),
    ));
    let slow = [("authorization", "Bearer t"), ("x-demo-delay-ms", "800")];
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { rest::request(a, "GET", "/v1/orders/1", &slow, "").await.status }))
        .collect();
    // Wait until both slow calls hold their slots.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gateway.calls_in_flight() < 2 {
        assert!(Instant::now() < deadline, "the slow calls never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let shed = rest::request(a, "GET", "/v1/orders/1", &[("authorization", "Bearer t")], "").await;
    assert_eq!(shed.status, 503, "{}", shed.text());
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(shed.json()["code"], 14);
    let mut client = order_client(a).await;
    let mut request = tonic::Request::new(get_order("orders/1"));
    request
        .metadata_mut()
        .insert("authorization", "Bearer t".parse().unwrap());
    let shed = client.get_order(request).await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::Unavailable);

    for call in held {
        assert_eq!(call.await.unwrap(), 200);
    }
    // Slots come back once the answers are out.
    let ok = rest::request(a, "GET", "/v1/orders/1", &[("authorization", "Bearer t")], "").await;
    assert_eq!(ok.status, 200);
    server.abort();
}

// ---------------------------------------------------------------------------
// Readiness of an embedded gateway.

#[tokio::test]
async fn admin_router_reports_ready_for_an_embedded_gateway() {
    let gateway = in_process::gateway().unwrap();
    let app = Served::axum(
        Router::new()
            .nest("/admin", gateway.admin_router())
            .merge(gateway.router()),
    )
    .await;
    assert_eq!(rest_get(app.addr, "/v1/orders/1").await.status, 200);
    let ready = rest_get(app.addr, "/admin/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    app.stop().await;
}
