//! The call metric families, exactly: a known set of calls through every
//! front end — answered, failed trailers-only, failed in the trailers after a
//! message (HTTP 200), refused before routing — and then every
//! `grpc_server_*` series compared with a tally kept by the test. Then the
//! upstream families, and `observability.metrics: false`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio_stream::StreamExt;

use crate::exposition::{Exposition, Labels};
use crate::support::faults::{Edge, FaultBackend, raw_grpc};
use crate::support::rest_client::{self, post_json};
use crate::support::{
    EchoRequest, Transport, WebClient, WebEncoding, config_yaml, echo, grpc_frame, mixed_traffic_connections,
    server_stream_all,
};
use crate::{ECHO, scrape, scrape_open_metrics, scrape_until};

/// What the test knows about a call's labels: (protocol, grpc_type, service, method).
type Key = (&'static str, &'static str, String, String);

/// The series a method of `testing.v1.Echo` is counted under.
fn echo_key(protocol: &'static str, method: &str) -> Key {
    let kind = match method {
        "Unary" => "unary",
        "ServerStream" => "server_stream",
        "ClientStream" => "client_stream",
        "Bidi" => "bidi_stream",
        other => panic!("not an Echo method: {other}"),
    };
    (protocol, kind, ECHO.to_string(), method.to_string())
}

/// Where a path the descriptors do not know is counted.
fn unknown_key(protocol: &'static str) -> Key {
    (protocol, "unknown", "unknown".into(), "unknown".into())
}

/// The calls made, as the metrics should count them.
#[derive(Default)]
struct Tally {
    started: BTreeMap<Key, u64>,
    handled: BTreeMap<(Key, &'static str), u64>,
    received: BTreeMap<Key, u64>,
    sent: BTreeMap<Key, u64>,
}

impl Tally {
    /// One finished call; `received`/`sent` are stream messages (streams only).
    fn call(&mut self, key: Key, code: &'static str, received: u64, sent: u64) {
        *self.started.entry(key.clone()).or_default() += 1;
        *self.handled.entry((key.clone(), code)).or_default() += 1;
        *self.received.entry(key.clone()).or_default() += received;
        *self.sent.entry(key).or_default() += sent;
    }

