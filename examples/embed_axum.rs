//! grpc-edge inside an axum app: the app keeps its own routes, and the
//! gateway — REST/JSON, gRPC-Web and native gRPC for `demo.v1.OrderService`,
//! balanced per call over two demo backends started here — is nested under
//! `/api`, with CORS on for a browser frontend on another origin.
//!
//! ```sh
//! cargo run --example embed_axum                             # 127.0.0.1:8080, until Ctrl-C
//! cargo run --example embed_axum -- --listen 127.0.0.1:3000
//! cargo run --example embed_axum -- --once                   # a free port, a few calls, exit
//! ```
//!
//! Then, from another terminal:
//!
//! ```sh
//! curl -s localhost:8080/                          # the app's own route
//! curl -s localhost:8080/api/v1/orders/1           # REST/JSON through the gateway
//! curl -s localhost:8080/admin/upstreams           # the gateway's admin view, mounted by the app
//! curl -si -X OPTIONS localhost:8080/api/v1/orders/1 \
//!      -H 'Origin: http://localhost:5173' -H 'Access-Control-Request-Method: GET'   # a CORS preflight
//! ```
//!
//! A gRPC-Web client uses `http://localhost:8080/api` as its base URL. Native
//! gRPC clients do not add path prefixes; serve the gateway at the root
//! (`Router::merge`) for them, as `tests/library.rs` shows.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use grpc_edge::config::{Cors, Route, Upstream};
use grpc_edge::demo::{Backend, DESCRIPTOR_SET};
use grpc_edge::{BuildError, Gateway};
use tokio::net::TcpListener;

mod support;
use support::{BoxError, check, http1};

/// The origin of the browser frontend allowed to call `/api` (e.g. a Vite dev server).
pub const FRONTEND_ORIGIN: &str = "http://localhost:5173";

/// Two demo replicas on loopback ports, standing for the real backends.
pub async fn start_backends() -> std::io::Result<Vec<Backend>> {
    let mut backends = Vec::new();
    for name in ["replica-a", "replica-b"] {
        backends.push(Backend::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), name).await?);
    }
    Ok(backends)
}

/// The gateway: the demo descriptors, one network upstream with the backends
/// as endpoints, one route, and CORS for [`FRONTEND_ORIGIN`].
pub fn gateway(backends: &[SocketAddr]) -> Result<Gateway, BuildError> {
    Gateway::builder()
        .descriptor_set(DESCRIPTOR_SET)
        .upstream(
            "orders",
            Upstream::with_endpoints(backends.iter().map(ToString::to_string)),
        )
        .route(Route::new("demo.v1.OrderService", "orders"))
        .cors(Cors {
            allow_origins: vec![FRONTEND_ORIGIN.into()],
            allow_credentials: false,
            allow_headers: vec!["authorization".into()],
            expose_headers: Vec::new(),
            max_age: grpc_edge::config::Duration::from_secs(600),
        })
        .build()
}

/// The host app: its own routes, the gateway under `/api` and the gateway's
/// admin endpoints under `/admin` (mount those on an internal port in production).
///
/// The gateway's router claims no path of its own, only a fallback, so
/// nesting or merging it never conflicts with the app's routes: the app's
/// routes win for their paths and the gateway answers everything else.
pub fn app(gateway: &Gateway) -> Router {
    Router::new()
        .route("/", get(|| async { "the host app's own page\n" }))
        .route("/version", get(|| async { env!("CARGO_PKG_VERSION") }))
        .nest("/api", gateway.router())
        .nest("/admin", gateway.admin_router())
}

pub use support::Options;

const USAGE: &str = "usage: cargo run --example embed_axum -- [--listen ADDR] [--once]";

/// Starts the backends, builds the gateway and serves the app until Ctrl-C
/// (or, with `--once`, until the self-check is done); then drains.
pub async fn run(options: Options) -> Result<(), BoxError> {
    let backends = start_backends().await?;
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let gateway = gateway(&addrs)?;
    let app = app(&gateway);

    let listener = TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drain = gateway.shutdown_handle();
    // ConnectInfo gives the gateway the client address for `x-forwarded-for`.
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(
        async move {
            let _ = stopped.await;
            // Refuse new calls, let calls in flight finish; then axum closes connections.
            drain.drain(Duration::from_secs(30)).await;
        },
    );
    let server = tokio::spawn(async move { server.await });
    println!("app on http://{addr}: its own routes at /, the gateway under /api, admin under /admin");

    let result = if options.once {
        self_check(addr).await
    } else {
        println!("  curl -s http://{addr}/api/v1/orders/1");
        println!("Ctrl-C stops it.");
        tokio::signal::ctrl_c().await.map_err(BoxError::from)
    };
    let _ = stop.send(());
    server.await??;
    gateway.close_upstreams();
    for backend in backends {
        backend.shutdown().await;
    }
    result
}

/// The app's route, REST through the gateway, and a CORS preflight.
pub async fn self_check(addr: SocketAddr) -> Result<(), BoxError> {
    let (status, _, body) = http1(addr, "GET", "/", &[]).await?;
    println!(
        "GET /                 -> {status} {}",
        String::from_utf8_lossy(&body).trim_end()
    );
    check(status == http::StatusCode::OK, "answer from the app's own route")?;

    let (status, _, body) = http1(addr, "GET", "/api/v1/orders/1", &[]).await?;
    println!("GET /api/v1/orders/1  -> {status} {}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    check(
        status == http::StatusCode::OK && json["servedBy"].as_str().is_some_and(|s| s.starts_with("replica-")),
        "REST answer",
    )?;

    let preflight = [
        ("origin", FRONTEND_ORIGIN),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type,x-grpc-web"),
    ];
    let (status, headers, _) = http1(addr, "OPTIONS", "/api/demo.v1.OrderService/GetOrder", &preflight).await?;
    let allowed = headers.get("access-control-allow-origin").and_then(|v| v.to_str().ok());
    println!("OPTIONS (preflight)   -> {status}, access-control-allow-origin: {allowed:?}");
    check(allowed == Some(FRONTEND_ORIGIN), "CORS preflight answer")?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    support::main(USAGE, Options::parse, run).await
}
