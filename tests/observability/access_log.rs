//! The access log as the `grpc-edge` binary writes it: the real binary
//! (`serve`, a temporary config, a real tonic backend), calls of every
//! protocol, SIGTERM so it drains and flushes, and then every stderr line
//! read back — JSON with `--log-format json`, `key=value` text otherwise —
//! and each call's line checked field by field against what the test
//! knows about the call. Then the switches that silence it:
//! `access_log.enabled: false`, `sample_successes: 0.0` (failures only) and
//! a `RUST_LOG` filter that excludes the access target.
//!
//! [`drive`] and [`check`] are shared with `events`, which checks the same
//! calls as `tracing` events of a gateway embedded as a library.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use crate::ECHO;
use crate::support::faults::{FaultBackend, raw_grpc};
use crate::support::gateway_logs::{LogFormat, LoggedGateway};
use crate::support::rest_client;
use crate::support::{EchoRequest, EchoResponse, Transport, WebClient, WebEncoding, config_yaml, echo, grpc_frame};

/// The fields every access line carries (beside the format's own:
/// timestamp, level, message and target), in the order they are written.
pub(crate) const FIELDS: [&str; 18] = [
    "protocol",
    "http_method",
    "path",
    "grpc_service",
    "grpc_method",
    "upstream",
    "grpc_code",
    "grpc_message",
    "http_status",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "messages_in",
    "messages_out",
    "client",
    "retries",
    "peer",
    "trace_id",
];

/// The fields whose values are whole numbers.
const INTEGERS: [&str; 6] = [
    "http_status",
    "bytes_in",
    "bytes_out",
    "messages_in",
    "messages_out",
    "retries",
];

/// The access log's target.
pub(crate) const TARGET: &str = "grpc_edge::access";

/// The upstream configuration every access-log test uses: one endpoint,
/// UNAVAILABLE retried, outlier detection off (so failures eject nothing).
const UPSTREAM: &str =
    "retry:\n  on: [unavailable]\noutlier_detection:\n  consecutive_failures: 0\n  failure_percentage: 0";

/// The gateway configuration in front of `backend`, with `top_level` added.
pub(crate) fn config(backend: &FaultBackend, top_level: &str) -> String {
    format!("{}{top_level}", config_yaml(&[backend.addr], UPSTREAM, ""))
}

/// A W3C `traceparent` whose trace id is unique to call `n`, and that id.
fn trace(n: u32) -> (String, String) {
    let trace_id = format!("4bf92f3577b34da6a3ce9290{n:08x}");
    (format!("00-{trace_id}-00f067aa0ba902b7-01"), trace_id)
}

/// The length of a message as one gRPC frame (5-byte prefix + message).
fn framed(message: &impl Message) -> u64 {
    5 + message.encoded_len() as u64
}

/// One call the test made, and what its access line must say.
pub(crate) struct Expected {
    /// What the call was, for failure messages.
    pub(crate) what: String,
    /// Every field but `duration_ms`, exactly.
    pub(crate) fields: BTreeMap<&'static str, Value>,
    /// A lower bound on `duration_ms` the call's own delay sets.
    pub(crate) min_duration_ms: f64,
    /// When the client sent it, and how long it waited for the answer: the
    /// gateway's line is written in between, and its duration fits in it.
    pub(crate) sent: SystemTime,
    pub(crate) waited: Duration,
}

/// What a call looked like, from the client's side; turned into `Expected`.
struct Call<'a> {
    what: &'a str,
    protocol: &'a str,
    http_method: &'a str,
    path: &'a str,
    /// `None`: counted as `unknown` (a path no route matches).
    method: Option<&'a str>,
    /// The endpoint that served it; `None`: the gateway answered itself (`-`).
    upstream: Option<&'a str>,
    code: &'a str,
    message: &'a str,
    http_status: u16,
    bytes_in: u64,
    bytes_out: u64,
    messages_in: u64,
    messages_out: u64,
    retries: u64,
    trace_id: &'a str,
    min_duration_ms: f64,
}

