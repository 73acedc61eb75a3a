//! Connections to backends: a backend leaving gracefully (GOAWAY) under load
//! costs no call, a backend's small MAX_CONCURRENT_STREAMS opens a few
//! more connections, never more than the pool allows, and a backend that
//! closes a connection over the gateway's cancels is not blamed for it.

use std::time::{Duration, Instant};

use crate::support::faults::{
    Edge, FaultBackend, FaultOptions, Load, LoadOptions, RefusingBackend, StallingBackend, raw_grpc,
};
use crate::support::{EchoRequest, config_yaml, echo, grpc_frame};
use crate::{edge, fast_outlier, three, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_backend_shutdown_under_load_costs_no_call() {
    let [a, b, c] = three(["a", "b", "c"]).await;
    // While c is down its refused connects count as failures and may eject
    // it: keep ejections short so the restart can be seen.
    let edge = edge(&[&a, &b, &c], &fast_outlier(""), "").await;
    let client = edge.client().await;
    // ~1,000 calls a second: 8 tasks, each a call every ~8 ms.
    let load = Load::start(
        &client,
        LoadOptions {
            tasks: 8,
            pace: Some(Duration::from_millis(7)),
            request: EchoRequest {
                delay_ms: 1,
                ..echo("x")
            },
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let c_before = c.calls();
    assert!(c_before > 0, "c got no calls before its shutdown");
    c.shutdown_gracefully();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after_shutdown = c.calls();
    // And back: it takes traffic again once it listens.
    c.restart().await;
    let back = wait_for(&edge, "c to take calls again", Duration::from_secs(5), || {
        c.calls() > after_shutdown
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let elapsed = load.started.elapsed();
    let stats = load.stop().await;
    let detail = stats.detail();
    let rate = stats.total() as f64 / elapsed.as_secs_f64();
    println!(
        "{} calls at {rate:.0}/s, {} failed; c back after {back:?}; /upstreams:\n{}",
        stats.total(),
        stats.failed(),
        edge.upstreams_text().await
    );
    assert_eq!(stats.failed(), 0, "{:?}", detail.sample_errors);
    assert!(rate > 500.0, "only {rate:.0} calls/s");
    assert!(after_shutdown - c_before < 50, "c kept getting calls after GOAWAY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_max_concurrent_streams_opens_at_most_four_connections() {
    let backend = FaultBackend::start_with(
        "a",
        FaultOptions {
            max_concurrent_streams: Some(10),
            ..Default::default()
        },
    )
    .await;
    backend.set_latency(Duration::from_millis(200));
    let edge = edge(&[&backend], "", "").await;
    let client = edge.client().await;
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..100 {
        let mut client = client.clone();
        calls.push(tokio::spawn(async move { client.unary(echo("x")).await }));
    }
    // All four connections open and full, and calls queued behind them.
    // (Calls also wait while a connection is being opened, so `pending`
    // alone does not show the limit at work.)
    wait_for(&edge, "calls to wait for a slot", Duration::from_secs(2), || {
        backend.in_flight() >= 40 && edge.cluster("echo").pending > 0
    })
    .await;
    let json = edge.upstreams_json().await;
    let connections = json[0]["endpoints"][0]["connections"].as_array().unwrap().clone();
    assert!(!connections.is_empty() && connections.len() <= 4, "{json:#}");
    assert!(
        connections.iter().all(|streams| streams.as_u64().unwrap() <= 10),
        "{json:#}"
    );
    assert!(json[0]["pending"].as_u64().unwrap() > 0, "{json:#}");
    for call in calls {
        call.await.unwrap().unwrap();
    }
    println!("100 calls in {:?}", started.elapsed());
    assert!(backend.connections() <= 4, "{} connections", backend.connections());
    assert!(backend.max_in_flight() <= 40, "{} in flight", backend.max_in_flight());
    assert_eq!(backend.calls(), 100);
    let endpoint = edge.endpoint(&backend);
    assert!(endpoint.connections.len() <= 4);
    assert_eq!(endpoint.failures, 0);
}

/// A stream above a GOAWAY's last stream id was never processed: the
/// gateway must send it elsewhere, and the client must not notice. (The
/// test above sees this only now and then, when a call races the backend's
/// GOAWAY; this backend refuses every stream that way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_refused_by_goaway_is_sent_to_another_endpoint() {
    let refusing = RefusingBackend::start().await;
    let good = FaultBackend::start("good").await;
    let edge = Edge::start(&config_yaml(&[refusing.addr, good.addr], "balancer: round_robin", "")).await;
    let mut client = edge.client().await;
    let mut failed = Vec::new();
    for _ in 0..20 {
        if let Err(status) = client.unary(echo("x")).await {
            failed.push(format!("{:?}: {}", status.code(), status.message()));
        }
    }
    println!(
        "{} streams refused by GOAWAY; {} calls failed",
        refusing.refused(),
        failed.len()
    );
    assert!(
        refusing.refused() >= 5,
        "round robin sent {} calls to it",
        refusing.refused()
    );
    assert!(failed.is_empty(), "{} of 20 calls failed: {failed:?}", failed.len());
    assert_eq!(good.calls(), 20);
    let seen = edge.endpoint_at(refusing.addr).unwrap();
    assert_eq!((seen.failures, seen.total_ejections), (0, 0), "{seen:#?}");
}

/// A backend frozen for a moment (a GC pause, CPU throttling) reads, when it
/// thaws, every request the gateway sent meanwhile and every cancel the
/// gateway relayed after them (here: client deadlines running out). Its h2
/// server then counts more streams reset before it accepted them than it
/// allows, and closes the connection with `GOAWAY(ENHANCE_YOUR_CALM)`.
/// That is a verdict on the gateway's traffic, not a failure of the backend:
/// the calls lost with the connection fail UNAVAILABLE saying why, the
/// endpoint is not ejected, and the next calls go to it on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refusing_our_cancels_is_not_ejected_for_it() {
    let backend = StallingBackend::start(5).await;
    let edge = Edge::start(&config_yaml(&[backend.addr], &fast_outlier(""), "")).await;
    let client = edge.client().await;
    client.clone().unary(echo("warm-up")).await.unwrap();
    backend.stall();
    // The backend accepts one more stream, then freezes: its answer waits.
    let first = tokio::spawn({
        let mut client = client.clone();
        async move { client.unary(echo("first")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Six calls with no deadline, which will be lost with the connection:
    // one more than `consecutive_failures`.
    let lost: Vec<_> = (0..6)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.unary(echo("lost")).await })
        })
        .collect();
    // Ten whose 50 ms deadline runs out at the gateway, which cancels them
    // upstream: ten streams reset before the frozen backend accepted them.
    let headers = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "50m"),
    ];
    let mut expiring = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let addr = edge.addr;
        expiring
            .spawn(async move { raw_grpc(addr, "/testing.v1.Echo/Unary", &headers, grpc_frame(&echo("late"))).await });
    }
    while let Some(response) = expiring.join_next().await {
        let response = response.unwrap();
        assert_eq!(response.grpc_status().as_deref(), Some("4"), "{response:?}");
    }
    // Let the gateway's connection task write the cancels out before the thaw.
    tokio::time::sleep(Duration::from_millis(100)).await;
    backend.thaw();
    let _ = first.await.unwrap();
    let mut messages = Vec::new();
    for call in lost {
        match call.await.unwrap() {
            Ok(_) => panic!("a call the frozen backend held survived its GOAWAY(ENHANCE_YOUR_CALM)"),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                messages.push(status.message().to_string());
            }
        }
    }
    assert!(
        messages.iter().all(|m| m.contains("ENHANCE_YOUR_CALM")),
        "the client is not told why: {messages:#?}"
    );
    // Not held against the backend, which takes the next calls on a new connection.
    let mut client = client.clone();
    for _ in 0..20 {
        client.unary(echo("after")).await.unwrap();
    }
    assert!(backend.connections() >= 2, "{} connections", backend.connections());
    let seen = edge.endpoint_at(backend.addr).unwrap();
    assert_eq!((seen.failures, seen.total_ejections), (0, 0), "{seen:#?}");
    assert_eq!(seen.state, "healthy", "{seen:#?}");
    // Operators see it counted.
    assert_eq!(seen.enhance_your_calm, 1, "{seen:#?}");
    let metrics = edge.admin_get("/metrics", "text/plain").await.text();
    let series = format!(
        "grpc_edge_upstream_enhance_your_calm_total{{upstream=\"echo\",endpoint=\"{}\"}} 1",
        backend.addr
    );
    assert!(
        metrics.lines().any(|l| l == series),
        "no {series} in /metrics:\n{metrics}"
    );
    println!("lost calls were told: {}", messages[0]);
}