    fn calls(&self) -> u64 {
        self.started.values().sum()
    }
}

/// The labels of a call series.
fn key_of(labels: &Labels) -> Key {
    let get = |name: &str| {
        labels
            .get(name)
            .unwrap_or_else(|| panic!("expected a {name} label on every call series: {labels:?}"))
            .clone()
    };
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    (
        leak(get("protocol")),
        leak(get("grpc_type")),
        get("grpc_service"),
        get("grpc_method"),
    )
}

/// A call family as a map, checking each sample has exactly `label_names`.
fn call_series(scraped: &Exposition, name: &str, label_names: &[&str]) -> BTreeMap<Labels, f64> {
    scraped
        .series(name)
        .into_iter()
        .map(|s| {
            let names: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            let mut wanted = label_names.to_vec();
            wanted.sort_unstable();
            assert_eq!(names, wanted, "expected {name} to carry exactly these labels");
            (s.labels.clone(), s.value)
        })
        .collect()
}

const CALL_LABELS: [&str; 4] = ["protocol", "grpc_type", "grpc_service", "grpc_method"];

/// Compares a per-call counter family with the tally: every tallied series
/// has its value, every other series is zero, and every Echo method and the
/// `unknown` series exist for every protocol (they are created at start-up).
fn assert_counter_family(scraped: &Exposition, name: &str, expected: &BTreeMap<Key, u64>) {
    let series: BTreeMap<Key, f64> = call_series(scraped, name, &CALL_LABELS)
        .iter()
        .map(|(labels, v)| (key_of(labels), *v))
        .collect();
    for protocol in ["grpc", "grpc_web", "rest"] {
        for method in ["Unary", "ServerStream", "ClientStream", "Bidi"] {
            let key = echo_key(protocol, method);
            assert!(
                series.contains_key(&key),
                "expected {name}{key:?} to exist from start-up"
            );
        }
        let key = unknown_key(protocol);
        assert!(
            series.contains_key(&key),
            "expected {name}{key:?} to exist from start-up"
        );
    }
    let wrong: Vec<String> = series
        .iter()
        .filter_map(|(key, value)| {
            let want = expected.get(key).copied().unwrap_or(0);
            (*value != want as f64).then(|| format!("{key:?}: expected {want}, got {value}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "expected {name} to match the calls made:\n{}",
        wrong.join("\n")
    );
    for key in expected.keys() {
        assert!(series.contains_key(key), "expected a series {name}{key:?}");
    }
}

/// `grpc_server_handled_total` holds exactly the tallied (call, code) series.
fn assert_handled(scraped: &Exposition, tally: &Tally) {
    let mut labels = CALL_LABELS.to_vec();
    labels.push("grpc_code");
    let series: BTreeMap<(Key, String), f64> = call_series(scraped, "grpc_server_handled_total", &labels)
        .iter()
        .map(|(l, v)| ((key_of(l), l["grpc_code"].clone()), *v))
        .collect();
    let expected: BTreeMap<(Key, String), f64> = tally
        .handled
        .iter()
        .map(|((key, code), n)| ((key.clone(), code.to_string()), *n as f64))
        .collect();
    assert_eq!(
        series, expected,
        "expected grpc_server_handled_total to hold exactly the calls made, each under its gRPC code"
    );
}

/// The latency histogram of every call series: the documented buckets,
/// cumulative counts that never fall, `+Inf` == `_count` == calls handled.
fn assert_histograms(scraped: &Exposition, tally: &Tally) {
    const BOUNDS: [f64; 15] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let counts = call_series(scraped, "grpc_server_handling_seconds_count", &CALL_LABELS);
    let sums = call_series(scraped, "grpc_server_handling_seconds_sum", &CALL_LABELS);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        sums.keys().collect::<Vec<_>>(),
        "expected a _sum for every _count"
    );
    let mut buckets: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for sample in scraped.series("grpc_server_handling_seconds_bucket") {
        let mut labels = sample.labels.clone();
        let le = labels.remove("le").expect("expected an le label on every bucket");
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()
                .unwrap_or_else(|_| panic!("expected a number in le, got {le:?}"))
        };
        buckets.entry(labels).or_default().push((bound, sample.value));
    }
    assert_eq!(
        buckets.keys().collect::<Vec<_>>(),
        counts.keys().collect::<Vec<_>>(),
        "expected buckets for exactly the series that have a _count"
    );
    for (labels, mut list) in buckets {
        let key = key_of(&labels);
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        let bounds: Vec<f64> = list.iter().map(|(b, _)| *b).collect();
        let mut expected_bounds = BOUNDS.to_vec();
        expected_bounds.push(f64::INFINITY);
        assert_eq!(bounds, expected_bounds, "expected the documented buckets for {key:?}");
        for pair in list.windows(2) {
            assert!(
                pair[0].1 <= pair[1].1,
                "expected cumulative buckets never to fall for {key:?}: {list:?}"
            );
        }
        let handled: u64 = tally
            .handled
            .iter()
            .filter(|((k, _), _)| *k == key)
            .map(|(_, n)| n)
            .sum();
        let count = counts[&labels];
        let inf = list.last().map(|(_, v)| *v);
        assert_eq!(inf, Some(count), "expected the +Inf bucket == _count for {key:?}");
        assert_eq!(count, handled as f64, "expected _count == calls handled for {key:?}");
        let sum = sums[&labels];
        assert!(
            sum >= 0.0 && sum.is_finite(),
            "expected a finite _sum >= 0 for {key:?}, got {sum}"
        );
        if count == 0.0 {
            assert_eq!(sum, 0.0, "expected _sum 0 with no calls for {key:?}");
        } else {
            // Every call took at most the whole test; none took a minute.
            assert!(sum < 60.0 * count, "expected a plausible _sum for {key:?}, got {sum}");
        }
    }
}

/// Every upstream endpoint series of `family`: endpoint → value (one upstream, `echo`).
fn per_endpoint(scraped: &Exposition, family: &str) -> BTreeMap<String, f64> {
    scraped
        .series(family)
        .into_iter()
        .map(|s| {
            assert_eq!(
                s.labels.get("upstream").map(String::as_str),
                Some("echo"),
                "expected upstream=\"echo\" on {family}"
            );
            assert_eq!(
                s.labels.len(),
                2,
                "expected only upstream and endpoint labels on {family}: {:?}",
                s.labels
            );
            (s.labels["endpoint"].clone(), s.value)
        })
        .collect()
}

/// `grpc_edge_upstream_calls_total` of one endpoint: code → calls.
fn upstream_calls(scraped: &Exposition, endpoint: &str) -> BTreeMap<String, f64> {
    scraped
        .series("grpc_edge_upstream_calls_total")
        .into_iter()
        .filter(|s| s.labels.get("endpoint").map(String::as_str) == Some(endpoint))
        .map(|s| (s.labels["grpc_code"].clone(), s.value))
        .collect()
}

fn codes(list: &[(&str, u64)]) -> BTreeMap<String, f64> {
    list.iter().map(|(c, n)| (c.to_string(), *n as f64)).collect()
}

/// The gateway in front of `backend`, outlier detection off so failures eject nothing.
async fn edge_without_ejections(backend: &FaultBackend, top_level: &str) -> Edge {
    let yaml = config_yaml(
        &[backend.addr],
        "outlier_detection:\n  consecutive_failures: 0\n  failure_percentage: 0",
        "",
    );
    Edge::start(&format!("{yaml}{top_level}")).await
}

async fn rest_call(edge: &Edge, path: &str, json: &str) -> rest_client::HttpResponse {
    post_json(edge.addr, path, json).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_counted_once_under_its_protocol_method_and_grpc_code() {
    let a = FaultBackend::start("a").await;
    let edge = edge_without_ejections(&a, "").await;
    let mut tally = Tally::default();

    // ---- native gRPC ----------------------------------------------------
    let mut grpc = edge.client().await;
    for i in 0..3 {
        grpc.unary(echo(&format!("ok-{i}")))
            .await
            .expect("expected the unary call to succeed");
    }
    for _ in 0..3 {
        tally.call(echo_key("grpc", "Unary"), "OK", 0, 0);
    }
    let status = grpc
        .unary(EchoRequest {
            fail_code: 5,
            ..echo("missing")
        })
        .await
        .expect_err("expected NOT_FOUND");
    assert_eq!(status.code(), tonic::Code::NotFound);
    tally.call(echo_key("grpc", "Unary"), "NOT_FOUND", 0, 0);
    // HTTP 200, one message, then UNAVAILABLE in the trailers.
    a.fail_in_trailers(100, 14);
    for _ in 0..2 {
        let status = grpc
            .unary(echo("late failure"))
            .await
            .expect_err("expected UNAVAILABLE in trailers");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        tally.call(echo_key("grpc", "Unary"), "UNAVAILABLE", 0, 0);
    }
    a.heal();
    let messages: Vec<_> = grpc
        .server_stream(EchoRequest { repeat: 3, ..echo("s") })
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("expected the stream to succeed");
    assert_eq!(messages.len(), 3);
    tally.call(echo_key("grpc", "ServerStream"), "OK", 1, 3);
    // A stream that sends one message, then fails in the trailers.
    let mut stream = grpc
        .server_stream(EchoRequest {
            repeat: 3,
            fail_code: 8,
            fail_after_first: true,
            ..echo("s")
        })
        .await
        .expect("expected the stream to start")
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok(), "expected a first message");
    let status = stream.next().await.unwrap().expect_err("expected the stream to fail");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    tally.call(echo_key("grpc", "ServerStream"), "RESOURCE_EXHAUSTED", 1, 1);
    let response = grpc
        .client_stream(tokio_stream::iter((0..4).map(|i| echo(&format!("c{i}")))))
        .await
        .expect("expected the client stream to succeed");
    assert_eq!(response.into_inner().received, 4);
    tally.call(echo_key("grpc", "ClientStream"), "OK", 4, 1);
    let replies: Vec<_> = grpc
        .bidi(tokio_stream::iter([echo("b0"), echo("b1")]))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("expected the bidi stream to succeed");
    assert_eq!(replies.len(), 2);
    tally.call(echo_key("grpc", "Bidi"), "OK", 2, 2);
    // Paths the descriptors do not know: a method of a routed service (the
    // route passes it through, the backend answers UNIMPLEMENTED, and its
    // one request message is counted, as the gateway cannot know it is not
    // a stream), and a service no route matches (refused, nothing read).
    let grpc_headers = [("content-type", "application/grpc"), ("te", "trailers")];
    for (path, received) in [("/testing.v1.Echo/NoSuchMethod", 1), ("/no.such.Service/Call", 0)] {
        let response = raw_grpc(edge.addr, path, &grpc_headers, grpc_frame(&echo("x"))).await;
        assert_eq!(
            response.grpc_status().as_deref(),
            Some("12"),
            "expected UNIMPLEMENTED for {path}"
        );
        tally.call(unknown_key("grpc"), "UNIMPLEMENTED", received, 0);
    }
    // Refused before it was sent (a bad grpc-timeout), but for a known method.
    let response = raw_grpc(
        edge.addr,
        "/testing.v1.Echo/Unary",
        &[
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "soon"),
        ],
        grpc_frame(&echo("x")),
    )
    .await;
    assert_eq!(
        response.grpc_status().as_deref(),
        Some("3"),
        "expected INVALID_ARGUMENT for a bad grpc-timeout"
    );
    tally.call(echo_key("grpc", "Unary"), "INVALID_ARGUMENT", 0, 0);

    // ---- gRPC-Web, binary over HTTP/1.1 ---------------------------------
    let mut web = WebClient::connect(edge.addr, Transport::Http1, WebEncoding::Binary).await;
    for _ in 0..2 {
        let reply = web.unary(echo("web")).await;
        assert_eq!(reply.grpc_status().as_deref(), Some("0"), "expected OK: {reply:?}");
        tally.call(echo_key("grpc_web", "Unary"), "OK", 0, 0);
    }
    a.fail_in_trailers(100, 14);
    let reply = web.unary(echo("web late failure")).await;
    assert_eq!(
        reply.status, 200,
        "expected HTTP 200 with the error only in the trailer frame"
    );
    assert_eq!(reply.messages.len(), 1, "expected the message before the failure");
    assert_eq!(
        reply.grpc_status().as_deref(),
        Some("14"),
        "expected UNAVAILABLE in the trailer frame"
    );
    tally.call(echo_key("grpc_web", "Unary"), "UNAVAILABLE", 0, 0);
    a.heal();
    let reply = web
        .server_stream(EchoRequest {
            repeat: 2,
            ..echo("ws")
        })
        .await;
    assert_eq!((reply.grpc_status().as_deref(), reply.messages.len()), (Some("0"), 2));
    tally.call(echo_key("grpc_web", "ServerStream"), "OK", 1, 2);
    let reply = web.call("/testing.v1.Echo/NoSuchMethod", &[], &echo("x")).await;
    assert_eq!(reply.grpc_status().as_deref(), Some("12"), "expected UNIMPLEMENTED");
    tally.call(unknown_key("grpc_web"), "UNIMPLEMENTED", 1, 0);

    // ---- gRPC-Web, text over HTTP/2 -------------------------------------
    let mut text = WebClient::connect(edge.addr, Transport::Http2, WebEncoding::Text).await;
    let reply = text.unary(echo("text")).await;
    assert_eq!(reply.grpc_status().as_deref(), Some("0"), "expected OK: {reply:?}");
    tally.call(echo_key("grpc_web", "Unary"), "OK", 0, 0);
    let reply = text
        .server_stream(EchoRequest {
            repeat: 3,
            fail_code: 9,
            fail_after_first: true,
            ..echo("ts")
        })
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!((reply.grpc_status().as_deref(), reply.messages.len()), (Some("9"), 1));
    tally.call(echo_key("grpc_web", "ServerStream"), "FAILED_PRECONDITION", 1, 1);

    // ---- REST -------------------------------------------------------------
    for _ in 0..2 {
        let response = rest_call(&edge, "/testing.v1.Echo/Unary", r#"{"message":"rest"}"#).await;
        assert_eq!(response.status, 200, "expected 200: {}", response.text());
        tally.call(echo_key("rest", "Unary"), "OK", 0, 0);
    }
    let response = rest_call(&edge, "/testing.v1.Echo/Unary", r#"{"message":"no","failCode":7}"#).await;
    assert_eq!(
        response.status,
        403,
        "expected PERMISSION_DENIED as 403: {}",
        response.text()
    );
    tally.call(echo_key("rest", "Unary"), "PERMISSION_DENIED", 0, 0);
    a.fail_in_trailers(100, 14);
    let response = rest_call(&edge, "/testing.v1.Echo/Unary", r#"{"message":"late"}"#).await;
    assert_eq!(
        response.status,
        503,
        "expected the trailers' UNAVAILABLE as 503: {}",
        response.text()
    );
    tally.call(echo_key("rest", "Unary"), "UNAVAILABLE", 0, 0);
    a.heal();
    let response = rest_call(&edge, "/testing.v1.Echo/ServerStream", r#"{"message":"rs","repeat":2}"#).await;
    assert_eq!(response.status, 200, "expected 200: {}", response.text());
    assert_eq!(
        response.text().lines().count(),
        2,
        "expected two NDJSON lines: {}",
        response.text()
    );
    tally.call(echo_key("rest", "ServerStream"), "OK", 1, 2);
    let response = rest_client::get(edge.addr, "/v1/no/such/thing").await;
    assert_eq!(response.status, 404, "expected 404 for a path no binding matches");
    tally.call(unknown_key("rest"), "NOT_FOUND", 0, 0);

    // ---- the scrape -------------------------------------------------------
    let backend_calls = a.calls();
    // The call metrics are final once the clients have their answers; the
    // upstream side lets go of a call a moment later.
    let scraped = scrape_until(
        &edge,
        "no upstream call in flight and every call counted",
        Duration::from_secs(5),
        |s| {
            s.get(
                "grpc_edge_upstream_in_flight",
                &[("upstream", "echo"), ("endpoint", &a.target())],
            ) == Some(0.0)
                && upstream_calls(s, &a.target()).values().sum::<f64>() == backend_calls as f64
        },
    )
    .await;
    assert_eq!(tally.calls(), 26, "expected the test to have made 26 calls");
    assert_counter_family(&scraped, "grpc_server_started_total", &tally.started);
    assert_handled(&scraped, &tally);
    assert_histograms(&scraped, &tally);
    assert_counter_family(&scraped, "grpc_server_msg_received_total", &tally.received);
    assert_counter_family(&scraped, "grpc_server_msg_sent_total", &tally.sent);
    assert_eq!(
        edge.gateway.calls_in_flight(),
        0,
        "expected no call in flight at the gateway"
    );

    // Label cardinality stays bounded: no raw path is a label value.
    for sample in &scraped.samples {
        for value in sample.labels.values() {
            assert!(
                !value.contains("NoSuchMethod") && !value.contains("no.such") && !value.contains('/'),
                "expected no raw path in any label, found {value:?} in {} {:?}",
                sample.name,
                sample.labels
            );
        }
    }

    // The upstream families.
    let target = a.target();
    assert_eq!(
        backend_calls, 23,
        "expected 23 calls to reach the backend (the other 3 were refused by the gateway)"
    );
    assert_eq!(
        upstream_calls(&scraped, &target),
        codes(&[
            ("OK", 13),
            ("NOT_FOUND", 1),
            ("PERMISSION_DENIED", 1),
            ("UNAVAILABLE", 4),
            ("RESOURCE_EXHAUSTED", 1),
            ("FAILED_PRECONDITION", 1),
            ("UNIMPLEMENTED", 2),
        ]),
        "expected grpc_edge_upstream_calls_total by code for the calls that reached {target}"
    );
    let one = |family: &str| per_endpoint(&scraped, family);
    let only = |v: f64| BTreeMap::from([(target.clone(), v)]);
    assert_eq!(
        one("grpc_edge_upstream_failures_total"),
        only(4.0),
        "expected the 4 UNAVAILABLE calls as failures"
    );
    assert_eq!(
        one("grpc_edge_upstream_enhance_your_calm_total"),
        only(0.0),
        "expected no connection closed with ENHANCE_YOUR_CALM"
    );
    assert_eq!(
        one("grpc_edge_upstream_in_flight"),
        only(0.0),
        "expected nothing in flight"
    );
    assert_eq!(
        one("grpc_edge_upstream_connections"),
        only(mixed_traffic_connections()),
        "expected one pooled connection (two with the relay)"
    );
    assert_eq!(
        one("grpc_edge_upstream_streams"),
        only(0.0),
        "expected no stream in use"
    );
    assert_eq!(
        one("grpc_edge_upstream_health_check_healthy"),
        only(1.0),
        "expected healthy (not checked)"
    );
    for (reason, _) in [
        ("consecutive_failures", 0),
        ("failure_percentage", 0),
        ("probe_failed", 0),
    ] {
        assert_eq!(
            scraped.get(
                "grpc_edge_upstream_ejections_total",
                &[("upstream", "echo"), ("endpoint", &target), ("reason", reason)]
            ),
            Some(0.0),
            "expected no ejection for {reason}"
        );
    }
    for state in ["healthy", "ejected", "probing", "unhealthy", "draining", "backing_off"] {
        let want = f64::from(state == "healthy");
        assert_eq!(
            scraped.get(
                "grpc_edge_upstream_state",
                &[("upstream", "echo"), ("endpoint", &target), ("state", state)]
            ),
            Some(want),
            "expected state {state} == {want}"
        );
    }
    for limit in ["max_requests", "max_streams", "max_pending"] {
        assert_eq!(
            scraped.get(
                "grpc_edge_upstream_overflows_total",
                &[("upstream", "echo"), ("limit", limit)]
            ),
            Some(0.0),
            "expected no overflow of {limit}"
        );
    }
    assert_eq!(
        scraped.get("grpc_edge_upstream_retries_total", &[("upstream", "echo")]),
        Some(0.0)
    );
    assert_eq!(
        scraped.get(
            "grpc_edge_upstream_retry_budget_exhausted_total",
            &[("upstream", "echo")]
        ),
        Some(0.0)
    );
    assert_eq!(
        scraped.get("grpc_edge_upstream_pending", &[("upstream", "echo")]),
        Some(0.0)
    );
    assert_eq!(
        scraped.get("grpc_edge_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0),
        "expected the build info gauge"
    );

    // OpenMetrics: the same series with the same values.
    let (open, _) = scrape_open_metrics(&edge).await;
    assert_eq!(
        open.types.get("grpc_server_handled").map(String::as_str),
        Some("counter")
    );
    assert_eq!(open.types.get("grpc_edge_build").map(String::as_str), Some("info"));
    let stable = |e: &Exposition| -> BTreeMap<(String, Labels), f64> {
        e.samples
            .iter()
            .filter(|s| s.name.starts_with("grpc_server_") || s.name.starts_with("grpc_edge_upstream_calls"))
            .map(|s| ((s.name.clone(), s.labels.clone()), s.value))
            .collect()
    };
    assert_eq!(
        stable(&open),
        stable(&scraped),
        "expected OpenMetrics to carry the same call series as the text format"
    );

    // Client connections still open: the gRPC and gRPC-Web clients held here.
    drop((web, text));
    let scraped = scrape_until(
        &edge,
        "only the tonic client's connection open",
        Duration::from_secs(5),
        |s| s.get("grpc_edge_open_connections", &[]) == Some(1.0),
    )
    .await;
    assert!(
        scraped
            .get("process_resident_memory_bytes", &[])
            .is_some_and(|v| v > 0.0)
    );
    drop(grpc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejections_and_retries_are_counted_per_endpoint_and_upstream() {
    let [a, b, c] = [
        FaultBackend::start("a").await,
        FaultBackend::start("b").await,
        FaultBackend::start("c").await,
    ];
    c.fail(100, 14);
    let upstream = "retry:\n  on: [unavailable]\noutlier_detection:\n  interval: 200ms\n  base_ejection_time: 30s\n  failure_percentage: 0";
    let edge = Edge::start(&config_yaml(&[a.addr, b.addr, c.addr], upstream, "")).await;
    let mut client = edge.client().await;
    // Until c has failed 5 times in a row and is ejected; each of its
    // failures is retried on a or b, so every call succeeds.
    let mut calls = 0u64;
    while edge.endpoint(&c).total_ejections == 0 {
        assert!(
            calls < 2000,
            "expected c to be ejected after 5 failures; {} calls reached it",
            c.calls()
        );
        client
            .unary(echo("x"))
            .await
            .expect("expected every call to succeed after a retry");
        calls += 1;
    }
    for _ in 0..10 {
        client
            .unary(echo("after"))
            .await
            .expect("expected calls to succeed after the ejection");
        calls += 1;
    }
    assert_eq!(c.calls(), 5, "expected c to get exactly the 5 calls that ejected it");
    let (ta, tb, tc) = (a.target(), b.target(), c.target());
    fn at(endpoint: &str) -> [(&'static str, &str); 2] {
        [("upstream", "echo"), ("endpoint", endpoint)]
    }
    let scraped = scrape_until(&edge, "every upstream call finished", Duration::from_secs(5), |s| {
        [&ta, &tb, &tc]
            .iter()
            .all(|e| s.get("grpc_edge_upstream_in_flight", &at(e)) == Some(0.0))
    })
    .await;

    assert_eq!(
        upstream_calls(&scraped, &tc),
        codes(&[("UNAVAILABLE", 5)]),
        "expected c's 5 failures by code"
    );
    assert_eq!(
        upstream_calls(&scraped, &ta),
        codes(&[("OK", a.calls())]),
        "expected a's calls, all OK"
    );
    assert_eq!(
        upstream_calls(&scraped, &tb),
        codes(&[("OK", b.calls())]),
        "expected b's calls, all OK"
    );
    assert_eq!(
        a.calls() + b.calls(),
        calls,
        "expected every call answered once by a or b"
    );
    for (endpoint, reason, want) in [
        (&tc, "consecutive_failures", 1.0),
        (&tc, "failure_percentage", 0.0),
        (&tc, "probe_failed", 0.0),
        (&ta, "consecutive_failures", 0.0),
        (&tb, "consecutive_failures", 0.0),
    ] {
        let mut labels = at(endpoint).to_vec();
        labels.push(("reason", reason));
        assert_eq!(
            scraped.get("grpc_edge_upstream_ejections_total", &labels),
            Some(want),
            "expected {want} ejections of {endpoint} for {reason}"
        );
    }
    for (endpoint, state) in [(&tc, "ejected"), (&ta, "healthy"), (&tb, "healthy")] {
        for other in ["healthy", "ejected", "probing"] {
            let mut labels = at(endpoint).to_vec();
            labels.push(("state", other));
            let want = f64::from(other == state);
            assert_eq!(
                scraped.get("grpc_edge_upstream_state", &labels),
                Some(want),
                "expected {endpoint} {other} == {want}"
            );
        }
    }
    assert_eq!(scraped.get("grpc_edge_upstream_failures_total", &at(&tc)), Some(5.0));
    assert_eq!(scraped.get("grpc_edge_upstream_failures_total", &at(&ta)), Some(0.0));
    let retries = a.calls() + b.calls() + c.calls() - calls;
    assert_eq!(retries, 5, "expected each of c's failures to be retried once");
    assert_eq!(
        scraped.get("grpc_edge_upstream_retries_total", &[("upstream", "echo")]),
        Some(retries as f64),
        "expected the retries the backends saw"
    );
    assert_eq!(
        scraped.get(
            "grpc_edge_upstream_retry_budget_exhausted_total",
            &[("upstream", "echo")]
        ),
        Some(0.0)
    );
    // The client saw only successes: handled OK for every call, nothing else.
    let handled = scraped.series("grpc_server_handled_total");
    assert_eq!(handled.len(), 1, "expected one handled series (OK): {handled:?}");
    assert_eq!(handled[0].labels["grpc_code"], "OK");
    assert_eq!(
        handled[0].value, calls as f64,
        "expected every call counted once, as OK, retries included"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflows_are_counted_by_limit_and_as_unavailable_calls() {
    let a = FaultBackend::start("a").await;
    let edge = Edge::start(&config_yaml(
        &[a.addr],
        "limits:\n  max_requests: 0\n  max_streams: 0",
        "",
    ))
    .await;
    let mut client = edge.client().await;
    for _ in 0..3 {
        let status = client
            .unary(echo("x"))
            .await
            .expect_err("expected max_requests to refuse");
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
    for _ in 0..2 {
        let status = client
            .server_stream(echo("s"))
            .await
            .expect_err("expected max_streams to refuse");
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
    let response = rest_call(&edge, "/testing.v1.Echo/Unary", r#"{"message":"r"}"#).await;
    assert_eq!(response.status, 503, "expected an overflow as 503: {}", response.text());
    assert_eq!(a.calls(), 0, "expected nothing to reach the backend");
    let scraped = scrape(&edge).await;
    for (limit, want) in [("max_requests", 4.0), ("max_streams", 2.0), ("max_pending", 0.0)] {
        assert_eq!(
            scraped.get(
                "grpc_edge_upstream_overflows_total",
                &[("upstream", "echo"), ("limit", limit)]
            ),
            Some(want),
            "expected {want} overflows of {limit}"
        );
    }
    assert!(
        scraped.series("grpc_edge_upstream_calls_total").is_empty(),
        "expected no endpoint to count a call it never got"
    );
    assert_eq!(
        scraped.get(
            "grpc_edge_upstream_failures_total",
            &[("upstream", "echo"), ("endpoint", &a.target())]
        ),
        Some(0.0)
    );
    let handled = |protocol: &str, kind: &str, method: &str| {
        scraped.get(
            "grpc_server_handled_total",
            &[
                ("protocol", protocol),
                ("grpc_type", kind),
                ("grpc_service", ECHO),
                ("grpc_method", method),
                ("grpc_code", "UNAVAILABLE"),
            ],
        )
    };
    assert_eq!(
        handled("grpc", "unary", "Unary"),
        Some(3.0),
        "expected the refused unary calls as UNAVAILABLE"
    );
    assert_eq!(
        handled("grpc", "server_stream", "ServerStream"),
        Some(2.0),
        "expected the refused streams as UNAVAILABLE"
    );
    assert_eq!(
        handled("rest", "unary", "Unary"),
        Some(1.0),
        "expected the refused REST call as UNAVAILABLE"
    );
    assert_eq!(
        scraped.series("grpc_server_handled_total").len(),
        3,
        "expected no other handled series"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_off_leaves_call_families_at_zero_while_upstream_families_report() {
    let a = FaultBackend::start("a").await;
    let edge = edge_without_ejections(&a, "observability:\n  metrics: false\n").await;
    let mut client = edge.client().await;
    for _ in 0..3 {
        client.unary(echo("x")).await.expect("expected OK");
    }
    client
        .unary(EchoRequest {
            fail_code: 5,
            ..echo("x")
        })
        .await
        .expect_err("expected NOT_FOUND");
    let messages: Vec<_> = server_stream_all(&mut client, EchoRequest { repeat: 2, ..echo("s") }).await;
    assert_eq!(messages.len(), 2);
    let mut web = WebClient::connect(edge.addr, Transport::Http1, WebEncoding::Binary).await;
    assert_eq!(web.unary(echo("w")).await.grpc_status().as_deref(), Some("0"));
    assert_eq!(
        rest_call(&edge, "/testing.v1.Echo/Unary", r#"{"message":"r"}"#)
            .await
            .status,
        200
    );
    assert_eq!(rest_client::get(edge.addr, "/v1/nowhere").await.status, 404);
    let response = raw_grpc(
        edge.addr,
        "/no.such.Service/Call",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        Bytes::from_static(&[0, 0, 0, 0, 0]),
    )
    .await;
    assert_eq!(response.grpc_status().as_deref(), Some("12"));

    let target = a.target();
    let scraped = scrape_until(&edge, "the 7 upstream calls finished", Duration::from_secs(5), |s| {
        upstream_calls(s, &target).values().sum::<f64>() == 7.0
            && s.get(
                "grpc_edge_upstream_in_flight",
                &[("upstream", "echo"), ("endpoint", &target)],
            ) == Some(0.0)
    })
    .await;
    // The families whose series are made at start-up stay declared, at zero;
    // `grpc_server_handled_total` gets a series only when a call finishes,
    // so it has none, and an empty family is not written at all (as the Go
    // client does).
    for family in [
        "grpc_server_started_total",
        "grpc_server_handling_seconds",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
    ] {
        assert!(scraped.types.contains_key(family), "expected {family} to stay declared");
    }
    assert!(
        !scraped.types.contains_key("grpc_server_handled_total"),
        "expected no handled family with metrics off"
    );
    for sample in scraped.samples.iter().filter(|s| s.name.starts_with("grpc_server_")) {
        assert_eq!(
            sample.value, 0.0,
            "expected {} {:?} to stay 0 with metrics off",
            sample.name, sample.labels
        );
    }
    assert!(
        scraped.series("grpc_server_handled_total").is_empty(),
        "expected no handled series with metrics off"
    );
    assert!(
        !scraped.series("grpc_server_started_total").is_empty(),
        "expected the started series to exist at 0"
    );
    assert_eq!(
        upstream_calls(&scraped, &target),
        codes(&[("OK", 6), ("NOT_FOUND", 1)]),
        "expected the upstream families to count with metrics off"
    );
    assert_eq!(
        scraped.get(
            "grpc_edge_upstream_connections",
            &[("upstream", "echo"), ("endpoint", &target)]
        ),
        Some(mixed_traffic_connections())
    );
    assert_eq!(a.calls(), 7);
}

/// The alert rules and the dashboard in `examples/monitoring/` read only
/// families the gateway exports: a renamed metric must not leave them
/// silently empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitoring_examples_read_only_exported_families() {
    let backend = FaultBackend::start("a").await;
    let edge = edge_without_ejections(&backend, "").await;
    // One call, so that every per-call family has a series.
    edge.client().await.unary(echo("x")).await.unwrap();
    let scraped = scrape(&edge).await;
    let label_names: std::collections::BTreeSet<&str> = scraped
        .samples
        .iter()
        .flat_map(|s| s.labels.keys().map(String::as_str))
        .collect();
    let root = crate::support::root().join("examples/monitoring");
    let mut names = BTreeMap::new();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if (word.starts_with("grpc_") || word.starts_with("process_")) && !label_names.contains(word) {
                names.entry(word.to_string()).or_insert(file);
            }
        }
    }
    assert!(names.len() >= 10, "expected the examples to read metrics: {names:?}");
    for (name, file) in &names {
        // A histogram's series are its family name plus a suffix.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| scraped.types.contains_key(*f)))
            .unwrap_or(name);
        assert!(
            scraped.types.contains_key(family),
            "{file} reads {name}, which /metrics does not export; families: {:?}",
            scraped.types.keys().collect::<std::collections::BTreeSet<_>>()
        );
    }
}