/// Times a call from the client's side.
struct Stopwatch {
    sent: SystemTime,
    started: Instant,
}

impl Stopwatch {
    fn start() -> Self {
        Self {
            sent: SystemTime::now(),
            started: Instant::now(),
        }
    }

    fn expect(self, call: Call<'_>) -> Expected {
        let waited = self.started.elapsed();
        let (service, method) = match call.method {
            Some(method) => (ECHO, method),
            None => ("unknown", "unknown"),
        };
        let fields = BTreeMap::from([
            ("protocol", json!(call.protocol)),
            ("http_method", json!(call.http_method)),
            ("path", json!(call.path)),
            ("grpc_service", json!(service)),
            ("grpc_method", json!(method)),
            ("upstream", json!(call.upstream.unwrap_or("-"))),
            ("grpc_code", json!(call.code)),
            ("grpc_message", json!(call.message)),
            ("http_status", json!(call.http_status)),
            ("bytes_in", json!(call.bytes_in)),
            ("bytes_out", json!(call.bytes_out)),
            ("messages_in", json!(call.messages_in)),
            ("messages_out", json!(call.messages_out)),
            ("client", json!("127.0.0.1")),
            ("retries", json!(call.retries)),
            ("peer", json!("")),
            ("trace_id", json!(call.trace_id)),
        ]);
        Expected {
            what: call.what.to_string(),
            fields,
            min_duration_ms: call.min_duration_ms,
            sent: self.sent,
            waited,
        }
    }
}

fn traced<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("a valid traceparent"));
    request
}