/// A backend that closes with requests still unread in its socket sends a
/// TCP reset right after its `GOAWAY(ENHANCE_YOUR_CALM)`, and the HTTP/2
/// connection then ends with "connection reset", not the GOAWAY. The
/// verdict is the same and must be read the same way: the lost calls say
/// why, and the endpoint is not charged for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_enhance_your_calm_followed_by_a_reset_is_not_held_against_the_backend() {
    let backend = RefusingBackend::start_resetting().await;
    // One more lost call than `consecutive_failures` allows.
    let edge = Edge::start(&config_yaml(
        &[backend.addr],
        &fast_outlier("consecutive_failures: 3"),
        "",
    ))
    .await;
    let mut client = edge.client().await;
    let mut messages = Vec::new();
    for _ in 0..4 {
        let status = client.unary(echo("lost")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        messages.push(status.message().to_string());
    }
    assert_eq!(backend.refused(), 4);
    assert!(
        messages.iter().all(|m| m.contains("ENHANCE_YOUR_CALM")),
        "the client is not told why: {messages:#?}"
    );
    let seen = edge.endpoint_at(backend.addr).unwrap();
    assert_eq!((seen.failures, seen.total_ejections), (0, 0), "{seen:#?}");
    assert_eq!(seen.enhance_your_calm, 4, "{seen:#?}");
}

/// A backend that stops answering (a frozen VM, a partition that drops
/// packets without a reset) leaves nothing to read: only an unanswered
/// keepalive PING tells the gateway the connection is dead. The call in
/// flight on it fails UNAVAILABLE saying so, instead of waiting for ever,
/// and the next call gets a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_backend_stops_answering_pings_is_given_up() {
    let backend = StallingBackend::start(100).await;
    let edge = Edge::start(&config_yaml(
        &[backend.addr],
        "http2:\n  keepalive_interval: 100ms\n  keepalive_timeout: 300ms",
        "",
    ))
    .await;
    let client = edge.client().await;
    // Twice, a moment apart: the second call takes whichever connection
    // carries calls from now on.
    client.clone().unary(echo("warm-up")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.clone().unary(echo("warm-up")).await.unwrap();
    backend.stall();
    let started = Instant::now();
    let status = client.clone().unary(echo("frozen")).await.unwrap_err();
    let took = started.elapsed();
    println!(
        "the call on the frozen connection ended after {took:?}: {}",
        status.message()
    );
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("keepalive"), "{status:?}");
    // One interval to the ping, one timeout for its answer, and a check tick.
    assert!(took >= Duration::from_millis(300), "ended after {took:?}");
    assert!(took < Duration::from_secs(3), "ended after {took:?}");
    backend.thaw();
    client.clone().unary(echo("after")).await.unwrap();
}
