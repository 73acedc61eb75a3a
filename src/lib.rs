//! grpc-edge: one small edge server for gRPC services.
//!
//! It loads protobuf descriptors and serves, on one port, REST/JSON (mapped
//! by `google.api.http` annotations), gRPC-Web (binary and text, with CORS)
//! and native gRPC (passed through frame by frame). Each call goes to a
//! backend chosen per request by a built-in L7 balancer over pooled HTTP/2
//! connections, or straight to a tonic service in the same process.
//!
//! It is used three ways, each with a quick start below: as an ingress
//! binary, as a router inside your own server, and as the backend that
//! browser frontends call.
//!
//! # Ingress binary
//!
//! In a container in front of a fleet, the `grpc-edge` binary (feature
//! `cli`, on by default) runs from a YAML file (every key is documented in
//! `docs/configuration.md`):
//!
//! ```sh
//! grpc-edge check --config config/gateway.yaml   # validate it and print the route table
//! grpc-edge serve --config config/gateway.yaml   # serve until SIGTERM/SIGINT, then drain
//! ```
//!
//! `serve` is two library calls, which your own program can make as well:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = grpc_edge::Gateway::from_config_file("config/gateway.yaml")?;
//! let listen = gateway.config().listen;
//! # let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0)); // the doc test takes a free port
//! let listener = tokio::net::TcpListener::bind(listen).await?;
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! # let shutdown = async {}; // and stops at once
//! // HTTP/1.1 and h2c on one port; once `shutdown` resolves: stop accepting, GOAWAY, let calls finish.
//! grpc_edge::serve(gateway, listener, shutdown, grpc_edge::ServeOptions::default()).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Library router
//!
//! A Rust service builds a [`Gateway`] with [`Gateway::builder`] and mounts
//! [`Gateway::router`] in its own axum app, under a prefix (`nest`) or at the
//! root (`merge`). The gateway's router claims no path, only a fallback, so
//! your routes win for their own paths and the gateway answers the rest.
//! Behind it: network upstreams (`.upstream(..)` and `.route(..)`), or your
//! tonic services in-process (`.service(..)`), with no network hop.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use grpc_edge::Gateway;
//! use grpc_edge::demo::{DESCRIPTOR_SET, OrderDesk};
//! use tower::ServiceExt;
//!
//! let gateway = Gateway::builder()
//!     // The types, for REST and gRPC-Web: the `FILE_DESCRIPTOR_SET` your build script wrote.
//!     .descriptor_set(DESCRIPTOR_SET)
//!     // Your tonic server, in-process: it takes every call to its own service name.
//!     .service(OrderDesk::new("local").into_server())
//!     .build()?;
//!
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "my own page" }))
//!     .nest("/api", gateway.router());
//!
//! // `axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())`
//! // serves it; here, one request straight into the app:
//! let request = http::Request::get("/api/v1/orders/1").body(axum::body::Body::empty())?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! Without axum, [`Gateway::into_service`] is a plain `tower::Service` to
//! wrap in your own layers and serve with hyper. [`Gateway::admin_router`]
//! gives the admin endpoints (metrics, upstreams, routes) to mount wherever
//! you serve internal routes, and [`Gateway::shutdown_handle`] drains: new
//! calls are refused with `UNAVAILABLE` (REST: 503) while calls in flight
//! finish. `examples/embed_axum.rs`, `examples/in_process.rs` and
//! `examples/custom_stack.rs` show each in full.
//!
//! # Browser backend
//!
//! Frontends call the gateway directly: REST with `fetch`, gRPC-Web with a
//! stock client (`grpc-web`, `@connectrpc/connect-web`) whose base URL is the
//! gateway (plus the prefix, when it is nested). Allow their origins with
//! CORS, `cors:` in the YAML or [`GatewayBuilder::cors`] in code; the gateway
//! answers preflights itself:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use grpc_edge::config::{Cors, Duration};
//! use tower::ServiceExt;
//!
//! let gateway = grpc_edge::Gateway::builder()
//!     .descriptor_set(grpc_edge::demo::DESCRIPTOR_SET)
//!     .service(grpc_edge::demo::OrderDesk::new("local").into_server())
//!     .cors(Cors {
//!         allow_origins: vec!["https://app.example.com".into()],
//!         allow_credentials: false,
//!         allow_headers: vec!["authorization".into()],
//!         expose_headers: Vec::new(),
//!         max_age: Duration::from_secs(600),
//!     })
//!     .build()?;
//!
//! // What a browser sends before a gRPC-Web call from https://app.example.com:
//! let preflight = http::Request::options("/demo.v1.OrderService/GetOrder")
//!     .header("origin", "https://app.example.com")
//!     .header("access-control-request-method", "POST")
//!     .header("access-control-request-headers", "content-type,x-grpc-web,authorization")
//!     .body(axum::body::Body::empty())?;
//! let answer = gateway.into_service().oneshot(preflight).await?;
//! assert_eq!(answer.headers()["access-control-allow-origin"], "https://app.example.com");
//! # Ok(())
//! # }
//! ```
//!
//! ```js
//! // In the page: REST with fetch, gRPC-Web with connect-web.
//! const order = await (await fetch("https://edge.example.com/v1/orders/1")).json();
//! const transport = createGrpcWebTransport({ baseUrl: "https://edge.example.com" });
//! ```
//!
//! # Features
//!
//! - `cli` (default): the `grpc-edge` binary, its argument parser and log formatting (`logging`).
//! - `demo` (default): the example order service (`demo`) that the `demo` command, the examples and the tests use.
//!
//! With neither, the library alone builds (`cargo build --no-default-features --lib`).
//!
//! # Layout
//!
//! Public modules:
//!
//! - [`config`]: the YAML schema with every default, units, loading with key-path errors, `validate()`.
//! - [`descriptors`]: FileDescriptorSets, prost-reflect pools and `.proto` files (protox) merged into
//!   one pool; the method registry.
//! - [`server`]: the listener (HTTP/1.1 + h2c by the client preface, or TLS with ALPN), HTTP/2 and
//!   HTTP/1.1 serving, graceful shutdown; the admin listener.
//! - [`tls`]: listener and upstream TLS and mTLS, certificate loading, validation, rotation, expiry.
//! - `demo`: the example order service, its replicas, and the `demo` command.
//! - `logging`: log output for the binary.
//!
//! Inside, one concern each:
//!
//! - `gateway`: [`Gateway`] assembled once; classifies each request by content type for a front end.
//! - `builder`: [`GatewayBuilder`]: descriptors, upstreams, routes and in-process services in code;
//!   every mistake reported by `build()`.
//! - `embed`: the axum router, the tower service, the admin router, the shutdown handle.
//! - `passthrough`: the native gRPC front end: route, deadline, forwarding headers; no decoding.
//! - `grpc_web`: the gRPC-Web front end: binary and text framing, trailers as the last frame.
//! - `rest`: the REST front end: HttpRule path templates, the route trie, requests and responses, streams.
//! - `transcode`: JSON ⇄ protobuf by the proto3 JSON mapping, and the `google.rpc.Status` error body.
//! - `cors`: preflights answered and `Access-Control-*` headers added, from the `cors` section.
//! - `routing`: gRPC path → upstream (network cluster or in-process service) and its timeouts.
//! - `local`: in-process services: a tonic server standing where a network upstream would.
//! - `builtin`: the gateway's own `grpc.health.v1` and reflection services.
//! - `upstream`: clusters, discovery, the balancer, connection pools, outlier detection, health
//!   checks, limits, retries, the call itself. It knows nothing about the front ends.
//! - `admin`: `/metrics`, `/healthz`, `/readyz`, `/upstreams`, `/certs`, `/config`, `/routes`.
//! - `telemetry`: per-method metrics with gRPC codes, access logs, trace-context propagation, OTLP span export.
//! - `report`: the texts of `grpc-edge check` and `grpc-edge routes`.
//! - `status`, `grpc_timeout`, `grpc_frame`, `body`: shared vocabulary: gRPC codes and the answers the
//!   gateway makes itself, the `grpc-timeout` header, message framing, the one body type.

#![warn(missing_docs, unreachable_pub)]

mod admin;
mod body;
mod builder;
mod builtin;
pub mod config;
mod cors;
pub mod descriptors;
mod embed;
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
#[allow(dead_code)] // used by the REST and gRPC-Web front ends as they land
mod grpc_frame;
mod grpc_timeout;
mod grpc_web;
mod local;
#[cfg(feature = "cli")]
pub mod logging;
mod passthrough;
mod relay;
mod report;
mod rest;
mod routing;
pub mod server;
mod status;
mod telemetry;
pub mod tls;
mod transcode;
mod turn;
mod upstream;

#[cfg(feature = "demo")]
pub mod demo;

pub use body::Body;
pub use builder::GatewayBuilder;
pub use embed::{GatewayService, ShutdownHandle};
pub use gateway::{BuildError, CertsSnapshot, ConnInfo, Gateway};
pub use report::{check_warnings, route_lines};
pub use server::{ServeOptions, raise_open_file_limit, serve, serve_admin};
pub use status::{Code, Status};
pub use upstream::{ClusterSnapshot, DiscoverySnapshot, EndpointSnapshot, Resolve, SystemResolver};