/// Makes a known set of calls through the gateway at `addr` in front of
/// `backend` (configured by [`config`], never called before): native gRPC
/// (OK after a delay, OK after a retry, failed trailers-only, failed in the
/// trailers after a message, a server stream, a client stream, refused for
/// an unknown service), gRPC-Web binary over HTTP/1.1 (OK) and text over
/// HTTP/2 (a stream failing in its trailer frame, HTTP 200), and REST (OK,
/// failed, a server stream as NDJSON, no route). Returns what each call's
/// access line must say.
pub(crate) async fn drive(addr: SocketAddr, backend: &FaultBackend) -> Vec<Expected> {
    let target = backend.target();
    let upstream = Some(target.as_str());
    let mut expected = Vec::new();
    let mut grpc = crate::support::client(addr).await;
    let unary = "/testing.v1.Echo/Unary";

    // Of the next calls, every second one fails UNAVAILABLE trailers-only
    // (the first does not): call 1 is answered, call 2 fails and its retry
    // is answered.
    backend.fail(50, 14);
    let (traceparent, trace_id) = trace(1);
    let request = EchoRequest {
        delay_ms: 250,
        ..echo("slow")
    };
    let clock = Stopwatch::start();
    let reply = grpc
        .unary(traced(request.clone(), &traceparent))
        .await
        .expect("expected OK")
        .into_inner();
    expected.push(clock.expect(Call {
        what: "gRPC unary, answered after 250 ms",
        protocol: "grpc",
        http_method: "POST",
        path: unary,
        method: Some("Unary"),
        upstream,
        code: "OK",
        message: "",
        http_status: 200,
        bytes_in: framed(&request),
        bytes_out: framed(&reply),
        messages_in: 0,
        messages_out: 0,
        retries: 0,
        trace_id: &trace_id,
        min_duration_ms: 250.0,
    }));

    let (traceparent, trace_id) = trace(2);
    let request = echo("retried");
    let before = backend.calls();
    let clock = Stopwatch::start();
    let reply = grpc
        .unary(traced(request.clone(), &traceparent))
        .await
        .expect("expected OK after a retry")
        .into_inner();
    assert_eq!(
        backend.calls() - before,
        2,
        "expected the call to reach the backend twice (a retry)"
    );
    expected.push(clock.expect(Call {
        what: "gRPC unary, answered on its retry",
        protocol: "grpc",
        http_method: "POST",
        path: unary,
        method: Some("Unary"),
        upstream,
        code: "OK",
        message: "",
        http_status: 200,
        bytes_in: framed(&request),
        bytes_out: framed(&reply),
        messages_in: 0,
        messages_out: 0,
        retries: 1,
        trace_id: &trace_id,
        min_duration_ms: 0.0,
    }));
    backend.heal();

    let (traceparent, trace_id) = trace(3);
    let request = EchoRequest {
        fail_code: 5,
        ..echo("missing")
    };
    let clock = Stopwatch::start();
    let status = grpc
        .unary(traced(request.clone(), &traceparent))
        .await
        .expect_err("expected NOT_FOUND");
    assert_eq!(status.code(), tonic::Code::NotFound);
    expected.push(clock.expect(Call {
        what: "gRPC unary, NOT_FOUND trailers-only",
        protocol: "grpc",
        http_method: "POST",
        path: unary,
        method: Some("Unary"),
        upstream,
        code: "NOT_FOUND",
        message: "failure requested from a",
        http_status: 200,
        bytes_in: framed(&request),
        bytes_out: 0,
        messages_in: 0,
        messages_out: 0,
        retries: 0,
        trace_id: &trace_id,
        min_duration_ms: 0.0,
    }));

    // HTTP 200, one message, then UNAVAILABLE in the trailers (not retried:
    // a message already went to the client).
    backend.fail_in_trailers(100, 14);
    let (traceparent, trace_id) = trace(4);
    let request = echo("late failure");
    let clock = Stopwatch::start();
    let status = grpc
        .unary(traced(request.clone(), &traceparent))
        .await
        .expect_err("expected UNAVAILABLE in the trailers");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let sent_first = EchoResponse {
        message: "before the failure".into(),
        served_by: "a".into(),
        ..Default::default()
    };
    expected.push(clock.expect(Call {
        what: "gRPC unary, one message then UNAVAILABLE in the trailers",
        protocol: "grpc",
        http_method: "POST",
        path: unary,
        method: Some("Unary"),
        upstream,
        code: "UNAVAILABLE",
        message: "fault injected by a",
        http_status: 200,
        bytes_in: framed(&request),
        bytes_out: framed(&sent_first),
        messages_in: 0,
        messages_out: 0,
        retries: 0,
        trace_id: &trace_id,
        min_duration_ms: 0.0,
    }));
    backend.heal();

    let (traceparent, trace_id) = trace(5);
    let request = EchoRequest {
        repeat: 3,
        ..echo("stream")
    };
    let clock = Stopwatch::start();
    let replies: Vec<EchoResponse> = grpc
        .server_stream(traced(request.clone(), &traceparent))
        .await
        .expect("expected the stream to start")
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .expect("expected the stream to succeed");
    assert_eq!(replies.len(), 3);
    expected.push(clock.expect(Call {
        what: "gRPC server stream of 3",
        protocol: "grpc",
        http_method: "POST",
        path: "/testing.v1.Echo/ServerStream",
        method: Some("ServerStream"),
        upstream,
        code: "OK",
        message: "",
        http_status: 200,
        bytes_in: framed(&request),
        bytes_out: replies.iter().map(framed).sum(),
        messages_in: 1,
        messages_out: 3,
        retries: 0,
        trace_id: &trace_id,
        min_duration_ms: 0.0,
    }));

    let (traceparent, trace_id) = trace(6);
    let requests = [echo("c0"), echo("c1")];
    let clock = Stopwatch::start();
    let reply = grpc
        .client_stream(traced(tokio_stream::iter(requests.clone()), &traceparent))
        .await
        .expect("expected the client stream to succeed")
        .into_inner();
    assert_eq!(reply.received, 2);
    expected.push(clock.expect(Call {
        what: "gRPC client stream of 2",
        protocol: "grpc",
        http_method: "POST",
        path: "/testing.v1.Echo/ClientStream",
        method: Some("ClientStream"),
        upstream,
        code: "OK",
        message: "",
        http_status: 200,
        bytes_in: requests.iter().map(framed).sum(),
        bytes_out: framed(&reply),
        messages_in: 2,
        messages_out: 1,
        retries: 0,
        trace_id: &trace_id,
        min_duration_ms: 0.0,
    }));
    drop(grpc);

    let path = "/no.such.Service/Call";
    // A call the gateway refuses itself is still logged under the client's trace.
    let (refused_traceparent, refused_trace_id) = trace(10);
    let clock = Stopwatch::start();
    let response = raw_grpc(
        addr,
        path,
        &[
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("traceparent", &refused_traceparent),
        ],
        grpc_frame(&echo("x")),
    )
    .await;
    assert_eq!(response.grpc_status().as_deref(), Some("12"), "expected UNIMPLEMENTED");
    expected.push(clock.expect(Call {
        what: "gRPC call to a service no route matches",
        protocol: "grpc",
        http_method: "POST",
        path,
        method: None,
        upstream: None,
        code: "UNIMPLEMENTED",
        message: "unknown service no.such.Service: no route matches /no.such.Service/Call",
        http_status: 200,
        bytes_in: 0,
        bytes_out: 0,
        messages_in: 0,
        messages_out: 0,
        retries: 0,
        trace_id: &refused_trace_id,
        min_duration_ms: 0.0,
    }));

    // ---- gRPC-Web ---------------------------------------------------------
    let mut web = WebClient::connect(addr, Transport::Http1, WebEncoding::Binary).await;
    let (traceparent, trace_id) = trace(7);
    let request = echo("web");
    let clock = Stopwatch::start();
    let reply = web.call(unary, &[("traceparent", &traceparent)], &request).await;
    assert_eq!(reply.grpc_status().as_deref(), Some("0"), "expected OK: {reply:?}");
    expected.push(clock.expect(Call {
        what: "gRPC-Web binary unary over HTTP/1.1",
        protocol: "grpc_web",
        http_method: "POST",
        path: unary,
        method: Some("Unary"),
        upstream,
        code: "OK",
        message: "",
        http_status: 200,
        bytes_in: framed(&request),
        bytes_out: reply.messages.iter().map(|m| 5 + m.len() as u64).sum(),
        messages_in: 0,
        messages_out: 0,
        retries: 0,
        trace_id: &trace_id,
        min_duration_ms: 0.0,
    }));
    drop(web);

    let mut text = WebClient::connect(addr, Transport::Http2, WebEncoding::Text).await;
    let (traceparent, trace_id) = trace(8);
    let request = EchoRequest {
        repeat: 3,
        fail_code: 9,
        fail_after_first: true,
        ..echo("web text")
    };
    let clock = Stopwatch::start();
    let reply = text
        .call(
            "/testing.v1.Echo/ServerStream",
            &[("traceparent", &traceparent)],
            &request,
        )
        .await;
    assert_eq!(
        reply.status, 200,
        "expected HTTP 200 with the failure in the trailer frame"
    );
    assert_eq!((reply.grpc_status().as_deref(), reply.messages.len()), (Some("9"), 1));
    expected.push(clock.expect(Call {
        what: "gRPC-Web text server stream over HTTP/2, failing in its trailer frame",
        protocol: "grpc_web",
        http_method: "POST",
        path: "/testing.v1.Echo/ServerStream",
        method: Some("ServerStream"),
        upstream,
        code: "FAILED_PRECONDITION",
        message: "failure requested from a",
        http_status: 200,
        bytes_in: framed(&request),
        bytes_out: reply.messages.iter().map(|m| 5 + m.len() as u64).sum(),
        messages_in: 1,
        messages_out: 1,
        retries: 0,
        trace_id: &trace_id,
        min_duration_ms: 0.0,
    }));
    drop(text);

    // ---- REST -------------------------------------------------------------
    let (traceparent, trace_id) = trace(9);
    let clock = Stopwatch::start();
    let response = rest_client::request(
        addr,
        "POST",
        unary,
        &[("content-type", "application/json"), ("traceparent", &traceparent)],
        r#"{"message":"rest"}"#,
    )
    .await;
    assert_eq!(response.status, 200, "expected 200: {}", response.text());
    expected.push(clock.expect(Call {
        what: "REST unary",
        protocol: "rest",
        http_method: "POST",
        path: unary,
        method: Some("Unary"),
        upstream,
        code: "OK",
        message: "",
        http_status: 200,
        bytes_in: framed(&echo("rest")),
        // The JSON body the client received.
        bytes_out: response.body.len() as u64,
        messages_in: 0,
        messages_out: 0,
        retries: 0,
        trace_id: &trace_id,
        min_duration_ms: 0.0,
    }));

    let (traceparent, trace_id) = trace(10);
    let clock = Stopwatch::start();
    let response = rest_client::request(
        addr,
        "POST",
        unary,
        &[("content-type", "application/json"), ("traceparent", &traceparent)],
        r#"{"message":"no","failCode":7}"#,
    )
    .await;
    assert_eq!(
        response.status,
        403,
        "expected PERMISSION_DENIED as 403: {}",
        response.text()
    );
    expected.push(clock.expect(Call {
        what: "REST unary, PERMISSION_DENIED",
        protocol: "rest",
        http_method: "POST",
        path: unary,
        method: Some("Unary"),
        upstream,
        code: "PERMISSION_DENIED",
        message: "failure requested from a",
        http_status: 403,
        bytes_in: framed(&EchoRequest {
            fail_code: 7,
            ..echo("no")
        }),
        // Only messages count: the error body is not one.
        bytes_out: 0,
        messages_in: 0,
        messages_out: 0,
        retries: 0,
        trace_id: &trace_id,
        min_duration_ms: 0.0,
    }));

    let (traceparent, trace_id) = trace(11);
    let clock = Stopwatch::start();
    let response = rest_client::request(
        addr,
        "POST",
        "/testing.v1.Echo/ServerStream",
        &[("content-type", "application/json"), ("traceparent", &traceparent)],
        r#"{"message":"rest stream","repeat":2}"#,
    )
    .await;
    assert_eq!(response.status, 200, "expected 200: {}", response.text());
    assert_eq!(
        response.text().lines().count(),
        2,
        "expected two NDJSON lines: {}",
        response.text()
    );
    expected.push(clock.expect(Call {
        what: "REST server stream of 2 (NDJSON)",
        protocol: "rest",
        http_method: "POST",
        path: "/testing.v1.Echo/ServerStream",
        method: Some("ServerStream"),
        upstream,
        code: "OK",
        message: "",
        http_status: 200,
        bytes_in: framed(&EchoRequest {
            repeat: 2,
            ..echo("rest stream")
        }),
        // The NDJSON lines the client received.
        bytes_out: response.body.len() as u64,
        messages_in: 1,
        messages_out: 2,
        retries: 0,
        trace_id: &trace_id,
        min_duration_ms: 0.0,
    }));

    let path = "/v1/no/such/thing";
    let clock = Stopwatch::start();
    let response = rest_client::get(addr, path).await;
    assert_eq!(response.status, 404, "expected 404 for a path no binding matches");
    expected.push(clock.expect(Call {
        what: "REST GET of a path no binding matches",
        protocol: "rest",
        http_method: "GET",
        path,
        method: None,
        upstream: None,
        code: "NOT_FOUND",
        message: "no route for GET /v1/no/such/thing",
        http_status: 404,
        bytes_in: 0,
        bytes_out: 0,
        messages_in: 0,
        messages_out: 0,
        retries: 0,
        trace_id: "",
        min_duration_ms: 0.0,
    }));
    expected
}

