//! The access log as a library host receives it: a gateway embedded in an
//! axum app (as `examples/embed_axum.rs` does), and the host's `tracing`
//! subscriber — here a layer that keeps every event of the access target
//! with its fields as recorded, typed. The same calls as the binary's test
//! (`access_log::drive`), checked field by field by the same checker; the
//! switches (`enabled`, `sample_successes`); and the TLS peer identity of a
//! client certificate.
//!
//! Each test runs on a current-thread runtime: every task of its gateway,
//! backend and clients runs on the test's thread, and the capture layer
//! keeps the events of each thread apart, so a test sees its own events and
//! no other test's.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use grpc_edge::Gateway;
use grpc_edge::config::Config;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::access_log::{self, AccessLine, TARGET};
use crate::support::certs::{Ca, CertDir, client_config, tls_connect};
use crate::support::faults::{FaultBackend, wait_until};
use crate::support::served::Served;
use crate::support::{EchoResponse, echo, grpc_frame, rest_client};

/// An access event as the layer saw it.
#[derive(Clone, Debug)]
struct Event {
    level: tracing::Level,
    /// Every field, `message` included, typed as it was recorded.
    fields: BTreeMap<String, Value>,
}

thread_local! {
    /// Where the capture layer puts the access events emitted on this thread.
    static SINK: RefCell<Option<Arc<Mutex<Vec<Event>>>>> = const { RefCell::new(None) };
}

/// The layer of the process's subscriber: keeps every event of the access
/// target in the sink of the thread that emitted it, if it has one.
struct CaptureLayer;

/// Records each field with the type `tracing` gave it.
struct Fields<'a>(&'a mut BTreeMap<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // Only `message` should get here; anything else shows up as a
        // string where the checker wants a number.
        self.0.insert(field.name().into(), json!(format!("{value:?}")));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CaptureLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let Some(sink) = SINK.with(|sink| sink.borrow().clone()) else {
            return;
        };
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        sink.lock().unwrap().push(Event {
            level: *event.metadata().level(),
            fields,
        });
    }
}

/// The access events of one test: those emitted on its thread.
struct Capture(Arc<Mutex<Vec<Event>>>);

impl Capture {
    /// Starts keeping this thread's access events.
    ///
    /// The subscriber is the process's global default, set once, rather
    /// than a scoped default per test: with a single scoped dispatcher
    /// registered, `tracing-core` 0.1 caches `Interest::never` for a
    /// callsite that another thread (another test, with no subscriber)
    /// reaches first, and this test's events vanish (tokio-rs/tracing#3611).
    fn install() -> Capture {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(CaptureLayer))
                .expect("expected no other global subscriber in this test binary");
        });
        // A callsite first reached while the default was being set may have
        // cached a stale interest; have every callsite ask again.
        tracing::callsite::rebuild_interest_cache();
        let sink = Arc::new(Mutex::new(Vec::new()));
        SINK.with(|slot| *slot.borrow_mut() = Some(sink.clone()));
        Capture(sink)
    }

    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (at most 5 s) until `n` events arrived; returns them all.
    async fn wait_for(&self, n: usize) -> Vec<Event> {
        wait_until(Duration::from_secs(5), || self.0.lock().unwrap().len() >= n).await;
        self.events()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        SINK.with(|slot| slot.borrow_mut().take());
    }
}

/// An event as an access line for `access_log::check`: INFO, message
/// "call", and the fields (no timestamp: the host's subscriber adds that).
fn access_line(event: &Event) -> AccessLine {
    let mut fields = event.fields.clone();
    let raw = format!("{:?} {fields:?}", event.level);
    assert_eq!(
        event.level,
        tracing::Level::INFO,
        "expected access events at INFO: {raw}"
    );
    assert_eq!(
        fields.remove("message"),
        Some(json!("call")),
        "expected the message \"call\": {raw}"
    );
    AccessLine {
        fields: fields.into_iter().collect(),
        timestamp: None,
        raw,
    }
}

/// The gateway for `yaml`, merged into a host's axum app on a loopback port.
async fn embed(yaml: &str) -> Served {
    let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"));
    let gateway = Gateway::from_config(config).expect("expected the gateway to build");
    Served::axum(Router::new().merge(gateway.router())).await
}

#[tokio::test]
async fn an_embedded_gateway_emits_one_access_event_per_call_with_typed_fields() {
    let capture = Capture::install();
    let a = FaultBackend::start("a").await;
    let app = embed(&access_log::config(&a, "")).await;
    let expected = access_log::drive(app.addr, &a).await;
    let events = capture.wait_for(expected.len()).await;
    let lines: Vec<AccessLine> = events.iter().map(access_line).collect();
    access_log::check(&lines, &expected);
}

