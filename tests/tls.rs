//! TLS on the listener, end to end with generated certificates: REST over
//! HTTP/1.1, native gRPC and gRPC-Web over HTTP/2, ALPN and its absence,
//! client certificates, certificate rotation on disk while clients keep
//! connecting (plain files and Kubernetes' `..data` swap), bad files written
//! mid-run, expiry at start-up and in `grpc-edge check`, and the cost of a
//! handshake.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grpc_edge::tls::{ReloadOptions, ServerTls};
use grpc_edge::{Gateway, ServeOptions};
use http_body_util::{BodyExt, Full};
use support::certs::*;
use support::*;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// The gateway serving TLS on a loopback port, with a handle on its TLS.
struct TlsGateway {
    addr: SocketAddr,
    tls: ServerTls,
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tls_yaml(backends: &[SocketAddr], cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut yaml = format!("tls:\n  cert: {}\n  key: {}\n", cert.display(), key.display());
    if let Some(ca) = client_ca {
        yaml.push_str(&format!("  client_ca: {}\n", ca.display()));
    }
    yaml + &config_yaml(backends, "", "")
}

/// Reloads without waiting long: a short settle; the 60 s poll stays, so
/// changes seen within a test's patience were seen through inotify.
fn reload_options() -> ReloadOptions {
    ReloadOptions {
        settle: Duration::from_millis(100),
        ..ReloadOptions::default()
    }
}

async fn start(yaml: &str) -> TlsGateway {
    let config = grpc_edge::config::Config::from_yaml(yaml).unwrap();
    let tls = ServerTls::new(config.tls.as_ref().unwrap(), reload_options()).unwrap();
    let gateway = Gateway::from_config(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let options = ServeOptions {
        listener_tls: Some(tls.clone()),
        ..ServeOptions::default()
    };
    let task = tokio::spawn(grpc_edge::serve(
        gateway,
        listener,
        async {
            let _ = stopped.await;
        },
        options,
    ));
    TlsGateway {
        addr,
        tls,
        _stop: stop,
        task,
    }
}

/// A backend, a CA, and the gateway with a server certificate from that CA.
async fn setup() -> (Backend, Ca, CertDir, Leaf, TlsGateway) {
    let backend = Backend::start("b1").await;
    let ca = Ca::new("test CA");
    let dir = CertDir::new();
    let leaf = ca.server();
    let (cert, key) = dir.write_pair("server", &leaf);
    let gateway = start(&tls_yaml(&[backend.addr], &cert, &key, None)).await;
    (backend, ca, dir, leaf, gateway)
}

/// One native gRPC unary call over an HTTP/2 connection on `io`.
async fn h2_unary<IO>(io: IO, message: &str) -> Result<EchoResponse, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = h2::client::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.map_err(|e| e.to_string())?;
    let request = http::Request::post("https://localhost/testing.v1.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(request, false).map_err(|e| e.to_string())?;
    stream
        .send_data(grpc_frame(&echo(message)), true)
        .map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_string());
    if status.as_deref() != Some("0") || data.len() < 5 {
        return Err(format!("grpc-status {status:?}, {} body bytes", data.len()));
    }
    <EchoResponse as prost::Message>::decode(&data[5..]).map_err(|e| e.to_string())
}

/// One HTTP/1.1 request over `io`: status and body.
async fn h1_request<IO>(io: IO, method: &str, path: &str, body: &str) -> (http::StatusCode, Bytes)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

fn h2_alpn() -> Vec<&'static [u8]> {
    vec![b"h2"]
}

