//! Backends whose faults a test switches at run time, the gateway with its
//! admin listener, a DNS resolver the test controls, and a bounded load
//! generator.
//!
//! A [`FaultBackend`] is the tonic `testing.v1.Echo` service (the one in
//! `support`) behind a small HTTP/2 front that can, while the test runs:
//! fail a share of calls (0–100 %, spread evenly, not at random) with a
//! chosen code — trailers-only, or in the trailers after a first message;
//! add latency; stop answering until the caller cancels; send
//! `grpc-retry-pushback-ms`; flip `grpc.health.v1.Health/Check` between
//! SERVING and NOT_SERVING; shut down gracefully (GOAWAY), be killed, and be
//! restarted on the same port. The health service is written by hand (a
//! prost message pair and a path match), so no extra crate is needed.
//!
//! Every call that reaches a backend is counted and logged (time, path,
//! `x-call-id`, `grpc-timeout`), so tests can compare what clients sent with
//! what backends saw.
//!
//! Beside the backend: `edge` (the gateway with its admin listener, a DNS
//! resolver the test controls, a raw HTTP/2 client), `load` (a bounded load
//! generator), `refusing` (a backend that refuses every stream with GOAWAY)
//! and `stalling` (a backend whose event loop freezes and thaws).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::pb::echo_server::EchoServer;
use super::{EchoResponse, EchoService, Seen};

mod edge;
mod load;
mod refusing;
mod stalling;

// Each test crate uses some of these.
#[allow(unused_imports)]
pub use edge::{Edge, FakeResolver, raw_grpc, wait_until};
#[allow(unused_imports)]
pub use load::{Load, LoadDetail, LoadOptions, LoadStats, percentile};
#[allow(unused_imports)]
pub use refusing::RefusingBackend;
#[allow(unused_imports)]
pub use stalling::StallingBackend;

/// The health service path the gateway checks.
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// Calls logged per backend at most (the chaos run makes many).
const LOG_CAP: usize = 100_000;

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// One call as a backend received it.
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub at: Instant,
    pub path: String,
    /// The `x-call-id` request header, when the client set one.
    pub call_id: Option<String>,
    /// The `grpc-timeout` request header, as received.
    pub grpc_timeout: Option<String>,
}

/// How the failing share of calls fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailMode {
    /// Trailers-only: `grpc-status` in the response headers.
    TrailersOnly = 0,
    /// One message, then `grpc-status` in the trailers.
    AfterFirstMessage = 1,
}

/// The switches and counters of one backend, shared with its connections.
pub struct Faults {
    fail_percent: AtomicU32,
    fail_code: AtomicI32,
    fail_mode: AtomicU32,
    /// Calls decided so far, to spread the failing share evenly.
    decided: AtomicU64,
    latency_ms: AtomicU64,
    hang: watch::Sender<bool>,
    pushback: Mutex<Option<String>>,
    serving: AtomicBool,
    calls: AtomicU64,
    failed: AtomicU64,
    health_checks: AtomicU64,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
    connections: AtomicU64,
    log: Mutex<Vec<CallRecord>>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_percent: AtomicU32::new(0),
            fail_code: AtomicI32::new(14),
            fail_mode: AtomicU32::new(FailMode::TrailersOnly as u32),
            decided: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0),
            hang: watch::channel(false).0,
            pushback: Mutex::new(None),
            serving: AtomicBool::new(true),
            calls: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            max_in_flight: AtomicU32::new(0),
            connections: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        }
    }
}

impl Faults {
    /// Whether the next call fails: exactly `percent` of calls, evenly
    /// spread (50 % alternates), so tests do not depend on luck.
    fn next_fails(&self) -> bool {
        let percent = u64::from(self.fail_percent.load(Ordering::Relaxed).min(100));
        if percent == 0 {
            return false;
        }
        let n = self.decided.fetch_add(1, Ordering::Relaxed);
        (n + 1) * percent / 100 > n * percent / 100
    }