#[tokio::test]
async fn embedded_switches_turn_access_events_off_or_keep_only_failures() {
    let capture = Capture::install();
    let a = FaultBackend::start("a").await;
    // Two answered calls and two failed ones.
    let calls = |addr: SocketAddr| async move {
        let mut grpc = crate::support::client(addr).await;
        grpc.unary(echo("ok")).await.expect("expected OK");
        let missing = crate::support::EchoRequest {
            fail_code: 5,
            ..echo("missing")
        };
        assert_eq!(
            grpc.unary(missing).await.expect_err("expected NOT_FOUND").code(),
            tonic::Code::NotFound
        );
        let response = rest_client::post_json(addr, "/testing.v1.Echo/Unary", r#"{"message":"ok"}"#).await;
        assert_eq!(response.status, 200, "expected 200: {}", response.text());
        assert_eq!(rest_client::get(addr, "/v1/nowhere").await.status, 404);
    };

    let off = embed(&access_log::config(
        &a,
        "observability:\n  access_log:\n    enabled: false\n",
    ))
    .await;
    calls(off.addr).await;
    assert_eq!(a.calls(), 3, "expected the routed calls to reach the backend");
    assert!(
        capture.events().is_empty(),
        "expected no access event: {:#?}",
        capture.events()
    );

    let failures = embed(&access_log::config(
        &a,
        "observability:\n  access_log:\n    sample_successes: 0.0\n",
    ))
    .await;
    calls(failures.addr).await;
    let events = capture.wait_for(2).await;
    let logged: Vec<(&Value, &Value, &Value)> = events
        .iter()
        .map(|e| (&e.fields["protocol"], &e.fields["path"], &e.fields["grpc_code"]))
        .collect();
    assert_eq!(
        logged,
        [
            (&json!("grpc"), &json!("/testing.v1.Echo/Unary"), &json!("NOT_FOUND")),
            (&json!("rest"), &json!("/v1/nowhere"), &json!("NOT_FOUND")),
        ],
        "expected exactly the two failed calls, successes sampled away"
    );
}

/// One native gRPC unary call over an HTTP/2 connection on `io`; returns
/// the HTTP status, `grpc-status` and the response message.
async fn h2_unary<IO>(io: IO, request: &crate::support::EchoRequest) -> (u16, Option<String>, EchoResponse)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = h2::client::handshake(io).await.expect("expected an HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.unwrap();
    let head = http::Request::post("https://localhost/testing.v1.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(head, false).unwrap();
    stream.send_data(grpc_frame(request), true).unwrap();
    let response = response.await.expect("expected an answer");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("expected the body");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("expected trailers");
    let code = trailers.and_then(|t| t.get("grpc-status").map(|v| v.to_str().unwrap().to_string()));
    let message =
        <EchoResponse as prost::Message>::decode(data.get(5..).unwrap_or_default()).expect("expected one EchoResponse");
    (status, code, message)
}

#[tokio::test]
async fn a_client_certificate_is_the_access_events_peer() {
    let capture = Capture::install();
    let a = FaultBackend::start("a").await;
    let ca = Ca::new("test CA");
    let dir = CertDir::new();
    let (cert, key) = dir.write_pair("server", &ca.server());
    let client_ca = dir.write("clients.pem", &ca.cert_pem);
    let yaml = format!(
        "tls:\n  cert: {}\n  key: {}\n  client_ca: {}\n{}",
        cert.display(),
        key.display(),
        client_ca.display(),
        access_log::config(&a, "")
    );
    let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"));
    let tls = grpc_edge::tls::ServerTls::new(config.tls.as_ref().unwrap(), grpc_edge::tls::ReloadOptions::default())
        .expect("expected the listener's TLS to load");
    let gateway = Gateway::from_config(config).expect("expected the gateway to build");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    let serve = tokio::spawn(grpc_edge::serve(
        gateway,
        listener,
        async {
            let _ = stopped.await;
        },
        grpc_edge::ServeOptions {
            listener_tls: Some(tls),
            ..Default::default()
        },
    ));

    let client = ca.client("billing");
    let stream = tls_connect(addr, client_config(&[&ca], Some(&client), &[b"h2"]), "localhost")
        .await
        .expect("expected the TLS handshake to succeed");
    let request = echo("with a certificate");
    let (status, code, reply) = h2_unary(stream, &request).await;
    assert_eq!((status, code.as_deref()), (200, Some("0")), "expected OK");
    let events = capture.wait_for(1).await;
    assert_eq!(events.len(), 1, "expected one access event: {events:#?}");
    let fields = &events[0].fields;
    let target = a.target();
    for (name, want) in [
        ("peer", json!("billing")),
        ("protocol", json!("grpc")),
        ("path", json!("/testing.v1.Echo/Unary")),
        ("upstream", json!(target)),
        ("grpc_code", json!("OK")),
        ("http_status", json!(200)),
        ("client", json!("127.0.0.1")),
        ("bytes_in", json!(5 + prost::Message::encoded_len(&request))),
        ("bytes_out", json!(5 + prost::Message::encoded_len(&reply))),
        ("trace_id", json!("")),
    ] {
        assert_eq!(fields.get(name), Some(&want), "expected {name} == {want}: {fields:?}");
    }
    serve.abort();
}
