//! The `grpc-edge` binary as operators run it: graceful shutdown on SIGTERM,
//! and memory that stays flat while a large stream passes (back-pressure).

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio_stream::StreamExt;

fn write_config(backends: &[std::net::SocketAddr], upstream_extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        config_yaml(backends, upstream_extra, ""),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish_and_refuses_new_connections() {
    let backend = Backend::start("b1").await;
    let dir = write_config(&[backend.addr], "");
    let mut gateway = GatewayProcess::start(&dir.path().join("gateway.yaml"));
    let mut client = client(gateway.addr).await;
    // A stream that takes ~1 s, and a unary call that takes ~600 ms, both in flight.
    let stream = client
        .server_stream(EchoRequest {
            repeat: 10,
            delay_ms: 100,
            ..echo("s")
        })
        .await
        .unwrap()
        .into_inner();
    let mut unary_client = client.clone();
    let unary = tokio::spawn(async move {
        unary_client
            .unary(EchoRequest {
                delay_ms: 600,
                ..echo("u")
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    gateway.terminate();
    let signalled = Instant::now();
    // New connections are refused soon after the signal.
    let refused = async {
        loop {
            if tokio::net::TcpStream::connect(gateway.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), refused)
        .await
        .expect("listener still accepting after SIGTERM");

    let messages: Vec<_> = stream
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("stream in flight was cut");
    assert_eq!(messages.len(), 10);
    unary.await.unwrap().expect("unary call in flight was cut");
    let exit = tokio::task::spawn_blocking(move || gateway.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert!(signalled.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_stream_passes_without_the_gateway_buffering_it() {
    let backend = Backend::start("b1").await;
    let dir = write_config(&[backend.addr], "");
    let gateway = GatewayProcess::start(&dir.path().join("gateway.yaml"));
    let mut client = client(gateway.addr).await;
    // Warm up: connections and allocator arenas exist before the baseline.
    for _ in 0..20 {
        client
            .unary(EchoRequest {
                response_size: 64 << 10,
                ..echo("warm")
            })
            .await
            .unwrap();
    }
    let (_, baseline_rss) = gateway.memory_kib();
    let mut stream = client
        .server_stream(EchoRequest {
            repeat: 1024,
            response_size: 64 << 10,
            ..echo("big")
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = 0usize;
    let mut peak_rss = baseline_rss;
    while let Some(message) = stream.next().await {
        received += message.unwrap().payload.len();
        // A slow reader: if the gateway did not apply back-pressure, the
        // backend's 64 MiB would pile up in the gateway.
        if received.is_multiple_of(4 << 20) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            peak_rss = peak_rss.max(gateway.memory_kib().1);
        }
    }
    assert_eq!(received, 64 << 20);
    let growth_mib = (peak_rss.saturating_sub(baseline_rss)) as f64 / 1024.0;
    println!(
        "gateway RSS: baseline {} KiB, peak during the stream {} KiB (+{growth_mib:.1} MiB)",
        baseline_rss, peak_rss
    );
    assert!(
        growth_mib < 8.0,
        "gateway RSS grew by {growth_mib:.1} MiB while streaming 64 MiB"
    );
}
