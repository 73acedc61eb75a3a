//! Shared test fixtures: real tonic backends on loopback whose faults a test
//! controls, the real gateway (in-process or as the built binary), and
//! clients (tonic, and a raw HTTP/2 client for malformed requests).

#![allow(dead_code, unreachable_pub, clippy::all)]

pub mod pb {
    include!("generated/testing.v1.rs");
}

pub mod certs;
pub mod faults;
pub mod gateway_logs;
pub mod grpc_web_client;
pub mod raw_backend;
pub mod rest_client;
pub mod served;

use std::collections::HashMap as BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use grpc_edge::Gateway;
use grpc_edge::config::Config;
pub use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
pub use pb::{EchoRequest, EchoResponse};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// What a backend saw.
#[derive(Default)]
pub struct Seen {
    pub calls: AtomicU64,
    /// The `grpc-timeout` of the most recent call, as received.
    pub last_grpc_timeout: Mutex<Option<String>>,
}

#[derive(Clone)]
struct EchoService {
    name: Arc<str>,
    seen: Arc<Seen>,
}

fn metadata_map(request: &tonic::metadata::MetadataMap) -> BTreeMap<String, String> {
    request
        .clone()
        .into_headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
        .collect()
}

impl EchoService {
    fn observe(&self, metadata: &tonic::metadata::MetadataMap) {
        self.seen.calls.fetch_add(1, Ordering::Relaxed);
        let timeout = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *self.seen.last_grpc_timeout.lock().unwrap() = timeout;
    }

    fn response(&self, request: &EchoRequest, sequence: u32, metadata: BTreeMap<String, String>) -> EchoResponse {
        EchoResponse {
            message: request.message.clone(),
            served_by: self.name.to_string(),
            sequence,
            payload: vec![b'x'; request.response_size as usize],
            metadata,
            received: 0,
        }
    }
}

fn failure(code: i32, name: &str) -> Status {
    let mut status = Status::new(tonic::Code::from(code), format!("failure requested from {name}"));
    status.metadata_mut().insert("x-failed-by", name.parse().unwrap());
    status
}

type EchoStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.observe(request.metadata());
        let metadata = metadata_map(request.metadata());
        let request = request.into_inner();
        if request.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(request.delay_ms))).await;
        }
        if request.fail_code != 0 {
            return Err(failure(request.fail_code, &self.name));
        }
        let mut response = Response::new(self.response(&request, 0, metadata));
        response
            .metadata_mut()
            .insert("x-served-by", self.name.parse().unwrap());
        Ok(response)
    }

    type ServerStreamStream = EchoStream;

    async fn server_stream(&self, request: Request<EchoRequest>) -> Result<Response<EchoStream>, Status> {
        self.observe(request.metadata());
        let metadata = metadata_map(request.metadata());
        let request = request.into_inner();
        if request.fail_code != 0 && !request.fail_after_first {
            return Err(failure(request.fail_code, &self.name));
        }
        let this = self.clone();
        let count = request.repeat.max(1);
        let stream = async_stream(move |tx| async move {
            for sequence in 0..count {
                if request.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(u64::from(request.delay_ms))).await;
                }
                if tx
                    .send(Ok(this.response(&request, sequence, metadata.clone())))
                    .await
                    .is_err()
                {
                    return;
                }
                if request.fail_after_first {
                    let _ = tx.send(Err(failure(request.fail_code, &this.name))).await;
                    return;
                }
            }
        });
        let mut response = Response::new(stream);
        response
            .metadata_mut()
            .insert("x-served-by", self.name.parse().unwrap());
        Ok(response)
    }

    async fn client_stream(&self, request: Request<Streaming<EchoRequest>>) -> Result<Response<EchoResponse>, Status> {
        self.observe(request.metadata());
        let metadata = metadata_map(request.metadata());
        let mut stream = request.into_inner();
        let mut received = 0;
        let mut last = EchoRequest::default();
        while let Some(message) = stream.next().await {
            last = message?;
            received += 1;
            if last.fail_code != 0 {
                return Err(failure(last.fail_code, &self.name));
            }
        }
        let mut response = self.response(&last, 0, metadata);
        response.received = received;
        Ok(Response::new(response))
    }

    type BidiStream = EchoStream;

    async fn bidi(&self, request: Request<Streaming<EchoRequest>>) -> Result<Response<EchoStream>, Status> {
        self.observe(request.metadata());
        let metadata = metadata_map(request.metadata());
        let this = self.clone();
        let mut incoming = request.into_inner();
        let stream = async_stream(move |tx| async move {
            let mut sequence = 0;
            while let Some(message) = incoming.next().await {
                let item = match message {
                    Ok(m) if m.fail_code != 0 => Err(failure(m.fail_code, &this.name)),
                    Ok(m) => Ok(this.response(&m, sequence, metadata.clone())),
                    Err(e) => Err(e),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
                sequence += 1;
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a small channel (so the producer feels back-pressure).
fn async_stream<F, Fut>(produce: F) -> EchoStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<EchoResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Options for a test backend's HTTP/2 server.
#[derive(Clone, Default)]
pub struct BackendOptions {
    pub max_concurrent_streams: Option<u32>,
}

/// A real tonic Echo backend on a loopback port, that a test can kill
/// (connections cut, port closed) or shut down gracefully (GOAWAY).
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Seen>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    graceful: watch::Sender<bool>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_with(name, BackendOptions::default()).await
    }

    pub async fn start_with(name: &str, options: BackendOptions) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let service = EchoServer::new(EchoService {
            name: Arc::from(name),
            seen: seen.clone(),
        });
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (graceful, graceful_rx) = watch::channel(false);
        let accept_tasks = tasks.clone();
        tasks.lock().unwrap().spawn(async move {
            let mut stop = graceful_rx.clone();
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = stop.changed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(service.clone());
                let mut stop = graceful_rx.clone();
                let options = options.clone();
                accept_tasks.lock().unwrap().spawn(async move {
                    let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                    if let Some(max) = options.max_concurrent_streams {
                        builder.max_concurrent_streams(max);
                    }
                    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => return,
                        _ = stop.changed() => connection.as_mut().graceful_shutdown(),
                    }
                    let _ = connection.await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            seen,
            tasks,
            graceful,
        }
    }

    /// Cuts every connection and closes the port, like a crashed process.
    pub fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }

    /// Stops accepting and sends GOAWAY; calls in flight finish.
    pub fn shutdown_gracefully(&self) {
        let _ = self.graceful.send(true);
    }

    pub fn calls(&self) -> u64 {
        self.seen.calls.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A gateway configuration for the testing service.
/// Whether this run has the HTTP/2 relay on: yes, unless `GRPC_EDGE_RELAY`
/// turns it off (read by the gateway at start-up; CI runs the integration
/// suites both ways).
#[allow(dead_code)]
pub fn relay_on() -> bool {
    let value = std::env::var("GRPC_EDGE_RELAY").unwrap_or_default();
    !matches!(value.trim().to_ascii_lowercase().as_str(), "off" | "0" | "false")
}

/// The connections an endpoint's pool holds after native gRPC calls and
/// REST or gRPC-Web calls: one, or with the relay on a relay connection and
/// a plain one for the h2 path (docs/relay.md).
#[allow(dead_code)]
pub fn mixed_traffic_connections() -> f64 {
    if relay_on() { 2.0 } else { 1.0 }
}

pub fn config_yaml(backends: &[SocketAddr], upstream_extra: &str, route_extra: &str) -> String {
    let endpoints: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "listen: 127.0.0.1:0\ndescriptors:\n  - {}\nupstreams:\n  echo:\n    endpoints: [{}]\n{}\nroutes:\n  - match: testing.v1.Echo\n    upstream: echo\n{}\n",
        root().join("descriptors/testing.binpb").display(),
        endpoints.join(", "),
        indent(upstream_extra, 4),
        indent(route_extra, 4),
    )
}

fn indent(text: &str, by: usize) -> String {
    text.lines().map(|l| format!("{}{l}\n", " ".repeat(by))).collect()
}

/// The gateway running in this process on a loopback port.
pub struct GatewayHandle {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl GatewayHandle {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_gateway(yaml: &str) -> GatewayHandle {
    start_gateway_with(yaml, grpc_edge::ServeOptions::default()).await
}

pub async fn start_gateway_with(yaml: &str, options: grpc_edge::ServeOptions) -> GatewayHandle {
    let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"));
    let gateway = Gateway::from_config(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(grpc_edge::serve(
        gateway.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
        options,
    ));
    GatewayHandle {
        addr,
        gateway,
        stop: Some(stop),
        task,
    }
}

/// A tonic client over ONE HTTP/2 connection.
pub async fn client(addr: SocketAddr) -> EchoClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    EchoClient::new(channel)
}

pub fn echo(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        ..Default::default()
    }
}

/// What a raw HTTP/2 call got back.
#[derive(Debug)]
pub struct RawResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl RawResponse {
    /// `grpc-status` from the trailers, or from the headers (trailers-only).
    pub fn grpc_status(&self) -> Option<String> {
        let from = |h: &http::HeaderMap| h.get("grpc-status").map(|v| v.to_str().unwrap().to_string());
        self.trailers.as_ref().and_then(from).or_else(|| from(&self.headers))
    }
    pub fn grpc_message(&self) -> String {
        let from = |h: &http::HeaderMap| h.get("grpc-message").map(|v| v.to_str().unwrap().to_string());
        self.trailers
            .as_ref()
            .and_then(from)
            .or_else(|| from(&self.headers))
            .unwrap_or_default()
    }
}

/// Sends one request over a fresh HTTP/2 connection with exactly these headers.
pub async fn raw_h2_call(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: Bytes) -> RawResponse {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.unwrap();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let (response, mut stream) = send.send_request(request.body(()).unwrap(), false).unwrap();
    stream.send_data(body, true).unwrap();
    let response = response.await.unwrap();
    let (parts, mut recv) = response.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.unwrap();
    RawResponse {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(data),
        trailers,
    }
}

/// Encodes one gRPC message frame.
pub fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + encoded.len());
    frame.push(0);
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    Bytes::from(frame)
}

/// The gateway binary running as a child process.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts `grpc-edge serve --config <path>` and waits until it listens.
    pub fn start(config: &Path) -> GatewayProcess {
        Self::start_with_env(config, &[])
    }

    /// `start`, with extra environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_grpc-edge"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                    if json["message"] == "grpc-edge listening" {
                        let _ = addr_tx.send(json["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("gateway did not start: {:?}", lines.lock().unwrap()));
        GatewayProcess {
            child,
            addr,
            stderr: lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Peak and current resident memory in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unused_imports)]
pub use grpc_web_client::*;

/// The duration a `grpc-timeout` value says (`100m`, `4999870u`, `2S`, ...).
pub fn grpc_timeout_of(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("grpc-timeout {value:?}: not a number"));
    match unit {
        "n" => Duration::from_nanos(n),
        "u" => Duration::from_micros(n),
        "m" => Duration::from_millis(n),
        "S" => Duration::from_secs(n),
        "M" => Duration::from_secs(60 * n),
        "H" => Duration::from_secs(3600 * n),
        other => panic!("grpc-timeout {value:?}: unit {other}"),
    }
}

/// Makes a server-streaming call and collects every message (panics on a failed call).
pub async fn server_stream_all(client: &mut EchoClient<Channel>, request: EchoRequest) -> Vec<pb::EchoResponse> {
    use tokio_stream::StreamExt as _;
    let stream = client
        .server_stream(request)
        .await
        .expect("expected the stream to start")
        .into_inner();
    stream
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("expected every message")
}

/// Sends `message` to `testing.v1.Echo/{method}` on a connection whose
/// client window is 1 KiB and is never released, and returns the response
/// body unread.
pub async fn call_without_reading(addr: std::net::SocketAddr, method: &str, message: &EchoRequest) -> h2::RecvStream {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1024)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.unwrap();
    let request = echo_call_head(addr, method).body(()).unwrap();
    let (response, mut stream) = send.send_request(request, false).unwrap();
    stream.send_data(grpc_frame(message), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body()
}

/// A raw HTTP/2 connection to `addr`, and its connection task.
pub async fn h2_connection(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(connection))
}

/// The head of a native gRPC call to `testing.v1.Echo/{method}` on `addr`,
/// for raw HTTP/2 clients.
pub fn echo_call_head(addr: std::net::SocketAddr, method: &str) -> http::request::Builder {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/testing.v1.Echo/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
}
