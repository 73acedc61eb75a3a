//! The gateway under test with its admin listener, a DNS resolver the test
//! controls, and a raw HTTP/2 gRPC client.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use grpc_edge::config::Config;
use grpc_edge::{ClusterSnapshot, EndpointSnapshot, Gateway, Resolve};
use http::Request;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::FaultBackend;
use crate::support::EchoClient;
use crate::support::rest_client::{self, HttpResponse};

/// The gateway in this process on a loopback port, with its admin listener.
pub struct Edge {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gateway: Gateway,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    serve: Mutex<Option<JoinHandle<()>>>,
    admin_stop: Mutex<Option<oneshot::Sender<()>>>,
    admin_task: Mutex<Option<JoinHandle<()>>>,
}

impl Edge {
    pub async fn start(yaml: &str) -> Edge {
        Self::start_with(yaml, None).await
    }

    /// Starts the gateway (with `resolver` for `dns` upstreams, if given) and
    /// its admin endpoints.
    pub async fn start_with(yaml: &str, resolver: Option<Arc<dyn Resolve>>) -> Edge {
        let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"));
        let mut builder = Gateway::builder().config(config);
        if let Some(resolver) = resolver {
            builder = builder.resolver(resolver);
        }
        let gateway = builder.build().unwrap_or_else(|e| panic!("gateway: {e}\n{yaml}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = tokio::spawn(grpc_edge::serve(
            gateway.clone(),
            listener,
            async {
                let _ = stopped.await;
            },
            grpc_edge::ServeOptions {
                drain_timeout: Duration::from_secs(5),
                ..Default::default()
            },
        ));
        let (admin_stop, admin_stopped) = oneshot::channel::<()>();
        let admin_task = tokio::spawn(grpc_edge::serve_admin(gateway.clone(), admin_listener, async {
            let _ = admin_stopped.await;
        }));
        let edge = Edge {
            addr,
            admin,
            gateway,
            stop: Mutex::new(Some(stop)),
            serve: Mutex::new(Some(serve)),
            admin_stop: Mutex::new(Some(admin_stop)),
            admin_task: Mutex::new(Some(admin_task)),
        };
        // Serving has begun once /readyz says so.
        let ready = wait_until(Duration::from_secs(5), || edge.gateway.is_ready()).await;
        assert!(ready.is_some(), "the gateway never became ready");
        edge
    }

    /// Starts the graceful shutdown (listener closes, GOAWAY, drain) without waiting.
    pub fn begin_shutdown(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits for the drain, then stops the admin listener.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        let serve = self.serve.lock().unwrap().take();
        if let Some(serve) = serve {
            let _ = tokio::time::timeout(Duration::from_secs(10), serve).await;
        }
        if let Some(stop) = self.admin_stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        let admin = self.admin_task.lock().unwrap().take();
        if let Some(admin) = admin {
            let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
        }
    }

    /// A tonic client over one HTTP/2 connection to the gateway.
    pub async fn client(&self) -> EchoClient<Channel> {
        crate::support::client(self.addr).await
    }

    pub fn cluster(&self, name: &str) -> ClusterSnapshot {
        self.gateway
            .upstream_snapshot()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no upstream {name}"))
    }

    /// The endpoint `backend` as the gateway sees it now, in any upstream.
    pub fn endpoint(&self, backend: &FaultBackend) -> EndpointSnapshot {
        self.endpoint_at(backend.addr).unwrap_or_else(|| {
            panic!(
                "{} is not an endpoint: {:#?}",
                backend.name,
                self.gateway.upstream_snapshot()
            )
        })
    }

    pub fn endpoint_at(&self, addr: SocketAddr) -> Option<EndpointSnapshot> {
        let target = addr.to_string();
        self.gateway
            .upstream_snapshot()
            .into_iter()
            .flat_map(|c| c.endpoints)
            .find(|e| e.target == target)
    }

    pub fn state(&self, backend: &FaultBackend) -> &'static str {
        self.endpoint(backend).state
    }

    pub async fn admin_get(&self, path: &str, accept: &str) -> HttpResponse {
        rest_client::request(self.admin, "GET", path, &[("accept", accept)], Bytes::new()).await
    }

    /// `GET /upstreams` as JSON.
    pub async fn upstreams_json(&self) -> serde_json::Value {
        let response = self.admin_get("/upstreams", "application/json").await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("content-type"), Some("application/json"));
        response.json()
    }

    /// The admin JSON object of one endpoint.
    pub async fn admin_endpoint(&self, backend: &FaultBackend) -> serde_json::Value {
        let json = self.upstreams_json().await;
        let target = backend.target();
        json.as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["endpoints"].as_array().unwrap().iter())
            .find(|e| e["target"] == target.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{target} not in /upstreams: {json:#}"))
    }

    /// `GET /upstreams` as text.
    pub async fn upstreams_text(&self) -> String {
        let response = self.admin_get("/upstreams", "text/plain").await;
        assert_eq!(response.status, 200);
        response.text()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(serve) = self.serve.lock().unwrap().take() {
            serve.abort();
        }
        if let Some(admin) = self.admin_task.lock().unwrap().take() {
            admin.abort();
        }
    }
}

/// Polls `check` every 5 ms until it holds or `limit` passes; returns how long it took.
pub async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- DNS ------------------------------------------------------------------

/// A resolver whose answer the test sets: addresses, or an error.
pub struct FakeResolver {
    answer: Mutex<Result<Vec<SocketAddr>, String>>,
    lookups: AtomicU64,
    hosts: Mutex<Vec<(String, u16)>>,
}

impl FakeResolver {
    pub fn new(addresses: &[SocketAddr]) -> Arc<FakeResolver> {
        Arc::new(FakeResolver {
            answer: Mutex::new(Ok(addresses.to_vec())),
            lookups: AtomicU64::new(0),
            hosts: Mutex::new(Vec::new()),
        })
    }

    pub fn set(&self, addresses: &[SocketAddr]) {
        *self.answer.lock().unwrap() = Ok(addresses.to_vec());
    }

    /// Every lookup fails with `why` from now on.
    pub fn fail(&self, why: &str) {
        *self.answer.lock().unwrap() = Err(why.to_string());
    }

    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The names asked for.
    pub fn hosts(&self) -> Vec<(String, u16)> {
        self.hosts.lock().unwrap().clone()
    }
}

impl Resolve for FakeResolver {
    fn resolve(&self, host: &str, port: u16) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        {
            let mut hosts = self.hosts.lock().unwrap();
            if hosts.len() < 16 {
                hosts.push((host.to_string(), port));
            }
        }
        let answer = self.answer.lock().unwrap().clone();
        Box::pin(async move { answer.map_err(io::Error::other) })
    }
}

// ---- a raw client ---------------------------------------------------------

/// One gRPC request over a fresh HTTP/2 connection with exactly these
/// headers. Unlike `support::raw_h2_call` it accepts an answer that comes
/// before the request body was sent (a fail-fast overflow does that).
pub async fn raw_grpc(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> crate::support::RawResponse {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.unwrap();
    let mut request = Request::builder().method("POST").uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut stream) = send.send_request(request.body(()).unwrap(), false).unwrap();
    // The server may have answered (and closed the stream) already.
    let _ = stream.send_data(body, true);
    let (parts, mut recv) = response.await.unwrap().into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.unwrap();
    crate::support::RawResponse {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(data),
        trailers,
    }
}
