//! The bundled example service (`demo.v1.OrderService`) and the `demo`
//! command: three replicas on loopback, the gateway in front, and lines to
//! paste that show calls spreading across the replicas.
//!
//! Each answer carries the replica that served it (`served_by`). Request
//! metadata can make a call slow or fail, so the demo doubles as a backend
//! for trying the gateway's behaviour by hand:
//! `x-demo-delay-ms: 250` waits before answering, `x-demo-fail: 14` fails
//! with that gRPC code.

#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod pb {
    //! Code generated from `proto/demo/v1/orders.proto`.
    include!("generated/demo.v1.rs");
}

mod page;
mod service;

pub use service::{Backend, OrderDesk};

/// The demo's descriptor set (with imports), as compiled from `proto/`.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!("../../descriptors/demo.binpb");

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use crate::descriptors::PoolBuilder;
use crate::gateway::{BuildError, Gateway};

/// Names of the demo replicas.
pub const REPLICAS: [&str; 3] = ["replica-a", "replica-b", "replica-c"];

/// The gateway configuration the demo runs: three endpoints, one route.
pub fn demo_config(listen: SocketAddr, backends: &[SocketAddr]) -> Result<Config, crate::config::ConfigErrors> {
    let endpoints: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let yaml = format!(
        "listen: {listen}\ndescriptors: []\nupstreams:\n  orders:\n    endpoints: [{}]\nroutes:\n  - match: demo.v1.OrderService\n    upstream: orders\n",
        endpoints.join(", ")
    );
    Config::from_yaml(&yaml)
}

/// Builds a gateway for the demo configuration with the embedded demo descriptors.
pub fn demo_gateway(config: Config) -> Result<Gateway, BuildError> {
    let mut pool = PoolBuilder::new();
    pool.add_file_descriptor_set(DESCRIPTOR_SET, "demo descriptors")?;
    Gateway::with_descriptors(config, pool.build()?)
}

/// Runs the demo until `shutdown` resolves: replicas, gateway, and a printed guide.
pub async fn run(listen: SocketAddr, shutdown: impl std::future::Future<Output = ()>) -> Result<(), BuildError> {
    let mut backends = Vec::new();
    for name in REPLICAS {
        let backend = Backend::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), name)
            .await
            .map_err(|e| BuildError::Other(format!("cannot start demo backend {name}: {e}")))?;
        tracing::info!(replica = name, addr = %backend.addr(), "demo backend ready");
        backends.push(backend);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let page = page::serve_page()
        .await
        .map_err(|e| BuildError::Other(format!("cannot serve the demo page: {e}")))?;
    let mut config = demo_config(listen, &addrs)?;
    let mut cors = crate::config::Cors::allow_origins([format!("http://{page}")]);
    cors.allow_headers = vec!["x-demo-fail".into(), "x-demo-delay-ms".into()];
    config.cors = Some(cors);
    // The self-check below makes 300 calls; logging each would bury the guide.
    config.observability.access_log.sample_successes = 0.0;
    let gateway = demo_gateway(config)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| BuildError::Other(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener.local_addr().unwrap_or(listen);
    tracing::info!(%bound, "gateway ready");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::serve(
        gateway,
        listener,
        async {
            let _ = stop_rx.await;
        },
        crate::server::ServeOptions::default(),
    ));

    match spread_check(bound, 300, 8).await {
        Ok(counts) => {
            println!("\ngrpc-edge demo: gateway on http://{bound}, 3 replicas behind it.");
            println!("300 unary calls over ONE client connection (8 at a time) were served by:");
            for (replica, n) in &counts {
                println!("  {replica:<10} {n:>3} calls");
            }
            println!("(the peak_ewma balancer favours whichever replica answered fastest lately, so shares");
            println!(" wander; `balancer: round_robin` gives each exactly a third)");
        }
        Err(e) => println!("\ngrpc-edge demo: the self-check call failed: {e}"),
    }
    let base = format!("http://{bound}");
    let gateway_origin = format!("http://localhost:{}", bound.port());
    println!("\nIn a browser (gRPC-Web and REST, cross-origin under CORS):");
    println!("  open http://{page}/?gateway={gateway_origin}");
    println!("\nTry REST/JSON (curl):");
    println!("  curl -s {base}/v1/orders/1");
    println!("  curl -s '{base}/v1/orders?state=SHIPPED'");
    println!(
        "  curl -s -X POST {base}/v1/orders -H 'Content-Type: application/json' -d '{{\"item\":\"mug\",\"quantity\":2}}'"
    );
    println!("  curl -sN {base}/v1/orders/1:watch                                # NDJSON, one line per event");
    println!("  curl -sN -H 'Accept: text/event-stream' {base}/v1/orders/1:watch  # server-sent events");
    println!(
        "  curl -s -i {base}/v1/orders/404                                   # an error: HTTP 404 + google.rpc.Status"
    );
    println!("\nTry native gRPC (grpcurl; the gateway serves reflection, so no .proto is needed):");
    println!("  grpcurl -plaintext {bound} list");
    println!("  grpcurl -plaintext {bound} describe demo.v1.OrderService");
    println!("  grpcurl -plaintext -d '{{\"name\":\"orders/1\"}}' {bound} demo.v1.OrderService/GetOrder");
    println!(
        "  grpcurl -plaintext -d '{{\"name\":\"orders/1\",\"interval_ms\":300}}' {bound} demo.v1.OrderService/WatchOrder"
    );
    println!("  grpcurl -plaintext -H 'x-demo-fail: 14' -d '{{}}' {bound} demo.v1.OrderService/GetOrder");
    println!(
        "  grpcurl -plaintext -H 'grpc-timeout: 100m' -H 'x-demo-delay-ms: 500' -d '{{}}' {bound} demo.v1.OrderService/GetOrder"
    );
    println!("  grpcurl -plaintext {bound} grpc.health.v1.Health/Check");
    println!("\nThe access log (stderr) shows failed calls; the demo samples successful ones out");
    println!("(observability.access_log.sample_successes: 0.0).");
    println!("\nPress Ctrl-C to stop.\n");

    shutdown.await;
    let _ = stop_tx.send(());
    let _ = server.await;
    for backend in backends {
        backend.shutdown().await;
    }
    Ok(())
}

/// Makes `calls` unary calls over one connection, `concurrency` at a time;
/// returns calls per replica.
pub async fn spread_check(
    gateway: SocketAddr,
    calls: usize,
    concurrency: usize,
) -> Result<Vec<(String, usize)>, String> {
    use pb::order_service_client::OrderServiceClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let client = OrderServiceClient::new(channel);
    let concurrency = concurrency.max(1);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let mut client = client.clone();
        let share = calls / concurrency + usize::from(worker < calls % concurrency);
        workers.spawn(async move {
            let mut served = Vec::with_capacity(share);
            for _ in 0..share {
                let order = client
                    .get_order(pb::GetOrderRequest {
                        name: "orders/1".into(),
                    })
                    .await
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))?
                    .into_inner();
                served.push(order.served_by);
            }
            Ok::<_, String>(served)
        });
    }
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    while let Some(done) = workers.join_next().await {
        for replica in done.map_err(|e| e.to_string())?? {
            *counts.entry(replica).or_default() += 1;
        }
    }
    Ok(counts.into_iter().collect())
}