/// One access line, whatever its source: the [`FIELDS`] as JSON values, and
/// the time it was written, when the format has one.
#[derive(Debug)]
pub(crate) struct AccessLine {
    pub(crate) fields: BTreeMap<String, Value>,
    pub(crate) timestamp: Option<SystemTime>,
    /// The line as written, for failure messages.
    pub(crate) raw: String,
}

/// Checks that `lines` are exactly one line per expected call, each saying
/// exactly what the test knows about its call.
pub(crate) fn check(lines: &[AccessLine], expected: &[Expected]) {
    let shown = || lines.iter().map(|l| l.raw.as_str()).collect::<Vec<_>>().join("\n");
    for line in lines {
        let names: Vec<&str> = line.fields.keys().map(String::as_str).collect();
        let mut wanted = FIELDS.to_vec();
        wanted.sort_unstable();
        assert_eq!(names, wanted, "expected exactly the access log fields in {}", line.raw);
    }
    assert_eq!(
        lines.len(),
        expected.len(),
        "expected one access line per call ({}), got:\n{}",
        expected.len(),
        shown()
    );
    for call in expected {
        // A call is found by protocol, path and trace id (unique per call).
        let identity = ["protocol", "path", "trace_id"];
        let matching: Vec<&AccessLine> = lines
            .iter()
            .filter(|l| identity.iter().all(|k| l.fields.get(*k) == call.fields.get(k)))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "expected one access line for the {} ({:?}), got:\n{}",
            call.what,
            identity.map(|k| &call.fields[k]),
            shown()
        );
        let line = matching[0];
        for (name, want) in &call.fields {
            assert_eq!(
                line.fields.get(*name),
                Some(want),
                "expected {name} == {want} for the {}: {}",
                call.what,
                line.raw
            );
        }
        let duration = line.fields["duration_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("expected duration_ms to be a number: {}", line.raw));
        // The gateway measures from the request's arrival to the answer's
        // end, both within the client's wait (a little slack for rounding).
        let waited = call.waited.as_secs_f64() * 1000.0;
        assert!(
            duration >= call.min_duration_ms && duration <= waited + 5.0,
            "expected the {} to take {}..={waited:.3} ms at the gateway, got {duration}: {}",
            call.what,
            call.min_duration_ms,
            line.raw
        );
        if let Some(at) = line.timestamp {
            // Written between the request and the answer (the clock is
            // shared; a second of slack for its own adjustments).
            let earliest = call.sent - Duration::from_secs(1);
            let latest = call.sent + call.waited + Duration::from_secs(1);
            assert!(
                at >= earliest && at <= latest,
                "expected the {}'s line to be stamped while the call ran: {}",
                call.what,
                line.raw
            );
        }
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS.ffffffZ` (RFC 3339, UTC, microseconds, as
/// `tracing-subscriber` writes it).
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 27
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'.',
            26 => *b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    let number = |from: usize, to: usize| text[from..to].parse::<i64>().ok();
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let micros = number(20, 26)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    let since_epoch = Duration::from_secs(u64::try_from(seconds).ok()?) + Duration::from_micros(micros as u64);
    Some(SystemTime::UNIX_EPOCH + since_epoch)
}

/// The access lines of a JSON log; every stderr line must be a JSON object.
pub(crate) fn json_access_lines(stderr: &[String]) -> Vec<AccessLine> {
    let mut lines = Vec::new();
    for raw in stderr {
        let json: Value = serde_json::from_str(raw)
            .unwrap_or_else(|e| panic!("expected every line of a JSON log to be JSON ({e}): {raw}"));
        let mut object = json
            .as_object()
            .cloned()
            .unwrap_or_else(|| panic!("expected a JSON object per line: {raw}"));
        if object.get("target") != Some(&json!(TARGET)) {
            continue;
        }
        assert_eq!(
            object.remove("level"),
            Some(json!("INFO")),
            "expected access lines at INFO: {raw}"
        );
        assert_eq!(
            object.remove("message"),
            Some(json!("call")),
            "expected the message \"call\": {raw}"
        );
        object.remove("target");
        let stamp = object
            .remove("timestamp")
            .and_then(|t| t.as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("expected a timestamp string: {raw}"));
        let timestamp = parse_timestamp(&stamp)
            .unwrap_or_else(|| panic!("expected an RFC 3339 UTC timestamp, got {stamp:?}: {raw}"));
        lines.push(AccessLine {
            fields: object.into_iter().collect(),
            timestamp: Some(timestamp),
            raw: raw.clone(),
        });
    }
    lines
}

/// Splits `key=value key="quoted value" ...` (values quoted as Rust string
/// literals when they need it, as `tracing-subscriber`'s text format does).
fn text_fields(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut fields = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').ok_or("a field without '='")?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("bad field name {key:?}"));
        }
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next().ok_or("an unterminated quoted value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("a dangling escape")?.1 {
                        '"' => value.push('"'),
                        '\\' => value.push('\\'),
                        '\'' => value.push('\''),
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        '0' => value.push('\0'),
                        'u' => {
                            let digits: String = chars.by_ref().map(|(_, c)| c).take_while(|c| *c != '}').collect();
                            let hex = digits.strip_prefix('{').ok_or("a bad \\u escape")?;
                            let code = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                            value.push(char::from_u32(code).ok_or("a bad code point")?);
                        }
                        other => return Err(format!("an unknown escape \\{other}")),
                    },
                    (_, c) => value.push(c),
                }
            };
            (value, &quoted[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        fields.push((key.to_string(), value));
        rest = match after.strip_prefix(' ') {
            Some(next) => next,
            None if after.is_empty() => after,
            None => return Err(format!("no space after the value of {key}")),
        };
    }
    Ok(fields)
}

/// The access lines of a text log:
/// `<timestamp>  INFO grpc_edge::access: call key=value ...`.
pub(crate) fn text_access_lines(stderr: &[String]) -> Vec<AccessLine> {
    let mut lines = Vec::new();
    for raw in stderr {
        let Some((stamp, rest)) = raw.split_once("  INFO ") else {
            continue;
        };
        let Some(rest) = rest.strip_prefix(&format!("{TARGET}: ")) else {
            continue;
        };
        let timestamp = parse_timestamp(stamp)
            .unwrap_or_else(|| panic!("expected an RFC 3339 UTC timestamp, got {stamp:?}: {raw}"));
        let fields = rest
            .strip_prefix("call ")
            .unwrap_or_else(|| panic!("expected the message \"call\" first: {raw}"));
        let fields = text_fields(fields).unwrap_or_else(|e| panic!("expected key=value fields, found {e}: {raw}"));
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, FIELDS, "expected the fields in their documented order: {raw}");
        let fields = fields
            .into_iter()
            .map(|(key, value)| {
                let typed = if INTEGERS.contains(&key.as_str()) {
                    json!(
                        value
                            .parse::<u64>()
                            .unwrap_or_else(|_| panic!("expected {key} to be a whole number: {raw}"))
                    )
                } else if key == "duration_ms" {
                    json!(
                        value
                            .parse::<f64>()
                            .unwrap_or_else(|_| panic!("expected {key} to be a number: {raw}"))
                    )
                } else {
                    json!(value)
                };
                (key, typed)
            })
            .collect();
        lines.push(AccessLine {
            fields,
            timestamp: Some(timestamp),
            raw: raw.clone(),
        });
    }
    lines
}

/// Whether any line mentions the access target at all (in either format).
fn mentions_access(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains(TARGET)).collect()
}

/// Writes `yaml` to a temporary config file.
fn config_file(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("expected a temporary directory");
    std::fs::write(dir.path().join("gateway.yaml"), yaml).expect("expected to write the config");
    dir
}

/// Runs the binary with `yaml`, lets `calls` run against it, then stops it
/// with SIGTERM; returns every stderr line, after checking it drained,
/// flushed (its last line says "stopped") and exited 0.
async fn run_binary<F, Fut, T>(yaml: &str, format: LogFormat, rust_log: &str, calls: F) -> (T, Vec<String>)
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let dir = config_file(yaml);
    let config = dir.path().join("gateway.yaml");
    let rust_log = rust_log.to_string();
    let gateway = tokio::task::spawn_blocking(move || LoggedGateway::start(&config, format, &rust_log, false))
        .await
        .expect("expected the binary to start");
    let made = calls(gateway.addr).await;
    let (status, lines) = tokio::task::spawn_blocking(move || gateway.terminate_and_wait(Duration::from_secs(45)))
        .await
        .expect("expected the binary to stop");
    assert!(
        status.success(),
        "expected exit status 0 after SIGTERM, got {status}: {lines:#?}"
    );
    let stopped = |l: &String| match format {
        LogFormat::Json => serde_json::from_str::<Value>(l).is_ok_and(|j| j["message"] == "stopped"),
        LogFormat::Text => l.ends_with(" stopped"),
    };
    assert!(
        lines.last().is_some_and(stopped),
        "expected the last line to say \"stopped\" (the log flushed at exit): {lines:#?}"
    );
    (made, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_one_json_access_line_per_call_with_every_field() {
    let a = FaultBackend::start("a").await;
    let (expected, lines) = run_binary(&config(&a, ""), LogFormat::Json, "info", |addr| drive(addr, &a)).await;
    check(&json_access_lines(&lines), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_the_same_fields_as_text() {
    let a = FaultBackend::start("a").await;
    let (expected, lines) = run_binary(&config(&a, ""), LogFormat::Text, "info", |addr| drive(addr, &a)).await;
    check(&text_access_lines(&lines), &expected);
}

/// A few calls: two answered (gRPC, REST), two failed (gRPC NOT_FOUND, a REST path with no route).
async fn few_calls(addr: SocketAddr) {
    let mut grpc = crate::support::client(addr).await;
    grpc.unary(echo("ok")).await.expect("expected OK");
    let status = grpc
        .unary(EchoRequest {
            fail_code: 5,
            ..echo("missing")
        })
        .await
        .expect_err("expected NOT_FOUND");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let response = rest_client::post_json(addr, "/testing.v1.Echo/Unary", r#"{"message":"ok"}"#).await;
    assert_eq!(response.status, 200, "expected 200: {}", response.text());
    assert_eq!(rest_client::get(addr, "/v1/nowhere").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_enabled_false_writes_no_access_line() {
    let a = FaultBackend::start("a").await;
    let yaml = config(&a, "observability:\n  access_log:\n    enabled: false\n");
    let ((), lines) = run_binary(&yaml, LogFormat::Json, "info", few_calls).await;
    assert_eq!(a.calls(), 3, "expected the three routed calls to reach the backend");
    assert!(
        mentions_access(&lines).is_empty(),
        "expected no access line: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_successes_zero_logs_every_failure_and_no_success() {
    let a = FaultBackend::start("a").await;
    let yaml = config(&a, "observability:\n  access_log:\n    sample_successes: 0.0\n");
    let ((), lines) = run_binary(&yaml, LogFormat::Json, "info", few_calls).await;
    let logged = json_access_lines(&lines);
    let calls: Vec<(&Value, &Value, &Value)> = logged
        .iter()
        .map(|l| (&l.fields["protocol"], &l.fields["path"], &l.fields["grpc_code"]))
        .collect();
    assert_eq!(
        calls,
        [
            (&json!("grpc"), &json!("/testing.v1.Echo/Unary"), &json!("NOT_FOUND")),
            (&json!("rest"), &json!("/v1/nowhere"), &json!("NOT_FOUND")),
        ],
        "expected exactly the two failed calls logged: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_log_filter_excluding_the_access_target_silences_it_alone() {
    let a = FaultBackend::start("a").await;
    let ((), lines) = run_binary(
        &config(&a, ""),
        LogFormat::Text,
        "info,grpc_edge::access=off",
        few_calls,
    )
    .await;
    assert_eq!(a.calls(), 3, "expected the three routed calls to reach the backend");
    assert!(
        mentions_access(&lines).is_empty(),
        "expected no access line: {lines:#?}"
    );
    // The rest of the log still flows at INFO (run_binary saw "stopped").
    assert!(
        lines.iter().any(|l| l.contains(" grpc-edge listening ")),
        "expected the other INFO lines: {lines:#?}"
    );
}
