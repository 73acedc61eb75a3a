//! The admin endpoints as an operator reads them: `/upstreams` in text with
//! every endpoint state at once, `/readyz` through a shutdown, and
//! `/config` with its defaults filled in.

use std::time::Duration;

use tokio_stream::StreamExt;

use crate::support::faults::{Edge, FakeResolver, FaultBackend, Load, LoadOptions};
use crate::support::{EchoRequest, echo, root};
use crate::wait_for;

const STATES: [&str; 6] = ["healthy", "ejected", "probing", "unhealthy", "draining", "backing_off"];

/// Four upstreams, one per way an endpoint leaves service:
/// - `echo` (unary calls): a healthy, b failing (ejected), e ejected and
///   then probing with a slow probe;
/// - `checked` (client streams): c answering NOT_SERVING to health checks;
/// - `dns` (server streams): f and g from DNS, g removed mid-stream (draining);
/// - `spare` (bidi): a port nobody listens on (backing off).
fn four_upstreams(echo: &[&FaultBackend], checked: &FaultBackend, dead: std::net::SocketAddr) -> String {
    let list = |bs: &[&FaultBackend]| {
        bs.iter()
            .map(|b| format!("\"{}\"", b.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "listen: 127.0.0.1:0
descriptors:
  - {descriptors}
upstreams:
  echo:
    endpoints: [{echo}]
    outlier_detection:
      interval: 200ms
      base_ejection_time: 300ms
      max_ejection_percent: 100
  checked:
    endpoints: [\"{checked}\"]
    health_check:
      interval: 100ms
      timeout: 250ms
  dns:
    dns: example.test:50051
    dns_refresh: 200ms
  spare:
    endpoints: [\"{dead}\"]
    outlier_detection:
      consecutive_failures: 0
      failure_percentage: 0
routes:
  - match: testing.v1.Echo/Unary
    upstream: echo
  - match: testing.v1.Echo/ClientStream
    upstream: checked
  - match: testing.v1.Echo/ServerStream
    upstream: dns
  - match: testing.v1.Echo/Bidi
    upstream: spare
",
        descriptors = root().join("descriptors/testing.binpb").display(),
        echo = list(echo),
        checked = checked.addr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_form_of_upstreams_names_every_state() {
    let a = FaultBackend::start("a").await;
    let b = FaultBackend::start("b").await;
    let e = FaultBackend::start("e").await;
    let c = FaultBackend::start("c").await;
    let f = FaultBackend::start("f").await;
    let g = FaultBackend::start("g").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    b.fail(100, 14);
    e.fail(100, 14);
    c.set_serving(false);
    let resolver = FakeResolver::new(&[f.addr, g.addr]);
    let edge = Edge::start_with(&four_upstreams(&[&a, &b, &e], &c, dead), Some(resolver.clone())).await;
    let client = edge.client().await;
    let load = Load::start(
        &client,
        LoadOptions {
            tasks: 2,
            pace: Some(Duration::from_millis(2)),
            ..Default::default()
        },
    );
    // Calls to the dead port keep it backing off.
    let spare = tokio::spawn({
        let mut client = client.clone();
        async move {
            for _ in 0..1000 {
                let (_tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
                let _ = client.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    // e: ejected, then its probe is slow.
    wait_for(&edge, "e ejected", Duration::from_secs(3), || {
        edge.state(&e) == "ejected"
    })
    .await;
    e.heal();
    e.set_latency(Duration::from_secs(5));
    // g: a long stream on it, then its record goes away.
    let mut streams = edge.client().await;
    let mut on_g = None;
    for _ in 0..60 {
        let response = streams
            .server_stream(EchoRequest {
                repeat: 100,
                delay_ms: 50,
                ..echo("long")
            })
            .await
            .unwrap();
        if response.metadata().get("x-served-by").unwrap() == "g" {
            on_g = Some(response.into_inner());
            break;
        }
    }
    let mut on_g = on_g.expect("no stream landed on g");
    on_g.next().await.unwrap().unwrap();
    resolver.set(&[f.addr]);
    wait_for(&edge, "e probing", Duration::from_secs(3), || {
        edge.state(&e) == "probing" && e.in_flight() == 1
    })
    .await;

    // Every state at once (b may be in the middle of its own quick probe:
    // look again until the picture is whole).
    let mut text = String::new();
    for _ in 0..100 {
        text = edge.upstreams_text().await;
        if STATES.iter().all(|s| text.contains(s)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{text}");
    for state in STATES {
        assert!(text.contains(state), "no {state} in:\n{text}");
    }
    let line = |backend: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(backend))
            .unwrap_or_else(|| panic!("no line for {backend}:\n{text}"))
            .to_string()
    };
    assert!(line(&a.target()).contains("healthy"));
    let b_line = line(&b.target());
    assert!(b_line.contains("ejected") || b_line.contains("probing"), "{b_line}");
    assert!(
        b_line.contains("consecutive failures") || b_line.contains("probe call failed"),
        "{b_line}"
    );
    assert!(line(&e.target()).contains("probing"));
    assert!(line(&c.target()).contains("unhealthy"));
    assert!(line(&g.target()).contains("draining"));
    let dead_line = line(&dead.to_string());
    assert!(
        dead_line.contains("backing_off") && dead_line.to_lowercase().contains("refused"),
        "{dead_line}"
    );
    for cluster in ["echo", "checked", "dns", "spare"] {
        assert!(text.contains(&format!("upstream {cluster}:")), "{text}");
    }
    assert!(text.contains("dns example.test:50051 every 200ms"), "{text}");
    assert_eq!(text.matches("ENDPOINT").count(), 4, "one table per upstream");

    spare.abort();
    drop(on_g);
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_shutdown_begins_and_config_shows_defaults() {
    let a = FaultBackend::start("a").await;
    let edge = crate::edge(&[&a], "", "").await;
    let healthz = edge.admin_get("/healthz", "*/*").await;
    assert_eq!((healthz.status.as_u16(), healthz.text().as_str()), (200, "ok\n"));
    assert_eq!(edge.admin_get("/readyz", "*/*").await.status, 200);

    let config = edge.admin_get("/config", "*/*").await;
    assert_eq!(config.status, 200);
    assert_eq!(config.header("content-type"), Some("application/json"));
    let config = config.json();
    let echo_upstream = &config["upstreams"]["echo"];
    for (path, expected) in [
        ("/balancer", serde_json::json!("peak_ewma")),
        ("/connect_timeout", "5s".into()),
        ("/dns_refresh", "5s".into()),
        ("/pool/max_connections_per_endpoint", 4.into()),
        ("/pool/max_streams_per_connection", 100.into()),
        ("/pool/max_connection_age", "30m".into()),
        ("/limits/max_requests", 10000.into()),
        ("/limits/max_streams", 10000.into()),
        ("/limits/max_pending", 1024.into()),
        ("/limits/pending_timeout", "3s".into()),
        ("/outlier_detection/consecutive_failures", 5.into()),
        ("/outlier_detection/failure_percentage", 50.into()),
        ("/outlier_detection/interval", "10s".into()),
        ("/outlier_detection/base_ejection_time", "30s".into()),
        ("/outlier_detection/max_ejection_time", "5m".into()),
        ("/outlier_detection/max_ejection_percent", 50.into()),
        ("/retry/max_attempts", 3.into()),
        ("/retry/budget_percent", 20.into()),
        ("/retry/backoff/base", "25ms".into()),
        ("/retry/max_replay_buffer", "64KiB".into()),
    ] {
        assert_eq!(
            echo_upstream.pointer(path),
            Some(&expected),
            "upstreams.echo{path}: {config:#}"
        );
    }
    assert_eq!(config["routes"][0]["timeout"], "15s", "{config:#}");
    assert_eq!(config["routes"][0]["stream_idle_timeout"], "5m", "{config:#}");
    assert!(
        echo_upstream.get("health_check").is_none_or(|h| h.is_null()),
        "{config:#}"
    );

    // A stream in flight keeps the gateway draining once shutdown begins.
    let mut client = edge.client().await;
    let mut stream = client
        .server_stream(EchoRequest {
            repeat: 10,
            delay_ms: 100,
            ..echo("drain")
        })
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    edge.begin_shutdown();
    wait_for(&edge, "not ready", Duration::from_secs(2), || !edge.gateway.is_ready()).await;
    let readyz = edge.admin_get("/readyz", "*/*").await;
    assert_eq!(readyz.status, 503, "{}", readyz.text());
    let mut rest = 0;
    while let Some(message) = stream.next().await {
        message.unwrap();
        rest += 1;
    }
    assert_eq!(rest, 9, "the drain let the stream finish");
    edge.shutdown().await;
}