    fn record(&self, path: &str, headers: &HeaderMap) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut log = self.log.lock().unwrap();
        if log.len() < LOG_CAP {
            log.push(CallRecord {
                at: Instant::now(),
                path: path.to_string(),
                call_id: header("x-call-id"),
                grpc_timeout: header("grpc-timeout"),
            });
        }
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.max_in_flight.fetch_max(now, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Waits while the backend is told to hang (cancelled with the call).
    async fn wait_while_hung(&self) {
        let mut hang = self.hang.subscribe();
        while *hang.borrow_and_update() {
            if hang.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A call in flight at a backend, until the response body is done or dropped.
struct InFlight(Arc<Faults>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its call counted in flight.
struct Tracked<B> {
    inner: B,
    _call: Option<InFlight>,
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type Frames = StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn frames(frames: Vec<Frame<Bytes>>) -> Frames {
    StreamBody::new(tokio_stream::iter(frames.into_iter().map(Ok).collect::<Vec<_>>()))
}

fn grpc_frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + encoded.len());
    out.put_u8(0);
    out.put_u32(encoded.len() as u32);
    out.put_slice(&encoded);
    out.freeze()
}

fn status_headers(into: &mut HeaderMap, code: i32, message: &str) {
    into.insert("grpc-status", HeaderValue::from(code));
    if code != 0 {
        into.insert("grpc-message", HeaderValue::from_str(message).unwrap());
    }
}

fn grpc_response(body: tonic::body::Body) -> Response<tonic::body::Body> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// What one connection of a backend runs for every request.
#[derive(Clone)]
struct Handler {
    name: Arc<str>,
    faults: Arc<Faults>,
    health_service: bool,
    echo: EchoServer<EchoService>,
}

impl Handler {
    async fn handle(self, request: Request<Incoming>) -> Response<tonic::body::Body> {
        let faults = self.faults.clone();
        let path = request.uri().path().to_string();
        if path == HEALTH_CHECK && self.health_service {
            faults.wait_while_hung().await;
            faults.health_checks.fetch_add(1, Ordering::Relaxed);
            let status = if faults.serving.load(Ordering::Relaxed) {
                SERVING
            } else {
                NOT_SERVING
            };
            let mut trailers = HeaderMap::new();
            status_headers(&mut trailers, 0, "");
            let body = frames(vec![
                Frame::data(grpc_frame(&HealthCheckResponse { status })),
                Frame::trailers(trailers),
            ]);
            return grpc_response(tonic::body::Body::new(body));
        }
        if !path.starts_with("/testing.v1.Echo/") {
            // Unknown here: tonic answers UNIMPLEMENTED, as a real server would.
            return self.forward(request, None).await;
        }
        faults.record(&path, request.headers());
        let call = faults.enter();
        faults.wait_while_hung().await;
        let latency = faults.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if !faults.next_fails() {
            return self.forward(request, Some(call)).await;
        }
        faults.failed.fetch_add(1, Ordering::Relaxed);
        // Read the (small, finished) request first, as a real server would.
        let _ = tokio::time::timeout(Duration::from_millis(200), request.into_body().collect()).await;
        let code = faults.fail_code.load(Ordering::Relaxed);
        let message = format!("fault injected by {}", self.name);
        let mode = faults.fail_mode.load(Ordering::Relaxed);
        if mode == FailMode::AfterFirstMessage as u32 {
            let first = EchoResponse {
                message: "before the failure".into(),
                served_by: self.name.to_string(),
                ..Default::default()
            };
            let mut trailers = HeaderMap::new();
            status_headers(&mut trailers, code, &message);
            let body = frames(vec![Frame::data(grpc_frame(&first)), Frame::trailers(trailers)]);
            let mut response = grpc_response(tonic::body::Body::new(Tracked {
                inner: body,
                _call: Some(call),
            }));
            response
                .headers_mut()
                .insert("x-served-by", HeaderValue::from_str(&self.name).unwrap());
            return response;
        }
        let mut response = grpc_response(tonic::body::Body::empty());
        status_headers(response.headers_mut(), code, &message);
        response
            .headers_mut()
            .insert("x-served-by", HeaderValue::from_str(&self.name).unwrap());
        if let Some(pushback) = faults.pushback.lock().unwrap().clone() {
            response
                .headers_mut()
                .insert("grpc-retry-pushback-ms", HeaderValue::from_str(&pushback).unwrap());
        }
        response
    }

    async fn forward(&self, request: Request<Incoming>, call: Option<InFlight>) -> Response<tonic::body::Body> {
        let response = match tower::ServiceExt::oneshot(self.echo.clone(), request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        response.map(|body| {
            tonic::body::Body::new(Tracked {
                inner: body,
                _call: call,
            })
        })
    }
}

/// How a backend is started.
#[derive(Clone, Debug)]
pub struct FaultOptions {
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` (hyper's default is 200).
    pub max_concurrent_streams: Option<u32>,
    /// Serve `grpc.health.v1.Health/Check`; without it the backend answers UNIMPLEMENTED.
    pub health_service: bool,
}

impl Default for FaultOptions {
    fn default() -> Self {
        Self {
            max_concurrent_streams: None,
            health_service: true,
        }
    }
}

/// One listener and its connections.
struct Server {
    tasks: Arc<Mutex<JoinSet<()>>>,
    graceful: watch::Sender<bool>,
}

impl Server {
    async fn start(addr: SocketAddr, handler: Handler, options: &FaultOptions) -> (Server, SocketAddr) {
        let listener = bind(addr).await;
        let bound = listener.local_addr().unwrap();
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (graceful, graceful_rx) = watch::channel(false);
        let accept_tasks = tasks.clone();
        let options = options.clone();
        tasks.lock().unwrap().spawn(async move {
            let mut stop = graceful_rx.clone();
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    _ = stop.changed() => return,
                };
                handler.faults.connections.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
                let handler = handler.clone();
                let service = hyper::service::service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler.handle(request).await) }
                });
                let mut stop = graceful_rx.clone();
                let max_streams = options.max_concurrent_streams;
                accept_tasks.lock().unwrap().spawn(async move {
                    let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                    if let Some(max) = max_streams {
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
        (Server { tasks, graceful }, bound)
    }

    fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// Binds `addr`, retrying briefly while a just-closed listener lets go of it.
async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    let mut last = None;
    for _ in 0..100 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot bind {addr}: {last:?}");
}

/// A tonic Echo backend on a loopback port with switchable faults.
pub struct FaultBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    pub seen: Arc<Seen>,
    options: FaultOptions,
    handler: Handler,
    /// The current server last; earlier ones may still be draining.
    servers: Mutex<Vec<Server>>,
    running: AtomicBool,
}

impl FaultBackend {
    pub async fn start(name: &str) -> FaultBackend {
        Self::start_with(name, FaultOptions::default()).await
    }

    pub async fn start_with(name: &str, options: FaultOptions) -> FaultBackend {
        let faults = Arc::new(Faults::default());
        let seen = Arc::new(Seen::default());
        let handler = Handler {
            name: Arc::from(name),
            faults: faults.clone(),
            health_service: options.health_service,
            echo: EchoServer::new(EchoService {
                name: Arc::from(name),
                seen: seen.clone(),
            }),
        };
        let (server, addr) = Server::start("127.0.0.1:0".parse().unwrap(), handler.clone(), &options).await;
        FaultBackend {
            name: name.to_string(),
            addr,
            faults,
            seen,
            options,
            handler,
            servers: Mutex::new(vec![server]),
            running: AtomicBool::new(true),
        }
    }

    // ---- faults -------------------------------------------------------

    /// Fails `percent` of calls (evenly spread) with `code`, trailers-only.
    pub fn fail(&self, percent: u32, code: i32) {
        self.faults
            .fail_mode
            .store(FailMode::TrailersOnly as u32, Ordering::Relaxed);
        self.faults.fail_code.store(code, Ordering::Relaxed);
        self.faults.fail_percent.store(percent, Ordering::Relaxed);
    }

    /// Fails `percent` of calls with `code` in the trailers, after one message.
    pub fn fail_in_trailers(&self, percent: u32, code: i32) {
        self.faults
            .fail_mode
            .store(FailMode::AfterFirstMessage as u32, Ordering::Relaxed);
        self.faults.fail_code.store(code, Ordering::Relaxed);
        self.faults.fail_percent.store(percent, Ordering::Relaxed);
    }

    /// Waits this long before answering each call.
    pub fn set_latency(&self, latency: Duration) {
        self.faults
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// Stops answering (health checks too) until `unhang`; callers that
    /// cancel free their calls.
    pub fn hang(&self) {
        self.faults.hang.send_replace(true);
    }

    pub fn unhang(&self) {
        self.faults.hang.send_replace(false);
    }

    /// Sends `grpc-retry-pushback-ms: value` with every trailers-only failure.
    pub fn set_pushback(&self, value: Option<&str>) {
        *self.faults.pushback.lock().unwrap() = value.map(str::to_owned);
    }

    /// What `grpc.health.v1.Health/Check` answers.
    pub fn set_serving(&self, serving: bool) {
        self.faults.serving.store(serving, Ordering::Relaxed);
    }

    /// Clears every fault switch (the server's running state is unchanged).
    pub fn heal(&self) {
        self.faults.fail_percent.store(0, Ordering::Relaxed);
        self.set_latency(Duration::ZERO);
        self.unhang();
        self.set_pushback(None);
        self.set_serving(true);
    }

    // ---- the server -----------------------------------------------------

    /// Cuts every connection and closes the port, like a crashed process.
    pub fn kill(&self) {
        for server in self.servers.lock().unwrap().iter() {
            server.kill();
        }
        self.running.store(false, Ordering::Relaxed);
    }

    /// Stops accepting and sends GOAWAY; calls in flight finish.
    pub fn shutdown_gracefully(&self) {
        if let Some(server) = self.servers.lock().unwrap().last() {
            let _ = server.graceful.send(true);
        }
        self.running.store(false, Ordering::Relaxed);
    }

    /// Serves again on the same port (after `kill` or `shutdown_gracefully`).
    pub async fn restart(&self) {
        let (server, _) = Server::start(self.addr, self.handler.clone(), &self.options).await;
        self.servers.lock().unwrap().push(server);
        self.running.store(true, Ordering::Relaxed);
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    // ---- what it saw ------------------------------------------------------

    /// Echo calls that reached this backend (health checks not included).
    pub fn calls(&self) -> u64 {
        self.faults.calls.load(Ordering::Relaxed)
    }

    /// Calls it failed on purpose.
    pub fn failed(&self) -> u64 {
        self.faults.failed.load(Ordering::Relaxed)
    }

    pub fn health_checks(&self) -> u64 {
        self.faults.health_checks.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.faults.in_flight.load(Ordering::Relaxed)
    }

    pub fn max_in_flight(&self) -> u32 {
        self.faults.max_in_flight.load(Ordering::Relaxed)
    }

    /// TCP connections accepted since start.
    pub fn connections(&self) -> u64 {
        self.faults.connections.load(Ordering::Relaxed)
    }

    pub fn log(&self) -> Vec<CallRecord> {
        self.faults.log.lock().unwrap().clone()
    }

    /// `host:port` as the gateway's snapshots name it.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for FaultBackend {
    fn drop(&mut self) {
        self.kill();
    }
}