#[tokio::test]
async fn rest_over_http1_with_tls() {
    let (_backend, ca, _dir, _leaf, gw) = setup().await;
    let config = client_config(&[&ca], None, &[b"http/1.1"]);
    let stream = tls_connect(gw.addr, config, "localhost").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = h1_request(stream, "POST", "/testing.v1.Echo/Unary", r#"{"message":"over tls"}"#).await;
    assert_eq!(status, 200, "{body:?}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["message"], "over tls");
    assert_eq!(json["metadata"]["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn native_grpc_over_h2_with_tls() {
    let (_backend, ca, _dir, _leaf, gw) = setup().await;
    let stream = tls_connect(gw.addr, client_config(&[&ca], None, &h2_alpn()), "127.0.0.1")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let response = h2_unary(stream, "grpc over tls").await.unwrap();
    assert_eq!(response.message, "grpc over tls");
    assert_eq!(response.served_by, "b1");
    assert_eq!(response.metadata["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn grpc_web_over_h2_with_tls() {
    let (_backend, ca, _dir, _leaf, gw) = setup().await;
    let stream = tls_connect(gw.addr, client_config(&[&ca], None, &h2_alpn()), "localhost")
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("https://localhost/testing.v1.Echo/Unary")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(Full::new(grpc_frame(&echo("web over tls"))))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    // One message frame, then the trailer frame.
    let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    assert_eq!(body[0], 0);
    let message: EchoResponse = prost::Message::decode(&body[5..5 + length]).unwrap();
    assert_eq!(message.message, "web over tls");
    assert_eq!(message.metadata["x-forwarded-proto"], "https");
    let trailer = &body[5 + length..];
    assert_eq!(trailer[0], 0x80);
    let trailers = parse_web_trailers(&trailer[5..]);
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test]
async fn without_alpn_the_protocol_is_sniffed() {
    let (_backend, ca, _dir, _leaf, gw) = setup().await;
    let no_alpn = client_config(&[&ca], None, &[]);
    let stream = tls_connect(gw.addr, no_alpn.clone(), "localhost").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let response = h2_unary(stream, "prior knowledge").await.unwrap();
    assert_eq!(response.message, "prior knowledge");
    let stream = tls_connect(gw.addr, no_alpn, "localhost").await.unwrap();
    let (status, _) = h1_request(stream, "POST", "/testing.v1.Echo/Unary", r#"{"message":"h1"}"#).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_plaintext_client_gets_no_answer() {
    let (_backend, _ca, _dir, _leaf, gw) = setup().await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), h2_unary(tcp, "plain")).await;
    assert!(matches!(outcome, Ok(Err(_))), "{outcome:?}");
}

/// The gateway requiring client certificates from `client_ca`.
async fn setup_mtls() -> (Backend, Ca, CertDir, TlsGateway) {
    let backend = Backend::start("b1").await;
    let ca = Ca::new("test CA");
    let dir = CertDir::new();
    let (cert, key) = dir.write_pair("server", &ca.server());
    let client_ca = dir.write("clients.pem", &ca.cert_pem);
    let gateway = start(&tls_yaml(&[backend.addr], &cert, &key, Some(&client_ca))).await;
    (backend, ca, dir, gateway)
}

#[tokio::test]
async fn mtls_rejects_a_client_without_a_certificate() {
    let (_backend, ca, _dir, gw) = setup_mtls().await;
    assert!(gw.tls.requires_client_certificates());
    let config = client_config(&[&ca], None, &h2_alpn());
    // TLS 1.3: the client finishes first; the server's refusal ends the connection.
    let outcome = match tls_connect(gw.addr, config, "localhost").await {
        Ok(stream) => h2_unary(stream, "no cert").await.map(|_| ()),
        Err(e) => Err(e.to_string()),
    };
    let error = outcome.unwrap_err();
    assert!(
        error.contains("CertificateRequired") || error.contains("certificate"),
        "{error}"
    );
}

#[tokio::test]
async fn mtls_rejects_a_client_from_another_ca() {
    let (_backend, ca, _dir, gw) = setup_mtls().await;
    let stranger = Ca::new("another CA").client("intruder");
    let config = client_config(&[&ca], Some(&stranger), &h2_alpn());
    let outcome = match tls_connect(gw.addr, config, "localhost").await {
        Ok(stream) => h2_unary(stream, "wrong ca").await.map(|_| ()),
        Err(e) => Err(e.to_string()),
    };
    let error = outcome.unwrap_err();
    assert!(error.contains("UnknownCA") || error.contains("unknown"), "{error}");
}

#[tokio::test]
async fn mtls_accepts_a_client_from_the_client_ca() {
    let (_backend, ca, _dir, gw) = setup_mtls().await;
    let client = ca.client("billing");
    let config = client_config(&[&ca], Some(&client), &h2_alpn());
    let stream = tls_connect(gw.addr, config, "localhost").await.unwrap();
    let response = h2_unary(stream, "with cert").await.unwrap();
    assert_eq!(response.message, "with cert");
}

/// Waits until `done` holds, or panics after 10 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a fresh full handshake and returns the certificate the server showed.
async fn presented(addr: SocketAddr, ca: &Ca) -> Vec<u8> {
    let config = client_config_no_resumption(&[ca], &h2_alpn());
    let stream = tls_connect(addr, config, "localhost").await.unwrap();
    peer_leaf(&stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_applies_to_new_handshakes_without_failed_calls() {
    let (_backend, ca, dir, first, gw) = setup().await;
    // A connection made before the rotation keeps working after it.
    let config = client_config_no_resumption(&[&ca], &h2_alpn());
    let long_lived = tls_connect(gw.addr, config.clone(), "localhost").await.unwrap();
    let (send, connection) = h2::client::handshake(long_lived).await.unwrap();
    tokio::spawn(connection);
    drop(send);

    let second = ca.server();
    let started = Instant::now();
    let mut calls = 0;
    loop {
        let stream = tls_connect(gw.addr, config.clone(), "localhost").await.unwrap();
        let leaf = peer_leaf(&stream);
        let response = h2_unary(stream, &format!("call {calls}")).await;
        assert!(response.is_ok(), "call {calls} failed: {response:?}");
        calls += 1;
        if calls == 5 {
            dir.write_pair("server", &second);
        }
        if leaf == second.der.to_vec() {
            break;
        }
        assert_eq!(leaf, first.der.to_vec(), "only the old or the new certificate");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new certificate never appeared"
        );
    }
    assert!(calls > 5);
    let status = gw.tls.status();
    assert_eq!((status.generation, status.reloads), (2, 1), "{status:?}");
    assert_eq!(
        status.reload_errors, 0,
        "cert and key written back to back are one change"
    );
    assert_eq!(presented(gw.addr, &ca).await, second.der.to_vec());
}

#[tokio::test]
async fn a_bad_pair_written_mid_run_keeps_the_old_one_and_is_counted() {
    let (_backend, ca, dir, first, gw) = setup().await;
    // A key that belongs to another certificate.
    dir.write("server.key", &ca.server().key_pem);
    eventually("the mismatched key is rejected", || gw.tls.status().reload_errors == 1).await;
    let status = gw.tls.status();
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("does not match the certificate"),
        "{status:?}"
    );
    assert_eq!(presented(gw.addr, &ca).await, first.der.to_vec());

    // A certificate cut off mid-write.
    let truncated = &first.cert_pem[..first.cert_pem.len() / 2];
    dir.write("server.pem", truncated);
    eventually("the truncated PEM is rejected", || gw.tls.status().reload_errors == 2).await;
    assert!(gw.tls.status().last_error.unwrap().contains("malformed PEM"));
    let stream = tls_connect(gw.addr, client_config(&[&ca], None, &h2_alpn()), "localhost")
        .await
        .unwrap();
    assert_eq!(peer_leaf(&stream), first.der.to_vec());
    assert!(h2_unary(stream, "still served").await.is_ok());
    assert_eq!(gw.tls.generation(), 1);

    // A good pair afterwards is picked up.
    let fixed = ca.server();
    dir.write_pair("server", &fixed);
    eventually("the fixed pair is loaded", || gw.tls.generation() == 2).await;
    assert_eq!(presented(gw.addr, &ca).await, fixed.der.to_vec());
}

#[tokio::test]
async fn a_kubernetes_secret_update_is_picked_up() {
    let backend = Backend::start("b1").await;
    let ca = Ca::new("test CA");
    let first = ca.server();
    let mut volume = SecretVolume::new(&[("tls.crt", &first.cert_pem), ("tls.key", &first.key_pem)]);
    let yaml = tls_yaml(&[backend.addr], &volume.path("tls.crt"), &volume.path("tls.key"), None);
    let gw = start(&yaml).await;
    assert_eq!(presented(gw.addr, &ca).await, first.der.to_vec());
    let second = ca.server();
    volume.update(&[("tls.crt", &second.cert_pem), ("tls.key", &second.key_pem)]);
    eventually("the ..data swap is seen", || gw.tls.generation() == 2).await;
    assert_eq!(presented(gw.addr, &ca).await, second.der.to_vec());
    assert_eq!(gw.tls.status().reload_errors, 0);
}

#[tokio::test]
async fn a_client_ca_bundle_with_old_and_new_roots_trusts_both() {
    let backend = Backend::start("b1").await;
    let old = Ca::new("old CA");
    let new = Ca::new("new CA");
    let dir = CertDir::new();
    let (cert, key) = dir.write_pair("server", &old.server());
    let bundle = dir.write("clients.pem", &format!("{}{}", old.cert_pem, new.cert_pem));
    let gw = start(&tls_yaml(&[backend.addr], &cert, &key, Some(&bundle))).await;
    for ca in [&old, &new] {
        let client = ca.client("rotating");
        let config = client_config(&[&old], Some(&client), &h2_alpn());
        let stream = tls_connect(gw.addr, config, "localhost").await.unwrap();
        let response = h2_unary(stream, &ca.name).await;
        assert!(response.is_ok(), "client from {}: {response:?}", ca.name);
    }
}

#[tokio::test]
async fn an_expired_certificate_refuses_to_start() {
    let ca = Ca::new("test CA");
    let dir = CertDir::new();
    let (cert, key) = dir.write_pair("server", &ca.expired_server());
    let yaml = tls_yaml(&["127.0.0.1:1".parse().unwrap()], &cert, &key, None);
    let config = grpc_edge::config::Config::from_yaml(&yaml).unwrap();
    let error = Gateway::from_config(config).unwrap_err().to_string();
    assert!(
        error.starts_with("tls.cert: ") && error.contains("certificate expired on"),
        "{error}"
    );

    // The binary: `serve` exits with that line, `check` too.
    let file = dir.write("gateway.yaml", &yaml);
    for command in ["serve", "check"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_grpc-edge"))
            .args([command, "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{command} started with an expired certificate"
        );
        assert!(
            stderr.contains("tls.cert: ") && stderr.contains("certificate expired on"),
            "{command}: {stderr}"
        );
    }
}

#[tokio::test]
async fn check_reports_a_certificate_expiring_soon() {
    let ca = Ca::new("test CA");
    let dir = CertDir::new();
    let leaf = ca.expiring_in(Duration::from_secs(2 * 86_400 + 3600), false);
    let (cert, key) = dir.write_pair("server", &leaf);
    let yaml = tls_yaml(&["127.0.0.1:1".parse().unwrap()], &cert, &key, None);
    let file = dir.write("gateway.yaml", &yaml);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_grpc-edge"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let warning = stdout
        .lines()
        .find(|l| l.starts_with("warning: tls.cert: "))
        .unwrap_or_else(|| panic!("no certificate warning in:\n{stdout}"));
    assert!(warning.contains("expires in 2 days"), "{warning}");
}

/// Connections per second, each: connect, (handshake,) one HTTP/1.1 request
/// answered by the gateway itself (404), close. Printed, not asserted; run
/// with `cargo test --release --test tls handshake -- --nocapture` for
/// meaningful numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_cost_with_and_without_tls() {
    const CONNECTIONS: u32 = 5000;
    const BUDGET: Duration = Duration::from_secs(1);
    let backend = Backend::start("b1").await;
    let plain = start_gateway(&config_yaml(&[backend.addr], "", "")).await;
    let (_backend, ca, _dir, _leaf, tls) = setup().await;
    let rate = |n: u32, elapsed: Duration| f64::from(n) / elapsed.as_secs_f64();

    let started = Instant::now();
    let mut n = 0;
    while n < CONNECTIONS && started.elapsed() < BUDGET {
        let tcp = tokio::net::TcpStream::connect(plain.addr).await.unwrap();
        let (status, _) = h1_request(tcp, "GET", "/nothing/here", "").await;
        assert_eq!(status, 404);
        n += 1;
    }
    let plaintext = rate(n, started.elapsed());

    let mut results = Vec::new();
    for (label, config) in [
        (
            "TLS, full handshake",
            client_config_no_resumption(&[&ca], &[b"http/1.1"]),
        ),
        ("TLS, resumed session", client_config(&[&ca], None, &[b"http/1.1"])),
    ] {
        let started = Instant::now();
        let mut n = 0;
        while n < CONNECTIONS && started.elapsed() < BUDGET {
            let stream = tls_connect(tls.addr, Arc::clone(&config), "localhost").await.unwrap();
            let (status, _) = h1_request(stream, "GET", "/nothing/here", "").await;
            assert_eq!(status, 404);
            n += 1;
        }
        results.push((label, rate(n, started.elapsed())));
    }
    println!("new connections per second through the listener (one client, sequential):");
    println!("  plaintext:            {plaintext:>8.0}");
    for (label, value) in results {
        println!(
            "  {label:<21} {value:>8.0}  ({:.1}x slower than plaintext)",
            plaintext / value
        );
    }
}
