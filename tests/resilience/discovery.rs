//! DNS discovery through a resolver the test controls: a new record takes
//! traffic within one refresh, a removed one drains (its calls finish, no
//! new ones), and while the resolver fails the last good set keeps serving.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_stream::StreamExt;

use crate::support::faults::{Edge, FakeResolver, FaultBackend, Load, LoadOptions};
use crate::support::{EchoRequest, echo, root};
use crate::wait_for;

const REFRESH: Duration = Duration::from_millis(200);
const SLACK: Duration = Duration::from_millis(300);

/// Round robin, so every endpoint in the set gets calls whatever its latency estimate.
fn dns_yaml() -> String {
    format!(
        "listen: 127.0.0.1:0\ndescriptors:\n  - {}\nupstreams:\n  echo:\n    dns: example.test:50051\n    dns_refresh: 200ms\n    balancer: round_robin\nroutes:\n  - match: testing.v1.Echo\n    upstream: echo\n",
        root().join("descriptors/testing.binpb").display()
    )
}

fn addrs(backends: &[&FaultBackend]) -> Vec<SocketAddr> {
    backends.iter().map(|b| b.addr).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_records_join_drain_and_outlive_a_resolver_outage() {
    let a = FaultBackend::start("a").await;
    let b = FaultBackend::start("b").await;
    let c = FaultBackend::start("c").await;
    let d = FaultBackend::start("d").await;
    let resolver = FakeResolver::new(&addrs(&[&a, &b, &c]));
    let edge = Edge::start_with(&dns_yaml(), Some(resolver.clone())).await;
    assert_eq!(resolver.hosts()[0], ("example.test".to_string(), 50051));
    let client = edge.client().await;
    let load = Load::start(
        &client,
        LoadOptions {
            tasks: 4,
            pace: Some(Duration::from_millis(1)),
            ..Default::default()
        },
    );
    wait_for(&edge, "calls on a, b and c", Duration::from_secs(2), || {
        a.calls() > 0 && b.calls() > 0 && c.calls() > 0
    })
    .await;
    assert_eq!(d.calls(), 0);

    // A fourth record appears.
    resolver.set(&addrs(&[&a, &b, &c, &d]));
    let took = wait_for(&edge, "d to take calls", Duration::from_secs(2), || d.calls() > 0).await;
    println!("new record took traffic after {took:?}");
    assert!(took <= REFRESH + SLACK, "after {took:?}");
    assert_eq!(edge.state(&d), "healthy");

    // A record disappears while a long stream runs on it.
    let mut streams = edge.client().await;
    let mut on_b = None;
    for _ in 0..60 {
        let response = streams
            .server_stream(EchoRequest {
                repeat: 15,
                delay_ms: 100,
                ..echo("long")
            })
            .await
            .unwrap();
        if response.metadata().get("x-served-by").unwrap() == "b" {
            on_b = Some(response.into_inner());
            break;
        }
    }
    let mut stream = on_b.expect("no stream landed on b");
    resolver.set(&addrs(&[&a, &c, &d]));
    let took = wait_for(&edge, "b draining", Duration::from_secs(2), || {
        edge.endpoint_at(b.addr).is_some_and(|e| e.state == "draining")
    })
    .await;
    assert!(took <= REFRESH + SLACK, "after {took:?}");
    let seen = edge.endpoint(&b);
    assert!(seen.in_flight >= 1, "{seen:#?}");
    let json = edge.admin_endpoint(&b).await;
    assert_eq!(json["state"], "draining", "{json:#}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let frozen = b.calls();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.calls(), frozen, "a draining endpoint got new calls");
    // Its call finishes undisturbed, then it is gone.
    let mut messages = 0;
    while let Some(message) = stream.next().await {
        assert_eq!(message.unwrap().served_by, "b");
        messages += 1;
    }
    assert_eq!(messages, 15);
    wait_for(&edge, "b to leave", Duration::from_secs(2), || {
        edge.endpoint_at(b.addr).is_none()
    })
    .await;

    // The resolver fails: the last good set keeps serving, and says why.
    resolver.fail("resolver down for the test");
    wait_for(&edge, "the resolver error to show", Duration::from_secs(2), || {
        edge.cluster("echo")
            .discovery
            .and_then(|d| d.last_error)
            .is_some_and(|e| e.contains("resolver down for the test"))
    })
    .await;
    let before = [a.calls(), c.calls(), d.calls()];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = [a.calls(), c.calls(), d.calls()];
    assert!(before.iter().zip(&after).all(|(x, y)| y > x), "{before:?} → {after:?}");
    let json = edge.upstreams_json().await;
    let error = json[0]["discovery"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("resolver down for the test"), "{json:#}");
    assert_eq!(json[0]["discovery"]["name"], "example.test:50051");
    let mut targets: Vec<&str> = json[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    targets.sort_unstable();
    let mut expected = vec![a.target(), c.target(), d.target()];
    expected.sort_unstable();
    assert_eq!(targets, expected);
    assert!(edge.upstreams_text().await.contains("last error: "));

    let stats = load.stop().await;
    assert_eq!(stats.failed(), 0, "{:?}", stats.detail().sample_errors);
}
